"""The logit methods as recipes run them: from every soft-label source, with what they declare decided at
load (full logits, terms of the whole batch, two views per step), their learned parts resumed exactly and
averaged under DDP, and every bad input refused in one paragraph before anything is written.

The methods are found in the registry and picked by what they declare, not by name."""

import pytest
import torch
import yaml

from softdistill.checkpoint import load_checkpoint
from softdistill.cli import main
from softdistill.compatibility import FULL_LOGITS, MIXED, STANDARDIZED, method_needs
from softdistill.config import ConfigError, LabelRecipe, load_recipe, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.samples import TensorSet
from softdistill.data.views import ViewPlan
from softdistill.losses import ctkd_kd_loss, ctkd_temperature
from softdistill.methods import method_class, method_names
from softdistill.models import build_model
from softdistill.models.features import mid_level_feature
from softdistill.runner import label_recipe, run_recipe
from softdistill.soft_labels import FrozenTeacher
from softdistill.soft_labels.store import StoredSoftLabels
from softdistill.store import StoreError
from softdistill.types import InputSpec, MethodContext
from test_training import make_recipe, run_two_processes

CROP_FLIP = {"crop_padding": 1, "hflip": True}
VIEWS = 3


def methods_where(test) -> list[str]:
    return [name for name in method_names() if test(method_class(name))]


#: methods that learn from the soft labels of single (not mixed) views that a store can hold
STORABLE = methods_where(lambda m: m.uses_soft_labels and not m.mixed_views
                         and m.source_needs <= StoredSoftLabels.serves - {MIXED})
#: methods whose default settings read every class's logit
FULL = methods_where(lambda m: FULL_LOGITS in method_needs(m, m.Config()))
#: methods with parts the trainer's optimiser trains beside the student
AUXILIARY = methods_where(lambda m: bool(m.auxiliary))
#: methods with terms of the whole batch
BATCH_TERMS = methods_where(lambda m: bool(m.batch_terms))


def raw_recipe(tmp_path, name, method, **data):
    """A tiny seeded run on digits: an MLP for 2 epochs (the views a method declares it needs)."""
    cls = method_class(method["name"])
    views = {"views_per_step": cls.views_per_step} if cls.views_per_step != 1 else {}
    return {"name": name, "seed": 3, "student": "mlp", "epochs": 2, "method": method,
            "data": {"name": "digits", "val_size": 200, "per_class": 10, "batch_size": 25, "augment": CROP_FLIP,
                     "views": VIEWS, "view_seed": 0, **views, **data},
            "optim": {"name": "sgd", "lr": 0.1}, "output_dir": str(tmp_path / "runs"),
            "train": {"device": "cpu", "threads": 1}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("teacher")
    raw = raw_recipe(tmp, "teacher", {"name": "ce"}, per_class=None, batch_size=128, augment={}, views=0)
    raw.update(student="cnn-small", epochs=4)
    recipe = recipe_from_dict(raw)
    run_recipe(recipe, quiet=True)
    return str(recipe.run_dir / "best.pt")


def label_recipe_raw(tmp_path, teacher, encoding):
    return {"name": f"store-{encoding['kind']}", "data": {"name": "digits", "val_size": 200, "per_class": 10,
                                                          "augment": CROP_FLIP, "views": VIEWS, "view_seed": 0},
            "soft_labels": {"source": "teacher", "checkpoint": teacher}, "encoding": encoding,
            "output_dir": str(tmp_path / "stores"), "train": {"device": "cpu", "threads": 1}}


@pytest.fixture(scope="module")
def stores(tmp_path_factory, teacher) -> dict[str, str]:
    """A full and a top-3 store of the teacher's logits of three crop+flip views, and their label recipes."""
    tmp = tmp_path_factory.mktemp("stores")
    made = {}
    for encoding in ({"kind": "full"}, {"kind": "topk", "k": 3}):
        raw = label_recipe_raw(tmp, teacher, encoding)
        recipe = LabelRecipe.from_dict(raw)
        label_recipe(recipe, quiet=True)
        made[encoding["kind"]] = str(recipe.run_dir)
        (tmp / f"{encoding['kind']}.yaml").write_text(yaml.safe_dump(raw))
        made[f"{encoding['kind']}-recipe"] = str(tmp / f"{encoding['kind']}.yaml")
    return made


def weights(recipe):
    return load_checkpoint(recipe.run_dir / "last.pt")


def assert_same_weights(a, b, **tolerance):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tolerance)


