"""The method interface and its registry.

A :class:`Method` is an ``nn.Module`` that holds the student (and, if it learns from soft labels,
a soft-label source, :mod:`softdistill.soft_labels`) and maps a batch to a
:class:`~softdistill.types.StepOutput`.  The trainer only ever calls ``method(batch)``, the hooks
below and ``method.student``; it knows no method by name.  What a method needs from its source
and its views is declared in class attributes and checked when the recipe loads
(:mod:`softdistill.compatibility`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from softdistill.registry import Registry
from softdistill.soft_labels.base import Dependency
from softdistill.types import Batch, MethodContext, StepOutput

__all__ = ["Method", "MethodConfig", "register_method", "registry"]


class MethodConfig(BaseModel):
    """Base of every method's hyper-parameters; subclasses add fields and fix ``name``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str

    def dependencies(self) -> list[Dependency]:
        """Other recipes or files this method's settings name (e.g. HARD's VAE), resolved like the source's."""
        return []


registry = Registry("method", "name", "softdistill.methods")
register_method = registry.register


class Method(nn.Module):
    """Base class.

    ``uses_soft_labels``: the recipe must give a soft-label source (held as ``self.soft_labels``);
    ``mixed_views``: the method learns from mixed views (batches with ``y_b`` and ``lam``);
    ``source_needs``: capabilities the source must serve beyond soft labels of the plan's views
    (see :mod:`softdistill.compatibility`); ``supports_grad_accum``: a batch may be split into
    parts whose gradients are summed (false for a method that updates parts of itself in the step).
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_soft_labels: ClassVar[bool] = False
    mixed_views: ClassVar[bool] = False
    source_needs: ClassVar[frozenset[str]] = frozenset()
    supports_grad_accum: ClassVar[bool] = True

    def __init__(self, config: MethodConfig, student: nn.Module, num_classes: int,
                 soft_labels: nn.Module | None = None, context: MethodContext | None = None) -> None:
        super().__init__()
        if self.uses_soft_labels != (soft_labels is not None):
            name = self.Config.model_fields["name"].default
            raise ValueError(f"method {name!r} " + ("needs a soft-label source" if self.uses_soft_labels
                                                   else "takes no soft-label source"))
        self.config = config
        self.student = student
        self.soft_labels = soft_labels
        self.num_classes = num_classes
        self.context = context

    def forward(self, batch: Batch) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the modules the trainer's optimiser trains (compile, DDP): the student by default."""
        self.student = wrapper(self.student)

    # Hooks the trainer calls; the defaults do nothing.
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the trainer's optimiser updates: every parameter that requires grad, unless a
        method trains some parts itself."""
        return [p for p in self.parameters() if p.requires_grad]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before training epoch ``epoch`` (1-based) of ``epochs``, after the epoch's seeding."""

    def end_epoch(self, epoch: int, report_dir: Path | None) -> None:
        """Called after training epoch ``epoch``; ``report_dir`` is where to write figures (None
        on ranks other than 0)."""

    def training_state(self) -> dict[str, Any]:
        """State beyond the student's weights that an exact resume needs (saved in last.pt)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no training state, but the checkpoint has {sorted(state)}")
