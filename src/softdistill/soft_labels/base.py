"""The soft-label source interface and its registry.

A source is an ``nn.Module`` whose ``forward(batch)`` returns B x K logits for the views in the
batch (a table returns log-probabilities, which every loss reads as logits).  Each source class
declares what it ``serves`` (:mod:`softdistill.compatibility`), its recipe section as a nested
``Config`` (``soft_labels: {source: NAME, ...}``), and ``build(config, setup)``, which makes the
source for a run.  A new source is one module that defines such a class and decorates it with
:func:`register_source`; a plugin module can do the same from outside the package.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from softdistill.data.prepare import DataBundle
from softdistill.data.views import ViewPlan
from softdistill.registry import Registry
from softdistill.types import Batch

__all__ = ["SourceConfig", "SoftLabelSource", "LookupSource", "SourceSetup", "Dependency", "register_source",
           "source_registry", "check_origin"]


class SourceConfig(BaseModel):
    """Base of every source's recipe section; subclasses fix ``source`` and add fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    source: str

    def dependencies(self) -> list["Dependency"]:
        """Other recipes or files whose product this source needs (trained once, checked for staleness)."""
        return []

    def dependency_problems(self, dependency: "Dependency", needed: Any, recipe: Any) -> list[str]:
        """What stops the product of ``needed`` (the recipe ``dependency`` names) from serving
        ``recipe``: checked when the recipe loads, before anything is trained; none by default."""
        return []


def check_origin(given: dict[str, Any], select: str) -> None:
    """Exactly one of the ``given`` fields (name -> value) is set, and ``select`` names a checkpoint
    of a run (best | last | epoch_N); ValueError otherwise."""
    if sum(value is not None for value in given.values()) != 1:
        raise ValueError("give exactly one of " + " or ".join(f"soft_labels.{name}" for name in given))
    if not re.fullmatch(r"best|last|epoch_\d+", select):
        raise ValueError(f"soft_labels.select must be best, last or epoch_N, got {select!r}")


@dataclass(frozen=True)
class Dependency:
    """A path field of a recipe section that names another recipe's product or a file.

    ``field`` is its dotted key (for messages), ``path`` its value (relative to the recipe's
    folder), ``kind`` what it must be (``model``: a training recipe or checkpoint; ``vae``: a VAE
    recipe or vae.pt; ``store``: a label recipe or a store folder) and ``select`` which checkpoint
    of a training recipe's run is the product.
    """

    field: str
    path: str
    kind: str = "model"
    select: str = "best"


@dataclass
class SourceSetup:
    """What a source may use to build itself for a run.

    ``product(dependency)`` returns the file one of the config's ``dependencies()`` names (the run
    resolved each once, training its recipe first if needed); ``plan`` is the training views' plan;
    ``train_loader()`` makes a loader over the training split that shows the plan's views in order; ``seed`` is the run's seed;
    ``data_spec`` the recipe's data section (for messages that say what differs).
    """

    data: DataBundle
    device: torch.device
    plan: ViewPlan
    seed: int
    product: Callable[[Dependency], Path]
    train_loader: Callable[..., Any]
    data_spec: dict[str, Any] = field(default_factory=dict)


class SoftLabelSource(nn.Module):
    """Base class of soft-label sources: ``forward(batch) -> B x K logits`` (see the module docstring)."""

    Config: ClassVar[type[SourceConfig]] = SourceConfig
    serves: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def build(cls, config: SourceConfig, setup: SourceSetup) -> "SoftLabelSource":  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def report(self) -> dict[str, Any] | None:
        """What the run folder should record about the built source (e.g. measured indicators), or None."""
        return None

    def verify_lookups(self, sample_ids: Tensor, views: int | None) -> None:
        """Check, once per run, that the source has soft labels for every sample id (and view below
        ``views``, None = unbounded) the training loader can show; nothing to check by default."""

    def prepare_inference(self, *, compile: bool | dict[str, Any] = False, channels_last: bool = False,
                          dtype: torch.dtype | None = None) -> None:
        """Apply the run's speed options to a model the source runs on every batch (``train.compile``,
        ``train.channels_last``, ``train.teacher_dtype``); a source that runs no model ignores them."""


class LookupSource(SoftLabelSource):
    """A source that stores soft labels per sample id (sorted, in the buffer ``ids``), looked up per batch.

    A lookup checks that the batch's ids are stored, which reads the device, until
    :meth:`verify_lookups` has checked every id the run's training loader can show.
    """

    ids: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lookups_verified = False

    def missing(self) -> str:
        """The error message for a sample id (or view) without soft labels."""
        return "a sample id of the batch has no soft label in this source"

    def rows(self, sample_ids: Tensor) -> Tensor:
        """Positions of ``sample_ids`` in ``ids``; ValueError for an id that is not stored (unless verified)."""
        ids = sample_ids.to(self.ids.device)
        rows = torch.searchsorted(self.ids, ids).clamp_max(len(self.ids) - 1)
        if not self.lookups_verified and not torch.equal(self.ids[rows], ids):
            raise ValueError(self.missing())
        return rows

    def verify_lookups(self, sample_ids: Tensor, views: int | None) -> None:
        self.lookups_verified = False
        self.rows(sample_ids)
        self.lookups_verified = True


source_registry = Registry("soft-label source", "source", "softdistill.soft_labels")
register_source = source_registry.register
