"""Typed recipe schema, YAML loading and dotted overrides.

A recipe reads like a paper's hyper-parameter table::

    name: fmnist-kd
    data: {name: fashion-mnist, per_class: 200}
    student: cnn-small
    teacher: {recipe: fmnist-teacher.yaml}
    method: {name: kd, alpha: 0.9, temperature: 4}
    epochs: 30
    optim: {name: sgd, lr: 0.05}
    schedule: {name: cosine, warmup_epochs: 1}

Every section forbids unknown keys; a mistake is reported with the dotted path of the key,
the closest valid key and the allowed values.  The ``method`` section is validated against the
schema of the method it names (each method declares its own).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from softdistill.data.shifts import parse_ood_specs
from softdistill.methods import MethodConfig, method_config_class, method_names

__all__ = [
    "ConfigError",
    "StrictModel",
    "AugmentConfig",
    "DataConfig",
    "TeacherConfig",
    "WeakConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RunRecipe",
    "Recipe",
    "load_recipe",
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
    """Batched on-device augmentation of training images (never applied to evaluation)."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding by this many pixels; 0 = off")
    hflip: bool = Field(False, description="random horizontal flip with probability 0.5")


class DataConfig(StrictModel):
    name: str = Field("fashion-mnist", description="digits | fashion-mnist | mnist | cifar10 | cifar100 | synthetic | imagefolder")
    root: str | None = Field(None, description="folder holding the data; else $SOFTDISTILL_DATA, then system places")
    download: bool = Field(False, description="download the data when it is not found")
    image_size: int | None = Field(None, ge=4, description="resize (imagefolder only)")
    val_size: Union[int, float] = Field(0.1, ge=0, description="validation samples held out of train: a count or a fraction")
    per_class: int | None = Field(None, ge=1, description="keep this many training images per class (small-data regime)")
    split_seed: int = Field(0, description="seed of the validation split and the per-class subset (not the run seed)")
    batch_size: int = Field(128, ge=1, description="global training batch (split across DDP ranks)")
    eval_batch_size: int = Field(1024, ge=1)
    drop_last: bool = Field(True, description="drop the last incomplete training batch of each epoch")
    normalize: bool = Field(True, description="standardise with the training set's per-channel mean and std")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    canvas: int | None = Field(None, ge=4, description="place every image at the centre of a black canvas of this "
                                                       "size (before the normalisation statistics); None = off")
    ood: list[str] = Field(default_factory=list, description="out-of-domain test sets kind:amount, e.g. shift:4, "
                                                             "rotate:20, noise:0.2, blur:1 (see softdistill.data.shifts)")

    @field_validator("ood")
    @classmethod
    def _valid_ood(cls, specs: list[str]) -> list[str]:
        parse_ood_specs(specs)
        return specs


class TeacherConfig(StrictModel):
    """Where the teacher comes from: a checkpoint file, or a recipe that is trained first if needed."""

    checkpoint: str | None = Field(None, description="path of a softdistill checkpoint")
    recipe: str | None = Field(None, description="teacher recipe (relative to this recipe's folder); trained once, then reused")
    select: str = Field("best", description="which checkpoint of the teacher recipe's run: best | last | epoch_N")
    cache: bool = Field(False, description="precompute teacher logits on the clean training images (needs augmentation off)")
    batchnorm_train_mode: bool = Field(False, description="run the teacher's BatchNorm in training mode (a quirk of "
                                                          "some reference code; off = frozen statistics)")

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if (self.checkpoint is None) == (self.recipe is None):
            raise ValueError("give exactly one of teacher.checkpoint or teacher.recipe")
        if not re.fullmatch(r"best|last|epoch_\d+", self.select):
            raise ValueError(f"teacher.select must be best, last or epoch_N, got {self.select!r}")
        return self


