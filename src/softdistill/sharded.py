"""What the two sharded folder formats share: the soft-label store (:mod:`softdistill.store`) and
the image shards of ``softdistill data pack`` (:mod:`softdistill.data.shards`).

Each is a folder of large files and a ``manifest.json`` that lists them with their sizes and
sha256.  A manifest is untrusted input, checked whenever its folder is opened:

* its ``format`` is one a :class:`FolderFormat` knows, and it carries ``manifest_sha256``, the
  sha256 of the canonical JSON (sorted keys, no spaces) of everything else in it (:func:`seal`), so
  that an edit of any one field is found.  A manifest of an earlier version of the format
  (``legacy``) has no such hash: it is read, checked by every consistency rule of its format;
* every file it names lies directly inside its folder (:func:`member_problem`: no path, no ``..``,
  no symbolic link leading out) and has the size the manifest lists (:class:`ListedFile`); the
  sha256 is compared by :func:`verify_folder` (``softdistill verify``), which reports every
  problem it finds, not only the first;
* the shape of the manifest (keys and types) is checked with a pydantic model
  (:func:`shape_problems`), and the format's own rules (the order of shards, their counts, each
  file's header against its entry) are its ``check``, run on open and by ``verify``.

Also what both formats write and read the same way: sealed manifests, written atomically
(:func:`write_manifest`), ``.npy`` files without pickle (:func:`write_npy_atomic`,
:func:`load_npy`) and the lock of the one process that writes a folder (:class:`WriterLock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from softdistill.atomic import write_atomic, write_text_atomic
from softdistill.hashing import sha256_of
from softdistill.locking import LockHeldError, describe_holder, hold_lock

__all__ = ["MANIFEST", "SELF_HASH", "FolderFormat", "FolderError", "read_manifest", "seal", "seal_problem",
           "write_manifest", "shape_problems", "Section", "FileEntry", "member_problem", "ListedFile", "write_npy",
           "write_npy_atomic", "load_npy", "Verification", "verify_folder", "WriterLock"]

MANIFEST = "manifest.json"
SELF_HASH = "manifest_sha256"
HEX64 = r"^[0-9a-f]{64}$"


class FolderError(ValueError):
    """A folder that is not a store or shard folder of a known format."""


@dataclass(frozen=True)
class FolderFormat:
    """A sharded folder format.

    ``name``: what its manifest's ``format`` says (``legacy``: earlier versions, which carry no
    self-hash); ``noun``: what a person calls such a folder; ``writer``: the command that writes
    it; ``redo``: what to do when its manifest cannot be trusted, ``repair`` when files are
    missing or damaged; ``error``: the exception its problems raise;
    ``lock``: the writer's lock file; ``check(folder, manifest, deep)``: every problem of the
    folder against its manifest, by the format's own rules (``deep``: the files' sha256 too);
    ``describe(manifest)``: what a sound folder holds, in a few words.
    """

    name: str
    legacy: tuple[str, ...]
    noun: str
    writer: str
    redo: str
    repair: str
    error: type[Exception]
    lock: str
    check: Callable[[Path, dict[str, Any], bool], list[str]] = field(compare=False, repr=False)
    describe: Callable[[dict[str, Any]], str] = field(compare=False, repr=False)


# ------------------------------------------------------------------------------------------ manifests

def _digest(manifest: dict[str, Any]) -> str:
    """The sha256 of the canonical JSON of ``manifest`` without its own hash."""
    rest = {k: v for k, v in manifest.items() if k != SELF_HASH}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``manifest_sha256``, the hash of everything else in it."""
    return {**{k: v for k, v in manifest.items() if k != SELF_HASH}, SELF_HASH: _digest(manifest)}


def seal_problem(manifest: dict[str, Any], fmt: FolderFormat) -> str | None:
    """Why ``manifest`` is not as it was written (None: its self-hash matches, or it is of a legacy
    version of ``fmt``, which has none)."""
    listed = manifest.get(SELF_HASH)
    if listed is None and manifest.get("format") in fmt.legacy:
        return None
    if listed is None:
        return f"the manifest has no {SELF_HASH} (its own hash), which every {fmt.name} manifest carries: it was edited"
    if listed != _digest(manifest):
        return (f"the manifest was changed after it was written: its content no longer has the sha256 it records "
                f"({SELF_HASH}), so none of its fields can be trusted")
    return None


