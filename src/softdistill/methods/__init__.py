"""Distillation methods: each one a small composition of a soft-label source and losses.

A method lives in one module of this package and registers itself with :func:`register_method`;
every module here is imported on first use, so a new method touches one file (plus a recipe).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from softdistill.methods.base import Method, MethodConfig, methods, register_method
from softdistill.types import MethodContext

__all__ = ["Method", "MethodConfig", "register_method", "methods", "method_names", "method_class", "build_method"]


def method_names() -> list[str]:
    return methods.names()


def method_class(name: str) -> type[Method]:
    return methods.get(name)


def build_method(name: str, student: nn.Module, num_classes: int, soft_labels: nn.Module | None = None, *,
                 context: MethodContext | None = None, **settings: Any) -> Method:
    """The registered method ``name`` (``kd``, ``wsl``, ``ida``, ... or a plugin's) for a loop of your own:
    call it as ``method(x, y)`` (with ``y_b=``, ``lam=`` for mixed views, and ``sample_id=``, ``view=``
    where the source looks soft labels up by address) for its :class:`~softdistill.types.StepOutput`.

    Args:
        name: the method's registered name (a typo gets the closest names).
        student: the model that learns.
        num_classes: K.
        soft_labels: the soft-label source (a teacher, a store, ...) for a method that learns from soft labels.
        context: what a method that uses other files needs (HARD's VAE); None for the others.
        settings: the method's hyper-parameters, as a recipe's ``method:`` section gives them.

    Returns:
        The :class:`~softdistill.methods.base.Method` (an ``nn.Module`` holding the student and the source).

    Example:
        >>> import torch
        >>> from softdistill import FrozenTeacher
        >>> kd = build_method("kd", torch.nn.Linear(4, 3), 3, FrozenTeacher(torch.nn.Linear(4, 3)), temperature=2.0)
        >>> out = kd(torch.randn(8, 4), torch.randint(0, 3, (8,)))
        >>> sorted(out.losses)
        ['ce', 'kd']
    """
    cls = methods.get(name)
    return cls(cls.Config(**settings), student, num_classes, soft_labels, context)
