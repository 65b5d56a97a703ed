"""Recipes: the typed schema of every kind, YAML loading, dotted overrides, and every rule that ties
their sections together, decided when the recipe loads.

A recipe reads like a paper's hyper-parameter table::

    name: fmnist-kd
    data: {name: fashion-mnist, per_class: 200}
    student: cnn-small
    soft_labels: {source: teacher, recipe: fmnist-teacher.yaml}
    method: {name: kd, alpha: 0.9, temperature: 4}
    epochs: 30
    optim: {name: sgd, lr: 0.05}
    schedule: {name: cosine, warmup_epochs: 1}

There are three kinds (:data:`recipe_kinds`, one registry): a training recipe (:class:`Recipe`,
``softdistill train``), a label recipe that writes a store of soft labels (:class:`LabelRecipe`,
``softdistill label``) and a VAE recipe (:class:`VAERecipe`, ``softdistill train-vae``).  A recipe
names its kind with ``kind:``, or :func:`recipe_kind` tells it from its keys.

Every section forbids unknown keys; a mistake is reported with the dotted path of the key, the
closest valid key and the allowed values.  Names of models, data sets, methods and soft-label
sources are resolved against their registries (with the closest names), the ``method`` and
``soft_labels`` sections are validated by the schema of the entry they name, and the method, the
source, the data and the view plan are checked against each other (:meth:`RunRecipe.problems`),
as is every recipe the recipe depends on (:func:`check_dependencies`), before anything runs.  Every
path in a recipe is relative to the recipe file's folder.  ``plugins`` lists modules imported
before validation, where a user registers methods, sources, models or data sets of their own.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from softdistill.compatibility import CAPABILITIES, MIXED, ONLINE, compatibility_problems, method_needs
from softdistill.data.config import DataConfig
from softdistill.data.readers import dataset_info
from softdistill.data.views import ViewPlan
from softdistill.engine.predict import Amp, TeacherDtype
from softdistill.engine.wrap import COMPILE_KEYS
from softdistill.methods import MethodConfig, method_class, methods
from softdistill.models import check_model_name
from softdistill.registry import Registry, UnknownNameError, closest_names
from softdistill.schema import (StrictConfig, describe_errors, not_identity, not_identity_keys,
                                validate_registry_section)
from softdistill.soft_labels import Dependency, SourceConfig, sources
from softdistill.store.encoding import EncodingConfig
from softdistill.types import RecipeFacts

__all__ = [
    "ConfigError", "OptimConfig", "ScheduleConfig", "TrainConfig", "RunRecipe", "Recipe", "VAERecipe", "LabelRecipe",
    "EncodingConfig", "recipe_kinds", "recipe_kind", "load_recipe", "recipe_from_dict", "import_plugins",
    "read_recipe_file", "apply_overrides", "parse_override", "dependency_recipe", "check_dependencies",
    "not_identity_keys",
]



class ConfigError(ValueError):
    """A recipe that cannot be used; the message lists every problem with its dotted key."""


class OptimConfig(StrictConfig):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = Field(False, description="SGD only")
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW only")


class ScheduleConfig(StrictConfig):
    name: Literal["constant", "multistep", "cosine"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which lr *= gamma "
                                                                    "(increasing)")
    gamma: float = Field(0.1, gt=0, description="multistep factor")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0 over this many epochs")
    min_lr: float = Field(0.0, ge=0, description="cosine floor")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(milestones, milestones[1:])) or any(m < 1 for m in milestones):
            raise ValueError("milestones must be increasing epochs >= 1")
        return milestones

    def problems(self, epochs: int) -> list[str]:
        """What does not fit a run of ``epochs`` epochs."""
        problems = []
        if self.warmup_epochs > epochs:
            problems.append(f"schedule.warmup_epochs = {self.warmup_epochs:g} is longer than the run ({epochs} epochs)")
        return problems


class TrainConfig(StrictConfig):
    device: str = not_identity("auto", inherited=True, description="auto | cpu | cuda | cuda:N")
    amp: Amp = Field("off", description="autocast dtype; fp16 only on CUDA")
    threads: int | None = not_identity(None, inherited=True, ge=1, description="torch CPU threads (None = PyTorch "
                                                                               "default)")
    keep_epochs: list[int] = Field(default_factory=list, description="also keep epoch_N.pt for these epochs")
    eval_every: int = not_identity(1, inherited=True, ge=1, description="evaluate every N epochs (and after the "
                                                                        "last one)")
    checkpoint_every: int = not_identity(0, ge=0, description="also write last.pt every N optimiser steps inside an "
                                                              "epoch, for an exact resume mid-epoch; 0 = at epoch "
                                                              "ends only")
    log_every: int = not_identity(50, ge=0, description="steps between log points (progress bar, non-finite check); "
                                                        "0 = at the end of each epoch only")
    compile: Union[bool, dict[str, Any]] = not_identity(False, description="torch.compile the student and an online "
                                                                           "teacher: true, or torch.compile keywords")
    channels_last: bool = not_identity(False, description="channels_last memory format for models with 2-D "
                                                          "convolutions and their inputs")
    grad_accum: int = Field(1, ge=1, description="split every batch into this many parts, one optimiser step per batch")
    clip_grad: float | None = Field(None, gt=0, description="clip the gradient norm to this value; None = off")
    teacher_dtype: TeacherDtype = Field("float32", description="precision of an online teacher's inference (float16 "
                                                               "only on CUDA)")
    cudnn_benchmark: bool = not_identity(False, description="let cuDNN pick the fastest convolution algorithms (CUDA "
                                                            "only)")
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

    def unused(self, used: Sequence[str]) -> list[str]:
        """The keys outside ``used`` that are set to something else than their default."""
        return [key for key, info in type(self).model_fields.items()
                if key not in used and getattr(self, key) != info.get_default(call_default_factory=True)]


#: Every kind of recipe: a name (``kind:`` in YAML) -> its schema.
recipe_kinds: Registry[type["RunRecipe"]] = Registry("recipe kind")


class RunRecipe(StrictConfig):
    """What every kind of recipe has: the run's name and seed, its data, machine settings and output
    folder (``OUTPUT_DIR/NAME/seedSEED``), and the file it was read from.

    A kind declares its ``kind`` name, the ``noun`` messages call it, the ``command`` that runs it,
    the ``product`` its run leaves for recipes that depend on it, and the sections validated by a
    registry (``registry_sections``: key -> (registry, example)).
    """

    kind: ClassVar[str] = ""
    noun: ClassVar[str] = "recipe"
    command: ClassVar[str] = ""
    product: ClassVar[str] = ""
    registry_sections: ClassVar[dict[str, tuple[Registry, str]]] = {}

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = not_identity("")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the run (initialisation, order, views)")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = not_identity("runs", inherited=True, description="runs are written to OUTPUT_DIR/NAME/seedSEED")
    plugins: list[str] = not_identity(default_factory=list, description="modules imported before the recipe is "
                                                                        "validated (methods, sources, models or "
                                                                        "data sets of your own)")
    recipe_file: str | None = Field(None, exclude=True, description="file the recipe was read from (set by the loader)")

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

    @property
    def view_plan(self) -> ViewPlan:
        """The views of the training split."""
        return self.data.view_plan(self.seed)

    @property
    def facts(self) -> RecipeFacts:
        """What the method and soft-label source may check their settings against, at load time."""
        names = dataset_info(self.data.name).class_names
        return RecipeFacts(epochs=getattr(self, "epochs", None), num_classes=len(names) if names else None,
                           plan=self.view_plan)

    def resolve_path(self, path: str) -> Path:
        """A path written in the recipe, relative to the recipe file's folder when not absolute."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.recipe_file is None:
            return p
        return Path(self.recipe_file).parent / p

    def product_path(self, dependency: Dependency) -> Path:
        """The file (or folder) of this recipe's finished run that ``dependency`` needs."""
        return self.run_dir

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def dependencies(self) -> list[Dependency]:
        """The other recipes and files this recipe names (their paths relative to its folder)."""
        return [d for key in self.registry_sections if (section := getattr(self, key)) is not None
                for d in section.dependencies()]

    def problems(self) -> list[str]:
        """The rules that tie this recipe's sections together (empty when they hold)."""
        return []

    def dependency_problems(self, dependency: Dependency, needed: "RunRecipe | Path") -> list[str]:
        """What stops what ``dependency`` names (``needed``: the recipe that makes it, or its file) from
        serving this recipe."""
        return [p for key in self.registry_sections if (section := getattr(self, key)) is not None
                for p in section.dependency_problems(dependency, needed, self)]

    @classmethod
    def from_dict(cls, raw: Any, recipe_file: str | None = None) -> "RunRecipe":
        """Validate a recipe of this kind given as a plain dict; a :class:`ConfigError` listing every problem."""
        where = recipe_file or cls.noun
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: a {cls.noun} must be a YAML mapping, got {type(raw).__name__}")
        import_plugins(raw.get("plugins"), recipe_file)
        raw = dict(raw)
        problems = cls._kind_problems(raw.pop("kind", cls.kind))
        problems += [f"{key}: {RETIRED_SECTIONS[key]}" for key in RETIRED_SECTIONS if raw.pop(key, None) is not None]
        sections = {}
        for key, (registry, example) in cls.registry_sections.items():
            sections[key], found = _validate_section(raw.pop(key, None), key, registry, example)
            problems += found
        try:
            recipe = cls.model_validate({**raw, "recipe_file": recipe_file})
        except ValidationError as exc:
            raise _invalid(cls, recipe_file, describe_errors(exc.errors(), cls) + problems) from None
        if not problems:
            for key, section in sections.items():
                if section is not None:
                    setattr(recipe, key, section)
            problems = recipe.problems()
        if problems:
            raise _invalid(cls, recipe_file, problems)
        return recipe

    @classmethod
    def _kind_problems(cls, kind: Any) -> list[str]:
        if kind == cls.kind:
            return []
        try:
            other = recipe_kinds.get(kind)
        except UnknownNameError as exc:
            return [f"kind: {exc}"]
        return [f"kind: {kind} is a {other.noun} (run it with 'softdistill {other.command}'), not a {cls.noun}"]


