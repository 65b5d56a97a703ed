"""DIST: knowledge distillation from a stronger teacher (Huang, You, Wang, Qian, Xu; NeurIPS 2022, arXiv:2205.10536)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from softdistill.losses import cross_entropy, dist_terms
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput


@register_method
class CorrelationKD(Method):
    """``L = ce_weight CE(z_s, y) + kd_weight T^2 [beta (1 - mean_b rho_b) + gamma (1 - mean_k rho_k)]``.

    rho is the Pearson correlation of the student's and the teacher's probabilities at T: of each
    sample's class distribution (``inter``) and of each class over the batch (``intra``, a term of the
    whole batch: gradient accumulation is refused, and each DDP process correlates over its own slice,
    as the authors' multi-GPU code does).  Defaults: hunto/image_classification_sota at d9662f7
    (``kd: dist``: T 1, beta = gamma = 1, KD weight 2, CE weight 1; CIFAR-100 uses ``dist_t4``, T 4).
    """

    uses_soft_labels = True
    batch_terms = "its intra-class correlation (each class's probabilities over the samples of the batch)"

    class Config(MethodConfig):
        name: Literal["dist"] = "dist"
        ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on hard labels")
        kd_weight: float = Field(2.0, ge=0, description="weight of the DIST term (the authors' kd_loss_weight)")
        beta: float = Field(1.0, ge=0, description="weight of the inter-class relation (per sample)")
        gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation (per class, over the batch)")
        temperature: float = Field(1.0, gt=0, description="1 on ImageNet, 4 on CIFAR-100 in the authors' configs")
        tau_squared: bool = Field(True, description="multiply by T^2 as the authors' code does (the paper does not)")

    config: Config

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        logits = self.student(batch.x)
        terms = dist_terms(logits, self.soft_labels(batch), c.beta, c.gamma, c.temperature, c.tau_squared)
        return StepOutput(logits, {"ce": c.ce_weight * cross_entropy(logits, batch.y),
                                   **{name: c.kd_weight * term for name, term in terms.items()}})
