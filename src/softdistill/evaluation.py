"""Evaluate a checkpoint on the data it was trained on (or another data set of the same classes and shape)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from softdistill.checkpoint import CheckpointMeta, check_model_fits, load_checkpoint, model_from_checkpoint
from softdistill.config import import_plugins
from softdistill.data.config import DataConfig
from softdistill.data.loader import BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.data.samples import StreamSet, TensorSet
from softdistill.data.shifts import ood_set, parse_ood_specs
from softdistill.data.stream import split_loader
from softdistill.engine import evaluate
from softdistill.runtime import DistContext, resolve_device

__all__ = ["evaluate_checkpoint", "evaluate_on_sets", "saved_data"]


def saved_data(meta: CheckpointMeta, **changes: Any) -> DataConfig:
    """The data section of the recipe a checkpoint was trained with (its plugins imported first), with
    ``changes`` (e.g. another data set's ``name`` or ``root``; None keeps a key)."""
    import_plugins(meta.config.get("plugins"))
    return DataConfig.saved(meta.config.get("data") or {"name": meta.data.name}, **changes)


def _evaluator(payload: dict[str, Any], path: str | os.PathLike, batch_size: int, device: str,
               amp: str = "off") -> Callable[[TensorSet | StreamSet], dict[str, float]]:
    """The checkpoint's model as a function of an image set, normalised (and, streamed, decoded) as in training."""
    ctx = DistContext(device=resolve_device(device))
    model = model_from_checkpoint(payload, path).to(ctx.device)
    meta = CheckpointMeta.of(payload, path)
    transform = BatchTransform(meta.normalization.mean, meta.normalization.std)
    data = saved_data(meta)

    def evaluate_on(images: TensorSet | StreamSet) -> dict[str, float]:
        loader = split_loader(images, batch_size, transform, device=ctx.device, workers=data.workers,
                              resize=data.eval_resize)
        return evaluate(model, loader, ctx, amp)

    return evaluate_on


def evaluate_on_sets(path: str | os.PathLike, sets: Mapping[str, TensorSet], *, batch_size: int = 1024,
                     device: str = "auto", amp: str = "off") -> dict[str, dict[str, float]]:
    """Accuracy (%) and cross-entropy of a checkpoint on each of ``sets`` (images of the shape it was
    trained on, e.g. out-of-domain versions of its test split), under ``amp`` as in training."""
    payload = load_checkpoint(path)
    evaluate_on = _evaluator(payload, path, batch_size, device, amp)
    return {name: evaluate_on(images) for name, images in sets.items()}


def evaluate_checkpoint(path: str | os.PathLike, *, split: str = "test", data: str | None = None,
                        root: str | None = None, batch_size: int = 1024, device: str = "auto",
                        ood: Sequence[str] = (), ood_seed: int = 0) -> dict[str, Any]:
    """Accuracy (%) and cross-entropy of a checkpoint on ``split`` of its data set.

    The validation split and the per-class subset are rebuilt from the checkpoint's recipe, and
    the inputs are normalised as in training, so ``val`` and ``train`` mean what they meant then.
    ``ood`` names out-of-domain versions of the split (``kind:amount``, see
    :mod:`softdistill.data.shifts`, drawn with ``ood_seed``); their results are under
    ``result["ood"][canonical_name]``.
    """
    ood_specs = parse_ood_specs(ood)
    payload = load_checkpoint(path)
    meta = CheckpointMeta.of(payload, path)
    config = saved_data(meta, name=data, root=root)
    bundle = prepare_data(config)
    check_model_fits(meta, path, config.name, bundle.num_classes, bundle.in_channels, bundle.image_size)
    chosen = {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split]
    if chosen is None:
        raise ValueError(f"{path}: the recipe held out no validation set (data.val_size = 0)")
    if ood_specs and isinstance(chosen, StreamSet):
        raise ValueError(f"{path}: out-of-domain sets are made from images in memory, and the recipe streams its "
                         "data (data.loader); evaluate without --ood")
    evaluate_on = _evaluator(payload, path, batch_size, device)
    result = evaluate_on(chosen)
    shifted = {s.name: evaluate_on(ood_set(chosen, s, ood_seed)) for s in ood_specs}  # one shifted copy at a time
    return {"checkpoint": str(path), "model": meta.model.name, "data": config.name, "split": split, "samples": len(chosen),
            "epoch": payload.get("epoch"), **result, "ood": shifted}
