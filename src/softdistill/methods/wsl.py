"""Weighted soft labels, WSL (Zhou, Song, Chen, Zhou, Wang, Yuan, Zhang, ICLR 2021)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from softdistill.losses import cross_entropy, wsl_loss
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.metrics.bias_variance import regularization_stats
from softdistill.types import Batch, StepOutput


@register_method
class WeightedSoftLabels(Method):
    """``L = CE(z_s, y) + alpha T^2 mean_i(w_i H(p_t^T, p_s^T)_i)``, ``w_i = 1 - exp(-CE_s,i / (CE_t,i + eps))``.

    The weight, computed at T = 1 on detached logits, softly down-weights "regularization
    samples" (teacher less sure of the truth than the student).  ``label_free`` replaces the hard
    label by the teacher's argmax everywhere (weights and CE), so no ground truth is used.
    """

    uses_soft_labels = True

    class Config(MethodConfig):
        name: Literal["wsl"] = "wsl"
        alpha: float = Field(2.25, ge=0, description="weight of the soft term (CIFAR-100 2.25, ImageNet 2.5)")
        temperature: float = Field(4.0, gt=0)
        label_free: bool = Field(False, description="use the teacher's argmax in place of the hard label")

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        teacher_logits = self.soft_labels(batch)
        labels = teacher_logits.argmax(dim=1) if self.config.label_free else batch.y
        loss = wsl_loss(logits, teacher_logits, labels, self.config.temperature, self.config.alpha)
        metrics = {"ce": cross_entropy(logits.detach(), labels), **regularization_stats(logits.detach(),
                                                                                       teacher_logits, batch.y)}
        return StepOutput(logits, {"wsl": loss}, metrics)
