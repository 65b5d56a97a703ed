"""Functional distillation losses, each with a thin ``nn.Module`` wrapper.

Every loss is computed in at least float32 (float16/bfloat16 logits from autocast are upcast,
float64 stays float64), the KL divergence of KD in float64 (see :func:`kd_loss`),
and always through ``log_softmax`` (never ``log(softmax)``), so that confident logits cannot give
``log(0)``.  Temperatures lie in (0, :data:`MAX_TEMPERATURE`].  Notation: z_s, z_t student/teacher
logits (B x K), p^T = softmax(z / T).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

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
    "TeacherStudentDivergence",
    "CrossEntropy",
    "MixedCrossEntropy",
    "TfKDRegLoss",
    "WeightedSoftCrossEntropy",
    "WSLLoss",
    "SMOOTHING_CONVENTIONS",
    "SmoothingConvention",
    "at_least_float32",
    "virtual_teacher_probs",
    "tfkd_reg_loss",
    "TFKD_MODES",
    "TfkdMode",
    "TFKD_DEFAULT_CORRECT_PROB",
    "wsl_weights",
    "wsl_loss",
    "weighted_soft_cross_entropy",
    "MAX_TEMPERATURE",
    "dkd_loss",
    "dkd_terms",
    "dkd_warmup_factor",
    "DKD_TARGET_OFFSET",
    "dist_loss",
    "dist_terms",
    "nkd_loss",
    "nkd_terms",
    "uskd_loss",
    "uskd_terms",
    "logit_standardize",
    "kd_ls_loss",
    "ttm_loss",
    "wttm_loss",
    "ctkd_kd_loss",
    "ctkd_temperature",
    "ctkd_grl_lambda",
    "gradient_reversal",
    "mlkd_loss",
    "MLKD_STRONG_VIEWS",
    "MLKD_CONFIDENCE_MASKS",
    "DKDLoss",
    "DISTLoss",
    "NKDLoss",
    "USKDLoss",
    "LogitStandardize",
    "KDLSLoss",
    "TTMLoss",
    "WTTMLoss",
    "GradientReversal",
    "CTKDLoss",
    "MLKDLoss",
]

SmoothingConvention = Literal["uniform", "others"]
SMOOTHING_CONVENTIONS: tuple[str, ...] = get_args(SmoothingConvention)
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
    """Upcast half-precision tensors to float32; float32/float64 pass through unchanged.

    Args:
        x: any floating tensor.

    Returns:
        ``x`` in float32 when it was float16 or bfloat16, else ``x`` itself.

    Example:
        >>> at_least_float32(torch.ones(2, dtype=torch.bfloat16)).dtype
        torch.float32
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature {temperature:g} is absurdly large: the softened probabilities of teacher and "
                         f"student agree to more digits than floating point holds, so T^2 KL is rounding noise. Use "
                         f"T <= {MAX_TEMPERATURE:g}; a KD term approaches logit matching long before")


class _FunctionModule(nn.Module):
    """Base of the module forms: a function with its keyword hyper-parameters bound."""

    def __init__(self, **hyper_parameters: object) -> None:
        super().__init__()
        self.hyper_parameters = hyper_parameters

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.hyper_parameters.items())


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al. (2015) distillation term, the true KL divergence averaged over the batch.

    ``T^2 * mean_b sum_k p_t^T(k) (log p_t^T(k) - log p_s^T(k))``.  The T^2 factor keeps the
    gradient magnitude independent of T.  No gradient flows into ``teacher_logits``.
    The divergence is computed in float64 and returned in the logits' precision (at least
    float32): at large T the two log-probabilities agree to many digits, and their float32
    difference times T^2 would be rounding noise (at T = 1e5 about 1e3, often negative).
    Equals ``T**2 * F.kl_div(log p_s, log p_t, reduction="batchmean", log_target=True)``; note that
    ``nn.KLDivLoss()``'s default 'mean' reduction would also divide by K.

    Args:
        student_logits: B x K.
        teacher_logits: B x K (no gradient flows into them).
        temperature: T in (0, 1e6].

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> kd_loss(s, t, temperature=4.0)
        tensor(0.2802)
    """
    return teacher_student_divergence(student_logits, teacher_logits.detach(), temperature)


def teacher_student_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """:func:`kd_loss` with gradients flowing into both arguments: ``T^2 mean_b KL(p_t^T || p_s^T)``.

    What an adversary maximises when it seeks inputs on which teacher and student disagree
    (HARD, Nix et al. 2023): the inputs reach the loss through both networks.

    Args:
        student_logits, teacher_logits: B x K, both differentiable.
        temperature: T in (0, 1e6].

    Returns:
        The scalar divergence (at least float32).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> teacher_student_divergence(s, t.requires_grad_()).backward()
        >>> t.grad.shape
        torch.Size([2, 3])
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits.double() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.double() / temperature, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return (temperature**2 * per_sample.mean()).to(at_least_float32(student_logits).dtype)


class TeacherStudentDivergence(_FunctionModule):
    """Module form of :func:`teacher_student_divergence`.

    Args:
        temperature: T (the constructor's).
        student_logits, teacher_logits: ``forward``'s inputs, B x K.

    Returns:
        ``forward`` returns the scalar divergence, differentiable in both inputs.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> TeacherStudentDivergence(temperature=4.0)(s, t)
        tensor(0.2802)
    """

    def __init__(self, temperature: float = 4.0) -> None:
        _check_temperature(temperature)
        super().__init__(temperature=temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return teacher_student_divergence(student_logits, teacher_logits, **self.hyper_parameters)


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Hard-label cross-entropy ``mean_b -log softmax(z_s)(y_b)``, in at least float32.

    Args:
        student_logits: B x K.
        labels: B class indices (int64).

    Returns:
        The scalar loss.

    Example:
        >>> cross_entropy(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
        tensor(1.1269)
    """
    return F.cross_entropy(at_least_float32(student_logits), labels)


class CrossEntropy(_FunctionModule):
    """Module form of :func:`cross_entropy` (in at least float32, unlike ``nn.CrossEntropyLoss`` under autocast).

    Args:
        student_logits, labels: ``forward``'s inputs, B x K and B.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> CrossEntropy()(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
        tensor(1.1269)
    """

    def forward(self, student_logits: Tensor, labels: Tensor) -> Tensor:
        return cross_entropy(student_logits, labels)


def mixed_cross_entropy(student_logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor) -> Tensor:
    """Hard-label CE of a mixed sample: ``mean_b( lam CE(z_s, a) + (1 - lam) CE(z_s, b) )``, lam per sample.

    Args:
        student_logits: B x K, the student on the mixed inputs ``lam x_a + (1 - lam) x_b``.
        labels_a, labels_b: B class indices of the two mixed samples.
        lam: B shares of ``x_a`` (a tensor; a view plan's ``Batch.lam``).

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> mixed_cross_entropy(z, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.5, 1.0]))
        tensor(0.6269)
    """
    log_p = F.log_softmax(at_least_float32(student_logits), dim=1)
    ce_a = -log_p.gather(1, labels_a.view(-1, 1)).squeeze(1)
    ce_b = -log_p.gather(1, labels_b.view(-1, 1)).squeeze(1)
    lam = lam.to(log_p.dtype)
    return (lam * ce_a + (1 - lam) * ce_b).mean()


class MixedCrossEntropy(_FunctionModule):
    """Module form of :func:`mixed_cross_entropy`.

    Args:
        student_logits, labels_a, labels_b, lam: ``forward``'s inputs, as the function's.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> MixedCrossEntropy()(z, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.5, 1.0]))
        tensor(0.6269)
    """

    def forward(self, student_logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor) -> Tensor:
        return mixed_cross_entropy(student_logits, labels_a, labels_b, lam)


def soft_cross_entropy(student_logits: Tensor, target_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy against a soft target: ``mean_b( -sum_k target(k) log softmax(z_s / T)(k) )``.

    ``target_probs`` rows should be probability vectors (they are not renormalised, so weak
    labels with a deliberate mass deficit keep their meaning).  No gradient flows into them.

    Args:
        student_logits: B x K.
        target_probs: B x K target probabilities.
        temperature: T of the student's softmax.

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> soft_cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.75, 0.25]]))
        tensor(0.6269)
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

    Args:
        labels: B class indices.
        num_classes: K (at least 2).
        epsilon: the smoothing, in [0, 1).
        convention: ``"uniform"`` or ``"others"``, as above.
        dtype: the targets' dtype (at least float32).
        check: check that ``labels`` lie in [0, K) (reads them back from the device; the training step
            passes False).

    Returns:
        B x K targets.

    Example:
        >>> label_smoothing_targets(torch.tensor([1]), 4, 0.2)
        tensor([[0.0500, 0.8500, 0.0500, 0.0500]])
        >>> label_smoothing_targets(torch.tensor([1]), 4, 0.3, "others")
        tensor([[0.1000, 0.7000, 0.1000, 0.1000]])
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


TfkdMode = Literal["paper", "reference"]
TFKD_MODES: tuple[str, ...] = get_args(TfkdMode)
# The virtual teacher's probability of the truth when none is given: the paper's 0.9, and the
# 0.99 that the authors' code hard-codes for the reference mode.
TFKD_DEFAULT_CORRECT_PROB = {"paper": 0.9, "reference": 0.99}


def virtual_teacher_probs(labels: Tensor, num_classes: int, correct_prob: float = 0.9, *,
                          dtype: torch.dtype = torch.float32, check: bool = True) -> Tensor:
    """Tf-KD's designed "virtual teacher" (Yuan et al., CVPR 2020), B x K in ``dtype`` (at least float32).

    ``p_d(k) = a`` if k = y else ``(1 - a) / (K - 1)``: a 100 %-accurate teacher whose confidence
    ``a = correct_prob`` is chosen by hand (the same vector as the "others" label smoothing with
    eps = 1 - a).

    Args:
        labels: B class indices.
        num_classes: K.
        correct_prob: a, in (0, 1).
        dtype, check: as :func:`label_smoothing_targets`.

    Returns:
        B x K probabilities.

    Example:
        >>> virtual_teacher_probs(torch.tensor([0]), 3, correct_prob=0.8)
        tensor([[0.8000, 0.1000, 0.1000]])
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

    Args:
        student_logits: B x K.
        labels: B class indices.
        temperature: T.
        alpha: the weight of the virtual teacher's term.
        correct_prob: a, or None for the mode's default.
        mode: ``"paper"`` or ``"reference"``, as above.
        multiplier: the reference mode's per-model factor.
        check: as :func:`label_smoothing_targets`.

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> tfkd_reg_loss(s, torch.tensor([0, 2]), temperature=20.0, alpha=0.1)
        tensor(0.2799)
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


