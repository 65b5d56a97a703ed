"""DKD, DIST, NKD/USKD, logit standardization, TTM/WTTM, CTKD and MLKD against float64 numpy formulas
written here from the papers' equations (and the authors' code where it differs, as documented), their
invariants, gradients, numerics on saturated and half-precision logits, host reads and input checks.
benchmarks/logit_losses_vs_authors.py compares the same functions with the authors' own code."""

import math

import numpy as np
import pytest
import torch

from softdistill.losses import (
    CTKDLoss,
    DISTLoss,
    DKDLoss,
    GradientReversal,
    KDLSLoss,
    LogitStandardize,
    MLKDLoss,
    NKDLoss,
    TTMLoss,
    USKDLoss,
    WTTMLoss,
    ctkd_grl_lambda,
    ctkd_kd_loss,
    ctkd_temperature,
    dist_loss,
    dkd_loss,
    dkd_warmup_factor,
    gradient_reversal,
    kd_loss,
    kd_ls_loss,
    logit_standardize,
    mlkd_loss,
    nkd_loss,
    ttm_loss,
    uskd_loss,
    wttm_loss,
)
from test_speed import recording_host_reads

# Two samples, four classes: the student is unsure, the teacher fairly confident; labels 0 and 2.
STUDENT = np.array([[2.0, 1.0, 0.0, -1.0], [0.5, -0.5, 3.0, 1.0]])
TEACHER = np.array([[3.0, 0.5, 0.0, 1.0], [0.0, 1.0, 4.0, -2.0]])
LABELS = np.array([0, 2])


def tensors(*arrays, requires_grad=False):
    out = [torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad) for a in arrays]
    return out if len(out) > 1 else out[0]


