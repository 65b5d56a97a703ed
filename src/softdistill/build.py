"""Set a run up, top to bottom: machine -> data -> loaders -> student -> soft-label source -> method ->
optimiser -> recorder and trainer.

This is the one place that knows every part; each step takes the typed objects the steps above it
made, and nothing below calls back up.  A training recipe (:class:`~softdistill.config.Recipe`) and a
VAE recipe (:class:`~softdistill.config.VAERecipe`) both give a :class:`Run` of the same trainer; a
label recipe's source is built by :func:`build_source` too.  The run-folder rules (new, resume,
locked) are not here: :mod:`softdistill.runner` applies them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softdistill.augment.vae import ConvVAE
from softdistill.checkpoint import CheckpointMeta, DataSpec, ModelSpec, Normalization
from softdistill.config import LabelRecipe, Recipe, RunRecipe, VAERecipe
from softdistill.data.loader import BatchLoader, BatchTransform, EpochBatches
from softdistill.data.prepare import DataBundle, prepare_data
from softdistill.data.samples import StreamSet, TensorSet
from softdistill.data.shifts import ood_sets
from softdistill.data.stream import StreamLoader, split_loader
from softdistill.data.views import ViewPlan
from softdistill.engine import LRSchedule, Trainer, build_optimizer
from softdistill.engine.predict import TEACHER_DTYPES
from softdistill.engine.recorder import Recorder
from softdistill.engine.wrap import has_4d_weights, wrap
from softdistill.methods import method_class
from softdistill.models import build_model
from softdistill.runtime import DistContext, init_distributed, resolve_device
from softdistill.soft_labels import Dependency, SoftLabelSource, SourceSetup, source_class
from softdistill.types import InputSpec, MethodContext
from softdistill.vae_training import VAETask

__all__ = ["Run", "Loaders", "machine", "load_data", "make_loaders", "build_source", "build_run"]


def machine(recipe: RunRecipe, *, distributed: bool = True) -> DistContext:
    """The process group (under torchrun, when ``distributed``), device and CPU threads the recipe asks for."""
    ctx = init_distributed(recipe.train.device) if distributed else DistContext(device=resolve_device(recipe.train.device))
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    if recipe.train.cudnn_benchmark and ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return ctx


def load_data(recipe: RunRecipe) -> DataBundle:
    """The splits and normalisation that the recipe's ``data`` section describes."""
    return prepare_data(recipe.data)


@dataclass
class Loaders:
    """The loaders of a run: ``train`` (the plan's views of the epoch, shuffled), ``evals`` (val and test,
    every evaluation), ``finals`` (out-of-domain test sets, after the last epoch) and ``views`` (every
    training sample as any of its views, in order: what a source labels from)."""

    train: BatchLoader | StreamLoader
    evals: dict[str, EpochBatches]
    finals: dict[str, EpochBatches]
    views: BatchLoader | StreamLoader


def make_loaders(recipe: RunRecipe, data: DataBundle, ctx: DistContext, transform: BatchTransform, plan: ViewPlan,
                 channels_last: bool = False) -> Loaders:
    """The loaders of ``recipe``'s run over ``data`` (:class:`Loaders`); ``channels_last``: the batches the
    student sees come in that memory format (not those the source labels from)."""
    d = recipe.data

    def loader(split: TensorSet | StreamSet, batch_size: int, **rules: Any) -> BatchLoader | StreamLoader:
        return split_loader(split, batch_size, transform, device=ctx.device, workers=d.workers,
                            resize=d.eval_resize, on_corrupt=d.on_corrupt, **rules)

    ranks = dict(rank=ctx.rank, world_size=ctx.world_size, channels_last=channels_last)
    return Loaders(
        train=loader(data.train, d.batch_size, shuffle=True, drop_last=d.drop_last, plan=plan, seed=recipe.seed,
                     **ranks),
        evals={name: loader(split, d.eval_batch_size, **ranks)
               for name, split in (("val", data.val), ("test", data.test)) if split is not None},
        finals={name: loader(split, d.eval_batch_size, **ranks)
                for name, split in ood_sets(data.test, d.ood, seed=d.split_seed).items()},
        views=loader(data.train, d.eval_batch_size, plan=plan))


