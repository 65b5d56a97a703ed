"""Run a recipe: its dependencies made first, its run folder's rules applied, then the run itself.

A training or VAE recipe is set up by :func:`softdistill.build.build_run` and fitted; a label recipe
writes its store (:func:`label_recipe`).  Dependencies (a teacher recipe, a VAE recipe, a label
recipe) are made or found by :func:`resolve_dependencies` (:mod:`softdistill.artifacts`).  A training
run's folder is locked from its first write to the end; Ctrl-C becomes a
:class:`~softdistill.runs.RunInterrupted` that says what the folder keeps.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from softdistill.artifacts import resolve_product
from softdistill.atomic import ensure_folder
from softdistill.build import Run, build_run, build_source, load_data, machine, make_loaders
from softdistill.checkpoint import CheckpointMeta, load_checkpoint
from softdistill.config import LabelRecipe, Recipe, RunRecipe, VAERecipe
from softdistill.data.loader import BatchTransform
from softdistill.engine.predict import autocast
from softdistill.runs import (RunInterrupted, RunStateError, check_outside_package, check_same_recipe, interruption,
                             lock_run_folder, recipe_differences, refuse_existing_run, resume_checkpoint, run_dir_state,
                             write_text_atomic)
from softdistill.runtime.distributed import DistContext, all_reduce_sum
from softdistill.schema import identity_dump
from softdistill.soft_labels import Dependency
from softdistill.labelling import label_store
from softdistill.sharded import MANIFEST
from softdistill.store.format import sha256_of
from softdistill.types import Batch

__all__ = ["run_recipe", "label_recipe", "resolve_dependencies", "product_of", "prepare_run"]


def product_of(recipe: RunRecipe, dependency: Dependency, quiet: bool = False,
               trained_here: Collection[Path] = ()) -> Path:
    """The file a dependency of ``recipe`` names, its recipe trained first if needed (:mod:`softdistill.artifacts`;
    ``trained_here``: see :func:`~softdistill.artifacts.finished_run`)."""
    return resolve_product(recipe, dependency, run_recipe, quiet=quiet, trained_here=trained_here)


def resolve_dependencies(recipe: RunRecipe, quiet: bool = False,
                         trained_here: Collection[Path] = ()) -> dict[Dependency, Path]:
    """Make (or find) every product ``recipe`` depends on, once; returns each dependency's file."""
    return {dependency: product_of(recipe, dependency, quiet, trained_here) for dependency in recipe.dependencies()}


def prepare_run(recipe: Recipe | VAERecipe, *, quiet: bool = False, **kwargs: Any) -> Run:
    """The run of ``recipe`` set up on its machine, its dependencies made first (``kwargs``: see
    :func:`~softdistill.build.build_run`)."""
    ctx = machine(recipe, distributed=not isinstance(recipe, VAERecipe))
    products = resolve_dependencies(recipe, quiet)  # teachers and VAEs first, each with its own output
    return build_run(recipe, ctx, products, quiet=quiet, **kwargs)


def _labeller_identity(recipe: LabelRecipe, products: dict[Dependency, Path]) -> dict[str, Any]:
    """Who labels: the source section, the sha256 of every file it names (of a store folder: its manifest, which
    holds the hash of every other file), and for a source of one model its spec and normalisation (read from the
    checkpoint; None for a source of several, e.g. an ensemble, whose models the files name)."""
    files, models = [], []
    for dependency, path in products.items():
        hashed = path / MANIFEST if path.is_dir() else path
        files.append({"field": dependency.field, "path": str(path), "sha256": sha256_of(hashed)})
        if dependency.kind == "model":
            models.append(CheckpointMeta.of(load_checkpoint(path), path))
    one = models[0] if len(models) == 1 else None
    return {"soft_labels": identity_dump(recipe.soft_labels), "files": files,
            "model": one.model.model_dump() if one is not None and one.model is not None else None,
            "normalization": one.normalization.model_dump() if one is not None else None, "amp": recipe.train.amp}


def label_recipe(recipe: LabelRecipe, *, quiet: bool = False, verify: bool = False) -> dict[str, Any] | None:
    """Write (or continue, or repair) the store of ``recipe`` into ``recipe.run_dir`` with
    :func:`~softdistill.labelling.label_store`; the summary on rank 0 (None on other ranks or when the store
    was complete and sound already).  ``verify``: a complete store's files are hashed, not only sized."""
    ctx = machine(recipe)
    products = resolve_dependencies(recipe, quiet)
    data = load_data(recipe)
    plan = recipe.view_plan
    views = make_loaders(recipe, data, ctx, BatchTransform(data.mean, data.std), plan).views
    source = build_source(recipe, data, ctx, views, products)
    assert source is not None  # the label recipe's rules

    def label(batch: Batch) -> torch.Tensor:
        with autocast(ctx.device, recipe.train.amp):
            return source(batch).float()

    run_dir = recipe.run_dir
    if ctx.is_main and run_dir_state(run_dir) == "new" and not (run_dir / "config.yaml").exists():
        ensure_folder(run_dir)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return label_store(label, data, plan, run_dir, encoding=recipe.encoding, batch_size=recipe.data.eval_batch_size,
                       shard_samples=recipe.shard_samples, device=ctx.device, loader=views,
                       identity=_labeller_identity(recipe, products), data_identity=recipe.data.split_identity(),
                       ctx=ctx, quiet=quiet, verify=verify)


