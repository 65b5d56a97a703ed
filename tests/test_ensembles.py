"""Ensembles of soft-label sources (``source: ensemble``): every combine rule against its formula, what an
ensemble serves, every method trained from one, stores of ensembles and ensembles of stores replaying the
online ensemble bit for bit, exact resume, two processes, inspect, and every bad input refused when the
recipe loads."""

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from softdistill.checkpoint import load_checkpoint, save_checkpoint
from softdistill.cli import main
from softdistill.compatibility import ANY_VIEW, FULL_LOGITS, INPUT_GRAD, MIXED, ONLINE
from softdistill.config import ConfigError, load_recipe, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.losses import kd_loss
from softdistill.methods import method_class, methods
from softdistill.metrics import class_indicators
from softdistill.report.inspect import inspect_soft_labels
from softdistill.runner import label_recipe, run_recipe
from softdistill.soft_labels import FrozenTeacher
from softdistill.soft_labels.ensemble import CombineConfig, Ensemble, indicator_weights
from softdistill.store import Store
from softdistill.types import Batch
from test_store import recipe_worker

DATA = {"name": "synthetic", "val_size": 100, "batch_size": 50, "eval_batch_size": 50}
CROP_FLIP = {"crop_padding": 1, "hflip": True}
VIEWS = {"augment": CROP_FLIP, "views": 2, "view_seed": 0}


# ------------------------------------------------------------------------------------------ the rules by hand

def _members(count=3, features=6, classes=5):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(features, classes) for _ in range(count)]
    for i, layer in enumerate(layers):
        layer.weight.data *= 2.0 + i  # members of different confidence
    return [FrozenTeacher(layer) for layer in layers]


def _softmax(z, t=1.0):
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("combine", [{"temperature": 3.0}, {"average": "logits"}, {"weights": [1.0, 0.0, 3.0]},
                                     {"average": "logits", "weights": [2.0, 1.0, 1.0]},
                                     {"weights": "confidence", "temperature": 2.0}, {"weights": "confidence"}])
def test_every_combine_rule_is_its_formula(combine):
    members = _members()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    z = np.stack([m(x).double().numpy() for m in members])  # M x B x K
    rule = CombineConfig(**combine)
    out = Ensemble(members, rule)(Batch(x=x, y=y)).double().numpy()
    weights = rule.weights
    if weights == "confidence":  # CA-MKD: w_m = (1 - softmax_m(CE_m)) / (M - 1), CE at T = 1
        ce = -np.log(np.take_along_axis(_softmax(z), y.numpy()[None, :, None], 2))[..., 0]
        w = (1 - _softmax(ce.T).T) / (len(z) - 1)
    else:
        w = np.asarray(weights if isinstance(weights, list) else [1.0] * len(z))[:, None] * np.ones((1, 16))
        w = w / w.sum(0, keepdims=True)
    if rule.average == "logits":
        np.testing.assert_allclose(out, (w[..., None] * z).sum(0), rtol=1e-5, atol=1e-5)
    else:
        t = rule.temperature or 1.0
        expected = (w[..., None] * _softmax(z, t)).sum(0)
        np.testing.assert_allclose(_softmax(out, t), expected, rtol=1e-5, atol=1e-7)  # softmax(z / T) = p
        np.testing.assert_allclose(np.exp(out / t), expected, rtol=1e-5, atol=1e-7)  # returned as T log p


def test_members_of_other_precisions_combine_in_float32():
    """Under autocast a teacher online gives bfloat16 logits, a teacher cast to bfloat16 or a store float32."""
    plain, cast = _members(2)
    cast.prepare_inference(dtype=torch.bfloat16)  # its logits come back in float32
    x = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert plain(x).dtype == torch.bfloat16 and cast(x).dtype == torch.float32
        out = Ensemble([plain, cast], CombineConfig(temperature=2.0))(x)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


