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
from softdistill.data.samples import checked_ids
from softdistill.data.views import ViewPlan
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
#: the sections of a header that the caller of write_store gives
SECTIONS = ("data", "teacher", "views")
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


def _checked_header(header: Any, views: int, encoding: Encoding, shard_samples: int, batch_size: int) -> dict[str, Any]:
    """``header`` with its view plan's fingerprint, once every rule a complete store's manifest must keep
    holds for it: the sections ``data``, ``teacher`` and ``views`` (a view plan, as
    :meth:`~softdistill.data.views.ViewPlan.recorded` gives it) and ``views`` the plan's distinct views;
    a StoreError naming every problem otherwise, before anything is written."""
    if not isinstance(header, dict):
        raise StoreError(f"a store's header is a dict of the sections data, teacher and views, got {type(header).__name__}")
    problems = [f"header[{key!r}] must be a dict, got {type(header.get(key)).__name__}"
                for key in SECTIONS if not isinstance(header.get(key), dict)]
    if problems:
        raise StoreError("the store's header cannot be written: " + "; ".join(problems) + " (softdistill.label_store "
                         "builds the header itself)")
    recorded = dict(header["views"])
    fingerprint = recorded.pop("fingerprint", None)
    if unknown := sorted(set(recorded) - set(ViewPlan.model_fields)):
        raise StoreError(f"header['views'] has keys that are not view-plan settings: {unknown} (it is a ViewPlan's "
                         "recorded(): ViewPlan(...).recorded())")
    try:
        plan = ViewPlan.model_validate(recorded)
    except ValueError as exc:
        raise StoreError(f"header['views'] is not a view plan: {exc}") from None
    if fingerprint is not None and fingerprint != plan.fingerprint():
        problems.append(f"header['views'] says fingerprint {fingerprint!r}, the plan it records has {plan.fingerprint()!r}")
    if plan.distinct_views is None:
        problems.append("the header's view plan draws a fresh view every epoch (views: 0): a store needs a fixed "
                        "number of views")
    elif views != plan.distinct_views:
        problems.append(f"views={views} was given, the header's view plan has {plan.distinct_views} distinct view(s) "
                        "per sample")
    if shard_samples < 1 or batch_size < 1:
        problems.append(f"shard_samples and batch_size must be at least 1, got {shard_samples} and {batch_size}")
    if not isinstance(encoding, Encoding):
        problems.append(f"encoding must be an Encoding, got {type(encoding).__name__}")
    checked = {**header, "views": {**header["views"], "fingerprint": plan.fingerprint()}}
    try:
        json.dumps(checked)
    except (TypeError, ValueError) as exc:
        problems.append(f"the header must hold what JSON holds ({exc})")
    if problems:
        raise StoreError("the store's header cannot be written: " + "; ".join(problems))
    return checked


def write_store(folder: str | Path, header: dict[str, Any], ids: Tensor, labels: Tensor,
                label: Callable[[Tensor, Tensor], Tensor], *, encoding: Encoding, views: int, shard_samples: int,
                batch_size: int, ctx: DistContext = DistContext(), quiet: bool = False, verify: bool = False
                ) -> dict[str, Any] | None:
    """Label every (sample, view) of the samples ``ids`` into ``folder``: the writer under
    :func:`~softdistill.store.labelling.label_store` (which builds the header and the labelling
    function itself).  Resumable; a complete store is checked and its damaged shards labelled again.

    Args:
        folder: the store's folder (made when missing).
        header: the manifest's identity sections: ``data`` (a dict; the sample count and fingerprint are
            added), ``teacher`` (a dict: who labels) and ``views`` (the plan, as ``ViewPlan.recorded()``);
            checked before anything is written.
        ids, labels: the sample ids and labels (int64), in store order: store row r is sample ``ids[r]``.
        label: ``label(rows, views)`` returns the float logits (B x K) of the views ``views`` of the samples
            at store rows ``rows`` (so their ids are ``ids[rows]``); a wrong shape or a non-finite logit is a
            StoreError naming the samples.
        encoding: how each soft label is stored (K = ``encoding.num_classes``).
        views: views per sample, the header's plan's distinct views.
        shard_samples: samples per shard file.
        batch_size: rows per call of ``label``.
        ctx: the process group (rank r labels the shards i with i mod world_size = r).
        quiet: no progress bar or messages.
        verify: hash every file of a store that is already complete (else sizes and headers).

    Returns:
        The summary (also ``summary.json``) on rank 0; None elsewhere, or when the store was already
        complete and sound.

    Example:
        >>> import tempfile
        >>> from softdistill.data.views import ViewPlan
        >>> ids, labels = torch.tensor([5, 9, 2]), torch.tensor([0, 1, 1])
        >>> header = {"data": {}, "teacher": {"function": "fixed"}, "views": ViewPlan().recorded()}
        >>> summary = write_store(tempfile.mkdtemp(), header, ids, labels, lambda rows, views: torch.ones(len(rows), 2),
        ...                       encoding=Encoding("full", 2), views=1, shard_samples=2, batch_size=2, quiet=True)
        >>> summary["records"], summary["shards"]
        (3, 2)
    """
    folder = Path(folder)
    header = _checked_header(header, views, encoding, shard_samples, batch_size)
    ids = checked_ids(len(ids), labels, ids)
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
        return _label_shards(folder, header, _checked_labels(label, ids, encoding.num_classes), encoding, views,
                             shard_samples, batch_size, ctx, quiet)
    finally:
        lock.release()


def _checked_labels(label: Callable[[Tensor, Tensor], Tensor], ids: Tensor, num_classes: int
                    ) -> Callable[[Tensor, Tensor], Tensor]:
    """``label`` whose every result is checked: float logits of shape B x ``num_classes``, all finite; a
    StoreError naming the samples (by id) otherwise."""

    def checked(rows: Tensor, views: Tensor) -> Tensor:
        logits = label(rows, views)
        what = f"the labelling function's logits of sample ids {ids[rows][:5].tolist()}" + ("..." if len(rows) > 5 else "")
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (len(rows), num_classes):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise StoreError(f"{what} have shape {shape}, the store needs {len(rows)} x {num_classes} (one row of "
                             f"{num_classes} class logits per sample)")
        logits = logits.float().cpu()
        finite = torch.isfinite(logits).all(dim=1)
        if not bool(finite.all()):
            bad = ids[rows][~finite]
            raise StoreError(f"the labelling function gave non-finite logits (NaN or infinite) for {len(bad)} of "
                             f"{len(rows)} samples, sample ids {bad[:10].tolist()}" + ("..." if len(bad) > 10 else "")
                             + f" (view {int(views[0])}); nothing of that shard was written")
        return logits

    return checked


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
                    logits[chunk - rows_of_shard[0], v] = label(chunk, torch.full_like(chunk, v))
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
