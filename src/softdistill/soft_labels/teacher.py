"""Trained teachers as soft-label sources: run online (``source: teacher``) or cached in memory
per view (``source: cache``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from softdistill.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, model_from_checkpoint
from softdistill.compatibility import ANY_VIEW, FULL_LOGITS, INPUT_GRAD, MIXED, ONLINE
from softdistill.data.config import DataFacts
from softdistill.schema import not_identity
from softdistill.runtime.distributed import DistContext
from softdistill.engine.predict import predict
from softdistill.engine.wrap import wrap
from softdistill.soft_labels.base import (Dependency, LookupSource, SoftLabelSource, SourceConfig, SourceSetup,
                                      check_origin, register_source)
from softdistill.types import Batch

__all__ = ["TeacherConfig", "FrozenTeacher", "CachedTeacher", "load_teacher"]


class TeacherConfig(SourceConfig):
    """Where a teacher comes from: a checkpoint file, or a recipe that is trained first if needed.

    Both paths are relative to the recipe's folder.
    """

    checkpoint: str | None = Field(None, description="path of a softdistill checkpoint")
    recipe: str | None = Field(None, description="teacher recipe; trained once, then reused")
    select: str = Field("best", description="which checkpoint of the teacher recipe's run: best | last | epoch_N")
    batchnorm_train_mode: bool = Field(False, description="run the teacher's BatchNorm in training mode (a quirk of "
                                                          "some reference code; off = frozen statistics)")
    allow_other_data: bool = not_identity(False, description="accept a teacher trained on another data set (same "
                                                             "class count and image shape): distillation across data "
                                                             "sets on purpose; off = refused when the recipe loads")

    @model_validator(mode="after")
    def _one_origin(self) -> "TeacherConfig":
        check_origin({"checkpoint": self.checkpoint, "recipe": self.recipe}, self.select)
        return self

    def dependency_problems(self, dependency: Dependency, needed: Any, recipe: Any) -> list[str]:
        """A teacher trained on other data (data set, class names, channels or image size) is refused, unless
        ``allow_other_data``; checked when the recipe loads, from the teacher's recipe or checkpoint."""
        if self.allow_other_data:
            return []
        if isinstance(needed, Path):
            meta = CheckpointMeta.of(load_checkpoint(needed), needed)
            if meta.model is None:
                return [f"{needed} holds a {meta.kind}, not a classifier"]
            theirs = DataFacts(meta.data.name, tuple(meta.data.class_names) if meta.data.class_names else None,
                               meta.model.in_channels, meta.model.image_size)
        else:
            theirs = DataFacts.of(needed.data)
        differ = theirs.differences(DataFacts.of(recipe.data))
        if not differ:
            return []
        return [f"the teacher was trained on other data ({'; '.join(differ)}), so its soft labels "
                "are not about these images. Give a teacher of this data, or set soft_labels.allow_other_data: true "
                "to distil across data sets on purpose (the class count and image shape must still fit)"]

    def dependencies(self) -> list[Dependency]:
        if self.checkpoint is not None:
            return [Dependency("soft_labels.checkpoint", self.checkpoint, "model")]
        assert self.recipe is not None
        return [Dependency("soft_labels.recipe", self.recipe, "model", self.select)]

    def teacher(self, setup: SourceSetup) -> "FrozenTeacher":
        d = setup.data
        path = setup.product(self.dependencies()[0])
        return load_teacher(path, d.num_classes, d.in_channels, d.mean, d.std, self.batchnorm_train_mode,
                            image_size=d.image_size).to(setup.device)