def test_kd_from_the_probability_mean_has_the_gradient_of_the_multi_teacher_loss():
    """sum_m w_m KL(p_m || q) and KL(sum_m w_m p_m || q) differ by the members' entropies, a constant: the
    student gets the same gradient, per sample, with CA-MKD's per-sample weights."""
    members = _members()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    ensemble = Ensemble(members, CombineConfig(weights="confidence", temperature=4.0))
    z = torch.stack([m(x) for m in members])
    w = ensemble.member_weights(z, y)  # M x B
    student = torch.randn(16, 5, requires_grad=True)
    (combined,) = torch.autograd.grad(kd_loss(student, ensemble(Batch(x=x, y=y)), 4.0), student)
    log_q = torch.log_softmax(student / 4.0, dim=1)
    per_member = [(torch.softmax(zm / 4.0, 1) * (torch.log_softmax(zm / 4.0, 1) - log_q)).sum(1) for zm in z]
    loss = 16.0 * (torch.stack(per_member) * w).sum() / 16  # T^2 = 16, batch mean
    (separate,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(combined, separate, rtol=1e-4, atol=1e-6)


def test_indicator_weights_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    eye = torch.eye(3)
    right = eye[labels]  # always right: Delta_1(a) = gamma_1(a) = 0 on every class
    wrong_on_0 = right.clone()
    wrong_on_0[:2] = eye[1]  # class 0 always taken for class 1: Delta_1(0) = 1, gamma_1(0) = 1
    half = right.clone()
    half[2] = eye[0]  # class 1 right once in two: Delta_1(1) = 0.5, gamma_1(1) = 0.5
    delta, gamma = class_indicators(half, labels, 1)
    assert delta.tolist() == [0.0, 0.5, 0.0] and gamma.tolist() == [0.0, 0.5, 0.0]
    weights = indicator_weights([right, wrong_on_0, half], labels, 1)
    # margins max(0, 1 - Delta - gamma): class 0: 1, 0, 1; class 1: 1, 1, 0; class 2: 1, 1, 1
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5, 1 / 3], [0.0, 0.5, 1 / 3], [0.5, 0.0, 1 / 3]]))
    all_fail = indicator_weights([wrong_on_0, wrong_on_0], labels, 1)
    torch.testing.assert_close(all_fail[:, 0], torch.tensor([0.5, 0.5]))  # no member keeps clear: equal


# ------------------------------------------------------------------------------------------ what it serves

def _section(*members, **combine):
    return {"source": "ensemble", "members": list(members), "combine": combine}


TEACHER = {"source": "teacher", "checkpoint": "a.pt"}
CACHE = {"source": "cache", "checkpoint": "a.pt"}
WEAK = {"source": "weak", "kind": "noise"}
STORE = {"source": "store", "path": "store"}


@pytest.mark.parametrize("members, combine, serves", [
    ((TEACHER, TEACHER), {}, {ONLINE, INPUT_GRAD, MIXED, ANY_VIEW, FULL_LOGITS}),
    ((TEACHER, TEACHER), {"weights": "confidence"}, {MIXED, ANY_VIEW, FULL_LOGITS}),
    ((TEACHER, STORE), {}, {MIXED, FULL_LOGITS}),
    ((TEACHER, WEAK), {"weights": [1, 2]}, {ANY_VIEW}),
    ((TEACHER, CACHE), {}, {FULL_LOGITS}),
    ((TEACHER, _section(TEACHER, WEAK)), {}, {ANY_VIEW}),
])
def test_an_ensemble_serves_what_all_its_members_serve(members, combine, serves):
    raw = {"name": "e", "student": "mlp", "epochs": 1, "data": DATA, "method": {"name": "kd"},
           "soft_labels": _section(*members, **combine)}
    assert recipe_from_dict(raw).soft_labels.serves() == serves


