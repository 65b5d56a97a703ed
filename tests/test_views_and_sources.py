"""Addressable views, one soft-label source interface, the compatibility rules, plugins, wrapping."""

import json

import pytest
import torch
import yaml

import softdistill.build as build
from softdistill.checkpoint import load_checkpoint, model_from_checkpoint
from softdistill.config import ConfigError, load_recipe, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.samples import TensorSet
from softdistill.data.prepare import prepare_data
from softdistill.data.views import ViewPlan
from softdistill.runtime import DistContext
from softdistill.engine.wrap import unwrap, wrap
from softdistill.experiments import compare
from softdistill.hashing import hash_uniform
from softdistill.runner import run_recipe
from softdistill.soft_labels.table import save_soft_labels

DATA = {"name": "synthetic", "val_size": 100, "batch_size": 50}


def images(n=40, c=1, h=6, w=6):
    return TensorSet(torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0),
                               dtype=torch.uint8), torch.arange(n) % 4, torch.arange(n) * 3 + 11)


def plain_transform():
    return BatchTransform([0.0], [1.0])


# ------------------------------------------------------------------------------------------ views

@pytest.mark.parametrize("plan", [ViewPlan(seed=5, crop_padding=2, hflip=True),
                                  ViewPlan(seed=5, crop_padding=1, mix="mixup", mix_alpha=0.4),
                                  ViewPlan(seed=5, hflip=True, mix="cutmix")])
def test_a_view_is_the_same_in_any_order_and_batch_split(plan):
    data = images()
    rows = torch.arange(len(data))
    views = torch.full((len(data),), 3)
    whole = BatchLoader(data, 40, plain_transform(), plan=plan).batch_of(rows, views)
    backwards = rows.flip(0)
    loader = BatchLoader(data, 40, plain_transform(), plan=plan)
    parts = [loader.batch_of(chunk, views[:len(chunk)]) for chunk in backwards.split(7)]
    x = torch.cat([p.x for p in parts]).flip(0)
    torch.testing.assert_close(x, whole.x, rtol=0, atol=0)
    assert torch.equal(torch.cat([p.sample_id for p in parts]).flip(0), whole.sample_id)
    if plan.mixes:
        assert torch.equal(torch.cat([p.lam for p in parts]).flip(0), whole.lam)
        assert torch.equal(torch.cat([p.y_b for p in parts]).flip(0), whole.y_b)
    other = BatchLoader(data, 40, plain_transform(), plan=ViewPlan(**{**plan.__dict__, "seed": 6}))
    assert not torch.equal(other.batch_of(rows, views).x, whole.x)  # the seed matters
    assert not torch.equal(loader.batch_of(rows, views + 1).x, whole.x)  # and so does the view


def test_view_parameters_are_spread_as_drawn():
    plan = ViewPlan(seed=1, crop_padding=2, hflip=True, mix="mixup", mix_alpha=0.5)
    ids = torch.arange(20000)
    views = torch.zeros_like(ids)
    geometry = plan.geometry(ids, views)
    counts = torch.bincount(geometry.offsets.flatten(), minlength=5).double() / (2 * len(ids))
    assert counts.sub(0.2).abs().max() < 0.01  # offsets uniform over 0..2p
    assert abs(geometry.flip.double().mean().item() - 0.5) < 0.01
    lam = plan.mixing(ids, views, ids, len(ids), (6, 6)).lam.double()
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 1/8 for a = 0.5
    assert abs(lam.mean().item() - 0.5) < 0.01 and abs(lam.var().item() - 0.125) < 0.005
    u = hash_uniform(3, ids, 0)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


