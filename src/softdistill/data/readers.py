"""Data sets by name: the one registry of readers (``data.name`` of a recipe), the built-in readers,
and the checks every reader's output passes.

A reader is a function ``read(split, data) -> Split`` registered with :func:`register_dataset`, where
``split`` is ``"train"`` or ``"test"`` and ``data`` the recipe's data section
(:class:`~softdistill.data.config.DataConfig`: its ``root``, ``download`` and ``image_size``).  It
returns the split's samples, in memory (:class:`~softdistill.data.samples.TensorSet`) or as image files
read on demand (a :class:`~softdistill.data.samples.StreamSet` such as
:class:`~softdistill.data.samples.FileSet`, which the stream loader decodes batch by batch and the
memory loader decodes up front), with the class names.  A plugin module registers its own the same
way (docs/data.md, "Your own data set").

The built-in file-based sets (``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``) are looked up in
``root`` when it is given: the dataset folder itself or a parent holding it (``root/fashion-mnist``,
``root/cifar-10-batches-py``, ...), and nowhere else, so that the data a run reads is the data its
recipe names.  Without ``root``, in order, in

1. ``$SOFTDISTILL_DATA``, in the same two forms;
2. the system places of :data:`SYSTEM_PLACES` (``/usr/share/datasets/fashion-mnist``, ...);
3. the download cache, ``~/.cache/softdistill/<folder>`` (:data:`CACHE_DIR`).

A folder counts only if it holds every file of the set (both splits).  When none does and
``download`` is set, the official files (:data:`DOWNLOADS`, md5-checked) are fetched into the dataset
folder under ``root``, else ``$SOFTDISTILL_DATA``, else the cache; otherwise
:class:`DatasetNotFoundError` lists every place searched and how to get the data.

``digits`` (scikit-learn's bundled 8x8 digits) and ``synthetic`` need no files; ``imagefolder``
lists ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val``); ``shards``
(:mod:`softdistill.data.shards`) reads a folder written by ``softdistill data pack``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Literal, get_args

import numpy as np
import torch

from softdistill.atomic import ensure_folder, write_atomic
from softdistill.data.samples import (DatasetFormatError, DatasetNotFoundError, FileSet, StreamSet, TensorSet,
                                      UnreadableImageError, _pillow)
from softdistill.data.splits import stratified_split
from softdistill.registry import Registry

if TYPE_CHECKING:
    from softdistill.data.config import DataConfig

__all__ = ["Split", "DatasetInfo", "Reader", "datasets", "register_dataset", "read_split", "load_split",
           "SplitName", "SPLITS", "FileList", "list_imagefolder", "DatasetNotFoundError", "DatasetFormatError",
           "UnreadableImageError"]

SplitName = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(SplitName)


@dataclass(frozen=True)
class Split:
    """One split as its reader gives it: the samples (in memory, or image files read on demand) and the
    class names (label k names ``class_names[k]``)."""

    samples: TensorSet | StreamSet
    class_names: tuple[str, ...]

    @property
    def labels(self) -> torch.Tensor:
        return self.samples.labels

    @property
    def ids(self) -> torch.Tensor:
        return self.samples.ids

    @property
    def images(self) -> torch.Tensor:
        """The uint8 N x C x H x W images of a split in memory."""
        if not isinstance(self.samples, TensorSet):
            raise ValueError("the split is read from files: decode it first (softdistill.data.stream.decode_all)")
        return self.samples.images

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered data set declares about itself, so that a recipe is checked before any data is
    read: whether its images are files (``files``: the stream loader can read it; ``data.image_size``
    resizes them), its class names, channels and image side where they are fixed (None: unknown until
    read)."""

    files: bool = False
    class_names: tuple[str, ...] | None = None
    channels: int | None = None
    image_size: int | None = None


Reader = Callable[[str, "DataConfig"], Split]


@dataclass(frozen=True)
class _Dataset:
    """A registered reader with what it declares."""

    name: str
    read: Reader
    info: DatasetInfo


#: Every data set recipes can name (``data.name``); a plugin module adds its own with :func:`register_dataset`.
datasets: Registry[_Dataset] = Registry("dataset", "softdistill.data")


