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
from typing import Any, ClassVar

from torch import Tensor, nn

from softdistill.engine.wrap import unwrap
from softdistill.registry import Registry
from softdistill.schema import StrictConfig
from softdistill.soft_labels.base import Dependency
from softdistill.engine.task import Task
from softdistill.types import Batch, MethodContext, RecipeFacts, StepOutput

__all__ = ["Method", "MethodConfig", "register_method", "methods"]


class MethodConfig(StrictConfig):
    """Base of every method's hyper-parameters; subclasses add fields and fix ``name``.

    Args:
        name: the method's registered name (a subclass fixes it as a ``Literal`` with that default).

    Example:
        >>> from typing import Literal
        >>> class HalfConfig(MethodConfig):
        ...     name: Literal["half"] = "half"
        ...     weight: float = 0.5
        >>> HalfConfig(weight=0.25).weight
        0.25
    """

    name: str

    def dependencies(self) -> list[Dependency]:
        """Other recipes or files this method's settings name (e.g. HARD's VAE), resolved like the source's."""
        return []

    def dependency_problems(self, dependency: Dependency, needed: Any, recipe: Any) -> list[str]:
        """What stops the product of ``needed`` (the recipe ``dependency`` names) from serving ``recipe``."""
        return []

    def problems(self, facts: RecipeFacts) -> list[str]:
        """What in these settings does not fit the run (its epochs, classes, views; each None where not
        known), checked when the recipe loads and again, for the class count, when the method is built;
        none by default."""
        return []

    def soft_label_needs(self) -> dict[str, str]:
        """Capabilities (:mod:`softdistill.compatibility`) the soft-label source must serve under these
        settings, each with the reason, checked when the recipe loads (and a store's encoding when it is
        known); none by default."""
        return {}


#: Every method recipes can name (``method.name``); a plugin module adds its own with :func:`register_method`.
methods: Registry[type["Method"]] = Registry("method", "softdistill.methods", key="name")
register_method = methods.register


class Method(Task):
    """Base class of every method: a :class:`~softdistill.engine.task.Task` holding the student and, when
    it learns from soft labels, its soft-label source (``self.soft_labels``).

    ``uses_soft_labels``: the recipe must give a soft-label source; ``mixed_views``: the method learns
    from mixed views (batches with ``y_b`` and ``lam``); ``source_needs``: capabilities the source must
    serve beyond soft labels of the plan's views (see :mod:`softdistill.compatibility`);
    ``supports_grad_accum``: a batch may be split into parts whose gradients are summed (false for a
    method that updates parts of itself in the step); ``batch_terms``: what the method computes over
    the whole batch (not a mean of per-sample terms; empty: nothing), so that parts of a batch
    (gradient accumulation) would give another loss and are refused, and each DDP process computes it
    over its own slice; ``views_per_step``: 2 for a method that learns from two views of each sample in
    every step (``batch.second``, see :mod:`softdistill.data.views`); ``auxiliary``: names of submodules
    the trainer's optimiser trains with the student (e.g. a learnable temperature), wrapped like it
    (DDP averages their gradients) and saved with the training state for an exact resume.  A subclass
    defines ``Config`` and ``forward`` and registers itself (:func:`register_method`);
    :func:`~softdistill.methods.build_method` makes one by name.

    Args:
        config: the method's hyper-parameters (its ``Config``).
        student: the model that learns.
        num_classes: K.
        soft_labels: the soft-label source, for a method that learns from soft labels.
        context: what a method that uses files of other runs needs (HARD), else None.

    Returns:
        Called on a :class:`~softdistill.types.Batch`, or in a loop of your own as ``method(x, y)`` (and
        ``y_b=``, ``lam=`` for mixed views; ``sample_id=``, ``view=`` where the source looks soft labels up
        by address): a :class:`~softdistill.types.StepOutput` (see :meth:`__call__`).

    Example:
        >>> import torch
        >>> from softdistill import FrozenTeacher, build_method
        >>> wsl = build_method("wsl", torch.nn.Linear(4, 3), 3, FrozenTeacher(torch.nn.Linear(4, 3)))
        >>> out = wsl(torch.randn(8, 4), torch.randint(0, 3, (8,)))
        >>> list(out.losses), out.logits.shape
        (['wsl'], torch.Size([8, 3]))
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_soft_labels: ClassVar[bool] = False
    mixed_views: ClassVar[bool] = False
    source_needs: ClassVar[frozenset[str]] = frozenset()
    supports_grad_accum: ClassVar[bool] = True
    batch_terms: ClassVar[str] = ""
    views_per_step: ClassVar[int] = 1
    auxiliary: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MethodConfig, student: nn.Module, num_classes: int,
                 soft_labels: nn.Module | None = None, context: MethodContext | None = None) -> None:
        super().__init__()
        if self.uses_soft_labels != (soft_labels is not None):
            name = self.Config.model_fields["name"].default
            raise ValueError(f"method {name!r} " + ("needs a soft-label source" if self.uses_soft_labels
                                                   else "takes no soft-label source"))
        if problems := config.problems(RecipeFacts(num_classes=num_classes)):
            raise ValueError("; ".join(problems))
        self.config = config
        self.student = student
        self.soft_labels = soft_labels
        self.num_classes = num_classes
        self.context = context

    def __call__(self, batch: Batch | Tensor, y: Tensor | None = None, **address: Tensor) -> StepOutput:
        """The method's loss terms for ``batch``, or for inputs ``x`` (the first argument) with labels ``y``
        and, as keywords, the rest of a :class:`~softdistill.types.Batch` (``y_b``, ``lam``, ``sample_id``,
        ``view``)."""
        if not isinstance(batch, Batch):
            if y is None:
                raise TypeError("call a method with a Batch, or with inputs and labels: method(x, y)")
            batch = Batch(x=batch, y=y, **address)
        elif y is not None or address:
            raise TypeError("a method called with a Batch takes no further arguments")
        return super().__call__(batch)

    def forward(self, batch: Batch) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ the auxiliary modules
    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """The student and every ``auxiliary`` module are wrapped (DDP averages their gradients)."""
        super().wrap(wrapper)
        for name in self.auxiliary:
            setattr(self, name, wrapper(getattr(self, name)))

    def training_state(self) -> dict[str, Any]:
        return {name: unwrap(getattr(self, name)).state_dict() for name in self.auxiliary}

    def load_training_state(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.auxiliary):
            raise ValueError(f"{type(self).__name__} keeps the training state {sorted(self.auxiliary)}, the checkpoint "
                             f"has {sorted(state)}")
        for name in self.auxiliary:
            unwrap(getattr(self, name)).load_state_dict(state[name])
