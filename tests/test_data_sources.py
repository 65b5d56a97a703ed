"""Dataset readers and seeded splits, on real-format files written into tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from softdistill.data import readers as sources
from softdistill.data import TensorSet, datasets
from softdistill.data.readers import DatasetFormatError, DatasetNotFoundError, load_split
from softdistill.data.splits import per_class_subset, stratified_split
from softdistill.data.stream import decode_all

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No $SOFTDISTILL_DATA, no system places and an empty cache: nothing depends on this machine."""
    monkeypatch.delenv("SOFTDISTILL_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_PLACES", {})
    monkeypatch.setattr(sources, "CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------- file writers

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_set(folder: Path, gz: bool = True, seed: int = 0) -> dict:
    """A full IDX set (both splits) with random pixels; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in (("train", 7), ("test", 4)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        image_name, label_name = IDX_NAMES[split]
        suffix = ".gz" if gz else ""
        write_file(folder / (image_name + suffix), idx_bytes(images, 0x803))
        write_file(folder / (label_name + suffix), idx_bytes(labels, 0x801))
        out[split] = (images, labels)
    return out


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def cifar_batch(rng: np.random.Generator, count: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8), rng.integers(0, num_classes, count).tolist()


def write_cifar10(folder: Path, per_batch: int = 3, seed: int = 0) -> dict:
    """A cifar-10-batches-py folder in the official layout (bytes keys); returns {split: (data, labels)}."""
    rng = np.random.default_rng(seed)
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)],
                                           b"num_vis": 3072, b"num_cases_per_batch": per_batch})
    parts = {"train": [], "test": []}
    for split, name in [("train", b) for b in CIFAR10_BATCHES] + [("test", "test_batch")]:
        data, labels = cifar_batch(rng, per_batch, 10)
        write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                     b"filenames": [b"x.png"] * per_batch})
        parts[split].append((data, labels))
    return {split: (np.concatenate([d for d, _ in p]), np.concatenate([lab for _, lab in p]))
            for split, p in parts.items()}


def write_cifar100(folder: Path, count: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
                                   b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]})
    out = {}
    for split in ("train", "test"):
        data, fine = cifar_batch(rng, count, 100)
        coarse = [f % 20 for f in fine]
        write_pickle(folder / split, {b"filenames": [b"x.png"] * count, b"batch_label": b"b", b"fine_labels": fine,
                                      b"coarse_labels": coarse, b"data": data})
        out[split] = (data, np.array(fine))
    return out


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------ IDX

@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    truth = write_idx_set(tmp_path / "fashion-mnist", gz=gz)
    for split, (images, labels) in truth.items():
        got = load_split("fashion-mnist", split, root=tmp_path)
        assert got.images.dtype == torch.uint8 and got.labels.dtype == torch.int64
        assert got.images.shape == (len(images), 1, 28, 28) and got.images.is_contiguous()
        assert torch.equal(got.images[:, 0], torch.from_numpy(images))
        assert torch.equal(got.labels, torch.from_numpy(labels).long())
        assert got.class_names[0] == "T-shirt/top" and got.class_names[9] == "Ankle boot" and got.num_classes == 10


def test_idx_root_may_be_the_dataset_folder_itself(tmp_path):
    images, labels = write_idx_set(tmp_path / "somewhere", gz=False)["test"]
    got = load_split("mnist", "test", root=tmp_path / "somewhere")
    assert torch.equal(got.images[:, 0], torch.from_numpy(images)) and got.class_names == tuple("0123456789")


def test_idx_bad_magic(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder)
    bad = folder / "train-labels-idx1-ubyte.gz"
    write_file(bad, idx_bytes(np.zeros(7, np.uint8), 0x803))
    with pytest.raises(DatasetFormatError, match=r"train-labels-idx1-ubyte\.gz.*magic.*0x00000801"):
        load_split("mnist", "train", root=tmp_path)


def test_idx_truncated_data(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_split("mnist", "test", root=folder)


def test_idx_truncated_gzip_stream(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz"):
        load_split("mnist", "train", root=folder)


def test_idx_image_and_label_counts_must_agree(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder)
    write_file(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8), 0x801))
    with pytest.raises(DatasetFormatError, match="4 images.*3 labels"):
        load_split("mnist", "test", root=folder)


# ---------------------------------------------------------------------------------------------- CIFAR

def test_cifar10_round_trip_and_channel_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    truth = write_cifar10(folder)
    data = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"]
    data[0, :3], data[0, 1024], data[0, 2048 + 32] = (200, 201, 202), 100, 50  # R(0,0..2), G(0,0), B(1,0)
    write_pickle(folder / "data_batch_1", {b"labels": [0, 1, 2], b"data": data})
    train = load_split("cifar10", "train", root=tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and train.images.is_contiguous()
    assert train.images[0, 0, 0, :3].tolist() == [200, 201, 202]
    assert train.images[0, 1, 0, 0] == 100 and train.images[0, 2, 1, 0] == 50
    assert train.labels[:3].tolist() == [0, 1, 2] and train.class_names == tuple(f"c{k}" for k in range(10))
    test = load_split("cifar10", "test", root=folder)
    assert torch.equal(test.images, torch.from_numpy(truth["test"][0]).view(-1, 3, 32, 32))
    assert torch.equal(test.labels, torch.from_numpy(truth["test"][1]).long())


def test_cifar100_uses_fine_labels(tmp_path):
    truth = write_cifar100(tmp_path / "cifar-100-python")
    for split, (data, fine) in truth.items():
        got = load_split("cifar100", split, root=tmp_path)
        assert torch.equal(got.images, torch.from_numpy(data).view(-1, 3, 32, 32))
        assert got.labels.tolist() == fine.tolist()
        assert got.num_classes == 100 and got.class_names[7] == "fine7"


def test_cifar_bad_shape(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    write_pickle(folder / "test", {b"data": np.zeros((2, 3000), np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(DatasetFormatError, match=r"cifar-100-python.test.*3072"):
        load_split("cifar100", "test", root=folder)


def test_cifar_refuses_arbitrary_objects(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    write_pickle(folder / "meta", Counter(fine_label_names=1))
    with pytest.raises(DatasetFormatError, match=r"meta.*refusing to load collections.Counter"):
        load_split("cifar100", "train", root=folder)


def test_cifar_garbage_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetFormatError, match="test_batch"):
        load_split("cifar10", "test", root=folder)


# -------------------------------------------------------------------------------------------- look-up

def test_env_var_lookup_and_root_priority(tmp_path, monkeypatch):
    env_truth = write_idx_set(tmp_path / "env" / "fashion-mnist", seed=1)
    monkeypatch.setenv("SOFTDISTILL_DATA", str(tmp_path / "env"))
    got = load_split("fashion-mnist", "test")
    assert torch.equal(got.images[:, 0], torch.from_numpy(env_truth["test"][0]))
    root_truth = write_idx_set(tmp_path / "mine" / "fashion-mnist", seed=2)
    got = load_split("fashion-mnist", "test", root=tmp_path / "mine")
    assert torch.equal(got.images[:, 0], torch.from_numpy(root_truth["test"][0]))


def test_an_explicit_root_without_the_data_never_falls_back(tmp_path, monkeypatch):
    truth = write_idx_set(tmp_path / "usr-share" / "fashion-mnist")
    monkeypatch.setattr(sources, "SYSTEM_PLACES", {"fashion-mnist": (str(tmp_path / "usr-share" / "fashion-mnist"),)})
    write_idx_set(tmp_path / "env" / "fashion-mnist", seed=1)
    monkeypatch.setenv("SOFTDISTILL_DATA", str(tmp_path / "env"))
    root = tmp_path / "mine"
    with pytest.raises(DatasetNotFoundError) as info:
        load_split("fashion-mnist", root=root)
    message = str(info.value)
    assert f"{root} (does not exist)" in message and f"{root / 'fashion-mnist'} (does not exist)" in message
    assert "only place searched" in message and str(tmp_path / "usr-share") not in message
    assert torch.equal(load_split("fashion-mnist", root=tmp_path / "usr-share").labels,
                       torch.from_numpy(truth["train"][1]).long())


def test_system_place_lookup(tmp_path, monkeypatch):
    truth = write_idx_set(tmp_path / "usr-share" / "fashion-mnist")
    monkeypatch.setattr(sources, "SYSTEM_PLACES", {"fashion-mnist": (str(tmp_path / "usr-share" / "fashion-mnist"),)})
    assert torch.equal(load_split("fashion-mnist").labels, torch.from_numpy(truth["train"][1]).long())


def test_not_found_lists_every_place_in_order(tmp_path, monkeypatch):
    system = tmp_path / "system" / "fashion-mnist"
    monkeypatch.setattr(sources, "SYSTEM_PLACES", {"fashion-mnist": (str(system),)})
    monkeypatch.setenv("SOFTDISTILL_DATA", str(tmp_path / "env"))
    write_file(tmp_path / "env" / "train-images-idx3-ubyte", b"")  # an incomplete set is reported as such
    with pytest.raises(DatasetNotFoundError) as info:
        load_split("fashion-mnist")
    message = str(info.value)
    places = [tmp_path / "env", tmp_path / "env" / "fashion-mnist", system, tmp_path / "cache" / "fashion-mnist"]
    positions = [message.index(f"{p} (") for p in places]
    assert positions == sorted(positions)
    assert "missing train-labels-idx1-ubyte[.gz]" in message
    assert "apt-get install dataset-fashion-mnist" in message and "download: true" in message
    assert isinstance(info.value, FileNotFoundError)
    monkeypatch.setattr(sources, "SYSTEM_PLACES", {})
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_split("fashion-mnist")


def test_cifar_not_found_gives_the_url(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)cache.cifar-10-batches-py.*cifar-10-python\.tar\.gz"):
        load_split("cifar10")


# ------------------------------------------------------------------------------------------- download

def test_download_idx_from_file_urls(tmp_path, monkeypatch):
    truth = write_idx_set(tmp_path / "served")
    table = {"mnist": tuple((p.as_uri(), md5(p)) for p in sorted((tmp_path / "served").iterdir()))}
    monkeypatch.setattr(sources, "DOWNLOADS", table)
    got = load_split("mnist", "test", root=tmp_path / "data", download=True)
    assert torch.equal(got.images[:, 0], torch.from_numpy(truth["test"][0]))
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(
        p.name for p in (tmp_path / "served").iterdir())
    monkeypatch.setattr(sources, "DOWNLOADS", {})  # found now without downloading
    assert load_split("mnist", "train", root=tmp_path / "data").labels.tolist() == truth["train"][1].tolist()


def test_download_md5_mismatch_leaves_no_file(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "served")
    files = sorted((tmp_path / "served").iterdir())
    table = {"mnist": tuple((p.as_uri(), "0" * 32 if p.name.startswith("t10k-images") else md5(p)) for p in files)}
    monkeypatch.setattr(sources, "DOWNLOADS", table)
    with pytest.raises(DatasetFormatError, match="md5.*expected 0{32}"):
        load_split("mnist", "test", download=True)
    target = tmp_path / "cache" / "mnist"  # no root nor $SOFTDISTILL_DATA: the cache
    assert not (target / "t10k-images-idx3-ubyte.gz").exists() and leftovers(target) == []


def test_download_cifar_archive(tmp_path, monkeypatch):
    truth = write_cifar10(tmp_path / "build" / "cifar-10-batches-py")
    built = {f"cifar-10-batches-py/{p.name}": p.read_bytes()
             for p in (tmp_path / "build" / "cifar-10-batches-py").iterdir()}
    archive = tar_gz(tmp_path / "cifar-10-python.tar.gz", built)
    monkeypatch.setattr(sources, "DOWNLOADS", {"cifar10": ((archive.as_uri(), md5(archive)),)})
    monkeypatch.setenv("SOFTDISTILL_DATA", str(tmp_path / "env"))
    got = load_split("cifar10", "test", download=True)
    assert torch.equal(got.labels, torch.from_numpy(truth["test"][1]).long())
    target = tmp_path / "env" / "cifar-10-batches-py"
    assert sorted(p.name for p in target.iterdir()) == sorted(CIFAR10_BATCHES + ["test_batch", "batches.meta"])


def test_download_archive_md5_mismatch(tmp_path, monkeypatch):
    archive = tar_gz(tmp_path / "cifar-100-python.tar.gz", {"cifar-100-python/meta": b"x"})
    monkeypatch.setattr(sources, "DOWNLOADS", {"cifar100": ((archive.as_uri(), "f" * 32),)})
    with pytest.raises(DatasetFormatError, match="md5"):
        load_split("cifar100", root=tmp_path / "data", download=True)
    assert not (tmp_path / "data" / "cifar-100-python").exists()  # no empty folder that looks like the data set


def test_download_rejects_unsafe_archive_members(tmp_path, monkeypatch):
    archive = tar_gz(tmp_path / "evil.tar.gz", {"cifar-100-python/meta": b"x", "../../escaped": b"boo"})
    monkeypatch.setattr(sources, "DOWNLOADS", {"cifar100": ((archive.as_uri(), md5(archive)),)})
    with pytest.raises(DatasetFormatError, match=r"refusing to extract '\.\./\.\./escaped'"):
        load_split("cifar100", root=tmp_path / "data" / "cifar-100-python", download=True)
    assert not list(tmp_path.rglob("escaped"))
    assert not (tmp_path / "data" / "cifar-100-python").exists()


def test_download_unreachable_url(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DOWNLOADS", {"cifar10": (((tmp_path / "nope.tar.gz").as_uri(), "0" * 32),)})
    with pytest.raises(DatasetNotFoundError, match="could not download"):
        load_split("cifar10", download=True)
    assert leftovers(tmp_path / "cache") == [] and not (tmp_path / "cache" / "cifar-10-batches-py").exists()
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py \(does not exist\)"):
        load_split("cifar10")  # what the failed download left is named as missing, not as an incomplete folder


# ------------------------------------------------------------------------------------ built-in sets

def test_digits_split_is_fixed_disjoint_and_complete():
    from sklearn.datasets import load_digits

    torch.manual_seed(123)
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64 and train.num_classes == 10
    assert test.labels.bincount().min() >= 35  # stratified
    bunch = load_digits()
    expected = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    full = Counter((im.tobytes(), int(y)) for im, y in zip(expected, bunch.target))
    got = Counter((im.numpy().tobytes(), int(y)) for s in (train, test) for im, y in zip(s.images, s.labels))
    assert got == full
    torch.manual_seed(7)
    assert torch.equal(load_split("digits", "test").labels, test.labels)


def test_synthetic_is_deterministic_and_learnable_but_not_trivial():
    torch.manual_seed(0)
    train, test = load_split("synthetic", "train"), load_split("synthetic", "test")
    torch.manual_seed(99)
    assert torch.equal(load_split("synthetic").images, train.images)
    assert train.images.shape == (600, 1, 8, 8) and test.images.shape == (200, 1, 8, 8)
    assert train.labels.bincount().tolist() == [60] * 10 and train.num_classes == 10
    x_train, x_test = train.images.flatten(1).double(), test.images.flatten(1).double()
    centroids = torch.stack([x_train[train.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(x_test, centroids).argmin(1) == test.labels).double().mean().item()
    assert 0.5 < accuracy < 0.97


# -------------------------------------------------------------------------------------------- imagefolder

def test_imagefolder_without_pillow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 'softdistill\[vision\]'"):
        load_split("imagefolder", root=tmp_path)


def test_imagefolder_with_pillow(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)

    def save(rel: str, size: int) -> np.ndarray:
        array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        image_module.fromarray(array).save(tmp_path / rel)
        return array

    save("train/cat/0.png", 6)
    dog = save("train/dog/0.png", 6)
    save("train/dog/1.png", 6)
    save("val/dog/0.png", 6)
    train = load_split("imagefolder", "train", root=tmp_path)
    assert train.class_names == ("cat", "dog") and train.labels.tolist() == [0, 1, 1]
    images = decode_all(train.samples).images  # files, decoded at their own size
    assert images.shape == (3, 3, 6, 6) and images.is_contiguous()
    assert torch.equal(images[1], torch.from_numpy(dog).permute(2, 0, 1))
    test = load_split("imagefolder", "test", root=tmp_path)  # no test/: falls back to val/
    assert test.labels.tolist() == [1] and test.class_names == ("cat", "dog")
    save("train/cat/big.png", 9)
    with pytest.raises(ValueError, match=r"big.png is 9x9, .*0.png is 6x6; set data.image_size"):
        decode_all(load_split("imagefolder", "train", root=tmp_path).samples)
    assert decode_all(load_split("imagefolder", "train", root=tmp_path, image_size=4).samples).images.shape == \
        (4, 3, 4, 4)
    save("val/bird/0.png", 6)
    with pytest.raises(DatasetFormatError, match="bird"):
        load_split("imagefolder", "test", root=tmp_path)


# ------------------------------------------------------------------------------------- argument checks

def test_argument_errors():
    with pytest.raises(ValueError, match="unknown dataset 'fasion-mnist'; did you mean 'fashion-mnist'"):
        load_split("fasion-mnist")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        load_split("digits", "validation")
    with pytest.raises(ValueError, match="image_size resizes image files .*digits images have a fixed size"):
        load_split("digits", image_size=32)
    with pytest.raises(ValueError, match="uint8"):
        TensorSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    assert datasets.names() == ["cifar10", "cifar100", "digits", "fashion-mnist", "fashion-mnist-pairs", "imagefolder",
                                "mnist", "shards", "synthetic"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train = load_split("fashion-mnist", "train", root="/usr/share/datasets/fashion-mnist")
    test = load_split("fashion-mnist", "test", root="/usr/share/datasets/fashion-mnist")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10


# ------------------------------------------------------------------------------------------------ splits

def test_stratified_split_properties():
    order = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[order]
    state = torch.get_rng_state()
    keep, val = stratified_split(labels, 10, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert keep.dtype == val.dtype == torch.int64
    assert torch.equal(torch.cat([keep, val]).sort().values, torch.arange(100))
    assert torch.equal(keep, keep.sort().values) and torch.equal(val, val.sort().values)
    assert labels[val].bincount().tolist() == [5, 3, 2]
    assert torch.equal(stratified_split(labels, 10, seed=5)[1], val)
    assert not torch.equal(stratified_split(labels, 10, seed=6)[1], val)
    assert len(stratified_split(labels, 0.25, seed=0)[1]) == 25
    assert len(stratified_split(labels, 7, seed=0)[1]) == 7  # exact total with remainders
    for empty in (0, 0.0):
        keep, val = stratified_split(labels, empty, seed=0)
        assert len(val) == 0 and torch.equal(keep, torch.arange(100))


@pytest.mark.parametrize("bad", [1.5, -1, 101, True, "10"])
def test_stratified_split_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="val_size"):
        stratified_split(torch.zeros(100, dtype=torch.long), bad, seed=0)


def test_per_class_subset():
    labels = torch.tensor([2, 0, 1] * 20 + [3] * 4)
    subset = per_class_subset(labels, 4, seed=1)
    assert subset.dtype == torch.int64 and torch.equal(subset, subset.sort().values)
    assert labels[subset].bincount().tolist() == [4, 4, 4, 4] and len(subset.unique()) == 16
    assert torch.equal(per_class_subset(labels, 4, seed=1), subset)
    assert not torch.equal(per_class_subset(labels, 4, seed=2), subset)
    with pytest.raises(ValueError, match="class 3 has only 4 samples"):
        per_class_subset(labels, 5, seed=0)
