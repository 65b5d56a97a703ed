"""Shards: an image folder packed into a few large files, each sample readable on its own.

``softdistill data pack SRC OUT`` (:func:`pack_imagefolder`) writes, from ``SRC/train/<class>/*`` and
``SRC/val/<class>/*`` (or ``test/``)::

    OUT/manifest.json          format, class names, and per split: samples, fingerprint, shard table
                               (file, index file, samples, bytes and sha256 of each)
    OUT/train-00000.tar        a POSIX tar in the WebDataset layout: for every sample ``ID.EXT`` (the
                               source file's bytes, unchanged) and ``ID.cls`` (its label), ID = the
                               sample id on nine digits
    OUT/train-00000.idx.npy    (id, label, offset, size) of every sample of the shard: where its image's
                               bytes sit in the tar, so that one sample is one read
    OUT/test-00000.tar ...
    OUT/pack-progress.json     only while packing: the shards done, so that a stopped pack continues

A sample's id is its row in the folder's official split (its position in the sorted listing, as
the image folder source numbers it) and its image is the file's own bytes, so a split read from
shards (``data.name: shards``, :func:`shard_split`) has the ids, labels and fingerprint of the
folder and decodes to the same pixels: a soft-label store labelled on one serves the other.
Every file is written atomically; a shard counts only once the manifest (or, while packing, the
progress file) lists it, with its size and sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from softdistill.atomic import ensure_folder, write_atomic, write_text_atomic
from softdistill.enums import ON_CORRUPT, OnCorrupt
from softdistill.data.readers import Split, list_imagefolder, register_dataset
from softdistill.data.samples import DatasetFormatError, DatasetNotFoundError, StreamSet, checked_ids, open_rgb
from softdistill.hashing import data_fingerprint, sha256_of

__all__ = ["FORMAT", "MANIFEST", "PROGRESS", "PackError", "ShardSet", "ShardLimit", "parse_shard_size", "plan_shards",
           "pack_imagefolder", "read_pack_manifest", "shard_split", "verify_pack", "ON_CORRUPT"]

FORMAT = "softdistill-shards-v1"
MANIFEST = "manifest.json"
PROGRESS = "pack-progress.json"
SPLITS = ("train", "test")
INDEX_DTYPE = np.dtype([("id", "<i8"), ("label", "<i8"), ("offset", "<i8"), ("size", "<i8")])
_SIZE = re.compile(r"(\d+)\s*([kmg]i?b)?", re.IGNORECASE)
_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


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


def read_pack_manifest(root: str | os.PathLike | None) -> dict[str, Any]:
    """The manifest of the pack folder ``root``; a :class:`DatasetNotFoundError` or :class:`DatasetFormatError`
    saying what is wrong (no folder, an unfinished pack, another format)."""
    if root is None:
        raise ValueError("data.name: shards needs data.root: a folder written by 'softdistill data pack'")
    folder = Path(root).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        unfinished = " (a pack was started there but not finished: run the same pack command again)" \
            if (folder / PROGRESS).is_file() else ""
        raise DatasetNotFoundError(f"{folder}: no shards, {MANIFEST} is missing{unfinished}; a shard folder is "
                                   "written by 'softdistill data pack SRC_FOLDER OUT'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not a readable shard manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DatasetFormatError(f"{path}: format {found!r}, expected {FORMAT!r} (written by 'softdistill data pack')")
    return manifest


def _checked_file(folder: Path, entry: dict[str, Any], key: str) -> Path:
    """``folder / entry[key]``, which must exist with the size the manifest lists."""
    path = folder / entry[key]
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing shard file listed in {folder / MANIFEST}; copy it back or "
                                 "pack the folder again")
    size, listed = path.stat().st_size, entry["bytes" if key == "file" else "index_bytes"]
    if size != listed:
        raise DatasetFormatError(f"{path}: {size} bytes, but {folder / MANIFEST} lists {listed} (truncated or "
                                 "altered); copy it again or pack the folder again")
    return path


def _shard_index(folder: Path, entry: dict[str, Any]) -> np.ndarray:
    """The index of one shard, checked against the manifest and the shard's size."""
    tar = _checked_file(folder, entry, "file")
    path = _checked_file(folder, entry, "index")
    try:
        index = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(f"{path}: not a readable shard index ({exc})") from exc
    if index.dtype != INDEX_DTYPE or index.shape != (entry["samples"],):
        raise DatasetFormatError(f"{path}: expected {entry['samples']} records of {INDEX_DTYPE}, found "
                                 f"{index.shape} of {index.dtype}")
    if len(index) and int((index["offset"] + index["size"]).max()) > entry["bytes"]:
        raise DatasetFormatError(f"{path}: points past the end of {tar}")
    return index


