"""The method interface and its registry.

A :class:`Method` is an ``nn.Module`` that holds the student (and, if it needs one, a soft-label
source such as a frozen teacher) and maps a batch to a :class:`~softdistill.types.StepOutput`.
The trainer only ever calls ``method(batch)`` and ``method.student``; it knows no method by name.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from softdistill.types import Batch, StepOutput

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
                 teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.check_teacher(teacher is not None)
        self.config = config
        self.student = student
        self.teacher = teacher
        self.num_classes = num_classes

    def forward(self, batch: Batch) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def check_teacher(cls, has_teacher: bool) -> None:
        """Raise ValueError when a teacher is missing for a method that needs one, or given to one that does not."""
        name = cls.Config.model_fields["name"].default
        if cls.needs_teacher and not has_teacher:
            raise ValueError(f"method {name!r} needs a teacher: add a 'teacher' section to the recipe")
        if not cls.needs_teacher and has_teacher:
            raise ValueError(f"method {name!r} does not use a teacher: remove the 'teacher' section")
