"""Recipe schema: loading, overrides, and the messages a user sees for mistakes."""

import re
from pathlib import Path

import pytest
import yaml

from softdistill.config import ConfigError, apply_overrides, load_recipe, parse_override, recipe_from_dict
from softdistill.experiments import packaged_recipes
from softdistill.config import VAERecipe

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
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_every_shipped_recipe_validates():
    folder = packaged_recipes("")
    paths = sorted(folder.rglob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:  # the VAE recipes of HARD are trained by train-vae, label recipes by label, all others by train
        if "encoding" in yaml.safe_load(path.read_text()):
            load_recipe(path)
        else:
            (load_recipe if path.stem.startswith("vae") else load_recipe)(path)


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
