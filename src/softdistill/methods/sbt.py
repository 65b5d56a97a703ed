"""Skillful-but-bad teachers, SBT (Yuan et al., NeurIPS 2023, "Learning From Biased Soft Labels").

A teacher trained to be *wrong at top-1* while its top-k still holds the truth, so that its soft
labels are heavily biased yet informative.  The loss (formulas and reasoning in docs/methods.md):

``L = CE(z, y) + a1 * relu(z_y - max_{r in R_i} z_r + delta)               (punish: y must not lead)
             + a2 * relu(w_(k) - z_y + delta)                              (compensate: y stays in the top-k)
             + a3 * mean_{r in R_i} relu(max_{j not in {y} + R_i} z_j - z_r + delta)``
                                                                           (push: R_i fill the other top-k slots)

``w_(k)`` is the k-th largest wrong-class logit (y is in the top-k iff ``z_y > w_(k)``) and ``R_i``
are k - 1 wrong classes drawn at random *per sample*, fixed across epochs (a hash of the sample
index and ``seed``), so that the wrong classes in the top-k are spread over the classes (low
ambiguity) instead of one class that leads for every input or the classes that look alike.
The draw is a hash of the sample id (:mod:`softdistill.hashing`), so it does not depend on the
batch, the epoch or the data split.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from softdistill.hashing import hash_keys
from softdistill.losses import at_least_float32
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.types import Batch, RecipeFacts, StepOutput

__all__ = ["SkillfulButBad", "sbt_distractors", "sbt_losses"]

def sbt_distractors(sample_ids: Tensor, labels: Tensor, num_classes: int, count: int, seed: int = 0) -> Tensor:
    """``count`` distinct wrong classes per sample (B x count), a fixed function of (sample id, seed).

    Every wrong class gets a pseudo-random key from the seed, the sample id and its offset; the
    ``count`` smallest keys win.  The same sample gets the same classes in every epoch and batch.
    """
    if not 0 <= count <= num_classes - 1:
        raise ValueError(f"count must lie in [0, {num_classes - 1}], got {count}")
    offsets = torch.arange(1, num_classes, device=labels.device)  # y + offset (mod K) is a wrong class
    keys = hash_keys(seed, sample_ids.to(labels.device).view(-1, 1), offsets.view(1, -1))
    chosen = keys.argsort(dim=1, stable=True)[:, :count]
    return (labels.long().view(-1, 1) + 1 + chosen) % num_classes


def sbt_losses(logits: Tensor, labels: Tensor, distractors: Tensor, *, k: int = 3, punish: float = 1.5,
               compensate: float = 2.0, push: float = 1.0, margin: float = 1.0) -> dict[str, Tensor]:
    """The four SBT terms (batch means, weights applied), in at least float32.

    ``distractors`` (B x (k - 1)) are the wrong classes that should share the top-k with the truth.
    """
    z = at_least_float32(logits)
    classes = z.shape[1]
    if not 2 <= k <= classes - 1:
        raise ValueError(f"k must lie in [2, {classes - 1}] for {classes} classes, got {k}")
    if distractors.shape != (z.shape[0], k - 1):
        raise ValueError(f"distractors must be B x (k - 1) = {(z.shape[0], k - 1)}, got {tuple(distractors.shape)}")
    y = labels.view(-1, 1)
    z_y = z.gather(1, y).squeeze(1)
    wrong = z.scatter(1, y, float("-inf"))
    top_wrong = wrong.topk(k, dim=1).values  # B x k, largest first
    outsiders = wrong.scatter(1, distractors, float("-inf")).max(dim=1).values  # best class outside {y} + R
    z_r = z.gather(1, distractors)
    return {
        "ce": F.cross_entropy(z, labels),
        "punish": punish * F.relu(z_y - z_r.max(dim=1).values + margin).mean(),
        "compensate": compensate * F.relu(top_wrong[:, k - 1] - z_y + margin).mean(),
        "push": push * F.relu(outsiders.view(-1, 1) - z_r + margin).mean(),
    }


@register_method
class SkillfulButBad(Method):
    """Trains a deliberately bad top-1 teacher whose top-k keeps the truth; see the module docstring."""

    class Config(MethodConfig):
        name: Literal["sbt"] = "sbt"
        k: int = Field(3, ge=2, description="the truth is kept within the top-k; k - 1 random wrong classes share it")
        punish: float = Field(1.5, ge=0, description="a1: weight of the hinge that pushes y off the top-1")
        compensate: float = Field(2.0, ge=0, description="a2: weight of the hinge that keeps y in the top-k")
        push: float = Field(1.0, ge=0, description="a3: weight of the hinge that lifts the k - 1 random wrong "
                                                        "classes above every other wrong class")
        margin: float = Field(1.0, ge=0, description="delta: logit margin of both hinges")
        seed: int = Field(0, description="seed of the per-sample random wrong classes")

        def problems(self, facts: RecipeFacts) -> list[str]:
            classes = facts.num_classes
            if classes is not None and self.k > classes - 1:
                return [f"method.k = {self.k} needs at least {self.k + 1} classes, the data has {classes}"]
            return []

    def forward(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        c = self.config
        distractors = sbt_distractors(batch.sample_id, batch.y, self.num_classes, c.k - 1, c.seed)
        terms = sbt_losses(logits, batch.y, distractors, k=c.k, punish=c.punish, compensate=c.compensate,
                           push=c.push, margin=c.margin)
        with torch.no_grad():
            order = logits.detach().topk(c.k, dim=1).indices
            in_topk = (order == batch.y.view(-1, 1)).any(dim=1).float().mean()
        return StepOutput(logits, terms, {"truth_in_topk": in_topk})
