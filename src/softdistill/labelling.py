"""Labelling a store from Python in one call: a model (or any function of a batch) x the samples of a
split x a view plan -> a store, with its header built and checked here, a progress bar, and resume.

:func:`label_store` makes the batches of every (sample, view) with the loaders training uses, calls the
labeller on each under ``torch.inference_mode()`` and hands the logits to
:func:`~softdistill.store.writer.write_store`, which checks them (shape, finite) and writes the shards.
``softdistill label RECIPE`` runs the same function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import DataBundle
from softdistill.data.samples import StreamSet, TensorSet
from softdistill.data.stream import StreamLoader, split_loader
from softdistill.data.views import ViewPlan
from softdistill.runtime.distributed import DistContext, process_group_context
from softdistill.soft_labels.base import SoftLabelSource
from softdistill.store.encoding import Encoding, EncodingConfig
from softdistill.store.writer import write_store
from softdistill.types import Batch

__all__ = ["label_store", "labeller_identity"]

Labeller = nn.Module | Callable[[Batch], Tensor]


def labeller_identity(labeller: Labeller) -> dict[str, Any]:
    """What a store records about who labelled it when the caller says nothing (the manifest's ``teacher``):
    a model's class and the sha256 of its weights, or a function's qualified name.

    Args:
        labeller: a model or a function, as :func:`label_store` takes it.

    Returns:
        ``{"module": CLASS, "sha256": HEX}`` for an ``nn.Module``, ``{"function": NAME}`` otherwise.

    Example:
        >>> sorted(labeller_identity(torch.nn.Linear(2, 3)))
        ['module', 'sha256']
    """
    if isinstance(labeller, nn.Module):
        digest = hashlib.sha256()
        for name, tensor in labeller.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        kind = type(labeller)
        return {"module": f"{kind.__module__}.{kind.__qualname__}", "sha256": digest.hexdigest()}
    return {"function": f"{getattr(labeller, '__module__', '?')}.{getattr(labeller, '__qualname__', repr(labeller))}"}


def _device_of(labeller: Labeller) -> torch.device:
    parameter = next(labeller.parameters(), None) if isinstance(labeller, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def _as_encoding(encoding: str | Mapping[str, Any] | EncodingConfig | Encoding, num_classes: int) -> Encoding:
    if isinstance(encoding, Encoding):
        if encoding.num_classes != num_classes:
            raise ValueError(f"the encoding is for {encoding.num_classes} classes, the labeller gives {num_classes} logits")
        return encoding
    if isinstance(encoding, str):
        encoding = {"kind": encoding}
    config = encoding if isinstance(encoding, EncodingConfig) else EncodingConfig.model_validate(dict(encoding))
    return config.encoding(num_classes)


def label_store(labeller: Labeller, data: DataBundle | TensorSet | StreamSet, plan: ViewPlan, folder: str | Path, *,
                encoding: str | Mapping[str, Any] | EncodingConfig | Encoding = "full",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, batch_size: int = 256,
                shard_samples: int = 4096, device: torch.device | str | None = None,
                loader: BatchLoader | StreamLoader | None = None, identity: Mapping[str, Any] | None = None,
                data_identity: Mapping[str, Any] | None = None, ctx: DistContext | None = None, quiet: bool = False,
                verify: bool = False) -> dict[str, Any] | None:
    """Label the soft labels of every (sample, view) of ``data``'s training samples under ``plan`` into the
    store ``folder``: the header is built and checked here, a progress bar shows the labelling, an
    interrupted call continues where it stopped (the same call again), and a folder holding another store
    (other data, labeller, views or encoding) is refused.

    Args:
        labeller: an ``nn.Module`` (called on the batch's inputs ``x``, in eval mode, under
            ``torch.inference_mode()``), or a soft-label source or function called on the whole
            :class:`~softdistill.types.Batch` (``x``, ``y``, ``sample_id``, ``view``, and ``y_b``, ``lam``
            for mixed views); returns B x K logits.
        data: a :class:`~softdistill.data.prepare.DataBundle` (its ``train`` split, normalisation and
            class names) or a split (:class:`~softdistill.data.samples.TensorSet` or ``StreamSet``).
        plan: the views to label; it needs a fixed number of them (``views`` > 0 for a plan that augments).
        folder: the store's folder.
        encoding: ``"full"``, or the settings of :class:`~softdistill.store.encoding.EncodingConfig` as a
            mapping (e.g. ``{"kind": "topk", "k": 5, "dtype": "float16"}``), or an ``Encoding``.
        mean, std: the per-channel normalisation of the inputs ([0, 1] units), as the labeller was trained
            with; taken from a ``DataBundle``, required with a bare split.
        batch_size: samples per call of the labeller.
        shard_samples: samples per shard file.
        device: where the batches are made (default: the labeller's parameters' device, else the CPU).
        loader: the loader that makes the views (default: one over the training split, made here).
        identity: what the manifest records about the labeller (default: :func:`labeller_identity`).
        data_identity: settings that identify the data (a recipe's data keys); default the data set's name.
        ctx: the process group (default: torch.distributed's when it is initialised, else one process).
        quiet: no progress bar or messages.
        verify: hash every file of a store that is already complete, and label its damaged shards again.

    Returns:
        The summary (also the store's ``summary.json``) on rank 0; None on other ranks, or when the store was
        complete and sound already.

    Example:
        >>> import tempfile
        >>> from softdistill import Store, TensorSet, ViewPlan
        >>> data = TensorSet(torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1]))
        >>> teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> folder = tempfile.mkdtemp()
        >>> summary = label_store(teacher, data, ViewPlan(seed=1, crop_padding=1, views=2), folder, mean=[0.5],
        ...                       std=[0.25], encoding={"kind": "topk", "k": 2}, quiet=True)
        >>> summary["records"], Store(folder).views
        (10, 2)
    """
    bundle = data if isinstance(data, DataBundle) else None
    split = bundle.train if bundle is not None else data
    if mean is None or std is None:
        if bundle is None:
            raise ValueError("label_store: give the inputs' normalisation, mean=[...] and std=[...] per channel in [0, 1] "
                             "units, as the labeller was trained with (a DataBundle from prepare_data carries it)")
        mean, std = bundle.mean, bundle.std
    if plan.distinct_views is None:
        raise ValueError("label_store: the plan draws a fresh view every epoch (views: 0); a store holds a fixed "
                         "number of views per sample: give the plan views=V")
    device = torch.device(device) if device is not None else _device_of(labeller)
    ctx = ctx or process_group_context(device)
    if loader is None:
        loader = split_loader(split, batch_size, BatchTransform(mean, std), device=device, plan=plan)
    elif loader.plan != (plan if plan.is_random else None):
        raise ValueError("label_store: the loader makes the views of another plan than the one given")

    model_called_on_x = isinstance(labeller, nn.Module) and not isinstance(labeller, SoftLabelSource)
    training = labeller.training if isinstance(labeller, nn.Module) else False

    def logits_of(batch: Batch) -> Tensor:
        with torch.inference_mode():
            return labeller(batch.x) if model_called_on_x else labeller(batch)

    def label(rows: Tensor, views: Tensor) -> Tensor:
        return logits_of(loader.batch_of(rows, views))

    if isinstance(labeller, nn.Module):
        labeller.eval()
    try:
        probe = logits_of(loader.batch_of(torch.arange(min(len(split), 2)), torch.zeros(min(len(split), 2),
                                                                                        dtype=torch.long)))
        classes = probe.shape[-1]
        if bundle is not None and classes != bundle.num_classes:
            raise ValueError(f"label_store: the labeller gives {classes} logits per sample, the data has "
                             f"{bundle.num_classes} classes")
        names = list(bundle.class_names) if bundle is not None else None
        facts = dict(data_identity) if data_identity is not None else ({"name": bundle.name} if bundle else {})
        header = {"data": {**facts, **({"class_names": names} if names is not None else {}),
                           "image_shape": list(split.image_shape)},
                  "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
                  "teacher": dict(identity) if identity is not None else labeller_identity(labeller),
                  "views": plan.recorded()}
        return write_store(folder, header, split.ids, split.labels, label, encoding=_as_encoding(encoding, classes),
                           views=plan.distinct_views, shard_samples=shard_samples, batch_size=batch_size, ctx=ctx,
                           quiet=quiet, verify=verify)
    finally:
        if isinstance(labeller, nn.Module):
            labeller.train(training)
