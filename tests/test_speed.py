"""Speed without changing results: a step free of host reads, the speed options, parallel runs."""

import collections
import contextlib
import copy
import os
import sys
import warnings

import pytest
import torch
import yaml

import softdistill.data.loader as loader_module
from softdistill.checkpoint import CheckpointMeta, DataSpec, Normalization, load_checkpoint
from softdistill.cli import main
from softdistill.config import ConfigError, LabelRecipe, VAERecipe
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.samples import TensorSet
from softdistill.engine import LRSchedule, Recorder, Task
from softdistill.engine.trainer import NonFiniteLossError, Trainer
from softdistill.experiments import packaged_recipes, threads_per_job, usable_cores
from softdistill.runner import label_recipe, run_recipe
from softdistill.isotonic import isotonic_logits
from softdistill.metrics import order_concordance, top2_hit_rate
from softdistill.methods import method_class, method_names
from softdistill.soft_labels import CachedTeacher, load_teacher, sources
from softdistill.soft_labels.store import StoredSoftLabels
from softdistill.types import Batch, StepOutput
from test_cli import write_recipe
from test_training import assert_same_weights, make_recipe as training_recipe, weights

# What reads a device value back on the host (and so waits for the device) when called on a tensor.
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
OPTIMIZERS = os.path.join("torch", "optim", "")  # torch.optim reads its step counters, which live on the host
CROP_FLIP = {"crop_padding": 1, "hflip": True}


@contextlib.contextmanager
def recording_host_reads(sites: list[str]):
    """Record the call site (file:line) of every host read of a tensor, and of torch.equal, made inside."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    original_equal = torch.equal

    def recorder(original):
        def read(*args, **kwargs):
            caller = sys._getframe(1)
            if OPTIMIZERS not in caller.f_code.co_filename:
                sites.append(f"{caller.f_code.co_filename}:{caller.f_lineno}")
            return original(*args, **kwargs)
        return read

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, recorder(original))
        torch.equal = recorder(original_equal)
        yield sites
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.equal = original_equal


def make_recipe(tmp_path, **changes):
    """The trainer tests' synthetic recipe, with a small CNN for one epoch unless changed."""
    return training_recipe(tmp_path, **{"student": "cnn-small", "epochs": 1, **changes})


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    recipe = make_recipe(tmp, name="syn-teacher", epochs=2)
    run_recipe(recipe, quiet=True)
    return str(recipe.run_dir / "best.pt")


@pytest.fixture(scope="module")
def stores(tmp_path_factory, teacher_checkpoint):
    """Stores of the teacher's logits of two crop+flip views and one mixup view of the trainer tests' data."""
    tmp = tmp_path_factory.mktemp("stores")
    folders = {}
    for name, augment, views in (("cropflip", CROP_FLIP, 2), ("mixup", {"mix": "mixup"}, 1)):
        raw = {"name": name, "data": {"name": "synthetic", "val_size": 100, "augment": augment, "views": views},
               "soft_labels": {"source": "teacher", "checkpoint": teacher_checkpoint}, "output_dir": str(tmp),
               "train": {"device": "cpu"}}
        recipe = LabelRecipe.from_dict(raw)
        label_recipe(recipe, quiet=True)
        folders[name] = str(recipe.run_dir)
    return folders


def store_recipes(stores, checkpoint):
    """Methods reading a store, which the loader shows the views it holds (view seed 0, one view), alone or in an
    ensemble beside the teacher online and cached (weights per sample, per class, or equal)."""
    views = {"data__views": 1, "data__view_seed": 0}
    teacher = {"source": "teacher", "checkpoint": checkpoint}
    ida = {"name": "ida", "correction": "add", "order_penalty": 1.0}

    def ensemble(*members, **combine):
        return {"source": "ensemble", "members": list(members), "combine": combine}

    cropflip, mixup = ({"source": "store", "path": stores[name]} for name in ("cropflip", "mixup"))
    return {
        "kd-store": {"method": {"name": "kd"}, "soft_labels": cropflip, "data__augment": CROP_FLIP, **views},
        "ida-store": {"method": ida, "soft_labels": mixup, "data__augment": {"mix": "mixup"}, **views},
        "kd-ensemble": {"method": {"name": "kd"}, "data__augment": CROP_FLIP, **views,
                        "soft_labels": ensemble(teacher, {**teacher, "source": "cache"}, cropflip,
                                                weights="confidence", temperature=4.0)},
        "wsl-ensemble": {"method": {"name": "wsl"}, "soft_labels": ensemble(teacher, {"source": "weak", "kind": "noise"},
                                                                            weights="indicators", k=2)},
        "ida-ensemble": {"method": ida, "data__augment": {"mix": "mixup"}, **views,
                         "soft_labels": ensemble(teacher, mixup, average="logits", weights=[2.0, 1.0])},
    }


