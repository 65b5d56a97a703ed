"""Curriculum temperature for KD, CTKD (Li, Li, Yang, Zhao, Song, Luo, Li, Yang; AAAI 2023, arXiv:2211.16231)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from softdistill.compatibility import FULL_LOGITS
from softdistill.engine.wrap import unwrap
from softdistill.losses import CTKDLoss, cross_entropy, ctkd_grl_lambda
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, MethodContext, StepOutput


@register_method
class CurriculumTemperatureKD(Method):
    """``L = ce_weight CE(z_s, y) + kd_weight T^2 mean_b KL(p_t^T || p_s^T)``, ``T = t_start + t_end sigmoid(theta)``.

    theta (one global parameter, 1 at the start: T = 15.6) is trained by the trainer's optimiser with
    the student, through a gradient reversal of strength ``lambda(e)``, a cosine rise from lambda_min
    to lambda_max over ``num_loops`` epochs (:func:`softdistill.losses.ctkd_grl_lambda`, paper sign,
    epochs counted from 1 as the authors' trainer counts): the temperature ascends the loss the
    student descends.  It is wrapped like the student (DDP averages its gradient) and saved with the
    training state.  ``t_end`` is the width of T's range, not its upper end: T lies in
    ``(t_start, t_start + t_end)``, so ``t_start >= t_end`` is allowed.  Defaults: zhengli97/CTKD
    (CIFAR-100: CE 0.1, KD 0.9, t_start 1, t_end 20, lambda 0 -> 1 over 10 epochs).
    """

    uses_soft_labels = True
    auxiliary = ("learned_temperature",)

    class Config(MethodConfig):
        name: Literal["ctkd"] = "ctkd"
        ce_weight: float = Field(0.1, ge=0, description="weight of the cross-entropy on hard labels (the authors' -r)")
        kd_weight: float = Field(0.9, ge=0, description="weight of the KD term (the authors' -a)")
        t_start: float = Field(1.0, gt=0, description="the lowest temperature")
        t_end: float = Field(20.0, gt=0, description="the WIDTH of the temperature's range: T in (t_start, t_start "
                                                     "+ t_end), as in the authors' code")
        lambda_max: float = Field(1.0, ge=0, description="the gradient reversal's strength at the end of the rise")
        lambda_min: float = Field(0.0, ge=0, description="its strength at epoch 0")
        num_loops: float = Field(10.0, gt=0, description="epochs of the cosine rise (the authors' --decay_loops; 5 on "
                                                         "ImageNet)")
        standardize: bool = Field(False, description="logit standardization of both logit vectors first (Sun et al. "
                                                     "2024)")

        @model_validator(mode="after")
        def _rising(self) -> "CurriculumTemperatureKD.Config":
            if self.lambda_min > self.lambda_max:
                raise ValueError(f"lambda_min = {self.lambda_min} > lambda_max = {self.lambda_max}: the reversal's "
                                 "strength rises from lambda_min to lambda_max (the paper's sign, both >= 0)")
            return self

        def soft_label_needs(self) -> dict[str, str]:
            return {FULL_LOGITS: f"method 'ctkd' softens every class's logit at a learned temperature up to "
                                 f"{self.t_start + self.t_end:g}"}

    config: Config

    def __init__(self, config: Config, student: nn.Module, num_classes: int, soft_labels: nn.Module | None = None,
                 context: MethodContext | None = None) -> None:
        super().__init__(config, student, num_classes, soft_labels, context)
        self.learned_temperature: nn.Module = CTKDLoss(config.t_start, config.t_end, standardize=config.standardize)
        self.grl_lambda = self._lambda_at(1)  # the first epoch's, until start_epoch

    def _lambda_at(self, epoch: int) -> float:
        c = self.config
        return ctkd_grl_lambda(epoch, c.lambda_max, c.lambda_min, c.num_loops)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.grl_lambda = self._lambda_at(epoch)

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        logits = self.student(batch.x)
        kd = self.learned_temperature(logits, self.soft_labels(batch), self.grl_lambda)
        temperature = unwrap(self.learned_temperature).temperature().reshape(())
        return StepOutput(logits, {"ce": c.ce_weight * cross_entropy(logits, batch.y), "kd": c.kd_weight * kd},
                          {"temperature": temperature})
