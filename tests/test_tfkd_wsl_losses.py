"""Tf-KD reg and WSL losses against hand computations and their stated invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from softdistill.losses import (
    kd_loss,
    soft_cross_entropy,
    tfkd_reg_loss,
    virtual_teacher_probs,
    weighted_soft_cross_entropy,
    wsl_loss,
    wsl_weights,
)
from softdistill.methods import method_class
from softdistill.metrics.bias_variance import regularization_stats
from softdistill.models import build_model
from softdistill.types import Batch


# ----------------------------------------------------------------------------- Tf-KD reg

def test_virtual_teacher_probs_entries_and_sum():
    probs = virtual_teacher_probs(torch.tensor([0, 3]), num_classes=5, correct_prob=0.9)
    assert probs.shape == (2, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert probs[0, 0].item() == pytest.approx(0.9) and probs[1, 3].item() == pytest.approx(0.9)
    assert probs[0, 1].item() == pytest.approx(0.1 / 4) and probs[1, 0].item() == pytest.approx(0.1 / 4)
    with pytest.raises(ValueError, match="correct_prob must be in"):
        virtual_teacher_probs(torch.tensor([0]), 5, 1.0)


def test_tfkd_paper_mode_equals_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    labels = torch.tensor([0])
    t, alpha, a = 5.0, 0.3, 0.8
    p_d = [a, (1 - a) / 2, (1 - a) / 2]
    # teacher softened in log space: softmax(log p_d / T)
    p_dt = [v ** (1 / t) for v in p_d]
    p_dt = [v / sum(p_dt) for v in p_dt]
    p_s = [math.exp(v / t) for v in (2.0, 0.5, -1.0)]
    p_s = [v / sum(p_s) for v in p_s]
    kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(p_dt, p_s))
    ce = -math.log(math.exp(2.0) / sum(math.exp(v) for v in (2.0, 0.5, -1.0)))
    expected = (1 - alpha) * ce + alpha * t * t * kl
    assert tfkd_reg_loss(logits, labels, t, alpha, a, "paper").item() == pytest.approx(expected, rel=1e-5)


def test_tfkd_reference_mode_reproduces_the_almost_uniform_target():
    """Authors' code: softmax(p_d / T) of the probability vector; K=100, a=0.99, T=20 -> 0.0105."""
    probs = virtual_teacher_probs(torch.tensor([7]), 100, 0.99)
    target = F.softmax(probs / 20.0, dim=1)
    assert target[0, 7].item() == pytest.approx(0.0105, abs=5e-5)
    assert target[0, 0].item() == pytest.approx(0.0100, abs=5e-5)
    # the reference loss is (1-alpha) CE + alpha * multiplier * KLDivLoss(reduction='mean')
    logits = torch.randn(4, 100)
    labels = torch.tensor([7, 1, 2, 3])
    targets = F.softmax(virtual_teacher_probs(labels, 100, 0.99) / 20.0, 1)
    with pytest.warns(UserWarning):
        kl_mean = torch.nn.KLDivLoss()(F.log_softmax(logits, 1), targets)
    expected = 0.9 * F.cross_entropy(logits, labels) + 0.1 * 50 * kl_mean
    got = tfkd_reg_loss(logits, labels, 20.0, 0.1, 0.99, "reference", multiplier=50)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_tfkd_paper_mode_keeps_float64_precision_at_many_classes():
    """K = 1000, T = 40, alpha = 1 (the soft term alone): a float32 virtual teacher was off by ~3 %."""
    k, t, a = 1000, 40.0, 0.9
    p_dt = [v ** (1 / t) for v in [a] + [(1 - a) / (k - 1)] * (k - 1)]
    p_dt = [v / sum(p_dt) for v in p_dt]
    expected = t * t * sum(p * math.log(p * k) for p in p_dt)  # zero logits: the student is uniform
    got = tfkd_reg_loss(torch.zeros(1, k, dtype=torch.float64), torch.tensor([0]), t, 1.0, a, "paper")
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-8)  # float32 targets: 3e-2
    probs = virtual_teacher_probs(torch.tensor([0]), k, a, dtype=torch.float64)
    assert probs.dtype == torch.float64 and probs[0, 1].item() == (1 - a) / (k - 1)


@pytest.mark.parametrize("mode, default", [("paper", 0.9), ("reference", 0.99)])
def test_tfkd_correct_prob_defaults_per_mode(mode, default):
    logits, labels = torch.randn(3, 10), torch.tensor([0, 4, 9])
    extra = {"multiplier": 50.0} if mode == "reference" else {}
    implicit = tfkd_reg_loss(logits, labels, 20.0, 0.1, mode=mode, **extra)
    assert implicit.item() == tfkd_reg_loss(logits, labels, 20.0, 0.1, default, mode, **extra).item()
    other = 0.99 if default == 0.9 else 0.9
    assert implicit.item() != tfkd_reg_loss(logits, labels, 20.0, 0.1, other, mode, **extra).item()


