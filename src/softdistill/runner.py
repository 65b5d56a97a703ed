"""Turn a recipe into a run: data, soft-label source, student, method, optimiser, trainer.

This is the only place that knows all the parts; the trainer below it knows none by name.  A
training recipe (:class:`~softdistill.config.Recipe`) and a VAE recipe
(:class:`~softdistill.config.VAERecipe`) both run through the same trainer.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from softdistill.artifacts import resolve_product
from softdistill.atomic import ensure_folder
from softdistill.augment.vae import ConvVAE
from softdistill.checkpoint import load_checkpoint
from softdistill.compatibility import VIEW_DEFINITION
from softdistill.config import LabelRecipe, Recipe, RunRecipe, VAERecipe
from softdistill.data.loader import BatchLoader, BatchTransform, EpochBatches, TensorSet
from softdistill.data.prepare import DataBundle, prepare_from_spec
from softdistill.data.shifts import ood_sets
from softdistill.data.stream import StreamLoader, StreamSet, split_loader
from softdistill.data.views import ViewPlan
from softdistill.engine import LRSchedule, Trainer, build_optimizer
from softdistill.runtime import DistContext, init_distributed
from softdistill.runtime.distributed import all_reduce_sum, resolve_device
from softdistill.engine.predict import autocast
from softdistill.engine.wrap import has_4d_weights, wrap
from softdistill.methods import method_class
from softdistill.models import build_model
from softdistill.runs import (RunInterrupted, RunStateError, check_same_recipe, interruption, lock_run_folder,
                             recipe_differences, run_dir_state, write_text_atomic)
from softdistill.store import Encoding, write_store
from softdistill.store.format import sha256_of
from softdistill.soft_labels import SoftLabelSource, SourceSetup, source_class
from softdistill.soft_labels.base import Dependency
from softdistill.soft_labels.store import DATA_IDENTITY
from softdistill.types import Batch, InputSpec, MethodContext
from softdistill.vae_training import VAETask

__all__ = ["run_recipe", "build_trainer", "label_store", "load_data", "resolve_dependencies", "product_of"]


def load_data(recipe: RunRecipe) -> DataBundle:
    """The splits and normalisation that the recipe's ``data`` section describes."""
    return prepare_from_spec(recipe.data.model_dump(), download=recipe.data.download)


def product_of(recipe: RunRecipe, dependency: Dependency, quiet: bool = False) -> Path:
    """The file a dependency of ``recipe`` names, its recipe trained first if needed (:mod:`softdistill.artifacts`)."""
    return resolve_product(recipe, dependency, run_recipe, quiet=quiet)


def resolve_dependencies(recipe: RunRecipe, quiet: bool = False) -> dict[Dependency, Path]:
    """Make (or find) every product ``recipe`` depends on, once; returns each dependency's file."""
    return {dependency: product_of(recipe, dependency, quiet) for dependency in recipe.dependencies()}


def _loader(split: TensorSet | StreamSet, batch_size: int, transform: BatchTransform, recipe: RunRecipe,
            device: torch.device, **rules: Any) -> BatchLoader | StreamLoader:
    """A loader over ``split`` (:func:`~softdistill.data.stream.split_loader`) with the recipe's stream settings."""
    return split_loader(split, batch_size, transform, device=device, workers=recipe.data.workers,
                        resize=recipe.data.eval_resize, on_corrupt=recipe.data.on_corrupt, **rules)


TEACHER_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _loaders(recipe: RunRecipe, data: DataBundle, ctx: DistContext, transform: BatchTransform, plan: ViewPlan
             ) -> tuple[BatchLoader | StreamLoader, dict[str, EpochBatches], dict[str, EpochBatches]]:
    """Training, per-epoch evaluation (val, test) and final evaluation (out-of-domain test sets) loaders."""
    d = recipe.data
    common = dict(rank=ctx.rank, world_size=ctx.world_size)
    train = _loader(data.train, d.batch_size, transform, recipe, ctx.device, shuffle=True, drop_last=d.drop_last,
                    plan=plan, seed=recipe.seed, **common)
    evals = {name: _loader(split, d.eval_batch_size, transform, recipe, ctx.device, **common)
             for name, split in (("val", data.val), ("test", data.test)) if split is not None}
    finals = {name: _loader(split, d.eval_batch_size, transform, recipe, ctx.device, **common)
              for name, split in ood_sets(data.test, d.ood, seed=d.split_seed).items()}
    return train, evals, finals


