"""The streaming loader: the same batches as the memory loader, decoded from files in worker processes."""

import numpy as np
import pytest
import torch

from softdistill.checkpoint import load_checkpoint
from softdistill.config import ConfigError, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.data.sources import DatasetFormatError
from softdistill.data.stream import StreamLoader
from softdistill.data.views import ViewPlan
from softdistill.runner import run_recipe

Image = pytest.importorskip("PIL.Image")

CLASSES = ("ant", "bee", "cat")


def write_folder(root, per_class=6, test_per_class=2, seed=0):
    """A tiny image folder: PNG and JPEG images of mixed sizes and modes (RGB, grey) in three classes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", test_per_class)):
        for k, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = 9 + (i % 3), 10 + (i % 2)
                base = rng.integers(0, 120, (h, w, 3)) + 60 * k
                image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
                if i % 3 == 2:
                    image = image.convert("L")
                image.save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root


def bundles(root, **kw):
    common = dict(root=str(root), image_size=8, val_size=3, stats_samples=1000, **kw)
    return prepare_data("imagefolder", loader="memory", **common), prepare_data("imagefolder", loader="stream", **common)


def assert_same_batches(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for name in ("x", "y", "sample_id", "view", "y_b", "lam"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None and v is None) or torch.equal(u, v), name


@pytest.mark.parametrize("plan", [None, ViewPlan(seed=3, crop_padding=2, hflip=True),
                                  ViewPlan(seed=3, crop_padding=1, hflip=True, mix="cutmix")])
def test_stream_and_memory_loaders_give_identical_batches(tmp_path, plan):
    memory, stream = bundles(write_folder(tmp_path))
    assert memory.mean == stream.mean and memory.std == stream.std  # every image sampled: the exact statistics
    assert torch.equal(memory.train.ids, stream.train.ids) and memory.class_names == stream.class_names
    transform = BatchTransform(memory.mean, memory.std)
    rules = dict(shuffle=True, drop_last=False, plan=plan, seed=5)
    mem = BatchLoader(memory.train, 4, transform, **rules)
    for workers in (0, 2):
        streamed = StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), workers=workers, **rules)
        for epoch in (1, 2):
            mem.set_epoch(epoch)
            streamed.set_epoch(epoch)
            assert_same_batches(mem, streamed)
        assert_same_batches(mem.in_order(1), streamed.in_order(1))
    evaluation = [BatchLoader(memory.test, 4, transform),
                  StreamLoader(stream.test, 4, transform, device=torch.device("cpu"), workers=1)]
    assert_same_batches(*evaluation)


def test_ranks_and_a_skip_take_the_batches_of_the_single_process_epoch(tmp_path):
    _, stream = bundles(write_folder(tmp_path))
    transform = BatchTransform(stream.mean, stream.std)
    plan = ViewPlan(seed=1, crop_padding=1, hflip=True)

    def loader(**kw):
        made = StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), shuffle=True, plan=plan, seed=2, **kw)
        made.set_epoch(3)
        return made

    whole = list(loader())
    ranks = [list(loader(rank=r, world_size=2)) for r in range(2)]
    for b, batch in enumerate(whole):
        assert torch.equal(torch.cat([ranks[0][b].x, ranks[1][b].x]), batch.x)
        assert torch.equal(torch.cat([ranks[0][b].sample_id, ranks[1][b].sample_id]), batch.sample_id)
    resumed = loader()
    resumed.set_epoch(3, skip=2)
    assert_same_batches(whole[2:], resumed)
    with pytest.raises(ValueError, match="cannot skip 9 of the 4 batches"):
        resumed.set_epoch(3, skip=9)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_stops_the_epoch_naming_the_file(tmp_path, workers):
    root = write_folder(tmp_path)
    _, stream = bundles(root)
    bad = root / "train" / "bee" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    loader = StreamLoader(stream.train, 4, BatchTransform(stream.mean, stream.std), device=torch.device("cpu"),
                          workers=workers)
    with pytest.raises(DatasetFormatError, match=r"bee/001\.jpg: cannot read image"):
        list(loader)


def test_given_statistics_are_used_and_a_sample_estimate_is_bounded(tmp_path, monkeypatch):
    root = write_folder(tmp_path)
    _, given = bundles(root, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.25])
    assert given.mean == (0.5, 0.4, 0.3) and given.std == (0.2, 0.2, 0.25)
    with pytest.raises(ValueError, match="need 3 values each"):
        bundles(root, mean=[0.5], std=[0.2])
    import softdistill.data.stream as stream_module

    decoded = []
    original = stream_module.Decoder.batch
    monkeypatch.setattr(stream_module.Decoder, "batch",
                        lambda self, files, ids, rows, views: decoded.append(len(rows)) or original(self, files, ids, rows, views))
    few = prepare_data("imagefolder", root=str(root), image_size=8, loader="stream", stats_samples=5)
    assert sum(decoded) == 5 and all(0 < m < 1 for m in few.mean)


def recipe(tmp_path, root, loader, **data):
    raw = {"name": f"folder-{loader}", "student": "mlp", "epochs": 2, "seed": 4,
           "data": {"name": "imagefolder", "root": str(root), "image_size": 8, "val_size": 3, "batch_size": 5,
                    "eval_batch_size": 4, "loader": loader, "workers": 1,
                    "augment": {"crop_padding": 1, "hflip": True}, **data},
           "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    return recipe_from_dict(raw)


def test_a_run_on_the_stream_loader_trains_the_weights_of_the_memory_loader(tmp_path):
    root = write_folder(tmp_path / "folder")
    runs = [recipe(tmp_path, root, loader) for loader in ("memory", "stream")]
    summaries = [run_recipe(r, quiet=True) for r in runs]
    a, b = (load_checkpoint(r.run_dir / "last.pt")["state_dict"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summaries[0]["test_acc_last"] == summaries[1]["test_acc_last"]


def test_stream_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="loader: stream reads image folders"):
        recipe_from_dict({"name": "x", "student": "mlp", "epochs": 1, "data": {"name": "digits", "loader": "stream"}})
    with pytest.raises(ConfigError, match="loader: stream needs image_size"):
        recipe(tmp_path, tmp_path, "stream", image_size=None)
    with pytest.raises(ConfigError, match="canvas and ood are made from images in memory"):
        recipe(tmp_path, tmp_path, "stream", ood=["shift:2"])