def test_mixed_views_are_the_partner_formula_and_never_the_sample_itself():
    data = images()
    plan = ViewPlan(seed=2, mix="mixup")
    loader = BatchLoader(data, 40, plain_transform(), plan=plan)
    rows, views = torch.arange(len(data)), torch.zeros(len(data), dtype=torch.long)
    batch = loader.batch_of(rows, views)
    partner = plan.mixing(data.ids, views, rows, len(data), (6, 6)).partner
    assert not bool((partner == rows).any())
    x = data.images.float() / 255
    lam = batch.lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(batch.x, lam * x + (1 - lam) * x[partner])
    assert torch.equal(batch.y_b, data.labels[partner])
    cut = BatchLoader(data, 40, plain_transform(), plan=ViewPlan(seed=2, mix="cutmix")).batch_of(rows, views)
    from_partner = (cut.x != x).flatten(1).float().mean(1)  # pixels that differ come from the partner box
    assert bool((from_partner <= 1 - cut.lam + 1e-6).all()) and bool(((cut.lam >= 0) & (cut.lam <= 1)).all())


def test_which_view_an_epoch_shows():
    assert [ViewPlan(hflip=True, views=3).view_in_epoch(e) for e in range(1, 8)] == [0, 1, 2, 0, 1, 2, 0]
    assert [ViewPlan(hflip=True, views=0).view_in_epoch(e) for e in range(1, 5)] == [0, 1, 2, 3]
    assert ViewPlan(views=0).view_in_epoch(9) == 0 and ViewPlan().distinct_views == 1  # no augmentation: one view
    assert ViewPlan(hflip=True, views=0).distinct_views is None and ViewPlan(hflip=True, views=4).distinct_views == 4
    # the first V epochs of a fresh-view plan show exactly the V views of a fixed plan
    data = images()
    fixed = BatchLoader(data, 8, plain_transform(), plan=ViewPlan(seed=4, crop_padding=1, views=2), shuffle=True)
    fresh = BatchLoader(data, 8, plain_transform(), plan=ViewPlan(seed=4, crop_padding=1, views=0), shuffle=True)
    for epoch in (1, 2):
        fixed.set_epoch(epoch)
        fresh.set_epoch(epoch)
        assert all(torch.equal(a.x, b.x) for a, b in zip(fixed, fresh))
    with pytest.raises(ValueError, match="Input should be 'none', 'mixup' or 'cutmix'"):
        ViewPlan(mix="blend")


def test_sample_ids_survive_a_change_of_validation_split_and_subset():
    a = prepare_data("digits", val_size=100, split_seed=0)
    b = prepare_data("digits", val_size=300, per_class=50, split_seed=1)
    full_b = {int(i): row for row, i in enumerate(b.train.ids)}
    common = [(row, full_b[int(i)]) for row, i in enumerate(a.train.ids) if int(i) in full_b]
    assert len(common) > 100
    for row_a, row_b in common:
        assert torch.equal(a.train.images[row_a], b.train.images[row_b])
        assert a.train.labels[row_a] == b.train.labels[row_b]
    # an id is the row of the official training split: the validation split is made of the others
    assert set(a.train.ids.tolist()).isdisjoint(a.val.ids.tolist())
    assert len(set(a.train.ids.tolist()) | set(a.val.ids.tolist())) == len(a.train) + len(a.val)


# ------------------------------------------------------------------------------------------ compatibility

METHODS = ["ce", "ls", "kd", "tfkd-reg", "wsl", "sbt", "soft-label", "ida", "hard"]
SOURCES = [None, "teacher", "cache", "weak"]
# accepted (method, source) pairs for views that are not mixed and a fixed number of views; written
# out by hand, not derived from the rules
ACCEPTED_SINGLE = {("ce", None), ("ls", None), ("tfkd-reg", None), ("sbt", None),
                   ("kd", "teacher"), ("kd", "cache"), ("kd", "weak"),
                   ("wsl", "teacher"), ("wsl", "cache"), ("wsl", "weak"),
                   ("soft-label", "teacher"), ("soft-label", "cache"), ("soft-label", "weak"),
                   ("hard", "teacher")}
ACCEPTED_MIXED = {("ida", "teacher")}


