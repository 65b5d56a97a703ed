"""Multi-level logit distillation, MLKD (Jin, Wang, Lin; CVPR 2023)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from softdistill.compatibility import FULL_LOGITS, STANDARDIZED
from softdistill.losses import MLKD_CONFIDENCE_MASKS, MLKD_STRONG_VIEWS, mlkd_loss
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, StepOutput


@register_method
class MultiLevelKD(Method):
    """``L = ce + kd + cc + bc`` of :func:`softdistill.losses.mlkd_loss` on two views of each sample per step.

    ``ce = ce_weight (CE(weak) + CE(strong))``; ``kd`` KD at the temperatures (T, 3, 5, 2, 6) on both
    views (the weak view's masked by the teacher's confidence); ``cc`` and ``bc`` the class and
    sample (batch) relations of the weak view's probabilities.  The weak view is the sample's view of
    the epoch, the strong view its next view of the plan (``data.views_per_step: 2``, ``batch.second``,
    see docs/methods.md).  The confidence medians and the relations are terms of the whole batch:
    gradient accumulation is refused, and each DDP process computes them over its own slice.
    Defaults: Jin-Ying/Multi-Level-Logit-Distillation (CIFAR-100: T 4, CE 0.1, KD 0.9).
    """

    uses_soft_labels = True
    views_per_step = 2
    batch_terms = ("its sample relations (bc), class relations (cc) and the batch medians of the teacher's "
                   "confidence that mask them")

    class Config(MethodConfig):
        name: Literal["mlkd"] = "mlkd"
        temperature: float = Field(4.0, gt=0, description="the first temperature (the authors' KD.TEMPERATURE)")
        extra_temperatures: tuple[float, ...] = Field((3.0, 5.0, 2.0, 6.0), description="the other temperatures")
        ce_weight: float = Field(0.1, ge=0, description="weight of the cross-entropy on each view")
        kd_weight: float = Field(0.9, ge=0, description="weight of the KD and relation terms")
        standardize: bool = Field(False, description="logit standardization in the KD terms (Sun et al. 2024: T 2, "
                                                     "kd_weight 9)")
        strong_views: Literal[MLKD_STRONG_VIEWS] = Field(  # type: ignore[valid-type]
            "reference", description="reference: the authors' code, whose strong-view KD term reads the weak view "
                                     "at its 4th and 5th temperatures; strong: the strong view at every one")
        confidence_masks: Literal[MLKD_CONFIDENCE_MASKS] = Field(  # type: ignore[valid-type]
            "scale", description="scale: the authors' code, where a mask only scales its term by the share it keeps; "
                                 "select: the masked samples (classes) are left out")

        @field_validator("extra_temperatures")
        @classmethod
        def _positive(cls, temperatures: tuple[float, ...]) -> tuple[float, ...]:
            if not all(t > 0 for t in temperatures):
                raise ValueError(f"every temperature must be > 0, got {list(temperatures)}")
            return temperatures

        def soft_label_needs(self) -> dict[str, str]:
            return {FULL_LOGITS: f"method 'mlkd' with standardize: {STANDARDIZED}"} if self.standardize else {}

    config: Config

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        if batch.second is None:
            raise ValueError("method 'mlkd' learns from two views of each sample per step: give the batch its second "
                             "views (batch.second; data.views_per_step: 2 in a recipe)")
        weak, strong = self.student(batch.x), self.student(batch.second.x)
        terms = mlkd_loss(weak, self.soft_labels(batch), strong, self.soft_labels(batch.second), batch.y,
                          c.temperature, c.extra_temperatures, c.ce_weight, c.kd_weight, standardize=c.standardize,
                          strong_views=c.strong_views, confidence_masks=c.confidence_masks)
        return StepOutput(weak, {name.removeprefix("loss_"): term for name, term in terms.items()})
