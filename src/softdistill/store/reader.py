"""Reading a store: memory-mapped shards, records looked up by (sample id, view).

Opening a store reads its manifest (which must be as it was written: its own sha256 matches) and
``samples.npy``, and maps every shard after checking the manifest's rules and each file against
them (:func:`~softdistill.store.format.check_store`: sizes, headers, the shard table's order and
counts, the sample table's fingerprint; every problem is named); it does not read the records, so
it costs the same for any store size.  :meth:`Store.verify` also checks every byte against the
manifest's sha256 (``softdistill verify``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softdistill.data.samples import IdIndex
from softdistill.sharded import read_manifest
from softdistill.store.format import STORE, StoreError, check_store, plan_of

__all__ = ["Store", "plan_of"]


class Store:
    """A complete store, opened for reading (see the module docstring).

    ``sample_ids`` and ``labels`` are in store order (row r of the store is sample
    ``sample_ids[r]``); ``views`` the views per sample; :meth:`logits` the soft labels.
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
        return Path(teacher["files"][0]["path"]) if teacher.get("model") is not None and teacher["files"] else None

    @property
    def num_classes(self) -> int:
        return self.encoding.num_classes

    def __len__(self) -> int:
        return len(self.sample_ids)

    def rows_of(self, sample_ids: Tensor, check: bool = True) -> Tensor:
        """Store rows (CPU int64) of sample ids (int64, on any device); StoreError naming one that the
        store lacks (``check=False``: ids known to be in the store, e.g. checked once for a whole run)."""
        sample_ids = sample_ids.cpu()  # free for the CPU ids a batch carries
        rows, found = self._index.find(sample_ids)
        if check and not bool(found.all()):
            raise StoreError(f"{self.folder}: sample id {int(sample_ids[~found][0])} is not in the store")
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
