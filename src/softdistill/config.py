"""Typed recipe schema, YAML loading and dotted overrides.

A recipe reads like a paper's hyper-parameter table::

    name: fmnist-kd
    data: {name: fashion-mnist, per_class: 200}
    student: cnn-small
    soft_labels: {source: teacher, recipe: fmnist-teacher.yaml}
    method: {name: kd, alpha: 0.9, temperature: 4}
    epochs: 30
    optim: {name: sgd, lr: 0.05}
    schedule: {name: cosine, warmup_epochs: 1}

Every section forbids unknown keys; a mistake is reported with the dotted path of the key,
the closest valid key and the allowed values.  The ``method`` and ``soft_labels`` sections are
validated against the schema of the method or source they name (each declares its own), and
the method, the source and the view plan are checked against each other
(:mod:`softdistill.compatibility`) before anything runs.  Every path in a recipe is relative to
the recipe file's folder.  ``plugins`` lists modules imported before validation, where a user
registers methods or sources of their own.
"""

from __future__ import annotations

import difflib
import importlib
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from softdistill.compatibility import CAPABILITIES, MIXED, ONLINE, compatibility_problems
from softdistill.data.prepare import STREAMED
from softdistill.data.shifts import parse_ood_specs
from softdistill.data.views import ViewPlan, check_resized_crop
from softdistill.engine.wrap import COMPILE_KEYS
from softdistill.methods import MethodConfig, method_class, method_config_class
from softdistill.methods.base import registry as method_registry
from softdistill.registry import Registry
from softdistill.soft_labels import Dependency, SourceConfig, source_class
from softdistill.soft_labels.base import source_registry

__all__ = [
    "ConfigError",
    "StrictModel",
    "AugmentConfig",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RunRecipe",
    "Recipe",
    "VAERecipe",
    "LabelRecipe",
    "EncodingConfig",
    "load_recipe",
    "load_label_recipe",
    "load_vae_recipe",
    "import_plugins",
    "read_recipe_file",
    "describe_errors",
    "recipe_from_dict",
    "apply_overrides",
    "parse_override",
]


class ConfigError(ValueError):
    """A recipe that cannot be used; the message lists every problem with its dotted key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(StrictModel):
    """Augmentation of training images (never applied to evaluation); see softdistill.data.views."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding by this many pixels; 0 = off")
    hflip: bool = Field(False, description="random horizontal flip with probability 0.5")
    mix: Literal["none", "mixup", "cutmix"] = Field("none", description="mix every view with a partner's view "
                                                                       "(for methods that learn from mixed views)")
    mix_alpha: float = Field(1.0, gt=0, description="lambda ~ Beta(mix_alpha, mix_alpha), drawn per sample")
    resized_crop: tuple[float, float] | None = Field(
        None, description="ImageNet-style random resized crop to data.image_size: the range of the crop's share of "
                          "the image area, e.g. [0.08, 1] (stream loader only); None = off")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="range of the resized crop's width / height")

    @model_validator(mode="after")
    def _valid_ranges(self) -> "AugmentConfig":
        check_resized_crop(self.resized_crop, self.crop_ratio)
        return self