def log_softmax(z, t=1.0):
    z = np.asarray(z, dtype=np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(z, t=1.0):
    return np.exp(log_softmax(z, t))


def kl(p, q):
    return float(np.sum(p * np.log(p / q)))


def non_target(row, label):
    return np.delete(np.asarray(row, dtype=np.float64), label)


def labels_tensor(labels=LABELS):
    return torch.tensor(labels)


# ----------------------------------------------------------------------------- DKD

def dkd_by_hand(student, teacher, labels, alpha, beta, t):
    """Zhao et al. (2022), eqs. of TCKD and NCKD, one sample at a time, T^2 on both."""
    total = 0.0
    for s, z, y in zip(student, teacher, labels):
        p_s, p_t = softmax(s, t), softmax(z, t)
        tckd = kl(np.array([p_t[y], 1 - p_t[y]]), np.array([p_s[y], 1 - p_s[y]]))
        nckd = kl(non_target(p_t, y) / (1 - p_t[y]), non_target(p_s, y) / (1 - p_s[y]))
        total += alpha * tckd + beta * nckd
    return t * t * total / len(labels)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dkd_matches_the_papers_tckd_and_nckd(t):
    s, z = tensors(STUDENT, TEACHER)
    assert dkd_loss(s, z, labels_tensor(), 1.0, 8.0, t).item() == pytest.approx(
        dkd_by_hand(STUDENT, TEACHER, LABELS, 1.0, 8.0, t), rel=1e-12)
    assert dkd_loss(s, z, labels_tensor(), 0.5, 2.0, t, target_offset=math.inf).item() == pytest.approx(
        dkd_by_hand(STUDENT, TEACHER, LABELS, 0.5, 2.0, t), rel=1e-12)


def test_kd_decomposes_into_tckd_plus_weighted_nckd():
    """The DKD paper's identity: KD = TCKD + (1 - p_t(y)) NCKD, per sample."""
    for row in range(2):
        (s, z), y = tensors(STUDENT[row:row + 1], TEACHER[row:row + 1]), labels_tensor(LABELS[row:row + 1])
        p_target = softmax(TEACHER[row], 4.0)[LABELS[row]]
        dkd = dkd_loss(s, z, y, alpha=1.0, beta=1 - p_target, temperature=4.0)
        assert dkd.item() == pytest.approx(kd_loss(s, z, 4.0).item(), rel=1e-12)


def test_dkd_target_offset_is_the_authors_1000_and_matters_only_on_saturated_logits():
    torch.manual_seed(0)
    s, z, y = 3 * torch.randn(16, 100, dtype=torch.float64), 3 * torch.randn(16, 100, dtype=torch.float64), \
        torch.randint(0, 100, (16,))
    assert dkd_loss(s, z, y).item() == pytest.approx(dkd_loss(s, z, y, target_offset=math.inf).item(), rel=1e-13)
    # a teacher that puts 1e4 on the label: lowered by 1000 * T it still dominates the "non-target" softmax
    teacher = torch.zeros(1, 5, dtype=torch.float64)
    teacher[0, 0] = 1e4
    student = torch.tensor([[0.0, 2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    authors, exact = dkd_loss(student, teacher, torch.tensor([0])), dkd_loss(student, teacher, torch.tensor([0]),
                                                                            target_offset=math.inf)
    p_s = softmax(student[0].numpy(), 4.0)
    uniform = np.full(4, 0.25)
    assert exact.item() == pytest.approx(16 * (-math.log(p_s[0]) + 8 * kl(uniform, p_s[1:] / p_s[1:].sum())),
                                         rel=1e-9)
    assert abs(authors.item() - exact.item()) > 1.0


def test_dkd_warmup_factor():
    assert [dkd_warmup_factor(e) for e in (0, 1, 10, 20, 40)] == [0.0, 0.05, 0.5, 1.0, 1.0]
    assert dkd_warmup_factor(3, warmup_epochs=6) == 0.5


def test_dkd_standardize_is_dkd_on_standardized_logits():
    s, z = tensors(STUDENT, TEACHER)
    expected = dkd_loss(logit_standardize(s), logit_standardize(z), labels_tensor(), 9.0, 72.0, 2.0)
    assert dkd_loss(s, z, labels_tensor(), 9.0, 72.0, 2.0, standardize=True).item() == pytest.approx(
        expected.item(), rel=1e-14)


def test_dkd_in_float16_is_finite_where_log_of_softmax_is_not():
    """The authors' TCKD takes log of a summed softmax: a confident student's 1 - p(y) is 0 in float16."""
    student = torch.tensor([[12.0, -12.0, -12.0]], dtype=torch.float16)
    teacher = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float16)
    p_s = torch.softmax(student / 1.0, dim=1)
    assert torch.isinf(torch.log(p_s[:, 1:].sum(1))).all()  # what log(softmax) gives
    loss = dkd_loss(student, teacher, torch.tensor([0]), temperature=1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ----------------------------------------------------------------------------- DIST

def pearson(a, b):
    """The authors' Pearson correlation, with 1e-8 added to the product of the norms."""
    a, b = a - a.mean(), b - b.mean()
    return np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)


def dist_by_hand(student, teacher, beta, gamma, t, tau_squared=True):
    """Huang et al. (2022): 1 - Pearson per row (inter) and per column (intra) of the softmax matrices."""
    y_s, y_t = softmax(student, t), softmax(teacher, t)
    inter = 1 - np.mean([pearson(a, b) for a, b in zip(y_s, y_t)])
    intra = 1 - np.mean([pearson(a, b) for a, b in zip(y_s.T, y_t.T)])
    return (t * t if tau_squared else 1.0) * (beta * inter + gamma * intra)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dist_matches_pearson_correlations(t):
    student = np.vstack([STUDENT, STUDENT[::-1] * 0.5])
    teacher = np.vstack([TEACHER, TEACHER[::-1] - 1.0])
    s, z = tensors(student, teacher)
    assert dist_loss(s, z, 1.0, 2.0, t).item() == pytest.approx(dist_by_hand(student, teacher, 1.0, 2.0, t),
                                                                rel=1e-12)
    assert dist_loss(s, z, 1.0, 2.0, t, tau_squared=False).item() == pytest.approx(
        dist_by_hand(student, teacher, 1.0, 2.0, t, tau_squared=False), rel=1e-12)
    # the eps matters where a class's probabilities barely vary over the batch: plain Pearson differs
    y_s, y_t = softmax(student, t), softmax(teacher, t)
    plain_intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s.T, y_t.T)])
    with_eps_intra = 1 - np.mean([pearson(a, b) for a, b in zip(y_s.T, y_t.T)])
    assert plain_intra != pytest.approx(with_eps_intra, rel=1e-7)


def test_dist_invariances():
    """Shifting a row of logits changes no probability; the paper's claim is about the probabilities: Pearson
    correlation ignores a positive affine map of the teacher's probabilities (logits log(a p + c))."""
    torch.manual_seed(1)
    s, z = torch.randn(8, 10, dtype=torch.float64), 2 * torch.randn(8, 10, dtype=torch.float64)
    reference = dist_loss(s, z).item()
    assert dist_loss(s + torch.randn(8, 1, dtype=torch.float64), z - 3.0).item() == pytest.approx(reference, rel=1e-12)
    affine_teacher = torch.log(3.0 * torch.softmax(z, 1) + 0.2)  # softmax of it: (3 p + 0.2) / (3 + 10 * 0.2)
    assert dist_loss(s, affine_teacher).item() == pytest.approx(reference, rel=1e-6)
    assert dist_loss(s, 2 * z).item() != pytest.approx(reference, rel=1e-3)  # scaling logits is not such a map


# ----------------------------------------------------------------------------- NKD and USKD

