"""The IDA method: variants relate as their formulas say; mixed batches (made by the data) and cached teachers."""

import pytest
import torch
from torch import nn

from softdistill.config import ConfigError, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.samples import TensorSet
from softdistill.data.views import ViewPlan
from softdistill.losses import kd_loss, mixed_cross_entropy
from softdistill.methods import method_class
from softdistill.models import build_model
from softdistill.soft_labels import CachedTeacher
from softdistill.types import Batch

LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])


class OrderedTeacher(nn.Module):
    """Logits that respect every mixed sample's order: 10 lam on a, 10 (1 - lam) on b."""

    def forward(self, batch):
        logits = torch.zeros(len(batch), 5)
        logits[torch.arange(len(batch)), batch.y] += 10 * batch.lam
        logits[torch.arange(len(batch)), batch.y_b] += 10 * (1 - batch.lam)
        return logits


class ReversedTeacher(OrderedTeacher):
    def forward(self, batch):
        return -super().forward(batch)


def mixed_batch(mix="mixup", seed=0):
    """One batch of 8 mixed 4x4 views, as the training loader makes it (lambda per sample)."""
    images = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    plan = ViewPlan(seed=seed, mix=mix, mix_alpha=1.0)
    loader = BatchLoader(TensorSet(images, LABELS), 8, BatchTransform((0.5,), (0.25,)), plan=plan)
    loader.set_epoch(1)
    batch = next(iter(loader))
    assert batch.is_mixed and batch.y_b is not None and batch.lam.shape == (8,)
    return batch


def make(config, teacher):
    cls = method_class("ida")
    torch.manual_seed(3)
    return cls(cls.Config(**config), build_model("mlp", 5, 1, 4), 5, teacher)


def run(config, teacher, mix="mixup", seed=0):
    return make(config, teacher)(mixed_batch(mix, seed))


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_correction_changes_nothing_when_the_teacher_is_already_ordered(mix):
    batch = mixed_batch(mix, seed=2)
    # every view a true mix (a cutmix box of a 4x4 image may also cover none or all of it): the
    # ordered teacher is then strictly ordered, r > s > o
    assert ((batch.lam > 0) & (batch.lam < 1)).all()
    plain = make({"correction": "none"}, OrderedTeacher())(batch)
    replaced = make({"correction": "replace"}, OrderedTeacher())(batch)
    added = make({"correction": "add", "sigma": 2.0, "alpha": 0.5}, OrderedTeacher())(batch)
    assert replaced.losses["kd"].item() == pytest.approx(plain.losses["kd"].item(), rel=1e-6)
    assert added.losses["kd_iso"].item() == pytest.approx(2.0 / 0.5 * added.losses["kd"].item(), rel=1e-5)
    assert plain.metrics["teacher_concordance"].item() == pytest.approx(1.0)


def test_correction_repairs_a_reversed_teacher_and_kd_p_penalises_the_student():
    bad = run({"correction": "replace"}, ReversedTeacher())
    assert bad.metrics["teacher_concordance"].item() < 0
    assert bad.metrics["corrected_concordance"].item() > bad.metrics["teacher_concordance"].item()
    assert bad.metrics["corrected_top2"].item() >= bad.metrics["teacher_top2"].item()
    penalised = run({"order_penalty": 2.0}, OrderedTeacher())
    assert penalised.losses["order_penalty"].item() >= 0 and "kd_iso" not in penalised.losses


def test_kd_aug_terms_match_their_formula():
    batch = mixed_batch("mixup")
    assert len(batch.lam.unique()) > 1  # lambda is drawn per sample
    out = make({"alpha": 0.7, "temperature": 3.0}, OrderedTeacher())(batch)
    # recompute the terms by hand on the same mixed batch, with the same initial student
    torch.manual_seed(3)
    student = build_model("mlp", 5, 1, 4)
    logits = student(batch.x)
    teacher = OrderedTeacher()(batch)
    expected_ce = 0.3 * mixed_cross_entropy(logits, batch.y, batch.y_b, batch.lam)
    assert out.losses["ce_mix"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(0.7 * kd_loss(logits, teacher, 3.0).item(), rel=1e-5)


def test_mixed_cross_entropy_hand_value():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    lsm = torch.log_softmax(logits, 1)[0]
    value = mixed_cross_entropy(logits, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.7]))
    assert value.item() == pytest.approx(-(0.7 * lsm[0] + 0.3 * lsm[1]).item(), rel=1e-6)


def test_ida_needs_a_mixed_batch_and_its_mixing_lives_in_the_data():
    clean = Batch(torch.randn(8, 1, 4, 4), LABELS, sample_id=torch.arange(8), view=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="method 'ida' needs mixed views: set data.augment.mix"):
        make({}, OrderedTeacher())(clean)
    cls = method_class("ida")
    for moved in ({"mix": "mixup"}, {"mix_alpha": 0.4}, {"per_sample": True}):
        with pytest.raises(ValueError, match=f"method.{next(iter(moved))} moved to the data section"):
            cls.Config(**moved)
    raw = {"name": "i", "student": "mlp", "epochs": 1, "soft_labels": {"source": "teacher", "checkpoint": "t.pt"},
           "method": {"name": "ida"}}
    with pytest.raises(ConfigError, match="method.mix moved to the data section"):
        recipe_from_dict({**raw, "method": {"name": "ida", "mix": "cutmix"}})
    with pytest.raises(ConfigError, match=r"method 'ida' learns from mixed views: set data.augment.mix"):
        recipe_from_dict(raw)
    mixed = recipe_from_dict({**raw, "data": {"augment": {"mix": "cutmix", "mix_alpha": 0.5}}})
    assert mixed.view_plan.mix == "cutmix" and mixed.view_plan.mix_alpha == 0.5


def test_a_cached_teacher_refuses_mixed_batches():
    cache = CachedTeacher(torch.arange(8), torch.randn(8, 5))
    with pytest.raises(ValueError, match="a cached teacher knows the views of single samples, not mixed ones"):
        run({}, cache)
    # and a recipe that would need it is refused when it loads, before any teacher is made
    with pytest.raises(ConfigError, match="soft_labels.source 'cache' cannot serve soft labels of mixed"):
        recipe_from_dict({"name": "i", "student": "mlp", "epochs": 1, "method": {"name": "ida"},
                          "soft_labels": {"source": "cache", "checkpoint": "t.pt"},
                          "data": {"augment": {"mix": "mixup"}}})
