"""Atomic file writes: every file softdistill writes appears whole or not at all.

:func:`write_atomic` fills a temporary file ``.NAME.PID.RANDOM.tmp`` next to the target, fsyncs
it, renames it over the target and fsyncs the folder, so that a crash at any point leaves either
the previous file or the new one.  The temporary is created like any new file (mode 0666 minus
the umask: 0644 under umask 022), so results stay readable by a group.  Nothing is written
through a symbolic link: the temporary is created with ``O_EXCL | O_NOFOLLOW`` (a link planted at
its name is refused), and a link at the target's name is replaced by the rename, never followed.
On any failure the temporary is removed; a failure of the file system (a full disk, a read-only
folder, torch's or numpy's writer reporting either) becomes a :class:`FileWriteError` that names
the file and says that its previous version is intact.  A temporary left by a killed process is
removed by :func:`remove_stale_temporaries` (called when a run, a labelling or a pack starts).
Folders are created by :func:`ensure_folder`, whose failures are a :class:`FileWriteError` too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["FileWriteError", "DISK_FULL", "ensure_folder", "write_atomic", "write_text_atomic", "write_bytes_atomic",
           "torch_save_atomic", "save_figure_atomic", "remove_stale_temporaries",
           "process_alive"]

_TEMPORARY = re.compile(r"\..+\.(\d+)\.[0-9a-f]{16}\.tmp")
#: errors of a file system that has no room left
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# numpy's writer (``ndarray.tofile``) reports a short write without an errno
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


class FileWriteError(OSError):
    """A file or folder could not be written; the message names it and what is left intact.
    ``disk_full``: the file system had no room left."""

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and its parents if needed; a clear :class:`FileWriteError` when that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror or str(exc)
        raise FileWriteError(f"cannot create the folder {folder}: {reason}. Choose another output folder "
                             "or fix the file system (space, permissions, read-only mount).",
                             exc.errno in DISK_FULL) from exc
    return folder


def _failure_reason(exc: BaseException) -> tuple[str, bool] | None:
    """Why a write failed when the file system is to blame, and whether its disk is full (None for
    any other exception).

    An OSError of the system carries an errno; one without (e.g. a data-set error raised by the
    ``write`` callback) is not a failure of the write, except numpy's report of a short write."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or str(exc), exc.errno in DISK_FULL
    if isinstance(exc, OSError) and _SHORT_WRITE.fullmatch(str(exc)):
        return f"numpy's file writer could write only part of the data, typically because the disk is full ({exc})", True
    if isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "PytorchStreamWriter" in str(exc)):
        return f"PyTorch's file writer failed, typically because the disk is full ({exc})", True
    return None


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Replace ``path`` atomically with what ``write(handle)`` writes to a binary file handle.

    Exceptions raised by ``write`` propagate (after the temporary is removed), except failures of
    the file system, which become :class:`FileWriteError`.
    """
    path = Path(path)
    folder = ensure_folder(path.parent)
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    try:
        # the umask applies, as for any new file; a link planted at the temporary's name is refused
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # a symbolic link at ``path`` is replaced, not followed
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the error that matters is exc
            tmp.unlink(missing_ok=True)
        failure = _failure_reason(exc)
        if failure is None:
            raise
        reason, disk_full = failure
        raise FileWriteError(f"could not write {path}: {reason}. The previous version of {path.name}, if any, "
                             "is intact; free disk space or fix the folder's permissions, then run again "
                             "(a training run continues with --resume).", disk_full) from exc
    _fsync_folder(folder)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` atomically with ``data``."""
    return write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` atomically with ``text`` (UTF-8)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def torch_save_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` into ``path``, atomically."""
    import torch

    return write_atomic(path, lambda handle: torch.save(obj, handle))


def save_figure_atomic(figure: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure saved atomically, in the format that the suffix of ``path`` names."""
    path = Path(path)
    return write_atomic(path, lambda handle: figure.savefig(handle, format=path.suffix.lstrip("."), **savefig_kwargs))


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    if pid <= 0:  # not a process id (0 and -1 would address process groups)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    try:  # Linux: the state letter after the command name in /proc/PID/stat
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`write_atomic` in ``folder`` whose writing process is gone
    (killed mid-write); returns what was removed.  Temporaries of live processes are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir()
             if (match := _TEMPORARY.fullmatch(p.name)) and p.is_file() and not process_alive(int(match[1]))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
