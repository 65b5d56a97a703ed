"""Shards: an image folder packed into a few large files, each sample readable on its own.

``softdistill data pack SRC OUT`` (:func:`pack_imagefolder`) writes, from ``SRC/train/<class>/*`` and
``SRC/val/<class>/*`` (or ``test/``)::

    OUT/manifest.json          format, class names, and per split: samples, fingerprint, shard table
                               (file, index file, samples, bytes and sha256 of each); manifest_sha256
    OUT/train-00000.tar        a POSIX tar in the WebDataset layout: for every sample ``ID.EXT`` (the
                               source file's bytes, unchanged) and ``ID.cls`` (its label), ID = the
                               sample id on nine digits
    OUT/train-00000.idx.npy    (id, label, offset, size) of every sample of the shard: where its image's
                               bytes sit in the tar, so that one sample is one read
    OUT/test-00000.tar ...
    OUT/pack-progress.json     only while packing: the shards done, so that a stopped pack continues
    OUT/pack.lock              only while packing: the one process that packs into OUT

A sample's id is its row in the folder's official split (its position in the sorted listing, as
the image folder source numbers it) and its image is the file's own bytes, so a split read from
shards (``data.name: shards``, :func:`shard_split`) has the ids, labels and fingerprint of the
folder and decodes to the same pixels: a soft-label store labelled on one serves the other.
Every file is written atomically; a shard counts only once the manifest (or, while packing, the
progress file) lists it, with its size and sha256.  The manifest is checked by the rules of
:func:`check_pack` (with :mod:`softdistill.sharded`'s) whenever a split is read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from tqdm.auto import tqdm

from softdistill.atomic import ensure_folder, process_alive, remove_stale_temporaries, write_atomic
from softdistill.data.readers import Split, list_imagefolder, register_dataset
from softdistill.data.samples import DatasetFormatError, DatasetNotFoundError, StreamSet, checked_ids, open_rgb
from softdistill.enums import ON_CORRUPT, OnCorrupt
from softdistill.hashing import data_fingerprint, sha256_of
from softdistill.sharded import (HEX64, MANIFEST, FolderFormat, ListedFile, Section, WriterLock, load_npy,
                                 read_manifest, shape_problems, write_manifest, write_npy_atomic)

__all__ = ["FORMAT", "LEGACY_FORMAT", "PACK", "PROGRESS", "PackError", "ShardSet", "ShardLimit", "parse_shard_size",
           "plan_shards", "pack_imagefolder", "read_pack_manifest", "check_pack", "shard_split", "describe", "ON_CORRUPT"]

FORMAT = "softdistill-shards-v2"
LEGACY_FORMAT = "softdistill-shards-v1"  # before the manifest carried its own hash
PROGRESS = "pack-progress.json"
SPLITS = ("train", "test")
INDEX_DTYPE = np.dtype([("id", "<i8"), ("label", "<i8"), ("offset", "<i8"), ("size", "<i8")])
_SIZE = re.compile(r"(\d+)\s*([kmg]i?b)?", re.IGNORECASE)
_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
# the files of a pack folder: its shards, indexes, manifest, progress file, lock and their temporaries
_OWN = re.compile(r"\.?((train|test)-\d{5}\.(tar|idx\.npy)|manifest\.json|pack-progress\.json|pack\.lock)"
                  r"(\.\d+\.[0-9a-f]{16}\.tmp)?")


# ------------------------------------------------------------------------------------------------ reading

@dataclass
class ShardSet(StreamSet):
    """Samples in shards: the shard files, and per sample its shard (a position in ``shards``), the byte
    ``offsets`` and ``sizes`` of its image in it, its label (int64) and sample id (int64)."""

    shards: tuple[Path, ...]
    shard: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    labels: Tensor
    image_size: int
    ids: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.shards = tuple(self.shards)
        self.ids = checked_ids(len(self.shard), self.labels, self.ids)

    def open(self, row: int) -> Any:
        path, offset, size = self.shards[self.shard[row]], int(self.offsets[row]), int(self.sizes[row])
        where = f"{path} (sample id {int(self.ids[row])}, {size} bytes at offset {offset})"
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(size)
        except OSError as exc:
            raise DatasetFormatError(f"{where}: cannot read the shard ({exc.strerror or exc})") from exc
        if len(data) != size:
            raise DatasetFormatError(f"{where}: the shard is truncated (only {len(data)} of the bytes are there); "
                                     "pack the folder again")
        return open_rgb(io.BytesIO(data), where)

    def subset(self, index: Tensor) -> "ShardSet":
        rows = index.cpu().numpy()
        return ShardSet(self.shards, self.shard[rows], self.offsets[rows], self.sizes[rows], self.labels[index],
                        self.image_size, self.ids[index])


def _shard_names(split: str, number: int) -> tuple[str, str]:
    return f"{split}-{number:05d}.tar", f"{split}-{number:05d}.idx.npy"


class _Shard(Section):
    file: str
    index: str
    samples: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=HEX64)
    index_bytes: int = Field(ge=0)
    index_sha256: str = Field(pattern=HEX64)


class _Split(Section):
    samples: int = Field(ge=0)
    fingerprint: str
    shards: list[_Shard]


class _Splits(Section):
    train: _Split
    test: _Split


class _Manifest(Section):
    """The keys of a pack's manifest that reading it relies on."""

    class_names: list[str]
    splits: _Splits