def _invalid(cls: type[RunRecipe], recipe_file: str | None, problems: list[str]) -> ConfigError:
    where = f" in {recipe_file}" if recipe_file else ""
    return ConfigError(f"invalid {cls.noun}{where}:\n  " + "\n  ".join(problems))


# Sections of earlier versions, and what to write instead.
RETIRED_SECTIONS = {
    "teacher": "the 'teacher' section is now soft_labels: {source: teacher, recipe: ... | checkpoint: ..., select: ...} "
               "(source: cache for a teacher cached in memory, formerly cache: true)",
    "weak": "the 'weak' section is now soft_labels: {source: weak, kind: ...}",
}


SOURCE_EXAMPLE = "{source: teacher, recipe: teacher.yaml}"


@recipe_kinds.register("train")
class Recipe(RunRecipe):
    """A training recipe: a student, where its soft labels come from, its method, optimiser and schedule."""

    kind: ClassVar[str] = "train"
    noun: ClassVar[str] = "recipe"
    command: ClassVar[str] = "train"
    product: ClassVar[str] = "model"
    registry_sections: ClassVar[dict[str, tuple[Registry, str]]] = {
        "method": (methods, "{name: kd, alpha: 0.9}"), "soft_labels": (sources, SOURCE_EXAMPLE)}

    epochs: int = Field(..., ge=1)
    student: str = Field(..., description="a registered model name, see softdistill.models.available_models()")
    soft_labels: SerializeAsAny[SourceConfig] | None = Field(
        None, description="where soft labels come from: {source: teacher | cache | store | weak | ..., ...}")
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: method_class("ce").Config())
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @field_validator("student")
    @classmethod
    def _registered_model(cls, name: str) -> str:
        check_model_name(name)
        return name

    def product_path(self, dependency: Dependency) -> Path:
        return self.run_dir / f"{dependency.select}.pt"

    @property
    def soft_label_needs(self) -> dict[str, str]:
        """What the method, with its settings, needs of its soft labels (:func:`~softdistill.compatibility.method_needs`)."""
        return method_needs(method_class(self.method.name), self.method)

    def problems(self) -> list[str]:
        method = method_class(self.method.name)
        source = self.soft_labels
        problems = compatibility_problems(method, self.method, source, self.view_plan)
        if problems:
            return problems
        facts = self.facts
        problems += self.method.problems(facts)
        if self.soft_labels is not None:
            problems += self.soft_labels.problems(facts)
        if self.train.teacher_dtype != "float32" and (source is None or ONLINE not in source.serves()):
            problems.append(f"train.teacher_dtype: {self.train.teacher_dtype} sets the precision of a teacher run "
                            "online (soft_labels.source: teacher); this recipe has none, so leave it at float32")
        if self.train.grad_accum > 1 and not method.supports_grad_accum:
            problems.append(f"train.grad_accum: method {self.method.name!r} updates its own parts inside every step, "
                            "so accumulating over parts of a batch would change it; use 1")
        if self.train.grad_accum > 1 and method.batch_terms:
            problems.append(f"train.grad_accum: method {self.method.name!r} computes {method.batch_terms} over the whole "
                            "batch, so parts of a batch would give another loss; use 1 (a smaller data.batch_size "
                            "changes the method too)")
        if outside := [e for e in self.train.keep_epochs if not 1 <= e <= self.epochs]:
            problems.append(f"train.keep_epochs {outside} lie outside the run's epochs 1..{self.epochs}")
        return problems + self.schedule.problems(self.epochs)


