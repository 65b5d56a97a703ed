"""Recipe schema: loading, overrides, and the messages a user sees for mistakes."""

import re
from pathlib import Path

import pytest
import yaml

from softdistill.cli import main
from softdistill.config import ConfigError, VAERecipe, apply_overrides, load_recipe, parse_override, recipe_from_dict
from softdistill.experiments import packaged_recipes

BASE = {"name": "r", "student": "mlp", "epochs": 2}


def test_minimal_recipe_gets_documented_defaults():
    recipe = recipe_from_dict(BASE)
    assert recipe.method.name == "ce"
    assert recipe.optim.name == "sgd" and recipe.schedule.name == "cosine"
    assert recipe.run_dir == Path("runs/r/seed0")


def test_method_section_is_typed_by_the_method():
    recipe = recipe_from_dict({**BASE, "method": {"name": "kd", "alpha": 0.5}, "soft_labels": {"source": "teacher", "checkpoint": "t.pt"}})
    assert recipe.method.alpha == 0.5 and recipe.method.temperature == 4.0
    assert recipe.to_dict()["method"] == {"name": "kd", "alpha": 0.5, "temperature": 4.0}


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**BASE, "optim": {"name": "sgd", "lerning_rate": 0.1, "lr": 0.1, "momentun": 0.9}})
    message = str(info.value)
    assert "optim.momentun: unknown key; did you mean 'momentum'?" in message
    assert "optim.lerning_rate: unknown key" in message


def test_unknown_key_in_method_section_suggests_from_that_method():
    with pytest.raises(ConfigError, match=r"method.temprature: unknown key; did you mean 'temperature'\?"):
        recipe_from_dict({**BASE, "method": {"name": "kd", "temprature": 4}, "soft_labels": {"source": "teacher", "checkpoint": "t"}})


def test_unknown_top_level_key_and_unknown_method():
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**BASE, "epoch": 3, "method": {"name": "kdd"}})
    assert "epoch: unknown key; did you mean 'epochs'?" in str(info.value)
    assert "method.name: unknown method 'kdd'; did you mean 'kd' or 'dkd' or 'nkd'?" in str(info.value)


def test_wrong_type_names_field_and_allowed_values():
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**BASE, "optim": {"name": "adam", "lr": "fast"}})
    message = str(info.value)
    assert "optim.name: Input should be 'sgd' or 'adamw', got 'adam'" in message
    assert "optim.lr:" in message and "'fast'" in message


def test_missing_required_key():
    with pytest.raises(ConfigError, match="student: required key is missing"):
        recipe_from_dict({"name": "r", "epochs": 1})


def test_teacher_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of soft_labels.checkpoint or soft_labels.recipe"):
        recipe_from_dict({**BASE, "soft_labels": {"source": "teacher", "checkpoint": "a.pt", "recipe": "b.yaml"}})


def test_overrides_are_dotted_and_typed_as_yaml():
    assert parse_override("optim.lr=0.05") == (["optim", "lr"], 0.05)
    assert parse_override("data.augment.hflip=true") == (["data", "augment", "hflip"], True)
    raw = apply_overrides(BASE, ["optim.lr=0.01", "method.name=ls", "method.epsilon=0.2", "schedule.milestones=[3, 6]"])
    recipe = recipe_from_dict(raw)
    assert recipe.optim.lr == 0.01 and recipe.method.epsilon == 0.2 and recipe.schedule.milestones == [3, 6]
    assert BASE == {"name": "r", "student": "mlp", "epochs": 2}  # the input is not modified