def build_source(recipe: Recipe | LabelRecipe, data: DataBundle, ctx: DistContext, views: BatchLoader | StreamLoader,
                 products: Mapping[Dependency, Path], student: nn.Module | None = None) -> SoftLabelSource | None:
    """The recipe's soft-label source on the run's device (None for a recipe without one).  Whatever random
    numbers building it draws (e.g. a teacher's initialisation before its weights load) come from a fork of
    the generator, so the student's and the method's initialisations do not depend on the source."""
    spec = recipe.soft_labels
    if spec is None:
        return None
    setup = SourceSetup(data=data, data_config=recipe.data, plan=recipe.view_plan, views=views, seed=recipe.seed,
                        device=ctx.device, student=student, products=products,
                        needs=getattr(recipe, "soft_label_needs", {}))
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        return source_class(spec.source).build(spec, setup).to(ctx.device)


def _channels_last(recipe: Recipe, student: nn.Module) -> bool:
    """``train.channels_last``, unless the student has no 2-D convolution (then it is ignored, said once)."""
    if not recipe.train.channels_last:
        return False
    if has_4d_weights(student):
        return True
    warnings.warn(f"train.channels_last is ignored: the student {recipe.student!r} has no 2-D convolution "
                  "(no 4-D weights), so its inputs gain nothing from that layout", stacklevel=3)
    return False


def _teacher_dtype(recipe: Recipe, ctx: DistContext) -> torch.dtype | None:
    if recipe.train.teacher_dtype == "float16" and ctx.device.type != "cuda":
        raise ValueError("train.teacher_dtype: float16 needs a CUDA device; on the CPU use bfloat16")
    return TEACHER_DTYPES[recipe.train.teacher_dtype]


@dataclass
class Run:
    """A run set up and ready to fit: the ``trainer``, what the soft-label source reports about itself
    (``source_report``, recorded in the run folder), a one-line description and the training set's size."""

    trainer: Trainer
    source_report: dict[str, Any] | None
    what: str
    samples: int


def _trainer(recipe: RunRecipe, task: Any, optimizer: torch.optim.Optimizer, loaders: Loaders, meta: CheckpointMeta,
             ctx: DistContext, quiet: bool, schedule: LRSchedule) -> Trainer:
    t = recipe.train
    recorder = Recorder(recipe.run_dir, meta, epochs=recipe.epochs, seed=recipe.seed, has_val="val" in loaders.evals,
                        selection_metric=task.selection_metric, keep_epochs=tuple(t.keep_epochs), ctx=ctx, quiet=quiet)
    return Trainer(task, optimizer, schedule, loaders.train, loaders.evals, recorder, ctx=ctx, amp=t.amp,
                   eval_every=t.eval_every, final_loaders=loaders.finals, checkpoint_every=t.checkpoint_every,
                   grad_accum=t.grad_accum, clip_grad=t.clip_grad, log_every=t.log_every)