def _compat_recipe(method, source, augment, views=0):
    raw = {"name": "c", "student": "mlp", "epochs": 1, "data": {**DATA, "augment": augment, "views": views},
           "method": {"name": method}}
    if source == "weak":
        raw["soft_labels"] = {"source": "weak", "kind": "noise"}
    elif source is not None:
        raw["soft_labels"] = {"source": source, "checkpoint": "teacher.pt"}
    return recipe_from_dict(raw)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("source", SOURCES)
def test_compatibility_table(method, source):
    cases = [({"hflip": True}, 2, ACCEPTED_SINGLE), ({"mix": "mixup"}, 0, ACCEPTED_MIXED)]
    for augment, views, accepted in cases:
        if (method, source) in accepted:
            _compat_recipe(method, source, augment, views)
        else:
            with pytest.raises(ConfigError):
                _compat_recipe(method, source, augment, views)


def test_compatibility_messages_say_what_to_do():
    with pytest.raises(ConfigError, match=r"source 'weak' cannot serve soft labels of mixed \(mixup / cutmix\) views"):
        _compat_recipe("ida", "weak", {"mix": "mixup"})
    with pytest.raises(ConfigError, match="source 'cache' cannot serve soft labels of mixed"):
        _compat_recipe("ida", "cache", {"mix": "cutmix"}, views=3)
    with pytest.raises(ConfigError, match="method 'ida' learns from mixed views: set data.augment.mix"):
        _compat_recipe("ida", "teacher", {})
    with pytest.raises(ConfigError, match="method 'hard' needs gradients of the soft labels with respect to the input"):
        _compat_recipe("hard", "cache", {})
    with pytest.raises(ConfigError, match="draws a fresh view every epoch: set data.views"):
        _compat_recipe("kd", "cache", {"crop_padding": 2}, views=0)
    with pytest.raises(ConfigError, match="mixes views, but method 'kd' learns from one label per sample"):
        _compat_recipe("kd", "teacher", {"mix": "mixup"})
    _compat_recipe("kd", "cache", {}, views=0)  # no augmentation: one view, the clean image, always cacheable


def test_old_sections_get_a_one_line_message_saying_what_to_write():
    base = {"name": "c", "student": "mlp", "epochs": 1, "method": {"name": "kd"}}
    with pytest.raises(ConfigError, match=r"teacher: the 'teacher' section is now soft_labels: \{source: teacher"):
        recipe_from_dict({**base, "teacher": {"recipe": "t.yaml", "cache": True}})
    with pytest.raises(ConfigError, match=r"weak: the 'weak' section is now soft_labels: \{source: weak, kind"):
        recipe_from_dict({**base, "method": {"name": "soft-label"}, "weak": {"kind": "noise"}})
    with pytest.raises(ConfigError, match=r"method.mix moved to the data section: write data.augment: \{mix"):
        recipe_from_dict({**base, "method": {"name": "ida", "mix": "mixup"},
                          "soft_labels": {"source": "teacher", "checkpoint": "t.pt"}})
    with pytest.raises(ConfigError, match="soft_labels.source: unknown soft-label source 'teachr'; did you mean 'teacher'"):
        recipe_from_dict({**base, "soft_labels": {"source": "teachr"}})