def test_tfkd_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        tfkd_reg_loss(torch.randn(2, 3), torch.tensor([0, 1]), mode="official")
    with pytest.raises(ValueError, match="multiplier only applies"):
        tfkd_reg_loss(torch.randn(2, 3), torch.tensor([0, 1]), multiplier=50)
    with pytest.raises(ValueError, match="labels must have shape"):
        tfkd_reg_loss(torch.randn(2, 3), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- WSL

def test_wsl_weight_is_1_minus_1_over_e_when_both_equal():
    z = torch.randn(5, 10)
    labels = torch.randint(0, 10, (5,))
    torch.testing.assert_close(wsl_weights(z, z.clone(), labels), torch.full((5,), 1 - math.exp(-1)))


def test_wsl_weight_goes_to_zero_when_student_far_better_and_one_when_teacher_is():
    labels = torch.tensor([0])
    confident = torch.tensor([[12.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.0, 0.1, 0.0]])
    assert wsl_weights(confident, unsure, labels).item() < 1e-4
    assert wsl_weights(unsure, confident, labels).item() > 0.999


def test_wsl_weights_hand_value_and_finite_for_one_hot_teacher():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    labels = torch.tensor([0])
    ce_s, ce_t = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert wsl_weights(student, teacher, labels).item() == pytest.approx(1 - math.exp(-ce_s / (ce_t + 1e-7)), rel=1e-6)
    # a teacher so confident that its CE underflows to exactly 0: 0/0 must not appear
    teacher_sure = torch.tensor([[1e4, -1e4]])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = wsl_weights(student.to(dtype), teacher_sure.to(dtype), labels)
        assert torch.isfinite(w).all() and 0 <= w.item() <= 1
        assert torch.isfinite(wsl_loss(student.to(dtype), teacher_sure.to(dtype), labels))


def test_no_gradient_through_wsl_weights():
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6)
    labels = torch.randint(0, 6, (4,))
    assert not wsl_weights(student, teacher, labels).requires_grad
    t = 3.0
    w = wsl_weights(student, teacher, labels)
    # the gradient equals that of CE + alpha T^2 mean(w_const * H), w treated as a constant
    g = torch.autograd.grad(wsl_loss(student, teacher, labels, t, 2.0), student)[0]
    log_p = F.log_softmax(student / t, 1)
    p_t = F.softmax(teacher / t, 1)
    manual = F.cross_entropy(student, labels) + 2.0 * t * t * (w * -(p_t * log_p).sum(1)).mean()
    g_manual = torch.autograd.grad(manual, student)[0]
    torch.testing.assert_close(g, g_manual)


def test_wsl_t2_scaling_and_reduction_to_kd_gradient_when_weights_are_one():
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5)
    ones = torch.ones(3)
    for t in (1.0, 2.0, 4.0):
        soft = weighted_soft_cross_entropy(student, teacher, ones, t)
        g_soft = torch.autograd.grad(t * t * soft, student)[0]
        g_kd = torch.autograd.grad(kd_loss(student, teacher, t), student)[0]
        torch.testing.assert_close(g_soft, g_kd, rtol=1e-5, atol=1e-7)
        assert soft.item() == pytest.approx(soft_cross_entropy(student, F.softmax(teacher / t, 1), t).item(), rel=1e-6)


def test_regularization_stats_counts_samples_where_teacher_is_worse():
    labels = torch.tensor([0, 0, 0, 0])
    student = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [5.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    stats = regularization_stats(student, teacher, labels)
    assert stats["reg_share"].item() == pytest.approx(0.25)  # only sample 0: teacher less sure than student
    w = wsl_weights(student, teacher, labels)
    assert stats["w_mean"].item() == pytest.approx(w.mean().item())
    assert stats["w_median"].item() == pytest.approx(torch.quantile(w, 0.5).item())


@pytest.mark.parametrize("mode, default", [("paper", 0.9), ("reference", 0.99)])
def test_tfkd_reg_method_takes_the_mode_default_when_the_recipe_gives_no_correct_prob(mode, default):
    cls = method_class("tfkd-reg")
    extra = {"multiplier": 50.0} if mode == "reference" else {}
    torch.manual_seed(0)
    method = cls(cls.Config(mode=mode, **extra), build_model("mlp", 10, 1, 4), 10, None)
    batch = Batch(torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 4, 9]), sample_id=torch.arange(6),
                  view=torch.zeros(6, dtype=torch.long))
    out = method(batch)
    expected = tfkd_reg_loss(out.logits, batch.y, 20.0, 0.1, default, mode, **extra)
    assert out.losses["tfkd_reg"].item() == pytest.approx(expected.item(), rel=1e-6)
