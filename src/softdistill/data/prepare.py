"""From a dataset name to ready train / validation / test sets with their normalisation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softdistill.data.loader import TensorSet, pixel_stats
from softdistill.data.shards import shard_split
from softdistill.data.datasets import DATASETS, load_split
from softdistill.data.stream import StreamSet, decode_all, folder_split, sample_stats
from softdistill.data.splits import per_class_subset, stratified_split

__all__ = ["DataBundle", "prepare_data", "prepare_stream", "prepare_from_spec", "channel_stats", "choose_loader",
           "AUTO_STREAM_BYTES", "STREAMED"]

#: The sources whose splits can be streamed: name -> ``fn(root, split, image_size) -> (split, class names)``.
STREAMED: dict[str, Callable[[str | None, str, int], tuple[StreamSet, tuple[str, ...]]]] = {
    "imagefolder": folder_split, "shards": shard_split}

#: ``data.loader: auto`` streams an image folder whose decoded training images would exceed this.
AUTO_STREAM_BYTES = 2 * 2**30


@dataclass
class DataBundle:
    """The three splits of one experiment and what models need to know about them.

    ``mean``/``std`` are per-channel statistics of the full official training split in [0, 1] units
    (or the recipe's, or a bounded sample's for a streamed folder), so that every experiment on a
    dataset (teacher on all data, student on a subset) feeds models identically scaled inputs.  The
    splits are in memory (:class:`TensorSet`) or streamed (a :class:`~softdistill.data.stream.StreamSet`).
    """

    name: str
    train: TensorSet | StreamSet
    val: TensorSet | StreamSet | None
    test: TensorSet | StreamSet
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train.image_shape[0]

    @property
    def image_size(self) -> int:
        return self.train.image_shape[-1]


def channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units (:func:`pixel_stats`)."""
    return pixel_stats(images.split(chunk))


def _on_canvas(images: Tensor, size: int) -> Tensor:
    """``images`` centred on a black ``size`` x ``size`` canvas; an odd margin's extra pixel goes right / bottom."""
    h, w = images.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def _train_val(labels: Tensor, val_size: int | float, per_class: int | None, split_seed: int) -> tuple[Tensor, Tensor]:
    """Rows of the official training split kept for training and held out for validation."""
    keep, val_index = stratified_split(labels, val_size, split_seed)
    if per_class is not None:
        keep = keep[per_class_subset(labels[keep], per_class, split_seed)]
    return keep, val_index


def choose_loader(loader: str, name: str, root: str | None, image_size: int | None) -> str:
    """``memory`` or ``stream`` for a data section's ``loader``; ``auto`` streams an image folder or shards
    whose training images, decoded at ``image_size``, would take more than :data:`AUTO_STREAM_BYTES`."""
    if loader != "auto":
        return loader
    if name not in STREAMED or image_size is None:
        return "memory"
    decoded = len(STREAMED[name](root, "train", image_size)[0]) * 3 * image_size**2
    return "stream" if decoded > AUTO_STREAM_BYTES else "memory"


def _image_size(name: str, image_size: int | None) -> int:
    if image_size is None:
        raise ValueError(f"data.name: {name} with data.loader: stream (and shards with any loader) needs "
                         "data.image_size, the side of the images a batch holds")
    return image_size


def _in_memory(name: str, split: str, root: str | None, download: bool, image_size: int | None,
               workers: int) -> tuple[TensorSet, tuple[str, ...]]:
    """One official split in memory and the class names: read by :func:`load_split`, or, for a source that
    only streams (shards), every image decoded at ``image_size`` by ``workers`` processes (ids kept)."""
    if name in DATASETS:
        raw = load_split(name, split, root=root, download=download, image_size=image_size)
        return TensorSet(raw.images, raw.labels), raw.class_names
    if name not in STREAMED:
        load_split(name)  # the unknown-name error, with its suggestions
    data, class_names = STREAMED[name](root, split, _image_size(name, image_size))
    return decode_all(data, workers), class_names


