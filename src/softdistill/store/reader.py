"""Reading a store: memory-mapped shards, records looked up by (sample id, view).

Opening a store reads its manifest and ``samples.npy`` and maps every shard after checking its
size and header against the manifest (a truncated shard is named); it does not read the
records, so it costs the same for any store size.  :meth:`Store.verify` checks every byte
against the manifest's sha256 (``softdistill store verify``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softdistill.data.samples import IdIndex
from softdistill.data.views import ViewPlan
from softdistill.store.encoding import Encoding
from softdistill.store.format import SAMPLES, StoreError, read_manifest, read_samples, sha256_of

__all__ = ["Store", "plan_of"]


def plan_of(manifest: dict[str, Any]) -> ViewPlan:
    """The view plan a manifest records."""
    recorded = manifest["views"]  # a store of an earlier version lacks the resized crop's keys: it had none
    return ViewPlan.model_validate({key: value for key, value in recorded.items() if key in ViewPlan.model_fields})


class Store:
    """A complete store, opened for reading (see the module docstring).

    ``sample_ids`` and ``labels`` are in store order (row r of the store is sample
    ``sample_ids[r]``); ``views`` the views per sample; :meth:`logits` the soft labels.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = manifest = read_manifest(self.folder)
        if not manifest.get("complete"):
            raise StoreError(f"{self.folder} is an incomplete store: labelling stopped before every shard was written "
                             "(run the same 'softdistill label' command again to continue)")
        self.encoding = Encoding.from_dict(manifest["encoding"])
        self.views = int(manifest["views_per_sample"])
        self.shard_samples = int(manifest["shard_samples"])
        self.plan = plan_of(manifest)
        samples = self.folder / SAMPLES
        self._check_size(samples, manifest["samples_file"]["bytes"], "its sample table")
        self.sample_ids, self.labels = read_samples(samples)
        if len(self.sample_ids) != manifest["samples"]:
            raise StoreError(f"{samples}: {len(self.sample_ids)} samples, the manifest says {manifest['samples']}")
        self._index = IdIndex(self.sample_ids)
        self.shards: list[np.memmap] = []
        for entry in manifest["shards"]:
            path = self.folder / entry["name"]
            self._check_size(path, entry["bytes"], f"shard {entry['index']}")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.shape != (entry["samples"], self.views) or array.dtype != self.encoding.record_dtype:
                raise StoreError(f"{path}: records of shape {array.shape} and type {array.dtype}, the manifest says "
                                 f"{(entry['samples'], self.views)} of {self.encoding.record_dtype}: the shard is damaged")
            self.shards.append(array)

    def _check_size(self, path: Path, expected: int, what: str) -> None:
        if not path.is_file():
            raise StoreError(f"{self.folder}: {what} {path.name} is missing")
        size = path.stat().st_size
        if size != expected:
            raise StoreError(f"{self.folder}: {what} {path.name} is {'truncated' if size < expected else 'too long'} "
                             f"({size} bytes, the manifest says {expected}); label the store again or restore the file")

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
        """Problems found by hashing every file against the manifest (empty: the store is intact)."""
        problems = []
        entries = [(self.manifest["samples_file"], "the sample table")]
        entries += [(entry, f"shard {entry['index']}") for entry in self.manifest["shards"]]
        for entry, what in entries:
            if sha256_of(self.folder / entry["name"]) != entry["sha256"]:
                problems.append(f"{what} {entry['name']}: its sha256 differs from the manifest's (the file is corrupted)")
        return problems