@dataclass
class PackContents:
    """What :func:`check_pack` found: every ``problem`` (empty: sound) and, per split it checked and
    found sound, the shard files and the concatenated index of their samples."""

    problems: list[str] = field(default_factory=list)
    shards: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    index: dict[str, np.ndarray] = field(default_factory=dict)


def check_pack(folder: Path, manifest: dict[str, Any], splits: tuple[str, ...] = SPLITS,
               deep: bool = False) -> PackContents:
    """Every problem of the pack folder ``folder`` against its ``manifest``, for ``splits``: the
    manifest's keys and types; each split's shard table (names in order, sample counts adding up to
    the split's); each tar and index file against its entry (inside the folder, size; with ``deep``
    sha256); each index against its shard (records, byte ranges inside the tar); the ids in
    increasing order over the split, the labels among the classes and the split's fingerprint."""
    found = PackContents()
    if shape := shape_problems(manifest, _Manifest):
        return PackContents(shape)
    classes = len(manifest["class_names"])
    for split in splits:
        part = manifest["splits"][split]
        problems: list[str] = []
        indexes = []
        for number, entry in enumerate(part["shards"]):
            names = _shard_names(split, number)
            if (entry["file"], entry["index"]) != names:
                problems.append(f"{split} shard entry {number}: files {entry['file']!r}, {entry['index']!r} (expected "
                                f"{names[0]!r}, {names[1]!r})")
                continue
            index = _checked_index(folder, entry, f"{split} shard {number}", deep, problems)
            if index is not None:
                indexes.append(index)
        if sum(entry["samples"] for entry in part["shards"]) != part["samples"]:
            problems.append(f"the {split} shards hold {sum(e['samples'] for e in part['shards'])} samples, the "
                            f"manifest's {split}.samples says {part['samples']}")
        if not problems:
            index = np.concatenate(indexes) if indexes else np.zeros(0, INDEX_DTYPE)
            problems += _index_problems(index, split, classes, part["fingerprint"])
        if problems:
            found.problems += problems
            continue
        found.shards[split] = tuple(folder / entry["file"] for entry in part["shards"])
        found.index[split] = index
    return found


def _listed(entry: dict[str, Any], what: str) -> tuple[ListedFile, ListedFile]:
    """The tar and the index file of a shard entry."""
    return (ListedFile(what, entry["file"], entry["bytes"], entry["sha256"]),
            ListedFile(f"the index of {what}", entry["index"], entry["index_bytes"], entry["index_sha256"]))


