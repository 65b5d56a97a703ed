"""The one folder lock: a folder that one process at a time may write (a run folder, a store).

:func:`hold_lock` takes an exclusive ``flock`` on a lock file and writes its holder into it (pid,
host, start time, command); a second process is refused with :class:`LockHeldError`, which names
the holder.  The operating system drops the lock when its process ends, however it ends
(``kill -9``, out of memory), so a lock file left behind never blocks: the next process takes it
over and is told whose it was.  On a shared file system the lock holds across hosts where the
file system carries ``flock`` between clients (NFSv4; Linux NFS clients map it to byte-range
locks), and a crashed host's lock ends when the server's lease expires (about 90 s on NFSv4);
where the file system has no locks at all, the process goes ahead with a warning that nothing
stops a second one.

The lock file is opened without following a symbolic link, and must be a plain file with no other
name (hard link): a lock file planted to make the holder's details overwrite another file is
refused, naming it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softdistill.atomic import DISK_FULL, FileWriteError

__all__ = ["LockHeldError", "hold_lock", "describe_holder"]

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockHeldError(RuntimeError):
    """Another process holds the lock; ``holder`` is what it wrote (empty when not written yet)."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        super().__init__(f"{path} is held by {describe_holder(holder)}")
        self.path, self.holder = path, holder


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on HOST, started TIME: COMMAND``, as far as the holder wrote it."""
    if not holder:
        return "a process that has not written its details yet"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started', '?')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 65536, 0).decode())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _open_lock_file(path: Path) -> int:
    """A read-write descriptor of the plain lock file ``path``, created if missing; never through a
    symbolic link, never a file with another name.  :class:`FileWriteError` otherwise."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP and path.is_symlink():
            raise FileWriteError(f"the lock file {path} is a symbolic link (to {os.readlink(path)}): softdistill never "
                                 "writes through a link. Delete the link, then run again.") from None
        raise FileWriteError(f"cannot create the lock file {path}: {exc.strerror}; fix the folder's permissions, "
                             "free disk space or choose another output folder", exc.errno in DISK_FULL) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "has other names (hard links)" if stat.S_ISREG(info.st_mode) else "is not a plain file"
        raise FileWriteError(f"the lock file {path} {what}: writing the holder's details into it would change "
                             "another file. Delete it, then run again.")
    return fd


def _write_holder(fd: int, path: Path) -> None:
    """Write this process's details into the lock file (a full disk is a :class:`FileWriteError`)."""
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv)}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
    except OSError as exc:
        raise FileWriteError(f"cannot write the lock file {path}: {exc.strerror}; free disk space or fix the "
                             "folder's permissions, then run again", exc.errno in DISK_FULL) from exc


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Hold the lock ``path`` while the block runs; yields what a previous holder that ended without
    releasing it had written (empty when there was none).  :class:`LockHeldError` when another
    process holds it, :class:`~softdistill.atomic.FileWriteError` when the file cannot be created
    or is not a plain file of its own (a symbolic or hard link)."""
    path = Path(path)
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeldError(path, holder) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_LOCKS:
                raise
            path.unlink(missing_ok=True)
            warnings.warn(f"the file system of {path.parent} has no file locks ({exc.strerror}): nothing stops a "
                          "second process from writing there at the same time", stacklevel=3)
            yield {}
            return
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        os.close(fd)  # locked a file that its last holder had just removed: lock the new one
    try:
        left = _read_holder(fd)
        _write_holder(fd, path)
        yield left
    finally:
        path.unlink(missing_ok=True)  # while still locked, so that no one locks the old file after us
        os.close(fd)
