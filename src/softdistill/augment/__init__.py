"""Augmentations that methods apply to a batch (the trainer never sees them): mixing."""

from softdistill.augment.mixing import MIXES, cutmix, mixup

__all__ = ["mixup", "cutmix", "MIXES"]
