"""The streaming loader: the same batches as the memory loader, decoded from files in worker processes."""

import faulthandler
import json
import multiprocessing
import os
import random
import re
import signal
import threading
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch.utils.data import get_worker_info

from softdistill.checkpoint import load_checkpoint
from softdistill.config import ConfigError, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.data.readers import DatasetFormatError
from softdistill.data.samples import FileSet
from softdistill.data.stream import CorruptImageWarning, Decoder, StreamLoader
from softdistill.data.workers import DataWorkerError
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
        assert (x.second is None) == (y.second is None)
        if x.second is not None:
            assert_same_batches([x.second], [y.second])


@pytest.mark.parametrize("plan", [None, ViewPlan(seed=3, crop_padding=2, hflip=True),
                                  ViewPlan(seed=3, crop_padding=1, hflip=True, mix="cutmix"),
                                  ViewPlan(seed=3, crop_padding=1, hflip=True, views=3, views_per_step=2)])
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


def damage(path, how):
    """Cut the file at ``path`` in half (``truncated``) or replace it with text (``not-an-image``)."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if how == "truncated" else b"softdistill: not an image\n")


@pytest.mark.parametrize("workers, how", [(0, "truncated"), (1, "truncated"), (0, "not-an-image"), (2, "not-an-image")])
def test_a_corrupt_image_stops_the_epoch_naming_the_file(tmp_path, workers, how):
    root = write_folder(tmp_path)
    _, stream = bundles(root)
    damage(root / "train" / "bee" / "001.jpg", how)
    loader = StreamLoader(stream.train, 4, BatchTransform(stream.mean, stream.std), device=torch.device("cpu"),
                          workers=workers)  # on_corrupt: fail, the default
    with pytest.raises(DatasetFormatError, match=r"bee/001\.jpg: cannot read image") as info:
        list(loader)
    assert "\n" not in str(info.value) and "DataLoader worker" not in str(info.value)  # the file's error, as it is


def test_an_unreadable_image_read_by_a_worker_stops_training_with_one_paragraph(tmp_path, capsys):
    from softdistill.cli import main

    root = write_folder(tmp_path / "images")
    damage(root / "train" / "bee" / "001.jpg", "truncated")
    recipe = {"name": "s", "student": "mlp", "epochs": 1, "output_dir": str(tmp_path / "runs"),
              "data": {"name": "imagefolder", "root": str(root), "image_size": 8, "val_size": 3, "batch_size": 4,
                       "loader": "stream", "workers": 1, "mean": [0.5] * 3, "std": [0.25] * 3},
              "train": {"device": "cpu", "threads": 1}}
    (tmp_path / "s.yaml").write_text(json.dumps(recipe))
    assert main(["train", str(tmp_path / "s.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"softdistill train: error: \S+/train/bee/001\.jpg: cannot read image \(.*\)", err), err


# ------------------------------------------------------------------------------ data.on_corrupt: skip

def damaged_bundle(root, rows=None):
    """The streamed bundle of ``root`` (statistics given) with the files of its training ``rows`` damaged: a
    JPEG cut in half (truncated), any other file replaced by text; by default one JPEG and one PNG.
    (bundle, their sample ids, their file names)."""
    _, stream = bundles(root, mean=[0.5] * 3, std=[0.25] * 3)
    files = stream.train.files
    if rows is None:
        rows = ([r for r, f in enumerate(files) if f.suffix == ".jpg"][1], [r for r, f in enumerate(files)
                                                                            if f.suffix == ".png"][2])
    for r in rows:
        damage(files[r], "truncated" if files[r].suffix == ".jpg" else "not-an-image")
    return stream, stream.train.ids[list(rows)], [f"{files[r].parent.name}/{files[r].name}" for r in rows]


def test_skip_leaves_out_exactly_the_unreadable_samples_and_names_them(tmp_path):
    root = write_folder(tmp_path)
    _, intact = bundles(root, mean=[0.5] * 3, std=[0.25] * 3)
    transform = BatchTransform(intact.mean, intact.std)
    rules = dict(shuffle=True, drop_last=False, plan=ViewPlan(seed=3, crop_padding=1, hflip=True), seed=5)
    reference = StreamLoader(intact.train, 4, transform, device=torch.device("cpu"), **rules)
    reference.set_epoch(2)
    before = list(reference)
    stream, bad_ids, names = damaged_bundle(root)
    assert torch.equal(stream.train.ids, intact.train.ids)
    # the batches of the intact folder, less the damaged samples: every other sample, view and batch unchanged
    expected = [[(i, x) for i, x in zip(b.sample_id.tolist(), b.x) if i not in bad_ids.tolist()] for b in before]
    runs = {}
    for workers in (0, 2):
        loader = StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), workers=workers,
                              on_corrupt="skip", **rules)
        loader.set_epoch(2)
        with pytest.warns(CorruptImageWarning) as caught:
            batches = list(loader)
        assert all(torch.equal(b.x, torch.stack([x for _, x in e])) and b.sample_id.tolist() == [i for i, _ in e]
                   and len(b.y) == len(b.view) == len(e) for b, e in zip(batches, expected))
        assert len(batches) == len(before)
        assert loader.skipped == 2 and len(loader.unreadable) == 2
        message = str(caught[-1].message)
        assert message.startswith("epoch 2: data.on_corrupt: skip left out 2 sample(s) whose image could not be decoded")
        assert all(name in message for name in names) and "cannot read image" in message
        runs[workers] = batches
    assert_same_batches(runs[0], runs[2])
    ranks = []  # each DDP rank leaves out its own: together, the single process's batches
    for rank in range(2):
        loader = StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), on_corrupt="skip", rank=rank,
                              world_size=2, **rules)
        loader.set_epoch(2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ranks.append((list(loader), loader.skipped))
        assert [f"epoch 2, process {rank} of 2: data.on_corrupt: skip left out {loader.skipped}" in str(w.message)
                for w in caught] == ([True] if loader.skipped else [])
    assert ranks[0][1] + ranks[1][1] == 2
    for b, batch in enumerate(runs[0]):
        assert torch.equal(torch.cat([ranks[0][0][b].sample_id, ranks[1][0][b].sample_id]), batch.sample_id)
    resumed = StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), on_corrupt="skip", **rules)
    resumed.set_epoch(2, skip=1)
    with pytest.warns(CorruptImageWarning, match="epoch 2 from its batch 2: "):
        assert_same_batches(runs[0][1:], resumed)  # a mid-epoch resume leaves out the same samples
    with pytest.raises(DatasetFormatError, match="cannot read image"):  # the default fails, naming the file
        list(StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), **rules))


def test_skip_leaves_an_unreadable_sample_out_of_both_views_of_a_two_view_step(tmp_path):
    root = write_folder(tmp_path)
    _, intact = bundles(root, mean=[0.5] * 3, std=[0.25] * 3)
    transform = BatchTransform(intact.mean, intact.std)
    rules = dict(shuffle=True, plan=ViewPlan(seed=3, crop_padding=1, hflip=True, views_per_step=2), seed=5)
    reference = StreamLoader(intact.train, 4, transform, device=torch.device("cpu"), **rules)
    reference.set_epoch(2)
    before = list(reference)
    stream, bad_ids, _ = damaged_bundle(root)
    loaders = [StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), workers=w, on_corrupt="skip",
                            **rules) for w in (0, 2)]
    for loader in loaders:
        loader.set_epoch(2)
    with pytest.warns(CorruptImageWarning):
        batches = list(loaders[0])
    for batch, whole in zip(batches, before):
        keep = ~torch.isin(whole.sample_id, bad_ids)
        for view, full in ((batch, whole), (batch.second, whole.second)):
            assert torch.equal(view.sample_id, full.sample_id[keep]) and torch.equal(view.x, full.x[keep])
    with pytest.warns(CorruptImageWarning):
        assert_same_batches(batches, loaders[1])


def test_skip_with_a_mixing_plan_leaves_out_the_samples_whose_partner_is_unreadable(tmp_path):
    stream, bad_ids, _ = damaged_bundle(write_folder(tmp_path), rows=(4,))
    plan = ViewPlan(seed=3, crop_padding=1, hflip=True, mix="cutmix")
    transform = BatchTransform(stream.mean, stream.std)
    loaders = [StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), workers=w, shuffle=True, plan=plan,
                            seed=1, on_corrupt="skip") for w in (0, 2)]
    ids = stream.train.ids
    bad = torch.isin(ids, bad_ids)
    expected = []
    for rows, views in loaders[0].epoch_batches():
        partner = plan.mixing(ids[rows], views, rows, len(ids), (8, 8)).partner
        expected.append(ids[rows][~bad[rows] & ~bad[partner]].tolist())
    assert sum(map(len, expected)) < len(ids) - 1  # the partner of some readable sample is the damaged one
    with pytest.warns(CorruptImageWarning, match="whose image \\(or whose mixing partner's image\\) could not"):
        first = list(loaders[0])
    assert [b.sample_id.tolist() for b in first] == expected
    assert loaders[0].skipped == len(ids) - sum(map(len, expected))
    with pytest.warns(CorruptImageWarning):
        assert_same_batches(first, loaders[1])


def test_skip_refuses_a_batch_without_a_readable_sample(tmp_path):
    stream, _, names = damaged_bundle(write_folder(tmp_path), rows=(0, 1))
    loader = StreamLoader(stream.train, 2, BatchTransform(stream.mean, stream.std), device=torch.device("cpu"),
                          on_corrupt="skip")  # in order: the first batch is rows 0 and 1
    with pytest.raises(DatasetFormatError, match=f"no sample of a batch could be decoded \\(2 left out: .*{names[0]}"):
        list(loader)


def test_skip_leaves_unreadable_images_out_of_the_statistics(tmp_path):
    root = write_folder(tmp_path)
    damaged_bundle(root)
    with pytest.raises(DatasetFormatError, match="cannot read image"):
        prepare_data("imagefolder", root=str(root), image_size=8, loader="stream")
    with pytest.warns(CorruptImageWarning, match="normalisation statistics of 18 training images: .* left out 2"):
        data = prepare_data("imagefolder", root=str(root), image_size=8, loader="stream", on_corrupt="skip")
    assert all(0 < m < 1 for m in data.mean)
    with pytest.raises(ValueError, match="on_corrupt: skip leaves .* it needs loader: stream"):
        prepare_data("imagefolder", root=str(root), image_size=8, loader="memory", on_corrupt="skip")


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
                        lambda self, data, rows, views: decoded.append(len(rows)) or original(self, data, rows, views))
    few = prepare_data("imagefolder", root=str(root), image_size=8, loader="stream", stats_samples=5, workers=0)
    assert sum(decoded) == 5 and all(0 < m < 1 for m in few.mean)


def recipe(tmp_path, root, loader, train=None, top=None, **data):
    raw = {"name": f"folder-{loader}", "student": "mlp", "epochs": 2, "seed": 4,
           "data": {"name": "imagefolder", "root": str(root), "image_size": 8, "val_size": 3, "batch_size": 5,
                    "eval_batch_size": 4, "loader": loader, "workers": 1,
                    "augment": {"crop_padding": 1, "hflip": True}, **data},
           "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu", **(train or {})}, **(top or {})}
    return recipe_from_dict(raw)


def test_a_run_on_the_stream_loader_trains_the_weights_of_the_memory_loader(tmp_path):
    root = write_folder(tmp_path / "folder")
    runs = [recipe(tmp_path, root, loader) for loader in ("memory", "stream")]
    summaries = [run_recipe(r, quiet=True) for r in runs]
    a, b = (load_checkpoint(r.run_dir / "last.pt")["state_dict"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summaries[0]["test_acc_last"] == summaries[1]["test_acc_last"]


def test_a_checkpoint_trained_on_the_stream_loader_is_evaluated_as_in_training_and_not_inspected(tmp_path):
    from softdistill.evaluation import evaluate_checkpoint
    from softdistill.report.inspect import inspect_soft_labels

    run = recipe(tmp_path, write_folder(tmp_path / "folder"), "stream", eval_resize=9, augment={"hflip": True})
    summary = run_recipe(run, quiet=True)
    result = evaluate_checkpoint(run.run_dir / "last.pt", device="cpu")
    assert result["samples"] == 6 and result["acc"] == summary["test_acc_last"]
    with pytest.raises(ValueError, match="out-of-domain sets are made from images in memory"):
        evaluate_checkpoint(run.run_dir / "last.pt", device="cpu", ood=["shift:1"])
    with pytest.raises(ValueError, match="the recipe streams its data"):
        inspect_soft_labels(run.run_dir / "last.pt", split="test", output_dir=tmp_path / "inspect", device="cpu",
                            quiet=True)


def records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.mark.filterwarnings("ignore::softdistill.data.stream.CorruptImageWarning")
def test_a_run_with_skip_counts_what_it_left_out_and_a_mid_epoch_resume_counts_the_same(tmp_path, run_until_step):
    root = write_folder(tmp_path / "folder")
    _, _, names = damaged_bundle(root)  # two of the 15 training images
    whole = recipe(tmp_path / "whole", root, "stream", on_corrupt="skip")
    with pytest.warns(CorruptImageWarning, match=f"epoch 2: data.on_corrupt: skip left out 2 sample.*{names[0]}"):
        summary = run_recipe(whole, quiet=True)
    assert [(r["train/skipped"], r["val/skipped"], r["test/skipped"]) for r in records(whole.run_dir)] == [(2, 0, 0)] * 2
    assert (summary["train_skipped"], summary["val_skipped"], summary["test_skipped"]) == (4, 0, 0)
    cut = recipe(tmp_path / "cut", root, "stream", train={"checkpoint_every": 1}, on_corrupt="skip")
    with pytest.warns(CorruptImageWarning):
        run_until_step(cut, 4)  # 3 steps an epoch: killed in epoch 2, after its first step
        assert load_checkpoint(cut.run_dir / "last.pt")["step"]["step"] == 1
        run_recipe(cut, resume=True, quiet=True)
    assert records(cut.run_dir) == records(whole.run_dir)  # the count of the batches before the checkpoint kept
    a, b = (load_checkpoint(r.run_dir / "last.pt")["state_dict"] for r in (whole, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::softdistill.data.stream.CorruptImageWarning")
def test_a_cached_teacher_caches_the_readable_samples_and_the_run_never_asks_for_the_others(tmp_path):
    root = write_folder(tmp_path / "folder")
    _, bad_ids, _ = damaged_bundle(root)
    teacher = recipe(tmp_path, root, "stream", top={"name": "teacher", "epochs": 1}, on_corrupt="skip")
    with pytest.warns(CorruptImageWarning):
        run_recipe(teacher, quiet=True)
    soft_labels = {"source": "cache", "checkpoint": str(teacher.run_dir / "last.pt")}
    student = recipe(tmp_path, root, "stream", top={"name": "kd", "method": {"name": "kd"}, "soft_labels": soft_labels},
                     on_corrupt="skip", views=2)
    from softdistill.runner import prepare_run

    with pytest.warns(CorruptImageWarning, match="a pass over 15 samples in order \\(view 1\\)"):
        trainer = prepare_run(student, quiet=True).trainer
    cache = trainer.task.soft_labels
    assert sorted(cache.unreadable.tolist()) == sorted(bad_ids.tolist()) and len(cache.ids) == 13
    assert not torch.isin(cache.ids.cpu(), bad_ids).any() and cache.lookups_verified
    with pytest.warns(CorruptImageWarning):
        assert trainer.fit()["train_skipped"] == 4


# ------------------------------------------------------------------------------ workers that die

class DyingFiles(FileSet):
    """A FileSet whose DataLoader worker kills itself (SIGKILL, as the out-of-memory killer does) as it opens
    the image at row ``DYING_ROW``; in the training process it opens that image as usual."""

    def open(self, row):
        if row == DYING_ROW and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().open(row)


DYING_ROW = 5


@contextmanager
def no_hang(seconds=120):
    """Fail (end the test process with every thread's traceback) rather than hang past ``seconds``."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kills a worker with SIGKILL")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_dies_stops_the_pass_with_its_error_and_leaves_nothing_running(tmp_path, workers):
    _, stream = bundles(write_folder(tmp_path))
    train = stream.train
    dying = DyingFiles(train.files, train.labels, train.image_size, train.ids)
    handler = None
    for epoch in range(1, 6):  # a worker dies at another moment of its hand-over each time
        loader = StreamLoader(dying, 2, BatchTransform(stream.mean, stream.std), device=torch.device("cpu"),
                              workers=workers, shuffle=True, seed=epoch)
        loader.set_epoch(epoch)
        with no_hang(), pytest.raises(DataWorkerError) as error:
            list(loader)
        assert re.match(rf"epoch {epoch}: a data worker stopped \(process \d+ was killed by signal SIGKILL\) and the "
                        rf"pass cannot go on \(data.workers: {workers}\)\. .*out-of-memory killer", str(error.value))
        assert error.value.__cause__ is None and error.value.__context__ is None  # holds no frame of the workers
        assert multiprocessing.active_children() == []  # every worker stopped
        now = signal.getsignal(signal.SIGCHLD)  # PyTorch's handler (installed once a process) is back
        assert now is not signal.SIG_DFL and (handler is None or now is handler)
        handler = now
    assert len(list(StreamLoader(train, 2, BatchTransform(stream.mean, stream.std), device=torch.device("cpu"),
                                 workers=workers))) == 8  # and the next pass runs


def test_a_worker_killed_from_outside_at_any_moment_stops_the_pass_and_never_hangs(tmp_path):
    """SIGKILL to a worker at a random moment of a pass (as it decodes, sends or waits): a DataWorkerError each
    time, never another error, never a hang (the clean-up once waited for a lock that PyTorch's SIGCHLD
    handler had left taken, about one try in five).  The pass lasts > 0.8 s, the kill comes within 0.3 s of
    the workers' start, and a batch owed by the dead worker is always still to come."""
    _, stream = bundles(write_folder(tmp_path, per_class=30))
    transform = BatchTransform(stream.mean, stream.std)
    rng = random.Random(0)
    for attempt in range(16):
        loader = StreamLoader(stream.train, 2, transform, device=torch.device("cpu"), workers=1 + attempt % 2)
        delay = rng.uniform(0.0, 0.3)

        def kill_a_worker():
            deadline = time.monotonic() + 60
            while not multiprocessing.active_children() and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(delay)
            os.kill(rng.choice(multiprocessing.active_children()).pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_a_worker)
        with no_hang(), pytest.raises(DataWorkerError, match="was killed by signal SIGKILL"):
            killer.start()
            try:
                for _ in loader:  # 43 batches
                    time.sleep(0.02)
            finally:
                killer.join()
        assert multiprocessing.active_children() == []


def test_stream_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="loader: stream decodes image files batch by batch .* digits is read into"):
        recipe_from_dict({"name": "x", "student": "mlp", "epochs": 1, "data": {"name": "digits", "loader": "stream"}})
    with pytest.raises(ConfigError, match="loader: stream needs image_size"):
        recipe(tmp_path, tmp_path, "stream", image_size=None)
    with pytest.raises(ConfigError, match="canvas and ood are made from images in memory"):
        recipe(tmp_path, tmp_path, "stream", ood=["shift:2"])
    assert recipe(tmp_path, tmp_path, "stream").data.on_corrupt == "fail"
    with pytest.raises(ConfigError, match="data.on_corrupt: Input should be 'fail' or 'skip', got 'ignore'"):
        recipe(tmp_path, tmp_path, "stream", on_corrupt="ignore")
    for loader in ("memory", "auto"):
        with pytest.raises(ConfigError, match="on_corrupt: skip leaves unreadable images out of the stream loader's "
                                              "batches: it needs loader: stream"):
            recipe(tmp_path, tmp_path, loader, on_corrupt="skip")