def nkd_by_hand(student, teacher, labels, t, gamma):
    """Yang et al. (2023): -t_y log s_y - gamma T^2 sum_{k != y} tn_k log sn_k, normalised non-target at T."""
    total = 0.0
    for s, z, y in zip(student, teacher, labels):
        target = -softmax(z)[y] * log_softmax(s)[y]
        non_target_ce = -np.sum(softmax(non_target(z, y), t) * log_softmax(non_target(s, y), t))
        total += target + gamma * t * t * non_target_ce
    return total / len(labels)


@pytest.mark.parametrize("t, gamma", [(1.0, 1.5), (3.0, 0.5)])
def test_nkd_matches_its_equation(t, gamma):
    s, z = tensors(STUDENT, TEACHER)
    assert nkd_loss(s, z, labels_tensor(), t, gamma).item() == pytest.approx(
        nkd_by_hand(STUDENT, TEACHER, LABELS, t, gamma), rel=1e-12)


def uskd_soft_labels(student, weak, labels, rank_with_log_probs):
    """USKD's target weights c (B) and Zipf non-target labels (B x (K-1)) as the authors' code builds them:
    c = p(y)^2 + 1 - mean p(y)^2; 1/rank over all classes ranked by the weak head's normalised non-target
    probability plus the student's score (log-probabilities in the code), the target's then dropped."""
    batch, classes = student.shape
    p, log_p, w = softmax(student), log_softmax(student), softmax(weak)
    squared = p[np.arange(batch), labels] ** 2
    zipf = []
    for b, y in enumerate(labels):
        own = log_p[b] if rank_with_log_probs else p[b]
        score = w[b] / (1 - w[b, y] + 1e-6) + own / (1 - own[y] + 1e-6)
        position = np.empty(classes)
        position[np.argsort(-score, kind="stable")] = np.arange(classes)
        labels_b = non_target(1 / (position + 1), y)
        zipf.append(labels_b / labels_b.sum())
    return squared + 1 - squared.mean(), np.array(zipf)


def uskd_by_hand(student, weak, labels, alpha, beta, mu, rank_with_log_probs):
    """Yang et al. (2023): alpha target term + beta Zipf non-target term + mu smoothed CE of the weak head."""
    batch, classes = student.shape
    weights, zipf = uskd_soft_labels(student, weak, labels, rank_with_log_probs)
    target = -np.mean(weights * log_softmax(student)[np.arange(batch), labels])
    non_target_term = -np.mean([np.sum(z * log_softmax(non_target(s, y))) for z, s, y in zip(zipf, student, labels)])
    smoothed = 0.9 * np.eye(classes)[labels] + 0.1 / classes
    weak_term = -mu * np.mean(np.sum(smoothed * log_softmax(weak), axis=1))
    return alpha * target + beta * non_target_term + weak_term


@pytest.mark.parametrize("rank_with_log_probs", [True, False])
def test_uskd_matches_its_terms(rank_with_log_probs):
    weak = np.array([[0.0, 2.0, -1.0, 1.5], [1.0, 0.0, 2.0, 2.5]])
    s, w = tensors(STUDENT, weak)
    got = uskd_loss(s, w, labels_tensor(), 1.0, 0.1, 0.005, rank_with_log_probs=rank_with_log_probs)
    assert got.item() == pytest.approx(uskd_by_hand(STUDENT, weak, LABELS, 1.0, 0.1, 0.005, rank_with_log_probs),
                                       rel=1e-12)


def test_uskd_rank_modes_differ_where_the_authors_log_probabilities_change_the_order():
    """p = (0.657, 0.242, 0.012, 0.089), weak head w = (0.006, 0.017, 0.930, 0.046), label 0. The code's score
    w_k / (1 - w_0) + log p_k / (1 - log p_0) ranks the non-targets 1, 3, 2 (the student's log-probabilities
    outweigh the weak head); with p_k / (1 - p_0) instead, the weak head's vote puts class 2 first: 2, 1, 3."""
    student = np.array([[1.0, 0.0, -3.0, -1.0]])
    weak = np.array([[-2.0, -1.0, 3.0, 0.0]])
    s, w = tensors(student, weak)
    log_mode = uskd_loss(s, w, torch.tensor([0]), 0.0, 1.0, 0.0)
    prob_mode = uskd_loss(s, w, torch.tensor([0]), 0.0, 1.0, 0.0, rank_with_log_probs=False)
    assert log_mode.item() == pytest.approx(uskd_by_hand(student, weak, [0], 0.0, 1.0, 0.0, True), rel=1e-12)
    assert prob_mode.item() == pytest.approx(uskd_by_hand(student, weak, [0], 0.0, 1.0, 0.0, False), rel=1e-12)
    assert log_mode.item() != pytest.approx(prob_mode.item(), rel=1e-3)