def pinned_sources(changes):
    """The soft-label sources a recipe's changes use, members of ensembles included."""
    def used(section):
        return {section["source"]} | {s for member in section.get("members", []) for s in used(member)}

    return set().union(*(used(change["soft_labels"]) for change in changes.values() if "soft_labels" in change))


def method_recipes(checkpoint):
    teacher = {"source": "teacher", "checkpoint": checkpoint}
    return {
        "ce": {},
        "ls": {"method": {"name": "ls"}},
        "tfkd-reg": {"method": {"name": "tfkd-reg"}},
        "kd-teacher": {"method": {"name": "kd"}, "soft_labels": teacher},
        "kd-cache": {"method": {"name": "kd"}, "soft_labels": {**teacher, "source": "cache"}},
        "wsl": {"method": {"name": "wsl"}, "soft_labels": teacher},
        "ida": {"method": {"name": "ida", "correction": "add", "order_penalty": 1.0}, "soft_labels": teacher,
                "data__augment": {"mix": "mixup"}},
        "hard": {"method": {"name": "hard", "affine": {"translate": 1.0}}, "soft_labels": teacher},
        "soft-label": {"method": {"name": "soft-label", "k": 2}, "soft_labels": {"source": "weak", "kind": "partial"}},
    }


#: the methods the hand-written recipes above cover; every other registered method is derived from its declarations
WRITTEN = {"ce", "ls", "tfkd-reg", "kd", "wsl", "ida", "hard", "soft-label"}
DERIVED = sorted(set(method_names()) - WRITTEN)


def derived_recipe(method: str, checkpoint: str, stores: dict[str, str], source: str) -> dict:
    """A recipe of ``method`` as it declares itself: crop+flip views (two per step when it learns from two), its
    soft labels from the teacher online or from the two-view crop+flip store (``source``)."""
    cls = method_class(method)
    changes: dict = {"method": {"name": method}, "data__augment": CROP_FLIP}
    if cls.views_per_step != 1:
        changes.update(data__views_per_step=cls.views_per_step, data__views=2, data__view_seed=0)
    if cls.uses_soft_labels:
        changes["soft_labels"] = ({"source": "teacher", "checkpoint": checkpoint} if source == "teacher"
                                  else {"source": "store", "path": stores["cropflip"]})
        if source == "store":
            changes.update(data__views=2, data__view_seed=0)
    return changes


def derived_cases() -> list[tuple[str, str]]:
    """Every derived method with the teacher online, and from a store when it learns from soft labels a store holds."""
    cases = []
    for method in DERIVED:
        cls = method_class(method)
        cases.append((method, "teacher"))
        if cls.uses_soft_labels and not cls.mixed_views and cls.source_needs <= StoredSoftLabels.serves:
            cases.append((method, "store"))
    return cases


def host_reads_in_epoch(tmp_path, monkeypatch, batch_size, log_every=0, **changes) -> collections.Counter:
    """Call sites of host reads during a one-epoch run's training epoch (steps = 500 / batch_size)."""
    sites: list[str] = []
    train_epoch = Trainer.train_epoch

    def recorded(self):
        with recording_host_reads(sites):
            return train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", recorded)
    recipe = make_recipe(tmp_path / f"b{batch_size}-l{log_every}", data__batch_size=batch_size,
                         train__log_every=log_every, **changes)
    run_recipe(recipe, quiet=True)
    monkeypatch.undo()
    return collections.Counter(sites)


STEP_CASES = ["ce", "ls", "tfkd-reg", "kd-teacher", "kd-cache", "wsl", "ida", "hard", "soft-label", "kd-store",
              "ida-store", "kd-ensemble", "wsl-ensemble", "ida-ensemble"]


