"""The life cycle of the data worker processes: started for a pass, stopped however it ends, and a
worker that dies turned into an error that says so, never a hang.

:func:`in_workers` runs a map-style dataset's items in ``torch.utils.data.DataLoader`` worker processes
(or here, with no worker).  An error a worker meets is returned as its item and raised in the training
process with its own message (PyTorch would wrap a raised one in a 40-line traceback); a worker that
dies (killed, crashed) ends the pass with a :class:`DataWorkerError` naming what was under way and how
the worker ended.  While workers run, SIGCHLD is at its default action: PyTorch's handler raises in the
main thread at whatever line it is on when a worker dies, and once left a queue's lock taken, so that
the workers' clean-up waited forever.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["in_workers", "DataWorkerError", "DEATH_WAIT"]

T = TypeVar("T")


def in_workers(dataset: Dataset, keys: Sequence[Any], workers: int, *, pin: bool, what: str) -> Iterator[Any]:
    """``dataset[key]`` for each of ``keys``, in order, computed by ``workers`` processes (0: here); ``pin``
    pins the items' memory for a CUDA device.  An item that is an Exception is raised here; a worker that
    dies ends the pass with a :class:`DataWorkerError` naming ``what`` was under way.  The workers are shut
    down when the iteration ends, however it ends, with SIGCHLD left at its default meanwhile.  The
    DataLoader draws its workers' seeds from a generator of its own, never from torch's global RNG, which
    belongs to the model (a mid-epoch resume restores it)."""
    loader = DataLoader(dataset, batch_size=None, sampler=keys, num_workers=workers, collate_fn=_as_is,
                        pin_memory=pin, generator=torch.Generator())
    if workers == 0:
        yield from _raised(loader)
        return
    iterator = None
    died = None
    with _synchronous_worker_deaths():
        try:
            try:
                iterator = iter(loader)  # starts the workers
                _keep_default_sigchld()  # PyTorch installs its handler at a process's first one
                yield from _raised(iterator)
            except Exception as exc:
                died = _death_of(iterator, workers, what, exc)
                if died is None:
                    raise
        finally:
            _shut_down(iterator)
    if died is not None:  # raised here, outside the handler, it holds no frame of the iterator or its queues
        raise died


def _as_is(item: T) -> T:
    return item


def _raised(items: Iterable[Any]) -> Iterator[Any]:
    """The items of ``items``; an error a worker returned as its item is raised here, with its own message."""
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


class DataWorkerError(RuntimeError):
    """A worker process stopped (killed, crashed) while the pass needed it."""


#: how long a failed pass waits for a worker whose pipe broke to be seen dead, in seconds
DEATH_WAIT = 5.0


def _death_of(iterator: Any, workers: int, what: str, exc: Exception) -> DataWorkerError | None:
    """A :class:`DataWorkerError` when ``exc`` came of a worker of ``iterator`` that died, else ``None`` (an
    error the worker raised, such as a corrupt file, is its own).  A worker killed while it hands a batch
    over breaks the pipe (EOFError, ConnectionResetError) a moment before it can be seen dead: wait for it."""
    if "in DataLoader worker process" in str(exc):  # PyTorch re-raising what a worker raised
        return None
    processes = getattr(iterator, "_workers", ())  # PyTorch's worker processes (multiprocessing.Process)
    deadline = time.monotonic() + (DEATH_WAIT if isinstance(exc, (EOFError, OSError)) else 0.0)
    while True:
        dead = [p for p in processes if p.exitcode is not None]
        if dead or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not dead and not str(exc).startswith("DataLoader worker"):
        return None
    ended = "; ".join(f"process {p.pid} {_ending(p.exitcode)}" for p in dead) or str(exc)
    return DataWorkerError(
        f"{what}: a data worker stopped ({ended}) and the pass cannot go on (data.workers: {workers}). A worker "
        "killed by SIGKILL was most often stopped by the out-of-memory killer (fewer data.workers or a smaller "
        "data.batch_size need less memory); one that crashed may have met a bad file in an image library "
        "(data.workers: 0 decodes in the training process and shows the error where it happens). A run "
        "continues from its last checkpoint with --resume.")


def _ending(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _shut_down(iterator: Any) -> None:
    """Stop the workers of ``iterator`` now (PyTorch joins them, or kills them after a timeout), not whenever
    the iterator is garbage-collected; a no-op for an iterator that has already done so."""
    shut_down = getattr(iterator, "_shutdown_workers", None)
    if shut_down is not None:
        shut_down()


_quiet_depth = 0
_saved_handler: Any = None


def _keep_default_sigchld() -> None:
    """Within :func:`_synchronous_worker_deaths`: SIGCHLD back at its default if PyTorch has just installed its
    handler (it does so once a process, when its first worker starts), to be restored with the outermost."""
    global _saved_handler
    if _quiet_depth and signal.getsignal(signal.SIGCHLD) is not signal.SIG_DFL:
        _saved_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@contextmanager
def _synchronous_worker_deaths() -> Iterator[None]:
    """SIGCHLD at its default action while stream workers run (restored after the outermost).

    PyTorch's SIGCHLD handler raises "DataLoader worker ... is killed by signal" in the main thread at
    whatever line it is on when a worker dies: in a training step, or inside ``Queue.put`` between taking
    the queue's lock and the ``with`` block that would release it, so that the workers' clean-up later waits
    for that lock forever (seen: one try in five).  Without the handler PyTorch still finds a dead worker,
    where it waits for a batch (within its 5-second status check, or at once from a broken pipe), and the
    error comes from one place.  Only the main thread can set a handler: elsewhere this does nothing."""
    global _quiet_depth, _saved_handler
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        yield
        return
    if _quiet_depth == 0:
        # PyTorch installs its handler once a process, as its first worker starts: now, so that it cannot
        # replace the default then (if this PyTorch has no such function, _keep_default_sigchld does it after)
        getattr(torch.utils.data._utils.signal_handling, "_set_SIGCHLD_handler", lambda: None)()
        _saved_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _quiet_depth += 1
    try:
        yield
    finally:
        _quiet_depth -= 1
        if _quiet_depth == 0:
            signal.signal(signal.SIGCHLD, _saved_handler)


