"""Loss values against hand computations, gradients, reference equalities and input checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from softdistill.losses import KDLoss, SoftCrossEntropy, kd_loss, label_smoothing_targets, soft_cross_entropy


def _softmax(values, t=1.0):
    exps = [math.exp(v / t) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5]])
    teacher = torch.tensor([[2.0, 0.0, 1.0]])
    t = 2.0
    p_s, p_t = _softmax([1.0, 2.0, 0.5], t), _softmax([2.0, 0.0, 1.0], t)
    expected = t * t * sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    assert kd_loss(student, teacher, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_t2_times_batchmean_kl_not_default_mean():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    t = 4.0
    log_s, log_t = F.log_softmax(student.double() / t, 1), F.log_softmax(teacher.double() / t, 1)
    batchmean = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    assert kd_loss(student, teacher, t).item() == pytest.approx(t * t * batchmean.item(), rel=1e-6)
    # the trap this avoids: nn.KLDivLoss() 'mean' divides by B x K, i.e. K times too small
    with pytest.warns(UserWarning):
        mean_reduced = torch.nn.KLDivLoss(log_target=True)(log_s, log_t)
    assert batchmean.item() == pytest.approx(10 * mean_reduced.item(), rel=1e-6)


def test_kd_loss_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 5)
    assert kd_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(z, z + torch.randn(4, 5)).item() > 0


def test_kd_loss_gradcheck_float64():
    torch.manual_seed(1)
    student = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 3.0), (student,))
    # and the closed form: d/dz_s = T (p_s^T - p_t^T) / B
    grad = torch.autograd.grad(kd_loss(student, teacher, 3.0), student)[0]
    t = 3.0
    expected = t * (F.softmax(student.detach() / t, 1) - F.softmax(teacher / t, 1)) / student.shape[0]
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_soft_cross_entropy_gradcheck_and_value():
    torch.manual_seed(2)
    student = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    target = F.softmax(torch.randn(3, 4, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda s: soft_cross_entropy(s, target), (student,))
    expected = -(target * F.log_softmax(student.detach(), 1)).sum(1).mean()
    assert soft_cross_entropy(student, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_cross_entropy_with_one_hot_is_cross_entropy():
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    one_hot = F.one_hot(labels, 5).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_soft_ce_and_kd_have_same_student_gradient():
    """soft CE and KL differ by the teacher's entropy, a constant: same student gradient."""
    torch.manual_seed(3)
    student = torch.randn(5, 7, requires_grad=True)
    teacher = torch.randn(5, 7)
    t = 4.0
    g_kd = torch.autograd.grad(kd_loss(student, teacher, t), student)[0]
    g_ce = torch.autograd.grad(t * t * soft_cross_entropy(student, F.softmax(teacher / t, 1), t), student)[0]
    torch.testing.assert_close(g_kd, g_ce, rtol=1e-5, atol=1e-7)


