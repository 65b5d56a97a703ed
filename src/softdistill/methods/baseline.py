"""Training on hard labels alone: the baseline, and the recipe that trains teachers."""

from __future__ import annotations

from typing import Literal

from softdistill.losses import cross_entropy
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput


@register_method
class CrossEntropy(Method):
    """``L = CE(z_s, y)``."""

    class Config(MethodConfig):
        name: Literal["ce"] = "ce"

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        return StepOutput(logits, {"ce": cross_entropy(logits, batch.y)})
