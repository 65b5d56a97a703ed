"""What the trainer trains: a :class:`Task`, the one interface between the loop and whatever learns.

A task is an ``nn.Module`` that maps a :class:`~softdistill.types.Batch` to a
:class:`~softdistill.types.StepOutput` and holds the model the run checkpoints and evaluates
(``student``).  Every method (:class:`~softdistill.methods.Method`) is a task, and so is the VAE of
``train-vae``.  The hooks below have defaults that do nothing; the trainer calls them all, and
knows no task by name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from softdistill.engine.predict import classification_sums
from softdistill.types import Batch, StepOutput

__all__ = ["Task"]


class Task(nn.Module):
    """Base of everything the trainer trains (see the module docstring).

    ``selection_metric``: the evaluation value "best" selects on, and whether higher or lower is
    better (top-1 accuracy by default).
    """

    selection_metric: ClassVar[tuple[str, str]] = ("acc", "max")
    student: nn.Module

    def forward(self, batch: Batch) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the modules the trainer's optimiser trains (compile, DDP): the student by default."""
        self.student = wrapper(self.student)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the trainer's optimiser updates: every parameter that requires grad, unless a task trains
        some parts itself."""
        return [p for p in self.parameters() if p.requires_grad]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before training epoch ``epoch`` (1-based) of ``epochs``, after the epoch's seeding."""

    def end_epoch(self, epoch: int, report_dir: Path | None) -> None:
        """Called after training epoch ``epoch``; ``report_dir`` is where to write figures (None on ranks
        other than 0)."""

    def training_state(self) -> dict[str, Any]:
        """State beyond the student's weights that an exact resume needs (saved in last.pt)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no training state, but the checkpoint has {sorted(state)}")

    def evaluation_sums(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Per-batch sums of the evaluation values of ``model`` (averaged over a set); top-1 accuracy and
        cross-entropy by default."""
        return classification_sums(model, batch)

    def finish(self, run_dir: Path) -> None:
        """Called once on rank 0 when the run has finished, before the summary is written."""
