"""Quality indicators of a set of soft labels (Yuan et al., NeurIPS 2023, "Learning From Biased Soft Labels").

Notation: ``d_x`` is the soft label of sample x (a row of a B x K tensor), ``y`` its true class,
``Top_k(d)`` the k classes with the largest entries of ``d``, leaving out classes of zero mass:
a soft label with fewer than k non-zero entries has a smaller top-k, its support.

- unreliability degree  ``Delta_k = P(y not in Top_k(d_x))``;
- ambiguity degree      ``gamma_k = max over a, j != a of P(j in Top_k(d_x) | y = a)``;
- the paper's sufficient condition for learnability from the soft labels: ``Delta_k + gamma_k < 1``.

Every function takes the soft labels as probabilities (default) or as logits
(``from_logits=True``), as a B x K tensor on any device, with integer labels in [0, K).

**Ties.** ``Top_k`` is taken with a *stable* descending sort: among equal entries the lower class
index ranks first, identically on every device (``torch.topk`` leaves the order of ties
unspecified).  Soft labels that are uniform over a candidate set of size m are therefore measured
exactly at k >= m (the candidate set), and with the lower-index convention for k < m.

**Zero mass.** A class a soft label gives no mass is no candidate, whatever k: the tie rule would
otherwise fill the top-k of a one-hot label with the lowest-index wrong classes, so that perfect
one-hot labels would read gamma_k = 1 ("condition fails") at every k >= 2, an artefact of the tie
rule rather than a property of the labels.  With zero mass left out, one-hot labels measure
Delta_k = gamma_k = 0 at every k, and the sets are those the ``soft-label`` method's
candidate-set loss trains on (``Top_k(d)`` minus classes of zero mass).  An all-zero row (no
supervision) has an empty top-k: leave such rows out, as ``inspect`` and the weak tables do.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = [
    "unreliability_degree",
    "ambiguity_degree",
    "ambiguity_matrix",
    "class_indicators",
    "expected_calibration_error",
    "calibration_bins",
    "top_k_indices",
    "soft_label_indicators",
]


def _as_probs(soft_labels: Tensor, from_logits: bool, what: str = "soft_labels") -> Tensor:
    if not isinstance(soft_labels, Tensor):
        soft_labels = torch.as_tensor(soft_labels)
    if soft_labels.dim() != 2:
        raise ValueError(f"{what} must be a B x K tensor (samples x classes), got shape {tuple(soft_labels.shape)}")
    if soft_labels.shape[0] == 0 or soft_labels.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(soft_labels.shape)})")
    if not (soft_labels.dtype.is_floating_point or soft_labels.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{what} must hold real numbers, got dtype {soft_labels.dtype}")
    x = soft_labels.detach().to(torch.promote_types(soft_labels.dtype, torch.float32))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} holds NaN or infinite values")
    if from_logits:
        return torch.softmax(x, dim=1)
    if bool((x < 0).any()):
        raise ValueError(f"{what} has negative entries, so it is not a probability table; "
                         "pass from_logits=True for logits")
    return x


def _check_labels(labels: Tensor, probs: Tensor) -> Tensor:
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    batch, classes = probs.shape
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},) to match soft labels {tuple(probs.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    low, high = (int(v) for v in torch.aminmax(labels))
    if low < 0 or high >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got values in [{low}, {high}]")
    return labels.to(device=probs.device, dtype=torch.long)


def _check_k(k: int, classes: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= classes:
        raise ValueError(f"k must lie in [1, {classes}] for {classes} classes, got {k}")
    return k


def top_k_indices(scores: Tensor, k: int) -> Tensor:
    """The k largest entries of each row (B x k class indices, largest first); ties go to the
    lower class index (stable sort), the same on every device."""
    _check_k(k, scores.shape[1])
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def _membership(probs: Tensor, k: int) -> Tensor:
    """B x K boolean: is class j in Top_k of row b (classes of zero mass never are)."""
    member = torch.zeros_like(probs, dtype=torch.bool)
    return member.scatter_(1, top_k_indices(probs, k), True) & (probs > 0)


def unreliability_degree(soft_labels: Tensor, labels: Tensor, k: int = 1, *, from_logits: bool = False) -> float:
    """``Delta_k``: the share of samples whose true label is not among the k largest entries of
    its soft label (1 - top-k accuracy).  Ties: see the module docstring."""
    probs = _as_probs(soft_labels, from_logits)
    labels = _check_labels(labels, probs)
    k = _check_k(k, probs.shape[1])
    hit = _membership(probs, k).gather(1, labels.view(-1, 1)).squeeze(1)
    return 1.0 - hit.double().mean().item()


def ambiguity_matrix(soft_labels: Tensor, labels: Tensor, k: int = 1, *, from_logits: bool = False) -> Tensor:
    """K x K float64 matrix ``M[a, j] = P(j in Top_k(d_x) | y = a)`` (on the CPU).

    Rows of classes without samples are NaN.  The diagonal is ``1 - Delta_k`` restricted to
    class a; the ambiguity degree is the largest off-diagonal entry.
    """
    probs = _as_probs(soft_labels, from_logits)
    labels = _check_labels(labels, probs)
    classes = probs.shape[1]
    k = _check_k(k, classes)
    member = _membership(probs, k).double()
    counts = torch.zeros(classes, classes, dtype=torch.float64, device=probs.device).index_add_(0, labels, member)
    per_class = torch.bincount(labels, minlength=classes).double().view(-1, 1)
    matrix = counts / per_class  # 0/0 = NaN for absent classes
    return matrix.cpu()


def ambiguity_degree(soft_labels: Tensor, labels: Tensor, k: int = 1, *, from_logits: bool = False) -> float:
    """``gamma_k``: over every true class a that has samples and every wrong class j != a, the
    largest share of class-a samples whose top-k contains j.  0.0 when K = 1 (no wrong class)."""
    matrix = ambiguity_matrix(soft_labels, labels, k, from_logits=from_logits)
    classes = matrix.shape[0]
    if classes == 1:
        return 0.0
    off = matrix.masked_fill(torch.eye(classes, dtype=torch.bool), float("nan"))
    present = ~torch.isnan(matrix).all(dim=1)
    return off[present].nan_to_num(nan=-1.0).max().item()


def class_indicators(soft_labels: Tensor, labels: Tensor, k: int = 1, *, from_logits: bool = False
                     ) -> tuple[Tensor, Tensor]:
    """The indicators restricted to each true class a (two K-vectors, float64, on the CPU; NaN for a class
    without samples): ``Delta_k(a) = P(y not in Top_k(d_x) | y = a)`` and ``gamma_k(a) = max over j != a of
    P(j in Top_k(d_x) | y = a)``.  ``Delta_k`` is their mean weighted by the class frequencies, ``gamma_k``
    their largest value; ``1 - Delta_k(a) - gamma_k(a)`` is how far class a's soft labels are from failing
    the sufficient condition."""
    matrix = ambiguity_matrix(soft_labels, labels, k, from_logits=from_logits)
    classes = matrix.shape[0]
    if classes == 1:
        return 1.0 - matrix.diagonal(), torch.zeros(1, dtype=torch.float64)
    wrong = matrix.masked_fill(torch.eye(classes, dtype=torch.bool), float("-inf")).amax(dim=1)
    return 1.0 - matrix.diagonal(), wrong


def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = 15, *, from_logits: bool = False) -> dict[str, Tensor]:
    """Per-bin statistics of top-1 confidence for a reliability diagram (float64, on the CPU).

    Equal-width bins on [0, 1]: bin b holds confidences in ``(b / n, (b + 1) / n]`` (a confidence of
    exactly 0 goes to the first bin).  Returns ``edges`` (n + 1), ``count``, ``accuracy`` and
    ``confidence`` (n each; NaN for empty bins).  The top-1 class is the largest entry, ties going to
    the lower class index.
    """
    p = _as_probs(probs, from_logits, "probs")
    labels = _check_labels(labels, p)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    top = top_k_indices(p, 1)
    conf = p.gather(1, top).squeeze(1).double().clamp(0.0, 1.0)
    correct = (top.squeeze(1) == labels).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(conf.cpu(), edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).double()
    acc_sum = torch.bincount(index, weights=correct.cpu(), minlength=n_bins)
    conf_sum = torch.bincount(index, weights=conf.cpu(), minlength=n_bins)
    return {"edges": edges, "count": count, "accuracy": acc_sum / count, "confidence": conf_sum / count}


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15, *, from_logits: bool = False) -> float:
    """ECE = sum over bins of (share of samples in the bin) * |accuracy - mean confidence|, with
    ``n_bins`` equal-width bins on the top-1 probability (see :func:`calibration_bins`)."""
    bins = calibration_bins(probs, labels, n_bins, from_logits=from_logits)
    filled = bins["count"] > 0
    share = bins["count"][filled] / bins["count"].sum()
    return (share * (bins["accuracy"][filled] - bins["confidence"][filled]).abs()).sum().item()


def soft_label_indicators(soft_labels: Tensor, labels: Tensor, ks: Iterable[int] = range(1, 6), *,
                          from_logits: bool = False) -> list[dict[str, float | int | bool | list[int]]]:
    """Unreliability, ambiguity and the sufficient condition for each k in ``ks`` (k >= K skipped).

    Each entry: ``k``, ``unreliability``, ``ambiguity``, ``sum``, ``condition`` (sum < 1) and
    ``ambiguity_pair`` = [a, j], the true and wrong class at which the ambiguity is reached.
    """
    probs = _as_probs(soft_labels, from_logits)
    labels = _check_labels(labels, probs)
    classes = probs.shape[1]
    out = []
    for k in ks:
        if k >= classes and classes > 1:
            continue
        delta = unreliability_degree(probs, labels, k)
        matrix = ambiguity_matrix(probs, labels, k)
        off = matrix.masked_fill(torch.eye(classes, dtype=torch.bool), -1.0).nan_to_num(nan=-1.0)
        flat = int(off.argmax())
        gamma = max(float(off.max()), 0.0)
        out.append({"k": int(k), "unreliability": delta, "ambiguity": gamma, "sum": delta + gamma,
                    "condition": bool(delta + gamma < 1.0), "ambiguity_pair": [flat // classes, flat % classes]})
    return out