class DataConfig(StrictModel):
    name: str = Field("fashion-mnist", description="digits | fashion-mnist | mnist | cifar10 | cifar100 | synthetic | "
                                                  "imagefolder | shards (a folder written by softdistill data pack)")
    root: str | None = Field(None, description="folder holding the data; else $SOFTDISTILL_DATA, then system places")
    download: bool = Field(False, description="download the data when it is not found")
    image_size: int | None = Field(None, ge=4, description="resize (imagefolder and shards only; shards need it)")
    val_size: Union[int, float] = Field(0.1, ge=0, description="validation samples held out of train: a count or a fraction")
    per_class: int | None = Field(None, ge=1, description="keep this many training images per class (small-data regime)")
    split_seed: int = Field(0, description="seed of the validation split and the per-class subset (not the run seed)")
    batch_size: int = Field(128, ge=1, description="global training batch (split across DDP ranks)")
    eval_batch_size: int = Field(1024, ge=1)
    drop_last: bool = Field(True, description="drop the last incomplete training batch of each epoch")
    normalize: bool = Field(True, description="standardise with the training set's per-channel mean and std")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    views: int = Field(0, ge=0, description="distinct augmented views per sample (epoch e shows view (e-1) mod V); "
                                            "0 = a fresh view every epoch")
    view_seed: int | None = Field(None, description="seed of the views' parameters; None = the run seed")
    replay: Literal["cycle", "random"] = Field("cycle", description="which of the V views epoch e shows: cycle = "
                                                                   "(e-1) mod V; random = a hashed choice per sample "
                                                                   "and epoch")
    canvas: int | None = Field(None, ge=4, description="place every image at the centre of a black canvas of this "
                                                       "size (before the normalisation statistics); None = off")
    ood: list[str] = Field(default_factory=list, description="out-of-domain test sets kind:amount, e.g. shift:4, "
                                                             "rotate:20, noise:0.2, blur:1 (see softdistill.data.shifts)")
    loader: Literal["memory", "stream", "auto"] = Field(
        "memory", description="memory: every split decoded onto the device; stream: an image folder or shards decoded "
                              "batch by batch in worker processes; auto: stream those larger than 2 GiB decoded")
    workers: int = Field(4, ge=0, description="stream loader: decoding processes (0 = in the training process)")
    mean: list[float] | None = Field(None, description="per-channel normalisation mean in [0, 1] units (with std); "
                                                       "None = computed from the training split")
    std: list[float] | None = Field(None, description="per-channel normalisation std (with mean)")
    eval_resize: int | None = Field(None, ge=4, description="stream loader: evaluation images (and training "
                                                            "images when augment has no resized_crop) resized to "
                                                            "this shorter side, then centre-cropped to image_size "
                                                            "(e.g. 256 for 224); None = resized to image_size")
    stats_samples: int = Field(1000, ge=2, description="stream loader: training images the statistics are "
                                                       "estimated from, when mean/std are not given")
    on_corrupt: Literal["fail", "skip"] = Field(
        "fail", description="stream loader: an image that cannot be decoded (corrupt, truncated, not an image): "
                            "fail = stop, naming the file; skip = leave its sample out of its batch, counted and named "
                            "in a warning and in metrics.jsonl (train/skipped, val/skipped, test/skipped)")

    @field_validator("ood")
    @classmethod
    def _valid_ood(cls, specs: list[str]) -> list[str]:
        parse_ood_specs(specs)
        return specs

    @model_validator(mode="after")
    def _valid_plan(self) -> "DataConfig":
        self.view_plan(0)  # ViewPlan's own checks (e.g. replay: random needs data.views)
        return self

    @model_validator(mode="after")
    def _streamable(self) -> "DataConfig":
        if self.loader == "stream" and self.name not in STREAMED:
            raise ValueError(f"loader: stream reads image folders (name: imagefolder) and shards (name: shards), not "
                             f"{self.name}; the built-in sets fit in memory (loader: memory)")
        if self.image_size is None and (self.loader == "stream" or self.name == "shards"):
            raise ValueError(f"{'shards' if self.name == 'shards' else 'loader: stream'} needs image_size, the side "
                             "of the images a batch holds")
        if self.loader != "memory" and (self.canvas is not None or self.ood):
            raise ValueError("canvas and ood are made from images in memory: use loader: memory")
        if self.loader != "stream" and (self.augment.resized_crop is not None or self.eval_resize is not None):
            raise ValueError("augment.resized_crop and eval_resize resize each decoded file: they need loader: stream "
                             "(images in memory have one size; crop them with augment.crop_padding)")
        if self.on_corrupt == "skip" and self.loader != "stream":
            raise ValueError("on_corrupt: skip leaves unreadable images out of the stream loader's batches: it needs "
                             "loader: stream (the memory loader decodes every image up front; to leave such files out "
                             "for good, pack the folder with 'softdistill data pack --on-corrupt skip')")
        if self.eval_resize is not None and self.image_size is not None and self.eval_resize < self.image_size:
            raise ValueError(f"eval_resize {self.eval_resize} is smaller than image_size {self.image_size}: the centre "
                             "crop must fit")
        return self

    def view_plan(self, run_seed: int) -> ViewPlan:
        """The views of the training split (``view_seed``, else ``run_seed``)."""
        a = self.augment
        return ViewPlan(seed=self.view_seed if self.view_seed is not None else run_seed, views=self.views,
                        crop_padding=a.crop_padding, hflip=a.hflip, mix=a.mix, mix_alpha=a.mix_alpha,
                        replay=self.replay, resized_crop=a.resized_crop, crop_ratio=a.crop_ratio)


class OptimConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = Field(False, description="SGD only")
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW only")


class ScheduleConfig(StrictModel):
    name: Literal["constant", "multistep", "cosine"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0, description="multistep factor")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0 over this many epochs")
    min_lr: float = Field(0.0, ge=0, description="cosine floor")


class TrainConfig(StrictModel):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="autocast dtype; fp16 only on CUDA")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None = PyTorch default)")
    keep_epochs: list[int] = Field(default_factory=list, description="also keep epoch_N.pt for these epochs")
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and after the last one)")
    checkpoint_every: int = Field(0, ge=0, description="also write last.pt every N optimiser steps inside an epoch, "
                                                       "for an exact resume mid-epoch; 0 = at epoch ends only")
    log_every: int = Field(50, ge=0, description="steps between log points (progress bar, non-finite check); "
                                                 "0 = at the end of each epoch only")
    compile: Union[bool, dict[str, Any]] = Field(False, description="torch.compile the student and an online "
                                                                     "teacher: true, or torch.compile keywords")
    channels_last: bool = Field(False, description="channels_last memory format for models with 2-D convolutions "
                                                   "and their inputs")
    grad_accum: int = Field(1, ge=1, description="split every batch into this many parts, one optimiser step per batch")
    clip_grad: float | None = Field(None, gt=0, description="clip the gradient norm to this value; None = off")
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="precision of an online teacher's inference (float16 only on CUDA)")
    cudnn_benchmark: bool = Field(False, description="let cuDNN pick the fastest convolution algorithms (CUDA only)")
    sync_batchnorm: bool = Field(False, description="under DDP, BatchNorm normalises with the statistics of the "
                                                     "global batch, so N processes train what one process does")

    @field_validator("compile")
    @classmethod
    def _compile_keywords(cls, value: bool | dict[str, Any]) -> bool | dict[str, Any]:
        unknown = sorted(set(value) - set(COMPILE_KEYS)) if isinstance(value, dict) else []
        if unknown:
            raise ValueError(f"unknown torch.compile keyword(s) {unknown} (allowed: {', '.join(COMPILE_KEYS)})")
        return value

    @model_validator(mode="after")
    def _sync_batchnorm_whole_batches(self) -> "TrainConfig":
        if self.sync_batchnorm and self.grad_accum > 1:
            raise ValueError("train.sync_batchnorm with train.grad_accum > 1: BatchNorm would normalise each part of a "
                             "batch, whose samples differ between process counts (and a short last batch can give the "
                             "processes different numbers of parts); use one or the other")
        return self


