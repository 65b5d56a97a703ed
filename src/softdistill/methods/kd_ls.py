"""KD on standardized logits (Sun, Ren, Li, Wang, Cao; Logit Standardization in Knowledge Distillation, CVPR 2024,
arXiv:2403.01427)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from softdistill.compatibility import FULL_LOGITS, STANDARDIZED
from softdistill.losses import cross_entropy, kd_ls_loss
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput


@register_method
class StandardizedKD(Method):
    """``L = ce_weight CE(z_s, y) + kd_weight T^2 mean_b KL(softmax(Z(z_t) / T) || softmax(Z(z_s) / T))``.

    ``Z(z) = (z - mean z) / (1e-7 + std z)`` per sample (:func:`softdistill.losses.logit_standardize`):
    each sample's logits at its own temperature ``T std(z)``.  Defaults: sunshangquan/logit-standardization-KD
    (``--logit-stand --base-temp 2 --kd-weight 9``, CE weight 0.1).  The other methods the authors
    standardize (``dkd``, ``ctkd``, ``mlkd``) take ``standardize: true``.
    """

    uses_soft_labels = True

    class Config(MethodConfig):
        name: Literal["kd-ls"] = "kd-ls"
        ce_weight: float = Field(0.1, ge=0, description="weight of the cross-entropy on hard labels")
        kd_weight: float = Field(9.0, ge=0, description="weight of the KD term on standardized logits")
        temperature: float = Field(2.0, gt=0, description="the base temperature")

        def soft_label_needs(self) -> dict[str, str]:
            return {FULL_LOGITS: f"method 'kd-ls': {STANDARDIZED}"}

    config: Config

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        logits = self.student(batch.x)
        return StepOutput(logits, {"ce": c.ce_weight * cross_entropy(logits, batch.y),
                                   "kd": c.kd_weight * kd_ls_loss(logits, self.soft_labels(batch), c.temperature)})