def test_compare_fails_in_seconds_before_training_any_teacher(tmp_path):
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"name": "t", "student": "mlp", "epochs": 50, "data": DATA}))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "good", "student": "mlp", "epochs": 1, "data": DATA, "method": {"name": "kd"},
                                    "soft_labels": {"source": "teacher", "recipe": "teacher.yaml"}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "student": "mlp", "epochs": 1, "method": {"name": "ida"},
                                   "data": {**DATA, "augment": {"mix": "mixup"}},
                                   "soft_labels": {"source": "weak", "kind": "noise"}}))
    with pytest.raises(ConfigError, match="cannot serve soft labels of mixed"):
        compare([good, bad], seeds=1, output_dir=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()
    missing = tmp_path / "missing.yaml"
    missing.write_text(good.read_text().replace("teacher.yaml", "nowhere/teacher.yaml"))
    with pytest.raises(ConfigError, match=r"soft_labels.recipe: no file .*nowhere/teacher.yaml"):
        load_recipe(missing)
    broken_teacher = tmp_path / "broken.yaml"
    broken_teacher.write_text(yaml.safe_dump({"name": "t", "student": "mlp", "epochs": 1, "optim": {"lr": -1}}))
    (tmp_path / "uses_broken.yaml").write_text(good.read_text().replace("teacher.yaml", "broken.yaml"))
    with pytest.raises(ConfigError, match=r"broken.yaml(.|\n)*optim.lr"):
        load_recipe(tmp_path / "uses_broken.yaml")


# ------------------------------------------------------------------------------------------ sources

def _kd_recipe(tmp_path, source, **data):
    teacher = tmp_path / "teacher.yaml"
    if not teacher.exists():
        teacher.write_text(yaml.safe_dump({"name": "t", "student": "mlp", "epochs": 2, "data": DATA,
                                           "train": {"device": "cpu"}}))
    raw = {"name": f"kd-{source}", "student": "mlp", "epochs": 2, "seed": 3, "data": {**DATA, **data},
           "method": {"name": "kd", "alpha": 0.7}, "soft_labels": {"source": source, "recipe": "teacher.yaml"},
           "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    return recipe_from_dict(raw, recipe_file=str(tmp_path / f"kd-{source}.yaml"))


def test_a_cache_of_augmented_views_replays_the_online_teacher(tmp_path):
    """With a fixed number of views, KD from the cache equals KD with the teacher run online on the same views."""
    views = {"augment": {"crop_padding": 1, "hflip": True}, "views": 2}
    online = run_recipe(_kd_recipe(tmp_path, "teacher", **views), quiet=True)
    cached = run_recipe(_kd_recipe(tmp_path, "cache", **views), quiet=True)
    a = load_checkpoint(tmp_path / "runs" / "kd-teacher" / "seed3" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "runs" / "kd-cache" / "seed3" / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert online["test_acc_last"] == pytest.approx(cached["test_acc_last"], abs=0.51)


def test_a_soft_label_file_is_read_by_sample_id_and_refused_for_other_data(tmp_path):
    data = prepare_data("synthetic", val_size=100)
    probs = torch.softmax(torch.randn(len(data.train), 10, generator=torch.Generator().manual_seed(0)), dim=1)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))  # rows in any order
    save_soft_labels(tmp_path / "soft.pt", probs[order], data.train.labels[order], sample_ids=data.train.ids[order])
    raw = {"name": "s", "student": "mlp", "epochs": 1, "data": DATA, "method": {"name": "soft-label", "loss": "soft_ce"},
           "soft_labels": {"source": "weak", "kind": "file", "path": "soft.pt", "k": 1},
           "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    run_recipe(recipe_from_dict(raw, recipe_file=str(tmp_path / "s.yaml")), quiet=True)
    report = json.loads((tmp_path / "runs" / "s" / "seed0" / "soft_labels.json").read_text())
    assert report["kind"] == "file" and report["samples"] == len(data.train)
    subset = {**raw, "name": "s1", "data": {**DATA, "val_size": 200}}  # a smaller split finds all its rows
    run_recipe(recipe_from_dict(subset, recipe_file=str(tmp_path / "s.yaml")), quiet=True)
    keep = order[:len(order) - 100]
    save_soft_labels(tmp_path / "part.pt", probs[keep], data.train.labels[keep], sample_ids=data.train.ids[keep])
    other = {**raw, "name": "s2", "soft_labels": {**raw["soft_labels"], "path": "part.pt"}}
    with pytest.raises(ValueError, match=r"100 sample ids of this recipe's training split have no row"):
        run_recipe(recipe_from_dict(other, recipe_file=str(tmp_path / "s.yaml")), quiet=True)
    assert not (tmp_path / "runs" / "s2").exists()


# ------------------------------------------------------------------------------------------ plugins

PLUGIN = '''
import torch.nn.functional as F
from typing import Literal
from softdistill.methods import Method, MethodConfig, register_method
from softdistill.types import StepOutput


@register_method
class HalfCrossEntropy(Method):
    class Config(MethodConfig):
        name: Literal["half-ce"] = "half-ce"

    def forward(self, batch):
        logits = self.student(batch.x)
        return StepOutput(logits, {"half_ce": 0.5 * F.cross_entropy(logits, batch.y)})
'''


def test_a_method_registered_by_a_plugin_trains(tmp_path, monkeypatch):
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    (tmp_path / "twice.py").write_text(PLUGIN.replace("class HalfCrossEntropy", "class Again"))
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {"name": "p", "student": "mlp", "epochs": 1, "data": DATA, "plugins": ["my_methods"],
           "method": {"name": "half-ce"}, "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    summary = run_recipe(recipe_from_dict(raw), quiet=True)
    records = (tmp_path / "runs" / "p" / "seed0" / "metrics.jsonl").read_text()
    assert summary["finished"] and "train/half_ce" in records
    with pytest.raises(ConfigError, match="plugin module 'broken' does not import: No module named 'not_a_module_anywhere'"):
        recipe_from_dict({**raw, "plugins": ["broken"]})
    with pytest.raises(ConfigError, match="plugin module 'twice': method 'half-ce' is already registered"):
        recipe_from_dict({**raw, "plugins": ["twice"]})


# ------------------------------------------------------------------------------------------ wrapping

def test_a_compiled_student_checkpoints_with_clean_keys_and_reloads(tmp_path, monkeypatch):
    compiled = []

    def recording_wrap(module, ctx, **options):
        out = wrap(module, ctx, **options)
        compiled.append(out)
        return out

    monkeypatch.setattr(build, "wrap", recording_wrap)
    raw = {"name": "w", "student": "mlp", "epochs": 1, "data": DATA, "output_dir": str(tmp_path / "runs"),
           "train": {"device": "cpu", "compile": {"backend": "eager"}}}
    run_recipe(recipe_from_dict(raw), quiet=True)
    assert compiled and hasattr(compiled[0], "_orig_mod") and unwrap(compiled[0]) is compiled[0]._orig_mod
    payload = load_checkpoint(tmp_path / "runs" / "w" / "seed0" / "best.pt")
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in payload["state_dict"])
    model_from_checkpoint(payload)  # loads into a plain model
    assert unwrap(wrap(torch.nn.Linear(2, 2), DistContext())).__class__ is torch.nn.Linear


def test_a_run_on_mixed_views_resumes_exactly(tmp_path, run_until_interrupted):
    """IDA on cutmix views with crop and flip, interrupted after epoch 1, resumes to the same weights."""
    def recipe(folder):
        raw = {"name": "ida-resume", "student": "mlp", "epochs": 2, "seed": 1,
               "data": {**DATA, "augment": {"crop_padding": 1, "hflip": True, "mix": "cutmix"}},
               "method": {"name": "ida", "correction": "replace"},
               "soft_labels": {"source": "teacher", "recipe": "teacher.yaml"},
               "output_dir": str(folder / "runs"), "train": {"device": "cpu"}}
        (folder / "teacher.yaml").parent.mkdir(parents=True, exist_ok=True)
        (folder / "teacher.yaml").write_text(yaml.safe_dump({"name": "t", "student": "mlp", "epochs": 1, "data": DATA}))
        return recipe_from_dict(raw, recipe_file=str(folder / "ida.yaml"))

    full = recipe(tmp_path / "full")
    run_recipe(full, quiet=True)
    cut = recipe(tmp_path / "cut")
    run_until_interrupted(cut, 2)
    run_recipe(cut, resume=True, quiet=True)
    a, b = (load_checkpoint(r.run_dir / "last.pt")["state_dict"] for r in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
