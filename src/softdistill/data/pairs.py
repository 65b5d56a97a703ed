"""``fashion-mnist-pairs``: two Fashion-MNIST items side by side, a 100-class task made of real images.

Sample i of a split is item i of the same Fashion-MNIST split on the left and item ``h(i) mod N`` on
the right (N items in the split, h a fixed hash of the sample id, :func:`softdistill.hashing.hash_below`):
a 1 x 28 x 56 image whose class is the ordered pair of the items' classes, ``10 * left + right``
(100 classes, named "left | right").  Each pair is a pure function of its sample id, so every run,
process and store sees the same pairs: 60,000 training and 10,000 test samples, about 600 and 100 of
each class.  The images are not square: a square model input (the MLP's, a ResNet's) comes from
``data.canvas: 56``; a horizontal flip swaps the halves (another class), so views of this task crop only.
"""

from __future__ import annotations

import torch

from softdistill.data.config import DataConfig
from softdistill.data.readers import FASHION_MNIST_CLASSES, Split, load_split, register_dataset
from softdistill.data.samples import TensorSet
from softdistill.hashing import hash_below

__all__ = ["PAIR_CLASSES", "side_by_side"]

#: the key of the right item's hash (a constant: the pairs never change)
PAIR_KEY = 20_240_523
PAIR_CLASSES = tuple(f"{left} | {right}" for left in FASHION_MNIST_CLASSES for right in FASHION_MNIST_CLASSES)


def side_by_side(items: TensorSet) -> TensorSet:
    """The pairs of ``items`` (a Fashion-MNIST split): sample i is item i beside item ``h(id_i) mod N``."""
    right = hash_below(len(items), PAIR_KEY, items.ids)
    images = torch.cat([items.images, items.images[right]], dim=-1)
    return TensorSet(images, 10 * items.labels + items.labels[right], items.ids)


@register_dataset("fashion-mnist-pairs", class_names=PAIR_CLASSES, channels=1)
def _fashion_mnist_pairs(split: str, data: DataConfig) -> Split:
    """Pairs of Fashion-MNIST items (module docstring), read from the Fashion-MNIST files ``data`` finds."""
    items = load_split("fashion-mnist", split, root=data.root, download=data.download)
    assert isinstance(items.samples, TensorSet)
    return Split(side_by_side(items.samples), PAIR_CLASSES)