def build_run(recipe: Recipe | VAERecipe, ctx: DistContext, products: Mapping[Dependency, Path], *,
              quiet: bool = False, data: DataBundle | None = None) -> Run:
    """The run of a training or VAE recipe on ``ctx``, its dependencies' ``products`` made beforehand.

    ``data`` replaces the splits the recipe's data section names (e.g. data a benchmark generates); the
    section's batch sizes and views still apply.
    """
    if isinstance(recipe, VAERecipe):
        if data is not None:
            raise ValueError("build_run: a VAE recipe reads its own data")
        return _vae_run(recipe, ctx, quiet)
    data = data or load_data(recipe)
    torch.manual_seed(recipe.seed)
    student = build_model(recipe.student, data.num_classes, data.in_channels, data.image_size).to(ctx.device)
    channels_last = _channels_last(recipe, student)
    loaders = make_loaders(recipe, data, ctx, BatchTransform(data.mean, data.std), recipe.view_plan, channels_last)
    source = build_source(recipe, data, ctx, loaders.views, products, student)
    speed = recipe.train
    if source is not None:
        source.verify_lookups(loaders.train.data.ids, recipe.view_plan.distinct_views)
        source.prepare_inference(compile=speed.compile, channels_last=channels_last, dtype=_teacher_dtype(recipe, ctx))
    context = MethodContext(InputSpec(data.in_channels, data.image_size, tuple(data.mean), tuple(data.std)),
                            resolve_artifact=products.__getitem__, quiet=quiet, class_names=tuple(data.class_names))
    method = method_class(recipe.method.name)(recipe.method, student, data.num_classes, source, context).to(ctx.device)
    if ctx.distributed and method.batch_terms and ctx.is_main:
        warnings.warn(f"method {recipe.method.name!r} computes {method.batch_terms} over each process's slice of the "
                      f"batch ({recipe.data.batch_size} / {ctx.world_size} samples), as its authors' multi-GPU code "
                      "does: those terms differ from a single process's (docs/methods.md)", stacklevel=2)
    method.wrap(lambda module: wrap(module, ctx, compile=speed.compile, channels_last=channels_last,
                                    sync_batchnorm=speed.sync_batchnorm))
    optimizer = build_optimizer(method.trainable_parameters(), **recipe.optim.model_dump())
    s = recipe.schedule
    schedule = LRSchedule(s.name, recipe.optim.lr, recipe.epochs, len(loaders.train), s.milestones, s.gamma,
                          s.warmup_epochs, s.min_lr)
    meta = CheckpointMeta(model=ModelSpec(name=recipe.student, num_classes=data.num_classes,
                                          in_channels=data.in_channels, image_size=data.image_size),
                          normalization=Normalization(mean=list(data.mean), std=list(data.std)),
                          data=DataSpec(name=data.name, class_names=list(data.class_names)), config=recipe.to_dict())
    report = source.report() if source is not None else None
    what = f"{recipe.method.name} | student {recipe.student}"
    if recipe.soft_labels is not None:
        what += f" | soft labels: {recipe.soft_labels.source}"
    if report is not None and "unreliability" in report:
        what += (f" ({report['kind']}: unreliability {report['unreliability']:.3f}, ambiguity "
                 f"{report['ambiguity']:.3f} at k={report['k']})")
    return Run(_trainer(recipe, method, optimizer, loaders, meta, ctx, quiet, schedule), report, what, len(data.train))


def _vae_run(recipe: VAERecipe, ctx: DistContext, quiet: bool) -> Run:
    if ctx.distributed:
        raise ValueError("train-vae runs in a single process; start it without torchrun")
    data = load_data(recipe)
    channels = data.in_channels
    to01 = BatchTransform((0.0,) * channels, (1.0,) * channels)  # the VAE models pixels in [0, 1]
    loaders = make_loaders(recipe, data, ctx, to01, recipe.view_plan)
    torch.manual_seed(recipe.seed)
    model = ConvVAE(channels, data.image_size, recipe.latent_dim, recipe.width).to(ctx.device)
    meta = CheckpointMeta(kind="vae", vae=model.config, normalization=Normalization(mean=list(data.mean),
                                                                                     std=list(data.std)),
                          data=DataSpec(name=data.name, in_channels=channels, image_size=data.image_size),
                          config=recipe.to_dict())
    task = VAETask(model, recipe.beta, meta, data.test.images[:8], recipe.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = LRSchedule("constant", recipe.lr, recipe.epochs, len(loaders.train))
    what = f"VAE | latent {recipe.latent_dim}, width {recipe.width}, beta {recipe.beta}"
    return Run(_trainer(recipe, task, optimizer, loaders, meta, ctx, quiet, schedule), None, what, len(data.train))
