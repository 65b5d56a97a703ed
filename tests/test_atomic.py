"""The one atomic writer: whole files or none, modes that follow the umask, cleanup of temporaries."""

import errno
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from softdistill.atomic import (FileWriteError, ensure_folder, remove_stale_temporaries, torch_save_atomic,
                                write_atomic, write_text_atomic)
from softdistill.checkpoint import save_checkpoint
from softdistill.soft_labels.table import load_soft_labels, save_soft_labels


class DiskFullAfter:
    """A file handle that accepts ``limit`` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, handle, limit: int) -> None:
        self.handle, self.left = handle, limit

    def write(self, data) -> int:
        if len(data) > self.left:
            self.handle.write(bytes(data)[: self.left])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one is restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_follow_the_umask(tmp_path, umask):
    umask(0o022)
    write_text_atomic(tmp_path / "a.json", "{}")
    save_checkpoint({"x": 1}, tmp_path / "c.pt")
    save_soft_labels(tmp_path / "s.pt", torch.eye(3), torch.arange(3))
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {"a.json": 0o644, "c.pt": 0o644, "s.pt": 0o644}
    umask(0o027)
    write_text_atomic(tmp_path / "a.json", "{}")
    assert mode(tmp_path / "a.json") == 0o640


def test_text_is_utf8_and_replaces_the_old_file(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "t.md", "Δ_k + γ_k < 1\n")  # the folder is created
    assert path.read_bytes() == "Δ_k + γ_k < 1\n".encode()
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and os.listdir(path.parent) == ["t.md"]


def test_a_full_disk_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_text_atomic(path, "old\n")
    with pytest.raises(FileWriteError) as info:
        write_atomic(path, lambda handle: DiskFullAfter(handle, 3).write(b"new contents\n"))
    message = str(info.value)
    assert str(path) in message and "No space left on device" in message and "intact" in message
    assert "--resume" in message
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


def test_torch_writer_failure_becomes_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    real_save = torch.save
    # torch's zip writer turns the handle's ENOSPC into "[enforce fail at inline_container.cc] ..."
    monkeypatch.setattr(torch, "save", lambda obj, handle: real_save(obj, DiskFullAfter(handle, 100)))
    with pytest.raises(FileWriteError, match=r"last\.pt: PyTorch's file writer failed.*disk is full.*intact"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_failure_at_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.pt"
    save_soft_labels(path, torch.eye(2), torch.arange(2))

    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(FileWriteError, match="Input/output error"):
        save_soft_labels(path, torch.eye(2).flip(0), torch.arange(2))
    monkeypatch.undo()
    assert torch.equal(load_soft_labels(path)["soft_labels"], torch.eye(2))
    assert os.listdir(tmp_path) == ["s.pt"]


def test_other_errors_of_the_callback_pass_through_and_leave_nothing(tmp_path):
    def broken(handle):
        handle.write(b"half")
        raise ValueError("not a write failure")

    with pytest.raises(ValueError, match="not a write failure"):
        write_atomic(tmp_path / "x.bin", broken)
    assert os.listdir(tmp_path) == []


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    (tmp_path / "runs").write_text("I am a file")
    with pytest.raises(FileWriteError, match=r"runs is a file, not a folder"):
        ensure_folder(tmp_path / "runs" / "kd" / "seed0")
    with pytest.raises(FileWriteError, match="not a folder"):
        torch_save_atomic(tmp_path / "runs" / "x.pt", {})


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pt.{dead.pid}.0123456789abcdef.tmp"
    live = tmp_path / f".best.pt.{os.getpid()}.0123456789abcdef.tmp"  # a write in progress in this process
    others = [tmp_path / "last.pt", tmp_path / ".notes.tmp", tmp_path / f"x.{dead.pid}.0123456789abcdef.tmp"]
    for path in (stale, live, *others):
        path.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted([live, *others])
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------------ symbolic links

@pytest.fixture
def victim(tmp_path):
    """A file outside the folder written to, that a planted link points at: it must never change."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text("precious")
    return path


def test_a_link_at_a_written_path_is_replaced_never_written_through(tmp_path, victim):
    folder = tmp_path / "run"
    folder.mkdir()
    writers = {"metrics.jsonl": lambda p: write_text_atomic(p, "{}\n"),
               "last.pt": lambda p: save_checkpoint({"epoch": 1}, p),
               "soft.pt": lambda p: torch_save_atomic(p, {"x": torch.zeros(2)}),
               "index.npy": lambda p: write_atomic(p, lambda handle: np.save(handle, np.zeros(3)))}
    for name, write in writers.items():
        (folder / name).symlink_to(victim)
        write(folder / name)
        assert not (folder / name).is_symlink() and (folder / name).is_file(), name
    assert victim.read_text() == "precious"


def test_a_link_planted_at_the_temporary_name_is_refused(tmp_path, victim, monkeypatch):
    import secrets

    monkeypatch.setattr(secrets, "token_hex", lambda n: "0123456789abcdef")
    (tmp_path / f".summary.json.{os.getpid()}.0123456789abcdef.tmp").symlink_to(victim)
    with pytest.raises(FileWriteError, match="summary.json: File exists"):
        write_text_atomic(tmp_path / "summary.json", "{}")
    assert victim.read_text() == "precious" and not (tmp_path / "summary.json").exists()


def test_a_lock_file_that_is_a_link_is_refused_naming_it(tmp_path, victim):
    from softdistill.locking import hold_lock

    lock = tmp_path / ".lock"
    lock.symlink_to(victim)
    with pytest.raises(FileWriteError, match=rf"the lock file {lock} is a symbolic link \(to {victim}\): softdistill "
                                             "never writes through a link"):
        with hold_lock(lock):
            pass
    lock.unlink()
    os.link(victim, lock)  # a hard link: the same file under a second name
    with pytest.raises(FileWriteError, match=r"\.lock has other names \(hard links\)"):
        with hold_lock(lock):
            pass
    assert victim.read_text() == "precious"


def test_numpys_short_write_on_a_full_disk_is_a_clear_error(tmp_path):
    def short(handle):  # what ndarray.tofile raises when the C library writes less than asked
        raise OSError("192 requested and 99 written")

    with pytest.raises(FileWriteError, match=r"shard\.npy: numpy's file writer could write only part of the data, "
                                             r"typically because the disk is full") as info:
        write_atomic(tmp_path / "shard.npy", short)
    assert info.value.disk_full and os.listdir(tmp_path) == []