def _checked_index(folder: Path, entry: dict[str, Any], what: str, deep: bool, problems: list[str]
                   ) -> np.ndarray | None:
    """The index of one shard, checked against its entry and its tar; None with a problem added."""
    if bad := [p for f in _listed(entry, what) if (p := f.problem(folder, deep)) is not None]:
        problems += bad
        return None
    path = folder / entry["index"]
    try:
        index = load_npy(path, DatasetFormatError)
    except DatasetFormatError as exc:
        problems.append(str(exc))
        return None
    if index.dtype != INDEX_DTYPE or index.shape != (entry["samples"],):
        problems.append(f"{path}: expected {entry['samples']} records of {INDEX_DTYPE}, found {index.shape} of "
                        f"{index.dtype}")
        return None
    if len(index) and (int(index["offset"].min()) < 0 or int(index["size"].min()) < 0
                       or int((index["offset"] + index["size"]).max()) > entry["bytes"]):
        problems.append(f"{path}: points outside {folder / entry['file']}")
        return None
    return index


def _index_problems(index: np.ndarray, split: str, classes: int, fingerprint: str) -> list[str]:
    """The samples of a split's shards against the rules: increasing ids, known labels, the fingerprint."""
    ids, labels = torch.from_numpy(index["id"].copy()), torch.from_numpy(index["label"].copy())
    if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):
        return [f"the {split} shards' sample ids are not in increasing order: shards were swapped or replaced"]
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < classes):
        return [f"the {split} shards hold labels outside the {classes} classes of the manifest"]
    if data_fingerprint(ids, labels) != fingerprint:
        return [f"the {split} shards' ids and labels do not match the fingerprint in {MANIFEST} (an index was "
                "replaced)"]
    return []


def read_pack_manifest(root: str | os.PathLike | None) -> dict[str, Any]:
    """The manifest of the pack folder ``root``; a :class:`DatasetNotFoundError` or :class:`DatasetFormatError`
    saying what is wrong (no folder, an unfinished pack, another format, an edited manifest)."""
    if root is None:
        raise ValueError("data.name: shards needs data.root: a folder written by 'softdistill data pack'")
    folder = Path(root).expanduser()
    if not (folder / MANIFEST).is_file():
        unfinished = " (a pack was started there but not finished: run the same pack command again)" \
            if (folder / PROGRESS).is_file() else ""
        raise DatasetNotFoundError(f"{folder}: no shards, {MANIFEST} is missing{unfinished}; a shard folder is "
                                   "written by 'softdistill data pack SRC_FOLDER OUT'")
    return read_manifest(folder, PACK)


@register_dataset("shards", files=True)
def shard_split(split: str, data: Any) -> Split:
    """One split (``train`` or ``test``) of the pack folder ``data.root``, decoded at ``data.image_size``,
    after the checks of :func:`check_pack` (a missing, truncated or inconsistent file is an error naming it)."""
    manifest = read_pack_manifest(data.root)
    folder = Path(data.root).expanduser()
    found = check_pack(folder, manifest, (split,))
    if found.problems:
        raise DatasetFormatError(f"{folder} is damaged or was edited: " + "; ".join(found.problems) + f". {PACK.repair}.")
    index = found.index[split]
    sizes = [entry["samples"] for entry in manifest["splits"][split]["shards"]]
    shard = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    ids, labels = torch.from_numpy(index["id"].copy()), torch.from_numpy(index["label"].copy())
    return Split(ShardSet(found.shards[split], shard, index["offset"].copy(), index["size"].copy(), labels,
                          data.image_size, ids), tuple(manifest["class_names"]))


def describe(manifest: dict[str, Any]) -> str:
    """What a sound pack holds: the images and shards of each split."""
    return ", ".join(f"{name} {part['samples']} images in {len(part['shards'])} shard(s)"
                     for name, part in manifest["splits"].items())


PACK = FolderFormat(
    name=FORMAT, legacy=(LEGACY_FORMAT,), noun="shard folder", writer="softdistill data pack", error=DatasetFormatError,
    lock="pack.lock", redo="Pack the image folder again, into an empty folder ('softdistill data pack SRC_FOLDER OUT')",
    repair="Copy the named files again from an intact copy, or pack the image folder again into an empty folder",
    check=lambda folder, manifest, deep: check_pack(folder, manifest, deep=deep).problems, describe=describe)


