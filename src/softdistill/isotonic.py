"""Isotonic correction of teacher logits on mixed samples (IDA; Cui & Yan, IJCAI 2021).

A mixed sample ``lam * x_a + (1 - lam) * x_b`` should rank its heavier label ``r`` (``a`` if
``lam > 0.5``, ``b`` if ``lam < 0.5``) above its lighter label ``s``, and both above every other
class ``o``.  :func:`isotonic_logits` returns, per row, the least-squares projection of the teacher
logits ``y`` onto that order (exact IDA, the "KD-i" target), and :func:`order_penalty` is the
hinge penalty on student probabilities of the approximation ("KD-p").  ``lam`` of exactly 0 or 1
keeps this definition (``lam = 1`` still asks ``z_b >= z_o``).

Exact rule, per row (``argmin ||z - y||^2`` subject to the constraints):

* General case (``a != b``, ``lam != 0.5``): ``z_r >= z_s >= z_o`` for every other ``o``.  At the
  optimum every other class is clipped, ``z_o = min(y_o, z_s)`` (KKT: ``z_o - y_o = -mu_o <= 0``),
  so the tree equals the chain ``r, s, o_1, o_2, ...`` with the others sorted descending,
  ``o_1 >= o_2 >= ...``, and pool-adjacent-violators on that chain only ever grows a head block.
  With ``C_j = o_1 + ... + o_j`` (``C_0 = 0``):

  - s-block (``s`` with the others that exceed its level):
    ``j_s = #{j >= 0 : (j + 1) o_{j+1} - C_j > y_s}``, ``m_s = (y_s + C_{j_s}) / (j_s + 1)``;
  - full block (``r``, ``s`` and the others that exceed its level):
    ``j_f = #{j >= 0 : (j + 2) o_{j+1} - C_j > y_r + y_s}``, ``m_f = (y_r + y_s + C_{j_f}) / (j_f + 2)``;
  - if ``m_s <= y_r``: ``z_r = y_r``, ``z_s = m_s``; else ``z_r = z_s = m_f``; then ``z_o = min(y_o, z_s)``.

  ``(j + 1) o_{j+1} - C_j > y_s`` says "``o_{j+1}`` exceeds the mean of ``{s, o_1..o_j}``"; the
  left side is non-increasing in ``j`` (its step is ``(j + 2)(o_{j+2} - o_{j+1}) <= 0``), so the
  count is the block size at which the running mean peaks: ``m_s`` is the largest prefix mean of
  ``(y_s, o_1, o_2, ...)`` and ``m_f`` the largest of ``(y_r + y_s [weight 2], o_1, ...)``, which
  is the min-max formula of isotonic regression on the chain.
* ``a == b``: only ``z_a >= z_o``; the chain is ``a, o_1, ..., o_{K-1}``: ``z_a = m_s`` with
  ``s = a`` (no full block), ``z_o = min(y_o, z_a)``.
* ``lam == 0.5`` exactly: ``z_a >= z_o`` and ``z_b >= z_o``, no a-b edge.  Exchange argument: if
  ``y_a >= y_b`` and the optimum had ``z_a < z_b``, swapping ``z_a`` and ``z_b`` would stay
  feasible and change the objective by ``2 (z_b - z_a)(y_b - y_a) <= 0``: a second optimum,
  contradicting the uniqueness of the projection.  So the optimum satisfies the extra edge and equals the general case with
  ``r = argmax(y_a, y_b)``, ``s`` the other one.

Batched, no Python loop: the others are sorted once per row (``r`` and ``s`` replaced by pads
``min(y_r, y_s)``, which, like every other class at or below them, can never be pooled since both
levels are ``>= min(y_r, y_s)``); ``C_j`` are prefix sums; the two counts are binary searches
(``searchsorted``) in the non-decreasing sequences ``C_j - (j + 1) o_{j+1}`` and
``C_j - (j + 2) o_{j+1}``.  O(K log K) per row.  When no row has more than ``K / 2 - 1`` others
above its pad (a teacher that mostly ranks a and b on top), a ``topk`` of that width replaces the
full sort.  Logits must be finite.

The projection is shift- and positive-scale-equivariant, so it commutes with dividing by a
temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softdistill.losses import at_least_float32

__all__ = ["isotonic_logits", "order_penalty", "IsotonicLogits", "OrderPenalty"]


def _check_mixed(logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float | Tensor | None) -> None:
    """ValueError unless logits are B x K, labels are (B,) integers in [0, K) and lam is in [0, 1]."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be B x K, got shape {tuple(logits.shape)}")
    batch, classes = logits.shape
    for name, labels in (("labels_a", labels_a), ("labels_b", labels_b)):
        if labels.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},) to match logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
        if batch:
            low, high = (int(v) for v in torch.aminmax(labels))
            if low < 0 or high >= classes:
                raise ValueError(f"{name} must lie in [0, {classes}), got values in [{low}, {high}]")
    if lam is None:
        return
    if isinstance(lam, Tensor):
        if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != batch):
            raise ValueError(f"lam must be a float or a tensor of shape ({batch},), got shape {tuple(lam.shape)}")
        if lam.numel() and not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError("lam must lie in [0, 1]")
    elif not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")


