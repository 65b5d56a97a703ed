"""Functional distillation losses, each with a thin ``nn.Module`` wrapper.

Every loss is computed in at least float32 (float16/bfloat16 logits from autocast are upcast,
float64 stays float64), the KL divergence of KD in float64 (see :func:`kd_loss`),
and always through ``log_softmax`` (never ``log(softmax)``), so that confident logits cannot give
``log(0)``.  Temperatures lie in (0, :data:`MAX_TEMPERATURE`].  Notation: z_s, z_t student/teacher
logits (B x K), p^T = softmax(z / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "kd_loss",
    "teacher_student_divergence",
    "cross_entropy",
    "mixed_cross_entropy",
    "soft_cross_entropy",
    "label_smoothing_targets",
    "KDLoss",
    "SoftCrossEntropy",
    "SMOOTHING_CONVENTIONS",
    "at_least_float32",
    "virtual_teacher_probs",
    "tfkd_reg_loss",
    "TFKD_MODES",
    "TFKD_DEFAULT_CORRECT_PROB",
    "wsl_weights",
    "wsl_loss",
    "weighted_soft_cross_entropy",
    "MAX_TEMPERATURE",
]

SMOOTHING_CONVENTIONS = ("uniform", "others")
#: The largest temperature a loss accepts: far beyond any useful one (KD approaches logit matching
#: long before), and where float64 still computes T^2 KL to about 1e-4.
MAX_TEMPERATURE = 1e6


def _check_pair(student_logits: Tensor, other: Tensor, what: str) -> None:
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be B x K, got shape {tuple(student_logits.shape)}")
    if other.shape != student_logits.shape:
        raise ValueError(
            f"{what} has shape {tuple(other.shape)} but student_logits has {tuple(student_logits.shape)}; "
            "teacher and student must agree on batch size and number of classes"
        )


def at_least_float32(x: Tensor) -> Tensor:
    """Upcast half-precision tensors to float32; float32/float64 pass through unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature {temperature:g} is absurdly large: the softened probabilities of teacher and "
                         f"student agree to more digits than floating point holds, so T^2 KL is rounding noise. Use "
                         f"T <= {MAX_TEMPERATURE:g}; a KD term approaches logit matching long before")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al. (2015) distillation term, the true KL divergence averaged over the batch.

    ``T^2 * mean_b sum_k p_t^T(k) (log p_t^T(k) - log p_s^T(k))``.  The T^2 factor keeps the
    gradient magnitude independent of T.  No gradient flows into ``teacher_logits``.
    The divergence is computed in float64 and returned in the logits' precision (at least
    float32): at large T the two log-probabilities agree to many digits, and their float32
    difference times T^2 would be rounding noise (at T = 1e5 about 1e3, often negative).
    Equals ``T**2 * F.kl_div(log p_s, log p_t, reduction="batchmean", log_target=True)``; note that
    ``nn.KLDivLoss()``'s default 'mean' reduction would also divide by K.
    """
    return teacher_student_divergence(student_logits, teacher_logits.detach(), temperature)


def teacher_student_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """:func:`kd_loss` with gradients flowing into both arguments: ``T^2 mean_b KL(p_t^T || p_s^T)``.

    What an adversary maximises when it seeks inputs on which teacher and student disagree
    (HARD, Nix et al. 2023): the inputs reach the loss through both networks.
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits.double() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.double() / temperature, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return (temperature**2 * per_sample.mean()).to(at_least_float32(student_logits).dtype)


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Hard-label cross-entropy ``mean_b -log softmax(z_s)(y_b)``, in at least float32."""
    return F.cross_entropy(at_least_float32(student_logits), labels)


def mixed_cross_entropy(student_logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor) -> Tensor:
    """Hard-label CE of a mixed sample: ``mean_b( lam CE(z_s, a) + (1 - lam) CE(z_s, b) )``, lam per sample."""
    log_p = F.log_softmax(at_least_float32(student_logits), dim=1)
    ce_a = -log_p.gather(1, labels_a.view(-1, 1)).squeeze(1)
    ce_b = -log_p.gather(1, labels_b.view(-1, 1)).squeeze(1)
    lam = lam.to(log_p.dtype)
    return (lam * ce_a + (1 - lam) * ce_b).mean()


def soft_cross_entropy(student_logits: Tensor, target_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy against a soft target: ``mean_b( -sum_k target(k) log softmax(z_s / T)(k) )``.

    ``target_probs`` rows should be probability vectors (they are not renormalised, so weak
    labels with a deliberate mass deficit keep their meaning).  No gradient flows into them.
    """
    _check_pair(student_logits, target_probs, "target_probs")
    _check_temperature(temperature)
    log_p_s = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    return -(at_least_float32(target_probs.detach()) * log_p_s).sum(dim=1).mean()