def _load_manifest(folder: Path, fmt: FolderFormat | None, name: str = MANIFEST) -> dict[str, Any]:
    """The JSON object of ``folder/name``; the error of ``fmt`` (FolderError without one) when the
    folder or file is missing, leaves the folder or is not a JSON object."""
    error: type[Exception] = fmt.error if fmt is not None else FolderError
    noun = f"a {fmt.noun}" if fmt is not None else "a store or shard folder"
    made = f" (written by '{fmt.writer}')" if fmt is not None else ""
    path = folder / name
    if not folder.is_dir():
        raise error(f"{folder} is not {noun}: no such folder{made}")
    if not path.is_file():
        raise error(f"{folder} is not {noun}: it has no {name}{made}")
    if (problem := member_problem(folder, name)) is not None:
        raise error(f"{folder}: {problem}")
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise error(f"{path} is not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise error(f"{path} is not a manifest: it holds a JSON {type(manifest).__name__}, not an object")
    return manifest


def read_manifest(folder: str | os.PathLike, fmt: FolderFormat, sealed: bool = True, name: str = MANIFEST
                  ) -> dict[str, Any]:
    """The manifest ``name`` of ``folder``, which must be of ``fmt`` and, when ``sealed``, as it was
    written (:func:`seal_problem`); ``fmt.error`` naming the file otherwise."""
    folder = Path(folder)
    manifest = _load_manifest(folder, fmt, name)
    found = manifest.get("format")
    if found not in (fmt.name, *fmt.legacy):
        raise fmt.error(f"{folder / name} is not a {fmt.noun} manifest: format {found!r}, expected {fmt.name!r} "
                        f"(written by '{fmt.writer}')")
    if sealed and (problem := seal_problem(manifest, fmt)) is not None:
        raise fmt.error(f"{folder / name}: {problem}. {fmt.redo}.")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any], name: str = MANIFEST) -> dict[str, Any]:
    """Write ``manifest`` sealed (:func:`seal`) to ``folder/name``, atomically; returns it sealed."""
    sealed = seal(manifest)
    write_text_atomic(folder / name, json.dumps(sealed, indent=1))
    return sealed


def shape_problems(manifest: Any, model: type[BaseModel]) -> list[str]:
    """Where ``manifest`` lacks a key or has a value of another type than ``model`` says, one line each."""
    try:
        model.model_validate(manifest, strict=True)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc'])) or 'the manifest'}: {e['msg'].lower()} (found {e['input']!r:.60})"
                for e in exc.errors()]
    return []


class Section(BaseModel):
    """A part of a manifest whose keys :func:`shape_problems` checks (others are allowed)."""

    model_config = ConfigDict(extra="allow")


class FileEntry(Section):
    """A file a manifest lists: its name, size and sha256 (the keys a store's manifest uses)."""

    name: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=HEX64)


# ------------------------------------------------------------------------------------------ listed files

