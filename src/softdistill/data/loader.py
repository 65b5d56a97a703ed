"""In-memory datasets, the on-device normalisation, and a deterministic, DDP-aware batch loader.

Images are held as one uint8 tensor on the training device; a batch is a gather plus a few
vectorised operations, which on small images is far faster than a per-sample DataLoader.
The order of an epoch comes from a generator seeded by (seed, epoch); the augmentation of every
sample is its view under a :class:`~softdistill.data.views.ViewPlan`, a pure function of
(plan seed, sample id, view).  So an epoch is reproducible on its own (exact resume) and
identical across DDP ranks (each rank takes its slice of the global batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from softdistill.data.views import ViewPlan
from softdistill.types import Batch

__all__ = ["TensorSet", "BatchTransform", "BatchLoader", "epoch_generator"]


@dataclass
class TensorSet:
    """Images (uint8, N x C x H x W), labels (int64, N) and sample ids (int64, N) of one split.

    A sample id is the sample's position in its data source's official split, so it does not
    change with the validation split or the per-class subset; it defaults to ``0..N-1``.
    """

    images: Tensor
    labels: Tensor
    ids: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if self.ids is None:
            self.ids = torch.arange(len(self.labels))
        if self.ids.shape != self.labels.shape:
            raise ValueError(f"{len(self.labels)} samples but sample ids of shape {tuple(self.ids.shape)}")
        self.ids = self.ids.cpu().long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: Tensor) -> "TensorSet":
        return TensorSet(self.images[index], self.labels[index], self.ids[index.cpu()])

    def to(self, device: torch.device | str) -> "TensorSet":
        return TensorSet(self.images.to(device), self.labels.to(device), self.ids)

    def rows_of(self, sample_ids: Tensor) -> Tensor:
        """Rows (CPU int64) of the given sample ids; ValueError if one is not in this split."""
        ids = sample_ids.cpu().long()
        order = torch.argsort(self.ids)
        sorted_ids = self.ids[order]
        pos = torch.searchsorted(sorted_ids, ids).clamp_max(len(sorted_ids) - 1)
        if len(sorted_ids) == 0 or not torch.equal(sorted_ids[pos], ids):
            raise ValueError("sample ids not in this split")
        return order[pos]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class BatchTransform:
    """uint8 images -> float in [0, 1] -> standardised per channel: ``x = (u8 / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @staticmethod
    def to_unit(images: Tensor) -> Tensor:
        return images.float().div_(255)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, images: Tensor) -> Tensor:
        return self.normalize(self.to_unit(images))


class BatchLoader:
    """Iterate over a :class:`TensorSet` in batches of :class:`~softdistill.types.Batch`.

    ``batch_size`` is the global batch.  Under DDP (``world_size > 1``) rank r receives the r-th
    of ``world_size`` near-equal slices of every global batch, so the ranks together see exactly
    the batches a single process would.  ``plan`` (training only) augments every sample as its
    view of the epoch; without one every batch shows the clean images (view 0).  ``seed`` seeds the
    shuffled order.  Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, data: TensorSet, batch_size: int, transform: BatchTransform, *, shuffle: bool = False,
                 drop_last: bool = False, plan: ViewPlan | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the number of processes {world_size}")
        self.data = data
        self.batch_size = batch_size
        self.transform = transform
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.plan = plan if plan is not None and plan.is_random else None
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        full, rest = divmod(n, self.batch_size)
        # A training tail smaller than the number of ranks would leave a rank without samples
        # (DDP needs every rank to step): drop it.  Evaluation keeps it; empty slices are skipped.
        keep_rest = rest > 0 and not self.drop_last and (rest >= self.world_size or not self.shuffle)
        return full + int(keep_rest)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.data)
        order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch)) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            global_rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            rows = torch.tensor_split(global_rows, self.world_size)[self.rank]
            if len(rows) == 0:
                continue
            views = (self.plan.views_in_epoch(self.data.ids[rows], self.epoch) if self.plan is not None
                     else torch.zeros(len(rows), dtype=torch.long))
            yield self.batch_of(rows, views)

    def in_order(self, view: int) -> Iterator[Batch]:
        """Every sample of the split in row order, each as its view ``view`` (this process alone)."""
        n = len(self.data)
        for start in range(0, n, self.batch_size):
            rows = torch.arange(start, min(start + self.batch_size, n))
            yield self.batch_of(rows, torch.full((len(rows),), view, dtype=torch.long))

    def batch_of(self, rows: Tensor, views: Tensor) -> Batch:
        """The batch of the views ``views`` of the samples at ``rows`` (CPU int64)."""
        data, plan = self.data, self.plan
        device = data.images.device
        ids = data.ids[rows]
        x = self.transform.to_unit(data.images[rows.to(device)])
        y_b = lam = None
        if plan is not None:
            x = plan.apply_geometry(x, plan.geometry(ids, views))
            if plan.mixes:
                mixing = plan.mixing(ids, views, rows, len(data), tuple(x.shape[-2:]))
                partner = mixing.partner
                partner_x = self.transform.to_unit(data.images[partner.to(device)])
                partner_x = plan.apply_geometry(partner_x, plan.geometry(data.ids[partner], views))
                x = plan.combine(x, partner_x, mixing)
                y_b = data.labels[partner.to(device)]
                lam = mixing.lam.to(device)
        return Batch(x=self.transform.normalize(x), y=data.labels[rows.to(device)], sample_id=ids.to(device),
                     view=views.to(device), y_b=y_b, lam=lam)