def register_dataset(name: str, *, files: bool = False, class_names: tuple[str, ...] | None = None,
                     channels: int | None = None, image_size: int | None = None) -> Callable[[Reader], Reader]:
    """Decorator: register ``read(split, data) -> Split`` as data set ``name`` (see the module docstring);
    the keywords declare what :class:`DatasetInfo` says, checked against what it reads.

    Args:
        name: the name recipes give as ``data.name``.
        files: the samples are image files (a ``StreamSet``), which the stream loader can decode per batch.
        class_names, channels, image_size: what every split holds, when known before reading.

    Returns:
        The decorator; it returns the reader unchanged.

    Example:
        >>> @register_dataset("example-squares", class_names=("dark", "light"), channels=1, image_size=4)
        ... def squares(split, data):
        ...     light = torch.arange(10) % 2
        ...     images = (light * 255).to(torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
        ...     return Split(TensorSet(images, light), ("dark", "light"))
        >>> from softdistill import prepare_data
        >>> len(prepare_data("example-squares", val_size=2).train)
        8
    """
    info = DatasetInfo(files, tuple(class_names) if class_names is not None else None, channels, image_size)

    def decorator(read: Reader) -> Reader:
        datasets.register(_Dataset(name, read, info), name=name)
        return read

    return decorator


def dataset_info(name: str) -> DatasetInfo:
    """What data set ``name`` declares; an :class:`~softdistill.registry.UnknownNameError` suggesting the
    closest names when none is registered under it."""
    return datasets.get(name).info


