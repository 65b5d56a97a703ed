"""Label smoothing regularization (Szegedy et al., 2016), the "uniform virtual teacher" of Tf-KD."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from softdistill.losses import SmoothingConvention, label_smoothing_targets, soft_cross_entropy
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput


@register_method
class LabelSmoothing(Method):
    """``L = H(q', p_s)`` with q' the smoothed one-hot target.

    ``convention: uniform`` puts eps/K on every class (PyTorch); ``others`` puts eps/(K-1) on each
    wrong class (the Tf-KD authors' code).  See :func:`softdistill.losses.label_smoothing_targets`.
    """

    class Config(MethodConfig):
        name: Literal["ls"] = "ls"
        epsilon: float = Field(0.1, ge=0, lt=1)
        convention: SmoothingConvention = "uniform"

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        targets = label_smoothing_targets(batch.y, self.num_classes, self.config.epsilon, self.config.convention,
                                          check=False)  # the loader's labels are valid by construction
        return StepOutput(logits, {"ls_ce": soft_cross_entropy(logits, targets)})