def test_uskd_gradients_treat_its_soft_labels_as_constants():
    weak_np = np.array([[0.0, 2.0, -1.0, 1.5], [1.0, 0.0, 2.0, 2.5]])
    s, w = tensors(STUDENT, weak_np, requires_grad=True)
    uskd_loss(s, w, labels_tensor(), 1.0, 0.1, 0.005).backward()
    # the same loss with its soft labels as constants: the student learns from the target and Zipf terms...
    weights, zipf = (torch.tensor(a) for a in uskd_soft_labels(STUDENT, weak_np, LABELS, True))
    s2, w2 = tensors(STUDENT, weak_np, requires_grad=True)
    log_p = torch.log_softmax(s2, 1)
    non_target_log_p = torch.stack([torch.log_softmax(torch.cat([row[:y], row[y + 1:]]), 0)
                                    for row, y in zip(s2, LABELS)])
    # ...and the weak head from its smoothed CE only
    smoothed = 0.9 * torch.eye(4, dtype=torch.float64)[labels_tensor()] + 0.1 / 4
    constant_form = (-(weights * log_p[[0, 1], LABELS]).mean() - 0.1 * (zipf * non_target_log_p).sum(1).mean()
                     - 0.005 * (smoothed * torch.log_softmax(w2, 1)).sum(1).mean())
    constant_form.backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- logit standardization

def test_logit_standardize_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]], dtype=torch.float64)
    expected = np.array([[-1.0, 0.0, 1.0], [-1 / math.sqrt(3), -1 / math.sqrt(3), 2 / math.sqrt(3)]])
    np.testing.assert_allclose(logit_standardize(z).numpy(), expected, rtol=1e-6)
    population = expected * math.sqrt(3 / 2)  # std with 1/K instead of 1/(K-1)
    np.testing.assert_allclose(logit_standardize(z, unbiased=False).numpy(), population, rtol=1e-6)
    assert logit_standardize(z, eps=1.0)[0, 0].item() == pytest.approx(-0.5)  # (1 - 2) / (1 + 1)


def test_standardization_invariance_and_kd_ls_equals_kd_on_standardized_logits():
    torch.manual_seed(2)
    s, z = torch.randn(6, 10, dtype=torch.float64), 4 * torch.randn(6, 10, dtype=torch.float64)
    scale, shift = torch.rand(6, 1, dtype=torch.float64) * 5 + 0.1, torch.randn(6, 1, dtype=torch.float64)
    torch.testing.assert_close(logit_standardize(scale * z + shift), logit_standardize(z), rtol=1e-6, atol=1e-6)
    reference = kd_ls_loss(s, z, 2.0)
    assert kd_ls_loss(2 * s - 1, scale * z + shift, 2.0).item() == pytest.approx(reference.item(), rel=1e-6)
    assert reference.item() == kd_loss(logit_standardize(s), logit_standardize(z), 2.0).item()


def test_kd_ls_by_hand():
    def standardize(z):
        return (z - z.mean(1, keepdims=True)) / (1e-7 + z.std(1, ddof=1, keepdims=True))

    zs, zt = standardize(STUDENT), standardize(TEACHER)
    expected = 4.0 * np.mean([kl(softmax(b, 2.0), softmax(a, 2.0)) for a, b in zip(zs, zt)])
    assert kd_ls_loss(*tensors(STUDENT, TEACHER)).item() == pytest.approx(expected, rel=1e-12)


def test_logit_standardize_of_a_constant_row_is_zero_with_a_finite_gradient():
    z = torch.zeros(2, 5, requires_grad=True)  # e.g. a zero-initialised classifier
    out = logit_standardize(z)
    (out * torch.arange(5.0)).sum().backward()
    assert torch.equal(out, torch.zeros(2, 5)) and torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- TTM and WTTM

@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0])
def test_ttm_and_wttm_by_hand(gamma):
    s, z = tensors(STUDENT, TEACHER)
    powered = softmax(TEACHER) ** gamma
    power_sums = powered.sum(1)
    kls = np.array([kl(p / u, softmax(row)) for p, u, row in zip(powered, power_sums, STUDENT)])
    assert ttm_loss(s, z, gamma=gamma).item() == pytest.approx(kls.mean(), rel=1e-12)
    assert wttm_loss(s, z, gamma=gamma).item() == pytest.approx((power_sums * kls).mean(), rel=1e-12)


def test_ttm_at_gamma_one_is_kd_at_t_one_and_otherwise_a_teacher_only_temperature():
    s, z = tensors(STUDENT, TEACHER)
    assert ttm_loss(s, z, gamma=1.0).item() == pytest.approx(kd_loss(s, z, 1.0).item(), rel=1e-12)
    assert wttm_loss(s, z, gamma=1.0).item() == pytest.approx(ttm_loss(s, z, gamma=1.0).item(), rel=1e-12)
    expected = np.mean([kl(softmax(b, 1 / 0.25), softmax(a)) for a, b in zip(STUDENT, TEACHER)])
    assert ttm_loss(s, z, gamma=0.25).item() == pytest.approx(expected, rel=1e-12)