def _source(recipe: Recipe | LabelRecipe, data: DataBundle, ctx: DistContext, train: BatchLoader | StreamLoader,
            products: dict[Dependency, Path]) -> SoftLabelSource | None:
    spec = recipe.soft_labels
    if spec is None:
        return None
    setup = SourceSetup(data=data, device=ctx.device, plan=recipe.view_plan, seed=recipe.seed,
                        product=products.__getitem__,
                        train_loader=lambda: _loader(train.data, recipe.data.eval_batch_size, train.transform, recipe,
                                                     ctx.device, plan=recipe.view_plan),
                        data_spec=recipe.data.model_dump())
    return source_class(spec.source).build(spec, setup).to(ctx.device)


def _channels_last(recipe: Recipe, student: torch.nn.Module) -> bool:
    """``train.channels_last``, unless the student has no 2-D convolution (then it is ignored, said once)."""
    if not recipe.train.channels_last:
        return False
    if has_4d_weights(student):
        return True
    warnings.warn(f"train.channels_last is ignored: the student {recipe.student!r} has no 2-D convolution "
                  "(no 4-D weights), so its inputs gain nothing from that layout", stacklevel=2)
    return False


def _teacher_dtype(recipe: Recipe, ctx: DistContext) -> torch.dtype | None:
    if recipe.train.teacher_dtype == "float16" and ctx.device.type != "cuda":
        raise ValueError("train.teacher_dtype: float16 needs a CUDA device; on the CPU use bfloat16")
    return TEACHER_DTYPES[recipe.train.teacher_dtype]


def _classifier_parts(recipe: Recipe, ctx: DistContext, quiet: bool, data: DataBundle | None,
                      products: dict[Dependency, Path]) -> dict[str, Any]:
    data = data or load_data(recipe)
    transform = BatchTransform(data.mean, data.std)
    train, evals, finals = _loaders(recipe, data, ctx, transform, recipe.view_plan)
    source = _source(recipe, data, ctx, train, products)
    torch.manual_seed(recipe.seed)
    student = build_model(recipe.student, data.num_classes, data.in_channels, data.image_size).to(ctx.device)
    speed = recipe.train
    channels_last = _channels_last(recipe, student)
    for loader in (train, *evals.values(), *finals.values()):
        loader.channels_last = channels_last
    if source is not None:
        source.verify_lookups(train.data.ids, recipe.view_plan.distinct_views)
        source.prepare_inference(compile=speed.compile, channels_last=channels_last, dtype=_teacher_dtype(recipe, ctx))
    context = MethodContext(InputSpec(data.in_channels, data.image_size, tuple(data.mean), tuple(data.std)),
                            resolve_artifact=products.__getitem__, quiet=quiet)
    method = method_class(recipe.method.name)(recipe.method, student, data.num_classes, source, context).to(ctx.device)
    method.wrap(lambda module: wrap(module, ctx, compile=speed.compile, channels_last=channels_last,
                                    sync_batchnorm=speed.sync_batchnorm))
    optimizer = build_optimizer(method.trainable_parameters(), **recipe.optim.model_dump())
    s = recipe.schedule
    schedule = LRSchedule(s.name, recipe.optim.lr, recipe.epochs, len(train), s.milestones, s.gamma,
                          s.warmup_epochs, s.min_lr)
    meta = {
        "model": {"name": recipe.student, "num_classes": data.num_classes, "in_channels": data.in_channels,
                  "image_size": data.image_size},
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "data": {"name": data.name, "class_names": list(data.class_names)},
        "config": recipe.to_dict(),
    }
    report = source.report() if source is not None else None
    what = f"{recipe.method.name} | student {recipe.student}"
    if recipe.soft_labels is not None:
        what += f" | soft labels: {recipe.soft_labels.source}"
    if report is not None and "unreliability" in report:
        what += (f" ({report['kind']}: unreliability {report['unreliability']:.3f}, ambiguity "
                 f"{report['ambiguity']:.3f} at k={report['k']})")
    return dict(method=method, optimizer=optimizer, schedule=schedule, train=train, evals=evals, finals=finals,
                meta=meta, report=report, what=what, samples=len(data.train))


