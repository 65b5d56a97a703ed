"""Process-group set-up for torchrun/DDP (or a launch by hand: RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set for each process), and the few collectives the trainer needs.

Every wait for the other processes is bounded by :func:`dist_timeout`: the rendezvous (a process
other than rank 0 first waits, in Python, for rank 0's address to answer, so that it never sits
in PyTorch's connection retries, which take twice the timeout) and every collective.  A failure
is one paragraph (:func:`lost_rank_errors`); what PyTorch's C++ side writes to stderr while the
process group forms (connection retries with stack frames) is held back, and shown, without the
stack frames, only when the group forms.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistContext", "DistributedError", "init_distributed", "process_group_context", "resolve_device",
           "dist_timeout", "lost_rank_errors", "joined_others", "all_reduce_sum", "all_reduce_min", "barrier",
           "global_batch_weight", "shutdown_distributed", "TIMEOUT_ENV", "DEFAULT_DIST_TIMEOUT"]

#: Environment variable: seconds a process waits for the others (rendezvous and collectives).
TIMEOUT_ENV = "SOFTDISTILL_DIST_TIMEOUT"
DEFAULT_DIST_TIMEOUT = 180
_joined = False  # whether this process has joined a process group
# the lines of a C++ stack trace that PyTorch appends to its logged errors
_CPP_FRAME = re.compile(r"(frame #\d+: |Exception raised from |<omitting python frames>)")


class DistributedError(RuntimeError):
    """The process group could not form, or a collective failed: another process died or hangs."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's CUDA device when there is one, else the CPU; ``cpu``, ``cuda`` (the
    process's device) and ``cuda:N`` as named.  :class:`ValueError` for any other string or a CUDA
    device this machine does not have."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", preference):
        raise ValueError(f"unknown device {preference!r}: use auto, cpu, cuda or cuda:N (e.g. -o train.device=cpu)")
    device = torch.device(preference)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} was requested but CUDA is not available on this machine "
                         f"(torch {torch.__version__}); use device cpu or auto")
    if device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s), cuda:0 and up")
    return device


def dist_timeout() -> timedelta:
    """How long a process waits for the others, at the rendezvous and in every collective:
    ``$SOFTDISTILL_DIST_TIMEOUT`` seconds, default :data:`DEFAULT_DIST_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_DIST_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return timedelta(seconds=seconds)


def init_distributed(preference: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else run alone.

    Backend: NCCL for CUDA devices, gloo for the CPU.  A process waits at most :func:`dist_timeout`
    for the others, so that a rank that died or hangs ends the rest instead of blocking them.
    """
    global _joined
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = dist_timeout()
        with lost_rank_errors(), _cpp_messages_held():
            if int(os.environ.get("RANK", "0")) != 0:
                _wait_for_rank_zero(timeout)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _joined = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def process_group_context(device: torch.device | str = "cpu") -> DistContext:
    """This process's place in torch.distributed's process group when one is initialised (by
    :func:`init_distributed`, torchrun, Lightning or your own code), else a single process; on ``device``."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=torch.device(device))
    return DistContext(device=torch.device(device))


def joined_others() -> bool:
    """Whether this process has joined a process group (its errors from then on may be its own, where
    those before are the same in every process: the same command on the same files)."""
    return _joined


def _wait_for_rank_zero(timeout: timedelta) -> None:
    """Wait until rank 0's rendezvous address (MASTER_ADDR:MASTER_PORT) accepts a connection, at most
    ``timeout``; a :class:`DistributedError` when it never does."""
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if address is None or port is None or not port.isdigit():
        return  # PyTorch reports the missing variables
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((address, int(port)), timeout=max(min(left, 5.0), 0.1)):
                return
        except OSError as exc:
            if left <= 0:
                raise DistributedError(_lost_contact(f"nothing answered at MASTER_ADDR:MASTER_PORT = {address}:{port} "
                                                     f"({exc.strerror or exc})")) from None
            time.sleep(min(0.5, max(left, 0.0)))


@contextlib.contextmanager
def _cpp_messages_held() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the block runs (PyTorch's C++ side writes its
    connection retries there, each with a stack trace); when the block succeeds, write what was held
    to stderr without the stack frames; when it fails, drop it (the error says what happened)."""
    sys.stderr.flush()
    saved = os.dup(2)
    succeeded = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            succeeded = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if succeeded:
                held.seek(0)
                lines = held.read().decode(errors="replace").splitlines(keepends=True)
                sys.stderr.write("".join(line for line in lines if not _CPP_FRAME.match(line.strip())))


def _is_collective_failure(exc: RuntimeError) -> bool:
    """A rendezvous or collective that failed: torch's DistError, or the RuntimeError gloo/NCCL raise."""
    return isinstance(exc, dist.DistError) or any(word in str(exc) for word in ("gloo", "NCCL", "c10d"))


@contextlib.contextmanager
def lost_rank_errors() -> Iterator[None]:
    """Turn a failed rendezvous or collective (another process died or stopped responding) into a
    :class:`DistributedError` that says so in one paragraph; other errors pass unchanged."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as exc:
        if not _is_collective_failure(exc):
            raise
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(_lost_contact(cause)) from exc


def _lost_contact(cause: str) -> str:
    """The one paragraph of a process that lost the others, with its ``cause``."""
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    return (f"process {rank} of {world} lost contact with the others ({cause}). Another process died, never "
            f"started or stopped responding; each gives up after {TIMEOUT_ENV} = {dist_timeout().total_seconds():g} s "
            f"(default {DEFAULT_DIST_TIMEOUT}). Restart every process (a run continues with --resume).")


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op when running alone)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The element-wise minimum of a tensor over ranks, in place (no-op when running alone)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def global_batch_weight(count: int, device: torch.device | str = "cpu") -> float | torch.Tensor:
    """The factor that makes DDP's gradients the mean over the global batch, whatever the sizes of the
    processes' slices: ``count * world_size / total``, ``total`` the sum of ``count`` over the processes.

    DDP averages the processes' gradients, so with each process's loss the mean over its own slice, a
    global batch of 61 split 31 / 30 weighs a sample of the 30 more than one of the 31.  Multiply each
    process's mean loss by this factor (one all-reduce of ``count``) and the averaged gradient is the
    gradient of the mean loss over all 61 samples, as one process computes it.  In a single process (no
    process group, or one of one) it is the number 1.0, with no collective.

    Args:
        count: the samples of this process's slice of the global batch.
        device: where the all-reduce runs (the loss's device; CUDA under NCCL).

    Returns:
        1.0 alone; else a float32 scalar tensor on ``device``.

    Example:
        >>> loss = torch.tensor(0.25)
        >>> loss * global_batch_weight(31)  # one process: unchanged
        tensor(0.2500)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1.0
    total = torch.tensor(float(count), dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (count * dist.get_world_size() / total).float()


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (no-op when running alone)."""
    if ctx.distributed:
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