# ------------------------------------------------------------------------------ ImageNet-style views

def boxes(plan, n, height, width, view=0):
    return plan.crop_box(torch.arange(n), torch.full((n,), view), torch.full((n,), height), torch.full((n,), width))


def test_a_crop_box_is_a_pure_function_of_the_view():
    plan = ViewPlan(seed=7, resized_crop=(0.08, 1.0))
    ids, views = torch.arange(50) * 13, torch.arange(50) % 4
    sizes = (torch.full((50,), 40), torch.full((50,), 60))
    whole = plan.crop_box(ids, views, *sizes)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    shuffled = plan.crop_box(ids[order], views[order], sizes[0][order], sizes[1][order])
    assert torch.equal(shuffled, whole[order])
    assert torch.equal(torch.cat([plan.crop_box(ids[i:i + 7], views[i:i + 7], sizes[0][i:i + 7], sizes[1][i:i + 7])
                                  for i in range(0, 50, 7)]), whole)
    assert not torch.equal(plan.crop_box(ids, views + 1, *sizes), whole)
    assert not torch.equal(ViewPlan(seed=8, resized_crop=(0.08, 1.0)).crop_box(ids, views, *sizes), whole)


def test_crop_boxes_are_spread_as_drawn():
    n, side = 20000, 100
    by_area = boxes(ViewPlan(seed=1, resized_crop=(0.25, 0.5), crop_ratio=(1.0, 1.0)), n, side, side)
    h, w = by_area[:, 2] - by_area[:, 0], by_area[:, 3] - by_area[:, 1]
    share = (h * w).double() / side**2
    assert torch.equal(h, w) and share.min() >= 0.24 and share.max() <= 0.51
    assert share.mean().item() == pytest.approx(0.375, abs=0.005)  # uniform share of the area
    position = by_area[:, 0].double() / (side - h + 1).double()  # uniform placement
    assert torch.histc(position, bins=4, min=0, max=1).div(n).tolist() == pytest.approx([0.25] * 4, abs=0.02)
    by_ratio = boxes(ViewPlan(seed=2, resized_crop=(0.1, 0.2), crop_ratio=(0.5, 2.0)), n, side, side)
    log_ratio = ((by_ratio[:, 3] - by_ratio[:, 1]).double() / (by_ratio[:, 2] - by_ratio[:, 0]).double()).log()
    assert log_ratio.mean().item() == pytest.approx(0.0, abs=0.01)  # log-uniform in [log 1/2, log 2]
    assert log_ratio.std().item() == pytest.approx(2 * np.log(2) / np.sqrt(12), rel=0.05)
    wide = boxes(ViewPlan(seed=3, resized_crop=(0.5, 1.0)), 20, 10, 200)  # no draw fits: the centred fall-back
    assert wide.unique(dim=0).tolist() == [[0, 93, 10, 106]]  # 10 high, 10 * 4/3 wide, centred
    inside = boxes(ViewPlan(seed=4, resized_crop=(0.08, 1.0)), n, 30, 70)
    assert bool((inside[:, :2] >= 0).all() and (inside[:, 2] <= 30).all() and (inside[:, 3] <= 70).all())
    assert bool(((inside[:, 2:] - inside[:, :2]) >= 1).all())


