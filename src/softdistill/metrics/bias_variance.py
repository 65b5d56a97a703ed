"""Per-batch diagnostics of the bias-variance view of soft labels (Zhou et al., ICLR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from softdistill.losses import at_least_float32, wsl_weights

__all__ = ["regularization_stats"]

QUARTILES = torch.tensor([0.25, 0.5, 0.75])


@torch.no_grad()
def regularization_stats(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Diagnostics of one batch, logged per epoch by KD and WSL alike.

    - ``reg_share``: share of "regularization samples", those where the teacher is less sure of the
      true class than the student, ``CE_t,i > CE_s,i`` (T = 1).  On them distillation adds bias
      and removes variance; WSL down-weights them.
    - ``w_mean``, ``w_q1``, ``w_median``, ``w_q3``: mean and quartiles of the WSL weight
      ``w_i = 1 - exp(-CE_s,i / (CE_t,i + eps))`` in the batch (epoch values are batch averages).
    """
    ce_s = F.cross_entropy(at_least_float32(student_logits), labels, reduction="none")
    ce_t = F.cross_entropy(at_least_float32(teacher_logits), labels, reduction="none")
    w = wsl_weights(student_logits, teacher_logits, labels)
    q1, median, q3 = torch.quantile(w, QUARTILES.to(w.device, w.dtype, non_blocking=True))
    return {"reg_share": (ce_t > ce_s).float().mean(), "w_mean": w.mean(), "w_q1": q1, "w_median": median, "w_q3": q3}
