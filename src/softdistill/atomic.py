"""Atomic file writes: every file softdistill writes appears whole or not at all.

:func:`write_atomic` fills a temporary file ``.NAME.PID.RANDOM.tmp`` next to the target, fsyncs
it, renames it over the target and fsyncs the folder, so that a crash at any point leaves either
the previous file or the new one.  The temporary is created like any new file (mode 0666 minus
the umask: 0644 under umask 022), so results stay readable by a group.  On any failure the
temporary is removed; a failure of the file system (a full disk, a read-only folder, torch's
writer reporting either) becomes a :class:`FileWriteError` that names the file and says that its
previous version is intact.  A temporary left by a killed process is removed by
:func:`remove_stale_temporaries` (called when a run starts).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["FileWriteError", "ensure_folder", "write_atomic", "write_text_atomic", "write_bytes_atomic",
           "torch_save_atomic", "save_figure_atomic", "remove_stale_temporaries"]

_TEMPORARY = re.compile(r"\..+\.(\d+)\.[0-9a-f]{16}\.tmp")


class FileWriteError(OSError):
    """A file or folder could not be written; the message names it and what is left intact."""


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and its parents if needed; a clear :class:`FileWriteError` when that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror or str(exc)
        raise FileWriteError(f"cannot create the folder {folder}: {reason}. Choose another output folder "
                             "or fix the file system (space, permissions, read-only mount).") from exc
    return folder


def _failure_reason(exc: BaseException) -> str | None:
    """Why a write failed when the file system is to blame (None for any other exception).

    An OSError of the system carries an errno; one without (e.g. a data-set error raised by the
    ``write`` callback) is not a failure of the write."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or str(exc)
    if isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "PytorchStreamWriter" in str(exc)):
        return f"PyTorch's file writer failed, typically because the disk is full ({exc})"
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the error that matters is exc
            tmp.unlink(missing_ok=True)
        reason = _failure_reason(exc)
        if reason is None:
            raise
        raise FileWriteError(f"could not write {path}: {reason}. The previous version of {path.name}, if any, "
                             "is intact; free disk space or fix the folder's permissions, then run again "
                             "(a training run continues with --resume).") from exc
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


def _process_alive(pid: int) -> bool:
    if pid <= 0:  # not a process id (0 and -1 would address process groups)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`write_atomic` in ``folder`` whose writing process is gone
    (killed mid-write); returns what was removed.  Temporaries of live processes are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir()
             if (match := _TEMPORARY.fullmatch(p.name)) and p.is_file() and not _process_alive(int(match[1]))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
