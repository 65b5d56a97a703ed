"""The one artifact resolver: a recipe names another recipe whose product it needs.

A teacher checkpoint (``soft_labels.recipe``), a VAE (``method.vae.path``), a store (a label
recipe's run folder, ``soft_labels.recipe`` of ``source: store``): the
dependency's recipe is loaded with the machine settings of the recipe that asks for it
(:func:`softdistill.schema.not_identity`, ``inherited``), refused if its run folder was made by
another version of it, trained (or finished) once when its run is not finished, and the path of
its product returned.  A dependency that names a file (a checkpoint, a vae.pt, a soft-label file)
(or a store folder) is returned as it is.  Paths are relative to the folder of the recipe that
names them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from softdistill.checkpoint import CheckpointError
from softdistill.config import RunRecipe, dependency_recipe
from softdistill.runs import RunInterrupted, check_same_recipe, run_dir_state
from softdistill.soft_labels.base import Dependency

__all__ = ["resolve_product"]


def resolve_product(recipe: RunRecipe, dependency: Dependency, run: Callable[..., Any], *, quiet: bool = False) -> Path:
    """The file ``dependency`` of ``recipe`` names; ``run(dep_recipe, resume=..., quiet=...)`` trains a dependency recipe."""
    path, needed = dependency_recipe(recipe, dependency)
    if needed is None:
        return path
    check_same_recipe(needed)
    state = run_dir_state(needed.run_dir)
    if state != "finished":
        verb = "labelling" if dependency.kind == "store" else "training"
        what = f"{needed.name!r} seed {needed.seed}, which {dependency.field} of {recipe.name!r} names"
        if not quiet:
            print(f"[softdistill] {verb} {what}, first: {needed.run_dir}"
                  + (" (continued from its last.pt)" if state == "partial" else ""))
        try:
            run(needed, resume=(state == "partial"), quiet=quiet)
        except RunInterrupted as exc:
            raise RunInterrupted(f"while {verb} {what}: {exc.kept}", resume=False) from None
    product = needed.product_path(dependency)
    if not product.exists():
        hint = (f" (the recipe keeps epoch checkpoints only for train.keep_epochs = {needed.train.keep_epochs})"
                if dependency.select.startswith("epoch_") else "")
        raise CheckpointError(f"{dependency.field}: {product} does not exist{hint}")
    return product
