"""Samples of one split, each with a stable id: in memory (:class:`TensorSet`) or encoded images read
on demand (:class:`StreamSet`, :class:`FileSet`); the errors of reading them; and the one id lookup.

A sample id is the sample's position in its data set's official split (or the id its reader
gives it), so it does not change with the validation split or the per-class subset; cached and
stored soft labels and every per-sample draw key on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = ["TensorSet", "StreamSet", "FileSet", "IdIndex", "checked_ids", "open_rgb", "DatasetNotFoundError",
           "DatasetFormatError", "UnreadableImageError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the places searched; the message lists them, in order, and how to get it."""


class DatasetFormatError(ValueError):
    """A dataset file is corrupt, truncated or not in the expected format; the message names the file."""


class UnreadableImageError(DatasetFormatError):
    """An image file (or a shard's sample) that Pillow cannot decode: corrupt, truncated, not an image.
    The stream loader's ``data.on_corrupt: skip`` leaves such samples out; every other format error
    stops the run."""


def checked_ids(n: int, labels: Tensor, ids: Tensor | None) -> Tensor:
    """The sample ids (CPU int64, default ``0..n-1``) of a split of ``n`` samples, checked against its
    labels (integer, one per sample) and distinct."""
    if labels.shape != (n,):
        raise ValueError(f"{n} samples but labels of shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers (class indices), got {labels.dtype}")
    ids = torch.arange(n) if ids is None else torch.as_tensor(ids)
    if ids.shape != labels.shape:
        raise ValueError(f"{n} samples but sample ids of shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"sample ids must be integers, got {ids.dtype}")
    ids = ids.cpu().long()
    if len(ids) and len(torch.unique(ids)) != len(ids):
        repeated = ids.sort().values
        twice = repeated[1:][repeated[1:] == repeated[:-1]]
        raise ValueError(f"sample ids must be distinct: id {int(twice[0])} is given to more than one sample")
    return ids


@dataclass
class TensorSet:
    """Images (uint8, N x C x H x W), labels (int64, N) and sample ids (int64, N; default ``0..N-1``) of
    one split, in memory.

    Args:
        images: uint8 N x C x H x W.
        labels: N integer class indices.
        ids: N distinct integer sample ids (default ``0..N-1``).

    Example:
        >>> data = TensorSet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 1]), torch.tensor([7, 3, 9]))
        >>> len(data), data.image_shape, data.subset(torch.tensor([2, 0])).ids
        (3, (1, 2, 2), tensor([9, 7]))
    """

    images: Tensor
    labels: Tensor
    ids: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        self.ids = checked_ids(self.images.shape[0], self.labels, self.ids)
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Tensor) -> "TensorSet":
        return TensorSet(self.images[index], self.labels[index], self.ids[index.cpu()])

    def to(self, device: torch.device | str) -> "TensorSet":
        return TensorSet(self.images.to(device), self.labels.to(device), self.ids)


class StreamSet(ABC):
    """A split read on demand: ``labels`` (int64, N), sample ``ids`` (int64, N) and each sample's encoded
    image, opened by :meth:`open` and decoded to 3 x ``image_size`` x ``image_size`` (``image_size`` None:
    at the images' own size, which must then be the same for all)."""

    labels: Tensor
    image_size: int | None
    ids: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.image_size is None:
            raise ValueError("a split read from files needs data.image_size, the side its images are decoded to")
        return (3, self.image_size, self.image_size)

    @abstractmethod
    def open(self, row: int) -> Any:
        """The image of the sample at ``row`` as an RGB ``PIL.Image``; a :class:`DatasetFormatError`
        naming the file when it cannot be read."""

    @abstractmethod
    def subset(self, index: Tensor) -> "StreamSet":
        """The samples at rows ``index``, keeping their ids."""

    def where(self, row: int) -> str:
        """The sample at ``row``, for messages (its file where it has one)."""
        return f"sample id {int(self.ids[row])}"


@dataclass
class FileSet(StreamSet):
    """Image files (one per sample), labels (int64, N) and sample ids (int64, N; default ``0..N-1``)."""

    files: tuple[Path, ...]
    labels: Tensor
    image_size: int | None = None
    ids: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.files = tuple(Path(f) for f in self.files)
        self.ids = checked_ids(len(self.files), torch.as_tensor(self.labels), self.ids)
        self.labels = torch.as_tensor(self.labels).long()

    def open(self, row: int) -> Any:
        return open_rgb(self.files[row])

    def where(self, row: int) -> str:
        return str(self.files[row])

    def subset(self, index: Tensor) -> "FileSet":
        return FileSet(tuple(self.files[i] for i in index.tolist()), self.labels[index], self.image_size,
                       self.ids[index])


class IdIndex:
    """Where sample ids sit in a tensor of distinct ids (in any order): built once, looked up many times."""

    def __init__(self, ids: Tensor) -> None:
        self.order = torch.argsort(ids)
        self.sorted = ids[self.order]

    def find(self, wanted: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, found): the position of each of ``wanted`` in the ids, and whether it is there at all
        (rows of ids that are not there are meaningless)."""
        wanted = wanted.to(self.sorted.device)
        if len(self.sorted) == 0:
            return torch.zeros_like(wanted), torch.zeros_like(wanted, dtype=torch.bool)
        pos = torch.searchsorted(self.sorted, wanted).clamp_max(len(self.sorted) - 1)
        return self.order[pos], self.sorted[pos] == wanted

    def to(self, device: torch.device | str) -> "IdIndex":
        moved = IdIndex.__new__(IdIndex)
        moved.order, moved.sorted = self.order.to(device), self.sorted.to(device)
        return moved


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("reading image files needs Pillow: pip install 'softdistill[vision]'") from exc
    return Image


def open_rgb(path: Path | IO[bytes], name: str | None = None) -> Any:
    """The decoded image at ``path`` (a file, or an open binary handle) as an RGB ``PIL.Image`` (grey,
    palette, RGBA and CMYK images are converted); an image Pillow cannot read is a
    :class:`UnreadableImageError` naming it (``name``, else ``path``)."""
    image_module = _pillow()
    try:
        with image_module.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:  # includes PIL.UnidentifiedImageError and truncated files
        raise UnreadableImageError(f"{name or path}: cannot read image ({exc})") from exc
