"""Reading a store: memory-mapped shards, records looked up by (sample id, view).

Opening a store reads its manifest (which must be as it was written: its own sha256 matches) and
``samples.npy``, and maps every shard after checking the manifest's rules and each file against
them (:func:`~softdistill.store.format.check_store`: sizes, headers, the shard table's order and
counts, the sample table's fingerprint; every problem is named); it does not read the records, so
it costs the same for any store size.  :meth:`Store.verify` also checks every byte against the
manifest's sha256 (``softdistill verify``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softdistill.compatibility import stored_view_problems
from softdistill.data.samples import IdIndex
from softdistill.data.views import ViewPlan
from softdistill.hashing import data_fingerprint
from softdistill.sharded import read_manifest
from softdistill.store.format import STORE, StoreError, check_store, plan_of

__all__ = ["Store", "plan_of"]


class Store:
    """A complete store, opened for reading (see the module docstring): the soft labels of every
    (sample, view) of a view plan, looked up by sample id and view.

    Row r of the store is sample ``sample_ids[r]`` with label ``labels[r]``; ``views`` is the number of
    views per sample, ``plan`` the :class:`~softdistill.data.views.ViewPlan` they were made by,
    ``encoding`` how each soft label is stored and ``manifest`` what the writer recorded.

    Args:
        folder: the store's folder (written by :func:`~softdistill.store.labelling.label_store`,
            :func:`~softdistill.store.writer.write_store` or ``softdistill label``).

    Example:
        >>> import tempfile
        >>> from softdistill import TensorSet, ViewPlan, label_store
        >>> data = TensorSet(torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8), torch.arange(6) % 2,
        ...                  torch.arange(10, 16))
        >>> plan = ViewPlan(seed=0, hflip=True, views=2)
        >>> teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> folder = tempfile.mkdtemp()
        >>> _ = label_store(teacher, data, plan, folder, mean=[0.5], std=[0.25], quiet=True)
        >>> store = Store(folder)
        >>> store.check_fit(data.ids, data.labels, plan)  # the same rule a recipe's store is held to
        >>> store.lookup([12, 10], views=1).shape
        torch.Size([2, 2])
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = manifest = read_manifest(self.folder, STORE)
        if not manifest.get("complete"):
            raise StoreError(f"{self.folder} is an incomplete store: labelling stopped before every shard was written "
                             "(run the same 'softdistill label' command again to continue)")
        found = check_store(self.folder, manifest)
        if found.problems:
            raise StoreError(f"{self.folder} is damaged or was edited: " + "; ".join(found.problems) + f". {STORE.repair}.")
        assert found.encoding is not None and found.plan is not None and found.ids is not None
        self.encoding, self.plan = found.encoding, found.plan
        self.views = int(manifest["views_per_sample"])
        self.shard_samples = int(manifest["shard_samples"])
        self.sample_ids, self.labels = found.ids, found.labels
        self._index = IdIndex(self.sample_ids)
        self.shards: list[np.ndarray] = found.shards

    @property
    def teacher_checkpoint(self) -> Path | None:
        """The checkpoint of the model that labelled the store (None for a source without one)."""
        teacher = self.manifest["teacher"]
        return Path(teacher["files"][0]["path"]) if teacher.get("model") is not None and teacher.get("files") else None

    @property
    def num_classes(self) -> int:
        return self.encoding.num_classes

    def __len__(self) -> int:
        return len(self.sample_ids)

    def lookup(self, sample_ids: Tensor | Sequence[int], views: Tensor | Sequence[int] | int, *,
               device: torch.device | str | None = None) -> Tensor:
        """The stored logits of the views ``views`` of the samples ``sample_ids``.

        Args:
            sample_ids: B sample ids (a tensor on any device, or a sequence of ints).
            views: B views, or one view for all.
            device: where the logits go (default: the host).

        Returns:
            float32 B x K logits, rebuilt by the store's encoding; a :class:`StoreError` names an id or view
            the store does not hold.
        """
        ids = torch.as_tensor(sample_ids).long().cpu().reshape(-1)
        views = torch.broadcast_to(torch.as_tensor(views).long().cpu(), ids.shape)
        logits = self.logits(self.rows_of(ids), views)
        return logits if device is None else logits.to(device, non_blocking=True)

    def fit_problems(self, sample_ids: Tensor, labels: Tensor, plan: ViewPlan, *, num_classes: int | None = None,
                     data_identity: Mapping[str, Any] | None = None) -> list[str]:
        """What stops this store from serving the soft labels of the samples ``sample_ids`` (labelled
        ``labels``, in a split's row order) under ``plan``: the rule a recipe's store is held to.

        The same data (fingerprint of ids and labels in row order) fits; otherwise a plan that does not
        mix is served when every sample is in the store with the same label (a subset), while mixed views
        pair rows of the labelled split and need the very same one.  The plan must make the store's views
        (:meth:`ViewPlan.definition`), no more of them than it holds, and a fixed number of them.

        Args:
            sample_ids, labels: the split's sample ids and labels (int64, row order).
            plan: the views the soft labels are wanted for.
            num_classes: the data's class count, when known.
            data_identity: the split's settings (a recipe's ``data`` keys), to name the ones that differ
                from the store's.

        Returns:
            One line per problem (empty: the store fits).
        """
        where = f"store {self.folder}"
        if num_classes is not None and num_classes != self.num_classes:
            return [f"{where} holds soft labels of {self.num_classes} classes, the data has {num_classes}"]
        problems = self._data_problems(sample_ids.cpu().long(), labels.cpu().long(), plan, where, data_identity or {})
        problems += stored_view_problems(self.plan, plan, where)
        if plan.distinct_views is None:
            problems.append(f"{where} holds {self.views} view(s) per sample, the plan draws a fresh view every epoch "
                            "(views: 0): give the plan a number of views")
        return problems

    def check_fit(self, sample_ids: Tensor, labels: Tensor, plan: ViewPlan, **facts: Any) -> None:
        """:meth:`fit_problems` as an error.

        Args:
            sample_ids, labels, plan, facts: as :meth:`fit_problems`.

        Returns:
            None; a :class:`StoreError` listing every problem when there is one.
        """
        if problems := self.fit_problems(sample_ids, labels, plan, **facts):
            raise StoreError("\n".join(problems))

    def _data_problems(self, ids: Tensor, labels: Tensor, plan: ViewPlan, where: str,
                       data_identity: Mapping[str, Any]) -> list[str]:
        stored = self.manifest["data"]
        if stored["fingerprint"] == data_fingerprint(ids, labels):
            return []
        differ = [f"data.{key}: {stored.get(key)!r} in the store, {value!r} here" for key, value in data_identity.items()
                  if stored.get(key) != value]
        said = f" ({'; '.join(differ)})" if differ else ""
        rows, found = self._index.find(ids)
        if not bool(found.all()):
            missing = ~found
            return [f"{where} was labelled on other data{said}: {int(missing.sum())} of the {len(ids)} samples are not "
                    f"in it (e.g. sample id {int(ids[missing][0])}); the store has {len(self)} samples"]
        relabelled = self.labels[rows] != labels
        if bool(relabelled.any()):
            return [f"{where} was labelled on other data{said}: {int(relabelled.sum())} samples have another label in "
                    f"the store (e.g. sample id {int(ids[relabelled][0])})"]
        if plan.mixes:
            return [f"{where} was labelled on another split{said} ({len(self)} samples, this split {len(ids)} or another "
                    "order): mixed views pair rows of the labelled split, so they need the same split"]
        return []

    def rows_of(self, sample_ids: Tensor, check: bool = True) -> Tensor:
        """Store rows (CPU int64) of sample ids (int64, on any device); StoreError naming one that the
        store lacks (``check=False``: ids known to be in the store, e.g. checked once for a whole run)."""
        sample_ids = sample_ids.cpu()  # free for the CPU ids a batch carries
        rows, found = self._index.find(sample_ids)
        if check and not bool(found.all()):
            missing = sample_ids[~found]
            raise StoreError(f"{self.folder}: {len(missing)} of the {len(sample_ids)} sample ids asked for are not in the "
                             f"store (e.g. sample id {int(missing[0])})")
        return rows

    def check_views(self, views: int) -> None:
        """StoreError unless the store holds views ``0 .. views - 1`` of every sample."""
        if views > self.views:
            raise StoreError(f"{self.folder}: view {views - 1} asked for, the store holds views 0..{self.views - 1}")

    def records(self, rows: Tensor, views: Tensor, check: bool = True) -> np.ndarray:
        """The records of the views ``views`` of the store rows ``rows`` (int64, on any device), in that
        order (``check=False``: views known to be in the store)."""
        rows, views = rows.cpu().numpy(), views.cpu().numpy()
        if check and len(views):
            if views.min() < 0:
                raise StoreError(f"{self.folder}: view {int(views.min())} asked for, views are counted from 0")
            self.check_views(int(views.max()) + 1)
        shard, local = np.divmod(rows, self.shard_samples)
        out = np.empty(len(rows), dtype=self.encoding.record_dtype)
        for s in np.unique(shard):
            take = shard == s
            out[take] = self.shards[s][local[take], views[take]]
        return out

    def logits(self, rows: Tensor, views: Tensor, check: bool = True) -> Tensor:
        """float32 logits (B x K, on the host) of the views ``views`` of the store rows ``rows`` (CPU int64)."""
        return self.encoding.decode(self.records(rows, views, check))

    def all_logits(self, view: int | None = None) -> Tensor:
        """N x V x K logits of every record (or N x K of one view), in store order."""
        chunks = [self.encoding.decode(np.asarray(a if view is None else a[:, view])) for a in self.shards]
        return torch.cat(chunks)

    def verify(self) -> list[str]:
        """Every problem found by hashing each file against the manifest, and by its rules (empty: intact)."""
        return check_store(self.folder, self.manifest, deep=True).problems
