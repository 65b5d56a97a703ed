"""Small value types shared by every layer: what a batch carries and what a training step returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor

__all__ = ["Batch", "StepOutput", "InputSpec", "MethodContext"]


@dataclass
class Batch:
    """A training or evaluation batch: inputs, hard labels and the dataset indices of the samples.

    The indices identify samples across epochs (cached soft labels and per-sample weights key on
    them).  Augmentations that mix samples return a new batch through :meth:`with_`, with
    ``y`` the label of part a, ``y_b`` the label of part b and ``lam`` (B,) the
    share of a: ``x = lam * x_a + (1 - lam) * x_b``.
    """

    x: Tensor
    y: Tensor
    index: Tensor
    y_b: Tensor | None = None
    lam: Tensor | None = None

    @property
    def is_mixed(self) -> bool:
        return self.lam is not None

    def __len__(self) -> int:
        return self.y.shape[0]

    def with_(self, **changes) -> "Batch":
        return replace(self, **changes)


@dataclass
class StepOutput:
    """What a method returns for one batch.

    ``losses``: named loss terms, each a scalar tensor; the trainer sums them, back-propagates the
    sum and logs each term.  ``metrics``: named diagnostics (scalars, no gradient) that the trainer
    averages over the epoch and logs, e.g. the WSL regularization-sample share.
    """

    logits: Tensor
    losses: dict[str, Tensor]
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSpec:
    """Shape and normalisation of the images a method receives: ``x = (pixels - mean) / std``."""

    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class MethodContext:
    """What a method may need from its run beyond its hyper-parameters.

    ``resolve_artifact(path)`` turns a file named in the recipe (relative to the recipe's folder)
    into a path on disk: a checkpoint is returned as it is; a recipe of something the method
    uses (e.g. a VAE recipe) is trained once, under the run's machine settings, and the path of
    its product returned.
    """

    inputs: InputSpec
    resolve_artifact: Callable[[str], Path] = Path
    quiet: bool = False