class RunRecipe(StrictModel):
    """What every kind of recipe has: the run's name and seed, its data, machine settings and
    output folder (``OUTPUT_DIR/NAME/seedSEED``), and the file it was read from."""

    kind: ClassVar[str] = "recipe"  # what messages call it

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field("runs", description="runs are written to OUTPUT_DIR/NAME/seedSEED")
    plugins: list[str] = Field(default_factory=list, description="modules imported before the recipe is validated "
                                                                 "(methods or sources of your own)")
    source: str | None = Field(None, exclude=True, description="file the recipe was read from (set by the loader)")

    @field_validator("name")
    @classmethod
    def _name_stays_in_output_dir(cls, name: str) -> str:
        if name in (".", ".."):
            raise ValueError("a name of dots only would put the run folder outside output_dir (use a word such as "
                             "'kd-t4')")
        return name

    @model_validator(mode="after")
    def _accumulation_divides_batch(self) -> "RunRecipe":
        accum, batch = self.train.grad_accum, self.data.batch_size
        if batch % accum:
            divisors = [d for d in range(2, min(batch, 64) + 1) if batch % d == 0][:4]
            raise ValueError(f"train.grad_accum = {accum} does not split data.batch_size = {batch} into equal parts; "
                             f"choose a divisor of the batch size ({', '.join(map(str, divisors)) or 'none but 1'})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name / f"seed{self.seed}"

    def resolve_path(self, path: str) -> Path:
        """A path written in the recipe, relative to the recipe file's folder when not absolute."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source is None:
            return p
        return Path(self.source).parent / p

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None) -> "RunRecipe":
        """Validate a recipe given as a plain dict; raise :class:`ConfigError` listing every problem."""
        cls._check_mapping(raw, source)
        import_plugins(raw.get("plugins"), source)
        try:
            return cls.model_validate({**raw, "source": source})
        except ValidationError as exc:
            raise cls._invalid(source, describe_errors(exc.errors(), cls)) from None

    def dependencies(self) -> list[Dependency]:
        """The other recipes and files this recipe names (their paths relative to its folder)."""
        return []

    def dependency_problems(self, dependency: Dependency, needed: "RunRecipe") -> list[str]:
        """What stops the product of ``needed`` (the recipe ``dependency`` names) from serving this recipe."""
        return []

    @classmethod
    def _check_mapping(cls, raw: Any, source: str | None) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source or cls.kind}: a {cls.kind} must be a YAML mapping, got {type(raw).__name__}")

    @classmethod
    def _invalid(cls, source: str | None, problems: list[str]) -> ConfigError:
        where = f" in {source}" if source else ""
        return ConfigError(f"invalid {cls.kind}{where}:\n  " + "\n  ".join(problems))


# Sections of earlier versions, and what to write instead.
RETIRED_SECTIONS = {
    "teacher": "the 'teacher' section is now soft_labels: {source: teacher, recipe: ... | checkpoint: ..., select: ...} "
               "(source: cache for a teacher cached in memory, formerly cache: true)",
    "weak": "the 'weak' section is now soft_labels: {source: weak, kind: ...}",
}


class Recipe(RunRecipe):
    """A training recipe: a student, where its soft labels come from, its method, optimiser and schedule."""

    epochs: int = Field(..., ge=1)
    student: str = Field(..., description="model name, see softdistill.models.available_models()")
    soft_labels: SerializeAsAny[SourceConfig] | None = Field(
        None, description="where soft labels come from: {source: teacher | cache | weak | ..., ...}")
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: method_config_class("ce")())
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @property
    def view_plan(self) -> ViewPlan:
        return self.data.view_plan(self.seed)

    def dependencies(self) -> list[Dependency]:
        own = self.soft_labels.dependencies() if self.soft_labels is not None else []
        return own + self.method.dependencies()

    def dependency_problems(self, dependency: Dependency, needed: RunRecipe) -> list[str]:
        return self.soft_labels.dependency_problems(dependency, needed, self) if self.soft_labels is not None else []

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None) -> "Recipe":
        """As :meth:`RunRecipe.from_dict`; ``method`` and ``soft_labels`` are validated by the method or
        source they name, then checked against each other and the view plan."""
        cls._check_mapping(raw, source)
        import_plugins(raw.get("plugins"), source)
        raw = dict(raw)
        problems = [f"{key}: {RETIRED_SECTIONS[key]}" for key in RETIRED_SECTIONS if key in raw]
        for key in RETIRED_SECTIONS:
            raw.pop(key, None)
        method, method_problems = _validate_method(raw.pop("method", None))
        soft_labels, source_problems = _validate_source(raw.pop("soft_labels", None))
        problems += method_problems + source_problems
        try:
            recipe = cls.model_validate({**raw, "source": source})
        except ValidationError as exc:
            problems = describe_errors(exc.errors(), cls) + problems
            recipe = None
        if not problems and recipe is not None and method is not None:
            source_cls = source_class(soft_labels.source) if soft_labels is not None else None
            problems = compatibility_problems(method_class(method.name), source_cls, recipe.data.view_plan(recipe.seed))
            problems += _speed_problems(recipe.train, method_class(method.name), source_cls)
        if problems or recipe is None:
            raise cls._invalid(source, problems)
        recipe.method = method
        recipe.soft_labels = soft_labels
        return recipe


class VAERecipe(RunRecipe):
    """What ``softdistill train-vae`` trains: data, architecture, Adam, epochs."""

    kind: ClassVar[str] = "VAE recipe"

    epochs: int = Field(..., ge=1)
    latent_dim: int = Field(16, ge=1, description="dimension of z")
    width: int = Field(32, ge=1, description="channels of the first convolution (the second has twice as many)")
    beta: float = Field(1.0, ge=0, description="weight of the KL term (1 = the ELBO)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (constant)")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 penalty")

    @model_validator(mode="after")
    def _used_train_keys(self) -> "VAERecipe":
        t = self.train
        if t.amp != "off" or t.keep_epochs:
            raise ValueError("train.amp and train.keep_epochs are not used by train-vae "
                             "(it trains in float32 and keeps last.pt and vae.pt)")
        unused = [key for key, value in (("compile", t.compile), ("channels_last", t.channels_last),
                                         ("teacher_dtype", t.teacher_dtype != "float32"),
                                         ("sync_batchnorm", t.sync_batchnorm)) if value]
        if unused:
            raise ValueError(f"train.{', train.'.join(unused)}: not used by train-vae (a small VAE in one process, "
                             "no teacher)")
        if self.data.augment.mix != "none":
            raise ValueError("data.augment.mix is not used by train-vae (a VAE learns single images)")
        if self.data.loader != "memory":
            raise ValueError("train-vae reads its data in memory: data.loader must be memory")
        return self


class EncodingConfig(StrictModel):
    """How a store encodes each soft label (softdistill.store.encoding)."""

    kind: Literal["full", "topk"] = Field("full", description="full: every logit; topk: the k largest + the tail's mass")
    dtype: Literal["float32", "float16"] = Field("float32", description="of the logits (full) or top-k values")
    k: int | None = Field(None, ge=1, description="topk: how many classes are kept")

    @model_validator(mode="after")
    def _k_for_topk(self) -> "EncodingConfig":
        if (self.kind == "topk") != (self.k is not None):
            raise ValueError("encoding.k is needed for kind: topk and only there")
        return self


class LabelRecipe(RunRecipe):
    """What ``softdistill label`` writes: the store of a soft-label source's logits for every
    (sample, view) of the data section's view plan (data.augment, data.views, data.view_seed).

    The store is the run folder ``OUTPUT_DIR/NAME/seedSEED``; ``data.eval_batch_size`` is the
    labelling batch; ``train`` gives the device, threads and ``amp`` of the teacher's forward.
    """

    kind: ClassVar[str] = "label recipe"

    soft_labels: SerializeAsAny[SourceConfig] | None = Field(None, description="what labels: {source: teacher, "
                                                                               "recipe: ...} (required)")
    encoding: EncodingConfig = Field(default_factory=EncodingConfig)
    shard_samples: int = Field(4096, ge=1, description="samples per shard (each shard holds all their views)")

    @property
    def view_plan(self) -> ViewPlan:
        return self.data.view_plan(self.seed)

    def dependencies(self) -> list[Dependency]:
        return self.soft_labels.dependencies() if self.soft_labels is not None else []

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None) -> "LabelRecipe":
        """As :meth:`RunRecipe.from_dict`; ``soft_labels`` is validated by the source it names, which
        must serve the plan's views (mixed ones too, when the plan mixes), for a fixed number of views."""
        cls._check_mapping(raw, source)
        import_plugins(raw.get("plugins"), source)
        raw = dict(raw)
        soft_labels, problems = _validate_source(raw.pop("soft_labels", None))
        if soft_labels is None and not problems:
            problems = ["soft_labels: required: the source that labels, e.g. {source: teacher, recipe: teacher.yaml}"]
        try:
            recipe = cls.model_validate({**raw, "source": source})
        except ValidationError as exc:
            problems = describe_errors(exc.errors(), cls) + problems
            recipe = None
        if recipe is not None and soft_labels is not None:
            problems += _label_problems(recipe, source_class(soft_labels.source))
        if problems or recipe is None:
            raise cls._invalid(source, problems)
        recipe.soft_labels = soft_labels
        return recipe


def _label_problems(recipe: LabelRecipe, source: Any) -> list[str]:
    plan, name = recipe.view_plan, source.Config.model_fields["source"].default
    problems = []
    if name == "store":
        problems.append("soft_labels.source: a label recipe labels from a teacher (or another source), not from a store")
    if plan.mixes and MIXED not in source.serves:
        problems.append(f"soft_labels.source {name!r} cannot label {CAPABILITIES[MIXED]}; use source: teacher")
    if plan.distinct_views is None:
        problems.append("data.views: a store holds a fixed number of views per sample; set data.views to how many "
                        "views of each sample to label (the augmentation draws a fresh view otherwise)")
    if recipe.train.keep_epochs:
        problems.append("train.keep_epochs is not used by a label recipe")
    unused = [key for key in ("compile", "channels_last", "grad_accum", "clip_grad", "teacher_dtype", "cudnn_benchmark",
                              "sync_batchnorm")
              if getattr(recipe.train, key) != TrainConfig.model_fields[key].default]
    if unused:
        problems.append(f"train.{', train.'.join(unused)}: training options, not used by a label recipe")
    return problems


def _speed_problems(train: TrainConfig, method_cls: type, source_cls: type | None) -> list[str]:
    """Speed options that the recipe's method or soft-label source cannot use."""
    problems = []
    if train.teacher_dtype != "float32" and (source_cls is None or ONLINE not in source_cls.serves):
        problems.append(f"train.teacher_dtype: {train.teacher_dtype} sets the precision of a teacher run online "
                        "(soft_labels.source: teacher); this recipe has none, so leave it at float32")
    if train.grad_accum > 1 and not method_cls.supports_grad_accum:
        problems.append(f"train.grad_accum: method {method_cls.Config.model_fields['name'].default!r} updates its own "
                        "parts inside every step, so accumulating over parts of a batch would change it; use 1")
    return problems


# --------------------------------------------------------------------------------------------
# error reporting

def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as ``X | None`` or ``SerializeAsAny[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType) or origin is typing.Annotated:
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _unwrap_model(model.model_fields[part].annotation)
    return model


def describe_errors(errors: list[dict[str, Any]], root: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[str]:
    lines = []
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in prefix + loc) or "(recipe)"
        if err["type"] == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            allowed = [a for a in allowed if a != "source"]
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"{dotted}: unknown key{hint} (allowed: {', '.join(allowed)})")
        elif err["type"] == "missing":
            lines.append(f"{dotted}: required key is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f", got {got!r}"
            lines.append(f"{dotted}: {err['msg']}{shown}")
    return lines


def _validate_section(raw: Any, section: str, registry: Registry, example: str) -> tuple[Any, list[str]]:
    """Validate a ``method`` or ``soft_labels`` section against the schema of the entry it names."""
    key = registry.key
    if not isinstance(raw, dict) or key not in raw:
        return None, [f"{section}: must be a mapping with a '{key}' key, e.g. {example}"]
    name, names = raw[key], registry.names()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return None, [f"{section}.{key}: unknown {registry.what} {name!r}{hint} (known: {', '.join(names)})"]
    cls = registry.get(name).Config
    try:
        return cls.model_validate(raw), []
    except ValidationError as exc:
        return None, describe_errors(exc.errors(), cls, (section,))


def _validate_method(raw: Any) -> tuple[MethodConfig | None, list[str]]:
    raw = {"name": "ce"} if raw is None else {"name": raw} if isinstance(raw, str) else raw
    return _validate_section(raw, "method", method_registry, "{name: kd, alpha: 0.9}")


def _validate_source(raw: Any) -> tuple[SourceConfig | None, list[str]]:
    if raw is None:
        return None, []
    return _validate_section(raw, "soft_labels", source_registry, "{source: teacher, recipe: teacher.yaml}")


def import_plugins(modules: Any, source: str | None = None) -> None:
    """Import the ``plugins`` modules of a recipe (where users register methods and sources)."""
    if modules is None:
        return
    where = f"{source}: " if source else ""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{where}plugins must be a list of module names, got {modules!r}")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"{where}plugin module {module!r} does not import: {exc} (is it installed, or on "
                              "PYTHONPATH?)") from None
        except ValueError as exc:  # e.g. a name registered twice
            raise ConfigError(f"{where}plugin module {module!r}: {exc}") from None


def recipe_from_dict(raw: dict[str, Any], source: str | None = None) -> Recipe:
    """Validate a training recipe given as a plain dict (:meth:`Recipe.from_dict`)."""
    return Recipe.from_dict(raw, source)


# --------------------------------------------------------------------------------------------
# overrides and loading

def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.05"`` -> (["optim", "lr"], 0.05); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted ``key=value`` override applied."""
    result = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if isinstance(child, str) and key == "method":
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[:i + 1])} is not a section")
            node[key] = child
            node = child
        node[keys[-1]] = value
    return result


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding a key twice (PyYAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first_line[key] + 1}); YAML would "
                    "silently keep the last value: remove one", key_node.start_mark)
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_recipe_file(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML mapping in ``path`` with dotted ``key=value`` overrides applied (not yet validated).

    A key written twice in one mapping is an error naming the key and both lines."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        with path.open() as stream:
            raw = yaml.load(stream, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML:\n{exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    return apply_overrides(raw, list(overrides))


# Settings of the machine rather than of the experiment: a recipe that another recipe depends on
# takes them from the one that asks for it, so that `-o data.root=...` or `-o output_dir=...`
# reach the teacher (or VAE) too.
INHERITED_BY_DEPENDENCIES = ("data.root", "data.download", "train.device", "train.threads", "train.eval_every",
                             "output_dir")
RECIPE_KINDS: dict[str, type[RunRecipe]] = {"model": Recipe, "vae": VAERecipe, "store": LabelRecipe}
FOLDER_KINDS = ("store",)  # dependencies whose product is a folder (a store), not a file


def inherited_overrides(recipe: RunRecipe) -> list[str]:
    """The INHERITED_BY_DEPENDENCIES settings of ``recipe`` as dotted overrides for the recipes it depends on."""
    inherited = []
    for key in INHERITED_BY_DEPENDENCIES:
        value: Any = recipe
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None:
            inherited.append(f"{key}={json.dumps(value)}")
    return inherited


def dependency_recipe(recipe: RunRecipe, dependency: Dependency) -> tuple[Path, RunRecipe | None]:
    """The file a dependency names (relative to ``recipe``'s folder) and, when it is a recipe, that
    recipe (with the inherited machine settings); a missing file is a :class:`ConfigError` that
    names the field and where it was looked for."""
    path = recipe.resolve_path(dependency.path)
    is_recipe = dependency.kind in RECIPE_KINDS and path.suffix in (".yaml", ".yml")
    if not (path.is_file() or (dependency.kind in FOLDER_KINDS and path.is_dir() and not is_recipe)):
        where = f"{recipe.source}: " if recipe.source else ""
        what = "file or folder" if dependency.kind in FOLDER_KINDS else "file"
        raise ConfigError(f"{where}{dependency.field}: no {what} {path} (paths in a recipe are relative to the "
                          "recipe's folder)")
    if not is_recipe:
        return path, None
    loaded = RECIPE_KINDS[dependency.kind].from_dict(read_recipe_file(path, inherited_overrides(recipe)), str(path))
    return path, loaded


def check_dependencies(recipe: RunRecipe, _chain: tuple[Path, ...] = ()) -> None:
    """Validate, recursively, every recipe ``recipe`` depends on, before anything is trained."""
    for dependency in recipe.dependencies():
        path, loaded = dependency_recipe(recipe, dependency)
        if loaded is None:
            continue
        if path.resolve() in _chain:
            raise ConfigError(f"{recipe.source}: {dependency.field} makes a cycle of recipes: "
                              + " -> ".join(str(p) for p in (*_chain, path.resolve())))
        problems = recipe.dependency_problems(dependency, loaded)
        if problems:
            raise ConfigError(f"{recipe.source}: {dependency.field}:\n  " + "\n  ".join(problems))
        check_dependencies(loaded, (*_chain, path.resolve()))


def load_recipe(path: str | Path, overrides: Sequence[str] | None = None) -> Recipe:
    """Read a YAML training recipe, apply dotted overrides, validate it and every recipe it depends on."""
    recipe = recipe_from_dict(read_recipe_file(path, list(overrides or [])), source=str(path))
    check_dependencies(recipe, (Path(path).resolve(),))
    return recipe


def load_label_recipe(path: str | Path, overrides: Sequence[str] = ()) -> LabelRecipe:
    """Read a YAML label recipe, apply dotted overrides, validate it and the recipes it depends on."""
    recipe = LabelRecipe.from_dict(read_recipe_file(path, overrides), str(path))
    check_dependencies(recipe, (Path(path).resolve(),))
    return recipe


def load_vae_recipe(path: str | Path, overrides: Sequence[str] = ()) -> VAERecipe:
    """Read a YAML VAE recipe, apply dotted ``key=value`` overrides, validate (:class:`ConfigError` otherwise)."""
    return VAERecipe.from_dict(read_recipe_file(path, overrides), str(path))
