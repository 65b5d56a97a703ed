"""The method interface and its registry.

A :class:`Method` is an ``nn.Module`` that holds the student (and, if it needs one, a soft-label
source such as a frozen teacher) and maps a batch to a :class:`~softdistill.types.StepOutput`.
The trainer only ever calls ``method(batch)`` and ``method.student``; it knows no method by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from softdistill.types import Batch, MethodContext, StepOutput

__all__ = ["Method", "MethodConfig", "register_method", "registry"]


class MethodConfig(BaseModel):
    """Base of every method's hyper-parameters; subclasses add fields and fix ``name``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str


registry: dict[str, type["Method"]] = {}


def register_method(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method reachable from recipes under ``cls.Config``'s name."""
    name = cls.Config.model_fields["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__}.Config.name needs a default (the method's recipe name)")
    if name in registry and registry[name] is not cls:
        raise ValueError(f"method name {name!r} is registered twice")
    registry[name] = cls
    return cls


class Method(nn.Module):
    """Base class.  ``needs_teacher`` says whether the recipe must provide a soft-label source."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_teacher: ClassVar[bool] = False

    def __init__(self, config: MethodConfig, student: nn.Module, num_classes: int,
                 teacher: nn.Module | None = None, context: MethodContext | None = None) -> None:
        super().__init__()
        self.check_teacher(teacher is not None)
        self.config = config
        self.student = student
        self.teacher = teacher
        self.num_classes = num_classes
        self.context = context

    def forward(self, batch: Batch) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

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

    @classmethod
    def check_teacher(cls, has_teacher: bool) -> None:
        """Raise ValueError when a teacher is missing for a method that needs one, or given to one that does not."""
        name = cls.Config.model_fields["name"].default
        if cls.needs_teacher and not has_teacher:
            raise ValueError(f"method {name!r} needs a teacher: add a 'teacher' section to the recipe")
        if not cls.needs_teacher and has_teacher:
            raise ValueError(f"method {name!r} does not use a teacher: remove the 'teacher' section")