# ------------------------------------------------------------------------------- every source

@pytest.mark.parametrize("method", STORABLE)
def test_every_method_trains_alike_from_the_teacher_online_the_cache_and_a_store_of_crop_flip_views(
        tmp_path, teacher, stores, method):
    """The three sources give the same soft labels of the same views (one view per epoch, and the next one for
    a method of two views per step), so the runs agree (to the teacher's batch-size rounding)."""
    sources = {"teacher": {"source": "teacher", "checkpoint": teacher},
               "cache": {"source": "cache", "checkpoint": teacher},
               "store": {"source": "store", "path": stores["full"]}}
    runs = {}
    for name, source in sources.items():
        recipe = recipe_from_dict({**raw_recipe(tmp_path, f"{method}-{name}", {"name": method}),
                                   "soft_labels": source})
        summary = run_recipe(recipe, quiet=True)
        assert summary["test_acc_last"] > 0
        runs[name] = weights(recipe)["state_dict"]
    assert_same_weights(runs["teacher"], runs["cache"], rtol=1e-4, atol=1e-5)
    assert_same_weights(runs["store"], runs["cache"], rtol=0, atol=0)  # both labelled in batches of 1024


@pytest.mark.parametrize("method", sorted(set(STORABLE) - set(FULL)))
def test_a_method_that_reads_only_softened_probabilities_trains_from_a_top_k_store(tmp_path, stores, method):
    recipe = recipe_from_dict({**raw_recipe(tmp_path, method, {"name": method}),
                               "soft_labels": {"source": "store", "recipe": stores["topk-recipe"]}})
    assert run_recipe(recipe, quiet=True)["test_acc_last"] > 0


def full_logit_settings() -> list[tuple[str, dict]]:
    """Every method whose defaults read every class's logit, and every standardizing setting that does."""
    cases = [(name, {}) for name in FULL]
    for name in methods_where(lambda m: "standardize" in m.Config.model_fields):
        if name not in FULL:
            cases.append((name, {"standardize": True}))
    return cases


