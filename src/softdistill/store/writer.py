"""Labelling: a soft-label source x a view plan x the samples of a split -> shards + manifest.

Shard i holds the samples at store rows ``[i S, (i + 1) S)`` (S = ``shard_samples``), all their
views, as an S x V array of records ordered by (sample, view).  A shard is labelled in batches of
``batch_size`` rows of one view, starting at its first row, so its bytes depend neither on which
process labels it nor on which shards were labelled before (a resumed or a distributed run writes
the same bytes as one uninterrupted process).

Under torchrun, rank r labels the shards i with ``i mod world_size = r``; rank 0 holds the lock,
writes ``samples.npy`` and the manifest.  An interrupted run continues where it stopped: every
shard already there and matching its hash is kept, every other one labelled again.  A complete
store is checked first (:func:`~softdistill.store.format.check_store`: sizes and headers, and with
``verify`` every file's sha256): a damaged or missing shard is removed and labelled again.
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

from softdistill.atomic import FileWriteError, ensure_folder, remove_stale_temporaries, write_text_atomic
from softdistill.runtime.distributed import DistContext, all_reduce_sum, barrier
from softdistill.runtime.progress import progress_bar
from softdistill.schema import config_differences
from softdistill.sharded import MANIFEST, WriterLock, load_npy, read_manifest, write_manifest, write_npy_atomic
from softdistill.store.encoding import Encoding
from softdistill.store.format import (FORMAT, SAMPLES, STORE, StoreError, check_store, data_fingerprint, human_bytes,
                                      samples_array, sha256_of, shard_files, write_shard)

__all__ = ["write_store", "human_bytes", "IDENTITY_KEYS"]

# what makes two stores the same store (a folder holding another one is refused)
IDENTITY_KEYS = ("data", "teacher", "views", "encoding", "shard_samples", "record_bytes")
RUN_FILES = ("last.pt", "best.pt", "summary.json")


def _valid_shard(folder: Path, index: int, shape: tuple[int, int], dtype: np.dtype) -> tuple[Path, str] | None:
    """The file of shard ``index`` whose bytes match the hash in its name and whose header is
    ``shape`` / ``dtype``, with its sha256; any other file of that shard (a symbolic link among
    them) is removed (it is labelled again)."""
    found = None
    for path in shard_files(folder, index):
        digest = sha256_of(path) if found is None and not path.is_symlink() else ""
        ok = digest.startswith(path.stem.rsplit("-", 1)[1]) and bool(digest)
        if ok:
            try:
                array = load_npy(path, StoreError, mmap=True)
                ok = array.shape == shape and array.dtype == dtype
            except StoreError:
                ok = False
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


def _prepare(folder: Path, header: dict[str, Any], ids: Tensor, labels: Tensor, lock: WriterLock, verify: bool,
             quiet: bool) -> bool:
    """Check what ``folder`` holds, take the lock, write samples.npy and the incomplete manifest; True
    when the same store is already complete and sound (a damaged one is made incomplete)."""
    ensure_folder(folder)
    held = [name for name in RUN_FILES if (folder / name).exists()]
    if held and not (folder / MANIFEST).exists():
        raise StoreError(f"{folder} holds a training run ({', '.join(held)}), not a store: choose another "
                         "output folder or name for the label recipe")
    lock.acquire()
    if (folder / MANIFEST).exists():
        existing = read_manifest(folder, STORE)
        diffs = config_differences({k: existing.get(k) for k in IDENTITY_KEYS}, {k: header[k] for k in IDENTITY_KEYS})
        if diffs:
            raise StoreError(f"{folder} holds another store (labelled with other settings):\n  " + "\n  ".join(diffs)
                             + "\nChoose another output folder, or delete that one to label it again.")
        if existing.get("complete"):
            problems = check_store(folder, existing, deep=verify).problems
            if not problems:
                return True
            # labelled again below: every shard file whose bytes do not match the hash in its name is removed
            (folder / "summary.json").unlink(missing_ok=True)
            if not quiet:
                print(f"[softdistill] {folder}: the complete store is damaged ({'; '.join(problems)}): its damaged "
                      "shards are labelled again")
    remove_stale_temporaries(folder)  # left by a killed writer: never part of the store
    write_npy_atomic(folder / SAMPLES, samples_array(ids, labels))
    write_manifest(folder, {**header, "complete": False, "shards": []})
    return False


def write_store(folder: str | Path, header: dict[str, Any], ids: Tensor, labels: Tensor,
                label: Callable[[Tensor, Tensor], Tensor], *, encoding: Encoding, views: int, shard_samples: int,
                batch_size: int, ctx: DistContext = DistContext(), quiet: bool = False, verify: bool = False
                ) -> dict[str, Any] | None:
    """Label every (sample, view) of ``ids`` (store rows ``0..N-1``) into ``folder``.

    ``header`` holds the manifest's identity sections (data, teacher, views, encoding); ``label(rows,
    views)`` returns float logits (B x K) of the views ``views`` of the samples at ``rows``.  A
    complete store is checked (``verify``: every file hashed) and its damaged shards labelled again.
    Returns the summary (also ``summary.json``) on rank 0, None elsewhere or when the store was
    already complete and sound.
    """
    folder = Path(folder)
    n = len(ids)
    header = {**header, "data": {**header["data"], "samples": n, "fingerprint": data_fingerprint(ids, labels)},
              "format": FORMAT, "encoding": encoding.to_dict(), "shard_samples": shard_samples,
              "record_bytes": encoding.record_bytes, "samples": n, "views_per_sample": views}
    lock = WriterLock(folder, STORE, quiet)
    complete, error = False, None
    if ctx.is_main:
        try:
            complete = _prepare(folder, header, ids, labels, lock, verify, quiet)
        except (StoreError, OSError) as exc:
            error = exc
    try:
        _agree(error, ctx, "opening the store")
        complete = bool(all_reduce_sum(torch.tensor(float(complete), device=ctx.device), ctx).item())
        if complete:
            if ctx.is_main and not quiet:
                checked = "every file matches its sha256" if verify else "every file has its size and header"
                print(f"[softdistill] {folder}: the store is complete; nothing to label ({checked})")
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
                if not exc.disk_full:
                    raise
                raise StoreError(f"the disk is full while writing shard {i} of {folder} ({exc.__cause__}): the shards "
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
