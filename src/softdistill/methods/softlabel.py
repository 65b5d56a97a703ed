"""Learning from soft labels alone, without hard labels (Yuan et al., NeurIPS 2023).

The soft-label source is the recipe's teacher (a trained model, e.g. a skillful-but-bad teacher,
usually cached) or its ``weak`` table.  Two losses:

- ``candidate_set``: ``-log sum_{j in C_i} p_s(j)``, ``C_i = Top_k(d_i)`` (classes with zero mass
  never count), the classifier-consistent partial-label loss: the student may put its mass on any
  candidate; only the set is trusted, not the ranking inside it.
- ``soft_ce``: ``-sum_j d_i^T(j) log p_s(j)``, plain cross-entropy against the soft label.

Rows with no mass (unlabelled samples of incomplete supervision) carry no supervision and are left
out of the batch mean.  The hard label ``batch.y`` is only used for logged diagnostics.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from softdistill.losses import at_least_float32
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.metrics.soft_labels import top_k_indices
from softdistill.types import Batch, RecipeFacts, StepOutput

__all__ = ["SoftLabelLearning", "candidate_set_loss", "soft_label_targets"]


def candidate_set_loss(student_logits: Tensor, candidates: Tensor, weights: Tensor | None = None, *,
                       check: bool = True) -> Tensor:
    """``mean_i -log sum_{j in C_i} softmax(z_i)(j)`` for a B x K boolean candidate mask.

    ``weights`` (B, 0/1) leave rows out; the mean is over the kept rows (0 when none is kept).
    A kept row without any candidate is an error (``check=False`` skips that test, which reads
    the mask back from the device).
    """
    if candidates.shape != student_logits.shape or candidates.dtype != torch.bool:
        raise ValueError(f"candidates must be a boolean mask of shape {tuple(student_logits.shape)}")
    log_p = F.log_softmax(at_least_float32(student_logits), dim=1)
    keep = torch.ones(len(log_p), device=log_p.device) if weights is None else weights.to(log_p.dtype)
    if check and bool((~candidates.any(dim=1) & (keep > 0)).any()):
        raise ValueError("candidate_set_loss: a kept row has an empty candidate set")
    per_row = -torch.logsumexp(log_p.masked_fill(~candidates, float("-inf")), dim=1)
    per_row = torch.where(keep > 0, per_row, torch.zeros_like(per_row))
    return (keep * per_row).sum() / keep.sum().clamp_min(1.0)


def soft_label_targets(source: torch.nn.Module, batch: Batch, temperature: float = 1.0) -> Tensor:
    """Probabilities (B x K) from a soft-label source: ``source.probs(batch)`` when it has one (tables;
    all-zero rows kept), else ``softmax(source(batch) / T)``.  For tables, T != 1 sharpens or
    flattens as ``p^(1/T)`` renormalised, which is what ``softmax(log p / T)`` would give."""
    if hasattr(source, "probs"):
        p = at_least_float32(source.probs(batch))
        if temperature != 1.0:
            powered = p.pow(1.0 / temperature)
            p = powered / powered.sum(dim=1, keepdim=True).clamp_min(1e-30)
        return p
    return F.softmax(at_least_float32(source(batch)) / temperature, dim=1)


@register_method
class SoftLabelLearning(Method):
    """A student that sees only the soft labels of its source; see the module docstring."""

    uses_soft_labels = True

    class Config(MethodConfig):
        name: Literal["soft-label"] = "soft-label"
        loss: Literal["candidate_set", "soft_ce"] = "candidate_set"
        k: int = Field(1, ge=1, description="candidate_set: the candidate set is the soft label's top-k")
        temperature: float = Field(1.0, gt=0, description="soft_ce: the soft label is taken at this temperature")

        def problems(self, facts: RecipeFacts) -> list[str]:
            if facts.num_classes is not None and self.k > facts.num_classes:
                return [f"method.k = {self.k} exceeds the {facts.num_classes} classes of the data"]
            return []

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        c = self.config
        with torch.no_grad():
            target = soft_label_targets(self.soft_labels, batch, c.temperature if c.loss == "soft_ce" else 1.0)
            supervised = target.sum(dim=1) > 0
            top = top_k_indices(target, c.k)
            candidates = torch.zeros_like(target, dtype=torch.bool).scatter_(1, top, True) & (target > 0)
        weights = supervised.float()
        if c.loss == "candidate_set":
            loss = candidate_set_loss(logits, candidates, weights, check=False)  # a supervised row has its top-1
        else:
            log_p = F.log_softmax(at_least_float32(logits), dim=1)
            per_row = -(target * log_p).sum(dim=1)
            loss = (weights * per_row).sum() / weights.sum().clamp_min(1.0)
        with torch.no_grad():  # diagnostics against the hard label (never trained on)
            n = supervised.float().sum().clamp_min(1.0)
            truth_in_set = (candidates.gather(1, batch.y.view(-1, 1)).squeeze(1) & supervised).float().sum() / n
            target_top1 = ((top[:, 0] == batch.y) & supervised).float().sum() / n
        return StepOutput(logits, {c.loss: loss}, {"target_top1": target_top1, "truth_in_candidates": truth_in_set,
                                                  "supervised": supervised.float().mean()})
