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
from softdistill.data.views import ViewPlan
from softdistill.store import Store, StoreError
from softdistill.store.format import sha256_of
from softdistill.soft_labels.base import (Dependency, SoftLabelSource, SourceConfig, SourceSetup, check_origin,
                                      register_source)
from softdistill.types import Batch

__all__ = ["StoreConfig", "StoredSoftLabels"]



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
        if dependency.kind != "store" or isinstance(needed, Path):  # a store named by its folder: checked as it opens
            return []
        where = f"the store of label recipe {dependency.path}"
        differ = [f"data.{key}: {getattr(needed.data, key)!r} in the label recipe, {getattr(recipe.data, key)!r} here"
                  for key in needed.data.split_differences(recipe.data)]
        problems = [f"{where} is made for other data ({'; '.join(differ)})"] if differ else []
        problems += encoding_problems(getattr(recipe, "soft_label_needs", {}), needed.encoding.model_dump(), where)
        return problems + stored_view_problems(needed.view_plan, recipe.view_plan, where)


@register_source
class StoredSoftLabels(SoftLabelSource):
    """The logits a store holds for ``(batch.sample_id, batch.view)`` (see the module docstring).

    Made for a recipe by :meth:`build`; in a loop of your own by :meth:`checked`, which holds the store
    to the same rule (:meth:`~softdistill.store.Store.fit_problems`).  ``StoredSoftLabels(store)``
    itself checks nothing: every lookup then checks its ids and views.

    Args:
        store: an open :class:`~softdistill.store.Store`.

    Returns:
        Called on a :class:`~softdistill.types.Batch` with its address (``sample_id``, ``view``): the stored
        float32 logits of its views, on the batch's device.

    Example:
        >>> import tempfile, torch
        >>> from softdistill import Batch, Store, TensorSet, ViewPlan, label_store
        >>> data = TensorSet(torch.randint(0, 256, (4, 1, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
        >>> folder = tempfile.mkdtemp()
        >>> _ = label_store(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), data, ViewPlan(), folder,
        ...                 mean=[0.5], std=[0.5], quiet=True)
        >>> source = StoredSoftLabels.checked(Store(folder), data.ids, data.labels, ViewPlan())
        >>> source(Batch(x=torch.zeros(2, 1, 2, 2), y=torch.tensor([0, 1]), sample_id=torch.tensor([3, 0]),
        ...              view=torch.tensor([0, 0]))).shape
        torch.Size([2, 2])
    """

    Config = StoreConfig
    serves = frozenset({MIXED, FULL_LOGITS})  # the full logits with a full encoding only: see encoding_problems

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.lookups_verified = False

    @classmethod
    def checked(cls, store: Store, sample_ids: Tensor, labels: Tensor, plan: ViewPlan) -> "StoredSoftLabels":
        """The source of ``store`` for the samples ``sample_ids`` (labelled ``labels``) under ``plan``, checked
        as a recipe's store is (:meth:`~softdistill.store.Store.check_fit`) and its lookups verified once.

        Args:
            store: the open store.
            sample_ids, labels: the training split's ids and labels (row order).
            plan: the training views.

        Returns:
            The :class:`StoredSoftLabels`; a :class:`~softdistill.store.StoreError` listing every problem.
        """
        store.check_fit(sample_ids, labels, plan)
        source = cls(store)
        source.verify_lookups(sample_ids, plan.distinct_views)
        return source

    @classmethod
    def build(cls, config: StoreConfig, setup: SourceSetup) -> "StoredSoftLabels":
        dependencies = config.dependencies()
        store = Store(setup.product(dependencies[0]))
        where = f"store {store.folder}"
        train = setup.data.train
        problems = store.fit_problems(train.ids, train.labels, setup.plan, num_classes=setup.data.num_classes,
                                      data_identity=setup.data_config.split_identity())
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