def test_every_source_of_the_package_is_pinned_by_a_step_case():
    """Found in the registry: a source added later fails here until a case below trains from it."""
    cases = {**method_recipes("t.pt"), **store_recipes({"cropflip": "s", "mixup": "s"}, "t.pt")}
    assert set(cases) == set(STEP_CASES)
    package = {name for name in sources.names() if sources.get(name).__module__.startswith("softdistill.")}
    assert package <= pinned_sources(cases), f"no host-read case trains from {sorted(package - pinned_sources(cases))}"


@pytest.mark.parametrize("method", STEP_CASES)
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, teacher_checkpoint, stores, method):
    changes = {**method_recipes(teacher_checkpoint), **store_recipes(stores, teacher_checkpoint)}[method]
    two_steps = host_reads_in_epoch(tmp_path, monkeypatch, 250, **changes)
    ten_steps = host_reads_in_epoch(tmp_path, monkeypatch, 50, **changes)
    per_step = ten_steps - two_steps  # reads that grow with the number of steps
    assert not per_step, f"host reads in the step of {method}: {dict(per_step)}"
    assert sum(ten_steps.values()) <= 3  # the epoch's end: the non-finite check and the packed sums


@pytest.mark.parametrize("method,source", derived_cases())
def test_a_training_step_of_every_other_method_reads_nothing_back_from_the_device(tmp_path, monkeypatch,
                                                                                 teacher_checkpoint, stores, method,
                                                                                 source):
    changes = derived_recipe(method, teacher_checkpoint, stores, source)
    per_step = (host_reads_in_epoch(tmp_path, monkeypatch, 50, **changes)
                - host_reads_in_epoch(tmp_path, monkeypatch, 250, **changes))
    assert not per_step, f"host reads in the step of {method} ({source}): {dict(per_step)}"


class DeviceOnly(torch.Tensor):
    """A tensor that fails on any use: stands for the device copy of a batch's address, which a host
    lookup must not read (on CUDA, reading it waits for the device)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"{getattr(func, '__name__', func)} of the device copy of the batch's address")


@pytest.mark.parametrize("method", ["kd-store", "ida-store", "ida-ensemble"])
def test_a_store_looks_soft_labels_up_by_the_address_the_loader_knows_on_the_host(tmp_path, monkeypatch, stores,
                                                                                  teacher_checkpoint, method):
    """On a CPU the device is the host, so a copy from device to host cannot be seen; the device copy
    of every training batch's address is made unusable instead, and the run must not notice."""
    changes = store_recipes(stores, teacher_checkpoint)[method]
    plain = make_recipe(tmp_path / "plain", **changes)
    run_recipe(plain, quiet=True)
    original = loader_module.assemble

    def address_on_device_only(*args, **kwargs):
        batch = original(*args, **kwargs)
        return batch.with_(sample_id=batch.sample_id.as_subclass(DeviceOnly), view=batch.view.as_subclass(DeviceOnly))

    train_epoch = Trainer.train_epoch

    def poisoned(self):
        with monkeypatch.context() as patch:
            patch.setattr(loader_module, "assemble", address_on_device_only)
            return train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", poisoned)
    recipe = make_recipe(tmp_path / "host", **changes)
    run_recipe(recipe, quiet=True)
    assert_same_weights(weights(plain.run_dir), weights(recipe.run_dir), rtol=0, atol=0)


def test_log_points_are_the_only_reads_between_epoch_ends(tmp_path, monkeypatch):
    at_end = host_reads_in_epoch(tmp_path, monkeypatch, 50, log_every=0)
    every_two = host_reads_in_epoch(tmp_path, monkeypatch, 50, log_every=2)
    assert sum((every_two - at_end).values()) == 4  # log points after steps 2, 4, 6, 8 (step 10 ends the epoch)


