"""Transformed teacher matching, TTM, and its weighted form WTTM (Zheng, Yang; ICLR 2024, arXiv:2402.11148).

One paper, two methods that differ in their loss only: this module registers both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from softdistill.compatibility import FULL_LOGITS
from softdistill.losses import cross_entropy, ttm_loss, wttm_loss
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput

#: why a transformed teacher needs every class's logit
POWER_TRANSFORM = "the power transform p_t^gamma lifts every class's probability, the tail's included"


class TransformedTeacherConfig(MethodConfig):
    """What TTM and WTTM share: the CE weight, the power gamma and the weight of the matching term."""

    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on hard labels (the authors' -r)")
    gamma: float = Field(0.1, gt=0, description="the power of the teacher's probabilities (a temperature "
                                                      "1/gamma on the teacher only; the authors' --ttm_l)")
    kd_weight: float = Field(45.0, ge=0, description="weight of the matching term (the authors' -b)")

    def soft_label_needs(self) -> dict[str, str]:
        return {FULL_LOGITS: f"method {self.name!r}: {POWER_TRANSFORM}"}


class TransformedTeacherMatching(Method):
    """``L = ce_weight CE(z_s, y) + kd_weight mean_b KL(p_t^gamma / sum_k p_t(k)^gamma || p_s)`` (TTM; WTTM
    weights each sample by ``sum_k p_t(k)^gamma``): the teacher alone is tempered, the student is at T = 1,
    no T^2.  Defaults: zkxufo/TTM's README run (VGG13 -> VGG8: gamma 0.1, weight 45, CE 1); the
    authors choose gamma and the weight per pair."""

    uses_soft_labels = True
    loss: ClassVar[Callable[..., Tensor]]
    config: TransformedTeacherConfig

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        logits = self.student(batch.x)
        return StepOutput(logits, {"ce": c.ce_weight * cross_entropy(logits, batch.y),
                                   c.name: c.kd_weight * type(self).loss(logits, self.soft_labels(batch),
                                                                          gamma=c.gamma)})


@register_method
class TTM(TransformedTeacherMatching):
    __doc__ = TransformedTeacherMatching.__doc__
    loss = staticmethod(ttm_loss)

    class Config(TransformedTeacherConfig):
        name: Literal["ttm"] = "ttm"


@register_method
class WTTM(TransformedTeacherMatching):
    """WTTM: TTM with each sample's term weighted by ``U_b = sum_k p_t,b(k)^gamma`` (no grad), so a flatter
    teacher weighs more for gamma < 1.  Defaults: zkxufo/TTM's README run of WTTM (gamma 0.2, weight 4,
    there added to CRD)."""

    loss = staticmethod(wttm_loss)

    class Config(TransformedTeacherConfig):
        name: Literal["wttm"] = "wttm"
        gamma: float = Field(0.2, gt=0, description="the power of the teacher's probabilities (--ttm_l)")
        kd_weight: float = Field(4.0, ge=0, description="weight of the matching term (the authors' -a)")
