"""In-memory datasets, batched on-device augmentation, and a deterministic, DDP-aware batch loader.

Images are held as one uint8 tensor on the training device; a batch is a gather plus a few
vectorised operations, which on small images is far faster than a per-sample DataLoader.
Every random draw comes from a generator seeded by (seed, epoch), so an epoch is reproducible
on its own (exact resume) and identical across DDP ranks (each rank takes its slice of the
global batch, augmented with the parameters drawn for the global batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from softdistill.types import Batch

__all__ = ["TensorSet", "BatchTransform", "BatchLoader", "epoch_generator"]


@dataclass
class TensorSet:
    """Images (uint8, N x C x H x W) and labels (int64, N) of one split."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: Tensor) -> "TensorSet":
        return TensorSet(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> "TensorSet":
        return TensorSet(self.images.to(device), self.labels.to(device))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class BatchTransform:
    """uint8 images -> float, random crop (zero padding) and horizontal flip, then standardise.

    ``x = (crop_flip(u8 / 255) - mean) / std`` per channel.  Random parameters are drawn by
    :meth:`draw` (on the CPU, from an explicit generator) and applied by :meth:`__call__`.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], crop_padding: int = 0, hflip: bool = False) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = crop_padding
        self.hflip = hflip

    @property
    def is_random(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def draw(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        params: dict[str, Tensor] = {}
        if self.crop_padding:
            params["offsets"] = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=generator)
        if self.hflip:
            params["flip"] = torch.rand(n, generator=generator) < 0.5
        return params

    def __call__(self, images: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        x = images.float().div_(255)
        params = params or {}
        if "offsets" in params:
            x = self._crop(x, params["offsets"].to(x.device))
        if "flip" in params:
            flip = params["flip"].to(x.device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(3), x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _crop(self, x: Tensor, offsets: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p))
        rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * p)
        rows_taken = padded.gather(2, rows)
        cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
        return rows_taken.gather(3, cols)


class BatchLoader:
    """Iterate over a :class:`TensorSet` in batches of :class:`~softdistill.types.Batch`.

    ``batch_size`` is the global batch.  Under DDP (``world_size > 1``) rank r receives the r-th
    of ``world_size`` near-equal slices of every global batch, so the ranks together see exactly
    the batches a single process would.  Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, data: TensorSet, batch_size: int, transform: BatchTransform, *, shuffle: bool = False,
                 drop_last: bool = False, augment: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the number of processes {world_size}")
        self.data = data
        self.batch_size = batch_size
        self.transform = transform
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment and transform.is_random
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
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        device = self.data.images.device
        for b in range(len(self)):
            global_index = order[b * self.batch_size:(b + 1) * self.batch_size]
            params = self.transform.draw(len(global_index), generator) if self.augment else None
            local = torch.tensor_split(torch.arange(len(global_index)), self.world_size)[self.rank]
            index = global_index[local]
            if len(index) == 0:
                continue
            if params is not None:
                params = {k: v[local] for k, v in params.items()}
            index_dev = index.to(device)
            x = self.transform(self.data.images[index_dev], params)
            yield Batch(x=x, y=self.data.labels[index_dev], index=index_dev)
