"""The data section of a recipe, typed: which data set, its splits, batches, views and loader.

It reaches the data layer as it is (:func:`softdistill.data.prepare.prepare_data` takes it), so
its defaults are the only ones.  Every rule that ties its settings together, or ties them to what
the data set declares (:func:`~softdistill.data.readers.dataset_info`), is checked when it is
validated, before anything is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from softdistill.enums import Loader, OnCorrupt, Replay
from softdistill.data.readers import dataset_info
from softdistill.data.shifts import parse_ood_specs
from softdistill.data.views import AugmentConfig, ViewPlan
from softdistill.schema import StrictConfig, describe_errors, not_identity

__all__ = ["DataConfig", "DataFacts"]



class DataConfig(StrictConfig):
    """``data:`` of a recipe: which data set, its splits, batches, views and loader; every rule between
    its settings is checked when it is made (the fields and their meaning: docs/recipes.md).

    Args:
        name, root, ..., on_corrupt: the section's keys (see the fields), each with its default.

    Example:
        >>> data = DataConfig(name="digits", val_size=100, augment={"crop_padding": 1}, views=4)
        >>> data.batch_size, data.view_plan(run_seed=0).distinct_views
        (128, 4)
        >>> try:
        ...     DataConfig(name="digits", loader="stream")
        ... except ValueError as error:  # a rule between settings, checked when the section is made
        ...     print(error.errors()[0]["msg"][:62])
        Value error, loader: stream decodes image files batch by batch
    """

    name: str = Field("fashion-mnist", description="a registered data set: digits | fashion-mnist | mnist | cifar10 | "
                                                  "cifar100 | synthetic | imagefolder | shards (a folder written by "
                                                  "softdistill data pack) | one a plugin registers")
    root: str | None = not_identity(None, inherited=True, description="folder holding the data; else "
                                                                      "$SOFTDISTILL_DATA, then system places")
    download: bool = not_identity(False, inherited=True, description="download the data when it is not found")
    image_size: int | None = Field(None, ge=4, description="side the image files are decoded to (imagefolder, shards "
                                                           "and other file sets; needed to stream them)")
    val_size: Union[int, float] = Field(0.1, ge=0, description="validation samples held out of train: a count or a "
                                                               "fraction")
    per_class: int | None = Field(None, ge=1, description="keep this many training images per class (small-data "
                                                          "regime)")
    split_seed: int = Field(0, description="seed of the validation split and the per-class subset (not the run seed)")
    batch_size: int = Field(128, ge=1, description="global training batch (split across DDP ranks)")
    eval_batch_size: int = Field(1024, ge=1)
    drop_last: bool = Field(True, description="drop the last incomplete training batch of each epoch")
    normalize: bool = Field(True, description="standardise with the training set's per-channel mean and std")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    views: int = Field(0, ge=0, description="distinct augmented views per sample (epoch e shows view (e-1) mod V); "
                                            "0 = a fresh view every epoch")
    view_seed: int | None = Field(None, description="seed of the views' parameters; None = the run seed")
    replay: Replay = Field("cycle", description="which of the V views epoch e shows: cycle = (e-1) mod V; random = a "
                                                "hashed choice per sample and epoch")
    views_per_step: int = Field(1, ge=1, le=2, description="views of each sample a training step shows: 2 adds each "
                                                           "sample's next view of the plan (batch.second), for "
                                                           "methods that learn from two views (mlkd)")
    canvas: int | None = Field(None, ge=4, description="place every image at the centre of a black canvas of this "
                                                       "size (before the normalisation statistics); None = off")
    ood: list[str] = Field(default_factory=list, description="out-of-domain test sets kind:amount, e.g. shift:4, "
                                                             "rotate:20, noise:0.2, blur:1 (see softdistill.data.shifts)")
    loader: Loader = not_identity(
        "memory", description="memory: every split decoded onto the device; stream: image files decoded batch by "
                              "batch in worker processes; auto: stream those larger than 2 GiB decoded")
    workers: int = not_identity(4, ge=0, description="stream loader (and decoding files into memory): decoding "
                                                      "processes (0 = in the training process)")
    mean: list[float] | None = Field(None, description="per-channel normalisation mean in [0, 1] units (with std); "
                                                       "None = computed from the training split")
    std: list[float] | None = Field(None, description="per-channel normalisation std (with mean)")
    eval_resize: int | None = Field(None, ge=4, description="stream loader: evaluation images (and training "
                                                            "images when augment has no resized_crop) resized to "
                                                            "this shorter side, then centre-cropped to image_size "
                                                            "(e.g. 256 for 224); None = resized to image_size")
    stats_samples: int = Field(1000, ge=2, description="stream loader: training images the statistics are "
                                                       "estimated from, when mean/std are not given")
    on_corrupt: OnCorrupt = not_identity(
        "fail", description="stream loader: an image that cannot be decoded (corrupt, truncated, not an image): "
                            "fail = stop, naming the file; skip = leave its sample out of its batch, counted and named "
                            "in a warning and in metrics.jsonl (train/skipped, val/skipped, test/skipped)")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        dataset_info(name)  # an unknown name suggests the closest registered ones
        return name

    @field_validator("ood")
    @classmethod
    def _valid_ood(cls, specs: list[str]) -> list[str]:
        parse_ood_specs(specs)
        return specs

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        self.view_plan(0)  # the plan's own checks (e.g. replay: random needs data.views)
        info = dataset_info(self.name)
        if self.image_size is not None and not info.files:
            raise ValueError(f"image_size resizes image files (imagefolder, shards and file sets); {self.name} images "
                             "have a fixed size")
        if self.loader == "stream" and not info.files:
            raise ValueError(f"loader: stream decodes image files batch by batch (imagefolder, shards and file sets), "
                             f"but {self.name} is read into memory (loader: memory)")
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
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither")
        if self.std is not None and (len(self.std) != len(self.mean or []) or min(self.std) <= 0):
            raise ValueError(f"mean and std need one value per channel each (std > 0), got {self.mean} and {self.std}")
        if self.canvas is not None and info.image_size is not None and self.canvas < info.image_size:
            raise ValueError(f"canvas {self.canvas} is smaller than the {info.image_size}x{info.image_size} images of "
                             f"{self.name}")
        side = self.canvas or self.image_size or info.image_size
        if side is not None and self.augment.crop_padding >= side:
            raise ValueError(f"augment.crop_padding {self.augment.crop_padding} is not smaller than the {side}-pixel "
                             "images: a crop could hold no pixel of the image")
        return self

    #: the keys that decide which samples the splits hold, and their pixels
    SPLIT_KEYS: ClassVar[tuple[str, ...]] = ("name", "image_size", "val_size", "per_class", "split_seed", "normalize",
                                             "canvas")

    def split_identity(self) -> dict[str, Any]:
        """The settings that decide which samples the splits hold, and their pixels (:data:`SPLIT_KEYS`)."""
        return {key: getattr(self, key) for key in self.SPLIT_KEYS}

    def split_differences(self, other: "DataConfig") -> list[str]:
        """The :data:`SPLIT_KEYS` whose values differ between this section and ``other``."""
        return [key for key in self.SPLIT_KEYS if getattr(self, key) != getattr(other, key)]

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> "DataConfig":
        """A data section given as a mapping, validated; a ValueError listing every problem with its key."""
        try:
            return cls.model_validate(section)
        except ValidationError as exc:
            raise ValueError("invalid data settings:\n  " + "\n  ".join(describe_errors(exc.errors(), cls, ("data",))))\
                from None

    @classmethod
    def saved(cls, section: Mapping[str, Any], **changes: Any) -> "DataConfig":
        """The data section a run saved (in a checkpoint's recipe or a run folder's config.yaml), with
        ``changes`` (None values leave a key as saved), validated like any section."""
        return cls.of({**section, **{k: v for k, v in changes.items() if v is not None}})

    def view_plan(self, run_seed: int) -> ViewPlan:
        """The views of the training split (``view_seed``, else ``run_seed``)."""
        seed = self.view_seed if self.view_seed is not None else run_seed
        return ViewPlan.of(self.augment, seed=seed, views=self.views, replay=self.replay,
                           views_per_step=self.views_per_step)


@dataclass(frozen=True)
class DataFacts:
    """What a model trained on some data is bound to: the data set's name, its class names, the images'
    channels and side (None where not known without reading the data)."""

    name: str
    class_names: tuple[str, ...] | None
    channels: int | None
    image_size: int | None

    @classmethod
    def of(cls, data: DataConfig) -> "DataFacts":
        """The facts of a data section, from what its data set declares (no data is read)."""
        info = dataset_info(data.name)
        return cls(data.name, info.class_names, info.channels, data.canvas or data.image_size or info.image_size)

    def differences(self, other: "DataFacts") -> list[str]:
        """What differs from ``other`` (this one is "there", ``other`` "here"), among the facts both know."""
        labels = {"name": "data set", "class_names": "class names", "channels": "channels", "image_size": "image size"}
        return [f"{label} {getattr(self, key)!r} there, {getattr(other, key)!r} here" for key, label in labels.items()
                if None not in (getattr(self, key), getattr(other, key)) and getattr(self, key) != getattr(other, key)]