@register_source
class FrozenTeacher(SoftLabelSource):
    """A trained model used as a teacher: no gradients, eval mode, run under inference mode.

    Run online, it serves every view, mixed views, new inputs and gradients with respect to them.

    ``train()`` never puts the model in training mode (BatchNorm keeps its running statistics),
    unless ``batchnorm_train_mode`` asks for it: some reference code ran its ImageNet teacher with
    BatchNorm in training mode, and exact replication needs that quirk.

    :meth:`prepare_inference` compiles the model inside this wrapper, puts it in channels_last
    and casts it to a reduced precision (its inputs too; the logits come back in float32).

    Args:
        model: the trained model (its weights are frozen here).
        input_scale, input_shift: per channel, map the student's normalised inputs to the teacher's
            (``x * scale + shift``) when the two were trained with different normalisations; None: the same.
        batchnorm_train_mode: run the model's BatchNorm in training mode (the quirk above).

    Returns:
        Called on a :class:`~softdistill.types.Batch` or on inputs ``x``: the B x K logits, an ordinary
        tensor without gradient.

    Example:
        >>> teacher = FrozenTeacher(torch.nn.Linear(4, 3))
        >>> logits = teacher(torch.randn(2, 4))
        >>> logits.shape, logits.requires_grad, teacher.training
        (torch.Size([2, 3]), False, False)
    """

    serves = frozenset({ONLINE, INPUT_GRAD, MIXED, ANY_VIEW, FULL_LOGITS})

    class Config(TeacherConfig):
        source: Literal["teacher"] = "teacher"

    @classmethod
    def build(cls, config: TeacherConfig, setup: SourceSetup) -> "FrozenTeacher":
        return config.teacher(setup)

    def __init__(self, model: nn.Module, input_scale: Sequence[float] | None = None,
                 input_shift: Sequence[float] | None = None, batchnorm_train_mode: bool = False) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.batchnorm_train_mode = batchnorm_train_mode
        affine = input_scale is not None
        self.register_buffer("input_scale", torch.tensor(input_scale).view(1, -1, 1, 1) if affine else None)
        self.register_buffer("input_shift", torch.tensor(input_shift).view(1, -1, 1, 1) if affine else None)
        self.dtype: torch.dtype | None = None
        self.train(False)

    def prepare_inference(self, *, compile: bool | dict[str, Any] = False, channels_last: bool = False,
                          dtype: torch.dtype | None = None) -> None:
        if dtype is not None and dtype != torch.float32:
            self.model.to(dtype)
            self.dtype = dtype
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model = wrap(self.model, DistContext(), compile=compile)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        self.training = False
        self.model.eval()
        if self.batchnorm_train_mode and mode:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
        return self

    def forward(self, batch: Batch | Tensor) -> Tensor:
        x = batch.x if isinstance(batch, Batch) else batch
        with torch.inference_mode():
            logits = self.logits_with_input_grad(x)
        return logits.clone()  # a normal tensor, usable in autograd graphs outside inference mode

    def logits_with_input_grad(self, x: Tensor) -> Tensor:
        """The teacher's logits as a differentiable function of its input ``x``.

        The weights stay frozen (``requires_grad=False``): gradients reach ``x`` (and whatever
        produced it, e.g. a learned augmentor), never the teacher.
        """
        if self.input_scale is not None:
            x = x * self.input_scale + self.input_shift
        if self.dtype is None:
            return self.model(x)
        return self.model(x.to(self.dtype)).float()