def _interrupted_run(recipe: RunRecipe, run: Run | None) -> RunInterrupted:
    """What the folder of ``recipe``'s interrupted run keeps (``run`` is None until it is set up)."""
    last = recipe.run_dir / "last.pt"
    kept = run.trainer.recorder.kept if run is not None else None
    if kept is not None and kept != "none yet":
        return RunInterrupted(f"{last} keeps {kept} ({recipe.epochs} epochs in all)", resume=True)
    if run is None and last.exists():
        return RunInterrupted(f"{last} is as it was", resume=True)
    return RunInterrupted(f"{recipe.run_dir}: no epoch had finished, so no checkpoint was kept", resume=False)


def _finished_run(recipe: RunRecipe, quiet: bool) -> dict[str, Any]:
    """The summary of ``recipe``'s finished run, which ``--resume`` leaves as it is (same recipe only)."""
    check_same_recipe(recipe)
    if not quiet:
        print(f"[softdistill] {recipe.name} seed {recipe.seed}: {recipe.run_dir} has finished; nothing to resume")
    return json.loads((recipe.run_dir / "summary.json").read_text())


@contextlib.contextmanager
def _holding_run_folder(run_dir: Path, ctx: DistContext) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (:func:`softdistill.runs.lock_run_folder`) while the block
    runs; when it cannot, every rank stops (the others instead of waiting for it)."""
    with contextlib.ExitStack() as stack:
        refusal: RunStateError | None = None
        if ctx.is_main:
            try:
                stack.enter_context(lock_run_folder(run_dir))
            except RunStateError as exc:
                refusal = exc
        refused = all_reduce_sum(torch.tensor(float(refusal is not None), device=ctx.device), ctx)
        if refusal is not None:
            raise refusal
        if refused.item():
            raise RunStateError(f"process 0 could not lock {run_dir}: another process works on it (see process 0's message)")
        yield


def run_recipe(recipe: RunRecipe, *, resume: bool = False, quiet: bool = False, verify: bool = False
               ) -> dict[str, Any] | None:
    """Train what the recipe describes into ``recipe.run_dir`` (a label recipe: label its store,
    which always continues where it stopped and repairs damaged shards, hashing every file with
    ``verify``); return the run summary.  A training run's folder is locked from its first write to
    the end: a second process on it is refused.

    ``resume`` continues the run from its ``last.pt``; a finished run is left as it is.  Ctrl-C
    becomes a :class:`RunInterrupted` that says what the run folder keeps.
    """
    check_outside_package(recipe.run_dir)
    if isinstance(recipe, LabelRecipe):
        kept = f"{recipe.run_dir}: the shards labelled so far are kept"
        with interruption(lambda: RunInterrupted(kept, resume=False)):
            return label_recipe(recipe, quiet=quiet, verify=verify)
    if resume and run_dir_state(recipe.run_dir) == "finished":
        return _finished_run(recipe, quiet)
    same_recipe = functools.partial(recipe_differences, recipe=recipe)
    if not resume:  # before its teachers are made; checked again once the folder is locked
        refuse_existing_run(recipe.run_dir, same_recipe)
    run = None
    with interruption(lambda: _interrupted_run(recipe, run)):
        run = prepare_run(recipe, quiet=quiet)
        trainer, run_dir = run.trainer, recipe.run_dir
        ctx = trainer.ctx
        with _holding_run_folder(run_dir, ctx):  # from the first write on; a recipe that fails earlier leaves no folder
            state = resume_checkpoint(run_dir, resume, same_recipe, ctx.device)
            if ctx.is_main and run_dir_state(run_dir) == "new":
                write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            if ctx.is_main and run.source_report is not None:
                write_text_atomic(run_dir / "soft_labels.json", json.dumps(run.source_report, indent=2, default=str))
            if not quiet and ctx.is_main:
                print(f"[softdistill] {recipe.name} seed {recipe.seed}: {run.what} -> {run_dir}"
                      f" ({run.samples} train images, {ctx.world_size} process(es), {ctx.device})")
            return trainer.fit(state)
