"""The store's folder layout, its manifest, hashes and the writer's lock (see docs/store.md).

A store is a folder::

    manifest.json        format, data (fingerprint), teacher identity, view plan, encoding, shard table
    samples.npy          (id, label) of every sample, int64, in store order (the training split's row order)
    shard-00000-HASH.npy records of samples [0, S), shape S x V, ordered by (sample, view);
                         HASH: the first 16 hex digits of the file's sha256
    shard-00001-HASH.npy ...
    config.yaml          the label recipe that made it (run-folder rules)
    summary.json         written when labelling finished (size, seconds, throughput)
    label.lock           only while a writer runs: {pid, host, started, command}

Every ``.npy`` file is a plain numpy array (fixed-size records, structured dtype, no object
fields) read with ``allow_pickle=False`` and memory-mapped.  Files are written by
:mod:`softdistill.atomic` (a temporary name, fsync, rename); the manifest says ``complete:
true`` only once every shard is there and hashed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softdistill.atomic import write_atomic, write_text_atomic
from softdistill.hashing import data_fingerprint, sha256_of
from softdistill.locking import LockHeldError, describe_holder, hold_lock

__all__ = ["FORMAT", "MANIFEST", "SAMPLES", "LOCK", "StoreError", "shard_name", "data_fingerprint", "sha256_of",
           "write_shard", "write_array_atomic", "read_manifest", "write_manifest", "WriterLock", "DISK_FULL",
           "shard_files", "read_samples", "samples_array"]

FORMAT = "softdistill-store-v1"
MANIFEST = "manifest.json"
SAMPLES = "samples.npy"
LOCK = "label.lock"
SAMPLE_DTYPE = np.dtype([("id", "<i8"), ("label", "<i8")])
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StoreError(ValueError):
    """A store that cannot be written or read as asked; the message names the file and what to do."""


def shard_name(index: int, digest: str) -> str:
    """A shard's file name: its index and the first 16 hex digits of its sha256, so that a shard
    file and its hash appear together, in one rename."""
    return f"shard-{index:05d}-{digest[:16]}.npy"


def shard_files(folder: Path, index: int) -> list[Path]:
    return sorted(folder.glob(f"shard-{index:05d}-*.npy"))


class _HashSink:
    """A write-only binary handle that only hashes what it is given."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return len(data)


def _write_npy(handle: Any, array: np.ndarray) -> None:
    np.lib.format.write_array(handle, array, version=(1, 0), allow_pickle=False)


def write_array_atomic(path: Path, array: np.ndarray) -> Path:
    """An ``.npy`` file (format 1.0 header, no pickle), written atomically (:mod:`softdistill.atomic`)."""
    return write_atomic(path, lambda handle: _write_npy(handle, array))


def write_shard(folder: Path, index: int, records: np.ndarray) -> Path:
    """Shard ``index`` as ``shard-IIIII-HASH.npy``: the bytes are hashed first, then written under a
    temporary name, fsynced and renamed, so that the file and its hash appear in one rename."""
    sink = _HashSink()
    _write_npy(sink, records)
    return write_array_atomic(folder / shard_name(index, sink.sha.hexdigest()), records)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the store in ``folder``; :class:`StoreError` for a folder that is not a store."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise StoreError(f"{folder} is not a store: no such folder (a store is a folder written by 'softdistill label')")
    if not path.is_file():
        raise StoreError(f"{folder} is not a store: it has no {MANIFEST} (a store is a folder written by "
                         "'softdistill label')")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is not a readable store manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise StoreError(f"{path} is not a softdistill store manifest: format {found!r}, expected {FORMAT!r}")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


class WriterLock:
    """``label.lock`` held by the one process that writes a store (:func:`softdistill.locking.hold_lock`).

    A second writer is refused, naming the holder.  The lock ends with its process, even after a
    kill; the next writer takes over the file left behind, with a message.
    """

    def __init__(self, folder: Path, quiet: bool = False) -> None:
        self.path = folder / LOCK
        self.quiet = quiet
        self._held = contextlib.ExitStack()

    def acquire(self) -> None:
        try:
            left = self._held.enter_context(hold_lock(self.path))
        except LockHeldError as exc:
            raise StoreError(f"{self.path.parent} is being written by another labelling process "
                             f"({describe_holder(exc.holder)}): two writers on one store are refused. Wait for it "
                             "to finish (its lock ends with it, even after a kill).") from None
        if left and not self.quiet:
            print(f"[softdistill] {self.path}: took over the stale lock of pid {left.get('pid')}, which no longer "
                  "holds it")

    def release(self) -> None:
        self._held.close()


def read_samples(path: Path) -> tuple[Tensor, Tensor]:
    """Sample ids and labels (int64) of a ``samples.npy`` file."""
    array = np.load(path, allow_pickle=False)
    if array.dtype != SAMPLE_DTYPE or array.ndim != 1:
        raise StoreError(f"{path}: expected a 1-D array of (id, label) int64 records, got {array.dtype} {array.shape}")
    return torch.from_numpy(array["id"].copy()), torch.from_numpy(array["label"].copy())


def samples_array(ids: Tensor, labels: Tensor) -> np.ndarray:
    out = np.empty(len(ids), dtype=SAMPLE_DTYPE)
    out["id"] = ids.cpu().long().numpy()
    out["label"] = labels.cpu().long().numpy()
    return out