def test_override_errors():
    with pytest.raises(ConfigError, match="must look like key.subkey=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="student is not a section"):
        apply_overrides(BASE, ["student.width=3"])


def test_load_recipe_file_and_bad_files(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    recipe = load_recipe(path, ["epochs=5"])
    assert recipe.epochs == 5 and recipe.recipe_file == str(path)
    assert recipe.resolve_path("teacher.yaml") == tmp_path / "teacher.yaml"
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bin")  # not text: the error names the file
    with pytest.raises(ConfigError, match=r"binary\.yaml: not valid YAML"):
        load_recipe(tmp_path / "binary.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_every_shipped_recipe_validates():
    folder = packaged_recipes("")
    paths = sorted(folder.rglob("*.yaml"))
    assert len(paths) >= 8
    kinds = {path.relative_to(folder).as_posix(): load_recipe(path).kind for path in paths}
    assert kinds["hard/vae.yaml"] == "vae" and kinds["store/fmnist-cropflip.yaml"] == "label"
    assert kinds["quickstart/kd.yaml"] == "train"


def test_a_key_written_twice_is_an_error_naming_key_file_and_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: r\nstudent: mlp\nepochs: 2\noptim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "duplicate key 'lr' (first on line 5)" in message and "line 7" in message
    path.write_text("name: r\nstudent: mlp\nepochs: 2\nepochs: 3\n")
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        load_recipe(path)
    # the same key in different sections, and merge keys that an explicit key overrides, are fine
    path.write_text("name: r\nstudent: mlp\nepochs: 2\nbase: &b {lr: 0.1, momentum: 0.5}\n"
                    "optim: {<<: *b, lr: 0.2}\nschedule: {name: constant}\n")
    raw = yaml.safe_load(path.read_text())
    raw.pop("base")
    assert recipe_from_dict(raw).optim.lr == 0.2


@pytest.mark.parametrize("name", [".", ".."])
def test_names_that_leave_the_output_folder_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"name: .*would put the run folder outside output_dir.*got '{re.escape(name)}'"):
        recipe_from_dict({**BASE, "name": name})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match="outside output_dir"):
        load_recipe(path, [f"name={name}"])
    with pytest.raises(ConfigError, match="outside output_dir"):
        VAERecipe.from_dict({"name": name, "epochs": 1})


@pytest.mark.parametrize("name", ["...", "kd.t4", "a..b", "-x"])
def test_accepted_names_keep_the_run_folder_inside_output_dir(tmp_path, name):
    recipe = recipe_from_dict({**BASE, "name": name, "output_dir": str(tmp_path / "runs"), "seed": 3})
    assert recipe.run_dir.resolve().parent.parent == (tmp_path / "runs").resolve()


# ------------------------------------------------------------------------- decided when the recipe loads

LOAD_TIME = {  # a change to a valid recipe -> what the error says; each fires before anything runs
    "student: mlpp": "student: unknown model 'mlpp'; did you mean 'mlp'",
    "data.name: fmnist": "data.name: unknown dataset 'fmnist'; did you mean 'fashion-mnist' or 'fashion-mnist-pairs' or 'mnist'",
    "method: {name: kdd}": "method.name: unknown method 'kdd'; did you mean 'kd'",
    "soft_labels: {source: teachr, checkpoint: t.pt}": "unknown soft-label source 'teachr'; did you mean 'teacher'",
    "method: {name: sbt, k: 10}": "method.k = 10 needs at least 11 classes, the data has 10",
    "method: {name: soft-label, k: 11}": "method.k = 11 exceeds the 10 classes of the data",
    "method: {name: hard, warmup_epochs: 2}": "method.warmup_epochs = 2 leaves no epoch for the augmentor",
    "train.keep_epochs: [3]": r"train.keep_epochs \[3\] lie outside the run's epochs 1..2",
    "schedule.milestones: [2, 1]": "milestones must be increasing epochs >= 1",
    "schedule.warmup_epochs: 3": "schedule.warmup_epochs = 3 is longer than the run",
    "data.augment.crop_padding: 8": "crop_padding 8 is not smaller than the 8-pixel images",
    "seed: -1": "seed: Input should be greater than or equal to 0",
    "seed: 99999999999": "seed: Input should be less than or equal to 2147483647",
    "kind: label": "invalid label recipe:\n  epochs: unknown key",
    "kind: trian": "kind: unknown recipe kind 'trian'; did you mean 'train'",
}


@pytest.mark.parametrize("change", LOAD_TIME, ids=lambda c: c.split(":")[0] + ":" + c.split(":")[1][:12])
def test_every_check_fires_when_the_recipe_loads(change, tmp_path):
    raw = {"name": "r", "student": "mlp", "epochs": 2, "data": {"name": "digits"}, "output_dir": str(tmp_path / "runs")}
    raw = apply_overrides(raw, [change.replace(": ", "=", 1)])
    if raw.get("method", {}).get("name") in ("sbt", "soft-label", "hard") and "soft_labels" not in raw:
        raw["soft_labels"] = {"source": "teacher", "checkpoint": "t.pt"} if raw["method"]["name"] != "sbt" else None
        raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=LOAD_TIME[change]):
        recipe_from_dict(raw)
    assert not (tmp_path / "runs").exists()