def read_split(data: "DataConfig", split: str) -> Split:
    """Split ``split`` (``"train"`` or ``"test"``) of the data set ``data.name``, read by its registered
    reader and checked: a reader that gives something else than it declares, or samples whose labels,
    ids and images disagree, is a ValueError in one paragraph naming the reader."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    dataset = datasets.get(data.name)
    got = dataset.read(split, data)
    where = f"data set {dataset.name!r} (read by {dataset.read.__module__}.{dataset.read.__qualname__}), {split} split"
    if not isinstance(got, Split):
        raise ValueError(f"{where}: the reader must return a softdistill.data.Split (samples and class names), "
                         f"got {type(got).__name__}")
    problems = _split_problems(got, dataset.info)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return got


def _split_problems(split: Split, info: DatasetInfo) -> list[str]:
    samples, names = split.samples, split.class_names
    if not isinstance(samples, (TensorSet, StreamSet)):
        return [f"its samples must be a TensorSet (in memory) or a StreamSet such as FileSet (files), got "
                f"{type(samples).__name__}"]
    problems = []
    if not names or not all(isinstance(n, str) for n in names):
        problems.append(f"class_names must be a non-empty tuple of strings, got {names!r}")
    labels = samples.labels
    if len(labels) == 0:
        problems.append("it holds no sample")
    elif int(labels.min()) < 0 or int(labels.max()) >= len(names):
        problems.append(f"labels range over [{int(labels.min())}, {int(labels.max())}], but there are {len(names)} "
                        "class names (labels are class indices 0..K-1)")
    if info.class_names is not None and tuple(names) != info.class_names:
        problems.append(f"class names {list(names)} differ from the {list(info.class_names)} it declares")
    if info.files != isinstance(samples, StreamSet):
        declared = "image files (files=True)" if info.files else "images in memory"
        problems.append(f"it declares {declared} but gave {type(samples).__name__}")
    if isinstance(samples, TensorSet) and info.channels is not None and samples.image_shape[0] != info.channels:
        problems.append(f"its images have {samples.image_shape[0]} channels, it declares {info.channels}")
    return problems


def load_split(name: str, split: str = "train", root: str | os.PathLike | None = None, download: bool = False,
               image_size: int | None = None) -> Split:
    """One split of data set ``name``, read and checked (:func:`read_split`) with these data settings."""
    from softdistill.data.config import DataConfig

    config = DataConfig.of({"name": name, "root": None if root is None else str(root), "download": download,
                            "image_size": image_size})
    return read_split(config, split)


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))

#: Folder name of each file-based set, under ``root``, ``$SOFTDISTILL_DATA`` or the cache.
FOLDERS: dict[str, str] = {"fashion-mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar-10-batches-py",
                           "cifar100": "cifar-100-python"}
#: Where system packages put the data (``apt-get install dataset-fashion-mnist``).
SYSTEM_PLACES: dict[str, tuple[str, ...]] = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
                                             "mnist": ("/usr/share/datasets/mnist",)}
#: Download cache, searched last and used for downloads when neither ``root`` nor ``$SOFTDISTILL_DATA`` is given.
CACHE_DIR = "~/.cache/softdistill"
ENV_VAR = "SOFTDISTILL_DATA"

_FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
#: Official files and their published md5 sums; a ``.tar.gz`` is extracted, other files are kept as they are.
DOWNLOADS: dict[str, tuple[tuple[str, str], ...]] = {
    "fashion-mnist": ((_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                      (_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                      (_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                      (_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
    "mnist": ((_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
              (_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
              (_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
              (_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")),
    "cifar10": (("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    "cifar100": (("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
}

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_CLASSES = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": DIGIT_CLASSES}
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801
# name -> (batch files per split, label key, meta file, class-name key)
_CIFAR = {
    "cifar10": ({"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                "labels", "batches.meta", "label_names"),
    "cifar100": ({"train": ("train",), "test": ("test",)}, "fine_labels", "meta", "fine_label_names"),
}

DIGITS_TEST_SIZE = 360  # digits has no official test split: a fixed stratified split of 1797 -> 1437 / 360
DIGITS_SPLIT_SEED = 0
_SYNTHETIC_SEED = 1234
_SYNTHETIC_SIZES = {"train": 600, "test": 200}
_SYNTHETIC_CONTRAST, _SYNTHETIC_NOISE = 0.2, 0.17  # linear models reach ~80% test accuracy (chance: 10%)
_IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})


# ----------------------------------------------------------------------------------------------- look-up

def _file_in(folder: Path, name: str, gz_ok: bool) -> Path | None:
    """``folder/name``, else ``folder/name.gz`` where gzip is accepted, else None."""
    for candidate in (folder / name, folder / f"{name}.gz") if gz_ok else (folder / name,):
        if candidate.is_file():
            return candidate
    return None


def _required(name: str) -> list[str]:
    if name in _IDX_CLASSES:
        return [f for split in SPLITS for f in _IDX_FILES[split]]
    batches, _, meta, _ = _CIFAR[name]
    return [f for split in SPLITS for f in batches[split]] + [meta]


def _missing(folder: Path, name: str) -> list[str]:
    gz_ok = name in _IDX_CLASSES
    return [f + ("[.gz]" if gz_ok else "") for f in _required(name) if _file_in(folder, f, gz_ok) is None]


def _bases(root: str | os.PathLike | None) -> list[Path]:
    """The user-given parents, in order: ``root``, then ``$SOFTDISTILL_DATA``."""
    return [Path(base).expanduser() for base in (root, os.environ.get(ENV_VAR)) if base]


def _candidates(name: str, root: str | os.PathLike | None) -> list[Path]:
    """The folders searched for ``name``: an explicit ``root`` only, else the environment, system and cache."""
    folder = FOLDERS[name]
    if root:  # the data a run reads must be the data its recipe names
        base = Path(root).expanduser()
        return [base, base / folder]
    places = [p for base in _bases(None) for p in (base, base / folder)]
    places += [Path(p) for p in SYSTEM_PLACES.get(name, ())]
    places.append(Path(CACHE_DIR).expanduser() / folder)
    return list(dict.fromkeys(places))


def _download_target(name: str, root: str | os.PathLike | None) -> Path:
    """The dataset folder a download goes to: under ``root``, else ``$SOFTDISTILL_DATA``, else the cache."""
    base = (_bases(root) or [Path(CACHE_DIR).expanduser()])[0]
    return base if base.name == FOLDERS[name] else base / FOLDERS[name]


def _how_to_get(name: str, target: Path) -> str:
    download = f"set `download: true` in the data config (download=True) to fetch it into {target}"
    if name == "fashion-mnist":
        return f"`apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist), or {download}"
    if name == "mnist":
        return f"{download}, or put the four *-ubyte.gz files of {_MNIST_URL} in one of the places above"
    url = DOWNLOADS[name][0][0]
    return (f"download {url} and extract it (it unpacks to {FOLDERS[name]}/) into the folder given as root, "
            f"${ENV_VAR} or {CACHE_DIR}; or {download}")


def _locate(name: str, root: str | os.PathLike | None, download: bool) -> Path:
    """The first folder holding every file of ``name``, downloading it if allowed."""
    tried = []
    for place in _candidates(name, root):
        if not place.exists():
            tried.append(f"{place} (does not exist)")
        elif not place.is_dir():
            tried.append(f"{place} (not a folder)")
        elif missing := _missing(place, name):
            tried.append(f"{place} (missing {', '.join(missing)})")
        else:
            return place
    target = _download_target(name, root)
    if download:
        _download(name, target)
        if missing := _missing(target, name):
            raise DatasetFormatError(f"downloaded {name} into {target}, but it lacks {', '.join(missing)}")
        return target
    listing = "\n".join(f"  {i}. {entry}" for i, entry in enumerate(tried, 1))
    if root:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found in the given root. Searched:\n{listing}\nAn explicit root is the only "
            f"place searched: put the files there, set `download: true` to fetch them into {target}, or leave root "
            f"unset to search ${ENV_VAR}, the system places and {CACHE_DIR}.")
    env = "" if os.environ.get(ENV_VAR) else f" (${ENV_VAR} is not set)"
    raise DatasetNotFoundError(f"dataset {name!r} not found. Searched, in order{env}:\n{listing}\n"
                               f"To get it: {_how_to_get(name, target)}.")


# ------------------------------------------------------------------------------------------------ download

def _download(name: str, target: Path) -> None:
    """Fetch the official files of ``name`` into its dataset folder ``target``, md5-checked; a folder this
    call made is removed again when the download fails before any file is in it."""
    made = not target.exists()
    ensure_folder(target)
    try:
        for url, md5 in DOWNLOADS[name]:
            filename = url.rsplit("/", 1)[-1]
            if filename.endswith(".tar.gz"):
                with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
                    archive = Path(tmp) / filename
                    _fetch(url, md5, archive)
                    _extract(archive, Path(tmp) / "extracted", FOLDERS[name], target)
            elif _file_in(target, filename.removesuffix(".gz"), gz_ok=True) is None:
                _fetch(url, md5, target / filename)
    except BaseException:
        if made and not any(target.iterdir()):
            target.rmdir()
        raise


def _fetch(url: str, md5: str, path: Path) -> None:
    """Download ``url`` to ``path`` atomically (:func:`softdistill.atomic.write_atomic`): the file
    appears only once the whole download has the published md5."""
    print(f"[softdistill] downloading {url} -> {path}", file=sys.stderr)

    def download(out: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in _chunks(url):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != md5:
            raise DatasetFormatError(f"download of {url} has md5 {digest.hexdigest()}, expected {md5} "
                                     "(interrupted or altered); the file was deleted, try again or fetch it by hand")

    write_atomic(path, download)


def _chunks(url: str) -> Iterator[bytes]:
    """The body of ``url`` in pieces of 1 MiB; a network failure is a :class:`DatasetNotFoundError`."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            yield from iter(lambda: response.read(1 << 20), b"")
    except (OSError, http.client.HTTPException) as exc:
        raise DatasetNotFoundError(f"could not download {url}: {exc}") from exc