def test_ttm_keeps_a_teacher_probability_that_underflows_before_the_power():
    """exp(-120) underflows in float32; its power 0.1 (exp(-12)) does not: no pow of an underflowed probability."""
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[0.0, -120.0]])
    p = torch.tensor([1.0, math.exp(-12.0)], dtype=torch.float64)
    p = p / p.sum()
    expected = float((p * torch.log(p / 0.5)).sum())
    assert ttm_loss(student, teacher, gamma=0.1).item() == pytest.approx(expected, rel=1e-5)
    assert torch.pow(torch.softmax(teacher, 1), 0.1)[0, 1].item() == 0.0  # the authors' order of operations


# ----------------------------------------------------------------------------- CTKD

def test_ctkd_temperature_and_lambda_by_hand():
    assert ctkd_temperature(torch.tensor([0.0])).item() == 11.0
    assert ctkd_temperature(torch.tensor([1.0])).item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)
    assert ctkd_temperature(torch.tensor([50.0]), 2.0, 3.0).item() == pytest.approx(5.0)  # t_end is a width
    assert [ctkd_grl_lambda(e) for e in (-3, 0, 10, 12)] == [0.0, 0.0, 1.0, 1.0]
    assert ctkd_grl_lambda(5) == pytest.approx(0.5)
    assert ctkd_grl_lambda(2.5, lambda_max=0.8, lambda_min=0.2) == pytest.approx(0.2 + 0.6 * (1 - math.sqrt(0.5)) / 2)
    assert ctkd_grl_lambda(1) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)  # the authors' first epoch: 0.024


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = gradient_reversal(x, 0.25)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    (y * torch.tensor([4.0, 8.0])).sum().backward()
    assert x.grad.tolist() == [-1.0, -2.0]
    x.grad = None
    (GradientReversal()(x, 0.0) * 3).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0]


def test_ctkd_kd_loss_is_kd_at_a_float_temperature_and_by_hand():
    s, z = tensors(STUDENT, TEACHER)
    assert ctkd_kd_loss(s, z, 3.0).item() == kd_loss(s, z, 3.0).item()
    expected = 9.0 * np.mean([kl(softmax(b, 3.0), softmax(a, 3.0)) for a, b in zip(STUDENT, TEACHER)])
    assert ctkd_kd_loss(s, z, torch.tensor([3.0], dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)


def test_ctkd_temperature_receives_the_reversed_gradient():
    s, z = tensors(STUDENT, TEACHER)
    theta = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    lambda_ = 0.7
    loss = ctkd_kd_loss(s, z, ctkd_temperature(gradient_reversal(theta, lambda_)))
    loss.backward()

    def kd_at(t):
        return t * t * np.mean([kl(softmax(b, t), softmax(a, t)) for a, b in zip(STUDENT, TEACHER)])

    t = 1 + 20 / (1 + math.exp(-0.3))
    h = 1e-5
    d_loss_d_t = (kd_at(t + h) - kd_at(t - h)) / (2 * h)
    d_t_d_theta = 20 * math.exp(-0.3) / (1 + math.exp(-0.3)) ** 2
    assert theta.grad.item() == pytest.approx(-lambda_ * d_loss_d_t * d_t_d_theta, rel=1e-7)
    assert loss.item() == pytest.approx(kd_at(t), rel=1e-12)


def test_ctkd_module_learns_its_temperature_against_the_student():
    module = CTKDLoss()
    assert module.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)
    assert set(module.state_dict()) == {"theta"}
    s = torch.tensor(STUDENT, dtype=torch.float32, requires_grad=True)
    z = torch.tensor(TEACHER, dtype=torch.float32)
    module(s, z, 1.0).backward()
    s2 = s.detach().clone().requires_grad_()
    temperature = ctkd_temperature(module.theta.detach())
    kd_loss(s2, z, temperature.item()).backward()
    torch.testing.assert_close(s.grad, s2.grad)
    theta_plain = module.theta.detach().clone().requires_grad_()
    ctkd_kd_loss(s, z, ctkd_temperature(theta_plain)).backward()
    torch.testing.assert_close(module.theta.grad, -theta_plain.grad)


def test_ctkd_standardize():
    s, z = tensors(STUDENT, TEACHER)
    assert ctkd_kd_loss(s, z, 2.0, standardize=True).item() == kd_ls_loss(s, z, 2.0).item()


# ----------------------------------------------------------------------------- MLKD