def test_resized_crops_are_the_same_in_any_worker_and_change_with_the_epoch(tmp_path):
    _, stream = bundles(write_folder(tmp_path))
    plan = ViewPlan(seed=5, resized_crop=(0.3, 1.0), hflip=True)
    transform = BatchTransform(stream.mean, stream.std)

    def epoch(e, workers):
        loader = StreamLoader(stream.train, 4, transform, device=torch.device("cpu"), workers=workers, shuffle=True,
                              plan=plan, seed=1)
        loader.set_epoch(e)
        return list(loader), loader

    first, loader = epoch(1, 0)
    assert_same_batches(first, epoch(1, 2)[0])
    ids = torch.cat([b.sample_id for b in first])
    xs = torch.cat([b.x for b in first])[torch.argsort(ids)]
    assert torch.equal(torch.cat([b.x for b in loader.in_order(0)]), xs)  # epoch 1 shows view 0
    assert not torch.equal(torch.cat([b.x for b in loader.in_order(1)]), xs)


@pytest.mark.parametrize("padding", [0, 1])
def test_a_decoded_view_is_pillows_resize_of_its_box_placed_as_the_memory_loader_places_it(tmp_path, padding):
    """Against Pillow's crop + bilinear resize of each view's box, then ViewPlan.place (padding crop, then
    flip), as the memory loader does it: the decoder flips while it copies and mirrors the crop's column."""
    _, stream = bundles(write_folder(tmp_path))
    data = stream.train
    plan = ViewPlan(seed=2, resized_crop=(0.3, 1.0), hflip=True, crop_padding=padding)
    rows, views = torch.arange(len(data)), torch.arange(len(data)) % 3
    flips = plan.geometry(data.ids, views).flip
    assert 0 < flips.sum() < len(rows)
    resized = []
    for row, view in zip(rows.tolist(), views.tolist()):
        with Image.open(data.files[row]) as img:
            img = img.convert("RGB")
        top, left, bottom, right = plan.crop_box(data.ids[row:row + 1], torch.tensor([view]), torch.tensor([img.height]),
                                                 torch.tensor([img.width]))[0].tolist()
        pixels = np.array(img.resize((8, 8), Image.BILINEAR, box=(left, top, right, bottom)))
        resized.append(torch.from_numpy(pixels).permute(2, 0, 1))
    expected = plan.place(torch.stack(resized), data.ids, views)
    assert torch.equal(Decoder(8, plan).batch(data, rows, views), expected)