class TfKDRegLoss(_FunctionModule):
    """Module form of :func:`tfkd_reg_loss`.

    Args:
        temperature, alpha, correct_prob, mode, multiplier: the constructor's, as the function's.
        student_logits, labels: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> TfKDRegLoss(temperature=20.0, alpha=0.1)(s, torch.tensor([0, 2]))
        tensor(0.2799)
    """

    def __init__(self, temperature: float = 20.0, alpha: float = 0.1, correct_prob: float | None = None,
                 mode: str = "paper", *, multiplier: float = 1.0) -> None:
        _check_temperature(temperature)
        _check_choice("mode", mode, TFKD_MODES)
        super().__init__(temperature=temperature, alpha=alpha, correct_prob=correct_prob, mode=mode,
                         multiplier=multiplier)

    def forward(self, student_logits: Tensor, labels: Tensor) -> Tensor:
        return tfkd_reg_loss(student_logits, labels, **self.hyper_parameters)


def wsl_weights(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample weights of weighted soft labels (Zhou et al., ICLR 2021), B values in [0, 1], no grad.

    ``w_i = 1 - exp(-CE_s,i / (CE_t,i + eps))`` with CE the cross-entropy of student / teacher on
    ``labels`` at T = 1.  w ~ 0.632 when both are equally good, -> 0 when the student is far better
    than the teacher on that sample (a "regularization sample": its soft label mostly adds bias),
    -> 1 when the teacher is far better.  ``eps`` keeps a teacher whose CE underflows to 0 finite.

    Args:
        student_logits, teacher_logits: B x K.
        labels: B class indices.
        eps: added to the teacher's CE.

    Returns:
        B weights.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> y = torch.tensor([0, 2])
        >>> wsl_weights(s, t, y)
        tensor([0.9628, 0.9911])
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    with torch.no_grad():
        ce_s = F.cross_entropy(at_least_float32(student_logits.detach()), labels, reduction="none")
        ce_t = F.cross_entropy(at_least_float32(teacher_logits.detach()), labels, reduction="none")
        return 1.0 - torch.exp(-ce_s / (ce_t + eps))


def weighted_soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, weights: Tensor,
                                temperature: float = 1.0) -> Tensor:
    """``mean_i( w_i * -sum_k p_t^T(k) log p_s^T(k) )``: soft cross-entropy with per-sample weights (no T^2).

    Args:
        student_logits, teacher_logits: B x K (no gradient flows into the teacher's).
        weights: B per-sample weights (no gradient flows into them).
        temperature: T of both softmaxes.

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> weighted_soft_cross_entropy(s, t, torch.tensor([1.0, 0.0]))
        tensor(0.2841)
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    _check_temperature(temperature)
    if weights.shape != student_logits.shape[:1]:
        raise ValueError(f"weights must have shape ({student_logits.shape[0]},), got {tuple(weights.shape)}")
    log_p_s = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    p_t = F.softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=1)
    return (weights.detach() * -(p_t * log_p_s).sum(dim=1)).mean()


class WeightedSoftCrossEntropy(_FunctionModule):
    """Module form of :func:`weighted_soft_cross_entropy`.

    Args:
        temperature: T (the constructor's).
        student_logits, teacher_logits, weights: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> WeightedSoftCrossEntropy()(s, t, torch.tensor([1.0, 0.0]))
        tensor(0.2841)
    """

    def __init__(self, temperature: float = 1.0) -> None:
        _check_temperature(temperature)
        super().__init__(temperature=temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, weights: Tensor) -> Tensor:
        return weighted_soft_cross_entropy(student_logits, teacher_logits, weights, **self.hyper_parameters)


def wsl_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 4.0,
             alpha: float = 2.25) -> Tensor:
    """Weighted soft labels: ``CE(z_s, y) + alpha T^2 mean_i(w_i * H(p_t^T, p_s^T)_i)``, w from :func:`wsl_weights`.

    The soft term is the per-sample soft cross-entropy (same student gradient as the KL); there is
    no separate weight on the CE term (the authors' code).

    Args:
        student_logits, teacher_logits: B x K.
        labels: B class indices.
        temperature: T of the soft term.
        alpha: its weight.

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> y = torch.tensor([0, 2])
        >>> wsl_loss(s, t, y)
        tensor(36.3299)
    """
    weights = wsl_weights(student_logits, teacher_logits, labels)
    soft = weighted_soft_cross_entropy(student_logits, teacher_logits, weights, temperature)
    return cross_entropy(student_logits, labels) + alpha * temperature**2 * soft


class WSLLoss(_FunctionModule):
    """Module form of :func:`wsl_loss`.

    Args:
        temperature, alpha: the constructor's, as the function's.
        student_logits, teacher_logits, labels: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> y = torch.tensor([0, 2])
        >>> WSLLoss(temperature=4.0, alpha=2.25)(s, t, y)
        tensor(36.3299)
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 2.25) -> None:
        _check_temperature(temperature)
        _check_non_negative(alpha=alpha)
        super().__init__(temperature=temperature, alpha=alpha)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return wsl_loss(student_logits, teacher_logits, labels, **self.hyper_parameters)


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss`.

    Args:
        temperature: T (the constructor's).
        student_logits, teacher_logits: ``forward``'s inputs, B x K.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> KDLoss(temperature=4.0)(s, t)
        tensor(0.2802)
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return kd_loss(student_logits, teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class SoftCrossEntropy(nn.Module):
    """Module form of :func:`soft_cross_entropy`.

    Args:
        temperature: T (the constructor's).
        student_logits, target_probs: ``forward``'s inputs, B x K.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> SoftCrossEntropy()(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.75, 0.25]]))
        tensor(0.6269)
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student_logits: Tensor, target_probs: Tensor) -> Tensor:
        return soft_cross_entropy(student_logits, target_probs, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


# ----------------------------------------------------------------------------- logit methods after KD
# DKD, DIST, NKD/USKD, logit standardization, TTM/WTTM, CTKD and MLKD, each as its authors' official code
# computes it (the deviations from their papers are keywords; docs/methods.md gives the evidence).

#: DKD's non-target softmax: the authors lower the target logit z_y / T by this much instead of dropping it.
DKD_TARGET_OFFSET = 1000.0
#: Which view MLKD's strong-view KD term reads at its 4th and later temperatures (see :func:`mlkd_loss`).
MLKD_STRONG_VIEWS = ("reference", "strong")
#: How MLKD's teacher-confidence masks act (see :func:`mlkd_loss`).
MLKD_CONFIDENCE_MASKS = ("scale", "select")
# The additive constant of USKD's rank denominators, 1 - p(y) + eps (authors' code).
_USKD_RANK_EPS = 1e-6
# The additive constant of DIST's cosine denominator, |a| |b| + eps (authors' code).
_DIST_EPS = 1e-8


def _check_labels(student_logits: Tensor, labels: Tensor) -> None:
    if labels.dim() != 1 or labels.shape[0] != student_logits.shape[0]:
        raise ValueError(f"labels must be a 1-D tensor of {student_logits.shape[0]} class indices (one per row of "
                         f"student_logits), got shape {tuple(labels.shape)}; for soft or mixed labels pass "
                         "labels.argmax(1), as the authors' code does")


def _check_non_negative(**weights: float) -> None:
    for name, value in weights.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_non_target_inputs(student_logits: Tensor, other: Tensor, what: str, labels: Tensor) -> None:
    """The pair and the labels of a loss on the non-target classes (which needs K >= 2)."""
    _check_pair(student_logits, other, what)
    _check_labels(student_logits, labels)
    if student_logits.shape[1] < 2:
        raise ValueError(f"a loss on the non-target classes needs K >= 2 classes, got {student_logits.shape[1]}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _log_softmax_at(logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """``log softmax(z / T)`` over the classes, in at least float32."""
    return F.log_softmax(at_least_float32(logits) / temperature, dim=1)


def _kl_rows(log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
    """Per row ``KL(p_t || p_s) = sum_k p_t(k) (log p_t(k) - log p_s(k))``, from log-probabilities."""
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def _target_column(values: Tensor, labels: Tensor) -> Tensor:
    """``values[b, y_b]`` for each row b."""
    return values.gather(1, labels.long().unsqueeze(1)).squeeze(1)


def _drop_target_column(values: Tensor, labels: Tensor) -> Tensor:
    """The B x (K-1) non-target columns of ``values``, in class order (no host read, unlike a boolean mask)."""
    columns = torch.arange(values.shape[1] - 1, device=values.device)
    columns = columns + (columns >= labels.long().unsqueeze(1)).long()
    return values.gather(1, columns)


def _is_target(values: Tensor, labels: Tensor) -> Tensor:
    """B x K boolean mask of the target class (no ``F.one_hot``, which reads the labels back to check them)."""
    return torch.arange(values.shape[1], device=values.device) == labels.long().unsqueeze(1)


def _standardized(student_logits: Tensor, teacher_logits: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    """The pair, both passed through :func:`logit_standardize` when ``standardize``."""
    if standardize:
        return logit_standardize(student_logits), logit_standardize(teacher_logits)
    return student_logits, teacher_logits


def _soft_kl_rows(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per sample ``T^2 KL(p_t^T || p_s^T)`` in at least float32."""
    return temperature**2 * _kl_rows(_log_softmax_at(teacher_logits, temperature),
                                     _log_softmax_at(student_logits, temperature))


def _kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``T^2 mean_b KL(p_t^T || p_s^T)`` in float64, as :func:`kd_loss`, for a temperature that may be a tensor."""
    log_p_s = F.log_softmax(student_logits.double() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.double() / temperature, dim=1)
    return (temperature**2 * _kl_rows(log_p_t, log_p_s).mean()).to(at_least_float32(student_logits).dtype)


# ------------------------------------------------------------- DKD

def _binary_log_probs(log_p: Tensor, labels: Tensor) -> Tensor:
    """B x 2 ``[log p(y), log(1 - p(y))]``, the second as the log-sum-exp of the non-target log-probabilities."""
    non_target = torch.logsumexp(_drop_target_column(log_p, labels), dim=1)
    return torch.stack([_target_column(log_p, labels), non_target], dim=1)


def _non_target_log_probs(scaled_logits: Tensor, labels: Tensor, target_offset: float) -> Tensor:
    """DKD's non-target distribution: ``log_softmax`` of z / T with the target logit lowered by ``target_offset``
    (B x K), or over the K - 1 non-target classes only when the offset is infinite (B x (K-1))."""
    if math.isinf(target_offset):
        return F.log_softmax(_drop_target_column(scaled_logits, labels), dim=1)
    lowered = torch.where(_is_target(scaled_logits, labels), scaled_logits - target_offset, scaled_logits)
    return F.log_softmax(lowered, dim=1)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 8.0,
             temperature: float = 4.0, *, standardize: bool = False,
             target_offset: float = DKD_TARGET_OFFSET) -> Tensor:
    """Decoupled KD (Zhao, Cui, Song, Qiu, Liang; CVPR 2022, arXiv:2203.08679): ``alpha TCKD + beta NCKD``.

    ``TCKD = T^2 mean_b KL(b_t || b_s)`` with ``b = [p^T(y), 1 - p^T(y)]`` (target vs. the rest) and
    ``NCKD = T^2 mean_b KL(q_t || q_s)`` with ``q = softmax`` of z / T over the non-target classes, as the
    authors' code (megvii-research/mdistiller) computes them, but through ``log_softmax``: their
    ``log`` of a summed softmax is ``log(0) = -inf`` once that sum underflows (float16, or saturated
    logits in float32), which makes the loss infinite and its gradient non-finite. No gradient flows
    into ``teacher_logits``.

    Args:
        student_logits, teacher_logits: B x K logits.
        labels: B class indices.
        alpha, beta: weights of TCKD and NCKD (>= 0); the authors' CIFAR-100 default is 1 and 8.
        temperature: T > 0, also applied as T^2 to both terms.
        standardize: pass both logit vectors through :func:`logit_standardize` first, as the logit
            standardization authors do for DKD (with T = 2 and alpha, beta times 9 in their recipes).
        target_offset: the authors' code lowers the target logit z_y / T by 1000 instead of leaving it out
            of the non-target softmax; ``math.inf`` leaves it out exactly. The two agree to float64
            rounding unless the target's logit leads every other by about 960 T or more (saturated
            logits, e.g. +-1e4 at T = 4), where the code's "non-target" distribution is mostly the
            target class itself.

    Returns:
        The scalar loss, in the logits' precision (at least float32).

    Example:
        >>> s, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.5, 0.0]])
        >>> round(dkd_loss(s, t, torch.tensor([0])).item(), 4)
        0.45
    """
    terms = dkd_terms(student_logits, teacher_logits, labels, alpha, beta, temperature, standardize=standardize,
                      target_offset=target_offset)
    return terms["tckd"] + terms["nckd"]


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 8.0,
              temperature: float = 4.0, *, standardize: bool = False,
              target_offset: float = DKD_TARGET_OFFSET) -> dict[str, Tensor]:
    """The two weighted terms of :func:`dkd_loss` (same arguments), whose sum is the loss:
    ``{"tckd": alpha T^2 mean_b TCKD_b, "nckd": beta T^2 mean_b NCKD_b}``.

    Args:
        student_logits, teacher_logits, labels, alpha, beta, temperature, standardize, target_offset: as
            :func:`dkd_loss`'s.

    Returns:
        ``{"tckd": scalar, "nckd": scalar}``, differentiable in ``student_logits``.

    Example:
        >>> s, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.5, 0.0]])
        >>> {name: round(term.item(), 4) for name, term in dkd_terms(s, t, torch.tensor([0])).items()}
        {'tckd': 0.2017, 'nckd': 0.2482}
    """
    _check_non_target_inputs(student_logits, teacher_logits, "teacher_logits", labels)
    _check_temperature(temperature)
    _check_non_negative(alpha=alpha, beta=beta)
    if not target_offset > 0:
        raise ValueError(f"target_offset must be > 0 (math.inf drops the target class), got {target_offset}")
    student, teacher = _standardized(student_logits, teacher_logits.detach(), standardize)
    scaled_s, scaled_t = at_least_float32(student) / temperature, at_least_float32(teacher) / temperature
    log_p_s, log_p_t = F.log_softmax(scaled_s, dim=1), F.log_softmax(scaled_t, dim=1)
    tckd = _kl_rows(_binary_log_probs(log_p_t, labels), _binary_log_probs(log_p_s, labels))
    nckd = _kl_rows(_non_target_log_probs(scaled_t, labels, target_offset),
                    _non_target_log_probs(scaled_s, labels, target_offset))
    return {"tckd": temperature**2 * alpha * tckd.mean(), "nckd": temperature**2 * beta * nckd.mean()}


def dkd_warmup_factor(epoch: float, warmup_epochs: float = 20) -> float:
    """DKD's linear warm-up of the distillation term: ``min(epoch / warmup_epochs, 1)``.

    The authors' trainer counts epochs from 1, so their first epoch weighs the term by 1/20.

    Args:
        epoch: the current epoch (>= 0), counted as the caller's schedule counts it.
        warmup_epochs: epochs until the full weight (> 0); the authors' default is 20.

    Returns:
        The factor in [0, 1] that multiplies :func:`dkd_loss`.

    Example:
        >>> dkd_warmup_factor(5), dkd_warmup_factor(40)
        (0.25, 1.0)
    """
    if not warmup_epochs > 0:
        raise ValueError(f"warmup_epochs must be > 0, got {warmup_epochs}")
    if not epoch >= 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return min(epoch / warmup_epochs, 1.0)


# ------------------------------------------------------------- DIST

def _pearson(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim``: ``<a - mean a, b - mean b> / (|.| |.| + 1e-8)``."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + _DIST_EPS)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0, tau_squared: bool = True) -> Tensor:
    """DIST (Huang, You, Wang, Qian, Xu; NeurIPS 2022, arXiv:2205.10536): correlations, not exact matching.

    With ``Y = softmax(z / T)`` (B x K): ``inter = 1 - mean_b rho(Y_s[b, :], Y_t[b, :])`` (each sample's
    class distribution) and ``intra = 1 - mean_k rho(Y_s[:, k], Y_t[:, k])`` (each class over the batch),
    rho the Pearson correlation; the loss is ``T^2 (beta inter + gamma intra)``. The intra-class term
    couples the samples of the batch: it is not a mean of per-sample terms.

    Args:
        student_logits, teacher_logits: B x K logits; no gradient flows into the teacher's.
        beta, gamma: weights of the inter- and intra-class terms (>= 0).
        temperature: T > 0 (the authors use 1 on ImageNet, 4 on CIFAR-100).
        tau_squared: multiply by T^2, as the authors' code does since it took a temperature
            (hunto/image_classification_sota d9662f7); the paper's loss has no T^2 (``False``).

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> round(dist_loss(s, s.flip(1)).item(), 4)
        3.0838
    """
    terms = dist_terms(student_logits, teacher_logits, beta, gamma, temperature, tau_squared)
    return terms["inter"] + terms["intra"]


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
               temperature: float = 1.0, tau_squared: bool = True) -> dict[str, Tensor]:
    """The two weighted terms of :func:`dist_loss` (same arguments), whose sum is the loss:
    ``{"inter": T^2 beta (1 - mean_b rho_b), "intra": T^2 gamma (1 - mean_k rho_k)}`` (T^2 with ``tau_squared``);
    ``intra`` couples the samples of the batch.

    Args:
        student_logits, teacher_logits, beta, gamma, temperature, tau_squared: as :func:`dist_loss`'s.

    Returns:
        ``{"inter": scalar, "intra": scalar}``, differentiable in ``student_logits``.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> {name: round(term.item(), 4) for name, term in dist_terms(s, s.flip(1)).items()}
        {'inter': 1.7505, 'intra': 1.3333}
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    _check_temperature(temperature)
    _check_non_negative(beta=beta, gamma=gamma)
    y_s = _log_softmax_at(student_logits, temperature).exp()
    y_t = _log_softmax_at(teacher_logits.detach(), temperature).exp()
    inter = 1 - _pearson(y_s, y_t, dim=1).mean()
    intra = 1 - _pearson(y_s, y_t, dim=0).mean()
    scale = temperature**2 if tau_squared else 1.0
    return {"inter": scale * beta * inter, "intra": scale * gamma * intra}


# ------------------------------------------------------------- NKD and USKD

def nkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0,
             gamma: float = 1.5) -> Tensor:
    """Normalized KD (Yang, Zeng, Li, Zhang, Yuan, Li; ICCV 2023, arXiv:2303.13005).

    ``-mean_b p_t(y) log p_s(y) - gamma T^2 mean_b sum_{k != y} q_t^T(k) log q_s^T(k)``: the target
    class weighted by the teacher's probability of it (at T = 1), plus a soft cross-entropy between the
    non-target distributions ``q^T = softmax`` of z / T over the K - 1 non-target classes.

    Args:
        student_logits, teacher_logits: B x K logits; no gradient flows into the teacher's.
        labels: B class indices.
        temperature: T > 0 of the non-target term (the authors' default 1).
        gamma: weight of the non-target term (>= 0; the authors' default 1.5).

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.5, 0.0]])
        >>> round(nkd_loss(s, t, torch.tensor([0])).item(), 4)
        1.3963
    """
    terms = nkd_terms(student_logits, teacher_logits, labels, temperature, gamma)
    return terms["target"] + terms["non_target"]


def nkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0,
              gamma: float = 1.5) -> dict[str, Tensor]:
    """The two weighted terms of :func:`nkd_loss` (same arguments), whose sum is the loss:
    ``{"target": -mean_b p_t(y) log p_s(y), "non_target": -gamma T^2 mean_b sum_{k != y} q_t^T(k) log q_s^T(k)}``.

    Args:
        student_logits, teacher_logits, labels, temperature, gamma: as :func:`nkd_loss`'s.

    Returns:
        ``{"target": scalar, "non_target": scalar}``, differentiable in ``student_logits``.

    Example:
        >>> s, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.5, 0.0]])
        >>> {name: round(term.item(), 4) for name, term in nkd_terms(s, t, torch.tensor([0])).items()}
        {'target': 0.3601, 'non_target': 1.0362}
    """
    _check_non_target_inputs(student_logits, teacher_logits, "teacher_logits", labels)
    _check_temperature(temperature)
    _check_non_negative(gamma=gamma)
    teacher_logits = teacher_logits.detach()
    p_t_target = _target_column(_log_softmax_at(teacher_logits), labels).exp()
    target_term = -(p_t_target * _target_column(_log_softmax_at(student_logits), labels)).mean()
    log_q_s = _log_softmax_at(_drop_target_column(student_logits, labels), temperature)
    log_q_t = _log_softmax_at(_drop_target_column(teacher_logits, labels), temperature)
    non_target_term = -(log_q_t.exp() * log_q_s).sum(dim=1).mean()
    return {"target": target_term, "non_target": gamma * temperature**2 * non_target_term}


def _uskd_zipf_labels(log_p: Tensor, log_w: Tensor, labels: Tensor, rank_with_log_probs: bool) -> Tensor:
    """USKD's soft non-target labels, B x (K-1), no grad: Zipf's law 1 / rank over the classes ranked by the
    weak head's and the student's non-target scores, the target left out and the rest renormalised."""
    with torch.no_grad():
        weak_prob = log_w.exp()
        weak_score = weak_prob / (1 - _target_column(weak_prob, labels) + _USKD_RANK_EPS).unsqueeze(1)
        student_values = log_p if rank_with_log_probs else log_p.exp()
        student_score = student_values / (1 - _target_column(student_values, labels) + _USKD_RANK_EPS).unsqueeze(1)
        position = (weak_score + student_score).argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        zipf = _drop_target_column(1.0 / (position + 1).to(log_p.dtype), labels)
        return zipf / zipf.sum(dim=1, keepdim=True)


def uskd_loss(student_logits: Tensor, weak_logits: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 0.1,
              mu: float = 0.005, *, rank_with_log_probs: bool = True) -> Tensor:
    """Teacher-free USKD (Yang et al., ICCV 2023, arXiv:2303.13005): the student is its own teacher.

    ``alpha L_target + beta L_non-target + L_weak``, with (all at T = 1, p = softmax(z_s), w = softmax(z_w)):

    - ``L_target = -mean_b c_b log p(y)``, ``c_b = p_b(y)^2 + 1 - mean_b p_b(y)^2`` (no grad);
    - ``L_non-target = -mean_b sum_{k != y} z_b(k) log q_s(k)``, q_s the non-target softmax, z the
      Zipf labels 1/rank (no grad) of all K classes ranked by ``w(k) / (1 - w(y) + 1e-6)`` plus the
      student's score (see ``rank_with_log_probs``), the target's then left out and the rest renormalised;
    - ``L_weak = -mu mean_b sum_k (0.9 onehot(y) + 0.1 / K)(k) log w(k)``: the weak head's smoothed CE.

    Args:
        student_logits: B x K final logits.
        weak_logits: B x K logits of the weak head (in the authors' code a linear layer on a
            mid-level feature, owned by the caller); they get gradient from ``L_weak`` only.
        labels: B class indices.
        alpha, beta, mu: weights of the three terms (>= 0; the authors' defaults 1, 0.1, 0.005).
        rank_with_log_probs: the student's rank score as the authors' code computes it,
            ``log p(k) / (1 - log p(y) + 1e-6)`` (their ``s_i`` is overwritten by ``log_softmax`` before
            the rank is built); ``False`` uses ``p(k) / (1 - p(y) + 1e-6)``, the normalised non-target
            probability that the weak head's score uses.

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s, w = torch.tensor([[2.0, 1.0, 0.0, -1.0]]), torch.tensor([[1.0, 0.0, 2.0, 0.0]])
        >>> round(uskd_loss(s, w, torch.tensor([0])).item(), 4)
        0.5655
    """
    terms = uskd_terms(student_logits, weak_logits, labels, alpha, beta, mu, rank_with_log_probs=rank_with_log_probs)
    return terms["target"] + terms["non_target"] + terms["weak"]


def uskd_terms(student_logits: Tensor, weak_logits: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 0.1,
               mu: float = 0.005, *, rank_with_log_probs: bool = True) -> dict[str, Tensor]:
    """The three weighted terms of :func:`uskd_loss` (same arguments), whose sum is the loss:
    ``{"target": alpha L_target, "non_target": beta L_non-target, "weak": mu L_weak}``; the target term's
    weights use the batch mean of p(y)^2, which couples the samples of the batch.

    Args:
        student_logits, weak_logits, labels, alpha, beta, mu, rank_with_log_probs: as :func:`uskd_loss`'s.

    Returns:
        ``{"target": scalar, "non_target": scalar, "weak": scalar}``, differentiable in ``student_logits`` and
        ``weak_logits``.

    Example:
        >>> s, w = torch.tensor([[2.0, 1.0, 0.0, -1.0]]), torch.tensor([[1.0, 0.0, 2.0, 0.0]])
        >>> {name: round(term.item(), 4) for name, term in uskd_terms(s, w, torch.tensor([0])).items()}
        {'target': 0.4402, 'non_target': 0.1177, 'weak': 0.0076}
    """
    _check_non_target_inputs(student_logits, weak_logits, "weak_logits", labels)
    _check_non_negative(alpha=alpha, beta=beta, mu=mu)
    log_p, log_w = _log_softmax_at(student_logits), _log_softmax_at(weak_logits)
    log_p_target = _target_column(log_p, labels)
    squared_target_prob = (2 * log_p_target).exp().detach()
    target_term = -((squared_target_prob + 1 - squared_target_prob.mean()) * log_p_target).mean()
    zipf = _uskd_zipf_labels(log_p, log_w, labels, rank_with_log_probs)
    non_target_term = -(zipf * _log_softmax_at(_drop_target_column(student_logits, labels))).sum(dim=1).mean()
    smoothed = 0.9 * _is_target(log_w, labels).to(log_w.dtype) + 0.1 / log_w.shape[1]
    weak_term = -(smoothed * log_w).sum(dim=1).mean()
    return {"target": alpha * target_term, "non_target": beta * non_target_term, "weak": mu * weak_term}


# ------------------------------------------------------------- logit standardization

def logit_standardize(logits: Tensor, eps: float = 1e-7, unbiased: bool = True) -> Tensor:
    """Z-score of each logit vector (Sun, Ren, Li, Wang, Cao; CVPR 2024, arXiv:2403.01427).

    ``(z - mean(z)) / (eps + std(z))`` over the last dimension, in at least float32. Invariant to
    ``a z + c`` for any a > 0 (up to eps), so a softmax of the result at a base temperature T is the
    paper's softmax at the sample's own temperature ``T std(z)``. A constant row gives 0 (finite gradient).

    Args:
        logits: ... x K logits, K >= 2.
        eps: added to the standard deviation (the authors' 1e-7).
        unbiased: divide the variance by K - 1, as ``torch.std`` in the authors' code; ``False``
            divides by K (the same as standardizing at a temperature sqrt(K / (K - 1)) times lower).

    Returns:
        The standardized logits, same shape.

    Example:
        >>> logit_standardize(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[-1.0000,  0.0000,  1.0000]])
    """
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(f"logit_standardize needs at least 2 logits per vector, got shape {tuple(logits.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    logits = at_least_float32(logits)
    std = logits.std(dim=-1, keepdim=True, correction=1 if unbiased else 0)
    return (logits - logits.mean(dim=-1, keepdim=True)) / (eps + std)


def kd_ls_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """KD on standardized logits (Sun et al., CVPR 2024): :func:`kd_loss` of both :func:`logit_standardize`-d.

    ``T^2 mean_b KL(softmax(Z(z_t) / T) || softmax(Z(z_s) / T))`` with T the base temperature (the
    authors' default 2, with the KD term weighted 9 and CE 0.1 in their recipes).

    Args:
        student_logits, teacher_logits: B x K logits; no gradient flows into the teacher's.
        temperature: the base temperature T > 0.

    Returns:
        The scalar loss, in the logits' precision (at least float32).

    Example:
        >>> s, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[30.0, 5.0, 0.0]])
        >>> round(kd_ls_loss(s, t).item(), 4)
        0.0356
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    return kd_loss(logit_standardize(student_logits), logit_standardize(teacher_logits.detach()), temperature)


# ------------------------------------------------------------- TTM and WTTM

def _transformed_teacher_kl(student_logits: Tensor, teacher_logits: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Per row ``KL(p_t^gamma / sum p_t^gamma || p_s)`` and ``log sum_k p_t(k)^gamma``, all in log space
    (``p_t^gamma`` normalised is ``softmax(gamma log p_t)``: no power of an underflowed probability)."""
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 (the power applied to the teacher's probabilities), got {gamma}")
    powered = gamma * _log_softmax_at(teacher_logits.detach())
    kl = _kl_rows(F.log_softmax(powered, dim=1), _log_softmax_at(student_logits))
    return kl, torch.logsumexp(powered, dim=1)


def ttm_loss(student_logits: Tensor, teacher_logits: Tensor, *, gamma: float) -> Tensor:
    """Transformed teacher matching (Zheng, Yang; ICLR 2024, arXiv:2402.11148).

    ``mean_b KL(p_t^gamma / sum_k p_t(k)^gamma || p_s)``: the teacher's probabilities at T = 1 raised to
    gamma (a temperature 1/gamma on the teacher only) and the student at T = 1, no T^2 factor.

    Args:
        student_logits, teacher_logits: B x K logits; no gradient flows into the teacher's.
        gamma: the power, > 0 (the authors' ``ttm_l``, chosen per teacher-student pair, e.g. 0.1-0.5).

    Returns:
        The scalar loss (at least float32).

    Example:
        >>> s, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.5, 0.0]])
        >>> round(ttm_loss(s, t, gamma=0.5).item(), 4)
        0.0222
    """
    kl, _ = _transformed_teacher_kl(student_logits, teacher_logits, gamma)
    return kl.mean()


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, *, gamma: float) -> Tensor:
    """Weighted TTM (Zheng, Yang; ICLR 2024): :func:`ttm_loss` with each sample weighted by ``sum_k p_t(k)^gamma``.

    ``mean_b U_b KL(p_t^gamma / U_b || p_s)``, ``U_b = sum_k p_t,b(k)^gamma`` (no grad): for gamma < 1 a
    flatter teacher gets a larger weight.

    Args:
        student_logits, teacher_logits: B x K logits (no gradient into the teacher's); gamma > 0 as in
            :func:`ttm_loss`.

    Returns:
        The scalar loss (at least float32).

    Example (the flat teacher row weighs sqrt(3) = 1.73, the confident one 1.0001):
        >>> t = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
        >>> round(wttm_loss(torch.zeros(2, 3), t, gamma=0.5).item(), 4)
        0.5489
    """
    kl, log_power_sum = _transformed_teacher_kl(student_logits, teacher_logits, gamma)
    return (log_power_sum.exp() * kl).mean()


# ------------------------------------------------------------- CTKD

class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lambda_: float) -> Tensor:  # type: ignore[override]
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.lambda_ * grad, None


def gradient_reversal(x: Tensor, lambda_: float) -> Tensor:
    """The identity forward; multiplies the gradient by ``-lambda_`` backward (Ganin & Lempitsky, 2015).

    CTKD puts it in front of its learnable temperature, which then ascends the distillation loss while
    the student descends it. The sign is the paper's: ``lambda_ >= 0`` reverses. (The CTKD authors'
    layer multiplies by ``+lambda`` and is fed lambda in [-1, 0]: the same gradients.)

    Args:
        x: any tensor.
        lambda_: the reversal strength, >= 0 (see :func:`ctkd_grl_lambda`).

    Returns:
        ``x`` (a copy), whose gradient is reversed and scaled.

    Example:
        >>> x = torch.tensor(2.0, requires_grad=True)
        >>> (3 * gradient_reversal(x, 0.5)).backward()
        >>> x.grad
        tensor(-1.5000)
    """
    if not lambda_ >= 0:
        raise ValueError(f"lambda_ must be >= 0: gradient_reversal multiplies the gradient by -lambda_ (the paper's "
                         f"sign; the CTKD authors' code feeds lambda in [-1, 0] to a layer that multiplies by "
                         f"+lambda), got {lambda_}")
    return _GradientReversal.apply(x, lambda_)


def _check_ctkd_range(t_start: float, t_end: float) -> None:
    if not t_start > 0:
        raise ValueError(f"t_start must be > 0 (the lowest temperature), got {t_start}")
    if not t_end > 0:
        raise ValueError(f"t_end must be > 0 (the width of the range: T lies in (t_start, t_start + t_end)), "
                         f"got {t_end}")


def ctkd_temperature(theta: Tensor, t_start: float = 1.0, t_end: float = 20.0) -> Tensor:
    """CTKD's temperature from its learnable parameter: ``t_start + t_end * sigmoid(theta)``.

    As in the authors' code, ``t_end`` is the width of the range, not its upper end: T lies in
    ``(t_start, t_start + t_end)``, (1, 21) by default (zhengli97/CTKD issue #16). Their global
    temperature starts at theta = 1 (T = 15.6).

    Args:
        theta: the learnable parameter (any shape; one element for the global temperature).
        t_start: the lower end (> 0).
        t_end: the width of the range (> 0).

    Returns:
        The temperature, same shape as ``theta``, differentiable in it.

    Example:
        >>> ctkd_temperature(torch.tensor([0.0]))
        tensor([11.])
    """
    _check_ctkd_range(t_start, t_end)
    return t_start + t_end * torch.sigmoid(theta)


def ctkd_grl_lambda(epoch: float, lambda_max: float = 1.0, lambda_min: float = 0.0, num_loops: float = 10) -> float:
    """CTKD's curriculum for the reversal strength (paper sign): a cosine rise from lambda_min to lambda_max.

    ``lambda_min + (lambda_max - lambda_min) (1 - cos(pi min(epoch, num_loops) / num_loops)) / 2``. The
    authors' code computes the negative of this (``--decay_max 0 --decay_min -1``) and feeds it to a
    layer that multiplies the gradient by +lambda, which :func:`gradient_reversal` does with -lambda. It
    counts epochs from 1: their first epoch gets 0.024, their tenth and later 1.

    Args:
        epoch: the current epoch (< 0 counts as 0).
        lambda_max, lambda_min: the ends of the rise (0 <= lambda_min <= lambda_max).
        num_loops: epochs of the rise (> 0).

    Returns:
        lambda_ for :func:`gradient_reversal`.

    Example:
        >>> [round(ctkd_grl_lambda(epoch), 4) for epoch in (0, 1, 5, 10, 30)]
        [0.0, 0.0245, 0.5, 1.0, 1.0]
    """
    if not 0 <= lambda_min <= lambda_max:
        raise ValueError(f"need 0 <= lambda_min <= lambda_max (the paper's sign: the reversal grows), "
                         f"got lambda_min={lambda_min}, lambda_max={lambda_max}")
    if not num_loops > 0:
        raise ValueError(f"num_loops must be > 0, got {num_loops}")
    progress = min(max(epoch, 0), num_loops) / num_loops
    return lambda_min + (lambda_max - lambda_min) * (1 - math.cos(math.pi * progress)) / 2


def ctkd_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor, *,
                 standardize: bool = False) -> Tensor:
    """CTKD's distillation term (Li et al.; AAAI 2023, arXiv:2211.16231): :func:`kd_loss` at a learnable T.

    ``T^2 mean_b KL(p_t^T || p_s^T)`` where T may be a one-element tensor that requires grad (from
    :func:`ctkd_temperature` of a :func:`gradient_reversal`-ed parameter): it receives the gradient of
    both the softmaxes and the T^2 factor. Computed in float64 like :func:`kd_loss` (equal to it for a
    float T). A tensor T is not range-checked (that would read it back from the device): keep it
    positive, as :func:`ctkd_temperature` does.

    Args:
        student_logits, teacher_logits: B x K logits; no gradient flows into the teacher's.
        temperature: a float > 0, or a one-element tensor.
        standardize: apply :func:`logit_standardize` to both first, as the logit standardization
            authors do for CTKD (their flag ``--logit_stand`` is inverted in their code, see docs).

    Returns:
        The scalar loss, in the logits' precision (at least float32).

    Example:
        >>> theta = torch.zeros(1, requires_grad=True)
        >>> s, t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.5, 0.0]])
        >>> loss = ctkd_kd_loss(s, t, ctkd_temperature(gradient_reversal(theta, 1.0)))
        >>> round(loss.item(), 4)
        0.2059
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a float or a one-element tensor, got shape "
                             f"{tuple(temperature.shape)}")
        temperature = temperature.reshape(())
    else:
        _check_temperature(temperature)
    student, teacher = _standardized(student_logits, teacher_logits.detach(), standardize)
    return _kd_divergence(student, teacher, temperature)


# ------------------------------------------------------------- MLKD

def _relation_gap(p_s: Tensor, p_t: Tensor, over_batch: bool) -> Tensor:
    """Squared difference of teacher and student relation (Gram) matrices: B x B between samples when
    ``over_batch``, else K x K between classes; computed in the inputs' precision even under autocast."""
    with torch.autocast(p_s.device.type, enabled=False):
        if over_batch:
            return (p_t @ p_t.T - p_s @ p_s.T) ** 2
        return (p_t.T @ p_t - p_s.T @ p_s) ** 2


def _masked_term(values: Tensor, mask: Tensor, normalizer: int, confidence_masks: str) -> Tensor:
    """``values.sum() / normalizer`` under a confidence mask over the last dimension of ``values``:
    scaled by the mask's share (``scale``) or with the unmasked entries left out (``select``)."""
    if confidence_masks == "scale":
        return values.sum() / normalizer * mask.to(values.dtype).mean()
    return (values * mask).sum() / normalizer


def mlkd_loss(student_logits_weak: Tensor, teacher_logits_weak: Tensor, student_logits_strong: Tensor,
              teacher_logits_strong: Tensor, labels: Tensor, temperature: float = 4.0,
              extra_temperatures: tuple[float, ...] = (3.0, 5.0, 2.0, 6.0), ce_weight: float = 0.1,
              kd_weight: float = 0.9, *, standardize: bool = False, strong_views: str = "reference",
              confidence_masks: str = "scale") -> dict[str, Tensor]:
    """Multi-level logit distillation (Jin, Wang, Lin; CVPR 2023), as the authors' code computes it.

    Two views of each sample, weak (crop/flip) and strong (their RandAugment); temperatures
    ``Ts = (temperature, *extra_temperatures)``; ``p^T = softmax(z / T)``; teachers and masks carry no
    gradient. With KL_T = ``T^2 KL(p_t^T || p_s^T)`` per sample:

    - ``loss_ce = ce_weight (CE(z_s,weak, y) + CE(z_s,strong, y))``
    - ``loss_kd = kd_weight sum_T [m(mean_b KL_T(weak)) + mean_b KL_T(strong)]``
    - ``loss_cc = kd_weight sum_T m_class(sum (P_t^T' P_t - P_s^T' P_s)^2 / K)``  (class relations, weak view)
    - ``loss_bc = kd_weight sum_T m(sum (P_t P_t^T' - P_s P_s^T')^2 / B)``  (sample relations, weak view)

    m masks the samples whose teacher confidence max_k p_t(k) (weak view, T = 1) is at most the batch
    median, m_class the classes whose summed teacher probability is at most the median over classes.

    Args:
        student_logits_weak, teacher_logits_weak, student_logits_strong, teacher_logits_strong: B x K.
        labels: B class indices.
        temperature, extra_temperatures: the temperatures (> 0), the authors' 4 and (3, 5, 2, 6).
        ce_weight, kd_weight: weights (>= 0), the authors' CIFAR-100 0.1 and 0.9.
        standardize: :func:`logit_standardize` the logits of the KD terms (not the relation terms), as
            the logit standardization authors do for MLKD (with temperature 2 and kd_weight 9).
        strong_views: ``"reference"``: as the authors' code, the strong-view KD term reads the weak
            view at its 4th and later temperatures (2 and 6); ``"strong"``: the strong view at all.
        confidence_masks: ``"scale"``: as the authors' code, which reduces each term over the batch
            before applying the mask, so a mask only scales its term by the share it keeps (about 1/2);
            ``"select"``: the masked samples (classes) are left out of the sum, the per-sample form
            their code has commented out.

    The strong-view class and batch relation terms that the authors' code also computes never reach
    its loss; they are left out here too. The batch terms couple the samples of a batch.

    Returns:
        ``{"loss_ce", "loss_kd", "loss_cc", "loss_bc"}``, scalars (at least float32); their sum is the loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> terms = mlkd_loss(s, t, s + 0.5 * s.flip(1), t, torch.tensor([0, 2]))
        >>> {name: round(value.item(), 4) for name, value in terms.items()}
        {'loss_ce': 0.0813, 'loss_kd': 2.7747, 'loss_cc': 0.04, 'loss_bc': 0.0151}
    """
    temperatures = (temperature, *extra_temperatures)
    for view, logits in (("teacher_logits_weak", teacher_logits_weak),
                         ("student_logits_strong", student_logits_strong),
                         ("teacher_logits_strong", teacher_logits_strong)):
        _check_pair(student_logits_weak, logits, view)
    _check_labels(student_logits_weak, labels)
    for each in temperatures:
        _check_temperature(each)
    _check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
    _check_choice("strong_views", strong_views, MLKD_STRONG_VIEWS)
    _check_choice("confidence_masks", confidence_masks, MLKD_CONFIDENCE_MASKS)
    teacher_weak, teacher_strong = teacher_logits_weak.detach(), teacher_logits_strong.detach()
    batch, classes = student_logits_weak.shape

    p_teacher = _log_softmax_at(teacher_weak).exp()
    confidence, class_confidence = p_teacher.amax(dim=1), p_teacher.sum(dim=0)
    sample_mask = confidence <= confidence.quantile(0.5)
    class_mask = class_confidence <= class_confidence.quantile(0.5)

    kd_weak = _standardized(student_logits_weak, teacher_weak, standardize)
    kd_strong = _standardized(student_logits_strong, teacher_strong, standardize)
    loss_kd = loss_cc = loss_bc = 0.0
    for index, tau in enumerate(temperatures):
        kd_view = kd_weak if strong_views == "reference" and index >= 3 else kd_strong
        loss_kd = (loss_kd + _masked_term(_soft_kl_rows(*kd_weak, tau), sample_mask, batch, confidence_masks)
                   + _soft_kl_rows(*kd_view, tau).mean())
        p_s = _log_softmax_at(student_logits_weak, tau).exp()
        p_t = _log_softmax_at(teacher_weak, tau).exp()
        loss_cc = loss_cc + _masked_term(_relation_gap(p_s, p_t, over_batch=False), class_mask, classes,
                                         confidence_masks)
        loss_bc = loss_bc + _masked_term(_relation_gap(p_s, p_t, over_batch=True), sample_mask, batch,
                                         confidence_masks)
    labels = labels.long()
    loss_ce = cross_entropy(student_logits_weak, labels) + cross_entropy(student_logits_strong, labels)
    return {"loss_ce": ce_weight * loss_ce, "loss_kd": kd_weight * loss_kd, "loss_cc": kd_weight * loss_cc,
            "loss_bc": kd_weight * loss_bc}


# ------------------------------------------------------------- module forms

class DKDLoss(_FunctionModule):
    """Module form of :func:`dkd_loss`.

    Args:
        alpha, beta, temperature, standardize, target_offset: the constructor's, as the function's.
        student_logits, teacher_logits, labels: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> y = torch.tensor([0, 2])
        >>> torch.equal(DKDLoss(alpha=1.0, beta=8.0)(s, t, y), dkd_loss(s, t, y))
        True
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, *, standardize: bool = False,
                 target_offset: float = DKD_TARGET_OFFSET) -> None:
        _check_temperature(temperature)
        _check_non_negative(alpha=alpha, beta=beta)
        super().__init__(alpha=alpha, beta=beta, temperature=temperature, standardize=standardize,
                         target_offset=target_offset)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return dkd_loss(student_logits, teacher_logits, labels, **self.hyper_parameters)


class DISTLoss(_FunctionModule):
    """Module form of :func:`dist_loss`.

    Args:
        beta, gamma, temperature, tau_squared: the constructor's, as the function's.
        student_logits, teacher_logits: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> torch.equal(DISTLoss()(s, t), dist_loss(s, t))
        True
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0,
                 tau_squared: bool = True) -> None:
        _check_temperature(temperature)
        _check_non_negative(beta=beta, gamma=gamma)
        super().__init__(beta=beta, gamma=gamma, temperature=temperature, tau_squared=tau_squared)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return dist_loss(student_logits, teacher_logits, **self.hyper_parameters)


class NKDLoss(_FunctionModule):
    """Module form of :func:`nkd_loss`.

    Args:
        temperature, gamma: the constructor's, as the function's.
        student_logits, teacher_logits, labels: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> y = torch.tensor([0, 2])
        >>> torch.equal(NKDLoss()(s, t, y), nkd_loss(s, t, y))
        True
    """

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5) -> None:
        _check_temperature(temperature)
        _check_non_negative(gamma=gamma)
        super().__init__(temperature=temperature, gamma=gamma)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return nkd_loss(student_logits, teacher_logits, labels, **self.hyper_parameters)


class USKDLoss(_FunctionModule):
    """Module form of :func:`uskd_loss`. The weak head (a linear layer on a mid-level feature in the
    authors' code) belongs to the model.

    Args:
        alpha, beta, mu, rank_with_log_probs: the constructor's, as the function's.
        student_logits, weak_logits, labels: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> y = torch.tensor([0, 2])
        >>> torch.equal(USKDLoss()(s, t, y), uskd_loss(s, t, y))
        True
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.1, mu: float = 0.005, *,
                 rank_with_log_probs: bool = True) -> None:
        _check_non_negative(alpha=alpha, beta=beta, mu=mu)
        super().__init__(alpha=alpha, beta=beta, mu=mu, rank_with_log_probs=rank_with_log_probs)

    def forward(self, student_logits: Tensor, weak_logits: Tensor, labels: Tensor) -> Tensor:
        return uskd_loss(student_logits, weak_logits, labels, **self.hyper_parameters)


class LogitStandardize(_FunctionModule):
    """Module form of :func:`logit_standardize`.

    Args:
        eps, unbiased: the constructor's, as the function's.
        logits: ``forward``'s input.

    Returns:
        ``forward`` returns the standardised logits, same shape.

    Example:
        >>> LogitStandardize()(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[-1.0000,  0.0000,  1.0000]])
    """

    def __init__(self, eps: float = 1e-7, unbiased: bool = True) -> None:
        super().__init__(eps=eps, unbiased=unbiased)

    def forward(self, logits: Tensor) -> Tensor:
        return logit_standardize(logits, **self.hyper_parameters)


class KDLSLoss(_FunctionModule):
    """Module form of :func:`kd_ls_loss`.

    Args:
        temperature: the constructor's, as the function's.
        student_logits, teacher_logits: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> torch.equal(KDLSLoss()(s, t), kd_ls_loss(s, t))
        True
    """

    def __init__(self, temperature: float = 2.0) -> None:
        _check_temperature(temperature)
        super().__init__(temperature=temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return kd_ls_loss(student_logits, teacher_logits, **self.hyper_parameters)


class TTMLoss(_FunctionModule):
    """Module form of :func:`ttm_loss`.

    Args:
        gamma: the constructor's, as the function's.
        student_logits, teacher_logits: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> torch.equal(TTMLoss(gamma=0.5)(s, t), ttm_loss(s, t, gamma=0.5))
        True
    """

    def __init__(self, *, gamma: float) -> None:
        super().__init__(gamma=gamma)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return ttm_loss(student_logits, teacher_logits, **self.hyper_parameters)


class WTTMLoss(_FunctionModule):
    """Module form of :func:`wttm_loss`.

    Args:
        gamma: the constructor's, as the function's.
        student_logits, teacher_logits: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> torch.equal(WTTMLoss(gamma=0.5)(s, t), wttm_loss(s, t, gamma=0.5))
        True
    """

    def __init__(self, *, gamma: float) -> None:
        super().__init__(gamma=gamma)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return wttm_loss(student_logits, teacher_logits, **self.hyper_parameters)


class GradientReversal(nn.Module):
    """Module form of :func:`gradient_reversal`.

    Args:
        x, lambda_: ``forward``'s inputs, as the function's.

    Returns:
        ``forward`` returns ``x`` unchanged; its gradient is multiplied by ``-lambda_``.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> GradientReversal()(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000])
    """

    def forward(self, x: Tensor, lambda_: float) -> Tensor:
        return gradient_reversal(x, lambda_)


class CTKDLoss(_FunctionModule):
    """CTKD with a global learnable temperature: :func:`ctkd_kd_loss` at ``T = ctkd_temperature(theta)``.

    Holds the parameter ``theta`` (one element, 1 at the start as in the authors' code, so T starts at
    15.6); give it to the optimiser with the student's parameters. ``forward(student_logits,
    teacher_logits, lambda_)`` reverses theta's gradient with strength ``lambda_`` (see
    :func:`ctkd_grl_lambda`), so the temperature ascends the loss that the student descends.

    Args:
        t_start, t_end, standardize: the constructor's, as :func:`ctkd_temperature` and :func:`ctkd_kd_loss`.
        student_logits, teacher_logits, lambda_: ``forward``'s inputs.

    Returns:
        ``forward`` returns the scalar loss.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> loss = CTKDLoss()
        >>> loss(s, t, 1.0).backward()
        >>> loss.theta.grad.shape, round(loss.temperature().item(), 2)
        (torch.Size([1]), 15.62)
    """

    def __init__(self, t_start: float = 1.0, t_end: float = 20.0, *, standardize: bool = False) -> None:
        _check_ctkd_range(t_start, t_end)
        super().__init__(t_start=t_start, t_end=t_end, standardize=standardize)
        self.theta = nn.Parameter(torch.ones(1))

    def temperature(self) -> Tensor:
        """The current temperature (one element, no grad)."""
        return ctkd_temperature(self.theta.detach(), self.hyper_parameters["t_start"], self.hyper_parameters["t_end"])

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, lambda_: float) -> Tensor:
        theta = gradient_reversal(self.theta, lambda_)
        temperature = ctkd_temperature(theta, self.hyper_parameters["t_start"], self.hyper_parameters["t_end"])
        return ctkd_kd_loss(student_logits, teacher_logits, temperature,
                            standardize=self.hyper_parameters["standardize"])


class MLKDLoss(_FunctionModule):
    """Module form of :func:`mlkd_loss`.

    Args:
        temperature, extra_temperatures, ce_weight, kd_weight, standardize, strong_views, confidence_masks:
            the constructor's, as the function's.
        student_logits_weak, teacher_logits_weak, student_logits_strong, teacher_logits_strong, labels:
            ``forward``'s inputs.

    Returns:
        ``forward`` returns the function's dict of four scalar terms.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
        >>> y = torch.tensor([0, 2])
        >>> sorted(MLKDLoss()(s, t, s, t, y))
        ['loss_bc', 'loss_cc', 'loss_ce', 'loss_kd']
    """

    def __init__(self, temperature: float = 4.0, extra_temperatures: tuple[float, ...] = (3.0, 5.0, 2.0, 6.0),
                 ce_weight: float = 0.1, kd_weight: float = 0.9, *, standardize: bool = False,
                 strong_views: str = "reference", confidence_masks: str = "scale") -> None:
        for each in (temperature, *extra_temperatures):
            _check_temperature(each)
        _check_non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
        _check_choice("strong_views", strong_views, MLKD_STRONG_VIEWS)
        _check_choice("confidence_masks", confidence_masks, MLKD_CONFIDENCE_MASKS)
        super().__init__(temperature=temperature, extra_temperatures=tuple(extra_temperatures), ce_weight=ce_weight,
                         kd_weight=kd_weight, standardize=standardize, strong_views=strong_views,
                         confidence_masks=confidence_masks)

    def forward(self, student_logits_weak: Tensor, teacher_logits_weak: Tensor, student_logits_strong: Tensor,
                teacher_logits_strong: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return mlkd_loss(student_logits_weak, teacher_logits_weak, student_logits_strong, teacher_logits_strong,
                         labels, **self.hyper_parameters)
