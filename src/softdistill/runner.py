"""Turn a recipe into a run: data, teacher, student, method, optimiser, trainer.

This is the only place that knows all the parts; the trainer below it knows none by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from softdistill.checkpoint import CheckpointError
from softdistill.config import ConfigError, Recipe, RunRecipe, load_recipe
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import DataBundle, prepare_from_spec
from softdistill.data.shifts import ood_sets
from softdistill.engine import DistContext, LRSchedule, Trainer, build_optimizer, init_distributed
from softdistill.engine.trainer import RunStateError, config_differences, write_text_atomic
from softdistill.methods import method_class
from softdistill.models import build_model
from softdistill.targets import CachedTeacher, load_teacher
from softdistill.targets.weak import weak_source
from softdistill.types import InputSpec, MethodContext

__all__ = ["run_recipe", "run_dir_state", "check_same_recipe", "teacher_checkpoint", "load_data", "INHERITED_BY_TEACHER"]

# Settings of the machine rather than of the experiment: a teacher recipe takes them from the
# recipe that asks for it, so that `-o data.root=...` or `-o output_dir=...` reach the teacher too.
INHERITED_BY_TEACHER = ("data.root", "data.download", "train.device", "train.threads", "train.eval_every",
                        "output_dir")
# Keys that do not change what a run computes: a run folder made under other values still counts.
NOT_IDENTITY = ("description", "output_dir", "data.root", "data.download", "train.device", "train.threads",
                "train.eval_every")


def load_data(recipe: RunRecipe) -> DataBundle:
    """The splits and normalisation that the recipe's ``data`` section describes."""
    return prepare_from_spec(recipe.data.model_dump(), download=recipe.data.download)


def _inherited_overrides(recipe: Recipe) -> list[str]:
    """The INHERITED_BY_TEACHER settings of ``recipe`` as dotted overrides for the runs it depends on."""
    inherited = []
    for key in INHERITED_BY_TEACHER:
        value: Any = recipe
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None:
            inherited.append(f"{key}={json.dumps(value)}")
    return inherited


def _teacher_recipe(recipe: Recipe) -> Recipe:
    return load_recipe(recipe.resolve_path(recipe.teacher.recipe), _inherited_overrides(recipe))


def teacher_checkpoint(recipe: Recipe, quiet: bool = False) -> Path:
    """The teacher checkpoint a recipe asks for; trains (or finishes) its teacher recipe first if needed."""
    spec = recipe.teacher
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"teacher checkpoint not found: {path} (teacher.checkpoint is relative to "
                                  "the working directory)")
        return path
    teacher = _teacher_recipe(recipe)
    run_dir = teacher.run_dir
    state = run_dir_state(run_dir)
    check_same_recipe(teacher)
    if state != "finished":
        if not quiet:
            print(f"[softdistill] training teacher recipe {teacher.name!r} into {run_dir}")
        run_recipe(teacher, resume=(state == "partial"), quiet=quiet)
    path = run_dir / f"{spec.select}.pt"
    if not path.is_file():
        hint = (f" (the teacher recipe keeps epoch checkpoints only for train.keep_epochs = {teacher.train.keep_epochs})"
                if spec.select.startswith("epoch_") else "")
        raise CheckpointError(f"teacher checkpoint {path} does not exist{hint}")
    return path


def _loaders(recipe: Recipe, data: DataBundle, ctx: DistContext
             ) -> tuple[BatchLoader, dict[str, BatchLoader], dict[str, BatchLoader], BatchTransform]:
    """Training, per-epoch evaluation (val, test) and final evaluation (out-of-domain test sets) loaders."""
    d = recipe.data
    transform = BatchTransform(data.mean, data.std, d.augment.crop_padding, d.augment.hflip)
    common = dict(rank=ctx.rank, world_size=ctx.world_size)
    train = BatchLoader(data.train, d.batch_size, transform, shuffle=True, drop_last=d.drop_last, augment=True,
                        seed=recipe.seed, **common)
    evals = {name: BatchLoader(split, d.eval_batch_size, transform, **common)
             for name, split in (("val", data.val), ("test", data.test)) if split is not None}
    finals = {name: BatchLoader(split, d.eval_batch_size, transform, **common)
              for name, split in ood_sets(data.test, d.ood, seed=d.split_seed).items()}
    return train, evals, finals, transform