@recipe_kinds.register("vae")
class VAERecipe(RunRecipe):
    """What ``softdistill train-vae`` trains: data, architecture, Adam, epochs."""

    kind: ClassVar[str] = "vae"
    noun: ClassVar[str] = "VAE recipe"
    command: ClassVar[str] = "train-vae"
    product: ClassVar[str] = "vae"

    epochs: int = Field(..., ge=1)
    latent_dim: int = Field(16, ge=1, description="dimension of z")
    width: int = Field(32, ge=1, description="channels of the first convolution (the second has twice as many)")
    beta: float = Field(1.0, ge=0, description="weight of the KL term (1 = the ELBO)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (constant)")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 penalty")

    def product_path(self, dependency: Dependency) -> Path:
        return self.run_dir / "vae.pt"

    def problems(self) -> list[str]:
        problems = []
        if self.train.amp != "off" or self.train.keep_epochs:
            problems.append("train.amp and train.keep_epochs are not used by train-vae (it trains in float32 and keeps "
                            "last.pt and vae.pt)")
        if unused := self.train.unused(("device", "threads", "eval_every", "checkpoint_every", "log_every",
                                        "grad_accum", "clip_grad", "amp", "keep_epochs")):
            problems.append(f"train.{', train.'.join(unused)}: not used by train-vae (a small VAE in one process, no "
                            "teacher)")
        if self.data.augment.mix != "none":
            problems.append("data.augment.mix is not used by train-vae (a VAE learns single images)")
        if self.data.loader != "memory":
            problems.append("train-vae reads its data in memory: data.loader must be memory")
        return problems