@register_source
class CachedTeacher(LookupSource):
    """Teacher logits computed once per (sample, view) of the plan and looked up by ``(batch.sample_id, batch.view)``.

    A plan that does not augment has one view per sample, the clean image; an augmenting plan
    needs a fixed number of views (``data.views: V``), each labelled once, in V passes of the
    teacher over the training split (a soft label belongs to its view).
    Mixed views are not cached (they need a store or the teacher online).  Lookups are checked
    per batch until :meth:`verify_lookups` (the runner calls it once).
    """

    serves: frozenset[str] = frozenset({FULL_LOGITS})

    class Config(TeacherConfig):
        source: Literal["cache"] = "cache"

    @classmethod
    def build(cls, config: TeacherConfig, setup: SourceSetup) -> "CachedTeacher":
        teacher = config.teacher(setup)
        loader = setup.views
        views = setup.plan.distinct_views
        assert views is not None, "the compatibility rules refuse a cache of unbounded views"
        passes = [predict(teacher, loader.in_order(v)) for v in range(views)]
        # with data.on_corrupt: skip the loader leaves out the samples whose image cannot be decoded, in every
        # view (the cache has no mixed views) and in training alike: they are not cached, and never looked up
        ids = passes[0].sample_ids.cpu()
        if any(not torch.equal(p.sample_ids.cpu(), ids) for p in passes[1:]):
            raise ValueError("the teacher's passes over the views of the training split saw different samples")
        all_ids = loader.data.ids
        return cls(ids, torch.stack([p.logits for p in passes], dim=1), all_ids[~torch.isin(all_ids, ids)])

    def __init__(self, sample_ids: Tensor, logits: Tensor, unreadable: Tensor | None = None) -> None:
        """``logits``: N x V x K for the N samples ``sample_ids`` and their V views (or N x K: one view);
        ``unreadable``: ids of training samples the loader left out (their images cannot be decoded)."""
        super().__init__()
        self.unreadable = torch.zeros(0, dtype=torch.long) if unreadable is None else unreadable.cpu().long()
        if logits.dim() == 2:
            logits = logits.unsqueeze(1)
        if logits.dim() != 3 or sample_ids.shape != logits.shape[:1]:
            raise ValueError(f"cached logits must be N x V x K for N sample ids, got {tuple(logits.shape)} and "
                             f"{tuple(sample_ids.shape)} ids")
        order = torch.argsort(sample_ids.cpu())
        self.register_buffer("ids", sample_ids.cpu().long()[order].to(logits.device))
        self.register_buffer("logits", logits.detach().float()[order.to(logits.device)])

    @property
    def views(self) -> int:
        return self.logits.shape[1]

    def missing(self) -> str:
        return f"a sample id or view of the batch is not in the cache ({len(self.ids)} samples x {self.views} views)"

    def verify_lookups(self, sample_ids: Tensor, views: int | None) -> None:
        if views is None or views > self.views:
            raise ValueError(f"{self.missing()}: the training plan shows {views or 'unbounded'} views")
        super().verify_lookups(sample_ids[~torch.isin(sample_ids.cpu(), self.unreadable)], views)

    def forward(self, batch: Batch) -> Tensor:
        if batch.is_mixed:
            raise ValueError("a cached teacher knows the views of single samples, not mixed ones")
        rows = self.rows(batch.sample_id)
        view = batch.view.to(self.ids.device)
        if not self.lookups_verified and bool((view >= self.views).any()):
            raise ValueError(self.missing())
        return self.logits[rows, view]


def load_teacher(path: str | os.PathLike, num_classes: int, in_channels: int,
                 mean: Sequence[float], std: Sequence[float], batchnorm_train_mode: bool = False, *,
                 image_size: int | None = None) -> FrozenTeacher:
    """A :class:`FrozenTeacher` from a checkpoint, checked against the student's data.

    The class count and channels must match, and the image size when given (a network that pools
    globally would run on any size, and be silently wrong); a different input normalisation is bridged
    per channel.
    """
    payload = load_checkpoint(path)
    meta = CheckpointMeta.of(payload, path)
    spec = meta.model
    if spec is None:
        raise CheckpointError(f"teacher {path} holds a {meta.kind}, not a classifier")
    if spec.num_classes != num_classes:
        raise CheckpointError(
            f"teacher {path} predicts {spec.num_classes} classes but the data has {num_classes}; "
            "teacher and student must be trained on the same label set"
        )
    if spec.in_channels != in_channels:
        raise CheckpointError(f"teacher {path} takes {spec.in_channels}-channel images, the data has {in_channels}")
    if image_size is not None and spec.image_size != image_size:
        raise CheckpointError(f"teacher {path} was trained on {spec.image_size}x{spec.image_size} images, the data "
                              f"has {image_size}x{image_size}")
    model = model_from_checkpoint(payload, path)
    t_mean, t_std = meta.normalization.mean, meta.normalization.std
    scale = [s / ts for s, ts in zip(std, t_std)]
    shift = [(m - tm) / ts for m, tm, ts in zip(mean, t_mean, t_std)]
    same = all(abs(a - 1) < 1e-7 for a in scale) and all(abs(b) < 1e-7 for b in shift)
    return FrozenTeacher(model, None if same else scale, None if same else shift, batchnorm_train_mode)