def test_evaluation_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[:, 7:13] = 255  # a white band across the middle 6 of 20 columns
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / split / "a" / "0.png")
    data = prepare_data("imagefolder", root=str(tmp_path), image_size=4, val_size=0, loader="stream",
                        mean=[0, 0, 0], std=[1, 1, 1])
    plain = BatchTransform((0, 0, 0), (1, 1, 1))
    squashed = next(iter(StreamLoader(data.test, 1, plain, device=torch.device("cpu")))).x
    cropped = next(iter(StreamLoader(data.test, 1, plain, device=torch.device("cpu"), resize=5))).x
    # 10x20 -> 5x10, centre 4x4 = columns 3..6 of 10, the band (columns 3.5..6.5) fills the middle two
    assert cropped[0, :, :, 1:3].min() > 0.9 and squashed[0, :, :, 1:3].max() < 0.9
    with pytest.raises(ValueError, match="eval_resize must be >= data.image_size"):
        StreamLoader(data.test, 1, plain, device=torch.device("cpu"), resize=3)
    with pytest.raises(ConfigError, match="they need loader: stream"):
        recipe(tmp_path, tmp_path, "memory", augment={"resized_crop": [0.08, 1]})
    with pytest.raises(ConfigError, match="0 < low <= high <= 1"):
        recipe(tmp_path, tmp_path, "stream", augment={"resized_crop": [0.5, 2]})


def test_a_store_of_other_resized_crops_is_refused_and_older_manifests_have_none():
    from softdistill.compatibility import stored_view_problems
    from softdistill.store.reader import plan_of

    stored = ViewPlan(seed=1, views=2, resized_crop=(0.08, 1.0))
    assert stored_view_problems(stored, ViewPlan(seed=1, views=2, resized_crop=(0.08, 1.0)), "s") == []
    assert "resized_crop" in stored_view_problems(stored, ViewPlan(seed=1, views=2, resized_crop=(0.5, 1.0)), "s")[0]
    old = {"views": {"seed": 1, "views": 2, "crop_padding": 1, "hflip": True, "mix": "none", "mix_alpha": 1.0}}
    assert plan_of(old) == ViewPlan(seed=1, views=2, crop_padding=1, hflip=True)
    assert plan_of(old).fingerprint() == "76d4c08b0199ca3a"  # as before resized crops existed
