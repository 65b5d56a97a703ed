"""Soft labels stored per training sample: a table keyed by sample id, and its file format.

A **soft-label file** is a ``torch.save`` dict read with ``weights_only=True``::

    {
      "format": "softdistill-soft-labels-v1",
      "soft_labels": float tensor N x K,  # probabilities: each row sums to 1, or is all zero = no supervision
      "labels": int64 tensor N,           # the true classes (for measuring; never used for training)
      "sample_ids": int64 tensor N (optional), # the sample id of each row (softdistill.data: stable ids)
      "data": {"name": ..., "split": ..., "val_size": ..., "per_class": ..., "split_seed": ...} or None,
      "class_names": [...] (optional),
      "meta": {...} (optional, plain data: how the table was made, its measured indicators)
    }

With ``sample_ids``, row i belongs to the sample with id ``sample_ids[i]``; a file without them
(older files) lists the samples of the split ``data`` describes in its order.  Files without ``format`` are accepted when they hold
``labels`` and either ``soft_labels`` / ``probs`` (probabilities) or ``logits`` (softmax-ed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from softdistill.atomic import torch_save_atomic
from softdistill.checkpoint import UnreadableTorchFile, torch_load_plain
from softdistill.compatibility import ANY_VIEW
from softdistill.data.samples import IdIndex, TensorSet
from softdistill.soft_labels.base import LookupSource
from softdistill.types import Batch

__all__ = ["SOFT_LABEL_FORMAT", "SoftLabelTable", "save_soft_labels", "load_soft_labels", "rows_for_split"]

SOFT_LABEL_FORMAT = "softdistill-soft-labels-v1"
#: How far from 1 a row sum may be (float16 rounding of a 100-class row stays well inside).
ROW_SUM_TOLERANCE = 1e-3


class SoftLabelTable(LookupSource):
    """Fixed probabilities per training sample, looked up by ``batch.sample_id``.

    ``probs(batch)`` returns the stored probabilities (rows of zeros, "no supervision", stay zero);
    ``forward(batch)`` returns ``log p`` (zeros mapped to log 1e-12) so that any method that expects
    teacher *logits* can use the table; an all-zero row then reads as uniform.  The ``soft-label``
    method reads ``probs`` and leaves unsupervised rows out of its loss.  Unlike a cached teacher,
    a table is a label per sample, not a function of the image, so augmentation is allowed
    (it serves every view, but not mixed ones: their soft label is not that of either sample).
    Lookups are checked per batch until :meth:`verify_lookups` (the runner calls it once).
    """

    serves = frozenset({ANY_VIEW})

    def __init__(self, probs: Tensor, sample_ids: Tensor | None = None) -> None:
        super().__init__()
        if probs.dim() != 2:
            raise ValueError(f"a soft-label table must be N x K, got {tuple(probs.shape)}")
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise ValueError("a soft-label table must hold finite, non-negative probabilities")
        ids = torch.arange(len(probs)) if sample_ids is None else sample_ids.cpu().long()
        if ids.shape != (len(probs),):
            raise ValueError(f"{len(probs)} soft labels but sample ids of shape {tuple(ids.shape)}")
        order = torch.argsort(ids)
        self.register_buffer("ids", ids[order])
        self.register_buffer("table", probs.detach().float()[order])

    def missing(self) -> str:
        return "a sample id of the batch has no row in the soft-label table"

    def probs(self, batch: Batch) -> Tensor:
        return self.table[self.rows(batch.sample_id)]

    def forward(self, batch: Batch) -> Tensor:
        return self.probs(batch).clamp_min(1e-12).log()


def save_soft_labels(path: str | os.PathLike, soft_labels: Tensor, labels: Tensor, *,
                     sample_ids: Tensor | None = None, data: dict[str, Any] | None = None,
                     class_names: list[str] | None = None, meta: dict[str, Any] | None = None) -> None:
    """Write a soft-label file (atomically); see the module docstring for the format."""
    soft_labels = soft_labels.detach().float().cpu()
    labels = labels.detach().long().cpu()
    if soft_labels.dim() != 2 or labels.shape != (soft_labels.shape[0],):
        raise ValueError(f"soft_labels must be N x K and labels N, got {tuple(soft_labels.shape)} and {tuple(labels.shape)}")
    payload = {"format": SOFT_LABEL_FORMAT, "soft_labels": soft_labels, "labels": labels, "data": data,
               "class_names": class_names, "meta": meta or {}}
    if sample_ids is not None:
        if sample_ids.shape != labels.shape:
            raise ValueError(f"sample_ids must have the shape of labels {tuple(labels.shape)}, got {tuple(sample_ids.shape)}")
        payload["sample_ids"] = sample_ids.detach().long().cpu()
    torch_save_atomic(path, payload)


def _check_row_sums(soft: Tensor, path: Path) -> None:
    """Every row sums to 1 within :data:`ROW_SUM_TOLERANCE`, or is all zero (no supervision)."""
    sums = soft.double().sum(dim=1)
    error = torch.where(sums == 0, 0.0, (sums - 1).abs())
    bad = int((error > ROW_SUM_TOLERANCE).sum())
    if bad:
        worst = int(error.argmax())
        raise ValueError(f"{path}: soft-label rows must sum to 1 (or be all zero: no supervision); {bad} of "
                         f"{len(soft)} rows do not, the worst is row {worst}, summing to {sums[worst].item():.6g}. "
                         "A row that sums to s scales its loss by s: normalise the rows (p / p.sum(1, keepdim=True))")


def load_soft_labels(path: str | os.PathLike) -> dict[str, Any]:
    """Read a soft-label file; returns the dict with ``soft_labels`` (float32 probabilities, N x K)
    and ``labels`` (int64, N) checked, plus ``data``, ``class_names`` and ``meta`` (possibly None)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no soft-label file at {path}")
    try:
        blob = torch_load_plain(path)
    except UnreadableTorchFile as exc:
        raise ValueError(f"cannot read soft-label file {path}: {exc}") from None
    if not isinstance(blob, dict) or "labels" not in blob:
        raise ValueError(f"{path} is not a soft-label file: expected a dict with 'labels' and 'soft_labels' "
                         "(or 'probs' / 'logits')")
    if "soft_labels" in blob or "probs" in blob:
        soft = torch.as_tensor(blob.get("soft_labels", blob.get("probs"))).float()
    elif "logits" in blob:
        soft = torch.softmax(torch.as_tensor(blob["logits"]).float(), dim=1)
    else:
        raise ValueError(f"{path}: no 'soft_labels', 'probs' or 'logits' entry")
    labels = torch.as_tensor(blob["labels"])
    if soft.dim() != 2 or labels.shape != (soft.shape[0],):
        raise ValueError(f"{path}: soft labels must be N x K and labels N, got {tuple(soft.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.dtype.is_floating_point or bool((labels < 0).any()) or bool((labels >= soft.shape[1]).any()):
        raise ValueError(f"{path}: labels must be integers in [0, {soft.shape[1]})")
    if not bool(torch.isfinite(soft).all()) or bool((soft < 0).any()):
        raise ValueError(f"{path}: soft labels must be finite, non-negative probabilities")
    _check_row_sums(soft, path)
    ids = blob.get("sample_ids")
    if ids is not None:
        ids = torch.as_tensor(ids)
        if ids.shape != labels.shape or ids.dtype.is_floating_point or len(ids.unique()) != len(ids):
            raise ValueError(f"{path}: sample_ids must be {len(labels)} distinct integers, one per row")
        ids = ids.long()
    return {"soft_labels": soft, "labels": labels.long(), "sample_ids": ids, "data": blob.get("data"),
            "class_names": blob.get("class_names"), "meta": blob.get("meta") or {}, "path": str(path)}


def rows_for_split(blob: dict[str, Any], split: TensorSet) -> tuple[Tensor, Tensor]:
    """The soft labels and labels of a loaded file's rows for the samples of ``split``, in its order.

    A file with sample ids gives the rows of the split's ids (every id must be there, with the
    same label); a file without them must list exactly the split's labels in its order.
    """
    path, ids, labels = blob["path"], blob["sample_ids"], blob["labels"]
    want_labels = split.labels.cpu().long()
    if ids is None:
        if labels.shape != want_labels.shape or not torch.equal(labels, want_labels):
            raise ValueError(f"{path}: its labels are not those of this recipe's training split ({len(labels)} rows "
                             f"against {len(want_labels)} samples, or another order) and it has no sample_ids; the "
                             "file must come from the same data, val_size, per_class and split_seed")
        return blob["soft_labels"], labels
    rows, found = IdIndex(ids).find(split.ids)
    missing = ~found
    if bool(missing.any()):
        raise ValueError(f"{path}: {int(missing.sum())} sample ids of this recipe's training split have no row "
                         f"(e.g. sample {int(split.ids[missing][0])}); the file was made for other data")
    if not torch.equal(labels[rows], want_labels):
        raise ValueError(f"{path}: the labels of its rows differ from those of this recipe's training split for the "
                         "same sample ids: the file was made for another data set")
    return blob["soft_labels"][rows], labels[rows]