def _extract(archive: Path, scratch: Path, folder: str, target: Path) -> None:
    """Extract ``archive`` into ``scratch`` (refusing unsafe members); move the files of ``folder`` to ``target``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
                    raise DatasetFormatError(f"{archive}: refusing to extract {member.name!r} "
                                             "(absolute path, '..' or not a plain file or folder)")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(scratch, members=members, **safe)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{archive}: not a readable .tar.gz ({exc})") from exc
    source = scratch / folder
    if not source.is_dir():
        raise DatasetFormatError(f"{archive}: has no {folder}/ folder")
    for item in source.iterdir():
        if item.is_file():
            os.replace(item, target / item.name)


# ------------------------------------------------------------------------------------------------- readers

def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: cannot read ({exc})") from exc


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """A uint8 IDX array, checking the magic number, the big-endian dims and the byte count."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: only {len(data)} bytes, too short for an IDX file")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetFormatError(f"{path}: bad magic number 0x{found:08X}, expected 0x{magic:08X} "
                                 f"(uint8 IDX {'images' if magic == _IDX_IMAGES else 'labels'})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    size = prod(dims)
    if len(data) - header != size:
        raise DatasetFormatError(f"{path}: the header announces dims {dims} = {size} data bytes, but the file holds "
                                 f"{len(data) - header} (truncated or corrupt)")
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


def _load_idx(name: str, folder: Path, split: str) -> Split:
    image_path, label_path = (_file_in(folder, f, gz_ok=True) for f in _IDX_FILES[split])
    images, labels = _read_idx(image_path, _IDX_IMAGES), _read_idx(label_path, _IDX_LABELS)
    if len(images) != len(labels):
        raise DatasetFormatError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    classes = _IDX_CLASSES[name]
    if labels.size and labels.max() >= len(classes):
        raise DatasetFormatError(f"{label_path}: label {labels.max()} out of range for {len(classes)} classes")
    return Split(TensorSet(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64))),
                 classes)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain Python values only, never arbitrary objects."""

    _ALLOWED = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                          *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                            for n in ("_reconstruct", "scalar")),
                          ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")})

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, object]:
    """A CIFAR pickle (Python 2 or 3) as a dict with str keys."""
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "not a CIFAR file"
        raise DatasetFormatError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _entry(record: dict[str, object], key: str, path: Path) -> object:
    if key not in record:
        raise DatasetFormatError(f"{path}: no {key!r} entry (has {', '.join(map(str, record))})")
    return record[key]


def _load_cifar(name: str, folder: Path, split: str) -> Split:
    batches, label_key, meta_file, names_key = _CIFAR[name]
    meta_path = folder / meta_file
    raw_names = _entry(_unpickle(meta_path), names_key, meta_path)
    if not isinstance(raw_names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in raw_names):
        raise DatasetFormatError(f"{meta_path}: {names_key!r} must be a list of strings")
    classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in raw_names)
    images, labels = [], []
    for batch in batches[split]:
        path = folder / batch
        record = _unpickle(path)
        data, target = np.asarray(_entry(record, "data", path)), np.asarray(_entry(record, label_key, path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetFormatError(f"{path}: 'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
        if target.shape != (len(data),) or (target.size and not np.issubdtype(target.dtype, np.integer)):
            raise DatasetFormatError(f"{path}: {label_key!r} must be {len(data)} integers, got {target.dtype} "
                                     f"{target.shape}")
        if target.size and (target.min() < 0 or target.max() >= len(classes)):
            raise DatasetFormatError(f"{path}: labels outside 0..{len(classes) - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(target.astype(np.int64))
    return Split(TensorSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))), classes)


@register_dataset("fashion-mnist", class_names=FASHION_MNIST_CLASSES, channels=1, image_size=28)
@register_dataset("mnist", class_names=DIGIT_CLASSES, channels=1, image_size=28)
def _idx_dataset(split: str, data: "DataConfig") -> Split:
    """Fashion-MNIST (Xiao et al. 2017) or MNIST from their official IDX files (gzipped or not)."""
    return _load_idx(data.name, _locate(data.name, data.root, data.download), split)


@register_dataset("cifar10", channels=3, image_size=32)
@register_dataset("cifar100", channels=3, image_size=32)
def _cifar_dataset(split: str, data: "DataConfig") -> Split:
    """CIFAR-10 / CIFAR-100 (Krizhevsky 2009) from their official Python pickles."""
    return _load_cifar(data.name, _locate(data.name, data.root, data.download), split)


@register_dataset("digits", class_names=DIGIT_CLASSES, channels=1, image_size=8)
def _digits(split: str, data: "DataConfig") -> Split:
    """scikit-learn's 1797 8x8 digits, values 0..16 scaled to round(v * 255 / 16), with a fixed stratified split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * 255 / 16).astype(np.uint8)[:, None].copy())
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    index = train_idx if split == "train" else test_idx
    return Split(TensorSet(images[index].contiguous(), labels[index].contiguous()), DIGIT_CLASSES)


