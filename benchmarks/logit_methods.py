"""The logit methods under one protocol (benchmarks/results/logit-methods.md).

Two tasks, each with its own ResNet-8 teacher, the quickstart's MLP student, 40 epochs, SGD lr 0.02
(momentum 0.9, weight decay 5e-4, cosine), batch 64, seeds 0..N-1:

- ``fmnist``: Fashion-MNIST (10 classes), 300 training images per class (3,000), the quickstart's
  teacher (recipes/quickstart/teacher.yaml); crop+flip store of 40 views (one per epoch);
- ``pairs``: two Fashion-MNIST items side by side, class = the ordered pair (100 classes,
  softdistill.data.pairs) on a 56 x 56 canvas, 100 training images per class (10,000), its teacher
  recipes/logit/teacher-pairs.yaml; crop store of 8 views, cycled (epoch e shows view (e - 1) mod 8).
  Smaller than Fashion-MNIST's protocol to fit a 2-core machine: a ResNet-8 forward on 56 x 56
  costs four times one on 28 x 28, and 300 images per class would have been 30,000 images.

Rows: CE (the quickstart's baseline), KD (the quickstart's cached KD) and every method of
recipes/logit/ at its authors' defaults; and MLKD at half the learning rate (0.01), as the authors
halve theirs against the other methods' recipes (0.025 against 0.05). A row runs in a
``softdistill compare`` of its own, so that a row whose runs diverge does not stop the table: the
script prints how each of its seeds ended.  Each task runs two tables into one output folder (one
teacher): ``clean``, the teacher's logits cached on the clean images (MLKD needs two views of each
sample and has no row there), and ``cropflip``, crop+flip views (pad 2; the pairs crop only: a flip
swaps their halves) labelled once into one store that every row reads (view seed 0 for every seed;
MLKD reads the epoch's view and the next).  The variant recipes are written to
OUTPUT/recipes/ and run by ``softdistill compare``; each table is OUTPUT/TASK/report-VARIANT/table.md.

Usage::

    python benchmarks/logit_methods.py runs/logit --jobs 2 -o train.threads=1
    python benchmarks/logit_methods.py runs/logit-tiny --tiny      # a few epochs and samples: the script runs
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from softdistill.config import read_recipe_file
from softdistill.engine.trainer import NonFiniteLossError
from softdistill.experiments import compare, packaged_recipes, write_report

QUICKSTART, LOGIT, STORE = (packaged_recipes(group) for group in ("quickstart", "logit", "store"))
METHODS = ("dkd", "dist", "nkd", "uskd", "kd-ls", "ttm", "wttm", "ctkd", "mlkd")


#: rows beyond the authors' defaults: name -> (the row whose recipe they change, the changes)
CHANGED = {"mlkd-half-lr": ("mlkd", {"optim": {"lr": 0.01}})}


def rows() -> dict[str, Path]:
    """Every row, CE first (the baseline): row name -> the packaged recipe."""
    return {"ce": QUICKSTART / "baseline.yaml", "kd": QUICKSTART / "kd.yaml",
            **{method: LOGIT / f"{method}.yaml" for method in METHODS},
            **{name: LOGIT / f"{row}.yaml" for name, (row, _) in CHANGED.items()}}


@dataclass(frozen=True)
class Task:
    """What a task changes in every student recipe's data section, its crop+flip augmentation, its teacher."""

    name: str
    data: dict[str, Any]
    augment: dict[str, Any]
    teacher: Path
    views: int


def tasks(folder: Path, tiny: bool) -> dict[str, Task]:
    """The two tasks; with ``tiny``, teachers of one epoch on 50 images per class (written to ``folder``)."""
    made = {"fmnist": Task("fmnist", {}, {"crop_padding": 2, "hflip": True}, QUICKSTART / "teacher.yaml", 40),
            "pairs": Task("pairs", {"name": "fashion-mnist-pairs", "canvas": 56, "per_class": 100},
                          {"crop_padding": 2, "hflip": False}, LOGIT / "teacher-pairs.yaml", 8)}
    if tiny:
        for task in made.values():
            raw = read_recipe_file(task.teacher)
            raw.update(name=f"{raw['name']}-tiny", epochs=1)
            raw["data"].update(per_class=50)
            made[task.name] = replace(task, teacher=write(folder / task.name / f"{raw['name']}.yaml", raw))
    return made