def test_what_an_ensemble_cannot_serve_names_the_member_or_the_rule():
    base = {"name": "e", "student": "mlp", "epochs": 1, "data": DATA}
    with pytest.raises(ConfigError, match=r"method 'hard' needs gradients of the soft labels with respect to the input, "
                                          r"which soft_labels.source 'ensemble' cannot serve \(its soft_labels.members\[1\] "
                                          r"\(cache\) cannot\)"):
        recipe_from_dict({**base, "method": {"name": "hard"}, "soft_labels": _section(TEACHER, CACHE)})
    with pytest.raises(ConfigError, match=r"cannot serve \(combine.weights: confidence reads the true labels of a batch"):
        recipe_from_dict({**base, "method": {"name": "hard"}, "soft_labels": _section(TEACHER, TEACHER,
                                                                                      weights="confidence")})
    mixed = {**base, "method": {"name": "ida"}, "data": {**DATA, "augment": {"mix": "mixup"}}}
    with pytest.raises(ConfigError, match=r"cannot serve soft labels of mixed \(mixup / cutmix\) views \(its "
                                          r"soft_labels.members\[1\] \(weak\) cannot\)"):
        recipe_from_dict({**mixed, "soft_labels": _section(TEACHER, WEAK)})
    with pytest.raises(ConfigError, match=r"soft_labels.combine.weights: indicators weighs each member by the true label "
                                          r"of a sample, and soft labels of mixed \(mixup / cutmix\) views have two"):
        recipe_from_dict({**mixed, "soft_labels": _section(TEACHER, TEACHER, weights="indicators")})
    with pytest.raises(ConfigError, match=r"'ensemble' \(its soft_labels.members\[1\] \(ensemble\) cannot\) holds the "
                                          r"soft labels of a fixed set of views"):
        recipe_from_dict({**base, "method": {"name": "kd"}, "data": {**DATA, "augment": CROP_FLIP},
                          "soft_labels": _section(TEACHER, _section(TEACHER, CACHE))})


# ------------------------------------------------------------------------------------------ training