@recipe_kinds.register("label")
class LabelRecipe(RunRecipe):
    """What ``softdistill label`` writes: the store of a soft-label source's logits for every
    (sample, view) of the data section's view plan (data.augment, data.views, data.view_seed).

    The store is the run folder ``OUTPUT_DIR/NAME/seedSEED``; ``data.eval_batch_size`` is the
    labelling batch; ``train`` gives the device, threads and ``amp`` of the teacher's forward.
    """

    kind: ClassVar[str] = "label"
    noun: ClassVar[str] = "label recipe"
    command: ClassVar[str] = "label"
    product: ClassVar[str] = "store"
    registry_sections: ClassVar[dict[str, tuple[Registry, str]]] = {"soft_labels": (sources, SOURCE_EXAMPLE)}

    soft_labels: SerializeAsAny[SourceConfig] | None = Field(None, description="what labels: {source: teacher, "
                                                                               "recipe: ...} (required)")
    encoding: EncodingConfig = Field(default_factory=EncodingConfig)
    shard_samples: int = Field(4096, ge=1, description="samples per shard (each shard holds all their views)")

    def problems(self) -> list[str]:
        if self.soft_labels is None:
            return ["soft_labels: required: the source that labels, e.g. " + SOURCE_EXAMPLE]
        plan, source = self.view_plan, self.soft_labels
        problems = []
        if self.soft_labels.source == "store":
            problems.append("soft_labels.source: a label recipe labels from a teacher (or another source), not from a "
                            "store")
        if plan.mixes and MIXED not in source.serves():
            problems.append(f"soft_labels.source {self.soft_labels.source!r} cannot label {CAPABILITIES[MIXED]}"
                            f"{source.why_not(MIXED)}; use source: teacher")
        if plan.distinct_views is None:
            problems.append("data.views: a store holds a fixed number of views per sample; set data.views to how many "
                            "views of each sample to label (the augmentation draws a fresh view otherwise)")
        if self.train.keep_epochs:
            problems.append("train.keep_epochs is not used by a label recipe")
        if self.data.views_per_step != 1:
            problems.append("data.views_per_step is not used by a label recipe: it labels every view of the plan once "
                            "(a training recipe's second views are views of the same plan)")
        if unused := self.train.unused(("device", "threads", "amp", "eval_every", "checkpoint_every", "log_every",
                                        "keep_epochs")):
            problems.append(f"train.{', train.'.join(unused)}: training options, not used by a label recipe")
        classes = self.facts.num_classes
        if self.encoding.k is not None and classes is not None and self.encoding.k > classes:
            problems.append(f"encoding.k = {self.encoding.k} exceeds the {classes} classes of {self.data.name}")
        return problems + self.soft_labels.problems(self.facts)


