"""The soft-label source interface and its registry.

A source is an ``nn.Module`` whose ``forward(batch)`` returns B x K logits for the views in the
batch (a table returns log-probabilities, which every loss reads as logits).  Each source class
declares what it ``serves`` (:mod:`softdistill.compatibility`; a section may narrow it by its
settings, :meth:`SourceConfig.serves`), its recipe section as a nested ``Config``
(``soft_labels: {source: NAME, ...}``), and ``build(config, setup)``, which makes the source for a
run.  A new source is one module that defines such a class and decorates it with
:func:`register_source`; a plugin module can do the same from outside the package.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from softdistill.data.config import DataConfig
from softdistill.data.prepare import DataBundle
from softdistill.data.samples import IdIndex
from softdistill.data.views import ViewPlan
from softdistill.registry import Registry
from softdistill.schema import StrictConfig
from softdistill.types import Batch, RecipeFacts

__all__ = ["SourceConfig", "SoftLabelSource", "LookupSource", "SourceSetup", "Dependency", "register_source",
           "sources", "check_origin"]


class SourceConfig(StrictConfig):
    """Base of every source's recipe section; subclasses fix ``source`` and add fields."""

    source: str

    def serves(self) -> frozenset[str]:
        """What the source these settings describe can serve (capabilities of :mod:`softdistill.compatibility`),
        decided when the recipe loads; by default what its class declares (``serves``)."""
        return sources.get(self.source).serves

    def why_not(self, capability: str) -> str:
        """Why these settings cannot serve ``capability`` although their class may, as words that follow the
        refusal (e.g. ``" (its soft_labels.members[1] (cache) cannot)"``); empty by default."""
        return ""

    def dependencies(self) -> list["Dependency"]:
        """Other recipes or files whose product this source needs (trained once, checked for staleness)."""
        return []

    def dependency_problems(self, dependency: "Dependency", needed: Any, recipe: Any) -> list[str]:
        """What stops what ``dependency`` names -- ``needed``, the recipe that makes it, or its file (a Path)
        -- from serving ``recipe``: checked when the recipe loads, before anything is trained; none by
        default."""
        return []

    def problems(self, facts: RecipeFacts) -> list[str]:
        """What in these settings does not fit the recipe (its classes, views), checked when it loads."""
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
    """What a source is built from, for one run, in the order the run is set up: its ``data`` (with the
    recipe's ``data_config``), the training views' ``plan`` and a loader that shows them (``views``:
    ``in_order(view)`` gives every training sample as one view, ``batch_of(rows, views)`` any views), the
    run's ``seed`` and ``device``, the ``student`` (built before the source, so that a source may be made
    of it, as an EMA of the student is), the file each of the config's ``dependencies()`` names
    (``products``, made or found before the run starts), and what the run's method needs of its soft
    labels (``needs``: capability -> reason, :func:`~softdistill.compatibility.method_needs`), which a
    source that learns its own encoding only when it opens (a store named by path) checks then."""

    data: DataBundle
    data_config: DataConfig
    plan: ViewPlan
    views: Any
    seed: int
    device: torch.device
    student: nn.Module | None = None
    products: Mapping[Dependency, Path] = field(default_factory=dict)
    needs: Mapping[str, str] = field(default_factory=dict)

    def product(self, dependency: Dependency) -> Path:
        """The file (or store folder) ``dependency`` names."""
        return self.products[dependency]


class SoftLabelSource(nn.Module):
    """Base class of soft-label sources: ``forward(batch) -> B x K logits`` (see the module docstring).

    A subclass declares what it ``serves`` (:mod:`softdistill.compatibility`), its recipe section as a
    nested ``Config`` and ``build(config, setup)``, and registers itself with :func:`register_source`.

    Args:
        (a subclass's own.)

    Returns:
        Called on a :class:`~softdistill.types.Batch`: the B x K logits of its views.

    Example:
        >>> class Uniform(SoftLabelSource):
        ...     def forward(self, batch):
        ...         return torch.zeros(len(batch), 3)
        >>> Uniform()(Batch(x=torch.zeros(2, 4), y=torch.tensor([0, 1]))).shape
        torch.Size([2, 3])
    """

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
    """A source that stores soft labels per sample id (in the buffer ``ids``), looked up per batch
    (:class:`~softdistill.data.samples.IdIndex`).

    A lookup checks that the batch's ids are stored, which reads the device, until
    :meth:`verify_lookups` has checked every id the run's training loader can show.
    """

    ids: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lookups_verified = False
        self._index: IdIndex | None = None

    def missing(self) -> str:
        """The error message for a sample id (or view) without soft labels."""
        return "a sample id of the batch has no soft label in this source"

    def rows(self, sample_ids: Tensor | None) -> Tensor:
        """Positions of ``sample_ids`` in ``ids``; ValueError for an id that is not stored (unless verified)."""
        if sample_ids is None:
            raise ValueError(f"{type(self).__name__} looks soft labels up by sample id, but the batch has none: give "
                             "the batch its sample_id (and view)")
        if self._index is None or self._index.sorted.device != self.ids.device:
            self._index = IdIndex(self.ids)
        rows, found = self._index.find(sample_ids)
        if not self.lookups_verified and not bool(found.all()):
            raise ValueError(self.missing())
        return rows

    def verify_lookups(self, sample_ids: Tensor, views: int | None) -> None:
        self.lookups_verified = False
        self.rows(sample_ids)
        self.lookups_verified = True


#: Every soft-label source recipes can name (``soft_labels.source``); a plugin module adds its own with
#: :func:`register_source`.
sources: Registry[type["SoftLabelSource"]] = Registry("soft-label source", "softdistill.soft_labels", key="source")
register_source = sources.register