class WeakConfig(StrictModel):
    """Weak supervision as soft labels, built from the training labels and looked up by sample index.

    Takes the teacher's place for methods that need a soft-label source (use ``soft-label``); see
    docs/methods.md, "Weak supervision as soft labels".
    """

    kind: Literal["partial", "noise", "incomplete", "file"] = Field(
        ..., description="partial labels | additive noise | incomplete supervision (round 0) | a soft-label file")
    k: int = Field(2, ge=1, description="partial: candidate-set size; others: the k the indicators are reported at")
    unreliability: float = Field(0.0, ge=0, le=1, description="partial: share of candidate sets without the true class")
    ambiguity: float | None = Field(None, ge=0, le=1, description="partial: P(confusing class in the set); "
                                                                  "None = the least possible")
    scale: float = Field(0.5, ge=0, description="noise: d = onehot + scale * |N(0, I)|, renormalised")
    labelled_fraction: float = Field(0.1, gt=0, le=1, description="incomplete: share of each class that keeps its label")
    path: str | None = Field(None, description="file: a soft-label file (relative to the working directory)")
    seed: int | None = Field(None, description="seed of the draw; None = the run seed")

    @model_validator(mode="after")
    def _path_for_file(self) -> "WeakConfig":
        if (self.kind == "file") != (self.path is not None):
            raise ValueError("weak.path is needed for kind: file and only there")
        return self


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


class RunRecipe(StrictModel):
    """What every kind of recipe has: the run's name and seed, its data, machine settings and
    output folder (``OUTPUT_DIR/NAME/seedSEED``), and the file it was read from."""

    kind: ClassVar[str] = "recipe"  # what messages call it

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: int = 0
    epochs: int = Field(..., ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field("runs", description="runs are written to OUTPUT_DIR/NAME/seedSEED")
    source: str | None = Field(None, exclude=True, description="file the recipe was read from (set by the loader)")

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
        try:
            return cls.model_validate({**raw, "source": source})
        except ValidationError as exc:
            raise cls._invalid(source, describe_errors(exc.errors(), cls)) from None

    @classmethod
    def _check_mapping(cls, raw: Any, source: str | None) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source or cls.kind}: a {cls.kind} must be a YAML mapping, got {type(raw).__name__}")

    @classmethod
    def _invalid(cls, source: str | None, problems: list[str]) -> ConfigError:
        where = f" in {source}" if source else ""
        return ConfigError(f"invalid {cls.kind}{where}:\n  " + "\n  ".join(problems))


class Recipe(RunRecipe):
    """A training recipe: a student, its soft-label source and method, optimiser and schedule."""

    student: str = Field(..., description="model name, see softdistill.models.available_models()")
    teacher: TeacherConfig | None = None
    weak: WeakConfig | None = Field(None, description="weak-supervision soft labels in place of a teacher")
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: method_config_class("ce")())
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @model_validator(mode="after")
    def _teacher_or_weak(self) -> "Recipe":
        if self.teacher is not None and self.weak is not None:
            raise ValueError("give a teacher or a weak section, not both: each is the soft-label source")
        return self

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None) -> "Recipe":
        """As :meth:`RunRecipe.from_dict`; the ``method`` section is validated by the method it names."""
        cls._check_mapping(raw, source)
        raw = dict(raw)
        method, problems = _validate_method(raw.pop("method", None))
        try:
            recipe = cls.model_validate({**raw, "source": source})
        except ValidationError as exc:
            problems = describe_errors(exc.errors(), cls) + problems
            recipe = None
        if problems or recipe is None:
            raise cls._invalid(source, problems)
        recipe.method = method
        return recipe


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


def _validate_method(raw: Any) -> tuple[MethodConfig | None, list[str]]:
    if raw is None:
        raw = {"name": "ce"}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        return None, ["method: must be a mapping with a 'name' key, e.g. {name: kd, alpha: 0.9}"]
    name = raw["name"]
    if name not in method_names():
        close = difflib.get_close_matches(str(name), method_names(), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return None, [f"method.name: unknown method {name!r}{hint} (known: {', '.join(method_names())})"]
    cls = method_config_class(name)
    try:
        return cls.model_validate(raw), []
    except ValidationError as exc:
        return None, describe_errors(exc.errors(), cls, ("method",))


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


def read_recipe_file(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML mapping in ``path`` with dotted ``key=value`` overrides applied (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML:\n{exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    return apply_overrides(raw, list(overrides))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply dotted overrides, validate."""
    return recipe_from_dict(read_recipe_file(path, overrides or []), source=str(path))
