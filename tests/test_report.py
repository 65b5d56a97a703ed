"""Report tables: method labels from saved configs, teachers with their accuracy, comparable out-of-domain rows."""

import json
import shutil
from pathlib import Path

import pytest

from softdistill.config import load_recipe
from softdistill.experiments import packaged_recipes, write_report
from softdistill.report.plots import DIAGNOSTIC_KEYS, plot_diagnostics
from softdistill.report.tables import RecipeResult, TeacherResult, format_markdown, method_label

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.parametrize("config, teacher_model, label", [
    ({"student": "mlp", "method": {"name": "ce"}}, None, "ce"),
    ({"student": "mlp", "method": {"name": "kd"}}, "mlp", "kd (self)"),
    ({"student": "mlp", "method": {"name": "kd"}}, "resnet8", "kd"),
    ({"student": "mlp", "method": {"name": "kd"}, "soft_labels": {"source": "cache", "select": "epoch_1"}}, "resnet8",
     "kd (teacher epoch_1)"),
    ({"student": "mlp", "method": {"name": "ida", "correction": "replace"}}, "cnn", "ida (KD-i)"),
    ({"student": "mlp", "method": {"name": "ida", "correction": "none", "order_penalty": 2}}, "cnn", "ida (KD-p)"),
    ({"student": "mlp", "method": {"name": "ida", "correction": "none", "order_penalty": 0}}, "cnn", "ida (KD-aug)"),
    ({"student": "mlp", "method": {"name": "ida", "correction": "add"}, "data": {"augment": {"mix": "cutmix"}}}, "cnn",
     "ida (KD-i add, cutmix)"),
    ({"student": "mlp", "method": {"name": "ida", "correction": "add"}, "data": {"augment": {"mix": "mixup"}}}, "cnn",
     "ida (KD-i add)"),
    ({"student": "mlp", "method": {"name": "hard", "augmentor": "vae", "strength": "random"}}, "cnn",
     "hard (vae, random strength)"),
    ({"student": "mlp", "method": {"name": "tfkd-reg", "mode": "reference"}}, None, "tfkd-reg (reference)"),
    ({"student": "mlp", "method": {"name": "ls", "convention": "others"}}, None, "ls (others)"),
    ({"student": "mlp", "method": {"name": "soft-label"}, "soft_labels": {"source": "weak", "kind": "partial"}}, None,
     "soft-label (weak: partial)"),
])
def test_method_label_says_what_sets_a_run_apart(config, teacher_model, label):
    assert method_label(config, teacher_model) == label


def teacher_of(recipe):
    """The model of the teacher recipe a recipe's soft labels come from (through a store's label recipe)."""
    if recipe.soft_labels is None:
        return None
    path = recipe.resolve_path(recipe.soft_labels.recipe)
    if recipe.soft_labels.source == "store":
        labelled = load_recipe(path)
        path = labelled.resolve_path(labelled.soft_labels.recipe)
    return load_recipe(path).student


def test_quickstart_recipes_get_one_label_each():
    labels = {}
    for path in sorted(packaged_recipes("quickstart").glob("*.yaml")):
        if path.name.startswith("store"):  # a label recipe: the store of the IDA rows
            continue
        recipe = load_recipe(path)
        labels[recipe.name] = method_label(recipe.to_dict(), teacher_of(recipe))
    assert labels == {
        "fmnist-baseline": "ce", "fmnist-teacher": "ce", "fmnist-ls": "ls", "fmnist-kd": "kd",
        "fmnist-tfkd-self": "kd (self)", "fmnist-tfkd-reg": "tfkd-reg (paper)",
        "fmnist-tfkd-reg-reference": "tfkd-reg (reference)", "fmnist-wsl": "wsl", "fmnist-ida-mixup-kdi": "ida (KD-i)",
        "fmnist-ida-mixup-kdp": "ida (KD-p)", "fmnist-hard-affine": "hard (affine)"}


def test_report_evaluates_missing_out_of_domain_sets_as_training_does(tiny_quickstart, tmp_path):
    """A copy of the HARD runs without their final_acc: the report evaluates last.pt on the sets its
    config names and finds what training found."""
    source = tiny_quickstart / "digits-hard-affine"
    shutil.copytree(source, tmp_path / "digits-hard-affine")
    trained = {}
    for summary_path in sorted((tmp_path / "digits-hard-affine").glob("seed*/summary.json")):
        summary = json.loads(summary_path.read_text())
        trained[summary["seed"]] = summary.pop("final_acc")
        summary_path.write_text(json.dumps(summary))
    result = write_report(tmp_path, ["digits-hard-affine"], None, title="t")
    hard = result.results[0]
    assert set(trained) == set(hard.seeds) == {0, 1}
    assert hard.finals == [trained[seed] for seed in hard.seeds]
    assert "(digits-hard-affine: their last.pt on the same shifted test images)" in result.markdown


def test_the_readme_table_has_the_columns_the_tool_prints():
    printed = format_markdown([]).splitlines()[0]
    assert printed in README.read_text().splitlines(), f"README.md has no table with the header {printed}"


def _logged(method: str, keys: list[str], teacher: TeacherResult | None = None) -> RecipeResult:
    history = [{"epoch": e, **{f"train/{k}": 0.5 + 0.01 * e for k in keys}} for e in (1, 2, 3)]
    return RecipeResult(f"r-{method}", method, "mlp", {"epochs": 3}, teacher, histories=[history, history])


def test_diagnostics_draw_the_ida_rows_and_hards_teacher_against_its_clean_accuracy(tmp_path):
    logged = ["teacher_concordance", "teacher_top2"]  # what the IDA method logs (tests/test_ida_method.py)
    assert {f"train/{k}" for k in logged} <= set(DIAGNOSTIC_KEYS)
    assert plot_diagnostics([_logged("ida", logged)], tmp_path / "ida.png") and (tmp_path / "ida.png").is_file()
    teacher = TeacherResult(tmp_path / "best.pt", "t", "resnet8", 4, 4, 91.5, 10)
    assert plot_diagnostics([_logged("hard", ["aug_teacher_acc"], teacher)], tmp_path / "hard.png")
