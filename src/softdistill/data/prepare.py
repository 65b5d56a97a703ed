"""From a data section to ready train / validation / test sets with their normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softdistill.data.config import DataConfig
from softdistill.data.readers import read_split
from softdistill.data.loader import pixel_stats
from softdistill.data.samples import StreamSet, TensorSet
from softdistill.data.splits import per_class_subset, stratified_split
from softdistill.data.stream import decode_all, sample_stats

__all__ = ["DataBundle", "prepare_data", "channel_stats", "AUTO_STREAM_BYTES"]

#: ``data.loader: auto`` streams a data set of files whose decoded training images would exceed this.
AUTO_STREAM_BYTES = 2 * 2**30


@dataclass
class DataBundle:
    """The three splits of one experiment and what models need to know about them.

    ``mean``/``std`` are per-channel statistics of the full official training split in [0, 1] units
    (or the recipe's, or a bounded sample's for a streamed data set), so that every experiment on a
    dataset (teacher on all data, student on a subset) feeds models identically scaled inputs.  The
    splits are in memory (:class:`TensorSet`) or streamed (a :class:`StreamSet`).
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


def _streams(config: DataConfig, train: TensorSet | StreamSet) -> bool:
    """Whether the splits are streamed: ``loader: stream``; with ``auto``, a data set of files whose training
    images, decoded at ``image_size``, would take more than :data:`AUTO_STREAM_BYTES`."""
    if config.loader != "auto":
        return config.loader == "stream"
    if not isinstance(train, StreamSet) or config.image_size is None:
        return False
    return len(train) * 3 * config.image_size**2 > AUTO_STREAM_BYTES


def prepare_data(config: DataConfig | str, **settings: Any) -> DataBundle:
    """The splits of a data section (a :class:`DataConfig`, or a data set name with the section's settings
    as keywords, e.g. ``prepare_data("digits", val_size=100)``) and their normalisation.

    A stratified validation set is held out of the official training split, ``per_class`` images of
    each class are kept for training (the small-data regime), and the normalisation is computed (or
    taken from ``mean``/``std``).  With ``canvas``, every image is first placed at the centre of a black
    ``canvas`` x ``canvas`` image (room for shifted or rotated content).  A streamed data set (``loader:
    stream``, or ``auto`` for a large one) is listed, not decoded: at most ``stats_samples`` training
    images are decoded for the statistics; a data set of files read into memory is decoded by
    ``workers`` processes.

    Both the validation split and the subset depend on ``split_seed`` only, not on the run's seed,
    so that runs with different seeds (and the teacher) share the same held-out data.  Sample ids are
    those of the official split: the same sample keeps its id under any ``val_size``, ``per_class``
    or ``split_seed``.

    Args:
        config: a :class:`DataConfig`, or the name of a registered data set.
        settings: the data section's keys (with a name), or changes to ``config``.

    Returns:
        The :class:`DataBundle`: ``train``, ``val`` (None when ``val_size`` is 0) and ``test`` splits,
        ``class_names``, ``mean`` and ``std``.

    Example:
        >>> data = prepare_data("digits", val_size=100, per_class=20)
        >>> len(data.train), len(data.val), len(data.test), data.num_classes, data.image_size
        (200, 100, 360, 10, 8)
    """
    if isinstance(config, str):
        config = DataConfig.of({"name": config, **settings})
    elif settings:
        config = DataConfig.of({**config.model_dump(), **settings})
    official, test = read_split(config, "train"), read_split(config, "test")
    full, test_samples = official.samples, test.samples
    if _streams(config, full):
        assert isinstance(full, StreamSet)
        estimate = lambda: sample_stats(full, config.stats_samples, config.workers, on_corrupt=config.on_corrupt)
    else:
        full, test_samples = (decode_all(s, config.workers) if isinstance(s, StreamSet) else s
                              for s in (full, test_samples))
        if full.images.shape[1:] != test_samples.images.shape[1:]:
            raise ValueError(f"{config.name}: train images {tuple(full.images.shape[1:])} and test images "
                             f"{tuple(test_samples.images.shape[1:])} differ in shape")
        if config.canvas is not None:
            h, w = full.images.shape[-2:]
            if config.canvas < max(h, w):
                raise ValueError(f"{config.name}: canvas {config.canvas}x{config.canvas} is smaller than the {h}x{w} "
                                 "images")
            full = replace(full, images=_on_canvas(full.images, config.canvas))
            test_samples = replace(test_samples, images=_on_canvas(test_samples.images, config.canvas))
        in_memory = full
        estimate = lambda: channel_stats(in_memory.images)
    mean, std = _normalisation(full.image_shape[0], config, estimate)
    keep, val_index = _train_val(full.labels, config.val_size, config.per_class, config.split_seed)
    val = full.subset(val_index) if len(val_index) else None
    return DataBundle(config.name, full.subset(keep), val, test_samples, official.class_names, mean, std)


def _normalisation(channels: int, config: DataConfig,
                   estimate: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data section's ``mean``/``std`` (one per channel), else ``estimate()``, else (``normalize`` off) 0 and 1."""
    mean: Sequence[float] | None = config.mean
    std: Sequence[float] | None = config.std
    if mean is not None and std is not None:
        if len(mean) != channels:
            raise ValueError(f"data.mean and data.std need {channels} values each, got {list(mean)} and {list(std)}")
        return tuple(map(float, mean)), tuple(map(float, std))
    if not config.normalize:
        return (0.0,) * channels, (1.0,) * channels
    return estimate()