@register_dataset("synthetic", class_names=tuple(f"class{k}" for k in range(10)), channels=1, image_size=8)
def _synthetic(split: str, data: "DataConfig") -> Split:
    """10 balanced classes of 1 x 8 x 8 images: a fixed random low-contrast prototype per class plus
    Gaussian noise, all from one fixed seed (600 train, then 200 test images)."""
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    prototypes = 0.5 + _SYNTHETIC_CONTRAST * (torch.rand(10, 1, 8, 8, generator=gen) - 0.5)
    sets = {}
    for part, n in _SYNTHETIC_SIZES.items():
        labels = torch.arange(10).repeat(n // 10)[torch.randperm(n, generator=gen)]
        x = prototypes[labels] + _SYNTHETIC_NOISE * torch.randn(n, 1, 8, 8, generator=gen)
        sets[part] = Split(TensorSet(x.clamp(0, 1).mul(255).round().to(torch.uint8), labels),
                           tuple(f"class{k}" for k in range(10)))
    return sets[split]


@dataclass(frozen=True)
class FileList:
    """The image files of one ``imagefolder`` split, in sample-id order, with their labels and the class names.

    The order is that of the sorted class folders of ``root/train``, then of the sorted file names in
    each: a file's position is its stable sample id (the row :func:`load_split` gives it).
    """

    files: tuple[Path, ...]
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)