def test_mid_epoch_checkpoints_read_the_device_only_where_they_are_written(tmp_path, monkeypatch):
    """Before a mid-epoch checkpoint the loss watch and the finite check of every parameter and buffer
    read the device: reads grow with the number of checkpoints, not with the steps."""
    none = host_reads_in_epoch(tmp_path / "none", monkeypatch, 50, train__checkpoint_every=0)
    one = host_reads_in_epoch(tmp_path / "one", monkeypatch, 50, train__checkpoint_every=5)  # after step 5
    four = host_reads_in_epoch(tmp_path / "four", monkeypatch, 50, train__checkpoint_every=2)  # after steps 2, 4, 6, 8
    per_checkpoint = one - none
    assert any("trainer.py" in site for site in per_checkpoint)
    assert four - none == collections.Counter({site: 4 * n for site, n in per_checkpoint.items()})


# ------------------------------------------------------------------------------- the trainer on a toy model

class ToyMethod(Task):
    """A linear classifier on 2 x 2 images; its loss turns NaN at (``bad_epoch``, ``bad_step``), 1-based."""

    def __init__(self, bad_epoch=None, bad_step=None):
        super().__init__()
        torch.manual_seed(0)
        self.student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        self.bad, self.epoch, self.step = (bad_epoch, bad_step), 0, 0

    def start_epoch(self, epoch, epochs):
        self.epoch, self.step = epoch, 0

    def forward(self, batch):
        self.step += 1
        logits = self.student(batch.x)
        loss = torch.nn.functional.cross_entropy(logits, batch.y)
        if (self.epoch, self.step) == self.bad:
            loss = loss * float("nan")
        return StepOutput(logits, {"bad": loss, "good": logits.detach().square().sum() * 0})


def toy_trainer(tmp_path, method, *, samples=12, batch_size=4, epochs=1, lr=0.1, drop_last=True, **options):
    gen = torch.Generator().manual_seed(0)
    data = TensorSet(torch.randint(0, 256, (samples, 1, 2, 2), dtype=torch.uint8, generator=gen),
                     torch.randint(0, 3, (samples,), generator=gen))
    transform = BatchTransform([0.5], [0.25])
    train = BatchLoader(data, batch_size, transform, shuffle=True, drop_last=drop_last)
    optimizer = torch.optim.SGD(method.parameters(), lr=lr)
    schedule = LRSchedule("constant", lr, epochs, len(train))
    meta = CheckpointMeta(normalization=Normalization(mean=[0.5], std=[0.25]), data=DataSpec(name="toy"), config={})
    recorder = Recorder(tmp_path / "run", meta, epochs=epochs, seed=0, has_val=False, quiet=True)
    return Trainer(method, optimizer, schedule, train, {"test": BatchLoader(data, samples, transform)}, recorder,
                   **options)


def test_non_finite_loss_names_the_first_bad_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = toy_trainer(tmp_path, ToyMethod(bad_epoch=2, bad_step=2), epochs=3, log_every=0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2, step 2: term bad \(bad=nan, good=0\)\. "
                                                 r"The run folder keeps its last good checkpoint \(epoch 1\)\. "
                                                 r"The student's outputs are finite"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_gradient_accumulation_equals_the_whole_batch_even_with_an_uneven_last_batch(tmp_path):
    plain = toy_trainer(tmp_path / "plain", ToyMethod(), samples=10, drop_last=False, epochs=2)
    accumulated = toy_trainer(tmp_path / "accum", ToyMethod(), samples=10, drop_last=False, epochs=2, grad_accum=3)
    plain.fit()
    accumulated.fit()  # batches of 4, 4, 2 in parts of (2, 1, 1), (2, 1, 1), (1, 1, 0)
    assert_same_weights(plain.student.state_dict(), accumulated.student.state_dict(), rtol=1e-6, atol=1e-7)
    assert accumulated.recorder.history[-1]["train/loss"] == pytest.approx(plain.recorder.history[-1]["train/loss"], rel=1e-6)


def test_clip_grad_scales_the_step_to_the_clipped_norm(tmp_path):
    method = ToyMethod()
    start = copy.deepcopy(method.student)
    trainer = toy_trainer(tmp_path, method, samples=8, batch_size=8, lr=0.5, clip_grad=0.01)
    trainer.fit()
    batch = next(iter(trainer.train_loader))
    loss = torch.nn.functional.cross_entropy(start(batch.x), batch.y)
    grads = torch.autograd.grad(loss, list(start.parameters()))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 0.01  # the clip is active
    for p, p0, g in zip(method.student.parameters(), start.parameters(), grads):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.5 * g * (0.01 / norm), rtol=1e-4, atol=1e-6)
    assert trainer.recorder.history[0]["train/grad_norm"] == pytest.approx(float(norm), rel=1e-4)