def recipe_kind(raw: dict[str, Any]) -> str:
    """The kind of a recipe given as a dict: its ``kind:``, else told from its keys (``latent_dim``: a VAE
    recipe; ``encoding`` or ``shard_samples``, or soft labels with neither student nor method: a label
    recipe; otherwise a training recipe)."""
    if "kind" in raw:
        return str(raw["kind"])
    if "latent_dim" in raw:
        return "vae"
    if "encoding" in raw or "shard_samples" in raw or ("soft_labels" in raw and not {"student", "method"} & set(raw)):
        return "label"
    return "train"


def _validate_section(raw: Any, section: str, registry: Registry, example: str) -> tuple[Any, list[str]]:
    """Validate a ``method`` or ``soft_labels`` section against the schema of the entry it names."""
    if section == "method":
        raw = {"name": "ce"} if raw is None else {"name": raw} if isinstance(raw, str) else raw
    if raw is None:
        return None, []
    return validate_registry_section(raw, section, registry, example)


def import_plugins(modules: Any, recipe_file: str | None = None) -> None:
    """Import the ``plugins`` modules of a recipe (where users register methods, sources, models, data sets)."""
    if modules is None:
        return
    where = f"{recipe_file}: " if recipe_file else ""
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


def recipe_from_dict(raw: dict[str, Any], recipe_file: str | None = None) -> RunRecipe:
    """Validate a recipe of any kind (:func:`recipe_kind`) given as a plain dict."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{recipe_file or 'recipe'}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    import_plugins(raw.get("plugins"), recipe_file)
    kind = recipe_kind(raw)
    try:
        cls = recipe_kinds.get(kind)
    except UnknownNameError as exc:
        raise ConfigError(f"{recipe_file or 'recipe'}: kind: {exc}") from None
    return cls.from_dict(raw, recipe_file)


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


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
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

    A key written twice in one mapping is an error naming the key and both lines; a missing file
    suggests the recipes beside it with the closest names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}{_nearby_recipes(path)}")
    try:
        with path.open(encoding="utf-8") as stream:
            raw = yaml.load(stream, Loader=_UniqueKeyLoader) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML:\n{exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    return apply_overrides(raw, overrides)


def _nearby_recipes(path: Path) -> str:
    folder = path.parent if path.parent.is_dir() else None
    if folder is None:
        return ""
    close = closest_names(path.name, sorted(p.name for p in folder.glob("*.y*ml")))
    return f"; did you mean {' or '.join(str(folder / c) for c in close)}?" if close else ""


def _inherited_overrides(recipe: RunRecipe, dependency_kind: type[RunRecipe]) -> list[str]:
    """The settings of ``recipe`` that the recipes it depends on inherit (machine settings such as the data
    folder or the thread count, see :func:`~softdistill.schema.not_identity`), as dotted overrides, for the
    keys a recipe of ``dependency_kind`` has."""
    inherited = []
    for key in not_identity_keys(type(recipe), inherited=True):
        if key not in not_identity_keys(dependency_kind, inherited=True):
            continue
        value: Any = recipe
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None:
            inherited.append(f"{key}={json.dumps(value)}")
    return inherited


def dependency_recipe(recipe: RunRecipe, dependency: Dependency) -> tuple[Path, RunRecipe | None]:
    """The file a dependency names (relative to ``recipe``'s folder) and, when it is a recipe, that
    recipe (with the inherited machine settings), which must be of the kind whose product the dependency
    needs; a missing file is a :class:`ConfigError` that names the field and where it was looked for."""
    path = recipe.resolve_path(dependency.path)
    is_recipe = path.suffix in (".yaml", ".yml") and dependency.kind in PRODUCT_KINDS
    folder_ok = dependency.kind == "store" and path.is_dir() and not is_recipe
    where = f"{recipe.recipe_file}: " if recipe.recipe_file else ""
    if not (path.is_file() or folder_ok):
        what = "file or folder" if dependency.kind == "store" else "file"
        raise ConfigError(f"{where}{dependency.field}: no {what} {path} (paths in a recipe are relative to the "
                          "recipe's folder)")
    if not is_recipe:
        return path, None
    raw = read_recipe_file(path)
    kind = recipe_kinds.get(recipe_kind(raw)) if recipe_kind(raw) in recipe_kinds else None
    wanted = PRODUCT_KINDS[dependency.kind]
    if kind is not None and kind is not wanted:
        raise ConfigError(f"{where}{dependency.field}: {path} is a {kind.noun}, but it must be a {wanted.noun} (whose "
                          f"run gives the {dependency.kind} it needs)")
    return path, wanted.from_dict(apply_overrides(raw, _inherited_overrides(recipe, wanted)), str(path))


#: which kind of recipe makes each kind of product
PRODUCT_KINDS: dict[str, type[RunRecipe]] = {cls.product: cls for cls in (Recipe, VAERecipe, LabelRecipe)}


def check_dependencies(recipe: RunRecipe, _chain: tuple[Path, ...] = ()) -> None:
    """Validate, recursively, every recipe ``recipe`` depends on, before anything is trained."""
    for dependency in recipe.dependencies():
        path, loaded = dependency_recipe(recipe, dependency)
        if loaded is None:
            if problems := recipe.dependency_problems(dependency, path):
                raise ConfigError(f"{recipe.recipe_file}: {dependency.field}:\n  " + "\n  ".join(problems))
            continue
        if path.resolve() in _chain:
            raise ConfigError(f"{recipe.recipe_file}: {dependency.field} makes a cycle of recipes: "
                              + " -> ".join(str(p) for p in (*_chain, path.resolve())))
        problems = recipe.dependency_problems(dependency, loaded)
        if problems:
            raise ConfigError(f"{recipe.recipe_file}: {dependency.field}:\n  " + "\n  ".join(problems))
        check_dependencies(loaded, (*_chain, path.resolve()))


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, kind: str | None = None) -> Any:
    """Read a YAML recipe, apply dotted overrides, validate it and every recipe it depends on.

    ``kind`` (train, label, vae) is the kind the caller runs: a recipe of another kind is a
    :class:`ConfigError` that names the command for it."""
    raw = read_recipe_file(path, overrides)
    if kind is not None and (found := recipe_kind(raw)) != kind and found in recipe_kinds:
        other = recipe_kinds.get(found)
        raise ConfigError(f"{path} is a {other.noun}: run it with 'softdistill {other.command} {path}'")
    recipe = recipe_from_dict(raw, recipe_file=str(path))
    check_dependencies(recipe, (Path(path).resolve(),))
    return recipe

