"""Soft labels read from a store (``source: store``): the teacher's logits of every stored view,
labelled once by ``softdistill label``, looked up by ``(batch.sample_id, batch.view)``.

The loader shows each sample's view of the epoch (:mod:`softdistill.data.views`), the same
image the teacher labelled, so no teacher runs during training.  A store serves mixed views
(the teacher labelled the mixed image; partner and lambda are part of the view), but not new
inputs or gradients through the teacher.  Opening checks the store against the run: its data
(fingerprint), class count, view plan, whether its encoding carries what the method reads (a top-k
record does not carry every class's logit), and, when ``teacher`` is given, the teacher that labelled it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import Tensor

from softdistill.compatibility import FULL_LOGITS, MIXED, encoding_problems, stored_view_problems
from softdistill.data.config import DataConfig
from softdistill.data.samples import IdIndex, StreamSet, TensorSet
from softdistill.data.views import ViewPlan
from softdistill.store import Store, StoreError
from softdistill.store.format import data_fingerprint, sha256_of
from softdistill.soft_labels.base import (Dependency, SoftLabelSource, SourceConfig, SourceSetup, check_origin,
                                      register_source)
from softdistill.types import Batch

__all__ = ["StoreConfig", "StoredSoftLabels", "data_problems"]



class StoreConfig(SourceConfig):
    """A store named by its folder (``path``) or by its label recipe (``recipe``, labelled once if
    missing); ``teacher`` optionally names the checkpoint or teacher recipe that must have labelled it."""

    source: Literal["store"] = "store"
    path: str | None = Field(None, description="a store folder (written by softdistill label)")
    recipe: str | None = Field(None, description="a label recipe; its store is labelled once, then reused")
    teacher: str | None = Field(None, description="checkpoint or teacher recipe the store must have been labelled by")
    select: str = Field("best", description="with a teacher recipe: which checkpoint of its run (best | last | epoch_N)")
    verify: bool = Field(False, description="hash every shard when the run opens the store (else sizes and headers)")

    @model_validator(mode="after")
    def _one_origin(self) -> "StoreConfig":
        check_origin({"path": self.path, "recipe": self.recipe}, self.select)
        return self

    def dependencies(self) -> list[Dependency]:
        store = (Dependency("soft_labels.path", self.path, "store") if self.path is not None
                 else Dependency("soft_labels.recipe", self.recipe, "store"))
        teacher = [Dependency("soft_labels.teacher", self.teacher, "model", self.select)] if self.teacher else []
        return [store, *teacher]

    def dependency_problems(self, dependency: Dependency, needed: Any, recipe: Any) -> list[str]:
        """A label recipe's store must hold the training recipe's data and views, and encode what its
        method reads: checked when the recipe loads, before anything is labelled."""
        if dependency.kind != "store":
            return []
        where = f"the store of label recipe {dependency.path}"
        differ = [f"data.{key}: {getattr(needed.data, key)!r} in the label recipe, {getattr(recipe.data, key)!r} here"
                  for key in needed.data.split_differences(recipe.data)]
        problems = [f"{where} is made for other data ({'; '.join(differ)})"] if differ else []
        problems += encoding_problems(getattr(recipe, "soft_label_needs", {}), needed.encoding.model_dump(), where)
        return problems + stored_view_problems(needed.view_plan, recipe.view_plan, where)


def data_problems(store: Store, train: TensorSet | StreamSet, num_classes: int, plan: ViewPlan, where: str,
                  data: DataConfig | None = None) -> list[str]:
    """What differs between a store's data and a run's training split (empty: the store fits).

    The same fingerprint (ids and labels in row order) always fits; otherwise a plan that does not
    mix is served when every sample of the split is in the store with the same label (a subset);
    mixed views pair rows of the labelled split, so they need the very same split.
    """
    stored = store.manifest["data"]
    if store.num_classes != num_classes:
        return [f"{where} holds soft labels of {store.num_classes} classes, the data has {num_classes}"]
    if stored["fingerprint"] == data_fingerprint(train.ids, train.labels):
        return []
    here = data.split_identity() if data is not None else {}
    differ = [f"data.{key}: {stored.get(key)!r} in the store, {value!r} here" for key, value in here.items()
              if stored.get(key) != value]
    said = f" ({'; '.join(differ)})" if differ else ""
    store_ids, store_labels = store.sample_ids, store.labels
    rows, found = IdIndex(store_ids).find(train.ids)
    missing = ~found
    if bool(missing.any()):
        return [f"{where} was labelled on other data{said}: {int(missing.sum())} of the {len(train)} samples of this "
                f"recipe's training split are not in it (e.g. sample id {int(train.ids[missing][0])}); the store has "
                f"{len(store_ids)} samples"]
    relabelled = store_labels[rows] != train.labels.cpu()
    if bool(relabelled.any()):
        return [f"{where} was labelled on other data{said}: {int(relabelled.sum())} samples have another label in the "
                f"store (e.g. sample id {int(train.ids[relabelled][0])})"]
    if plan.mixes:
        return [f"{where} was labelled on another split{said} ({len(store_ids)} samples, this recipe's split "
                f"{len(train)} or another order): mixed views pair rows of the labelled split, so they need the "
                "same data section"]
    return []


@register_source
class StoredSoftLabels(SoftLabelSource):
    """The logits a store holds for ``(batch.sample_id, batch.view)`` (see the module docstring)."""

    Config = StoreConfig
    serves = frozenset({MIXED, FULL_LOGITS})  # the full logits with a full encoding only: see encoding_problems

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.lookups_verified = False

    @classmethod
    def build(cls, config: StoreConfig, setup: SourceSetup) -> "StoredSoftLabels":
        dependencies = config.dependencies()
        store = Store(setup.product(dependencies[0]))
        where = f"store {store.folder}"
        problems = data_problems(store, setup.data.train, setup.data.num_classes, setup.plan, where,
                                 setup.data_config)
        problems += stored_view_problems(store.plan, setup.plan, where)
        problems += encoding_problems(setup.needs, store.manifest["encoding"], where)
        if config.teacher is not None:
            problems += _teacher_problems(store, setup.product(dependencies[1]), config.teacher, where)
        if config.verify:
            problems += store.verify()
        if problems:
            raise StoreError("\n".join(problems))
        return cls(store)

    def verify_lookups(self, sample_ids: Tensor, views: int | None) -> None:
        """Check once that the store holds every sample id and view the run can show; lookups are then
        not checked per batch."""
        self.lookups_verified = False
        if views is None:
            raise StoreError(f"store {self.store.folder} holds {self.store.views} view(s) per sample, the training plan "
                             "draws a fresh view every epoch")
        self.store.rows_of(sample_ids)
        self.store.check_views(views)
        self.lookups_verified = True

    def forward(self, batch: Batch) -> Tensor:
        """The stored logits of the batch's views, looked up by its host address (the device is not waited
        for) and moved to the batch's device."""
        sample_ids, views = batch.host_address()
        check = not self.lookups_verified
        rows = self.store.rows_of(sample_ids, check)
        return self.store.logits(rows, views, check).to(batch.x.device, non_blocking=True)

    def report(self) -> dict[str, Any]:
        m = self.store.manifest
        return {"store": str(self.store.folder), "encoding": m["encoding"], "views": m["views"],
                "teacher": m["teacher"], "samples": m["samples"], "bytes": m["bytes"]}


def _teacher_problems(store: Store, checkpoint: Path, named: str, where: str) -> list[str]:
    digest = sha256_of(checkpoint)
    files = store.manifest["teacher"]["files"]
    if any(f["sha256"] == digest for f in files):
        return []
    labelled_by = ", ".join(f"{f['path']} (sha256 {f['sha256'][:12]}...)" for f in files) or "no recorded file"
    return [f"{where} was labelled by another teacher: {labelled_by}; soft_labels.teacher names {named} -> "
            f"{checkpoint} (sha256 {digest[:12]}...)"]