def _roles(lam: float | Tensor, y: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 1) indices of the heavier label r and the lighter s; at lam == 0.5, r is the larger of y_a, y_b."""
    if not isinstance(lam, Tensor) and lam != 0.5:
        return (a, b) if lam > 0.5 else (b, a)
    r_is_a = y.gather(1, a) >= y.gather(1, b)
    if isinstance(lam, Tensor):
        lam = lam.to(y.device).reshape(-1, 1)
        r_is_a = torch.where(lam == 0.5, r_is_a, lam > 0.5)
    return torch.where(r_is_a, a, b), torch.where(r_is_a, b, a)


@torch.no_grad()
def isotonic_logits(teacher_logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float | Tensor, *,
                    check: bool = True) -> Tensor:
    """Least-squares projection of each row onto ``z_r >= z_s >= z_o`` (see the module docstring): IDA's
    exact correction of teacher logits on mixed samples ("KD-i").

    Args:
        teacher_logits: B x K logits of the mixed inputs ``lam x_a + (1 - lam) x_b`` (finite).
        labels_a, labels_b: B class indices of the two mixed samples.
        lam: the share of ``x_a``: a float, or a tensor of shape (B,).
        check: check the inputs (reads values back from the device); ``check=False`` (the training
            step) skips the checks and the ``topk`` shortcut, whose width is read from the data: the
            same result, with nothing read back from the device.

    Returns:
        B x K corrected logits on the input's device and dtype (computed in at least float32), without
        gradient to the teacher.

    Example:
        >>> teacher = torch.tensor([[1.0, 3.0, 2.0]])  # a mixed image of classes 0 (lam 0.7) and 2
        >>> isotonic_logits(teacher, torch.tensor([0]), torch.tensor([2]), 0.7)
        tensor([[2., 2., 2.]])
    """
    if check:
        _check_mixed(teacher_logits, labels_a, labels_b, lam)
    y = at_least_float32(teacher_logits.detach())
    batch, classes = y.shape
    if batch == 0 or classes == 1:
        return teacher_logits.detach().clone()
    r, s = _roles(lam, y, labels_a.long().reshape(-1, 1), labels_b.long().reshape(-1, 1))
    y_r, y_s = y.gather(1, r), y.gather(1, s)

    # The others, with r and s replaced by pads = min(y_r, y_s): neither a pad nor an other <= pad
    # is ever pooled, so the `width` largest entries (sorted) suffice, the last one a non-candidate.
    pad = torch.minimum(y_r, y_s)
    work = y.clone()
    work.scatter_(1, r, pad)
    work.scatter_(1, s, pad)
    width = int((work > pad).sum(1).max()) + 1 if check else classes
    if 2 * width > classes:
        width = classes  # a full sort is cheaper than a wide topk
    top = work.sort(dim=1, descending=True).values if width == classes else work.topk(width, dim=1).values
    prefix = top.cumsum(dim=1).sub_(top)  # prefix[:, j] = C_j, the sum of the j largest others
    steps = torch.arange(1, width + 1, device=y.device, dtype=y.dtype)
    # C_j - (j + 1) o_{j+1}, non-decreasing in j (reuses `work` when the shapes agree); the last
    # entry is never pooled, +inf there keeps rounding from counting it.
    seq = torch.addcmul(prefix, top, steps, value=-1, out=work if width == classes else None)
    seq[:, -1] = float("inf")
    j_s = torch.searchsorted(seq, y_s.neg())
    seq.sub_(top)  # C_j - (j + 2) o_{j+1}
    y_rs = y_r + y_s
    j_f = torch.searchsorted(seq, y_rs.neg())

    m_s = prefix.gather(1, j_s).add_(y_s).div_(j_s + 1)
    m_f = prefix.gather(1, j_f).add_(y_rs).div_(j_f + 2)
    pooled = (m_s > y_r) & (r != s)
    z_s = torch.where(pooled, m_f, m_s)
    out = torch.minimum(y, z_s)
    out.scatter_(1, r, torch.where(pooled, m_f, y_r))
    out.scatter_(1, s, z_s)  # after r: when a == b the value m_s wins
    return out.to(teacher_logits.dtype)


def order_penalty(student_logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float | Tensor, *,
                  check: bool = True) -> Tensor:
    """IDA's approximation "KD-p": hinge penalties on the student's order, averaged over the batch.

    With ``p = softmax(student_logits)`` (at least float32), per sample
    ``relu(max_{o not in {a, b}} p_o - min(p_a, p_b)) + relu(p_s - p_r)``; the r-s term is dropped
    at ``lam == 0.5`` and vanishes for ``a == b`` (where the first term is
    ``relu(max_{o != a} p_o - p_a)``).  Differentiable w.r.t. the student logits.

    Args:
        student_logits: B x K.
        labels_a, labels_b, lam: as :func:`isotonic_logits`.
        check: check the inputs (reads values back from the device).

    Returns:
        The scalar penalty.

    Example:
        >>> order_penalty(torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([0]), torch.tensor([2]), 0.7)
        tensor(0.7299)
    """
    if check:
        _check_mixed(student_logits, labels_a, labels_b, lam)
    p = F.softmax(at_least_float32(student_logits), dim=1)
    a, b = labels_a.long().reshape(-1, 1), labels_b.long().reshape(-1, 1)
    p_a, p_b = p.gather(1, a).squeeze(1), p.gather(1, b).squeeze(1)
    p_other = p.scatter(1, torch.cat((a, b), 1), float("-inf")).amax(dim=1)
    # p_s - p_r = sign(lam - 0.5) * (p_b - p_a): zero at lam == 0.5 and when a == b.
    sign = torch.sign(torch.as_tensor(lam, dtype=p.dtype, device=p.device) - 0.5)
    return (F.relu(p_other - torch.minimum(p_a, p_b)) + F.relu(sign * (p_b - p_a))).mean()


class IsotonicLogits(nn.Module):
    """Module form of :func:`isotonic_logits`: the exact isotonic correction of teacher logits on mixed samples.

    Args:
        teacher_logits, labels_a, labels_b, lam: ``forward``'s inputs, as the function's.

    Returns:
        ``forward`` returns the B x K corrected logits (no gradient).

    Example:
        >>> IsotonicLogits()(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([0]), torch.tensor([2]), 0.7)
        tensor([[2., 2., 2.]])
    """

    def forward(self, teacher_logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float | Tensor) -> Tensor:
        return isotonic_logits(teacher_logits, labels_a, labels_b, lam)


class OrderPenalty(nn.Module):
    """Module form of :func:`order_penalty` (IDA's "KD-p").

    Args:
        student_logits, labels_a, labels_b, lam: ``forward``'s inputs, as the function's.

    Returns:
        ``forward`` returns the scalar penalty.

    Example:
        >>> OrderPenalty()(torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([0]), torch.tensor([2]), 0.7)
        tensor(0.7299)
    """

    def forward(self, student_logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float | Tensor) -> Tensor:
        return order_penalty(student_logits, labels_a, labels_b, lam)
