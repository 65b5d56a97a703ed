"""Extending softdistill from a plugin module, without editing the package: a data set of your own (in
memory or as files: trained on, labelled into a store, streamed), a soft-label source built from the
student (an EMA teacher), and a method called from a loop of your own."""

import textwrap

import pytest
import torch
import yaml

from softdistill.config import ConfigError, load_recipe, recipe_from_dict
from softdistill.methods import method_class
from softdistill.runner import run_recipe
from softdistill.store import Store

SHAPES = '''
"""Two data sets of the same shapes: "{name}" in memory and "{name}-files" as PNG files under data.root."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from softdistill.data import FileSet, Split, TensorSet, register_dataset

CLASSES = ("square", "cross", "frame")


def draw(split):
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = 60 if split == "train" else 30
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, 3, 12, 12), dtype=np.uint8)
    for image, label in zip(images, labels):
        if label == 0:
            image[:, 3:9, 3:9] = 230
        elif label == 1:
            image[:, 5:7, :] = 230
            image[:, :, 5:7] = 230
        else:
            image[:, 2:10, 2] = image[:, 2:10, 9] = image[:, 2, 2:10] = image[:, 9, 2:10] = 230
    return images, labels


@register_dataset("{name}", class_names=CLASSES, channels=3, image_size=12)
def shapes(split, data):
    images, labels = draw(split)
    return Split(TensorSet(torch.from_numpy(images), torch.from_numpy(labels)), CLASSES)


@register_dataset("{name}-files", files=True, class_names=CLASSES)
def shape_files(split, data):
    images, labels = draw(split)
    folder = Path(data.root) / split
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        path = folder / f"{{i:03d}}.png"
        if not path.exists():
            Image.fromarray(image.transpose(1, 2, 0)).save(path)
        files.append(path)
    # ids of our own choosing: any distinct integers
    return Split(FileSet(files, torch.from_numpy(labels), data.image_size, ids=torch.arange(len(files)) * 10 + 7),
                 CLASSES)
'''

BROKEN = '''
import torch
from softdistill.data import Split, TensorSet, register_dataset


@register_dataset("{name}-float-labels")
def float_labels(split, data):
    return Split(TensorSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4)), ("a", "b"))


@register_dataset("{name}-twice")
def repeated_ids(split, data):
    return Split(TensorSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                           torch.tensor([1, 2, 2, 3])), ("a", "b"))


@register_dataset("{name}-short")
def mismatched(split, data):
    return Split(TensorSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.long)), ("a", "b"))


@register_dataset("{name}-labels")
def out_of_range(split, data):
    return Split(TensorSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 1])), ("a", "b"))


@register_dataset("{name}-not-a-split")
def not_a_split(split, data):
    return torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
'''

