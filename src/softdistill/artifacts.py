"""The one artifact resolver: a recipe names another recipe whose product it needs.

A teacher checkpoint (``soft_labels.recipe``), a VAE (``method.vae.path``), a store (a label
recipe's run folder, ``soft_labels.recipe`` of ``source: store``): the
dependency's recipe is loaded with the machine settings of the recipe that asks for it
(:func:`softdistill.schema.not_identity`, ``inherited``), refused if its run folder was made by
another version of it, found finished (in its own run folder, or in an output folder beside it in
the current folder: :func:`finished_run`), else trained (or finished) once, and the path of its product returned.  A
dependency that names a file (a checkpoint, a vae.pt, a soft-label file) (or a store folder) is
returned as it is.  Paths are relative to the folder of the recipe that names them.

A run found in another output folder is used only when it is verifiably the same run: finished
(``summary.json``), its ``config.yaml`` and, for a checkpoint, the recipe recorded inside the
product both equal to the needed recipe (settings declared outside a run's identity aside:
:func:`softdistill.runs.recipe_differences`).  A recipe that names dependencies of its own (a
store labelled by a teacher) is not looked for elsewhere: its config names them by paths relative
to its recipe file, which do not prove that they were the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import yaml

from softdistill.checkpoint import CheckpointError, load_checkpoint
from softdistill.config import RunRecipe, dependency_recipe
from softdistill.runs import RunInterrupted, check_same_recipe, recipe_differences, run_dir_state
from softdistill.soft_labels.base import Dependency

__all__ = ["resolve_product", "finished_run", "pending_dependencies", "runs_elsewhere"]

_said: set[str] = set()  # the notes on runs found elsewhere that this process has printed


def _note_once(message: str) -> None:
    """Print a note on a run found elsewhere once per process (every recipe of a compare that needs
    the same teacher resolves it)."""
    if message not in _said:
        _said.add(message)
        print(message)


def runs_elsewhere(recipe: RunRecipe) -> list[Path]:
    """Where a run of ``recipe`` made under another output folder may lie: ``NAME/seedS`` in the
    folders inside its output folder and, when that folder's parent lies in the current folder (the
    project), in the parent and every folder beside the output folder; e.g. for
    ``runs/kd-100/fmnist-teacher/seed0``: ``runs/fmnist-teacher/seed0``, ``runs/quickstart/fmnist-teacher/seed0``."""
    tail = Path(recipe.name) / f"seed{recipe.seed}"
    output = Path(recipe.output_dir)
    roots = [output] + ([output.parent] if output.parent.resolve().is_relative_to(Path.cwd().resolve()) else [])
    places = [place for root in roots for place in (root / tail, *sorted(root.glob(f"*/{tail}")))]
    own, found = recipe.run_dir.resolve(), {}
    for place in places:
        found.setdefault(place.resolve(), place)
    found.pop(own, None)
    return list(found.values())


def _moved(recipe: RunRecipe, run_dir: Path) -> RunRecipe:
    """``recipe`` with the output folder that holds ``run_dir`` (``OUTPUT_DIR/NAME/seedS``)."""
    return recipe.model_copy(update={"output_dir": str(run_dir.parent.parent)})


def _differences(found: RunRecipe, dependency: Dependency) -> list[str]:
    """What stops the finished run of ``found`` from standing for ``found`` (empty: the same run): its
    config.yaml, and the recipe a checkpoint product records, against ``found``."""
    run_dir = found.run_dir
    product = found.product_path(dependency)
    if not product.exists():
        return [f"its {product.name} is missing"]
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        recorded = load_checkpoint(product)["config"] if product.suffix == ".pt" else saved
    except (OSError, UnicodeDecodeError, yaml.YAMLError, CheckpointError) as exc:
        return [f"unreadable ({' '.join(str(exc).split())})"]
    return recipe_differences(saved, found) or [f"{product.name}: {d}" for d in recipe_differences(recorded, found)]


def finished_run(needed: RunRecipe, dependency: Dependency, *, quiet: bool = True,
                 trained_here: Collection[Path] = ()) -> RunRecipe | None:
    """``needed`` pointed at a finished run of it: its own run folder when finished, else the first run
    of :func:`runs_elsewhere` that is the same run (see the module docstring); None when there is none.
    ``trained_here``: resolved run folders that the caller trains anyway (the rows of a comparison), whose
    recipes are not looked for elsewhere.  Unless ``quiet``, says why each run found elsewhere that
    differs is not used."""
    if run_dir_state(needed.run_dir) == "finished":
        return needed
    if needed.dependencies() or needed.run_dir.resolve() in trained_here:
        return None
    for place in runs_elsewhere(needed):
        if run_dir_state(place) != "finished":
            continue
        candidate = _moved(needed, place)
        differences = _differences(candidate, dependency)
        if not differences:
            return candidate
        if not quiet:
            _note_once(f"[softdistill] not using {place} for {needed.noun} {needed.name!r}: it differs from the "
                       "recipe:\n  " + "\n  ".join(differences))
    return None


def pending_dependencies(recipe: RunRecipe, trained_here: Collection[Path] = ()) -> list[Path]:
    """The run folders of the recipes ``recipe`` names (teachers, stores, VAEs) that are not finished,
    neither there nor, unless they are in ``trained_here``, in an output folder beside (:func:`finished_run`)."""
    pending = []
    for dependency in recipe.dependencies():
        _, needed = dependency_recipe(recipe, dependency)
        if needed is not None and finished_run(needed, dependency, trained_here=trained_here) is None:
            pending.append(needed.run_dir.resolve())
    return pending


def resolve_product(recipe: RunRecipe, dependency: Dependency, run: Callable[..., Any], *, quiet: bool = False,
                    trained_here: Collection[Path] = ()) -> Path:
    """The file ``dependency`` of ``recipe`` names; ``run(dep_recipe, resume=..., quiet=...)`` trains a dependency
    recipe (``trained_here``: see :func:`finished_run`)."""
    path, needed = dependency_recipe(recipe, dependency)
    if needed is None:
        return path
    check_same_recipe(needed)
    what = f"{needed.name!r} seed {needed.seed}, which {dependency.field} of {recipe.name!r} names"
    found = finished_run(needed, dependency, quiet=quiet, trained_here=trained_here)
    if found is None:
        state = run_dir_state(needed.run_dir)
        verb = "labelling" if dependency.kind == "store" else "training"
        if not quiet:
            print(f"[softdistill] {verb} {what}, first: {needed.run_dir}"
                  + (" (continued from its last.pt)" if state == "partial" else ""))
        try:
            run(needed, resume=(state == "partial"), quiet=quiet)
        except RunInterrupted as exc:
            raise RunInterrupted(f"while {verb} {what}: {exc.kept}", resume=False) from None
        found = needed
    elif found.run_dir != needed.run_dir and not quiet:
        left = " (its unfinished run there is left as it is)" if run_dir_state(needed.run_dir) == "partial" else ""
        _note_once(f"[softdistill] {needed.noun} {needed.name!r} seed {needed.seed}: using its finished run "
                   f"{found.run_dir} (the same recipe: its config.yaml and {found.product_path(dependency).name} "
                   f"checked) instead of training it again into {needed.run_dir}{left}")
    product = found.product_path(dependency)
    if not product.exists():
        hint = (f" (the recipe keeps epoch checkpoints only for train.keep_epochs = {needed.train.keep_epochs})"
                if dependency.select.startswith("epoch_") else "")
        raise CheckpointError(f"{dependency.field}: {product} does not exist{hint}")
    return product
