"""Decoupled knowledge distillation, DKD (Zhao, Cui, Song, Qiu, Liang; CVPR 2022, arXiv:2203.08679)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from softdistill.compatibility import FULL_LOGITS, STANDARDIZED
from softdistill.losses import cross_entropy, dkd_terms, dkd_warmup_factor
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, MethodContext, StepOutput


@register_method
class DecoupledKD(Method):
    """``L = ce_weight CE(z_s, y) + w(e) (alpha TCKD + beta NCKD)``, ``w(e) = min(e / warmup_epochs, 1)``.

    TCKD and NCKD are :func:`softdistill.losses.dkd_terms` (target vs. rest, and the non-target
    distribution, each ``T^2 KL``); the warm-up follows the trainer's epoch (counted from 1, as the
    authors' trainer counts: the first epoch weighs 1/20).  Defaults: megvii-research/mdistiller's
    (CIFAR-100: alpha 1, beta 8, T 4, CE weight 1, 20 warm-up epochs).
    """

    uses_soft_labels = True

    class Config(MethodConfig):
        name: Literal["dkd"] = "dkd"
        ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on hard labels")
        alpha: float = Field(1.0, ge=0, description="weight of TCKD (target vs. non-target)")
        beta: float = Field(8.0, ge=0, description="weight of NCKD (the non-target distribution); the authors' "
                                                   "per-pair CIFAR-100 values are 2, 6 or 8, ImageNet 0.5")
        temperature: float = Field(4.0, gt=0)
        warmup_epochs: float = Field(20.0, gt=0, description="the KD terms grow linearly to full weight over these "
                                                             "epochs (epoch e weighs min(e / warmup_epochs, 1))")
        standardize: bool = Field(False, description="logit standardization of both logit vectors first (Sun et al. "
                                                     "2024; their recipes: T 2, alpha 9, beta 9 x beta)")

        def soft_label_needs(self) -> dict[str, str]:
            return {FULL_LOGITS: f"method 'dkd' with standardize: {STANDARDIZED}"} if self.standardize else {}

    config: Config

    def __init__(self, config: Config, student: nn.Module, num_classes: int, soft_labels: nn.Module | None = None,
                 context: MethodContext | None = None) -> None:
        super().__init__(config, student, num_classes, soft_labels, context)
        self.warmup = dkd_warmup_factor(1, self.config.warmup_epochs)  # the first epoch's, until start_epoch

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup = dkd_warmup_factor(epoch, self.config.warmup_epochs)

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        logits = self.student(batch.x)
        terms = dkd_terms(logits, self.soft_labels(batch), batch.y, c.alpha, c.beta, c.temperature,
                          standardize=c.standardize)
        return StepOutput(logits, {"ce": c.ce_weight * cross_entropy(logits, batch.y),
                                   **{name: self.warmup * term for name, term in terms.items()}})