def run_recipe(recipe: Recipe, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train what the recipe describes into ``recipe.run_dir``; return the run summary."""
    cls = method_class(recipe.method.name)
    try:
        cls.check_teacher(recipe.teacher is not None or recipe.weak is not None)
    except ValueError as exc:
        raise ConfigError(f"{recipe.source or recipe.name}: {exc}") from None
    if recipe.teacher is not None and recipe.teacher.cache and (recipe.data.augment.crop_padding or recipe.data.augment.hflip):
        raise ConfigError("teacher.cache needs data.augment off: a cached soft label belongs to the clean view "
                          "of its image, and would be stale for an augmented one")
    ctx = init_distributed(recipe.train.device)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    teacher_path = teacher_checkpoint(recipe, quiet=quiet) if recipe.teacher is not None else None

    data = load_data(recipe)
    train_loader, eval_loaders, final_loaders, transform = _loaders(recipe, data, ctx)
    for loader in (train_loader, *eval_loaders.values(), *final_loaders.values()):
        loader.data = loader.data.to(ctx.device)

    teacher = None
    if teacher_path is not None:
        teacher = load_teacher(teacher_path, data.num_classes, data.in_channels, data.mean, data.std,
                               recipe.teacher.batchnorm_train_mode).to(ctx.device)
        if recipe.teacher.cache:
            clean = BatchLoader(train_loader.data, recipe.data.eval_batch_size, transform)
            teacher = CachedTeacher.from_teacher(teacher, clean, len(data.train))
    weak_report = None
    if recipe.weak is not None:  # weak-supervision soft labels take the teacher's place
        seed = recipe.weak.seed if recipe.weak.seed is not None else recipe.seed
        teacher, weak_report = weak_source(recipe.weak, data.train.labels, data.num_classes, seed)
        teacher = teacher.to(ctx.device)

    torch.manual_seed(recipe.seed)
    student = build_model(recipe.student, data.num_classes, data.in_channels, data.image_size).to(ctx.device)
    context = MethodContext(InputSpec(data.in_channels, data.image_size, tuple(data.mean), tuple(data.std)),
                            resolve_artifact=lambda path: _artifact(recipe, path, quiet), quiet=quiet)
    method = cls(recipe.method, student, data.num_classes, teacher, context).to(ctx.device)
    if ctx.distributed:
        method.student = DistributedDataParallel(student, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = build_optimizer(method.trainable_parameters(), **recipe.optim.model_dump())
    s = recipe.schedule
    schedule = LRSchedule(s.name, recipe.optim.lr, recipe.epochs, len(train_loader), s.milestones, s.gamma,
                          s.warmup_epochs, s.min_lr)
    meta = {
        "model": {"name": recipe.student, "num_classes": data.num_classes, "in_channels": data.in_channels,
                  "image_size": data.image_size},
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "data": {"name": data.name, "class_names": list(data.class_names)},
        "config": recipe.to_dict(),
    }
    run_dir = recipe.run_dir
    trainer = Trainer(method, optimizer, schedule, train_loader, eval_loaders, run_dir, epochs=recipe.epochs,
                      seed=recipe.seed, checkpoint_meta=meta, ctx=ctx, amp=recipe.train.amp,
                      keep_epochs=recipe.train.keep_epochs, quiet=quiet,
                      config_check=lambda saved: recipe_differences(saved, recipe),
                      eval_every=recipe.train.eval_every, final_loaders=final_loaders)
    if ctx.is_main and run_dir_state(run_dir) == "new":
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    if ctx.is_main and weak_report is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "weak.json", json.dumps(weak_report, indent=2, default=str))
    if not quiet and ctx.is_main:
        what = f"{recipe.method.name} | student {recipe.student}" + (f" | teacher {teacher_path}" if teacher_path else "")
        if weak_report is not None:
            what += (f" | weak {weak_report['kind']}: unreliability {weak_report['unreliability']:.3f}, "
                     f"ambiguity {weak_report['ambiguity']:.3f} at k={weak_report['k']}")
        print(f"[softdistill] {recipe.name} seed {recipe.seed}: {what} -> {run_dir}"
              f" ({len(data.train)} train images, {ctx.world_size} process(es), {ctx.device})")
    return trainer.fit(resume=resume)


def _artifact(recipe: Recipe, path: str, quiet: bool) -> Path:
    """A file a method names in ``recipe``: a VAE recipe is trained once (inheriting the machine
    settings, like a teacher recipe) and its ``vae.pt`` returned; any other path must exist."""
    from softdistill.vae_training import vae_checkpoint

    return vae_checkpoint(recipe.resolve_path(path), overrides=_inherited_overrides(recipe), quiet=quiet)


def recipe_differences(saved: Any, recipe: RunRecipe) -> list[str]:
    """What changed between a saved config and a recipe, ignoring NOT_IDENTITY keys.

    The saved config is read through today's schema first, so a key added to the schema since
    then counts as unchanged when the recipe leaves it at its default.
    """
    try:
        saved = type(recipe).from_dict(saved).to_dict()
    except ConfigError:
        pass  # a key was removed from the schema since: compare the raw dicts
    return config_differences(saved, recipe.to_dict(), NOT_IDENTITY)


def check_same_recipe(recipe: RunRecipe) -> None:
    """Refuse to reuse a run folder that another version of the recipe produced (stale results)."""
    path = recipe.run_dir / "config.yaml"
    if not path.is_file():
        return
    diffs = recipe_differences(yaml.safe_load(path.read_text()), recipe)
    if diffs:
        raise RunStateError(f"{recipe.run_dir} was produced by a different version of {recipe.kind} {recipe.name!r}:\n  "
                            + "\n  ".join(diffs) + "\nDelete that folder or choose another output_dir to rerun it.")


def run_dir_state(run_dir: str | os.PathLike) -> str:
    """``finished``, ``partial`` (a checkpoint to resume) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists():
        return "finished"
    return "partial" if (run_dir / "last.pt").exists() else "new"