@pytest.mark.parametrize("method,settings", full_logit_settings(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_top_k_store_is_refused_at_load_for_a_method_that_reads_every_logit(tmp_path, stores, method, settings):
    needs = method_needs(method_class(method), method_class(method).Config(**settings))
    assert FULL_LOGITS in needs
    by_recipe = raw_recipe(tmp_path, method, {"name": method, **settings})
    by_recipe["soft_labels"] = {"source": "store", "recipe": stores["topk-recipe"]}
    with pytest.raises(ConfigError, match=r"holds top-k soft labels \(encoding: \{kind: topk, k: 3\}\), which do not "
                                          r"carry the teacher's full logit vector .* label a store with encoding: "
                                          r"\{kind: full\}"):
        load_recipe_file(tmp_path, by_recipe)
    by_path = recipe_from_dict({**by_recipe, "soft_labels": {"source": "store", "path": stores["topk"]}})
    with pytest.raises(StoreError, match=r"label a store with encoding: \{kind: full\}"):
        run_recipe(by_path, quiet=True)
    assert not by_path.run_dir.exists()  # refused when the store opened, before the run folder was made
    full = recipe_from_dict({**by_recipe, "soft_labels": {"source": "store", "recipe": stores["full-recipe"]}})
    assert full.soft_label_needs == needs


def load_recipe_file(tmp_path, raw):
    """Load a recipe from a file, as the command line does (checking the recipes it depends on)."""
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


# ------------------------------------------------------------------------------- bad input

def bad_recipes(teacher: str, stores: dict[str, str]) -> dict[str, tuple[dict, str]]:
    """name -> (changes to a tiny recipe, what the one-paragraph error says)."""
    online = {"source": "teacher", "checkpoint": teacher}
    topk = {"source": "store", "recipe": stores["topk-recipe"]}
    cases = {
        "weak labels for full logits": ({"method": {"name": "ttm"}, "soft_labels": {"source": "weak", "kind": "partial"}},
                                        "needs the teacher's full logit vector"),
        "top-k store for standardized DKD": ({"method": {"name": "dkd", "standardize": True}, "soft_labels": topk},
                                              STANDARDIZED),
        "mlkd without two views": ({"method": {"name": "mlkd"}, "soft_labels": online, "data": {"views_per_step": 1}},
                                   "learns from two views of each sample per step: set data.views_per_step: 2"),
        "two views of the clean image": ({"method": {"name": "mlkd"}, "soft_labels": online,
                                          "data": {"augment": {}, "views": 0, "views_per_step": 2}},
                                         "views_per_step: 2 shows two distinct views of each sample per step"),
        "two views of one view": ({"method": {"name": "mlkd"}, "soft_labels": online, "data": {"views": 1}},
                                  "views_per_step: 2 shows two distinct views"),
        "ctkd zero start": ({"method": {"name": "ctkd", "t_start": 0}, "soft_labels": online},
                            "method.t_start: Input should be greater than 0"),
        "ctkd negative width": ({"method": {"name": "ctkd", "t_end": -1}, "soft_labels": online},
                                "method.t_end: Input should be greater than 0"),
        "ctkd falling lambda": ({"method": {"name": "ctkd", "lambda_min": 1, "lambda_max": 0.5}, "soft_labels": online},
                                "lambda_min = 1.0 > lambda_max = 0.5"),
        "zero temperature": ({"method": {"name": "dkd", "temperature": 0}, "soft_labels": online},
                             "method.temperature: Input should be greater than 0"),
        "negative extra temperature": ({"method": {"name": "mlkd", "extra_temperatures": [3, -5]}, "soft_labels": online},
                                       "every temperature must be > 0"),
        "zero gamma power": ({"method": {"name": "ttm", "gamma": 0}, "soft_labels": online},
                             "method.gamma: Input should be greater than 0"),
    }
    for name in ("dkd", "dist", "nkd", "uskd", "mlkd"):
        cls = method_class(name)
        for weight in [w for w in ("alpha", "beta", "gamma", "mu") if w in cls.Config.model_fields]:
            cases[f"negative {name} {weight}"] = (
                {"method": {"name": name, weight: -1.0}, **({"soft_labels": online} if cls.uses_soft_labels else {})},
                f"method.{weight}: Input should be greater than or equal to 0")
    for name in BATCH_TERMS:
        cls = method_class(name)
        cases[f"{name} accumulating"] = ({"method": {"name": name}, "train": {"grad_accum": 5},
                                          **({"soft_labels": online} if cls.uses_soft_labels else {})},
                                         f"train.grad_accum: method '{name}' computes {cls.batch_terms} over the whole "
                                         "batch")
    return cases


def test_bad_input_is_one_paragraph_at_load_and_nothing_is_written(tmp_path, teacher, stores, capsys):
    assert {"dist", "mlkd"} <= set(BATCH_TERMS)
    for case, (changes, message) in bad_recipes(teacher, stores).items():
        raw = raw_recipe(tmp_path, case.replace(" ", "-"), changes.get("method", {"name": "ce"}))
        for section in ("data", "train"):
            raw[section].update(changes.get(section, {}))
        if "soft_labels" in changes:
            raw["soft_labels"] = changes["soft_labels"]
        path = tmp_path / f"{raw['name']}.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["train", str(path), "--quiet"]) == 2, case
        err = capsys.readouterr().err
        assert message in " ".join(err.split()), f"{case}: {err}"
        assert "Traceback" not in err, case
        assert not (tmp_path / "runs" / raw["name"]).exists(), case


# ------------------------------------------------------------------------------- two views per step

def test_a_two_view_step_shows_each_sample_as_its_view_of_the_epoch_and_its_next_view():
    gen = torch.Generator().manual_seed(0)
    data = TensorSet(torch.randint(0, 256, (12, 1, 6, 6), dtype=torch.uint8, generator=gen), torch.arange(12) % 3)
    transform = BatchTransform([0.5], [0.25])
    for views in (3, 0):
        plan = ViewPlan(seed=1, crop_padding=1, hflip=True, views=views, views_per_step=2)
        loader = BatchLoader(data, 5, transform, shuffle=True, plan=plan, seed=2)
        for epoch in (1, 3):
            loader.set_epoch(epoch)
            for batch in loader:
                second = batch.second
                assert torch.equal(second.sample_id, batch.sample_id) and torch.equal(second.y, batch.y)
                assert torch.equal(batch.view, torch.full_like(batch.view, plan.view_in_epoch(epoch)))
                assert torch.equal(second.view, (batch.view + 1) % views if views else batch.view + 1)
                rows = torch.searchsorted(data.ids, batch.sample_id)
                assert torch.equal(second.x, loader.batch_of(rows, second.view).x)  # a view of the same plan
                assert not torch.equal(second.x, batch.x)
    ranks = [BatchLoader(data, 5, transform, shuffle=True, plan=plan, seed=2, rank=r, world_size=2) for r in range(2)]
    for loader_of_rank in (loader, *ranks):
        loader_of_rank.set_epoch(2)
    for whole, *parts in zip(loader, *ranks):  # each DDP rank: its slice of both views
        assert torch.equal(torch.cat([part.second.x for part in parts]), whole.second.x)
    single = BatchLoader(data, 5, transform, shuffle=True, plan=ViewPlan(seed=1, crop_padding=1, views=3), seed=2)
    single.set_epoch(1)
    assert all(batch.second is None for batch in single)


def test_two_views_are_not_part_of_what_a_store_or_a_plan_holds():
    one, two = ViewPlan(seed=1, crop_padding=1, views=4), ViewPlan(seed=1, crop_padding=1, views=4, views_per_step=2)
    assert one.definition() == two.definition() and one.fingerprint() == two.fingerprint()
    with pytest.raises(ConfigError, match="data.views_per_step is not used by a label recipe"):
        LabelRecipe.from_dict({"name": "s", "data": {"name": "digits", "augment": CROP_FLIP, "views": 2,
                                                     "views_per_step": 2},
                               "soft_labels": {"source": "weak", "kind": "partial"}})


def test_mlkd_resumes_in_the_middle_of_an_epoch_exactly(tmp_path, teacher, stores, run_until_step):
    def recipe(folder):
        raw = raw_recipe(tmp_path / folder, "mlkd", {"name": "mlkd"})
        raw["soft_labels"] = {"source": "store", "path": stores["full"]}
        raw["train"]["checkpoint_every"] = 1
        return recipe_from_dict(raw)

    whole, resumed = recipe("whole"), recipe("resumed")
    run_recipe(whole, quiet=True)
    run_until_step(resumed, 5)  # four steps an epoch: in the middle of the second
    run_recipe(resumed, resume=True, quiet=True)
    assert_same_weights(weights(whole)["state_dict"], weights(resumed)["state_dict"], rtol=0, atol=0)


# ------------------------------------------------------------------------------- learned parts

@pytest.mark.parametrize("method", AUXILIARY)
@pytest.mark.parametrize("where", ["epoch", "step"])
def test_a_method_with_learned_parts_resumes_exactly(tmp_path, teacher, method, where, run_until_interrupted,
                                                     run_until_step):
    def recipe(folder):
        raw = raw_recipe(tmp_path / folder, method, {"name": method})
        raw["epochs"] = 3
        raw["train"]["checkpoint_every"] = 1 if where == "step" else 0
        if method_class(method).uses_soft_labels:
            raw["soft_labels"] = {"source": "teacher", "checkpoint": teacher}
        return recipe_from_dict(raw)

    whole, resumed = recipe("whole"), recipe("resumed")
    run_recipe(whole, quiet=True)
    if where == "epoch":
        run_until_interrupted(resumed, 2)
    else:
        run_until_step(resumed, 6)
    run_recipe(resumed, resume=True, quiet=True)
    a, b = weights(whole), weights(resumed)
    assert_same_weights(a["state_dict"], b["state_dict"], rtol=0, atol=0)
    assert sorted(a["method_state"]) == sorted(method_class(method).auxiliary)
    for name, state in a["method_state"].items():
        assert_same_weights(state, b["method_state"][name], rtol=0, atol=0)
    start = initial_training_state(whole)
    assert any(not torch.equal(start[name][key], state[key]) for name, state in a["method_state"].items()
               for key in state)  # trained, not left at their initial values


def initial_training_state(recipe):
    """The training state of ``recipe``'s method as its run builds it (the same seed, student and inputs)."""
    cls = method_class(recipe.method.name)
    torch.manual_seed(recipe.seed)
    student = build_model(recipe.student, 10, 1, 8)  # digits and the synthetic set: 10 classes of 1 x 8 x 8
    source = FrozenTeacher(build_model("mlp", 10, 1, 8)) if cls.uses_soft_labels else None
    return cls(recipe.method, student, 10, source, MethodContext(InputSpec(1, 8, (0.5,), (0.25,)))).training_state()


def test_ctkd_reverses_the_temperature_gradient_by_the_epochs_lambda():
    torch.manual_seed(0)
    ctkd = method_class("ctkd")
    method = ctkd(ctkd.Config(), torch.nn.Linear(5, 4), 4, FrozenTeacher(torch.nn.Linear(5, 4)))
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    theta = method.learned_temperature.theta
    for epoch, expected in ((1, 0.0245), (5, 0.5), (12, 1.0)):
        method.start_epoch(epoch, 20)
        assert method.grl_lambda == pytest.approx(expected, abs=1e-4)
        theta.grad = None
        method(x, y).losses["kd"].backward()
        reversed_grad = theta.grad.clone()
        kd = method.config.kd_weight * ctkd_kd_loss(method.student(x), method.soft_labels(x), ctkd_temperature(theta))
        (plain,) = torch.autograd.grad(kd, theta)
        torch.testing.assert_close(reversed_grad, -method.grl_lambda * plain)


def test_dkd_warms_its_terms_up_with_the_epoch_counted_from_one():
    torch.manual_seed(0)
    dkd = method_class("dkd")
    method = dkd(dkd.Config(warmup_epochs=4), torch.nn.Linear(5, 4), 4, FrozenTeacher(torch.nn.Linear(5, 4)))
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    full = None
    for epoch in (6, 1, 2, 4):
        method.start_epoch(epoch, 10)
        terms = method(x, y).losses
        full = full or terms
        for name in ("tckd", "nckd"):
            torch.testing.assert_close(terms[name], min(epoch / 4, 1.0) * full[name])
        torch.testing.assert_close(terms["ce"], full["ce"])


def test_uskd_reads_the_mid_level_feature_of_every_built_in_family():
    expected = {"mlp": "body.2", "cnn-small": "features.13", "resnet8": "stages.1", "resnet18": "stages.2",
                "wrn-16-2": "stages.1", "resnet18-imagenet": "layer3"}
    for model, name in expected.items():
        assert mid_level_feature(build_model(model, 10, 3, 32)) == name, model
    with pytest.raises(ValueError, match="no mid-level feature is known for a MobileNetV2 .* method.feature"):
        mid_level_feature(build_model("mobilenetv2", 10, 3, 32))
    uskd = method_class("uskd")
    context = MethodContext(InputSpec(3, 32, (0.5,) * 3, (0.25,) * 3))
    student = build_model("resnet8", 10, 3, 32)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    method = uskd(uskd.Config(), student, 10, None, context)
    assert method.weak_head.fc.in_features == 32  # resnet8's second stage
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # sizing moved no statistic
    with pytest.raises(ValueError, match="method.feature: the student has no module 'stages.9'"):
        uskd(uskd.Config(feature="stages.9"), student, 10, None, context)


# ------------------------------------------------------------------------------- DDP

@pytest.mark.parametrize("method", sorted(set(AUXILIARY) - set(BATCH_TERMS)))
def test_two_ddp_processes_train_the_learned_parts_as_one_process_does(tmp_path, teacher, free_port, method):
    """Each process sees half of every batch; DDP averages the student's and the learned parts' gradients (a
    method with terms of the whole batch computes them over each process's half instead, by design)."""
    torch.set_num_threads(1)
    changes = {"method": {"name": method}, "epochs": 12, "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0},
               "data__augment": CROP_FLIP}  # no weight decay: the loss alone moves the learned parts
    if method_class(method).uses_soft_labels:
        changes["soft_labels"] = {"source": "teacher", "checkpoint": teacher}
    single = make_recipe(tmp_path / "single", **changes)
    run_recipe(single, quiet=True)
    a, b = weights(single), load_checkpoint(run_two_processes(tmp_path / "ddp", free_port, **changes) / "last.pt")
    assert_same_weights(a["state_dict"], b["state_dict"], rtol=1e-4, atol=1e-5)
    start = initial_training_state(single)
    for name, state in a["method_state"].items():
        for key, value in state.items():
            moved, moved_ddp = value - start[name][key], b["method_state"][name][key] - start[name][key]
            assert moved.abs().max() > 1e-4
            torch.testing.assert_close(moved_ddp, moved, rtol=1e-2, atol=1e-6)