def prepare_data(name: str, *, root: str | None = None, download: bool = False, image_size: int | None = None,
                 val_size: int | float = 0.1, per_class: int | None = None, split_seed: int = 0,
                 normalize: bool = True, canvas: int | None = None, loader: str = "memory",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 stats_samples: int = 1000, workers: int = 0, on_corrupt: str = "fail") -> DataBundle:
    """Load a dataset, hold out a stratified validation set, optionally keep ``per_class`` images
    of each class for training (the small-data regime), and compute the normalisation.

    With ``canvas``, every image is first placed at the centre of a black ``canvas`` x ``canvas``
    image (room for shifted or rotated content); the normalisation is that of the canvas images.
    ``mean``/``std`` given replace the computed statistics.  ``loader: stream`` (an image folder or
    shards, at ``image_size``) lists the samples without decoding them (:func:`prepare_stream`);
    ``on_corrupt="skip"`` (stream only) leaves unreadable images out of its batches, and out of the
    statistics' sample.

    Both the validation split and the subset depend on ``split_seed`` only, not on the run's seed,
    so that runs with different seeds (and the teacher) share the same held-out data.
    """
    if choose_loader(loader, name, root, image_size) == "stream":
        return prepare_stream(name, root, image_size, val_size=val_size, per_class=per_class, split_seed=split_seed,
                              normalize=normalize, mean=mean, std=std, stats_samples=stats_samples, workers=workers,
                              on_corrupt=on_corrupt)
    if on_corrupt != "fail":
        raise ValueError(f"on_corrupt: {on_corrupt} needs loader: stream (the memory loader decodes every image up "
                         "front and stops at one it cannot read; pack the folder with 'softdistill data pack "
                         "--on-corrupt skip' to leave such files out for good)")
    full, class_names = _in_memory(name, "train", root, download, image_size, workers)
    test, _ = _in_memory(name, "test", root, download, image_size, workers)
    if full.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"{name}: train images {tuple(full.images.shape[1:])} and test images "
                         f"{tuple(test.images.shape[1:])} differ in shape")
    if canvas is not None:
        h, w = full.images.shape[-2:]
        if canvas < max(h, w):
            raise ValueError(f"{name}: canvas {canvas}x{canvas} is smaller than the {h}x{w} images")
        full = replace(full, images=_on_canvas(full.images, canvas))
        test = replace(test, images=_on_canvas(test.images, canvas))
    mean, std = _normalisation(full.images.shape[1], normalize, mean, std, lambda: channel_stats(full.images))
    keep, val_index = _train_val(full.labels, val_size, per_class, split_seed)
    # sample ids are rows of the official split: the same sample keeps its id under any val_size,
    # per_class or split_seed
    val = full.subset(val_index) if len(val_index) else None
    return DataBundle(name, full.subset(keep), val, test, class_names, mean, std)


def prepare_stream(name: str, root: str | None, image_size: int | None, *, val_size: int | float = 0.1,
                   per_class: int | None = None, split_seed: int = 0, normalize: bool = True,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   stats_samples: int = 1000, workers: int = 0, on_corrupt: str = "fail") -> DataBundle:
    """The splits of a streamed source (:data:`STREAMED`) as :class:`~softdistill.data.stream.StreamSet`
    (nothing decoded but at most ``stats_samples`` training images for the statistics, unless
    ``mean``/``std`` are given)."""
    if name not in STREAMED:
        raise ValueError(f"data.loader: stream reads {' or '.join(STREAMED)}, not {name}")
    size = _image_size(name, image_size)
    official, class_names = STREAMED[name](root, "train", size)
    test, _ = STREAMED[name](root, "test", size)
    mean, std = _normalisation(3, normalize, mean, std,
                               lambda: sample_stats(official, stats_samples, workers, on_corrupt=on_corrupt))
    keep, val_index = _train_val(official.labels, val_size, per_class, split_seed)
    val = official.subset(val_index) if len(val_index) else None
    return DataBundle(name, official.subset(keep), val, test, class_names, mean, std)


def _normalisation(channels: int, normalize: bool, mean: Sequence[float] | None, std: Sequence[float] | None,
                   estimate: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The given ``mean``/``std`` (checked), else ``estimate()``, else (``normalize`` off) 0 and 1."""
    if (mean is None) != (std is None):
        raise ValueError("data.mean and data.std go together: give both or neither")
    if mean is not None and std is not None:
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"data.mean and data.std need {channels} values each (std > 0), got {list(mean)} "
                             f"and {list(std)}")
        return tuple(map(float, mean)), tuple(map(float, std))
    if not normalize:
        return (0.0,) * channels, (1.0,) * channels
    return estimate()


def prepare_from_spec(spec: Mapping[str, Any], *, root: str | None = None, download: bool = False) -> DataBundle:
    """:func:`prepare_data` for a data section: a recipe's ``data`` or the one saved in a checkpoint.

    Keys an older section lacks take :func:`prepare_data`'s defaults; ``root``, when given,
    replaces the section's own.
    """
    return prepare_data(spec["name"], root=root or spec.get("root"), download=download, image_size=spec.get("image_size"),
                        val_size=spec.get("val_size", 0.1), per_class=spec.get("per_class"),
                        split_seed=spec.get("split_seed", 0), normalize=spec.get("normalize", True),
                        canvas=spec.get("canvas"), loader=spec.get("loader", "memory"), mean=spec.get("mean"),
                        std=spec.get("std"), stats_samples=spec.get("stats_samples", 1000),
                        workers=spec.get("workers", 0), on_corrupt=spec.get("on_corrupt", "fail"))
