"""KD on mixed samples with isotonic correction: IDA (Cui & Yan, IJCAI 2021).

One method, four named variants (all with the teacher evaluated on the mixed input).  The
mixed views come from the data section (``data.augment.mix``, ``mix_alpha``; see
:mod:`softdistill.data.views`), so a batch arrives mixed, with ``y`` (label a), ``y_b`` and ``lam``:

- ``correction: none``                      KD-aug: ``alpha KL_T(z_t, z_s) + (1 - alpha) CE_mix``
- ``correction: replace``                   KD-i:   ``alpha KL_T(IR(z_t), z_s) + (1 - alpha) CE_mix``
- ``correction: add``                       KD-i as in the authors' code: KD-aug ``+ sigma KL_T(IR(z_t), z_s)``
- ``correction: none, order_penalty: sigma``  KD-p:   KD-aug ``+ sigma * order_penalty(z_s, a, b, lam)``

with ``CE_mix = mean(lam CE(z_s, a) + (1 - lam) CE(z_s, b))`` and IR the exact isotonic
projection of the teacher logits onto ``z_r >= z_s >= z_other``.  The authors' code applies
softmax twice in the KD-i term; we do not.  Diagnostics logged per epoch: the teacher's order
concordance and top-2 hit rate on the mixed samples, before and after correction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from softdistill.isotonic import isotonic_logits, order_penalty
from softdistill.losses import kd_loss, mixed_cross_entropy
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.metrics.ordering import order_concordance, top2_hit_rate
from softdistill.types import Batch, StepOutput

MOVED_TO_DATA = ("mix", "mix_alpha", "per_sample")


@register_method
class IsotonicKD(Method):
    """See the module docstring for the four variants and their formulas."""

    uses_soft_labels = True
    mixed_views = True

    class Config(MethodConfig):
        name: Literal["ida"] = "ida"
        alpha: float = Field(0.95, ge=0, le=1, description="weight of the soft term")
        temperature: float = Field(4.5, gt=0)
        correction: Literal["none", "replace", "add"] = "none"
        sigma: float = Field(2.0, ge=0, description="weight of the added KD-i term (correction: add)")
        order_penalty: float = Field(0.0, ge=0, description="KD-p: weight of the order penalty (authors: 2)")

        @model_validator(mode="before")
        @classmethod
        def _mixing_moved(cls, raw: object) -> object:
            moved = [k for k in MOVED_TO_DATA if isinstance(raw, dict) and k in raw]
            if moved:
                raise ValueError(f"method.{moved[0]} moved to the data section: write data.augment: {{mix: mixup | "
                                 "cutmix, mix_alpha: A} (lambda is drawn per sample, see docs/data.md)")
            return raw

    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        if batch.y_b is None or batch.lam is None:
            raise ValueError("method 'ida' needs mixed views: set data.augment.mix")
        y_a, y_b, lam = batch.y, batch.y_b, batch.lam
        logits = self.student(batch.x)
        teacher_logits = self.soft_labels(batch)
        losses = {"ce_mix": (1 - c.alpha) * mixed_cross_entropy(logits, y_a, y_b, lam)}
        # the loader's labels and lambdas are valid by construction: no check reads the device
        metrics = {"teacher_concordance": order_concordance(teacher_logits, y_a, y_b, lam, check=False),
                   "teacher_top2": top2_hit_rate(teacher_logits, y_a, y_b, check=False)}
        corrected = None
        if c.correction != "none":
            corrected = isotonic_logits(teacher_logits, y_a, y_b, lam, check=False)
            metrics["corrected_concordance"] = order_concordance(corrected, y_a, y_b, lam, check=False)
            metrics["corrected_top2"] = top2_hit_rate(corrected, y_a, y_b, check=False)
        soft_target = corrected if c.correction == "replace" else teacher_logits
        losses["kd"] = c.alpha * kd_loss(logits, soft_target, c.temperature)
        if c.correction == "add":
            losses["kd_iso"] = c.sigma * kd_loss(logits, corrected, c.temperature)
        if c.order_penalty:
            losses["order_penalty"] = c.order_penalty * order_penalty(logits, y_a, y_b, lam, check=False)
        return StepOutput(logits, losses, metrics)