# ------------------------------------------------------------------------------------------------ writing

class PackError(ValueError):
    """A pack that cannot go on (a worker process died); the message says what is kept and what to do."""


@dataclass(frozen=True)
class ShardLimit:
    """When a shard is full: at ``images`` samples, or (``bytes``) before the source files' bytes exceed it."""

    images: int | None = None
    bytes: int | None = None

    def describe(self) -> str:
        return f"{self.images} images" if self.images is not None else f"{self.bytes} bytes"


def parse_shard_size(text: str) -> ShardLimit:
    """``"1000"`` (images per shard) or ``"256MB"``, ``"1GiB"``, ... (bytes of source files per shard)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"shard size {text!r}: give a number of images (e.g. 1000) or of bytes with a unit "
                         "(e.g. 256MB, 1GiB)")
    count, unit = int(match.group(1)), match.group(2)
    return ShardLimit(images=count) if unit is None else ShardLimit(bytes=count * _UNITS[unit.lower()])


def plan_shards(sizes: list[int], limit: ShardLimit) -> list[tuple[int, int]]:
    """Row ranges ``[start, end)`` of consecutive samples, one a shard: at most ``limit.images`` samples, or
    samples whose ``sizes`` add up to at most ``limit.bytes`` (a larger single sample is a shard alone)."""
    if limit.images is not None:
        return [(s, min(s + limit.images, len(sizes))) for s in range(0, len(sizes), limit.images)]
    assert limit.bytes is not None
    ranges, start, total = [], 0, 0
    for row, size in enumerate(sizes):
        if row > start and total + size > limit.bytes:
            ranges.append((start, row))
            start, total = row, 0
        total += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


@dataclass(frozen=True)
class _ShardTask:
    out: str
    split: str
    number: int
    files: tuple[str, ...]
    labels: tuple[int, ...]
    ids: tuple[int, ...]
    on_corrupt: str


def _checked_image(path: Path, on_corrupt: str) -> bytes | None:
    """The bytes of the image file ``path`` once Pillow has decoded all of it; None for a corrupt file
    when skipping, else a :class:`DatasetFormatError` naming it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        open_rgb(io.BytesIO(data), str(path))
    except DatasetFormatError:
        if on_corrupt == "skip":
            return None
        raise
    return data


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0  # the same input gives the same bytes
    return info


def _write_shard(task: _ShardTask) -> dict[str, Any]:
    """Write one shard and its index (each atomically); its manifest entry, with the files it skipped."""
    tar_name, index_name = _shard_names(task.split, task.number)
    records, skipped = [], []

    def write(handle: Any) -> None:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for file, label, sample_id in zip(task.files, task.labels, task.ids):
                data = _checked_image(Path(file), task.on_corrupt)
                if data is None:
                    skipped.append(file)
                    continue
                suffix = Path(file).suffix.lower().lstrip(".")
                info = _member(f"{sample_id:09d}.{suffix}", len(data))
                offset = tar.offset + len(info.tobuf(tarfile.USTAR_FORMAT))
                tar.addfile(info, io.BytesIO(data))
                records.append((sample_id, label, offset, len(data)))
                cls = str(label).encode("ascii")
                tar.addfile(_member(f"{sample_id:09d}.cls", len(cls)), io.BytesIO(cls))

    out = Path(task.out)
    tar_path = write_atomic(out / tar_name, write)
    index_path = write_npy_atomic(out / index_name, np.array(records, dtype=INDEX_DTYPE))
    return {"file": tar_name, "index": index_name, "samples": len(records), "bytes": tar_path.stat().st_size,
            "sha256": sha256_of(tar_path), "index_bytes": index_path.stat().st_size,
            "index_sha256": sha256_of(index_path), "skipped": skipped}