def test_no_gradient_reaches_the_teacher():
    student = torch.randn(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, requires_grad=True)
    kd_loss(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def test_losses_are_float32_and_finite_under_bfloat16_and_extreme_logits():
    student = torch.tensor([[1000.0, -1000.0, 0.0]], dtype=torch.bfloat16)
    teacher = torch.tensor([[-1000.0, 1000.0, 0.0]], dtype=torch.bfloat16)
    loss = kd_loss(student, teacher, 1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(2000.0, rel=1e-2)  # log_softmax, not log(softmax): no inf


def _float64_reference(student, teacher, t):
    log_s, log_t = F.log_softmax(student.double() / t, 1), F.log_softmax(teacher.double() / t, 1)
    return t * t * F.kl_div(log_s, log_t, reduction="batchmean", log_target=True).item()


def test_kd_loss_at_a_huge_temperature_is_the_float64_value():
    torch.manual_seed(4)
    student, teacher = torch.randn(64, 10) * 3, torch.randn(64, 10) * 3
    t = 1e5
    loss = kd_loss(student, teacher, t)
    assert loss.dtype == torch.float32 and loss.item() >= 0  # float32 arithmetic gave -163 here
    assert loss.item() == pytest.approx(_float64_reference(student, teacher, t), rel=1e-5)
    # T^2 KL tends to logit matching: mean_b sum_k (d_k - mean d)^2 / (2K), d = z_t - z_s
    d = (teacher - student).double()
    limit = ((d - d.mean(1, keepdim=True)) ** 2).sum(1).mean().item() / (2 * 10)
    assert loss.item() == pytest.approx(limit, rel=1e-3)


@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_kd_loss_at_usual_temperatures_keeps_its_float32_values_and_gradients(t):
    torch.manual_seed(5)
    student, teacher = (torch.randn(32, 100) * 4).requires_grad_(), torch.randn(32, 100) * 4
    loss = kd_loss(student, teacher, t)
    assert loss.item() == pytest.approx(_float64_reference(student, teacher, t), rel=1e-7)
    log_s, log_t = F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1)
    float32 = t * t * (log_t.exp() * (log_t - log_s)).sum(1).mean()  # the float32 formula it replaces
    assert loss.item() == pytest.approx(float32.item(), rel=1e-6 * t * t)  # its rounding grows with T^2
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0], torch.autograd.grad(float32, student)[0],
                               rtol=1e-5, atol=1e-8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kd_loss(student.bfloat16(), teacher.bfloat16(), t).dtype == torch.float32


def test_absurd_temperatures_are_refused_by_name():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"temperature 1e\+30 is absurdly large.*T <= 1e\+06"):
        kd_loss(z, z, 1e30)
    with pytest.raises(ValueError, match="absurdly large"):
        soft_cross_entropy(z, z.softmax(1), float("inf"))
    with pytest.raises(ValueError, match="must be > 0"):
        kd_loss(z, z, float("nan"))


def test_label_smoothing_uniform_convention():
    targets = label_smoothing_targets(torch.tensor([1, 0]), num_classes=4, epsilon=0.2, convention="uniform")
    expected = torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.85, 0.05, 0.05, 0.05]])
    torch.testing.assert_close(targets, expected)
    logits = torch.randn(2, 4)
    ours = soft_cross_entropy(logits, targets)
    torch_ls = F.cross_entropy(logits, torch.tensor([1, 0]), label_smoothing=0.2)
    assert ours.item() == pytest.approx(torch_ls.item(), rel=1e-6)


def test_label_smoothing_others_convention():
    targets = label_smoothing_targets(torch.tensor([2]), num_classes=5, epsilon=0.2, convention="others")
    torch.testing.assert_close(targets, torch.tensor([[0.05, 0.05, 0.8, 0.05, 0.05]]))
    assert targets.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
def test_label_smoothing_targets_keep_at_least_float32(dtype, expected):
    targets = label_smoothing_targets(torch.tensor([2]), num_classes=1000, epsilon=0.1, convention="others", dtype=dtype)
    assert targets.dtype == expected
    if expected == torch.float64:  # the exact double of 0.1 / 999, not a float32 rounding of it
        assert targets[0, 0].item() == 0.1 / 999 and targets[0, 2].item() == 1 - 0.1


@pytest.mark.parametrize("kwargs, message", [
    ({"convention": "paper"}, "convention must be one of"),
    ({"epsilon": 1.0}, "epsilon must be in"),
    ({"num_classes": 2}, "labels must lie in"),
])
def test_label_smoothing_errors(kwargs, message):
    args = {"labels": torch.tensor([0, 3]), "num_classes": 4, "epsilon": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        label_smoothing_targets(**args)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="teacher and student must agree"):
        kd_loss(torch.randn(4, 10), torch.randn(4, 100))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(torch.randn(4, 10), torch.randn(4, 10), temperature=0)


def test_module_wrappers_match_functions():
    s, t = torch.randn(3, 6), torch.randn(3, 6)
    assert KDLoss(5.0)(s, t).item() == pytest.approx(kd_loss(s, t, 5.0).item())
    p = F.softmax(t, 1)
    assert SoftCrossEntropy(2.0)(s, p).item() == pytest.approx(soft_cross_entropy(s, p, 2.0).item())