# ------------------------------------------------------------------------------- speed options of a recipe

def test_speed_options_that_keep_results_exactly(tmp_path):
    plain = make_recipe(tmp_path / "plain", student="mlp", epochs=2)
    run_recipe(plain, quiet=True)
    for name, train in {"compile": {"compile": {"backend": "eager"}}, "no clip": {"clip_grad": 1e9},
                        "cudnn on a cpu": {"cudnn_benchmark": True}, "channels_last mlp": {"channels_last": True}}.items():
        recipe = make_recipe(tmp_path / name, student="mlp", epochs=2, train={"device": "cpu", **train})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_recipe(recipe, quiet=True)
        assert_same_weights(weights(plain.run_dir), weights(recipe.run_dir), rtol=0, atol=0)
        ignored = [str(w.message) for w in caught if "channels_last is ignored" in str(w.message)]
        assert ignored == (["train.channels_last is ignored: the student 'mlp' has no 2-D convolution (no 4-D weights), "
                            "so its inputs gain nothing from that layout"] if name == "channels_last mlp" else [])
    assert not torch.backends.cudnn.benchmark


def test_speed_options_within_tolerance_of_the_plain_path(tmp_path, teacher_checkpoint):
    teacher = {"method": {"name": "kd"}, "soft_labels": {"source": "teacher", "checkpoint": teacher_checkpoint}}
    plain = make_recipe(tmp_path / "plain", epochs=2, **teacher)
    run_recipe(plain, quiet=True)
    for name, train in {"channels_last": {"channels_last": True}, "bf16 teacher": {"teacher_dtype": "bfloat16"},
                        "compile aot_eager": {"compile": {"backend": "aot_eager"}}}.items():
        recipe = make_recipe(tmp_path / name, epochs=2, train={"device": "cpu", **train}, **teacher)
        run_recipe(recipe, quiet=True)
        assert_same_weights(weights(plain.run_dir), weights(recipe.run_dir), rtol=0.02, atol=2e-3)
        assert weights(plain.run_dir).keys() == weights(recipe.run_dir).keys()  # clean keys, compiled or not


