"""The store's folder layout, its manifest and the rules a store must keep (see docs/store.md).

A store is a folder::

    manifest.json        format, data (fingerprint), teacher identity, view plan, encoding, shard table,
                         manifest_sha256 (the sha256 of everything else in it)
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
true`` only once every shard is there and hashed.  What a manifest is checked by, on open and by
``softdistill verify``, is :func:`check_store` (the shared rules are :mod:`softdistill.sharded`'s).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from softdistill.data.views import ViewPlan
from softdistill.hashing import data_fingerprint, sha256_of
from softdistill.sharded import (FileEntry, FolderError, FolderFormat, ListedFile, Section, load_npy,
                                 shape_problems, write_npy, write_npy_atomic)
from softdistill.store.encoding import Encoding

__all__ = ["FORMAT", "LEGACY_FORMAT", "STORE", "SAMPLES", "LOCK", "StoreError", "shard_name", "data_fingerprint", "sha256_of",
           "write_shard", "shard_files", "human_bytes", "describe", "read_samples", "samples_array", "plan_of", "StoreContents", "check_store"]

FORMAT = "softdistill-store-v2"
LEGACY_FORMAT = "softdistill-store-v1"  # before the manifest carried its own hash
SAMPLES = "samples.npy"
LOCK = "label.lock"
SAMPLE_DTYPE = np.dtype([("id", "<i8"), ("label", "<i8")])


class StoreError(FolderError):
    """A store that cannot be written or read as asked; the message names the file and what to do."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


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


def write_shard(folder: Path, index: int, records: np.ndarray) -> Path:
    """Shard ``index`` as ``shard-IIIII-HASH.npy``: the bytes are hashed first, then written under a
    temporary name, fsynced and renamed, so that the file and its hash appear in one rename."""
    sink = _HashSink()
    write_npy(sink, records)  # type: ignore[arg-type]
    return write_npy_atomic(folder / shard_name(index, sink.sha.hexdigest()), records)


def read_samples(path: Path) -> tuple[Tensor, Tensor]:
    """Sample ids and labels (int64) of a ``samples.npy`` file."""
    array = load_npy(path, StoreError)
    if array.dtype != SAMPLE_DTYPE or array.ndim != 1:
        raise StoreError(f"{path}: expected a 1-D array of (id, label) int64 records, got {array.dtype} {array.shape}")
    return torch.from_numpy(array["id"].copy()), torch.from_numpy(array["label"].copy())


def samples_array(ids: Tensor, labels: Tensor) -> np.ndarray:
    out = np.empty(len(ids), dtype=SAMPLE_DTYPE)
    out["id"] = ids.cpu().long().numpy()
    out["label"] = labels.cpu().long().numpy()
    return out


def plan_of(manifest: dict[str, Any]) -> ViewPlan:
    """The view plan a manifest records."""
    recorded = manifest["views"]  # keys a manifest lacks (a v1 store has no resized crop) take their defaults
    return ViewPlan.model_validate({key: value for key, value in recorded.items() if key in ViewPlan.model_fields})


# ------------------------------------------------------------------------------------------ the rules

class _Shard(FileEntry):
    index: int
    first: int
    samples: int = Field(ge=1)


class _Data(Section):
    samples: int = Field(ge=0)
    fingerprint: str


class _Views(Section):
    fingerprint: str


class _Manifest(Section):
    """The keys of a complete store's manifest that reading it relies on."""

    complete: bool
    data: _Data
    views: _Views
    encoding: dict[str, Any]
    teacher: dict[str, Any]
    shard_samples: int = Field(ge=1)
    samples: int = Field(ge=0)
    views_per_sample: int = Field(ge=1)
    record_bytes: int
    bytes: int
    samples_file: FileEntry
    shards: list[_Shard]


@dataclass
class StoreContents:
    """A store's files as :func:`check_store` found them: every ``problem`` (empty: the store is sound)
    and what was opened on the way: the encoding, the view plan, the sample table and each shard
    memory-mapped (None for one that is missing or damaged)."""

    problems: list[str] = field(default_factory=list)
    encoding: Encoding | None = None
    plan: ViewPlan | None = None
    ids: Tensor | None = None
    labels: Tensor | None = None
    shards: list[np.ndarray | None] = field(default_factory=list)


