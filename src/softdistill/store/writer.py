"""Labelling: a soft-label source x a view plan x the samples of a split -> shards + manifest.

Shard i holds the samples at store rows ``[i S, (i + 1) S)`` (S = ``shard_samples``), all their
views, as an S x V array of records ordered by (sample, view).  A shard is labelled in batches of
``batch_size`` rows of one view, starting at its first row, so its bytes depend neither on which
process labels it nor on which shards were labelled before (a resumed or a distributed run writes
the same bytes as one uninterrupted process).

Under torchrun, rank r labels the shards i with ``i mod world_size = r``; rank 0 holds the lock,
writes ``samples.npy`` and the manifest.  An interrupted run continues where it stopped: every
shard already there and matching its hash is kept, every other one labelled again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from softdistill.atomic import FileWriteError, remove_stale_temporaries, write_text_atomic
from softdistill.runtime.distributed import DistContext, all_reduce_sum, barrier
from softdistill.runtime.progress import progress_bar
from softdistill.runs import config_differences
from softdistill.store.encoding import Encoding
from softdistill.store.format import (DISK_FULL, FORMAT, MANIFEST, SAMPLES, StoreError, WriterLock, data_fingerprint,
                                      read_manifest, samples_array, sha256_of, shard_files, write_array_atomic,
                                      write_manifest, write_shard)

__all__ = ["write_store", "human_bytes", "IDENTITY_KEYS"]

# what makes two stores the same store (a folder holding another one is refused)
IDENTITY_KEYS = ("data", "teacher", "views", "encoding", "shard_samples", "record_bytes")
RUN_FILES = ("last.pt", "best.pt", "summary.json")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _valid_shard(folder: Path, index: int, shape: tuple[int, int], dtype: np.dtype) -> tuple[Path, str] | None:
    """The file of shard ``index`` whose bytes match the hash in its name and whose header is
    ``shape`` / ``dtype``, with its sha256; any other file of that shard is removed (it is
    labelled again)."""
    found = None
    for path in shard_files(folder, index):
        digest = sha256_of(path) if found is None else ""
        ok = digest.startswith(path.stem.rsplit("-", 1)[1]) and bool(digest)
        if ok:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            ok = array.shape == shape and array.dtype == dtype
        if ok:
            found = (path, digest)
        else:
            path.unlink()
    return found


def _agree(error: BaseException | None, ctx: DistContext, what: str) -> None:
    """Raise on every rank when one rank failed (its own error there, a pointer to it elsewhere)."""
    failed = all_reduce_sum(torch.tensor(float(error is not None), device=ctx.device), ctx)
    if error is not None:
        raise error
    if failed.item():
        raise StoreError(f"labelling stopped: another rank failed while {what} (see its message); finished shards "
                         "are kept, run the same command again to continue")


def _prepare(folder: Path, header: dict[str, Any], ids: Tensor, labels: Tensor, lock: WriterLock) -> bool:
    """Check what ``folder`` holds, take the lock, write samples.npy and the incomplete manifest;
    True when the same store is already complete."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).is_file():
        existing = read_manifest(folder)
        diffs = config_differences({k: existing.get(k) for k in IDENTITY_KEYS}, {k: header[k] for k in IDENTITY_KEYS})
        if diffs:
            raise StoreError(f"{folder} holds another store (labelled with other settings):\n  " + "\n  ".join(diffs)
                             + "\nChoose another output folder, or delete that one to label it again.")
        if existing.get("complete"):
            if all((folder / entry["name"]).is_file() for entry in existing["shards"]):
                return True
            (folder / "summary.json").unlink(missing_ok=True)  # shards were deleted: label them again
    else:
        held = [name for name in RUN_FILES if (folder / name).exists()]
        if held:
            raise StoreError(f"{folder} holds a training run ({', '.join(held)}), not a store: choose another "
                             "output folder or name for the label recipe")
    lock.acquire()
    remove_stale_temporaries(folder)  # left by a killed writer: never part of the store
    write_array_atomic(folder / SAMPLES, samples_array(ids, labels))
    write_manifest(folder, {**header, "complete": False, "shards": []})
    return False