def _vae_parts(recipe: VAERecipe, ctx: DistContext) -> dict[str, Any]:
    if ctx.distributed:
        raise ValueError("train-vae runs in a single process; start it without torchrun")
    data = load_data(recipe)
    channels = data.in_channels
    to01 = BatchTransform((0.0,) * channels, (1.0,) * channels)  # the VAE models pixels in [0, 1]
    train, evals, _ = _loaders(recipe, data, ctx, to01, recipe.data.view_plan(recipe.seed))
    torch.manual_seed(recipe.seed)
    model = ConvVAE(channels, data.image_size, recipe.latent_dim, recipe.width).to(ctx.device)
    meta = {"kind": "vae", "vae": model.config, "normalization": {"mean": list(data.mean), "std": list(data.std)},
            "data": {"name": data.name, "in_channels": channels, "image_size": data.image_size},
            "config": recipe.to_dict()}
    task = VAETask(model, recipe.beta, meta, data.test.images[:8], recipe.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = LRSchedule("constant", recipe.lr, recipe.epochs, len(train))
    what = f"VAE | latent {recipe.latent_dim}, width {recipe.width}, beta {recipe.beta}"
    return dict(method=task, optimizer=optimizer, schedule=schedule, train=train, evals=evals, finals={}, meta=meta,
                report=None, what=what, samples=len(data.train))


def _labeller_identity(recipe: LabelRecipe, products: dict[Dependency, Path]) -> dict[str, Any]:
    """Who labels: the source section, the sha256 of every file it names, and for a model its spec and
    normalisation (read from the checkpoint)."""
    files, model, normalization = [], None, None
    for dependency, path in products.items():
        files.append({"field": dependency.field, "path": str(path), "sha256": sha256_of(path)})
        if dependency.kind == "model":
            payload = load_checkpoint(path)
            model, normalization = payload["model"], payload["normalization"]
    return {"soft_labels": recipe.soft_labels.model_dump(mode="json"), "files": files, "model": model,
            "normalization": normalization, "amp": recipe.train.amp}


def label_store(recipe: LabelRecipe, *, quiet: bool = False, verify: bool = False) -> dict[str, Any] | None:
    """Write (or continue, or repair) the store of ``recipe`` into ``recipe.run_dir``; the summary on
    rank 0 (None on other ranks or when the store was complete and sound already).  ``verify``: a
    complete store's files are hashed, not only sized."""
    ctx = init_distributed(recipe.train.device)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    products = resolve_dependencies(recipe, quiet)
    data = load_data(recipe)
    plan, batch_size = recipe.view_plan, recipe.data.eval_batch_size
    loader = _loader(data.train, batch_size, BatchTransform(data.mean, data.std), recipe, ctx.device, plan=plan)
    source = _source(recipe, data, ctx, loader, products)
    assert source is not None and plan.distinct_views is not None  # the label recipe's rules

    def label(rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        batch: Batch = loader.batch_of(rows, views)
        with torch.inference_mode(), autocast(ctx.device, recipe.train.amp):
            return source(batch).float()

    run_dir = recipe.run_dir
    if ctx.is_main and run_dir_state(run_dir) == "new" and not (run_dir / "config.yaml").exists():
        ensure_folder(run_dir)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    header = {"data": {**{key: getattr(recipe.data, key) for key in DATA_IDENTITY}, "class_names": list(data.class_names),
                       "image_shape": list(data.train.image_shape)},
              # not part of the store's identity: the statistics' last bits depend on the thread count
              "normalization": {"mean": list(data.mean), "std": list(data.std)},
              "teacher": _labeller_identity(recipe, products),
              # as JSON holds it (tuples as lists), so that a continued run compares equal
              "views": json.loads(json.dumps({**{k: getattr(plan, k) for k in (*VIEW_DEFINITION, "views")},
                                              "fingerprint": plan.fingerprint()}))}
    e = recipe.encoding
    return write_store(run_dir, header, data.train.ids, data.train.labels, label,
                       encoding=Encoding(e.kind, data.num_classes, e.dtype, e.k), views=plan.distinct_views,
                       shard_samples=recipe.shard_samples, batch_size=batch_size, ctx=ctx, quiet=quiet, verify=verify)


def build_trainer(recipe: RunRecipe, *, quiet: bool = False, data: DataBundle | None = None
                  ) -> tuple[Trainer, dict[str, Any]]:
    """The trainer of the recipe's run (its dependencies made first) and the parts it was built from.

    ``data`` replaces the splits the recipe's data section names (e.g. data a benchmark generates);
    the section's batch sizes and views still apply.
    """
    is_vae = isinstance(recipe, VAERecipe)
    ctx = init_distributed(recipe.train.device) if not is_vae else DistContext(device=resolve_device(recipe.train.device))
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    if recipe.train.cudnn_benchmark and ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    products = resolve_dependencies(recipe, quiet)  # teachers and VAEs first, each with its own output
    if is_vae and data is not None:
        raise ValueError("build_trainer: a VAE recipe reads its own data")
    parts = _vae_parts(recipe, ctx) if is_vae else _classifier_parts(recipe, ctx, quiet, data, products)
    trainer = Trainer(parts["method"], parts["optimizer"], parts["schedule"], parts["train"], parts["evals"],
                      recipe.run_dir, epochs=recipe.epochs, seed=recipe.seed, checkpoint_meta=parts["meta"], ctx=ctx,
                      amp=recipe.train.amp, keep_epochs=recipe.train.keep_epochs, quiet=quiet,
                      config_check=lambda saved: recipe_differences(saved, recipe),
                      eval_every=recipe.train.eval_every, final_loaders=parts["finals"],
                      checkpoint_every=recipe.train.checkpoint_every,
                      grad_accum=recipe.train.grad_accum, clip_grad=recipe.train.clip_grad,
                      log_every=recipe.train.log_every)
    return trainer, parts


def _interrupted_run(recipe: RunRecipe, trainer: Trainer | None) -> RunInterrupted:
    """What the folder of ``recipe``'s interrupted run keeps (``trainer`` is None until it is built)."""
    last = recipe.run_dir / "last.pt"
    if trainer is not None and trainer.kept != "none yet":
        return RunInterrupted(f"{last} keeps {trainer.kept} ({recipe.epochs} epochs in all)", resume=True)
    if trainer is None and last.exists():
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
    if isinstance(recipe, LabelRecipe):
        kept = f"{recipe.run_dir}: the shards labelled so far are kept"
        with interruption(lambda: RunInterrupted(kept, resume=False)):
            return label_store(recipe, quiet=quiet, verify=verify)
    if resume and run_dir_state(recipe.run_dir) == "finished":
        return _finished_run(recipe, quiet)
    trainer = None
    with interruption(lambda: _interrupted_run(recipe, trainer)):
        trainer, parts = build_trainer(recipe, quiet=quiet)
        ctx, run_dir = trainer.ctx, recipe.run_dir
        with _holding_run_folder(run_dir, ctx):  # from the first write on; a recipe that fails earlier leaves no folder
            if ctx.is_main and run_dir_state(run_dir) == "new":
                write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            if ctx.is_main and parts["report"] is not None:
                write_text_atomic(run_dir / "soft_labels.json", json.dumps(parts["report"], indent=2, default=str))
            if not quiet and ctx.is_main:
                print(f"[softdistill] {recipe.name} seed {recipe.seed}: {parts['what']} -> {run_dir}"
                      f" ({parts['samples']} train images, {ctx.world_size} process(es), {ctx.device})")
            return trainer.fit(resume=resume)
