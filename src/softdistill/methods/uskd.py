"""Teacher-free USKD (Yang, Zeng, Li, Zhang, Yuan, Li; ICCV 2023, arXiv:2303.13005): the Tf-KD family."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from softdistill.losses import cross_entropy, uskd_terms
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.models.features import mid_level_feature
from softdistill.types import Batch, MethodContext, StepOutput


class WeakHead(nn.Module):
    """USKD's weak supervision head: global average pooling of a feature map (a flat feature as it is),
    then a linear layer to the classes."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feature: Tensor) -> Tensor:
        return self.fc(feature.mean(dim=tuple(range(2, feature.dim()))) if feature.dim() > 2 else feature)


@register_method
class USKD(Method):
    """``L = ce_weight CE(z_s, y) + alpha L_target + beta L_non-target + mu L_weak`` (:func:`softdistill.losses.uskd_terms`).

    No teacher: the target term re-weights the student's own p(y) (by ``p(y)^2 + 1 - mean_b p(y)^2``,
    a batch mean: gradient accumulation is refused), the non-target term follows Zipf's law over the
    classes ranked by the student and a weak head, a linear layer on the student's mid-level feature
    (:func:`softdistill.models.features.mid_level_feature`, or ``feature``), trained by the trainer's
    optimiser with the student (wrapped like it, saved with the training state).  Defaults: yzd-v/cls_KD
    (USKDLoss: alpha 1, beta 0.1, mu 0.005, the original cross-entropy kept; its CIFAR-100 config:
    0.1, 0.1, 0.1).
    """

    batch_terms = "the batch mean of p(y)^2 in its target term's weights"
    auxiliary = ("weak_head",)

    class Config(MethodConfig):
        name: Literal["uskd"] = "uskd"
        ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on hard labels")
        alpha: float = Field(1.0, ge=0, description="weight of the target term")
        beta: float = Field(0.1, ge=0, description="weight of the non-target (Zipf) term")
        mu: float = Field(0.005, ge=0, description="weight of the weak head's smoothed cross-entropy")
        feature: str | None = Field(None, description="the student's module whose output the weak head reads "
                                                      "(dotted name); None = its stage before the last")
        rank_with_log_probs: bool = Field(True, description="rank with the student's log-probabilities, as the "
                                                            "authors' code does (false: probabilities)")

    config: Config

    def __init__(self, config: Config, student: nn.Module, num_classes: int, soft_labels: nn.Module | None = None,
                 context: MethodContext | None = None) -> None:
        super().__init__(config, student, num_classes, soft_labels, context)
        if context is None:
            raise ValueError("method 'uskd' needs the input shape (a MethodContext) to size its weak head")
        name = config.feature or mid_level_feature(student)
        try:
            module = student.get_submodule(name)
        except AttributeError:
            raise ValueError(f"method.feature: the student has no module {name!r}") from None
        self._feature: list[Tensor] = []
        module.register_forward_hook(self._keep_feature)
        self.weak_head: nn.Module = WeakHead(self._feature_channels(student, context), num_classes)

    def _keep_feature(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self._feature[:] = [output]

    def _feature_channels(self, student: nn.Module, context: MethodContext) -> int:
        """Channels of the mid-level feature, from one image through the student in eval mode (no statistics move)."""
        spec = context.inputs
        was_training = student.training
        try:
            with torch.no_grad():
                student.eval()(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size,
                                           device=next(student.parameters()).device))
        finally:
            student.train(was_training)
        return self._feature.pop().shape[1]

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        logits = self.student(batch.x)
        weak_logits = self.weak_head(self._feature.pop())
        terms = uskd_terms(logits, weak_logits, batch.y, c.alpha, c.beta, c.mu,
                           rank_with_log_probs=c.rank_with_log_probs)
        return StepOutput(logits, {"ce": c.ce_weight * cross_entropy(logits, batch.y), **terms})