def write_yaml(path, raw):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two MLP teachers of the synthetic data (other seeds and lengths), trained once for this module: their
    recipes and checkpoints."""
    folder = tmp_path_factory.mktemp("teachers")
    found = {}
    for name, seed, epochs in (("ta", 0, 2), ("tb", 1, 3)):
        raw = {"name": name, "student": "mlp", "epochs": epochs, "seed": seed, "data": DATA,
               "output_dir": str(folder / "runs"), "train": {"device": "cpu"}}
        recipe = load_recipe(write_yaml(folder / f"{name}.yaml", raw))
        run_recipe(recipe, quiet=True)
        found[name] = (folder / f"{name}.yaml", recipe.run_dir / "best.pt")
    return found


def _teacher(teachers, name, source="teacher"):
    return {"source": source, "checkpoint": str(teachers[name][1])}


def _student(folder, soft_labels, name="s", method=None, data=None, **top):
    raw = {"name": name, "student": "mlp", "epochs": 2, "seed": 3, "data": {**DATA, **(data or {})},
           "method": method or {"name": "kd", "alpha": 0.7}, "soft_labels": soft_labels,
           "output_dir": str(folder / "runs"), "train": {"device": "cpu"}, **top}
    return write_yaml(folder / f"{name}.yaml", raw)


def weights(run_dir):
    return load_checkpoint(run_dir / "last.pt")["state_dict"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


#: what a method needs beyond its defaults to run from an ensemble of online teachers on the synthetic data
METHOD_DATA = {"ida": {"augment": {"mix": "mixup"}}, "mlkd": {"augment": {"hflip": True}, "views_per_step": 2}}


@pytest.mark.parametrize("method", sorted(name for name in methods.names()
                                          if method_class(name).uses_soft_labels
                                          and method_class(name).__module__.startswith("softdistill.")))
def test_every_method_that_learns_from_soft_labels_trains_from_an_ensemble(tmp_path, teachers, method):
    """Found in the registry: a method added later is trained here too, with nothing made for ensembles."""
    cls = method_class(method)
    combine = {} if cls.mixed_views or cls.source_needs else {"weights": "confidence", "temperature": 4.0}
    soft_labels = _section(_teacher(teachers, "ta"), _teacher(teachers, "tb"), **combine)
    recipe = load_recipe(_student(tmp_path, soft_labels, method={"name": method}, data=METHOD_DATA.get(method),
                                  epochs=1))
    assert run_recipe(recipe, quiet=True)["finished"]
    report = json.loads((recipe.run_dir / "soft_labels.json").read_text())
    assert len(report["members"]) == 2 and report["combine"]["weights"] == combine.get("weights", "equal")


def _label(folder, name, soft_labels, **data):
    raw = {"name": name, "data": {**DATA, **VIEWS, **data}, "soft_labels": soft_labels, "shard_samples": 128,
           "output_dir": str(folder / "runs"), "train": {"device": "cpu"}}
    return write_yaml(folder / f"{name}.yaml", raw)


def test_a_store_of_an_ensemble_and_an_ensemble_of_stores_replay_the_online_ensemble_bit_for_bit(tmp_path, teachers):
    """Every epoch shows each sample a view the stores hold (two views, two epochs).  The premise, asserted
    first as for one teacher: a member's logits of a sample do not depend on its batch companions."""
    online_members = [_teacher(teachers, "ta"), _teacher(teachers, "tb")]
    combine = {"weights": "confidence", "temperature": 4.0}
    for name, member in zip(("a", "b"), online_members):
        _label(tmp_path, name, member)
    _label(tmp_path, "ensemble", _section(*online_members, **combine))
    stored_members = [{"source": "store", "recipe": "a.yaml"}, {"source": "store", "recipe": "b.yaml"}]
    runs = {"online": _section(*online_members, **combine),
            "store-of-ensemble": {"source": "store", "recipe": "ensemble.yaml"},
            "ensemble-of-stores": _section(*stored_members, **combine)}
    for name, soft_labels in runs.items():
        run_recipe(load_recipe(_student(tmp_path, soft_labels, name=name, data=VIEWS)), quiet=True)
    data = prepare_data("synthetic", val_size=100)
    loader = BatchLoader(data.train, 50, BatchTransform(data.mean, data.std), shuffle=True,
                         plan=load_recipe(tmp_path / "online.yaml").view_plan, seed=3)
    store = Store(tmp_path / "runs" / "a" / "seed0")
    model = FrozenTeacher(_model(teachers["ta"][1]))
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        for batch in loader:
            assert torch.equal(model(batch), store.logits(store.rows_of(batch.sample_id), batch.view))
    online = weights(tmp_path / "runs" / "online" / "seed3")
    assert same_weights(online, weights(tmp_path / "runs" / "store-of-ensemble" / "seed3"))
    assert same_weights(online, weights(tmp_path / "runs" / "ensemble-of-stores" / "seed3"))
    labeller = Store(tmp_path / "runs" / "ensemble" / "seed0").manifest["teacher"]
    assert labeller["model"] is None and labeller["soft_labels"]["combine"]["weights"] == "confidence"
    assert [f["field"] for f in labeller["files"]] == ["soft_labels.members[0].checkpoint",
                                                       "soft_labels.members[1].checkpoint"]


def _model(checkpoint):
    from softdistill.checkpoint import model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(checkpoint)).eval()


def test_a_run_from_an_ensemble_resumes_exactly(tmp_path, teachers, run_until_interrupted):
    """Indicator weights measured when the source is built, a cached member: interrupted after epoch 1,
    resumed, the same weights as an uninterrupted run."""
    soft_labels = _section(_teacher(teachers, "ta"), _teacher(teachers, "tb", "cache"), weights="indicators", k=2)
    full = load_recipe(_student(tmp_path / "full", soft_labels))
    run_recipe(full, quiet=True)
    cut = load_recipe(_student(tmp_path / "cut", soft_labels))
    run_until_interrupted(cut, 2)
    run_recipe(cut, resume=True, quiet=True)
    assert same_weights(weights(full.run_dir), weights(cut.run_dir))
    report = json.loads((full.run_dir / "soft_labels.json").read_text())
    assert np.allclose(np.asarray(report["class_weights"]).sum(0), 1.0)  # per class, over the members