def write_store(folder: str | Path, header: dict[str, Any], ids: Tensor, labels: Tensor,
                label: Callable[[Tensor, Tensor], Tensor], *, encoding: Encoding, views: int, shard_samples: int,
                batch_size: int, ctx: DistContext = DistContext(), quiet: bool = False) -> dict[str, Any] | None:
    """Label every (sample, view) of ``ids`` (store rows ``0..N-1``) into ``folder``.

    ``header`` holds the manifest's identity sections (data, teacher, views, encoding); ``label(rows,
    views)`` returns float logits (B x K) of the views ``views`` of the samples at ``rows``.
    Returns the summary (also ``summary.json``) on rank 0, None elsewhere or when the store was
    already complete.
    """
    folder = Path(folder)
    n = len(ids)
    header = {**header, "data": {**header["data"], "samples": n, "fingerprint": data_fingerprint(ids, labels)},
              "format": FORMAT, "encoding": encoding.to_dict(), "shard_samples": shard_samples,
              "record_bytes": encoding.record_bytes, "samples": n, "views_per_sample": views}
    lock = WriterLock(folder, quiet)
    complete, error = False, None
    if ctx.is_main:
        try:
            complete = _prepare(folder, header, ids, labels, lock)
        except (StoreError, OSError) as exc:
            error = exc
    try:
        _agree(error, ctx, "opening the store")
        complete = bool(all_reduce_sum(torch.tensor(float(complete), device=ctx.device), ctx).item())
        if complete:
            if ctx.is_main and not quiet:
                print(f"[softdistill] {folder}: the store is complete; nothing to label")
            return None
        return _label_shards(folder, header, label, encoding, views, shard_samples, batch_size, ctx, quiet)
    finally:
        lock.release()


def _label_shards(folder: Path, header: dict[str, Any], label: Callable[[Tensor, Tensor], Tensor],
                  encoding: Encoding, views: int, shard_samples: int, batch_size: int, ctx: DistContext,
                  quiet: bool) -> dict[str, Any] | None:
    n = header["samples"]
    count = -(-n // shard_samples)

    def shape(i: int) -> tuple[int, int]:
        return min(shard_samples, n - i * shard_samples), views

    mine = [i for i in range(count) if i % ctx.world_size == ctx.rank]
    todo = [i for i in mine if _valid_shard(folder, i, shape(i), encoding.record_dtype) is None]
    total = n * views * encoding.record_bytes
    if ctx.is_main and not quiet:
        kept = f"; {len(mine) - len(todo)} of this process's {len(mine)} shards are already there" if len(todo) < len(mine) else ""
        print(f"[softdistill] labelling {folder}: {n} samples x {views} views x {encoding.record_bytes} bytes = "
              f"{human_bytes(total)} in {count} shard(s) of {shard_samples} samples, {ctx.world_size} process(es){kept}")
    start = time.perf_counter()
    labelled = sum(shape(i)[0] for i in todo) * views
    bar = progress_bar(labelled, "label", quiet=quiet or not ctx.is_main, unit="label", unit_scale=True)
    error = None
    try:
        for i in todo:
            rows_of_shard = torch.arange(i * shard_samples, i * shard_samples + shape(i)[0])
            logits = torch.empty(len(rows_of_shard), views, encoding.num_classes)
            for v in range(views):
                for chunk in rows_of_shard.split(batch_size):
                    logits[chunk - rows_of_shard[0], v] = label(chunk, torch.full_like(chunk, v)).float().cpu()
                    bar.update(len(chunk))
            try:
                write_shard(folder, i, encoding.encode(logits))
            except FileWriteError as exc:
                cause = exc.__cause__
                if not isinstance(cause, OSError) or cause.errno not in DISK_FULL:
                    raise
                raise StoreError(f"the disk is full while writing shard {i} of {folder} ({cause.strerror}): the shards "
                                 "written so far are complete and kept (the half-written one was removed); free "
                                 f"{human_bytes(total)} at most and run the same command again to continue") from None
    except (StoreError, OSError) as exc:
        error = exc
    finally:
        bar.close()
    _agree(error, ctx, "labelling")
    seconds = time.perf_counter() - start
    barrier(ctx)
    if not ctx.is_main:
        return None
    shards = []
    for i in range(count):
        found = _valid_shard(folder, i, shape(i), encoding.record_dtype)
        if found is None:
            raise StoreError(f"{folder}: shard {i} is missing or damaged after labelling; run the same command again")
        path, digest = found
        shards.append({"index": i, "name": path.name, "first": i * shard_samples, "samples": shape(i)[0],
                       "bytes": path.stat().st_size, "sha256": digest})
    samples = folder / SAMPLES
    manifest = {**header, "complete": True, "shards": shards,
                "samples_file": {"name": SAMPLES, "bytes": samples.stat().st_size, "sha256": sha256_of(samples)},
                "bytes": sum(s["bytes"] for s in shards) + samples.stat().st_size}
    write_manifest(folder, manifest)
    summary = {"store": str(folder), "samples": n, "views": views, "records": n * views,
               "record_bytes": encoding.record_bytes, "bytes": manifest["bytes"], "shards": count,
               "labelled_records": labelled, "seconds": seconds,
               "labels_per_second": labelled / seconds if seconds > 0 else None, "finished": True}
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2))
    if not quiet:
        print(f"[softdistill] {folder}: {n * views} soft labels, {human_bytes(manifest['bytes'])}; "
              f"{labelled} labelled in {seconds:.1f}s")
    return summary
