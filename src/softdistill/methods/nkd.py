"""Normalized KD, NKD (Yang, Zeng, Li, Zhang, Yuan, Li; ICCV 2023, arXiv:2303.13005)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from softdistill.losses import cross_entropy, nkd_terms
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput


@register_method
class NormalizedKD(Method):
    """``L = ce_weight CE(z_s, y) - mean_b p_t(y) log p_s(y) - gamma T^2 mean_b sum_{k != y} q_t^T(k) log q_s^T(k)``.

    The target class weighted by the teacher's probability of it (T = 1), and a soft cross-entropy
    between the normalized non-target distributions q (:func:`softdistill.losses.nkd_terms`).
    Defaults: yzd-v/cls_KD (NKDLoss: T 1, gamma 1.5; the original cross-entropy kept at weight 1; its
    CIFAR-100 config uses T 3, gamma 3.5).
    """

    uses_soft_labels = True

    class Config(MethodConfig):
        name: Literal["nkd"] = "nkd"
        ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on hard labels")
        temperature: float = Field(1.0, gt=0, description="of the non-target term")
        gamma: float = Field(1.5, ge=0, description="weight of the non-target term")

    config: Config

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        logits = self.student(batch.x)
        terms = nkd_terms(logits, self.soft_labels(batch), batch.y, c.temperature, c.gamma)
        return StepOutput(logits, {"ce": c.ce_weight * cross_entropy(logits, batch.y), **terms})