def test_two_processes_train_from_an_ensemble_what_one_does(tmp_path, teachers, free_port):
    torch.set_num_threads(1)
    soft_labels = _section(_teacher(teachers, "ta"), _teacher(teachers, "tb"), weights="confidence", temperature=4.0)
    single = load_recipe(_student(tmp_path / "one", soft_labels, data=VIEWS))
    run_recipe(single, quiet=True)
    two = _student(tmp_path / "two", soft_labels, data=VIEWS)
    mp.start_processes(recipe_worker, args=(2, free_port, str(two)), nprocs=2, join=True, start_method="spawn")
    a, b = weights(single.run_dir), weights(load_recipe(two).run_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ bad input

def _edited_checkpoint(source, target, **changes):
    """A copy of checkpoint ``source`` whose metadata says it was trained on other data (``changes``)."""
    payload = load_checkpoint(source)
    payload["data"] = {**payload["data"], **changes.get("data", {})}
    payload["model"] = {**payload["model"], **changes.get("model", {})}
    save_checkpoint(payload, target)
    return str(target)


def _refused(tmp_path, capsys, recipe_file, *expected):
    """``softdistill train RECIPE`` fails with one error naming ``expected``, and writes nothing."""
    assert main(["train", str(recipe_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("softdistill train: error: ") and "Traceback" not in err and "\n\n" not in err.strip()
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "runs").exists()  # nothing trained, labelled or written


def test_bad_ensembles_are_refused_when_the_recipe_loads(tmp_path, teachers, capsys):
    a, b = _teacher(teachers, "ta"), _teacher(teachers, "tb")
    cases = {
        "one": (_section(a), "soft_labels.members: an ensemble needs two or more members, got 1"),
        "none": (_section(), "soft_labels.members: an ensemble needs two or more members, got 0"),
        "negative": (_section(a, b, weights=[1.0, -0.5]), "soft_labels.combine.weights: fixed weights must be finite "
                                                          "and non-negative"),
        "length": (_section(a, b, weights=[1.0, 1.0, 1.0]), "combine.weights: 3 weights for 2 members"),
        "zero": (_section(a, b, weights=[0.0, 0.0]), "fixed weights must not sum to zero"),
        "member": (_section(a, {"source": "teacher"}), "soft_labels.members[1]: give exactly one of"),
        "labels": (_section(a, {"source": "teacher", "checkpoint": _edited_checkpoint(
            teachers["tb"][1], tmp_path / "digits.pt", data={"name": "digits", "class_names": list("0123456789")})}),
            "soft_labels.members[1].checkpoint:", "the teacher was trained on other data (data set 'digits' there, "
            "'synthetic' here; class names"),
        "classes": (_section({"source": "teacher", "checkpoint": _edited_checkpoint(
            teachers["ta"][1], tmp_path / "three.pt", data={"class_names": ["x", "y", "z"]},
            model={"num_classes": 3})}, b), "soft_labels.members[0].checkpoint:", "class names ('x', 'y', 'z') there"),
    }
    for name, (soft_labels, *expected) in cases.items():
        _refused(tmp_path, capsys, _student(tmp_path, soft_labels, name=name), *expected)


def test_an_ensemble_nested_in_itself_is_refused(tmp_path, teachers, capsys):
    folder = tmp_path / "recipes"
    folder.mkdir()
    alias = folder / "alias.yaml"  # a YAML alias: the ensemble is its own member
    alias.write_text(f"name: alias\nstudent: mlp\nepochs: 1\ndata: {{name: synthetic, val_size: 100}}\n"
                     f"method: {{name: kd}}\noutput_dir: {tmp_path / 'runs'}\n"
                     f"soft_labels: &me {{source: ensemble, members: [*me, {{source: teacher, checkpoint: "
                     f"{teachers['ta'][1]}}}]}}\n")
    _refused(tmp_path, capsys, alias, "soft_labels.members[0].members: the ensemble is nested in itself")
    # a label recipe whose ensemble reads the store that recipe writes
    _label(folder, "loop", _section(_teacher(teachers, "ta"), {"source": "store", "recipe": "loop.yaml"}))
    with pytest.raises(ConfigError, match=r"soft_labels.members\[1\].recipe makes a cycle of recipes: .*loop.yaml -> "
                                          r".*loop.yaml"):
        load_recipe(folder / "loop.yaml")
    assert main(["label", str(folder / "loop.yaml"), "--quiet"]) == 2 and "makes a cycle" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_member_stores_of_other_views_or_data_are_named(tmp_path, teachers, capsys):
    a = _teacher(teachers, "ta")
    folder = tmp_path / "recipes"
    _label(folder, "flips", a, augment={"hflip": True})
    _label(folder, "fewer", a, per_class=20)
    stores = {"views": ({"source": "store", "recipe": "flips.yaml"}, "soft_labels.members[1].recipe:",
                        "the store of label recipe flips.yaml holds the views of another view plan (crop_padding 0 in "
                        "the store, 1 in the recipe)"),
              "data": ({"source": "store", "recipe": "fewer.yaml"}, "soft_labels.members[1].recipe:",
                       "the store of label recipe fewer.yaml is made for other data (data.per_class: 20 in the label "
                       "recipe, None here)")}
    for name, (store, *expected) in stores.items():
        _refused(tmp_path, capsys, _student(folder, _section(a, store), name=name, data=VIEWS,
                                            output_dir=str(tmp_path / "runs")), *expected)
    # a store named by its folder is checked as it opens, before the run writes anything: the member is named
    label_recipe(load_recipe(folder / "flips.yaml", [f"output_dir={tmp_path / 'stores'}"]), quiet=True)
    folder_store = {"source": "store", "path": str(tmp_path / "stores" / "flips" / "seed0")}
    _refused(tmp_path, capsys, _student(folder, _section(a, folder_store), name="folder", data=VIEWS,
                                        output_dir=str(tmp_path / "runs")),
             "soft_labels.members[1] (store): store ", "holds the views of another view plan")


# ------------------------------------------------------------------------------------------ inspect

def test_inspect_reports_several_teachers_and_their_ensemble_side_by_side(tmp_path, teachers, capsys):
    a, b = (teachers[name][1] for name in ("ta", "tb"))
    out = tmp_path / "report"
    assert main(["inspect", str(a), str(b), "--output", str(out), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"member {a}: top-1 accuracy" in printed and f"member {b}: top-1 accuracy" in printed
    summary = json.loads((out / "report.json").read_text())
    assert summary["source"]["kind"] == "sources" and [m["name"] for m in summary["members"]] == [str(a), str(b)]
    # each member's numbers are those of its teacher alone, on the same rows
    alone = inspect_soft_labels(a, output_dir=tmp_path / "alone", device="cpu", quiet=True).summary
    assert summary["members"][0]["indicators"] == alone["indicators"]
    assert summary["members"][0]["soft_labels"]["accuracy"] == alone["soft_labels"]["accuracy"]
    for row in [*summary["members"], summary]:
        assert row["able_to_teach"] == any(r["sum"] < 1 for r in row["indicators"])
    md = (out / "report.md").read_text()
    assert "## Members and ensemble" in md and "| **ensemble** |" in md and "able to teach" in md
    assert (out / "mixup.png").is_file()  # an ensemble of online teachers labels new (mixed) images


def test_inspect_reads_an_ensemble_recipe_through_its_sources(tmp_path, teachers, capsys):
    """Members of any source (a store among them), read as a run reads them, at the ensemble's temperature."""
    a = _teacher(teachers, "ta")
    _label(tmp_path, "a", a)
    recipe = _student(tmp_path, _section(a, {"source": "store", "recipe": "a.yaml"}, temperature=2.0,
                                         weights="confidence"), name="mix", data=VIEWS)
    result = inspect_soft_labels(recipe, output_dir=tmp_path / "report", quiet=True)
    s = result.summary
    assert s["source"]["kind"] == "recipe" and s["rows"] == 2 * 500 and s["data"]["temperature"] == 2.0
    online, stored = s["members"]
    assert online["name"].startswith("members[0] (teacher") and stored["name"].startswith("members[1] (store")
    assert online["indicators"] == stored["indicators"]  # the store holds the teacher's logits of the same views
    assert "read at T = 2" in (tmp_path / "report" / "report.md").read_text()
    assert main(["inspect", str(recipe), "--split", "test", "--output", str(tmp_path / "r2")]) == 2
    assert "holds soft labels of the training samples only" in capsys.readouterr().err