def mlkd_by_hand(sw, tw, ss, ts, labels, temperatures, ce_weight, kd_weight, strong_views, masks):
    """Jin et al. (2023) as the authors' code combines the terms (see mlkd_loss)."""
    batch, classes = sw.shape
    rows = np.arange(batch)
    p_t = softmax(tw)
    confidence, class_confidence = p_t.max(1), p_t.sum(0)
    sample_mask = (confidence <= np.median(confidence)).astype(float)
    class_mask = (class_confidence <= np.median(class_confidence)).astype(float)

    def reduce(values, mask, normalizer):
        if masks == "scale":
            return values.sum() / normalizer * mask.mean()
        return (values * mask).sum() / normalizer

    def kl_rows(s, t, temp):
        return temp * temp * np.array([kl(softmax(b, temp), softmax(a, temp)) for a, b in zip(s, t)])

    loss_kd = loss_cc = loss_bc = 0.0
    for index, temp in enumerate(temperatures):
        strong = (sw, tw) if strong_views == "reference" and index >= 3 else (ss, ts)
        loss_kd += reduce(kl_rows(sw, tw, temp), sample_mask, batch) + kl_rows(*strong, temp).mean()
        ps, pt = softmax(sw, temp), softmax(tw, temp)
        loss_cc += reduce((pt.T @ pt - ps.T @ ps) ** 2, class_mask, classes)
        loss_bc += reduce((pt @ pt.T - ps @ ps.T) ** 2, sample_mask, batch)
    ce = -log_softmax(sw)[rows, labels].mean() - log_softmax(ss)[rows, labels].mean()
    return {"loss_ce": ce_weight * ce, "loss_kd": kd_weight * loss_kd, "loss_cc": kd_weight * loss_cc,
            "loss_bc": kd_weight * loss_bc}


MLKD_VIEWS = {  # B = 4 (the median lies between two confidences), K = 4
    "sw": np.vstack([STUDENT, STUDENT[::-1] + 0.5]),
    "tw": np.vstack([TEACHER, [[1.0, 0.0, 0.5, 0.0], [0.0, 6.0, 0.0, 1.0]]]),
    "ss": np.vstack([STUDENT * 0.5, STUDENT - 1.0]),
    "ts": np.vstack([TEACHER * 0.8, TEACHER[::-1]]),
}
MLKD_LABELS = np.array([0, 2, 0, 1])


@pytest.mark.parametrize("strong_views", ["reference", "strong"])
@pytest.mark.parametrize("masks", ["scale", "select"])
def test_mlkd_terms_by_hand(strong_views, masks):
    views = {name: tensors(array) for name, array in MLKD_VIEWS.items()}
    got = mlkd_loss(views["sw"], views["tw"], views["ss"], views["ts"], labels_tensor(MLKD_LABELS), 4.0,
                    strong_views=strong_views, confidence_masks=masks)
    expected = mlkd_by_hand(*MLKD_VIEWS.values(), MLKD_LABELS, (4.0, 3.0, 5.0, 2.0, 6.0), 0.1, 0.9, strong_views,
                            masks)
    assert list(got) == ["loss_ce", "loss_kd", "loss_cc", "loss_bc"]
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, rel=1e-12), name


def test_mlkd_masks_only_scale_in_the_authors_form():
    """Four samples with distinct confidences: the mask keeps two, so each masked term is half the unmasked."""
    views = {name: tensors(array) for name, array in MLKD_VIEWS.items()}
    args = (views["sw"], views["tw"], views["ss"], views["ts"], labels_tensor(MLKD_LABELS))
    scaled = mlkd_loss(*args, extra_temperatures=(), kd_weight=1.0)
    ps, pt = torch.softmax(views["sw"] / 4, 1), torch.softmax(views["tw"] / 4, 1)
    unmasked_bc = ((pt @ pt.T - ps @ ps.T) ** 2).sum() / 4
    assert scaled["loss_bc"].item() == pytest.approx(0.5 * unmasked_bc.item(), rel=1e-12)
    selected = mlkd_loss(*args, extra_temperatures=(), kd_weight=1.0, confidence_masks="select")
    assert selected["loss_bc"].item() != pytest.approx(scaled["loss_bc"].item(), rel=1e-3)


def test_mlkd_reference_views_read_the_weak_view_at_the_4th_and_5th_temperature():
    views = {name: tensors(array) for name, array in MLKD_VIEWS.items()}
    args = (views["sw"], views["tw"], views["ss"], views["ts"], labels_tensor(MLKD_LABELS))
    three = dict(extra_temperatures=(3.0, 5.0))
    assert mlkd_loss(*args, **three)["loss_kd"].item() == mlkd_loss(*args, **three, strong_views="strong")[
        "loss_kd"].item()
    assert mlkd_loss(*args)["loss_kd"].item() != pytest.approx(
        mlkd_loss(*args, strong_views="strong")["loss_kd"].item(), rel=1e-6)


