"""Vanilla knowledge distillation (Hinton, Vinyals, Dean, 2015)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from softdistill.losses import cross_entropy, kd_loss
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.metrics.bias_variance import regularization_stats
from softdistill.types import Batch, StepOutput


@register_method
class KnowledgeDistillation(Method):
    """``L = (1 - alpha) CE(z_s, y) + alpha T^2 KL(p_t^T || p_s^T)``.

    The teacher may be any soft-label source: a trained model (KD, Tf-KD self, Re-KD, De-KD are
    all this method with different teachers) or cached teacher logits.
    """

    uses_soft_labels = True

    class Config(MethodConfig):
        name: Literal["kd"] = "kd"
        alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term")
        temperature: float = Field(4.0, gt=0)

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        teacher_logits = self.soft_labels(batch)
        alpha = self.config.alpha
        return StepOutput(logits, {
            "ce": (1 - alpha) * cross_entropy(logits, batch.y),
            "kd": alpha * kd_loss(logits, teacher_logits, self.config.temperature),
        }, regularization_stats(logits.detach(), teacher_logits, batch.y))