def _source_identity(source: Path, listings: dict[str, Any], sizes: dict[str, list[int]], limit: ShardLimit,
                     on_corrupt: str) -> str:
    """A digest of what a pack is made from (every file's path, size and label, the shard size and the
    corrupt-image rule): a stopped pack continues only with the very same."""
    h = hashlib.sha256(json.dumps({"shard_size": [limit.images, limit.bytes], "on_corrupt": on_corrupt}).encode())
    for split, listing in listings.items():
        for file, size, label in zip(listing.files, sizes[split], listing.labels.tolist()):
            h.update(f"{split}\0{file.relative_to(source)}\0{size}\0{label}\n".encode())
    return h.hexdigest()


def _done_shards(out: Path, identity: str, tasks: list[_ShardTask]) -> dict[str, dict[str, Any]]:
    """The shards of ``tasks`` that a stopped pack of the same source wrote (by file name), each still
    there whole; none when the progress file is unreadable or was edited (they are written again)."""
    if not (out / PROGRESS).is_file():
        return {}
    try:
        progress = read_manifest(out, PACK, name=PROGRESS)
    except DatasetFormatError:
        return {}
    if progress.get("source") != identity:
        raise DatasetFormatError(f"{out}: holds an unfinished pack of other files or settings ({out / PROGRESS}); "
                                 "give another output folder, or delete this one to start again")
    names = {_shard_names(t.split, t.number) for t in tasks}
    entries = [e for e in progress.get("shards", []) if not shape_problems(e, _Shard)]
    return {e["file"]: e for e in entries
            if (e["file"], e["index"]) in names and not any(f.problem(out) for f in _listed(e, e["file"]))}


def _exit_with_parent(parent: int) -> None:
    """Run in each pack worker as it starts: a thread that ends the worker once the pack's process
    ``parent`` is gone (the worker is then given another parent), so that no worker outlives a
    killed pack.  A worker whose parent died as it started ends at once."""
    watched = os.getppid()  # the pack's process, or the fork server under that start method
    if watched != parent and not process_alive(parent):
        os._exit(1)

    def watch() -> None:
        while os.getppid() == watched:
            time.sleep(0.1)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_tasks(tasks: list[_ShardTask], workers: int) -> Iterator[tuple[_ShardTask, dict[str, Any]]]:
    """Each task with its shard's entry, in task order (a shard finished ahead of an earlier one waits for
    it); in ``workers`` processes (0: here), which end with this process however it ends.  A worker's
    error stops the pack with that error; a worker that dies stops it with a message, never a hang."""
    if workers == 0:
        for task in tasks:
            yield task, _write_shard(task)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures: dict[Future, _ShardTask] = {pool.submit(_write_shard, task): task for task in tasks}
        try:
            for future in futures:
                yield futures[future], future.result()
        except BrokenProcessPool as exc:
            raise PackError(f"a pack worker process died (killed, or out of memory) while writing "
                            f"{_shard_names(futures[future].split, futures[future].number)[0]}; the shards "
                            "finished so far are kept: run the same command again to continue") from exc
        finally:
            for pending in futures:
                pending.cancel()


def _check_target(source: Path, out: Path) -> None:
    """Refuse an output folder inside the source folder, or one that holds files other than a pack's."""
    if out.resolve().is_relative_to(source.resolve()):
        raise DatasetFormatError(f"{out} is inside the image folder {source}: the shards would be mixed with the "
                                 "images they are made of; give an output folder outside it")
    foreign = sorted(p.name for p in out.iterdir() if not _OWN.fullmatch(p.name)) if out.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DatasetFormatError(f"{out} is not empty: it holds {shown}, which are not part of a pack; give an empty "
                                 "(or new) output folder, or the folder of an unfinished pack of the same images to "
                                 "continue it")


