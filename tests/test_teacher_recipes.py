"""Teachers from recipes: Tf-KD self loads its stage 1, De-KD its early checkpoint; WSL options."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import softdistill.soft_labels.teacher as teacher_module
from softdistill.artifacts import runs_elsewhere
from softdistill.checkpoint import CheckpointError, load_checkpoint
from softdistill.config import recipe_from_dict
from softdistill.runs import RunStateError
from softdistill.losses import wsl_loss
from softdistill.methods import method_class
from softdistill.models import build_model
from softdistill.runner import run_recipe
from softdistill.soft_labels import FrozenTeacher
from softdistill.types import Batch

DATA = {"name": "synthetic", "val_size": 100, "batch_size": 50}


def stage1_yaml(tmp_path, **extra):
    raw = {"name": "stage1", "student": "mlp", "epochs": 3, "data": DATA, **extra}
    path = tmp_path / "stage1.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def student_recipe(tmp_path, teacher, **extra):
    return recipe_from_dict({"name": "stage2", "student": "mlp", "epochs": 1, "data": DATA,
                             "soft_labels": {"source": "teacher", **teacher},
                             "method": {"name": "kd", "alpha": 0.95, "temperature": 6},
                             "output_dir": str(tmp_path / "runs"), **extra})


@pytest.fixture
def loaded(monkeypatch):
    """Record which checkpoint the runner loads as teacher, and the teacher it builds."""
    seen = {}
    original = teacher_module.load_teacher

    def spy(path, *args, **kwargs):
        seen["path"] = path
        seen["teacher"] = original(path, *args, **kwargs)
        return seen["teacher"]

    monkeypatch.setattr(teacher_module, "load_teacher", spy)
    return seen


def test_tfkd_self_stage2_loads_stage1(tmp_path, loaded):
    recipe = student_recipe(tmp_path, {"recipe": str(stage1_yaml(tmp_path))})
    run_recipe(recipe, quiet=True)
    stage1_best = tmp_path / "runs" / "stage1" / "seed0" / "best.pt"
    assert loaded["path"] == stage1_best
    expected = load_checkpoint(stage1_best)["state_dict"]
    got = loaded["teacher"].model.state_dict()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_dekd_uses_the_requested_early_checkpoint(tmp_path, loaded):
    stage1 = stage1_yaml(tmp_path, train={"keep_epochs": [1]})
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1), "select": "epoch_1"}), quiet=True)
    run = tmp_path / "runs" / "stage1" / "seed0"
    assert loaded["path"] == run / "epoch_1.pt"
    early = load_checkpoint(run / "epoch_1.pt")
    assert early["epoch"] == 1 and load_checkpoint(run / "last.pt")["epoch"] == 3
    torch.testing.assert_close(loaded["teacher"].model.state_dict()["fc.weight"], early["state_dict"]["fc.weight"])
    assert not torch.equal(early["state_dict"]["fc.weight"], load_checkpoint(run / "last.pt")["state_dict"]["fc.weight"])
    with pytest.raises(CheckpointError, match=r"keeps epoch checkpoints only for train.keep_epochs = \[1\]"):
        run_recipe(student_recipe(tmp_path / "b", {"recipe": str(stage1), "select": "epoch_2"}, name="x"), quiet=True)


def test_a_teacher_run_from_an_older_recipe_version_is_not_reused(tmp_path):
    stage1 = stage1_yaml(tmp_path)
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}), quiet=True)
    stage1_yaml(tmp_path, optim={"lr": 0.2})  # the teacher recipe is edited afterwards
    with pytest.raises(RunStateError, match=r"different version of recipe 'stage1'(.|\n)*optim.lr: 0.05 -> 0.2"):
        run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}, name="again"), quiet=True)


def test_a_run_from_before_a_new_schema_key_is_still_reused(tmp_path):
    stage1 = stage1_yaml(tmp_path)
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}), quiet=True)
    saved = tmp_path / "runs" / "stage1" / "seed0" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["train"]["eval_every"]  # as written before that key existed
    saved.write_text(yaml.safe_dump(old))
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}, name="again"), quiet=True)


def test_a_teacher_finished_beside_the_output_folder_is_used_not_trained_again(tmp_path, monkeypatch, capsys, loaded):
    monkeypatch.chdir(tmp_path)
    stage1 = stage1_yaml(tmp_path)
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}, output_dir="runs/quickstart"), quiet=True)
    found = Path("runs/quickstart/stage1/seed0")
    stamp = (found / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}, output_dir="runs/kd-100",
                              train={"threads": 1}), quiet=False)  # another thread count: the same teacher
    printed = capsys.readouterr().out
    assert (f"recipe 'stage1' seed 0: using its finished run {found} (the same recipe: its config.yaml and "
            f"best.pt checked) instead of training it again into runs/kd-100/stage1/seed0") in printed
    assert loaded["path"] == found / "best.pt" and (found / "best.pt").stat().st_mtime_ns == stamp
    assert not Path("runs/kd-100/stage1").exists() and Path("runs/kd-100/stage2/seed0/summary.json").is_file()


def test_a_teacher_run_beside_that_differs_is_named_and_not_used(tmp_path, monkeypatch, capsys, loaded):
    monkeypatch.chdir(tmp_path)
    stage1 = stage1_yaml(tmp_path)
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}, output_dir="runs/a"), quiet=True)
    stage1_yaml(tmp_path, epochs=2)  # the teacher recipe is edited afterwards: runs/a's teacher is stale
    capsys.readouterr()
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}, output_dir="runs/b"), quiet=False)
    printed = capsys.readouterr().out
    assert "not using runs/a/stage1/seed0 for recipe 'stage1': it differs from the recipe:\n  epochs: 3 -> 2" in printed
    assert loaded["path"] == Path("runs/b/stage1/seed0/best.pt")
    # back to 3 epochs: runs/a is finished no more, and runs/b's config.yaml is made to say 3 epochs
    # while its best.pt records the 2-epoch recipe: neither is used
    stage1_yaml(tmp_path)
    Path("runs/a/stage1/seed0/summary.json").unlink()
    shutil.copy("runs/a/stage1/seed0/config.yaml", "runs/b/stage1/seed0/config.yaml")
    capsys.readouterr()
    run_recipe(student_recipe(tmp_path, {"recipe": str(stage1)}, output_dir="runs/c"), quiet=False)
    printed = capsys.readouterr().out
    assert ("not using runs/b/stage1/seed0 for recipe 'stage1': it differs from the recipe:\n  best.pt: epochs: 2 -> 3"
            in printed) and "runs/a/stage1" not in printed
    assert loaded["path"] == Path("runs/c/stage1/seed0/best.pt")


def test_runs_elsewhere_are_looked_for_beside_the_output_folder_only_inside_the_current_folder(tmp_path, monkeypatch):
    for folder in ("runs/quickstart/stage1/seed0", "runs/stage1/seed0", "runs/kd-100/old/stage1/seed0",
                   "runs/quickstart/stage1/seed1", "other/stage1/seed0"):
        (tmp_path / folder).mkdir(parents=True)
    recipe = recipe_from_dict({"name": "stage1", "student": "mlp", "epochs": 1, "data": DATA,
                               "output_dir": "runs/kd-100"})
    monkeypatch.chdir(tmp_path)
    assert runs_elsewhere(recipe) == [Path("runs/kd-100/old/stage1/seed0"), Path("runs/stage1/seed0"),
                                      Path("runs/quickstart/stage1/seed0")]
    monkeypatch.chdir(tmp_path / "other")  # the output folder's parent lies outside the current folder
    moved = recipe.model_copy(update={"output_dir": str(tmp_path / "runs" / "kd-100")})
    assert runs_elsewhere(moved) == [tmp_path / "runs/kd-100/old/stage1/seed0"]


def _teacher_module():
    torch.manual_seed(0)
    return FrozenTeacher(build_model("cnn-small", 10, 1, 8))


def test_teacher_stays_in_eval_mode_unless_asked_for_the_batchnorm_quirk():
    cls = method_class("wsl")
    method = cls(cls.Config(), build_model("mlp", 10, 1, 8), 10, _teacher_module())
    method.train()
    assert method.student.training and not method.soft_labels.training
    assert not any(m.training for m in method.soft_labels.model.modules())
    quirky = FrozenTeacher(build_model("cnn-small", 10, 1, 8), batchnorm_train_mode=True)
    quirky.train()
    bns = [m for m in quirky.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training for m in bns)
    quirky.eval()
    assert not any(m.training for m in bns)
    assert not any(p.requires_grad for p in quirky.parameters())


def test_wsl_label_free_uses_the_teacher_argmax():
    cls = method_class("wsl")
    teacher = _teacher_module()
    student = build_model("mlp", 10, 1, 8)
    x = torch.randn(6, 1, 8, 8)
    wrong = torch.zeros(6, dtype=torch.long)
    batch = Batch(x, wrong, torch.arange(6), torch.zeros(6, dtype=torch.long))
    out = cls(cls.Config(label_free=True), student, 10, teacher)(batch)
    t_logits = teacher(batch)
    expected = wsl_loss(student(x), t_logits, t_logits.argmax(1), 4.0, 2.25)
    assert out.losses["wsl"].item() == pytest.approx(expected.item(), rel=1e-5)
    with_labels = cls(cls.Config(), student, 10, teacher)(batch)
    assert with_labels.losses["wsl"].item() == pytest.approx(wsl_loss(student(x), t_logits, wrong).item(), rel=1e-5)
    assert {"ce", "reg_share", "w_mean", "w_q1", "w_median", "w_q3"} <= set(out.metrics)
