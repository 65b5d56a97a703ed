"""Soft-label quality (Yuan et al., NeurIPS 2023): indicators, ECE, weak-supervision builders,
skillful-but-bad teachers, the soft-label student, and `softdistill inspect`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from softdistill.cli import main
from softdistill.config import ConfigError, recipe_from_dict
from softdistill.metrics import (ambiguity_degree, ambiguity_matrix, calibration_bins, expected_calibration_error,
                                 soft_label_indicators, unreliability_degree)
from softdistill.methods.sbt import sbt_distractors, sbt_losses
from softdistill.methods.softlabel import candidate_set_loss
from softdistill.runner import run_recipe
from softdistill.soft_labels.table import SoftLabelTable, load_soft_labels, save_soft_labels
from softdistill.soft_labels.weak import incomplete_labels, noisy_labels, partial_labels, pseudo_labels
from softdistill.types import Batch

# Four classes; class 3 never occurs.  Rows: (soft label, true class)
SOFT = torch.tensor([
    [0.6, 0.3, 0.1, 0.0],   # y=0: top1 {0}, top2 {0,1}
    [0.2, 0.5, 0.0, 0.3],   # y=0: top1 {1}, top2 {1,3}  -> truth missing at k=1 and k=2
    [0.1, 0.2, 0.3, 0.4],   # y=0: top1 {3}, top2 {3,2}  -> missing at k=1, k=2
    [0.7, 0.2, 0.1, 0.0],   # y=1: top1 {0}, top2 {0,1}
    [0.1, 0.1, 0.8, 0.0],   # y=2: top1 {2}, top2 {2,0} (tie 0.1/0.1 -> lower index 0)
])
LABELS = torch.tensor([0, 0, 0, 1, 2])


# ------------------------------------------------------------------------------------ indicators

def test_unreliability_by_hand():
    assert unreliability_degree(SOFT, LABELS) == pytest.approx(3 / 5)        # rows 1, 2, 3 miss at k=1
    assert unreliability_degree(SOFT, LABELS, k=2) == pytest.approx(2 / 5)   # rows 1, 2 miss at k=2
    assert unreliability_degree(SOFT, LABELS, k=3) == pytest.approx(1 / 5)   # only row 2 misses at k=3
    assert unreliability_degree(SOFT, LABELS, k=4) == 0.0


def test_unreliability_k3_detail():
    # row 1 top-3 is {1, 3, 0}: holds the truth 0; row 2 top-3 is {3, 2, 1}: misses 0
    assert unreliability_degree(SOFT[1:3], LABELS[1:3], k=3) == pytest.approx(1 / 2)


def test_ambiguity_by_hand_with_an_absent_class():
    # k=1: class 0 -> j=1 in 1/3, j=3 in 1/3; class 1 -> j=0 in 1/1; class 2 -> none.  Max = 1.0 (1 -> 0)
    assert ambiguity_degree(SOFT, LABELS) == pytest.approx(1.0)
    # without the class-1 row the max is 1/3 (class 0 -> 1 or 3)
    keep = LABELS != 1
    assert ambiguity_degree(SOFT[keep], LABELS[keep]) == pytest.approx(1 / 3)
    # k=2, class 0: j=1 in rows 0, 1 -> 2/3; j=3 in rows 1, 2 -> 2/3; j=2 in row 2 -> 1/3.  class 2: j=0 (tie) 1/1
    assert ambiguity_degree(SOFT[keep], LABELS[keep], k=2) == pytest.approx(1.0)
    only0 = LABELS == 0
    assert ambiguity_degree(SOFT[only0], LABELS[only0], k=2) == pytest.approx(2 / 3)
    m = ambiguity_matrix(SOFT, LABELS, k=2)
    assert m.shape == (4, 4) and torch.isnan(m[3]).all()            # class 3 has no samples: skipped
    assert m[0, 0].item() == pytest.approx(1 / 3)                     # 1 - Delta_2 on class 0
    assert m[2, 0].item() == 1.0 and m[2, 1].item() == 0.0            # the tie went to the lower index


def test_logits_and_probabilities_agree_and_any_k():
    torch.manual_seed(0)
    logits = torch.randn(300, 7)
    labels = torch.randint(0, 7, (300,))
    probs = logits.softmax(1)
    for k in (1, 2, 3, 6):
        assert unreliability_degree(logits, labels, k, from_logits=True) == unreliability_degree(probs, labels, k)
        assert ambiguity_degree(logits, labels, k, from_logits=True) == ambiguity_degree(probs, labels, k)
        topk = logits.topk(k, dim=1).indices
        assert unreliability_degree(probs, labels, k) == pytest.approx(1 - (topk == labels[:, None]).any(1).float().mean().item())
    rows = soft_label_indicators(probs, labels, range(1, 6))
    assert [r["k"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["condition"] == (r["unreliability"] + r["ambiguity"] < 1) for r in rows)


def test_uniform_candidate_sets_measure_exactly_at_the_set_size():
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    labels = torch.tensor([1, 1, 2])
    assert unreliability_degree(soft, labels, k=2) == 0.0
    assert unreliability_degree(soft, labels, k=1) == pytest.approx(2 / 3)  # ties -> lower index: 0, 1, 0


def test_one_hot_labels_are_perfect_at_every_k():
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    one_hot = F.one_hot(labels, 5).float()
    for row in soft_label_indicators(one_hot, labels, range(1, 5)):
        assert (row["unreliability"], row["ambiguity"], row["condition"]) == (0.0, 0.0, True), row
    # a label with support 2 has a top-3 of those 2 classes, not a third class of zero mass
    two = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6]])
    member = ambiguity_matrix(two, torch.tensor([0, 3]), k=3)
    assert member[0].tolist() == [1.0, 1.0, 0.0, 0.0] and member[3].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert unreliability_degree(torch.zeros(2, 3), torch.tensor([0, 1]), k=2) == 1.0  # no supervision: no set


def test_indicator_errors():
    with pytest.raises(ValueError, match="B x K"):
        unreliability_degree(torch.ones(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        unreliability_degree(SOFT, LABELS[:3])
    with pytest.raises(ValueError, match=r"k must lie in \[1, 4\]"):
        ambiguity_degree(SOFT, LABELS, k=5)
    with pytest.raises(ValueError, match=r"k must lie"):
        unreliability_degree(SOFT, LABELS, k=0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        unreliability_degree(SOFT, torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="integer"):
        unreliability_degree(SOFT, LABELS.float())
    with pytest.raises(ValueError, match="from_logits=True"):
        expected_calibration_error(torch.randn(5, 4) - 3, LABELS)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(SOFT, LABELS, n_bins=0)


# ------------------------------------------------------------------------------------ ECE

def test_ece_against_a_hand_computation():
    soft = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 2, 1])
    # 15 bins of width 1/15: conf 0.5 (two wrong) -> bin 7, 0.6 (right) -> bin 8, 0.7 (right) -> bin 10
    expected = 2 / 4 * abs(0 - 0.5) + 1 / 4 * abs(1 - 0.6) + 1 / 4 * abs(1 - 0.7)
    assert expected_calibration_error(soft, labels) == pytest.approx(expected)
    # 2 bins: (0, .5] holds both 0.5s (acc 0), (.5, 1] holds 0.6, 0.7 (acc 1, conf .65)
    assert expected_calibration_error(soft, labels, n_bins=2) == pytest.approx(0.5 * 0.5 + 0.5 * 0.35)
    bins = calibration_bins(soft, labels, n_bins=2)
    assert bins["count"].tolist() == [2, 2] and bins["accuracy"].tolist() == [0, 1]
    logits = soft.log()
    assert expected_calibration_error(logits, labels, from_logits=True) == pytest.approx(expected)
    perfect = F.one_hot(torch.tensor([0, 1, 2]), 3).double()
    assert expected_calibration_error(perfect, torch.tensor([0, 1, 2])) == 0.0


# ------------------------------------------------------------------------------------ builders

@pytest.fixture(scope="module")
def many_labels():
    return torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("k, delta, gamma", [(2, 0.0, None), (2, 0.2, 0.5), (2, 0.4, 0.9), (3, 0.1, 0.3), (1, 0.3, 0.2)])
def test_partial_labels_hit_their_indicators(many_labels, k, delta, gamma):
    built = partial_labels(many_labels, 10, k=k, unreliability=delta, ambiguity=gamma, seed=1)
    soft = built.soft_labels
    assert ((soft > 0).sum(1) == k).all() and torch.allclose(soft.sum(1), torch.ones(len(soft)))
    per_class = 2000
    se = math.sqrt(0.25 / per_class)
    assert built.unreliability == pytest.approx(delta, abs=4 * math.sqrt(0.25 / len(soft)))
    target = built.params["ambiguity"]
    # the measured ambiguity is a max over 90 pairs: at most a few standard errors above the target
    assert target - 3 * se <= built.ambiguity <= target + 5 * se
    assert built.unreliability == unreliability_degree(soft, many_labels, k)


def test_partial_labels_refuse_unreachable_ambiguity(many_labels):
    with pytest.raises(ValueError, match="out of reach"):
        partial_labels(many_labels, 10, k=2, unreliability=0.0, ambiguity=0.05)
    with pytest.raises(ValueError, match="out of reach"):
        partial_labels(many_labels, 10, k=1, unreliability=0.1, ambiguity=0.3)


def test_noisy_labels_get_less_reliable_with_scale(many_labels):
    deltas = [noisy_labels(many_labels, 10, scale=s).unreliability for s in (0.25, 0.5, 1.0, 2.0)]
    assert deltas[0] < 0.01 and all(a < b for a, b in zip(deltas, deltas[1:]))
    built = noisy_labels(many_labels, 10, scale=1.0, k=2)
    assert built.k == 2 and torch.allclose(built.soft_labels.sum(1), torch.ones(len(many_labels)))


def test_incomplete_then_pseudo_labels(many_labels):
    base = incomplete_labels(many_labels, 10, labelled_fraction=0.1, seed=0)
    assert base.supervised.float().mean().item() == pytest.approx(0.1, abs=0.001)
    assert base.unreliability == 0.0 and base.ambiguity == 0.0
    model = F.one_hot((many_labels + 1) % 10, 10).float()  # a model that is always wrong
    nxt = pseudo_labels(base, model, round=1)
    assert nxt.supervised.all()
    assert nxt.unreliability == pytest.approx(0.9, abs=0.002) and nxt.params["round"] == 1
    assert torch.equal(nxt.soft_labels[base.supervised], base.soft_labels[base.supervised])


def test_soft_label_file_roundtrip(tmp_path, many_labels):
    built = partial_labels(many_labels[:100], 10, k=2, seed=0)
    save_soft_labels(tmp_path / "t.pt", built.soft_labels, built.labels, data={"name": "synthetic", "split": "train"},
                     meta=built.report())
    blob = load_soft_labels(tmp_path / "t.pt")
    assert torch.equal(blob["soft_labels"], built.soft_labels) and blob["data"]["name"] == "synthetic"
    torch.save({"logits": torch.zeros(3, 4), "labels": torch.tensor([0, 1, 2])}, tmp_path / "plain.pt")
    assert torch.allclose(load_soft_labels(tmp_path / "plain.pt")["soft_labels"], torch.full((3, 4), 0.25))
    assert blob["sample_ids"] is None  # a file without sample ids lists the split's samples in order
    table = SoftLabelTable(built.soft_labels)  # rows keyed by sample ids 0..N-1
    batch = Batch(x=torch.zeros(2, 1), y=built.labels[:2], sample_id=torch.tensor([5, 7]),
                  view=torch.zeros(2, dtype=torch.long))
    assert torch.equal(table.probs(batch), built.soft_labels[[5, 7]])
    assert torch.equal(table.probs(batch.with_(view=torch.tensor([3, 1]))), built.soft_labels[[5, 7]])  # every view

    # with sample ids: a row belongs to its id, wherever it stands in the file
    ids = torch.randperm(100, generator=torch.Generator().manual_seed(0)) + 1000
    save_soft_labels(tmp_path / "ids.pt", built.soft_labels, built.labels, sample_ids=ids)
    blob = load_soft_labels(tmp_path / "ids.pt")
    assert torch.equal(blob["sample_ids"], ids)
    table = SoftLabelTable(blob["soft_labels"], sample_ids=blob["sample_ids"])
    batch = batch.with_(sample_id=ids[[5, 7]])
    assert torch.equal(table.probs(batch), built.soft_labels[[5, 7]])
    assert torch.allclose(table(batch), built.soft_labels[[5, 7]].clamp_min(1e-12).log())
    with pytest.raises(ValueError, match="has no row in the soft-label table"):
        table.probs(batch.with_(sample_id=torch.tensor([5, 7])))


def test_soft_label_rows_must_sum_to_one_or_zero(tmp_path):
    labels = torch.tensor([0, 1, 2, 0])
    good = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    save_soft_labels(tmp_path / "good.pt", good, labels)  # an all-zero row is "no supervision", allowed
    assert torch.equal(load_soft_labels(tmp_path / "good.pt")["soft_labels"], good)
    torch.save({"probs": good.half(), "labels": labels}, tmp_path / "half.pt")  # float16 rounding is tolerated
    load_soft_labels(tmp_path / "half.pt")
    scaled = good.clone()
    scaled[2] *= 7  # a row summing to 7 would scale its loss 7x
    scaled[3] *= 0.9
    torch.save({"soft_labels": scaled, "labels": labels}, tmp_path / "seven.pt")
    with pytest.raises(ValueError) as info:
        load_soft_labels(tmp_path / "seven.pt")
    message = str(info.value)
    assert str(tmp_path / "seven.pt") in message and "2 of 4 rows" in message
    assert "the worst is row 2, summing to 7" in message


# ------------------------------------------------------------------------------------ SBT

def test_sbt_distractors_are_fixed_distinct_and_wrong():
    ids = torch.arange(4000)
    labels = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    d = sbt_distractors(ids, labels, 10, 2, seed=0)
    assert torch.equal(d, sbt_distractors(ids, labels, 10, 2, seed=0))
    assert torch.equal(d[100:200], sbt_distractors(ids[100:200], labels[100:200], 10, 2, seed=0))  # batch-free
    shuffled = torch.randperm(4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(d[shuffled], sbt_distractors(ids[shuffled], labels[shuffled], 10, 2, seed=0))  # keyed by id
    assert (d != labels[:, None]).all() and (d[:, 0] != d[:, 1]).all()
    shares = torch.bincount((d[:, 0] - labels) % 10, minlength=10)[1:].float() / 4000
    assert (shares - 1 / 9).abs().max() < 0.03  # spread over the wrong classes: low ambiguity
    assert not torch.equal(d, sbt_distractors(ids, labels, 10, 2, seed=1))


def _toy(n=600, classes=6, dim=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(classes, dim, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return means[y] + torch.randn(n, dim, generator=gen), y


@pytest.fixture
def one_thread():
    """Small models train several times faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sbt_losses_push_the_top1_away_from_the_truth_but_keep_it_in_the_topk(one_thread):
    x, y = _toy(n=300)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 256), torch.nn.ReLU(), torch.nn.Linear(256, 6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    distractors = sbt_distractors(torch.arange(len(y)), y, 6, 2, seed=0)
    for _ in range(300):
        terms = sbt_losses(model(x), y, distractors, k=3)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    assert set(terms) == {"ce", "punish", "compensate", "push"}
    with torch.no_grad():
        logits = model(x)
    top1 = logits.argmax(1)
    assert (top1 == y).float().mean().item() < 0.05                       # bad: the truth is almost never first
    assert (top1[:, None] == distractors).any(1).float().mean().item() > 0.9  # a random wrong class leads
    delta3 = unreliability_degree(logits, y, 3, from_logits=True)
    assert delta3 < 0.05                                                  # skillful: the truth is in the top-3
    assert delta3 + ambiguity_degree(logits, y, 3, from_logits=True) < 1  # the sufficient condition holds at k=3


def test_candidate_set_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    cand = torch.tensor([[True, True, False], [False, False, True]])
    p = logits.softmax(1)
    expected = (-(p[0, 0] + p[0, 1]).log() - p[1, 2].log()) / 2
    assert candidate_set_loss(logits, cand).item() == pytest.approx(expected.item())
    only_first = candidate_set_loss(logits, cand, torch.tensor([1.0, 0.0]))
    assert only_first.item() == pytest.approx(-(p[0, 0] + p[0, 1]).log().item())


# ------------------------------------------------------------------------------------ recipes and inspect

def _recipe(tmp_path, **changes):
    raw = {"name": "syn", "student": "mlp", "epochs": 2, "seed": 0,
           "data": {"name": "synthetic", "val_size": 100, "batch_size": 50},
           "optim": {"name": "sgd", "lr": 0.05}, "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    raw.update(changes)
    return recipe_from_dict(raw)


def test_weak_partial_recipe_trains_a_soft_label_student(tmp_path):
    recipe = _recipe(tmp_path, name="weak", epochs=4,
                     soft_labels={"source": "weak", "kind": "partial", "k": 2, "unreliability": 0.1},
                     method={"name": "soft-label", "loss": "candidate_set", "k": 2}, optim={"name": "sgd", "lr": 0.1})
    summary = run_recipe(recipe, quiet=True)
    assert not (recipe.run_dir / "weak.json").exists()
    report = json.loads((recipe.run_dir / "soft_labels.json").read_text())
    assert report["kind"] == "partial" and report["k"] == 2 and report["unreliability"] < 0.25
    assert summary["test_acc_last"] > 25  # 10 classes: chance is 10 %
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train/truth_in_candidates"] == pytest.approx(1 - report["unreliability"], abs=0.08)
    # one soft-label source per recipe: the old 'weak' and 'teacher' sections are refused with what to write
    retired_weak = r"weak: the 'weak' section is now soft_labels: \{source: weak, kind: \.\.\.\}"
    with pytest.raises(ConfigError, match=retired_weak):
        _recipe(tmp_path, weak={"kind": "noise"}, method={"name": "soft-label"})
    with pytest.raises(ConfigError, match=r"teacher: the 'teacher' section is now soft_labels: \{source: teacher"):
        _recipe(tmp_path, weak={"kind": "noise"}, teacher={"checkpoint": "x.pt"}, method={"name": "soft-label"})
    with pytest.raises(ConfigError, match="soft_labels.path is needed for kind: file and only there"):
        _recipe(tmp_path, soft_labels={"source": "weak", "kind": "file"}, method={"name": "soft-label"})
    with pytest.raises(ConfigError, match="soft_labels.path is needed for kind: file and only there"):
        _recipe(tmp_path, soft_labels={"source": "weak", "kind": "noise", "path": "w.pt"},
                method={"name": "soft-label"})


def test_incomplete_round_zero_leaves_unlabelled_rows_out(tmp_path):
    recipe = _recipe(tmp_path, name="inc", epochs=1,
                     soft_labels={"source": "weak", "kind": "incomplete", "labelled_fraction": 0.2},
                     method={"name": "soft-label", "loss": "soft_ce"})
    run_recipe(recipe, quiet=True)
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train/supervised"] == pytest.approx(0.2, abs=0.05)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    teacher = _recipe(tmp, name="t", epochs=2)
    student = _recipe(tmp, name="s", epochs=1, student="mlp-64")
    run_recipe(teacher, quiet=True)
    run_recipe(student, quiet=True)
    return teacher.run_dir / "last.pt", student.run_dir / "last.pt", tmp


def test_inspect_writes_every_report_file(tiny_checkpoints, capsys):
    teacher, student, tmp = tiny_checkpoints
    out = tmp / "report"
    assert main(["inspect", str(teacher), "--data", "synthetic", "--split", "test", "--student", str(student),
                 "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "k=1: unreliability" in printed and "report:" in printed
    for name in ("report.md", "report.json", "reliability.png", "entropy.png", "indicators.png", "ambiguity.png",
                 "mixup.png"):
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "report.json").read_text())
    assert [r["k"] for r in summary["indicators"]] == [1, 2, 3, 4, 5]
    assert summary["soft_labels"]["samples"] == 200
    assert 0 <= summary["student"]["agreement"] <= 100 and 0 <= summary["student"]["reg_share"] <= 100
    assert -1 <= summary["mixup"]["teacher"]["order_concordance"] <= 1
    md = (out / "report.md").read_text()
    for text in ("| k | unreliability", "![reliability diagram](reliability.png)", "condition holds",
                 "teacher-student top-1 agreement", "order concordance"):
        assert text in md


def test_inspect_reads_a_soft_label_file(tiny_checkpoints, tmp_path):
    _, _, tmp = tiny_checkpoints
    from softdistill.data.prepare import prepare_data

    train = prepare_data("synthetic", val_size=100).train
    built = noisy_labels(train.labels, 10, scale=1.0, seed=0)
    path = tmp_path / "noise.pt"
    save_soft_labels(path, built.soft_labels, built.labels,
                     data={"name": "synthetic", "split": "train", "val_size": 100, "split_seed": 0})
    out = tmp_path / "r"
    assert main(["inspect", str(path), "--output", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["source"]["kind"] == "file"
    assert summary["indicators"][0]["unreliability"] == pytest.approx(built.unreliability)
    assert "skipped" in summary["mixup"] and (out / "report.md").is_file() and not (out / "mixup.png").exists()
    assert main(["inspect", str(tmp_path / "missing.pt")]) == 2


def test_inspect_is_a_documented_command():
    from softdistill.cli import build_parser

    assert "inspect" in build_parser().format_help()
    help_text = build_parser()._subparsers._group_actions[0].choices["inspect"].format_help()
    for option in ("--data", "--split", "--student", "--output"):
        assert option in help_text


def _weak_file_setup(tmp_path, labels, ids=None):
    """What a weak source is built from: the training split (labels, sample ids) and how paths resolve."""
    from softdistill.data import DataConfig
    from softdistill.data.prepare import DataBundle
    from softdistill.data.samples import TensorSet
    from softdistill.data.views import ViewPlan
    from softdistill.soft_labels import SourceSetup

    class Beside(dict):
        """Every dependency's file, in tmp_path."""

        def __missing__(self, dependency):
            return tmp_path / dependency.path

    train = TensorSet(torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8), labels, ids)
    data = DataBundle("synthetic", train, None, train, tuple(str(c) for c in range(10)), (0.5,), (0.25,))
    return SourceSetup(data=data, data_config=DataConfig(name="synthetic"), plan=ViewPlan(), views=None, seed=0,
                       device=torch.device("cpu"), products=Beside())


def test_weak_file_must_match_the_training_labels(tmp_path, many_labels):
    from softdistill.soft_labels import source_class
    from softdistill.soft_labels.weak import WeakConfig, WeakTable

    assert source_class("weak") is WeakTable
    labels = many_labels[:50]
    built = noisy_labels(labels, 10, scale=0.5)
    save_soft_labels(tmp_path / "w.pt", built.soft_labels, labels)
    config = WeakConfig(kind="file", path="w.pt", k=1)
    assert config.dependencies()[0].field == "soft_labels.path"
    source = WeakTable.build(config, _weak_file_setup(tmp_path, labels))
    report = source.report()
    assert report["kind"] == "file" and report["unreliability"] == pytest.approx(built.unreliability)
    assert torch.equal(source.table, built.soft_labels)
    with pytest.raises(ValueError, match="not those of this recipe"):
        WeakTable.build(config, _weak_file_setup(tmp_path, labels.roll(1)))

    # a file with sample ids serves the split's samples by id, in any order and from a larger set
    split_ids = torch.arange(50) * 3 + 7
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    extra = torch.tensor([1, 2])  # samples of the source that are not in this split
    save_soft_labels(tmp_path / "ids.pt", torch.cat([built.soft_labels[order], F.one_hot(extra, 10).float()]),
                     torch.cat([labels[order], extra]), sample_ids=torch.cat([split_ids[order], extra]))
    by_id = WeakTable.build(WeakConfig(kind="file", path="ids.pt", k=1), _weak_file_setup(tmp_path, labels, split_ids))
    assert by_id.report()["unreliability"] == pytest.approx(built.unreliability)
    batch = Batch(x=torch.zeros(3, 1), y=labels[[4, 0, 9]], sample_id=split_ids[[4, 0, 9]],
                  view=torch.zeros(3, dtype=torch.long))
    assert torch.equal(by_id.probs(batch), built.soft_labels[[4, 0, 9]])
    with pytest.raises(ValueError, match="labels of its rows differ"):
        WeakTable.build(WeakConfig(kind="file", path="ids.pt", k=1),
                        _weak_file_setup(tmp_path, (labels + 1) % 10, split_ids))
    with pytest.raises(ValueError, match="1 sample ids of this recipe's training split have no row"):
        WeakTable.build(WeakConfig(kind="file", path="ids.pt", k=1),
                        _weak_file_setup(tmp_path, labels, split_ids.index_fill(0, torch.tensor([3]), 999)))


def test_weak_file_paths_are_relative_to_the_recipe_folder(tmp_path):
    from softdistill.config import load_recipe

    folder = tmp_path / "recipes"
    (folder / "labels").mkdir(parents=True)
    raw = {"name": "wf", "student": "mlp", "epochs": 1, "method": {"name": "soft-label"},
           "soft_labels": {"source": "weak", "kind": "file", "path": "labels/w.pt"},
           "output_dir": str(tmp_path / "runs")}
    (folder / "wf.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"soft_labels.path: no file .*labels/w.pt \(paths in a recipe are relative "
                                          r"to the recipe's folder\)"):
        load_recipe(folder / "wf.yaml")
    save_soft_labels(folder / "labels" / "w.pt", torch.eye(10)[:3], torch.arange(3))
    recipe = load_recipe(folder / "wf.yaml")
    assert recipe.resolve_path(recipe.soft_labels.path) == folder / "labels" / "w.pt"