def shrink(data: dict[str, Any], tiny: bool) -> None:
    """A student's (or its store's) data section, with ``tiny``: 10 images per class, 200 validation images."""
    if tiny:
        data.update(per_class=10, val_size=200)


def store_recipe(task: Task, folder: Path, tiny: bool) -> Path:
    """The task's label recipe (the packaged 40-view crop+flip store of Fashion-MNIST, changed for the task)."""
    raw = read_recipe_file(STORE / "fmnist-cropflip.yaml")
    raw["name"] = f"{task.name}-store-cropflip"
    raw["data"].update(task.data, augment=task.augment, views=task.views, view_seed=0)
    shrink(raw["data"], tiny)
    raw["soft_labels"]["recipe"] = str(task.teacher)
    return write(folder / f"{raw['name']}.yaml", raw)


def variant(task: Task, row: str, which: str, folder: Path, store: Path, tiny: bool) -> Path | None:
    """The recipe of ``row`` in table ``which`` (clean | cropflip) of ``task``, written to ``folder``; None when
    the method cannot run there (MLKD on the clean images)."""
    raw = read_recipe_file(rows()[row])
    if which == "clean" and raw.get("method", {}).get("name") == "mlkd":
        return None
    raw["name"] = f"{task.name}-{row}" + ("-cropflip" if which == "cropflip" else "")
    for section, changes in CHANGED.get(row, ("", {}))[1].items():
        raw[section].update(changes)
    raw["data"].update(task.data)
    if which == "cropflip":
        raw["data"].update(augment=task.augment, views=task.views, view_seed=0)
    shrink(raw["data"], tiny)
    if raw.get("soft_labels") is not None:
        raw["soft_labels"] = ({"source": "store", "recipe": str(store)} if which == "cropflip"
                              else {"source": "cache", "recipe": str(task.teacher)})
    return write(folder / which / f"{raw['name']}.yaml", raw)


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", default="runs/logit", help="output folder")
    parser.add_argument("--tasks", nargs="+", default=["fmnist", "pairs"], choices=["fmnist", "pairs"])
    parser.add_argument("--tables", nargs="+", default=["clean", "cropflip"], choices=["clean", "cropflip"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (softdistill compare --jobs)")
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="key=value for every recipe")
    parser.add_argument("--tiny", action="store_true", help="10 images per class, 2 epochs, 1 seed: checks the script")
    args = parser.parse_args()
    out = Path(args.output).resolve()
    epochs = 2 if args.tiny else None
    seeds = 1 if args.tiny else args.seeds
    every = tasks(out / "recipes", args.tiny)
    for name in args.tasks:
        task, folder = every[name], out / "recipes" / name
        store = store_recipe(task, folder, args.tiny)
        for which in args.tables:
            paths = [p for row in rows() if (p := variant(task, row, which, folder, store, args.tiny)) is not None]
            finished, failed = [], {}
            for path in paths:  # a row at a time: a row that diverges is reported, the others still run
                recipe = yaml.safe_load(path.read_text())["name"]
                try:
                    compare([path], seeds=seeds, epochs=epochs, overrides=args.overrides, output_dir=out / name,
                            report_dir=out / name / "report-rows" / recipe, jobs=args.jobs, quiet=True)
                    finished.append(recipe)
                except NonFiniteLossError:
                    failed[recipe] = seed_outcomes(path, seeds, epochs, args.overrides, out / name)
            result = write_report(out / name, finished, finished[0], title=f"logit methods: {name}, {which}",
                                  report_dir=out / name / f"report-{which}")
            print(f"## {name}, {which}\n\n{result.markdown}\n", flush=True)
            for recipe, outcomes in failed.items():
                print(f"{recipe}: " + "; ".join(outcomes), flush=True)


def seed_outcomes(path: Path, seeds: int, epochs: int | None, overrides: list[str], output: Path) -> list[str]:
    """How each seed of a row that diverged ended: its last test accuracy, or the error that stopped it."""
    outcomes = []
    for seed in range(seeds):
        try:
            result = compare([path], seeds=[seed], epochs=epochs, overrides=overrides, output_dir=output,
                             report_dir=output / "report-rows" / f"{path.stem}-seed{seed}", quiet=True)
            outcomes.append(f"seed {seed}: {result.results[0].last[0]:.2f} % last")
        except NonFiniteLossError as exc:
            outcomes.append(f"seed {seed}: {str(exc).split('. ')[0]}")
    return outcomes


if __name__ == "__main__":
    main()