@register_dataset("shards", files=True)
def shard_split(split: str, data: Any) -> Split:
    """One split (``train`` or ``test``) of the pack folder ``data.root``, decoded at ``data.image_size``.

    Every shard must be there with its listed size (a missing or truncated one is an error naming
    it), and the ids and labels must have the fingerprint the manifest recorded."""
    manifest = read_pack_manifest(data.root)
    folder = Path(data.root).expanduser()
    part = manifest["splits"][split]
    indexes = [_shard_index(folder, entry) for entry in part["shards"]]
    index = np.concatenate(indexes) if indexes else np.zeros(0, INDEX_DTYPE)
    shard = np.repeat(np.arange(len(indexes), dtype=np.int32), [len(i) for i in indexes])
    ids, labels = torch.from_numpy(index["id"].copy()), torch.from_numpy(index["label"].copy())
    if data_fingerprint(ids, labels) != part["fingerprint"]:
        raise DatasetFormatError(f"{folder}: the {split} shards' ids and labels do not match the fingerprint in "
                                 f"{MANIFEST} (an index was replaced); pack the folder again")
    shards = tuple(folder / entry["file"] for entry in part["shards"])
    return Split(ShardSet(shards, shard, index["offset"].copy(), index["size"].copy(), labels, data.image_size, ids),
                 tuple(manifest["class_names"]))


def verify_pack(root: str | os.PathLike) -> list[str]:
    """Every file of the pack folder ``root`` hashed and compared with its manifest: the damaged ones."""
    manifest = read_pack_manifest(root)
    folder = Path(root).expanduser()
    problems = []
    for part in manifest["splits"].values():
        for entry in part["shards"]:
            for name, digest in ((entry["file"], entry["sha256"]), (entry["index"], entry["index_sha256"])):
                path = folder / name
                if not path.is_file():
                    problems.append(f"{path}: missing")
                elif sha256_of(path) != digest:
                    problems.append(f"{path}: sha256 differs from the manifest's (damaged or altered)")
    return problems


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


def _shard_names(split: str, number: int) -> tuple[str, str]:
    return f"{split}-{number:05d}.tar", f"{split}-{number:05d}.idx.npy"


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
    index_path = write_atomic(out / index_name, lambda handle: np.lib.format.write_array(
        handle, np.array(records, dtype=INDEX_DTYPE), allow_pickle=False))
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


def _done_shards(out: Path, identity: str) -> dict[str, dict[str, Any]]:
    """The shards a stopped pack of the same source wrote (by file name), each still there whole."""
    path = out / PROGRESS
    if not path.is_file():
        return {}
    try:
        progress = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if progress.get("source") != identity:
        raise DatasetFormatError(f"{out}: holds an unfinished pack of other files or settings ({path}); give "
                                 "another output folder, or delete this one to start again")
    return {entry["file"]: entry for entry in progress["shards"]
            if all((out / entry[key]).is_file() and (out / entry[key]).stat().st_size == entry[size]
                   for key, size in (("file", "bytes"), ("index", "index_bytes")))}


def _run_tasks(tasks: list[_ShardTask], workers: int) -> Iterator[tuple[_ShardTask, dict[str, Any]]]:
    """Each task with its shard's entry, in task order (a shard finished ahead of an earlier one waits for
    it); in ``workers`` processes (0: here).  A worker's error stops the pack with that error; a worker
    that dies stops it with a message, never a hang."""
    if workers == 0:
        for task in tasks:
            yield task, _write_shard(task)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
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


def pack_imagefolder(source: str | os.PathLike, out: str | os.PathLike, shard_size: ShardLimit,
                     on_corrupt: OnCorrupt = "fail", workers: int = 0, quiet: bool = False,
                     progress: Callable[..., Any] = tqdm) -> dict[str, Any]:
    """Pack the image folder ``source`` into shards in ``out`` (see the module docstring); returns the manifest.

    ``on_corrupt``: ``fail`` stops at the first image Pillow cannot decode, naming it; ``skip`` leaves
    such files out and lists them in the manifest (``skipped``).  A pack that stopped continues with
    the shards it finished; one finished already is left as it is."""
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    listings = {split: list_imagefolder(source, split) for split in SPLITS}
    sizes = {split: [f.stat().st_size for f in listing.files] for split, listing in listings.items()}
    identity = _source_identity(source, listings, sizes, shard_size, on_corrupt)
    if (out / MANIFEST).is_file():
        manifest = read_pack_manifest(out)
        if manifest.get("source_identity") != identity:
            raise DatasetFormatError(f"{out}: holds a finished pack of other files or settings; give another output "
                                     "folder, or delete this one to pack again")
        return manifest
    ensure_folder(out)
    done = _done_shards(out, identity)
    tasks = []
    for split, listing in listings.items():
        labels = listing.labels.tolist()
        for number, (start, end) in enumerate(plan_shards(sizes[split], shard_size)):
            tasks.append(_ShardTask(str(out), split, number, tuple(str(f) for f in listing.files[start:end]),
                                    tuple(labels[start:end]), tuple(range(start, end)), on_corrupt))
    entries = dict(done)
    todo = [t for t in tasks if _shard_names(t.split, t.number)[0] not in done]
    total = sum(len(listing) for listing in listings.values())
    bar = progress(total=total, initial=total - sum(len(t.files) for t in todo), desc="pack", unit="img",
                   unit_scale=True, disable=quiet, dynamic_ncols=True)
    with bar:
        for task, entry in _run_tasks(todo, workers):
            entries[entry["file"]] = entry
            write_text_atomic(out / PROGRESS, json.dumps({"source": identity, "shards": list(entries.values())}))
            bar.update(len(task.files))
    manifest = _manifest(source, listings, tasks, entries, identity, shard_size, on_corrupt)
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
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