def test_mlkd_standardize_applies_to_the_kd_terms_only():
    views = {name: tensors(array) for name, array in MLKD_VIEWS.items()}
    args = (views["sw"], views["tw"], views["ss"], views["ts"], labels_tensor(MLKD_LABELS))
    plain, standardized = mlkd_loss(*args, 2.0), mlkd_loss(*args, 2.0, standardize=True)
    for name in ("loss_ce", "loss_cc", "loss_bc"):
        assert standardized[name].item() == plain[name].item()
    standardized_views = {n: logit_standardize(v) for n, v in views.items()}
    expected = mlkd_loss(standardized_views["sw"], standardized_views["tw"], standardized_views["ss"],
                         standardized_views["ts"], labels_tensor(MLKD_LABELS), 2.0)["loss_kd"]
    assert standardized["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-12)


# ----------------------------------------------------------------------------- every method: common properties

def theta():
    return torch.zeros(1, requires_grad=True)


# Each loss as a function of (student, teacher, labels); USKD takes the "teacher" as its weak logits.
LOSSES = {
    "dkd": lambda s, t, y: dkd_loss(s, t, y),
    "dkd-standardized": lambda s, t, y: dkd_loss(s, t, y, standardize=True),
    "dist": lambda s, t, y: dist_loss(s, t, temperature=4.0),
    "nkd": lambda s, t, y: nkd_loss(s, t, y),
    "uskd": lambda s, t, y: uskd_loss(s, t, y),
    "kd-ls": lambda s, t, y: kd_ls_loss(s, t),
    "ttm": lambda s, t, y: ttm_loss(s, t, gamma=0.2),
    "wttm": lambda s, t, y: wttm_loss(s, t, gamma=0.2),
    "ctkd": lambda s, t, y: ctkd_kd_loss(s, t, ctkd_temperature(gradient_reversal(theta(), 0.5))),
    "ctkd-standardized": lambda s, t, y: ctkd_kd_loss(s, t, 4.0, standardize=True),
    "mlkd": lambda s, t, y: sum(mlkd_loss(s, t, s.flip(0), t.flip(0), y).values()),
}


def saturated(batch=8, classes=10, dtype=torch.float32):
    """Teacher rows with one class at +1e4 and the rest at -1e4; the student the same for the next class."""
    labels = torch.arange(batch) % classes
    teacher = torch.full((batch, classes), -1e4, dtype=dtype)
    teacher[torch.arange(batch), labels] = 1e4
    return teacher.roll(1, dims=1), teacher, labels


def one_hot_teacher(batch=8, classes=10, dtype=torch.float32):
    """A teacher whose probabilities are exactly one-hot in float32 (a margin of 200), a moderate student."""
    torch.manual_seed(3)
    labels = torch.arange(batch) % classes
    teacher = 200 * torch.nn.functional.one_hot(labels, classes).to(dtype)
    return torch.randn(batch, classes, dtype=dtype), teacher, labels


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("inputs", [saturated, one_hot_teacher])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_values_and_gradients_on_saturated_and_one_hot_teachers(name, inputs, dtype):
    student, teacher, labels = inputs(dtype=dtype)
    student.requires_grad_()
    loss = LOSSES[name](student, teacher, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_float32_under_bfloat16_autocast_and_float64_kept(name):
    torch.manual_seed(4)
    student, teacher, labels = 3 * torch.randn(8, 10), 3 * torch.randn(8, 10), torch.randint(0, 10, (8,))
    reference = LOSSES[name](student.double(), teacher.double(), labels)
    assert reference.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSSES[name](student.bfloat16(), teacher.bfloat16(), labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=0.1)  # bfloat16 inputs keep about 3 digits
    assert LOSSES[name](student, teacher, labels).item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_no_gradient_reaches_the_teacher(name):
    student, teacher = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    LOSSES[name](student, teacher, torch.tensor([0, 1, 2, 3])).backward()
    assert student.grad is not None
    assert teacher.grad is None or name == "uskd"  # USKD's second input is the student's own weak head


@pytest.mark.parametrize("name", LOSSES)
def test_no_host_reads_in_a_loss_and_its_backward(name):
    torch.manual_seed(5)
    student, teacher, labels = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10), torch.randint(0, 10, (8,))
    sites: list[str] = []
    with recording_host_reads(sites):
        LOSSES[name](student, teacher, labels).backward()
    assert not sites, f"{name} reads tensors back on the host at {sites}"


def test_module_forms_equal_the_functions():
    s, z, y = tensors(STUDENT), tensors(TEACHER), labels_tensor()
    views = {name: tensors(array) for name, array in MLKD_VIEWS.items()}
    pairs = [
        (DKDLoss(0.5, 4.0, 2.0, standardize=True)(s, z, y), dkd_loss(s, z, y, 0.5, 4.0, 2.0, standardize=True)),
        (DISTLoss(2.0, 1.0, 4.0, tau_squared=False)(s, z), dist_loss(s, z, 2.0, 1.0, 4.0, tau_squared=False)),
        (NKDLoss(2.0, 1.0)(s, z, y), nkd_loss(s, z, y, 2.0, 1.0)),
        (USKDLoss(1.0, 0.2, 0.01)(s, z, y), uskd_loss(s, z, y, 1.0, 0.2, 0.01)),
        (KDLSLoss(3.0)(s, z), kd_ls_loss(s, z, 3.0)),
        (TTMLoss(gamma=0.3)(s, z), ttm_loss(s, z, gamma=0.3)),
        (WTTMLoss(gamma=0.3)(s, z), wttm_loss(s, z, gamma=0.3)),
        (MLKDLoss(2.0)(views["sw"], views["tw"], views["ss"], views["ts"], labels_tensor(MLKD_LABELS))["loss_kd"],
         mlkd_loss(views["sw"], views["tw"], views["ss"], views["ts"], labels_tensor(MLKD_LABELS), 2.0)["loss_kd"]),
    ]
    for module_value, function_value in pairs:
        assert module_value.item() == function_value.item()
    torch.testing.assert_close(LogitStandardize(1e-3, unbiased=False)(z), logit_standardize(z, 1e-3, False))
    assert "alpha=0.5" in repr(DKDLoss(0.5))


@pytest.mark.parametrize("call, message", [
    (lambda: dkd_loss(torch.randn(2, 4), torch.randn(2, 5), torch.tensor([0, 1])), "teacher and student must agree"),
    (lambda: dkd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0])), "labels must be a 1-D tensor of 2"),
    (lambda: nkd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.eye(4)[:2]), "pass labels.argmax"),
    (lambda: dkd_loss(torch.randn(2, 1), torch.randn(2, 1), torch.tensor([0, 0])), "needs K >= 2"),
    (lambda: dkd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), temperature=0), "temperature must"),
    (lambda: dkd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), beta=-1), "beta must be >= 0"),
    (lambda: dkd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), target_offset=0), "target_offset"),
    (lambda: dist_loss(torch.randn(2, 4), torch.randn(2, 4), gamma=-0.5), "gamma must be >= 0"),
    (lambda: dist_loss(torch.randn(2, 4), torch.randn(2, 4), temperature=-1), "temperature must be > 0"),
    (lambda: nkd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), temperature=0), "temperature must"),
    (lambda: uskd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), mu=-0.1), "mu must be >= 0"),
    (lambda: uskd_loss(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 1])), "weak_logits has shape"),
    (lambda: kd_ls_loss(torch.randn(2, 4), torch.randn(2, 4), 0.0), "temperature must be > 0"),
    (lambda: logit_standardize(torch.randn(2, 1)), "at least 2 logits"),
    (lambda: ttm_loss(torch.randn(2, 4), torch.randn(2, 4), gamma=0.0), "gamma must be > 0"),
    (lambda: wttm_loss(torch.randn(2, 4), torch.randn(2, 4), gamma=-1.0), "gamma must be > 0"),
    (lambda: ctkd_kd_loss(torch.randn(2, 4), torch.randn(2, 4), -2.0), "temperature must be > 0"),
    (lambda: ctkd_kd_loss(torch.randn(2, 4), torch.randn(2, 4), torch.ones(2)), "one-element tensor"),
    (lambda: ctkd_temperature(torch.zeros(1), t_start=0.0), "t_start must be > 0"),
    (lambda: ctkd_temperature(torch.zeros(1), t_end=-1.0), "width of the range"),
    (lambda: ctkd_grl_lambda(1, lambda_max=0.0, lambda_min=-1.0), "0 <= lambda_min <= lambda_max"),
    (lambda: ctkd_grl_lambda(1, num_loops=0), "num_loops must be > 0"),
    (lambda: gradient_reversal(torch.ones(1), -1.0), "lambda_ must be >= 0"),
    (lambda: dkd_warmup_factor(1, warmup_epochs=0), "warmup_epochs must be > 0"),
    (lambda: dkd_warmup_factor(-1), "epoch must be >= 0"),
    (lambda: mlkd_loss(*[torch.randn(2, 4)] * 4, torch.tensor([0, 1]), extra_temperatures=(3.0, 0.0)),
     "temperature must be > 0"),
    (lambda: mlkd_loss(*[torch.randn(2, 4)] * 3, torch.randn(2, 5), torch.tensor([0, 1])),
     "teacher_logits_strong has shape"),
    (lambda: mlkd_loss(*[torch.randn(2, 4)] * 4, torch.tensor([0, 1]), kd_weight=-1), "kd_weight must be >= 0"),
    (lambda: mlkd_loss(*[torch.randn(2, 4)] * 4, torch.tensor([0, 1]), strong_views="weak"), "strong_views must be"),
    (lambda: MLKDLoss(confidence_masks="per-sample"), "confidence_masks must be one of"),
    (lambda: DKDLoss(temperature=-4.0), "temperature must be > 0"),
    (lambda: CTKDLoss(t_end=0.0), "width of the range"),
])
def test_bad_arguments_are_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()