EMA = '''
"""A soft-label source made of the student: an exponential moving average of its weights."""
import copy
from typing import Literal

import torch
from pydantic import Field

from softdistill.compatibility import ANY_VIEW, MIXED, ONLINE
from softdistill.engine.wrap import unwrap
from softdistill.soft_labels import SoftLabelSource, SourceConfig, register_source


@register_source
class EMATeacher(SoftLabelSource):
    """Soft labels of an EMA of the student: w <- m w + (1 - m) w_student, updated before each batch."""

    serves = frozenset({{ONLINE, MIXED, ANY_VIEW}})

    class Config(SourceConfig):
        source: Literal["{name}"] = "{name}"
        momentum: float = Field(0.9, ge=0, lt=1)

    @classmethod
    def build(cls, config, setup):
        assert setup.student is not None, "the student is built before its source"
        return cls(setup.student, config.momentum)

    def __init__(self, student, momentum):
        super().__init__()
        self.student = [student]  # held, not registered: its parameters stay the student's own
        self.average = copy.deepcopy(unwrap(student)).requires_grad_(False).eval()
        self.momentum = momentum
        self.updates = 0

    def train(self, mode=True):
        self.training = mode
        return self

    @torch.no_grad()
    def forward(self, batch):
        if self.training:
            for mine, theirs in zip(self.average.parameters(), unwrap(self.student[0]).parameters()):
                mine.lerp_(theirs.detach(), 1 - self.momentum)
            self.updates += 1
        return self.average(batch.x)
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch, request):
    """``write(template)``: a plugin module made from ``template`` (its data sets and sources named after
    the test, so that no two tests register one name), importable by the run; returns (module, name)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    name = request.node.name.replace("_", "-")[:40]

    def write(template, module):
        (folder / f"{module}.py").write_text(textwrap.dedent(template.format(name=name)))
        return module, name

    return write


def _recipe(tmp_path, module, **top):
    raw = {"name": "run", "student": "cnn-small", "epochs": 2, "plugins": [module],
           "data": {"val_size": 9, "batch_size": 16}, "optim": {"lr": 0.05},
           "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    for key, value in top.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    return raw


def test_a_data_set_of_your_own_trains_labels_a_store_and_streams(tmp_path, plugins):
    module, name = plugins(SHAPES, "shape_sets_of_a_test")
    teacher = _recipe(tmp_path, module, name="teacher", epochs=4, data={"name": name})
    summary = run_recipe(recipe_from_dict(teacher), quiet=True)
    assert summary["finished"] and summary["test_acc_last"] > 50  # three easy shapes: far above chance (33 %)

    # the same shapes as files, streamed: labelled once into a store by the teacher, then a student reads it
    files = {"name": f"{name}-files", "root": str(tmp_path / "shapes"), "image_size": 12, "val_size": 9, "workers": 0,
             "augment": {"crop_padding": 1, "hflip": True}, "views": 2}
    label = {"name": "store", "plugins": [module], "data": {**files, "eval_batch_size": 16},
             "soft_labels": {"source": "teacher", "checkpoint": str(tmp_path / "runs" / "teacher" / "seed0" / "best.pt"),
                             "allow_other_data": True},
             "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    (tmp_path / "label.yaml").write_text(yaml.safe_dump(label))
    run_recipe(load_recipe(tmp_path / "label.yaml"), quiet=True)
    store = Store(tmp_path / "runs" / "store" / "seed0")
    ids = store.sample_ids.tolist()
    assert store.views == 2 and len(ids) == 51 and all(i % 10 == 7 for i in ids) and max(ids) > 59  # the plugin's ids

    student = _recipe(tmp_path, module, name="student", data={**files, "loader": "stream", "workers": 1},
                      method={"name": "kd"}, soft_labels={"source": "store", "recipe": "label.yaml"})
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    summary = run_recipe(load_recipe(tmp_path / "student.yaml"), quiet=True)
    assert summary["finished"]


def test_a_data_set_that_gives_bad_samples_is_named_in_one_paragraph(tmp_path, plugins):
    module, name = plugins(BROKEN, "broken_sets")
    cases = {"float-labels": "labels must be integers", "twice": "sample ids must be distinct: id 2",
             "short": "4 samples but labels of shape", "labels": r"labels range over \[0, 2\], but there are 2 class",
             "not-a-split": "the reader must return a softdistill.data.Split"}
    for suffix, problem in cases.items():
        raw = _recipe(tmp_path, module, name=suffix, data={"name": f"{name}-{suffix}", "val_size": 0})
        with pytest.raises(ValueError, match=problem) as info:
            run_recipe(recipe_from_dict(raw), quiet=True)
        if suffix in ("labels", "not-a-split"):  # a reader's own output: the message names the reader
            assert f"data set '{name}-{suffix}' (read by broken_sets." in str(info.value)
        assert "\n" not in str(info.value)
        assert not (tmp_path / "runs" / suffix).exists()  # nothing was written
    with pytest.raises(ConfigError, match=f"data.name: unknown dataset '{name}-fl0at-labels'; did you mean "
                                          f"'{name}-float-labels'"):
        recipe_from_dict(_recipe(tmp_path, module, data={"name": f"{name}-fl0at-labels"}))


def test_a_source_built_from_the_student_trains(tmp_path, plugins):
    module, name = plugins(EMA, "ema_source")
    raw = _recipe(tmp_path, module, data={"name": "digits", "val_size": 100, "per_class": 20},
                  method={"name": "kd", "alpha": 0.5}, soft_labels={"source": name, "momentum": 0.8})
    recipe = recipe_from_dict(raw)
    from softdistill.runner import prepare_run

    run = prepare_run(recipe, quiet=True)
    source, student = run.trainer.task.soft_labels, run.trainer.task.student
    assert source.student[0] is student and source.average is not student
    summary = run.trainer.fit()
    assert summary["finished"] and source.updates == 2 * len(run.trainer.train_loader)
    assert not torch.equal(next(source.average.parameters()), next(student.parameters()))  # an average, not a copy


def test_the_documented_data_set_of_ones_own_trains(tmp_path, monkeypatch):
    """The example of docs/data.md, "Your own data set", as it is written there."""
    import re
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    section = page[page.index("## Your own data set"):]
    module, recipe = re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S)[:2]
    (tmp_path / "my_shapes.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = yaml.safe_load(recipe)
    raw.update(output_dir=str(tmp_path / "runs"), train={"device": "cpu"})
    summary = run_recipe(recipe_from_dict(raw), quiet=True)
    assert summary["finished"] and summary["test_acc_last"] > 60
    files = recipe_from_dict({**raw, "name": "shape-files-run", "data": {
        "name": "shape-files", "root": str(tmp_path / "images"), "image_size": 12, "val_size": 10, "batch_size": 16,
        "loader": "stream", "workers": 0}})
    assert run_recipe(files, quiet=True)["finished"]


def test_a_method_in_a_loop_of_your_own(tmp_path):
    from softdistill.soft_labels import FrozenTeacher

    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    kd = method_class("kd")(method_class("kd").Config(alpha=0.5, temperature=2.0), student, 3, FrozenTeacher(teacher))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    out = kd(x, y)  # no sample ids, no views: an online teacher needs no address
    assert set(out.losses) == {"ce", "kd"} and out.logits.shape == (8, 3)
    sum(out.losses.values()).backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
    cache_kd = method_class("wsl")(method_class("wsl").Config(), student, 3, FrozenTeacher(teacher))
    assert set(cache_kd(x, y).losses) == {"wsl"}
    with pytest.raises(TypeError, match=r"method\(x, y\)"):
        kd(x)


def test_a_source_of_your_own_is_inspected_through_its_recipe(tmp_path, plugins):
    """inspect builds a recipe's source as a run does (given the student, before its first step): any source."""
    from softdistill.report.inspect import inspect_soft_labels

    module, name = plugins(EMA, "ema_inspected")
    raw = _recipe(tmp_path, module, data={"name": "digits", "val_size": 100, "per_class": 20},
                  method={"name": "kd"}, soft_labels={"source": name, "momentum": 0.8})
    (tmp_path / "ema.yaml").write_text(yaml.safe_dump(raw))
    summary = inspect_soft_labels(tmp_path / "ema.yaml", output_dir=tmp_path / "report", quiet=True).summary
    assert summary["source"]["kind"] == "recipe" and summary["rows"] == 200
    assert (tmp_path / "report" / "report.md").is_file() and "teacher" in summary["mixup"]  # it serves new images