def member_problem(folder: Path, name: Any) -> str | None:
    """Why ``name``, read from a manifest, does not name a file directly inside ``folder`` (None: it
    does).  A symbolic link is accepted only when it leads to a place inside the folder."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        return f"{name!r} is not the name of a file inside the folder (a manifest names its files without a path)"
    path = folder / name
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        return f"{name} is a symbolic link to {path.resolve()}, outside the folder"
    return None


@dataclass(frozen=True)
class ListedFile:
    """A file as a manifest lists it: ``what`` it is (for messages), its ``name`` in the folder, its
    size (``bytes``) and ``sha256`` (of an entry whose shape was checked)."""

    what: str
    name: str
    bytes: int
    sha256: str

    def problem(self, folder: Path, deep: bool = False) -> str | None:
        """What is wrong with the file against its listing (None: nothing): a name that leaves the
        folder, a missing file, another size; with ``deep``, another sha256."""
        if (bad := member_problem(folder, self.name)) is not None:
            return f"{self.what}: {bad}"
        path = folder / self.name
        if not path.is_file():
            return f"{self.what} {self.name} is missing"
        size = path.stat().st_size
        if size != self.bytes:
            return (f"{self.what} {self.name} is {'truncated' if size < self.bytes else 'too long'} ({size} bytes, "
                    f"the manifest says {self.bytes})")
        if deep and sha256_of(path) != self.sha256:
            return f"{self.what} {self.name}: its sha256 differs from the manifest's (the file is damaged or was replaced)"
        return None


# ------------------------------------------------------------------------------------------ .npy files

def write_npy(handle: IO[bytes], array: np.ndarray) -> None:
    """``array`` as an ``.npy`` file (format 1.0 header, no pickle) into a binary handle."""
    np.lib.format.write_array(handle, array, version=(1, 0), allow_pickle=False)


def write_npy_atomic(path: Path, array: np.ndarray) -> Path:
    """``array`` as the ``.npy`` file ``path``, written atomically (:mod:`softdistill.atomic`)."""
    return write_atomic(path, lambda handle: write_npy(handle, array))


def load_npy(path: Path, error: type[Exception], mmap: bool = False) -> np.ndarray:
    """The array of the ``.npy`` file ``path`` (memory-mapped with ``mmap``), never unpickled; ``error``
    naming the file when it is not a plain ``.npy`` file."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a damaged header (ValueError, SyntaxError, ...)
        raise error(f"{path}: not a readable .npy file of plain records: its header or size is damaged, or it "
                    f"holds Python objects (numpy: {type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if not isinstance(array, np.ndarray):  # a zip archive (.npz)
        with contextlib.suppress(AttributeError):
            array.close()
        raise error(f"{path}: not an .npy file (a zip archive)")
    return array


# ------------------------------------------------------------------------------------------ verify, lock

@dataclass(frozen=True)
class Verification:
    """What :func:`verify_folder` found: the folder's format and manifest, whether the manifest was
    ``edited`` (its self-hash does not match), and every problem (empty: intact)."""

    fmt: FolderFormat
    manifest: dict[str, Any]
    edited: bool
    problems: list[str]

    @property
    def sealed(self) -> bool:
        """Whether the manifest carries its own hash (a legacy one does not)."""
        return SELF_HASH in self.manifest


def verify_folder(folder: str | os.PathLike, formats: tuple[FolderFormat, ...]) -> Verification:
    """Check a folder of one of ``formats``, recognised by its manifest's format: the manifest's own
    hash, every rule of its format, and every file it lists hashed.  :class:`FolderError` for a
    folder of none of them."""
    folder = Path(folder)
    manifest = _load_manifest(folder, None)
    fmt = next((f for f in formats if manifest.get("format") in (f.name, *f.legacy)), None)
    if fmt is None:
        known = ", ".join(name for f in formats for name in (f.name, *f.legacy))
        raise FolderError(f"{folder / MANIFEST}: format {manifest.get('format')!r} is none of {known}")
    edited = seal_problem(manifest, fmt)
    return Verification(fmt, manifest, edited is not None,
                        ([edited] if edited is not None else []) + fmt.check(folder, manifest, True))


class WriterLock:
    """The lock file ``fmt.lock`` of ``folder``, held by the one process that writes the folder
    (:func:`softdistill.locking.hold_lock`).  A second writer is refused (``fmt.error`` naming the
    holder); a lock file left by a killed writer is taken over, with a message."""

    def __init__(self, folder: Path, fmt: FolderFormat, quiet: bool = False) -> None:
        self.path, self.fmt, self.quiet = folder / fmt.lock, fmt, quiet
        self._held = contextlib.ExitStack()

    def acquire(self) -> None:
        try:
            left = self._held.enter_context(hold_lock(self.path))
        except LockHeldError as exc:
            raise self.fmt.error(f"{self.path.parent} is being written by another '{self.fmt.writer}' process "
                                 f"({describe_holder(exc.holder)}): two writers on one {self.fmt.noun} are refused. Wait for it to finish (its lock ends "
                                 "with it, even after a kill).") from None
        if left and not self.quiet:
            print(f"[softdistill] {self.path}: took over the stale lock of pid {left.get('pid')}, which no longer "
                  "holds it")

    def release(self) -> None:
        self._held.close()