def test_a_teacher_in_its_frozen_wrapper_compiles_and_runs_in_bfloat16(teacher_checkpoint):
    x = torch.randn(6, 1, 8, 8, requires_grad=True)
    plain = load_teacher(teacher_checkpoint, 10, 1, [0.5], [0.25])
    expected = plain.logits_with_input_grad(x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    compiled = load_teacher(teacher_checkpoint, 10, 1, [0.5], [0.25])
    compiled.prepare_inference(compile={"backend": "eager"}, channels_last=True)
    torch.testing.assert_close(compiled(x), plain(x))
    (grad,) = torch.autograd.grad(compiled.logits_with_input_grad(x).sum(), x)
    torch.testing.assert_close(grad, expected_grad)  # HARD's augmentor learns through the compiled teacher
    half = load_teacher(teacher_checkpoint, 10, 1, [0.5], [0.25])
    half.prepare_inference(dtype=torch.bfloat16)
    logits = half(x)
    assert logits.dtype == torch.float32 and next(half.model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(logits, plain(x), rtol=0.05, atol=0.05)


def test_speed_options_refused_where_they_cannot_apply(tmp_path, teacher_checkpoint):
    with pytest.raises(ConfigError, match=r"train.grad_accum = 3 does not split data.batch_size = 50 into equal parts; "
                                          r"choose a divisor of the batch size \(2, 5, 10, 25\)"):
        make_recipe(tmp_path, train={"grad_accum": 3})
    cache = {"method": {"name": "kd"}, "soft_labels": {"source": "cache", "checkpoint": teacher_checkpoint}}
    with pytest.raises(ConfigError, match="train.teacher_dtype: bfloat16 sets the precision of a teacher run online"):
        make_recipe(tmp_path, train={"teacher_dtype": "bfloat16"}, **cache)
    with pytest.raises(ConfigError, match="train.grad_accum: method 'hard' updates its own parts inside every step"):
        make_recipe(tmp_path, train={"grad_accum": 2}, method={"name": "hard"},
                    soft_labels={"source": "teacher", "checkpoint": teacher_checkpoint})
    with pytest.raises(ConfigError, match=r"unknown torch.compile keyword\(s\) \['mood'\]"):
        make_recipe(tmp_path, train={"compile": {"mood": "fast"}})
    with pytest.raises(ConfigError, match="train.compile, train.channels_last: not used by train-vae"):
        VAERecipe.from_dict({"name": "v", "epochs": 1, "train": {"compile": True, "channels_last": True}})
    with pytest.raises(ConfigError, match="train.compile, train.grad_accum: training options, not used by a label recipe"):
        LabelRecipe.from_dict({"name": "s", "data": {"name": "synthetic", "batch_size": 50},
                               "soft_labels": {"source": "teacher", "checkpoint": teacher_checkpoint},
                               "train": {"compile": True, "grad_accum": 2}})
    with pytest.raises(ConfigError, match="train.sync_batchnorm: training options, not used by a label recipe"):
        LabelRecipe.from_dict({"name": "s", "data": {"name": "synthetic", "batch_size": 50},
                               "soft_labels": {"source": "teacher", "checkpoint": teacher_checkpoint},
                               "train": {"sync_batchnorm": True}})
    with pytest.raises(ConfigError, match="train.sync_batchnorm: not used by train-vae"):
        VAERecipe.from_dict({"name": "v", "epochs": 1, "train": {"sync_batchnorm": True}})
    with pytest.raises(ConfigError, match=r"train.sync_batchnorm with train.grad_accum > 1: BatchNorm would normalise "
                                          r"each part of a batch"):
        make_recipe(tmp_path, train={"sync_batchnorm": True, "grad_accum": 2})
    online = make_recipe(tmp_path, train={"device": "cpu", "teacher_dtype": "float16"}, method={"name": "kd"},
                         soft_labels={"source": "teacher", "checkpoint": teacher_checkpoint})
    with pytest.raises(ValueError, match="train.teacher_dtype: float16 needs a CUDA device; on the CPU use bfloat16"):
        run_recipe(online, quiet=True)


def test_compile_failing_is_one_paragraph_naming_the_option(tmp_path, capsys):
    @torch._dynamo.register_backend
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler for this platform")

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: c\nstudent: mlp\nepochs: 1\ndata: {name: synthetic, val_size: 100, batch_size: 50}\n"
                      f"output_dir: {tmp_path / 'runs'}\ntrain: {{device: cpu, compile: {{backend: broken_backend}}}}\n")
    assert main(["train", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softdistill train: error: train.compile: torch.compile failed on this platform "
                          "(BackendCompilerFailed: RuntimeError: no compiler for this platform). "
                          "Set train.compile: false")
    assert "\n" not in err and "Traceback" not in err


# ------------------------------------------------------------------------------- checks kept out of the step

def test_unchecked_isotonic_correction_and_diagnostics_equal_the_checked_ones():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 20, generator=gen)
    a, b = torch.randint(0, 20, (64,), generator=gen), torch.randint(0, 20, (64,), generator=gen)
    rows = torch.arange(64)
    logits[rows, a] += 6.0
    logits[rows, b] += 5.0  # a and b on top: the checked path takes its narrow topk shortcut
    lam = torch.rand(64, generator=gen)
    assert torch.equal(isotonic_logits(logits, a, b, lam, check=False), isotonic_logits(logits, a, b, lam))
    assert torch.equal(order_concordance(logits, a, b, lam, check=False), order_concordance(logits, a, b, lam))
    assert torch.equal(top2_hit_rate(logits, a, b, check=False), top2_hit_rate(logits, a, b))


def test_cache_lookups_are_checked_per_batch_until_verified_once_for_the_run():
    cache = CachedTeacher(torch.tensor([3, 1, 2]), torch.randn(3, 2, 4))

    def batch(ids, view=0):
        ids = torch.tensor(ids)
        return Batch(torch.zeros(len(ids), 1), torch.zeros_like(ids), ids, torch.full_like(ids, view))

    with pytest.raises(ValueError, match=r"a sample id or view of the batch is not in the cache \(3 samples x 2 views\)"):
        cache(batch([1, 5]))
    with pytest.raises(ValueError, match="not in the cache"):
        cache(batch([1], view=2))
    with pytest.raises(ValueError, match="not in the cache"):
        cache.verify_lookups(torch.tensor([1, 5]), 2)
    with pytest.raises(ValueError, match="the training plan shows 3 views"):
        cache.verify_lookups(torch.tensor([1, 2, 3]), 3)
    cache.verify_lookups(torch.tensor([1, 2, 3]), 2)
    torch.testing.assert_close(cache(batch([2, 3], view=1)), cache.logits[[1, 2], 1])


# ------------------------------------------------------------------------------- runs side by side

@pytest.mark.skipif(usable_cores() < 2, reason="parallel runs need two cores")
def test_parallel_runs_equal_sequential_runs_under_the_same_thread_count(tmp_path):
    recipes = [str(write_recipe(tmp_path, name="base")),
               str(write_recipe(tmp_path, name="smooth", method={"name": "ls"}, student="cnn-small"))]
    one_by_one = ["compare", *recipes, "--seeds", "2", "--quiet", "-o", "train.threads=1"]
    assert main([*one_by_one, "--output", str(tmp_path / "sequential")]) == 0
    assert main(["compare", *recipes, "--seeds", "2", "--quiet", "--jobs", "2", "--output", str(tmp_path / "parallel")]) == 0
    for name in ("base", "smooth"):
        for seed in (0, 1):
            run = f"{name}/seed{seed}"
            assert_same_weights(weights(tmp_path / "sequential" / run), weights(tmp_path / "parallel" / run), rtol=0, atol=0)
            assert yaml.safe_load((tmp_path / "parallel" / run / "config.yaml").read_text())["train"]["threads"] == 1


@pytest.mark.skipif(usable_cores() < 2, reason="parallel runs need two cores")
def test_parallel_runs_train_the_teacher_alongside_the_runs_that_need_none(tmp_path, capsys):
    tiny = packaged_recipes("tiny")
    recipes = [str(tiny / f"{name}.yaml") for name in ("baseline", "kd", "teacher")]  # the teacher is also a row
    assert main(["compare", *recipes, "--seeds", "1", "--quiet", "-o", "train.threads=1",
                 "--output", str(tmp_path / "sequential")]) == 0
    assert main(["compare", *recipes, "--seeds", "1", "--jobs", "2", "--output", str(tmp_path / "parallel")]) == 0
    out = capsys.readouterr().out
    assert "training digits-teacher (needed by 1 runs) alongside the 1 runs that need none" in out
    assert "digits-teacher seed 0: trained above as a dependency of the other runs, test accuracy " in out
    for run in ("digits-baseline/seed0", "digits-kd/seed0", "digits-teacher/seed0"):
        assert_same_weights(weights(tmp_path / "sequential" / run), weights(tmp_path / "parallel" / run), rtol=0, atol=0)
    kd = yaml.safe_load((tmp_path / "parallel" / "digits-kd" / "seed0" / "config.yaml").read_text())
    assert kd["train"]["threads"] == 1  # and the teacher inherited it: same weights as the sequential one


def test_more_jobs_than_cores_is_refused_before_anything_runs(tmp_path, capsys):
    recipe = write_recipe(tmp_path, name="base")
    jobs = usable_cores() + 1
    assert main(["compare", str(recipe), "--jobs", str(jobs), "--output", str(tmp_path / "out")]) == 2
    assert (f"--jobs {jobs} is more than the {jobs - 1} CPU core(s) this process may use: the runs would compete for "
            f"cores and each would wait on the others; use --jobs {jobs - 1} or fewer") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert threads_per_job(1) == usable_cores()


def test_a_mid_epoch_checkpoint_is_never_written_after_a_non_finite_step(tmp_path):
    trainer = toy_trainer(tmp_path, ToyMethod(bad_epoch=2, bad_step=3), samples=24, epochs=2, log_every=0,
                          checkpoint_every=2)  # 6 steps an epoch: checkpoints after steps 2 and 4 of epoch 2
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 3: term bad .* last good checkpoint "
                                                 r"\(step 2 of epoch 2\)"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"]["step"] == 2
