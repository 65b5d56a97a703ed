"""Soft labels stored per training sample: a table source keyed by sample index, and its file format.

A **soft-label file** is a ``torch.save`` dict read with ``weights_only=True``::

    {
      "format": "softdistill-soft-labels-v1",
      "soft_labels": float tensor N x K,  # probabilities; a row may be all zero = no supervision
      "labels": int64 tensor N,           # the true classes (for measuring; never used for training)
      "data": {"name": ..., "split": ..., "val_size": ..., "per_class": ..., "split_seed": ...} or None,
      "class_names": [...] (optional),
      "meta": {...} (optional, plain data: how the table was made, its measured indicators)
    }

Row i belongs to sample i of the split ``data`` describes (the same order as
``softdistill.data.prepare_data`` gives).  Files without ``format`` are accepted when they hold
``labels`` and either ``soft_labels`` / ``probs`` (probabilities) or ``logits`` (softmax-ed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from softdistill.types import Batch

__all__ = ["SOFT_LABEL_FORMAT", "SoftLabelTable", "save_soft_labels", "load_soft_labels"]

SOFT_LABEL_FORMAT = "softdistill-soft-labels-v1"


class SoftLabelTable(nn.Module):
    """A soft-label source: fixed probabilities per training sample, looked up by ``batch.index``.

    ``probs(batch)`` returns the stored probabilities (rows of zeros, "no supervision", stay zero);
    ``forward(batch)`` returns ``log p`` (zeros mapped to log 1e-12) so that any method that expects
    teacher *logits* can use the table; an all-zero row then reads as uniform.  The ``soft-label``
    method reads ``probs`` and leaves unsupervised rows out of its loss.  Unlike a cached teacher,
    a table is a label per sample, not a function of the image, so augmentation is allowed.
    """

    def __init__(self, probs: Tensor) -> None:
        super().__init__()
        if probs.dim() != 2:
            raise ValueError(f"a soft-label table must be N x K, got {tuple(probs.shape)}")
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise ValueError("a soft-label table must hold finite, non-negative probabilities")
        self.register_buffer("table", probs.detach().float())

    def probs(self, batch: Batch) -> Tensor:
        return self.table[batch.index.to(self.table.device)]

    def forward(self, batch: Batch) -> Tensor:
        return self.probs(batch).clamp_min(1e-12).log()


def save_soft_labels(path: str | os.PathLike, soft_labels: Tensor, labels: Tensor, *,
                     data: dict[str, Any] | None = None, class_names: list[str] | None = None,
                     meta: dict[str, Any] | None = None) -> None:
    """Write a soft-label file (atomically); see the module docstring for the format."""
    soft_labels = soft_labels.detach().float().cpu()
    labels = labels.detach().long().cpu()
    if soft_labels.dim() != 2 or labels.shape != (soft_labels.shape[0],):
        raise ValueError(f"soft_labels must be N x K and labels N, got {tuple(soft_labels.shape)} and {tuple(labels.shape)}")
    payload = {"format": SOFT_LABEL_FORMAT, "soft_labels": soft_labels, "labels": labels, "data": data,
               "class_names": class_names, "meta": meta or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_soft_labels(path: str | os.PathLike) -> dict[str, Any]:
    """Read a soft-label file; returns the dict with ``soft_labels`` (float32 probabilities, N x K)
    and ``labels`` (int64, N) checked, plus ``data``, ``class_names`` and ``meta`` (possibly None)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no soft-label file at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
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
    return {"soft_labels": soft, "labels": labels.long(), "data": blob.get("data"),
            "class_names": blob.get("class_names"), "meta": blob.get("meta") or {}, "path": str(path)}
