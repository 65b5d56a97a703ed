"""A worker-based streaming loader for image folders and shards of any size.

A split is a :class:`StreamSet`: labels, sample ids and a way to open each sample's encoded image,
nothing decoded; :class:`FileSet` is that of an image folder (one file per sample), the shards of
:mod:`softdistill.data.shards` another.  The batches of
an epoch are those of the memory loader (:class:`~softdistill.data.loader.EpochBatches`: the same
global order from (seed, epoch), the same DDP slices, the same views); each batch is decoded by a
``torch.utils.data.DataLoader`` worker process into uint8 images of one size (a :class:`Decoder`),
pinned and copied without blocking to a CUDA device, where the crop, flip, mix and the
normalisation run exactly as in the memory loader (:func:`~softdistill.data.loader.assemble`).
So a stream loader and a memory loader over the same images yield identical batches, and
workers, ranks and a resumed run agree on every one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from softdistill.data.loader import (BatchLoader, BatchTransform, EpochBatches, Fetched, TensorSet, assemble,
                                     checked_ids, fetch, pixel_stats)
from softdistill.data.sources import list_imagefolder, open_rgb
from softdistill.data.views import ViewPlan
from softdistill.hashing import hash_keys
from softdistill.types import Batch

__all__ = ["StreamSet", "FileSet", "folder_split", "Decoder", "StreamLoader", "split_loader", "sample_stats",
           "decode_all"]


class StreamSet(ABC):
    """A streamed split: ``labels`` (int64, N), sample ``ids`` (int64, N) and each sample's encoded image,
    opened on demand (:meth:`open`) and decoded to 3 x ``image_size`` x ``image_size``."""

    labels: Tensor
    image_size: int
    ids: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @abstractmethod
    def open(self, row: int) -> Any:
        """The image of the sample at ``row`` as an RGB ``PIL.Image``; a :class:`DatasetFormatError`
        naming the file when it cannot be read."""

    @abstractmethod
    def subset(self, index: Tensor) -> "StreamSet":
        """The samples at rows ``index``, keeping their ids."""


@dataclass
class FileSet(StreamSet):
    """Image files (one per sample), labels (int64, N) and sample ids (int64, N; default ``0..N-1``, the
    file's position in its sorted split)."""

    files: tuple[Path, ...]
    labels: Tensor
    image_size: int
    ids: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.files = tuple(self.files)
        self.ids = checked_ids(len(self.files), self.labels, self.ids)

    def open(self, row: int) -> Any:
        return open_rgb(self.files[row])

    def subset(self, index: Tensor) -> "FileSet":
        return FileSet(tuple(self.files[i] for i in index.tolist()), self.labels[index], self.image_size,
                       self.ids[index])


def folder_split(root: str | None, split: str, image_size: int) -> tuple[FileSet, tuple[str, ...]]:
    """The files of one split of the image folder ``root`` and its class names (nothing decoded)."""
    listing = list_imagefolder(root, split)
    return FileSet(listing.files, listing.labels, image_size), listing.class_names


@dataclass(frozen=True)
class Decoder:
    """Decode files to uint8 images of ``size`` x ``size``: a view's random resized crop when ``plan``
    has one (its box a pure function of the view), else resized to ``resize`` on the shorter side and
    centre-cropped when ``resize`` is given, else resized to the square (as the memory loader does)."""

    size: int
    plan: ViewPlan | None = None
    resize: int | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"cannot centre-crop {self.size} pixels out of a shorter side of {self.resize}: "
                             "data.eval_resize must be >= data.image_size")

    def image(self, img: Any, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The RGB ``PIL.Image`` ``img`` as uint8 H x W x 3: the crop ``box`` (top, left, bottom, right)
        resized to the square when given, else as the class docstring says."""
        if box is not None:
            top, left, bottom, right = box
            img = img.resize((self.size, self.size), _bilinear(), box=(left, top, right, bottom))
        elif self.resize is not None:
            img = _centre_crop(_shorter_side(img, self.resize), self.size)
        else:
            img = img.resize((self.size, self.size), _bilinear())
        return np.asarray(img, dtype=np.uint8)

    def batch(self, data: StreamSet, rows: Tensor, views: Tensor) -> Tensor:
        """uint8 B x 3 x size x size images of the views ``views`` of the samples of ``data`` at ``rows``
        (the crop boxes of a batch drawn at once: one vectorised draw, not one per image)."""
        images = [data.open(r) for r in rows.tolist()]
        boxes: list[Any] = [None] * len(images)
        if self.plan is not None and self.plan.resized_crop is not None:
            boxes = self.plan.crop_box(data.ids[rows], views, torch.tensor([img.height for img in images]),
                                       torch.tensor([img.width for img in images])).tolist()
        out = torch.empty((len(images), 3, self.size, self.size), dtype=torch.uint8)
        for b, (img, box) in enumerate(zip(images, boxes)):  # one copy per image, into its place
            out[b].copy_(torch.from_numpy(self.image(img, box)).permute(2, 0, 1))
        return out


def _bilinear() -> Any:
    from PIL import Image

    return Image.BILINEAR


def _shorter_side(img: Any, side: int) -> Any:
    """``img`` resized (bilinear) so that its shorter side is ``side``, the aspect ratio kept."""
    w, h = img.size
    if w <= h:
        return img.resize((side, int(side * h / w)), _bilinear())
    return img.resize((int(side * w / h), side), _bilinear())


def _centre_crop(img: Any, size: int) -> Any:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


class _Batches(Dataset):
    """A map-style dataset whose keys are whole batches ``(rows, views)``: one key, one :class:`Fetched`."""

    def __init__(self, data: StreamSet, decoder: Decoder, plan: ViewPlan | None) -> None:
        self.data, self.decoder, self.plan = data, decoder, plan

    def __getitem__(self, key: tuple[Tensor, Tensor]) -> Fetched:
        rows, views = key
        d = self.data
        return fetch(rows, views, d.labels, d.ids, lambda r, v: self.decoder.batch(d, r, v), self.plan, place=True)


def _as_is(item: Fetched) -> Fetched:
    return item


def decoded(data: StreamSet, decoder: Decoder, plan: ViewPlan | None, batches: Iterable[tuple[Tensor, Tensor]],
            workers: int, pin: bool) -> Iterator[Fetched]:
    """The :class:`Fetched` of each ``(rows, views)`` of ``batches``, decoded by ``workers`` processes (0: here).

    An error in a worker (a corrupt file, a worker killed) ends the iteration with that error.  The
    DataLoader draws its workers' seeds from a generator of its own, never from torch's global RNG,
    which belongs to the model (a mid-epoch resume restores it; decoding draws no random number)."""
    loader = DataLoader(_Batches(data, decoder, plan), batch_size=None, sampler=list(batches), num_workers=workers,
                        collate_fn=_as_is, pin_memory=pin, generator=torch.Generator())
    yield from loader


class StreamLoader(EpochBatches):
    """Iterate over a :class:`StreamSet` in batches of :class:`~softdistill.types.Batch`, decoding in
    ``workers`` DataLoader processes; the batching rules are :class:`EpochBatches`'."""

    def __init__(self, data: StreamSet, batch_size: int, transform: BatchTransform, *, device: torch.device,
                 workers: int = 0, resize: int | None = None, **rules: Any) -> None:
        super().__init__(data.ids, batch_size, **rules)
        self.data = data
        self.transform = transform
        self.device = torch.device(device)
        self.workers = workers
        self.decoder = Decoder(data.image_size, self.plan, resize)

    def __iter__(self) -> Iterator[Batch]:
        return self._load(self.epoch_batches())

    def in_order(self, view: int) -> Iterator[Batch]:
        """Every sample of the split in row order, each as its view ``view`` (this process alone)."""
        return self._load(self.ordered_batches(view))

    def batch_of(self, rows: Tensor, views: Tensor) -> Batch:
        """The batch of the views ``views`` of the samples at ``rows`` (CPU int64), decoded in this process."""
        fetched = _Batches(self.data, self.decoder, self.plan)[rows, views]
        return assemble(fetched.to(self.device), self.transform, self.plan, self.channels_last)

    def _load(self, batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        for fetched in decoded(self.data, self.decoder, self.plan, batches, self.workers, pin=cuda):
            yield assemble(fetched.to(self.device, non_blocking=cuda), self.transform, self.plan, self.channels_last)


def split_loader(split: TensorSet | StreamSet, batch_size: int, transform: BatchTransform, *, device: torch.device,
                 workers: int = 0, resize: int | None = None, **rules: Any) -> BatchLoader | StreamLoader:
    """A loader over ``split``: on ``device`` for a split in memory, decoding in ``workers`` processes (images
    resized as :class:`Decoder` says, ``resize`` its centre crop) for a streamed one."""
    if isinstance(split, StreamSet):
        return StreamLoader(split, batch_size, transform, device=device, workers=workers, resize=resize, **rules)
    return BatchLoader(split.to(device), batch_size, transform, **rules)


def sample_stats(data: StreamSet, samples: int, workers: int = 0, batch_size: int = 64
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1] units) of at most ``samples`` images of ``data``, each resized
    to the square: the samples of smallest ``hash(sample_id)``, the same for every run on the split."""
    chosen = torch.argsort(hash_keys(data.ids, 0))[:samples].sort().values
    batches = ((rows, torch.zeros_like(rows)) for rows in chosen.split(batch_size))
    images = (f.images for f in decoded(data, Decoder(data.image_size), None, batches, workers, pin=False))
    return pixel_stats(images)


def decode_all(data: StreamSet, workers: int = 0, batch_size: int = 256) -> TensorSet:
    """Every image of ``data`` decoded by ``workers`` processes and resized to the square (as the memory
    loader's image folders are), in one :class:`~softdistill.data.loader.TensorSet` with the same ids."""
    batches = ((rows, torch.zeros_like(rows)) for rows in torch.arange(len(data)).split(batch_size))
    chunks = [f.images for f in decoded(data, Decoder(data.image_size), None, batches, workers, pin=False)]
    return TensorSet(torch.cat(chunks), data.labels, data.ids)
