"""Order diagnostics of soft labels on mixed samples (IDA; Cui & Yan, IJCAI 2021).

A mixed sample ``lam * x_a + (1 - lam) * x_b`` has the known order r > s > o for its heavier label
``r``, lighter label ``s`` and every other class ``o`` (see :mod:`softdistill.isotonic`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from softdistill.isotonic import _check_mixed
from softdistill.losses import at_least_float32

__all__ = ["order_concordance", "top2_hit_rate"]


@torch.no_grad()
def order_concordance(soft: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float | Tensor, *,
                      check: bool = True) -> Tensor:
    """Kendall-tau-style concordance over the pairs of known order, averaged over the batch.

    Known pairs: (r, s) (omitted when ``lam == 0.5`` or ``a == b``), and (r, o), (s, o) for every
    other class o (just (a, o) when ``a == b``).  Per sample
    ``tau = (#concordant - #discordant) / #known pairs``, ties counting 0; 1 is a perfectly ordered
    row, -1 a reversed one.  ``soft`` may be logits or probabilities (same order).  Samples without
    a known pair (K = 2, ``a != b``, ``lam == 0.5``) are left out; nan if none is left.  A 0-d
    tensor on the input's device; ``check=False`` skips the input checks (nothing is read back).
    """
    if check:
        _check_mixed(soft, labels_a, labels_b, lam)
    z = at_least_float32(soft.detach())
    classes = z.shape[1]
    a, b = labels_a.long().reshape(-1, 1), labels_b.long().reshape(-1, 1)
    z_a, z_b = z.gather(1, a), z.gather(1, b)
    lam_t = torch.as_tensor(lam, device=z.device).reshape(-1, 1)
    r_is_a = lam_t >= 0.5  # at lam == 0.5 the roles are symmetric
    z_r, z_s = torch.where(r_is_a, z_a, z_b), torch.where(r_is_a, z_b, z_a)
    distinct = a != b
    is_other = torch.ones_like(z, dtype=torch.bool).scatter_(1, torch.cat((a, b), 1), False)
    score = torch.where(is_other, torch.sign(z_r - z) + distinct * torch.sign(z_s - z), 0).sum(1, keepdim=True)
    rs_pair = distinct & (lam_t != 0.5)
    score = score + rs_pair * torch.sign(z_r - z_s)
    pairs = torch.where(distinct, 2 * (classes - 2), classes - 1) + rs_pair
    keep = pairs > 0
    ratio = score / pairs.clamp_min(1)
    return torch.where(keep, ratio, 0).sum() / keep.sum()  # nan when no sample is kept


@torch.no_grad()
def top2_hit_rate(soft: Tensor, labels_a: Tensor, labels_b: Tensor, *, both: bool = False,
                  check: bool = True) -> Tensor:
    """Share of samples whose two largest entries hold at least one of the labels a, b.

    ``both=True`` asks for both labels in the top-2 (just ``a`` when ``a == b``).  The paper's
    diagnostic, the share of mixed samples with NEITHER original label in the teacher's top-2,
    is ``1 - top2_hit_rate(...)``.  Ties at the second place are broken by ``torch.topk``.  A 0-d
    tensor; ``check=False`` skips the label checks (nothing is read back from the device).
    """
    if check:
        _check_mixed(soft, labels_a, labels_b, None)
    if soft.shape[1] < 2:
        raise ValueError(f"top2_hit_rate needs at least two classes, got {soft.shape[1]}")
    top2 = soft.detach().topk(2, dim=1).indices
    hit_a = (top2 == labels_a.reshape(-1, 1)).any(1)
    hit_b = (top2 == labels_b.reshape(-1, 1)).any(1)
    hit = hit_a & hit_b if both else hit_a | hit_b
    return hit.float().mean()
