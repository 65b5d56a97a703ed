"""Teacher-free KD with a designed virtual teacher, Tf-KD reg (Yuan, Tay, Li, Wang, Feng, CVPR 2020).

Tf-KD self, Re-KD and De-KD need no code of their own: they are the ``kd`` method with a
teacher recipe (the student's own architecture, a weaker model, an early checkpoint).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from softdistill.losses import TfkdMode, tfkd_reg_loss
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput


@register_method
class VirtualTeacher(Method):
    """``L = (1 - alpha) CE + alpha T^2 KL(p_d^T || p_s^T)`` with the 100 %-accurate virtual teacher
    ``p_d = a`` on the true class, ``(1 - a)/(K - 1)`` elsewhere; see :func:`softdistill.losses.tfkd_reg_loss`
    for the ``paper`` and ``reference`` modes.
    """

    class Config(MethodConfig):
        name: Literal["tfkd-reg"] = "tfkd-reg"
        alpha: float = Field(0.1, ge=0, le=1)
        temperature: float = Field(20.0, gt=0)
        correct_prob: float | None = Field(None, gt=0, lt=1, description="a: the virtual teacher's probability of "
                                           "the truth (default 0.9 in paper mode, 0.99 in reference mode)")
        mode: TfkdMode = "paper"
        multiplier: float = Field(1.0, gt=0, description="reference mode only: the authors' per-model factor (50-100)")

        @model_validator(mode="after")
        def _multiplier_only_in_reference(self) -> "VirtualTeacher.Config":
            if self.mode == "paper" and self.multiplier != 1.0:
                raise ValueError("multiplier applies to mode: reference only (paper mode uses T^2)")
            return self

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        c = self.config
        loss = tfkd_reg_loss(logits, batch.y, c.temperature, c.alpha, c.correct_prob, c.mode, multiplier=c.multiplier,
                             check=False)  # the loader's labels are valid by construction
        return StepOutput(logits, {"tfkd_reg": loss})
