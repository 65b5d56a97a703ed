"""Seeded, stratified index splits.

Both functions draw from their own ``torch.Generator`` seeded with ``seed`` (never the global RNG),
visit classes in ascending label order, and return sorted int64 CPU indices, so the result depends
only on the labels and the seed.
"""

from __future__ import annotations

import torch

__all__ = ["stratified_split", "per_class_subset"]


def _as_labels(labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return labels.detach().cpu().long()


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, int):
        if not 0 <= val_size <= n:
            raise ValueError(f"val_size={val_size} must be between 0 and the number of samples ({n})")
        return val_size
    if val_size == 0:
        return 0
    if not 0 < val_size < 1:
        raise ValueError(f"a float val_size is a fraction and must lie in (0, 1), got {val_size}; "
                         "give an int for a count")
    return round(val_size * n)


def stratified_split(labels: torch.Tensor, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into ``(keep_idx, val_idx)``, stratified by class.

    ``val_size`` is a count (int) or a fraction in (0, 1) (float, rounded to a count); 0 gives an
    empty validation set.  The count is shared out over classes in proportion to their sizes
    (largest remainder, ties to the lower label), so the total is exact.  Both index tensors are
    int64, sorted and disjoint, and together cover ``range(len(labels))``.
    """
    labels = _as_labels(labels)
    n = labels.numel()
    total = _val_count(val_size, n)
    classes, counts = torch.unique(labels, return_counts=True)
    quota = [total * int(c) // n for c in counts]
    remainders = [total * int(c) % n for c in counts]
    for k in sorted(range(len(quota)), key=lambda k: -remainders[k])[: total - sum(quota)]:
        quota[k] += 1
    gen = torch.Generator().manual_seed(seed)
    val_parts = []
    for cls, take in zip(classes.tolist(), quota):
        members = torch.nonzero(labels == cls).flatten()
        val_parts.append(members[torch.randperm(members.numel(), generator=gen)[:take]])
    is_val = torch.zeros(n, dtype=torch.bool)
    if val_parts:
        is_val[torch.cat(val_parts)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted int64 indices of ``per_class`` randomly chosen samples of every class present.

    Raises ValueError naming the first class (ascending label) that has fewer than ``per_class`` samples.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    labels = _as_labels(labels)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        if members.numel() < per_class:
            raise ValueError(f"class {cls} has only {members.numel()} samples, fewer than per_class={per_class}")
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chosen).sort().values
