"""Run a model over a loader: collected logits (:func:`predict`) or summed metrics (:func:`evaluate`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softdistill.runtime.distributed import DistContext, all_reduce_sum
from softdistill.types import Batch

__all__ = ["Predictions", "predict", "evaluate", "classification_sums", "autocast", "Amp", "TeacherDtype",
           "TEACHER_DTYPES"]


#: ``train.amp``: the autocast dtype of a run
Amp = Literal["off", "bf16", "fp16"]
#: ``train.teacher_dtype``: the precision of an online teacher's inference, and its torch dtype (None: as trained)
TeacherDtype = Literal["float32", "bfloat16", "float16"]
TEACHER_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: torch.device, amp: Amp | str):
    """Autocast to ``amp`` (off | bf16 | fp16) on ``device``'s type."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclass
class Predictions:
    """Float32 logits (N x K), labels (N) and sample ids (N) in loader order, on the model's device."""

    logits: Tensor
    labels: Tensor
    sample_ids: Tensor


@torch.no_grad()
def predict(model: Callable[[Tensor], Tensor], loader, *, device: torch.device | None = None,
            amp: str = "off", whole_batch: bool = False) -> Predictions:
    """``model(batch.x)`` for every batch of ``loader`` (this process's batches), under inference mode;
    ``model(batch)`` with ``whole_batch`` (a soft-label source, which may look its soft labels up by the
    batch's address).

    An ``nn.Module`` is put in eval mode for the pass and back in its mode afterwards.
    """
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    logits, labels, ids = [], [], []
    try:
        with torch.inference_mode():
            for batch in loader:
                with autocast(device or batch.x.device, amp):
                    out = model(batch if whole_batch else batch.x)
                logits.append(out.float())
                labels.append(batch.y)
                ids.append(batch.sample_id)
    finally:
        if was_training:
            model.train()
    if not logits:
        raise ValueError("predict: the loader gave no batch")
    return Predictions(torch.cat(logits).clone(), torch.cat(labels).clone(), torch.cat(ids).clone())


TOP5_MIN_CLASSES = 10  # below, top-5 is (nearly) always right and says nothing


def classification_sums(model: nn.Module, batch: Batch) -> dict[str, Tensor]:
    """Per-batch sums of top-1 accuracy (in %) and cross-entropy: the default evaluation; with at
    least :data:`TOP5_MIN_CLASSES` classes also top-5 accuracy (``top5``, in %)."""
    logits = model(batch.x).float()
    sums = {"acc": 100.0 * (logits.argmax(1) == batch.y).sum(), "loss": F.cross_entropy(logits, batch.y, reduction="sum")}
    if logits.shape[1] >= TOP5_MIN_CLASSES:
        sums["top5"] = 100.0 * (logits.topk(5, dim=1).indices == batch.y.unsqueeze(1)).any(1).sum()
    return sums


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: DistContext = DistContext(), amp: str = "off",
             sums: Callable[[nn.Module, Batch], dict[str, Tensor]] = classification_sums) -> dict[str, float]:
    """Means over ``loader``'s samples (summed over ranks) of the per-batch ``sums`` of ``model``:
    by default top-1 accuracy (%) and mean cross-entropy."""
    was_training = model.training
    model.eval()
    names: list[str] = []
    totals: Tensor | None = None
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    with torch.inference_mode():
        for batch in loader:
            with autocast(ctx.device, amp):
                values = sums(model, batch)
            stacked = torch.stack([v.double() for v in values.values()])
            names = list(values)
            totals = stacked if totals is None else totals + stacked
            count += len(batch)
    model.train(was_training)
    if totals is None:
        raise ValueError("evaluate: the loader gave no batch")
    packed = torch.cat([totals.to(ctx.device), count.view(1)])
    all_reduce_sum(packed, ctx)
    n = max(packed[-1].item(), 1.0)
    return {name: packed[i].item() / n for i, name in enumerate(names)}