def pack_imagefolder(source: str | os.PathLike, out: str | os.PathLike, shard_size: ShardLimit,
                     on_corrupt: OnCorrupt = "fail", workers: int = 0, quiet: bool = False,
                     progress: Callable[..., Any] = tqdm) -> dict[str, Any]:
    """Pack the image folder ``source`` into shards in ``out`` (see the module docstring); returns the manifest.

    ``on_corrupt``: ``fail`` stops at the first image Pillow cannot decode, naming it; ``skip`` leaves
    such files out and lists them in the manifest (``skipped``).  ``out`` must be new, empty or hold
    a pack of the same images: a pack that stopped continues with the shards it finished (the
    temporary files of a killed one are removed); one finished already is left as it is.  One
    process at a time packs into a folder (``pack.lock``)."""
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    listings = {split: list_imagefolder(source, split) for split in SPLITS}
    _check_target(source, out)
    sizes = {split: [f.stat().st_size for f in listing.files] for split, listing in listings.items()}
    identity = _source_identity(source, listings, sizes, shard_size, on_corrupt)
    if (out / MANIFEST).is_file():
        manifest = read_pack_manifest(out)
        if manifest.get("source_identity") != identity:
            raise DatasetFormatError(f"{out}: holds a finished pack of other files or settings; give another output "
                                     "folder, or delete this one to pack again")
        return manifest
    lock = WriterLock(ensure_folder(out), PACK, quiet)
    lock.acquire()
    try:
        remove_stale_temporaries(out)  # of a killed pack: its workers are gone with it
        return _pack(source, out, listings, sizes, identity, shard_size, on_corrupt, workers, quiet, progress)
    finally:
        lock.release()


def _pack(source: Path, out: Path, listings: dict[str, Any], sizes: dict[str, list[int]], identity: str,
          shard_size: ShardLimit, on_corrupt: str, workers: int, quiet: bool, progress: Callable[..., Any]
          ) -> dict[str, Any]:
    """The shards a stopped pack has not written yet, then the manifest (the lock held)."""
    tasks = []
    for split, listing in listings.items():
        labels = listing.labels.tolist()
        for number, (start, end) in enumerate(plan_shards(sizes[split], shard_size)):
            tasks.append(_ShardTask(str(out), split, number, tuple(str(f) for f in listing.files[start:end]),
                                    tuple(labels[start:end]), tuple(range(start, end)), on_corrupt))
    done = _done_shards(out, identity, tasks)
    entries = dict(done)
    todo = [t for t in tasks if _shard_names(t.split, t.number)[0] not in done]
    total = sum(len(listing) for listing in listings.values())
    bar = progress(total=total, initial=total - sum(len(t.files) for t in todo), desc="pack", unit="img",
                   unit_scale=True, disable=quiet, dynamic_ncols=True)
    with bar:
        for task, entry in _run_tasks(todo, workers):
            entries[entry["file"]] = entry
            write_manifest(out, {"format": FORMAT, "source": identity, "shards": list(entries.values())}, PROGRESS)
            bar.update(len(task.files))
    manifest = write_manifest(out, _manifest(source, listings, tasks, entries, identity, shard_size, on_corrupt))
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def _manifest(source: Path, listings: dict[str, Any], tasks: list[_ShardTask], entries: dict[str, dict[str, Any]],
              identity: str, shard_size: ShardLimit, on_corrupt: str) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    skipped: list[str] = []
    for split in SPLITS:
        shards = [entries[_shard_names(t.split, t.number)[0]] for t in tasks if t.split == split]
        skipped += [file for entry in shards for file in entry["skipped"]]
        left_out = set(skipped)
        listing = listings[split]
        rows = [row for row, f in enumerate(listing.files) if str(f) not in left_out]
        ids = torch.tensor(rows, dtype=torch.int64)
        splits[split] = {"samples": len(rows), "fingerprint": data_fingerprint(ids, listing.labels[ids]),
                         "shards": [{k: v for k, v in entry.items() if k != "skipped"} for entry in shards]}
    return {"format": FORMAT, "source": str(source), "source_identity": identity, "class_names":
            list(listings["train"].class_names), "shard_size": shard_size.describe(), "on_corrupt": on_corrupt,
            "splits": splits, "skipped": skipped}