def label_smoothing_targets(
    labels: Tensor, num_classes: int, epsilon: float, convention: str = "uniform", *,
    dtype: torch.dtype = torch.float32, check: bool = True,
) -> Tensor:
    """Smoothed one-hot targets (Szegedy et al., 2016), B x K in ``dtype`` (at least float32).

    Pass the logits' dtype so that a float64 loss keeps float64 targets.

    - ``"uniform"``: ``(1 - eps) * onehot + eps / K`` on every class (PyTorch's ``label_smoothing``).
    - ``"others"``:  ``1 - eps`` on the true class, ``eps / (K - 1)`` on each other class
      (the convention of the Tf-KD authors' code, Yuan et al. 2020).

    ``check=False`` (the training step) skips the range check of ``labels``, which reads them back
    from the device.
    """
    if convention not in SMOOTHING_CONVENTIONS:
        raise ValueError(f"convention must be one of {SMOOTHING_CONVENTIONS}, got {convention!r}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    if check and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    off_value = epsilon / num_classes if convention == "uniform" else epsilon / (num_classes - 1)
    on_value = 1.0 - epsilon + off_value if convention == "uniform" else 1.0 - epsilon
    dtype = torch.promote_types(dtype, torch.float32)
    targets = torch.full((labels.shape[0], num_classes), off_value, dtype=dtype, device=labels.device)
    targets.scatter_(1, labels.long().unsqueeze(1), on_value)
    return targets


TFKD_MODES = ("paper", "reference")
# The virtual teacher's probability of the truth when none is given: the paper's 0.9, and the
# 0.99 that the authors' code hard-codes for the reference mode.
TFKD_DEFAULT_CORRECT_PROB = {"paper": 0.9, "reference": 0.99}


def virtual_teacher_probs(labels: Tensor, num_classes: int, correct_prob: float = 0.9, *,
                          dtype: torch.dtype = torch.float32, check: bool = True) -> Tensor:
    """Tf-KD's designed "virtual teacher" (Yuan et al., CVPR 2020), B x K in ``dtype`` (at least float32).

    ``p_d(k) = a`` if k = y else ``(1 - a) / (K - 1)``: a 100 %-accurate teacher whose confidence
    ``a = correct_prob`` is chosen by hand (the same vector as the "others" label smoothing with
    eps = 1 - a).  ``check``: see :func:`label_smoothing_targets`.
    """
    if not 0.0 < correct_prob < 1.0:
        raise ValueError(f"correct_prob must be in (0, 1), got {correct_prob}")
    return label_smoothing_targets(labels, num_classes, 1.0 - correct_prob, convention="others", dtype=dtype,
                                   check=check)


def tfkd_reg_loss(student_logits: Tensor, labels: Tensor, temperature: float = 20.0, alpha: float = 0.1,
                  correct_prob: float | None = None, mode: str = "paper", *, multiplier: float = 1.0,
                  check: bool = True) -> Tensor:
    """Teacher-free KD with a virtual teacher (Tf-KD reg), including the hard-label CE term.

    ``correct_prob`` (a) defaults per mode (TFKD_DEFAULT_CORRECT_PROB): 0.9 in paper mode, 0.99 in
    reference mode.  The virtual teacher is built in the logits' dtype (at least float32).

    - ``paper``: ``(1 - alpha) CE(z_s, y) + alpha T^2 KL(p_d^T || p_s^T)`` (batchmean), where the
      virtual teacher is softened in log space, ``p_d^T = softmax(log(p_d) / T)``, and the student
      is at the same T.  ``multiplier`` must stay 1.
    - ``reference``: what the authors' code computes:
      ``(1 - alpha) CE + alpha * multiplier * KLDivLoss_mean(log_softmax(z_s), softmax(p_d / T))``:
      the softmax is applied to the *probability* vector divided by T (for K = 100, a = 0.99,
      T = 20 the true class gets 0.0105 against 0.0100 uniform: almost label-free), the student is
      at T = 1, and the 'mean' reduction divides by B x K; the authors compensate with a
      per-model multiplier (50-100).

    ``check``: see :func:`label_smoothing_targets`.
    """
    if mode not in TFKD_MODES:
        raise ValueError(f"mode must be one of {TFKD_MODES}, got {mode!r}")
    _check_temperature(temperature)
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be B x K, got shape {tuple(student_logits.shape)}")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    if correct_prob is None:
        correct_prob = TFKD_DEFAULT_CORRECT_PROB[mode]
    probs = virtual_teacher_probs(labels, student_logits.shape[1], correct_prob, dtype=student_logits.dtype,
                                  check=check)
    ce = cross_entropy(student_logits, labels)
    if mode == "paper":
        if multiplier != 1.0:
            raise ValueError("multiplier only applies to mode='reference' (paper mode has the T^2 factor instead)")
        return (1 - alpha) * ce + alpha * kd_loss(student_logits, probs.log(), temperature)
    target = F.softmax(probs / temperature, dim=1)
    log_p_s = F.log_softmax(at_least_float32(student_logits), dim=1)
    kl_mean = (target * (target.log() - log_p_s)).mean()  # KLDivLoss(reduction='mean'): / (B x K)
    return (1 - alpha) * ce + alpha * multiplier * kl_mean


def wsl_weights(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample weights of weighted soft labels (Zhou et al., ICLR 2021), B values in [0, 1], no grad.

    ``w_i = 1 - exp(-CE_s,i / (CE_t,i + eps))`` with CE the cross-entropy of student / teacher on
    ``labels`` at T = 1.  w ~ 0.632 when both are equally good, -> 0 when the student is far better
    than the teacher on that sample (a "regularization sample": its soft label mostly adds bias),
    -> 1 when the teacher is far better.  ``eps`` keeps a teacher whose CE underflows to 0 finite.
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    with torch.no_grad():
        ce_s = F.cross_entropy(at_least_float32(student_logits.detach()), labels, reduction="none")
        ce_t = F.cross_entropy(at_least_float32(teacher_logits.detach()), labels, reduction="none")
        return 1.0 - torch.exp(-ce_s / (ce_t + eps))


def weighted_soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, weights: Tensor,
                                temperature: float = 1.0) -> Tensor:
    """``mean_i( w_i * -sum_k p_t^T(k) log p_s^T(k) )``: soft cross-entropy with per-sample weights (no T^2)."""
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    _check_temperature(temperature)
    if weights.shape != student_logits.shape[:1]:
        raise ValueError(f"weights must have shape ({student_logits.shape[0]},), got {tuple(weights.shape)}")
    log_p_s = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    p_t = F.softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=1)
    return (weights.detach() * -(p_t * log_p_s).sum(dim=1)).mean()


def wsl_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 4.0,
             alpha: float = 2.25) -> Tensor:
    """Weighted soft labels: ``CE(z_s, y) + alpha T^2 mean_i(w_i * H(p_t^T, p_s^T)_i)``, w from :func:`wsl_weights`.

    The soft term is the per-sample soft cross-entropy (same student gradient as the KL); there is
    no separate weight on the CE term (the authors' code).
    """
    weights = wsl_weights(student_logits, teacher_logits, labels)
    soft = weighted_soft_cross_entropy(student_logits, teacher_logits, weights, temperature)
    return cross_entropy(student_logits, labels) + alpha * temperature**2 * soft


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss`."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return kd_loss(student_logits, teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class SoftCrossEntropy(nn.Module):
    """Module form of :func:`soft_cross_entropy`."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student_logits: Tensor, target_probs: Tensor) -> Tensor:
        return soft_cross_entropy(student_logits, target_probs, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
