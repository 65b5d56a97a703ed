"""Trained teachers as soft-label sources: frozen online, or cached by sample index."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from softdistill.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from softdistill.types import Batch

__all__ = ["FrozenTeacher", "CachedTeacher", "load_teacher"]


class FrozenTeacher(nn.Module):
    """A trained model used as a teacher: no gradients, eval mode, run under inference mode.

    ``train()`` never puts the model in training mode (BatchNorm keeps its running statistics),
    unless ``batchnorm_train_mode`` asks for it: some reference code ran its ImageNet teacher with
    BatchNorm in training mode, and exact replication needs that quirk.

    When the teacher was trained with a different input normalisation than the student's data
    uses, ``input_scale``/``input_shift`` (per channel) map the student's inputs to the teacher's.
    """

    def __init__(self, model: nn.Module, input_scale: Sequence[float] | None = None,
                 input_shift: Sequence[float] | None = None, batchnorm_train_mode: bool = False) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.batchnorm_train_mode = batchnorm_train_mode
        affine = input_scale is not None
        self.register_buffer("input_scale", torch.tensor(input_scale).view(1, -1, 1, 1) if affine else None)
        self.register_buffer("input_shift", torch.tensor(input_shift).view(1, -1, 1, 1) if affine else None)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        self.training = False
        self.model.eval()
        if self.batchnorm_train_mode and mode:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
        return self

    def forward(self, batch: Batch | Tensor) -> Tensor:
        x = batch.x if isinstance(batch, Batch) else batch
        with torch.inference_mode():
            logits = self.logits_with_input_grad(x)
        return logits.clone()  # a normal tensor, usable in autograd graphs outside inference mode

    def logits_with_input_grad(self, x: Tensor) -> Tensor:
        """The teacher's logits as a differentiable function of its input ``x``.

        The weights stay frozen (``requires_grad=False``): gradients reach ``x`` (and whatever
        produced it, e.g. a learned augmentor), never the teacher.
        """
        if self.input_scale is not None:
            x = x * self.input_scale + self.input_shift
        return self.model(x)


class CachedTeacher(nn.Module):
    """Teacher logits computed once per training sample and looked up by ``batch.index``.

    Valid only when the training inputs are not randomly augmented: a cached soft label belongs
    to the clean view of its sample (architecture trap 8).  The runner refuses the combination.
    """

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        if logits.dim() != 2:
            raise ValueError(f"cached logits must be N x K, got {tuple(logits.shape)}")
        self.register_buffer("logits", logits.detach().float())

    @classmethod
    @torch.no_grad()
    def from_teacher(cls, teacher: nn.Module, batches: Iterable[Batch], num_samples: int) -> "CachedTeacher":
        """Run ``teacher`` once over ``batches`` (clean, every index in [0, num_samples) once)."""
        table: Tensor | None = None
        seen = 0
        for batch in batches:
            out = teacher(batch).float()
            if table is None:
                table = torch.full((num_samples, out.shape[1]), float("nan"), device=out.device)
            table[batch.index.to(out.device)] = out
            seen += len(batch)
        if table is None or seen != num_samples or torch.isnan(table).any():
            raise ValueError(f"teacher cache saw {seen} samples, expected each of {num_samples} exactly once")
        return cls(table)

    def forward(self, batch: Batch) -> Tensor:
        if batch.is_mixed:
            raise ValueError("a cached teacher only knows the clean training images, not mixed ones: "
                             "set teacher.cache: false for methods that mix samples")
        return self.logits[batch.index.to(self.logits.device)]


def load_teacher(path: str | os.PathLike, num_classes: int, in_channels: int,
                 mean: Sequence[float], std: Sequence[float], batchnorm_train_mode: bool = False) -> FrozenTeacher:
    """A :class:`FrozenTeacher` from a checkpoint, checked against the student's data.

    The class count must match; a different input normalisation is bridged per channel.
    """
    payload = load_checkpoint(path)
    spec = payload["model"]
    if spec["num_classes"] != num_classes:
        raise CheckpointError(
            f"teacher {path} predicts {spec['num_classes']} classes but the data has {num_classes}; "
            "teacher and student must be trained on the same label set"
        )
    if spec["in_channels"] != in_channels:
        raise CheckpointError(f"teacher {path} takes {spec['in_channels']}-channel images, the data has {in_channels}")
    model = model_from_checkpoint(payload, path)
    t_mean, t_std = payload["normalization"]["mean"], payload["normalization"]["std"]
    scale = [s / ts for s, ts in zip(std, t_std)]
    shift = [(m - tm) / ts for m, tm, ts in zip(mean, t_mean, t_std)]
    same = all(abs(a - 1) < 1e-7 for a in scale) and all(abs(b) < 1e-7 for b in shift)
    return FrozenTeacher(model, None if same else scale, None if same else shift, batchnorm_train_mode)