def check_store(folder: Path, manifest: dict[str, Any], deep: bool = False) -> StoreContents:
    """Every problem of the complete store in ``folder`` against its ``manifest``: the manifest's keys
    and types; its sections against each other (encoding and record size, view plan and its
    fingerprint, the shard table's order, first rows, counts, names and the total size); each file
    against its entry (inside the folder, size, the header of every ``.npy``, the sample table's
    count and fingerprint); with ``deep`` every file's sha256.  Headers only are read, not records."""
    found = StoreContents()
    problems = found.problems
    if not manifest.get("complete"):
        problems.append("an incomplete store: labelling stopped before every shard was written")
        return found
    if shape := shape_problems(manifest, _Manifest):
        return StoreContents(shape)
    try:
        found.encoding = encoding = Encoding.from_dict(manifest["encoding"])
        found.plan = plan = plan_of(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        return StoreContents([f"the manifest's encoding or views cannot be read ({type(exc).__name__}: {exc})"])
    n, per_shard, views = manifest["samples"], manifest["shard_samples"], manifest["views_per_sample"]
    if manifest["record_bytes"] != encoding.record_bytes:
        problems.append(f"record_bytes is {manifest['record_bytes']}, the encoding's records take {encoding.record_bytes}")
    if manifest["views"]["fingerprint"] != plan.fingerprint():
        problems.append(f"views.fingerprint is {manifest['views']['fingerprint']!r}, the view plan the manifest "
                        f"records has {plan.fingerprint()!r}: the views were edited")
    if plan.distinct_views != views:
        problems.append(f"views_per_sample is {views}, the view plan has {plan.distinct_views} distinct view(s)")
    if manifest["data"]["samples"] != n:
        problems.append(f"data.samples is {manifest['data']['samples']}, samples is {n}")
    entries = manifest["shards"]
    count = -(-n // per_shard)
    if len(entries) != count:
        problems.append(f"the shard table lists {len(entries)} shard(s); {n} samples in shards of {per_shard} make "
                        f"{count}: an entry was deleted or added")
    for position, entry in enumerate(entries):
        expected = {"index": position, "first": position * per_shard, "samples": min(per_shard, n - position * per_shard),
                    "name": shard_name(position, entry["sha256"])}
        wrong = [f"{key} {entry[key]!r} (expected {value!r})" for key, value in expected.items() if entry[key] != value]
        if wrong:
            problems.append(f"shard entry {position}: {', '.join(wrong)}")
    total = manifest["samples_file"]["bytes"] + sum(entry["bytes"] for entry in entries)
    if manifest["bytes"] != total:
        problems.append(f"bytes is {manifest['bytes']}, its files add up to {total}")
    _check_samples(folder, manifest, deep, found)
    found.shards = [_checked_shard(folder, entry, (entry["samples"], views), encoding.record_dtype, deep, found)
                    for entry in entries]
    return found


def _check_samples(folder: Path, manifest: dict[str, Any], deep: bool, found: StoreContents) -> None:
    """The sample table against its entry, the sample count and the data's fingerprint."""
    entry = manifest["samples_file"]
    if entry["name"] != SAMPLES:
        found.problems.append(f"samples_file.name is {entry['name']!r}, expected {SAMPLES!r}")
        return
    if (problem := ListedFile("the sample table", SAMPLES, entry["bytes"], entry["sha256"]).problem(folder, deep)):
        found.problems.append(problem)
        return
    try:
        ids, labels = read_samples(folder / SAMPLES)
    except StoreError as exc:
        found.problems.append(str(exc))
        return
    if len(ids) != manifest["samples"]:
        found.problems.append(f"the sample table holds {len(ids)} samples, the manifest says {manifest['samples']}")
    elif data_fingerprint(ids, labels) != manifest["data"]["fingerprint"]:
        found.problems.append("the sample table's ids and labels do not have the manifest's data.fingerprint")
    found.ids, found.labels = ids, labels


def _checked_shard(folder: Path, entry: dict[str, Any], shape: tuple[int, int], dtype: np.dtype, deep: bool,
                   found: StoreContents) -> np.ndarray | None:
    """The shard of ``entry`` memory-mapped, or None when it is missing or damaged (a problem added)."""
    what = f"shard {entry['index']}"
    if (problem := ListedFile(what, entry["name"], entry["bytes"], entry["sha256"]).problem(folder, deep)):
        found.problems.append(problem)
        return None
    path = folder / entry["name"]
    try:
        array = load_npy(path, StoreError, mmap=True)
    except StoreError as exc:
        found.problems.append(str(exc))
        return None
    if array.shape != shape or array.dtype != dtype:
        found.problems.append(f"{path}: records of shape {array.shape} and type {array.dtype}, the manifest says "
                              f"{shape} of {dtype}: the shard is damaged")
        return None
    return array


def describe(manifest: dict[str, Any]) -> str:
    """What a sound store holds: samples, views, encoding, shards and size."""
    e = manifest["encoding"]
    encoding = e["kind"] + (f" k={e['k']}" if e["k"] else "") + f" {e['dtype']}"
    return (f"{manifest['samples']} samples x {manifest['views_per_sample']} views, {encoding}, "
            f"{len(manifest['shards'])} shard(s), {human_bytes(manifest['bytes'])}")


STORE = FolderFormat(
    name=FORMAT, legacy=(LEGACY_FORMAT,), noun="store", writer="softdistill label", error=StoreError, lock=LOCK,
    redo="Delete the store and label it again ('softdistill label RECIPE')",
    repair=("Run the label recipe that made the store again (its copy is the store's config.yaml) with --verify: "
            "'softdistill label RECIPE --verify' keeps the intact shards and labels the others again; or restore the "
            "files"),
    check=lambda folder, manifest, deep: check_store(folder, manifest, deep).problems, describe=describe)