def test_a_typo_in_the_last_recipe_of_a_comparison_fails_in_seconds_and_writes_nothing(tmp_path, capsys):
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"name": "t", "student": "mlp", "epochs": 50, "data": {"name": "digits"}}))
    good = {"name": "kd", "student": "mlp", "epochs": 50, "data": {"name": "digits"}, "method": {"name": "kd"},
            "soft_labels": {"source": "teacher", "recipe": "teacher.yaml"}}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**good, "name": "typo", "student": "cnn-smal"}))
    out = tmp_path / "runs"
    assert main(["compare", str(tmp_path / "kd.yaml"), str(tmp_path / "typo.yaml"), "--output", str(out)]) == 2
    assert "unknown model 'cnn-smal'; did you mean 'cnn-small'" in capsys.readouterr().err
    assert not out.exists()  # the teacher was not trained, nothing was written


def test_a_teacher_of_other_data_is_refused_when_the_recipe_loads_unless_asked_for(tmp_path):
    from softdistill.runner import run_recipe

    teacher = {"name": "t", "student": "mlp", "epochs": 1, "data": {"name": "digits", "val_size": 100},
               "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(teacher))
    student = {"name": "s", "student": "mlp", "epochs": 1, "data": {"name": "fashion-mnist", "per_class": 5},
               "method": {"name": "kd"}, "output_dir": str(tmp_path / "runs")}
    other = "the teacher was trained on other data \\(data set 'digits' there, 'fashion-mnist' here; .*image size 8 " \
            "there, 28 here\\).*allow_other_data: true"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**student, "soft_labels": {"source": "teacher", "recipe": "t.yaml"}}))
    with pytest.raises(ConfigError, match=other):
        load_recipe(tmp_path / "s.yaml")
    assert not (tmp_path / "runs").exists()  # refused before the teacher trained
    run_recipe(recipe_from_dict(teacher), quiet=True)
    checkpoint = tmp_path / "runs" / "t" / "seed0" / "best.pt"
    for source in ("teacher", "cache"):  # a checkpoint: its recorded data
        (tmp_path / "s.yaml").write_text(yaml.safe_dump({**student, "soft_labels": {"source": source,
                                                                                    "checkpoint": str(checkpoint)}}))
        with pytest.raises(ConfigError, match=other):
            load_recipe(tmp_path / "s.yaml")
    # asked for on purpose: the shapes must still fit (8x8 digits cannot teach 28x28 images)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**student, "soft_labels": {
        "source": "teacher", "checkpoint": str(checkpoint), "allow_other_data": True}}))
    recipe = load_recipe(tmp_path / "s.yaml")
    with pytest.raises(Exception, match="was trained on 8x8 images, the data has 28x28"):
        run_recipe(recipe, quiet=True)


def test_a_quickstart_of_no_jobs_is_refused_before_it_starts(tmp_path, capsys):
    assert main(["quickstart", "--tiny", "--jobs", "0", "--output", str(tmp_path / "qs")]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()