def list_imagefolder(root: str | os.PathLike | None, split: str) -> FileList:
    """The files of ``root/<split>/<class>/`` (``split`` "test" reads ``root/test``, else ``root/val``),
    classes named by the sorted folders of ``root/train``; nothing is decoded."""
    _pillow()
    if root is None:
        raise ValueError("imagefolder needs root: a folder holding train/<class>/ and test/<class>/ (or val/<class>/)")
    base = Path(root).expanduser()
    train_dir = base / "train"
    split_dirs = [train_dir] if split == "train" else [base / "test", base / "val"]
    split_dir = next((d for d in split_dirs if d.is_dir()), None)
    if not train_dir.is_dir() or split_dir is None:
        tried = ", ".join(str(d) for d in dict.fromkeys([train_dir, *split_dirs]))
        raise DatasetNotFoundError(f"imagefolder: no {split} images under {base}; looked for the folders {tried}, "
                                   "each with one sub-folder of images per class")

    def class_dirs(d: Path) -> list[str]:
        return sorted(c.name for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))

    classes = tuple(class_dirs(train_dir))
    if not classes:
        raise DatasetFormatError(f"{train_dir}: no class folders")
    if unknown := sorted(set(class_dirs(split_dir)) - set(classes)):
        raise DatasetFormatError(f"{split_dir}: class folders {unknown} are not in {train_dir}")
    files, labels = [], []
    for k, cls in enumerate(classes):
        if (split_dir / cls).is_dir():
            found = sorted(f for f in (split_dir / cls).iterdir()
                           if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith("."))
            if not found:
                raise DatasetFormatError(f"{split_dir / cls}: a class folder with no images "
                                         f"({', '.join(sorted(_IMAGE_SUFFIXES))}); add its images or remove the "
                                         "folder (the classes are the folders of the training split)")
            files += found
            labels += [k] * len(found)
    if not files:
        raise DatasetFormatError(f"{split_dir}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in its class folders")
    return FileList(tuple(files), torch.tensor(labels, dtype=torch.int64), classes)


@register_dataset("imagefolder", files=True)
def _imagefolder(split: str, data: "DataConfig") -> Split:
    """The image files of ``root/<split>/<class>/*`` (:func:`list_imagefolder`), decoded at ``data.image_size``
    (their own size when it is not set)."""
    listing = list_imagefolder(data.root, split)
    return Split(FileSet(listing.files, listing.labels, data.image_size), listing.class_names)
