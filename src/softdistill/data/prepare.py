"""From a dataset name to ready train / validation / test sets with their normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softdistill.data.loader import TensorSet
from softdistill.data.sources import load_split
from softdistill.data.splits import per_class_subset, stratified_split

__all__ = ["DataBundle", "prepare_data", "prepare_from_spec", "channel_stats"]


@dataclass
class DataBundle:
    """The three splits of one experiment and what models need to know about them.

    ``mean``/``std`` are per-channel statistics
    of the full official training split in [0, 1] units, so that every experiment on a dataset
    (teacher on all data, student on a subset) feeds models identically scaled inputs.
    """

    name: str
    train: TensorSet
    val: TensorSet | None
    test: TensorSet
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units (float64 sums)."""
    x = images.double().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    std = x.std(dim=1).clamp_min(1e-6)
    return tuple(x.mean(dim=1).tolist()), tuple(std.tolist())


def _on_canvas(images: Tensor, size: int) -> Tensor:
    """``images`` centred on a black ``size`` x ``size`` canvas; an odd margin's extra pixel goes right / bottom."""
    h, w = images.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def prepare_data(name: str, *, root: str | None = None, download: bool = False, image_size: int | None = None,
                 val_size: int | float = 0.1, per_class: int | None = None, split_seed: int = 0,
                 normalize: bool = True, canvas: int | None = None) -> DataBundle:
    """Load a dataset, hold out a stratified validation set, optionally keep ``per_class`` images
    of each class for training (the small-data regime), and compute the normalisation.

    With ``canvas``, every image is first placed at the centre of a black ``canvas`` x ``canvas``
    image (room for shifted or rotated content); the normalisation is that of the canvas images.

    Both the validation split and the subset depend on ``split_seed`` only, not on the run's seed,
    so that runs with different seeds (and the teacher) share the same held-out data.
    """
    full = load_split(name, "train", root=root, download=download, image_size=image_size)
    test = load_split(name, "test", root=root, download=download, image_size=image_size)
    if full.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"{name}: train images {tuple(full.images.shape[1:])} and test images "
                         f"{tuple(test.images.shape[1:])} differ in shape")
    if canvas is not None:
        h, w = full.images.shape[-2:]
        if canvas < max(h, w):
            raise ValueError(f"{name}: canvas {canvas}x{canvas} is smaller than the {h}x{w} images")
        full = replace(full, images=_on_canvas(full.images, canvas))
        test = replace(test, images=_on_canvas(test.images, canvas))
    if normalize:
        mean, std = channel_stats(full.images)
    else:
        mean, std = (0.0,) * full.images.shape[1], (1.0,) * full.images.shape[1]
    keep, val_index = stratified_split(full.labels, val_size, split_seed)
    if per_class is not None:
        keep = keep[per_class_subset(full.labels[keep], per_class, split_seed)]
    # sample ids are rows of the official split: the same sample keeps its id under any val_size,
    # per_class or split_seed
    train = TensorSet(full.images[keep], full.labels[keep], keep)
    val = TensorSet(full.images[val_index], full.labels[val_index], val_index) if len(val_index) else None
    return DataBundle(name, train, val, TensorSet(test.images, test.labels), full.class_names, mean, std)


def prepare_from_spec(spec: Mapping[str, Any], *, root: str | None = None, download: bool = False) -> DataBundle:
    """:func:`prepare_data` for a data section: a recipe's ``data`` or the one saved in a checkpoint.

    Keys an older section lacks take :func:`prepare_data`'s defaults; ``root``, when given,
    replaces the section's own.
    """
    return prepare_data(spec["name"], root=root or spec.get("root"), download=download, image_size=spec.get("image_size"),
                        val_size=spec.get("val_size", 0.1), per_class=spec.get("per_class"),
                        split_seed=spec.get("split_seed", 0), normalize=spec.get("normalize", True),
                        canvas=spec.get("canvas"))
