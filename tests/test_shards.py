"""Shards written by ``softdistill data pack``: the folder's samples, ids and pixels, resumable writes, bad input."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from softdistill.cli import main
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.data.readers import DatasetFormatError, DatasetNotFoundError, load_split
from softdistill.data.shards import PACK, PROGRESS, PackError, ShardLimit, pack_imagefolder, parse_shard_size, plan_shards
from softdistill.data.stream import CorruptImageWarning, StreamLoader
from softdistill.data.views import ViewPlan
from softdistill.atomic import process_alive
from softdistill.hashing import data_fingerprint
from softdistill.sharded import MANIFEST, seal, verify_folder
from test_stream import assert_same_batches, write_folder

Image = pytest.importorskip("PIL.Image")
CPU = torch.device("cpu")


def packed(tmp_path, size="4", **kw):
    source = write_folder(tmp_path / "folder")
    pack_imagefolder(source, tmp_path / "shards", parse_shard_size(size), quiet=True, **kw)
    return source, tmp_path / "shards"


def test_shards_hold_the_folders_samples_and_decode_to_its_pixels(tmp_path):
    folder, shards = packed(tmp_path)
    common = dict(image_size=8, val_size=3, loader="stream", stats_samples=1000)
    a = prepare_data("imagefolder", root=str(folder), **common)
    b = prepare_data("shards", root=str(shards), **common)
    assert a.class_names == b.class_names and a.mean == b.mean and a.std == b.std
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        # the fingerprint a soft-label store checks: a store labelled on the folder serves the shards
        assert data_fingerprint(x.ids, x.labels) == data_fingerprint(y.ids, y.labels)
    transform = BatchTransform(a.mean, a.std)
    plan = ViewPlan(seed=3, resized_crop=(0.3, 1.0), hflip=True, mix="cutmix")
    for workers in (0, 2):
        loaders = [StreamLoader(d.train, 4, transform, device=CPU, workers=workers, shuffle=True, plan=plan, seed=5)
                   for d in (a, b)]
        for loader in loaders:
            loader.set_epoch(2)
        assert_same_batches(*loaders)
        whole = list(loaders[1])
        loaders[1].set_epoch(2, skip=2)  # a mid-epoch resume skips batches, as on every source
        assert_same_batches(whole[2:], loaders[1])
    assert_same_batches(*(StreamLoader(d.test, 4, transform, device=CPU, resize=10) for d in (a, b)))
    in_memory = [prepare_data(name, root=str(root), image_size=8, val_size=3, workers=1)
                 for name, root in (("imagefolder", folder), ("shards", shards))]
    assert in_memory[0].mean == in_memory[1].mean
    assert_same_batches(*(BatchLoader(d.train, 4, BatchTransform(d.mean, d.std), shuffle=True) for d in in_memory))


def test_a_shard_is_a_webdataset_tar_and_its_index_points_at_each_image(tmp_path):
    folder, shards = packed(tmp_path)
    manifest = json.loads((shards / MANIFEST).read_text())
    first = manifest["splits"]["train"]["shards"][0]
    assert [first[k] for k in ("file", "index", "samples")] == ["train-00000.tar", "train-00000.idx.npy", 4]
    index = np.load(shards / first["index"])
    with tarfile.open(shards / first["file"]) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["000000000.png", "000000000.cls", "000000001.jpg", "000000001.cls",
                                             "000000002.png", "000000002.cls", "000000003.jpg", "000000003.cls"]
        assert [m.offset_data for m in members[::2]] == index["offset"].tolist()
        assert tar.extractfile(members[1]).read() == b"0"
        assert tar.extractfile(members[2]).read() == (folder / "train" / "ant" / "001.jpg").read_bytes()
    assert [len(p["shards"]) for p in manifest["splits"].values()] == [5, 2]  # 18 train and 6 test images by 4
    assert verify_folder(shards, (PACK,)).problems == []


def test_shards_need_an_image_size_and_a_pack_folder(tmp_path):
    from softdistill.config import ConfigError, recipe_from_dict

    with pytest.raises(ConfigError, match="shards needs image_size"):
        recipe_from_dict({"name": "x", "student": "mlp", "epochs": 1, "data": {"name": "shards", "root": "x"}})
    with pytest.raises(DatasetNotFoundError, match=r"no shards, manifest\.json is missing"):
        load_split("shards", "train", root=str(tmp_path), image_size=8)


def test_shard_sizes_in_images_or_bytes():
    assert parse_shard_size("1000") == ShardLimit(images=1000)
    assert parse_shard_size("256MB") == ShardLimit(bytes=256 * 10**6)
    assert parse_shard_size("1GiB") == ShardLimit(bytes=2**30)
    with pytest.raises(ValueError, match="give a number of images"):
        parse_shard_size("1 TB")
    assert plan_shards([1] * 7, ShardLimit(images=3)) == [(0, 3), (3, 6), (6, 7)]
    # bytes: samples added while the sum stays within the limit; a sample larger than it is a shard alone
    assert plan_shards([4, 4, 3, 9, 1, 1], ShardLimit(bytes=8)) == [(0, 2), (2, 3), (3, 4), (4, 6)]


def test_a_stopped_pack_continues_and_a_half_written_shard_is_never_taken(tmp_path, monkeypatch):
    source = write_folder(tmp_path / "folder")
    reference = pack_imagefolder(source, tmp_path / "whole", ShardLimit(images=4), quiet=True)

    class StopAfterTwoShards:
        def __init__(self, **kw):
            self.updates = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.updates += 1
            if self.updates == 2:
                raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pack_imagefolder(source, out, ShardLimit(images=4), progress=StopAfterTwoShards)
    assert not (out / MANIFEST).exists() and (out / PROGRESS).exists()
    with pytest.raises(DatasetNotFoundError, match="not finished: run the same pack command again"):
        load_split("shards", "train", root=str(out), image_size=8)
    kept = (out / "train-00000.tar").stat().st_mtime_ns
    (out / "train-00002.tar").write_bytes(b"half a shard")  # a shard the progress file does not list
    with pytest.raises(DatasetFormatError, match="unfinished pack of other files or settings"):
        pack_imagefolder(source, out, ShardLimit(images=5), quiet=True)
    resumed = pack_imagefolder(source, out, ShardLimit(images=4), quiet=True)
    assert (out / "train-00000.tar").stat().st_mtime_ns == kept and not (out / PROGRESS).exists()
    assert {k: v for k, v in resumed.items() if k != "source"} == {k: v for k, v in reference.items() if k != "source"}
    assert verify_folder(out, (PACK,)).problems == []
    assert pack_imagefolder(source, out, ShardLimit(images=4), quiet=True) == resumed  # finished: left as it is
    with pytest.raises(DatasetFormatError, match="finished pack of other files or settings"):
        pack_imagefolder(source, out, ShardLimit(images=3), quiet=True)


def test_a_missing_or_truncated_shard_is_named(tmp_path):
    _, shards = packed(tmp_path)
    tar = shards / "train-00001.tar"
    tar.write_bytes(tar.read_bytes()[:-600])
    with pytest.raises(DatasetFormatError, match=r"train shard 1 train-00001\.tar is truncated \(\d+ bytes, the "
                                                 r"manifest says \d+\)"):
        load_split("shards", "train", root=str(shards), image_size=8)
    assert any("train-00001.tar" in p for p in verify_folder(shards, (PACK,)).problems)
    tar.unlink()
    with pytest.raises(DatasetFormatError, match=r"train shard 1 train-00001\.tar is missing"):
        prepare_data("shards", root=str(shards), image_size=8, loader="stream")
    assert main(["data", "verify", str(shards)]) == 2


def test_a_corrupt_source_image_fails_by_default_or_is_skipped_and_counted(tmp_path, capsys):
    source = write_folder(tmp_path / "folder")
    bad = source / "train" / "bee" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DatasetFormatError, match=r"bee/001\.jpg: cannot read image"):
        pack_imagefolder(source, tmp_path / "a", ShardLimit(images=4), quiet=True)
    assert main(["data", "pack", str(source), str(tmp_path / "b"), "--quiet"]) == 2
    assert "bee/001.jpg: cannot read image" in capsys.readouterr().err
    assert main(["data", "pack", str(source), str(tmp_path / "c"), "--on-corrupt", "skip", "--quiet",
                 "--workers", "2"]) == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["skipped"] == [str(bad)] and manifest["splits"]["train"]["samples"] == 17
    data = load_split("shards", "train", root=str(tmp_path / "c"), image_size=8).samples
    assert data.ids.tolist() == [i for i in range(18) if i != 7]  # bee/001.jpg was row 7; the others keep their ids


def test_an_unreadable_sample_in_a_shard_fails_naming_it_or_is_skipped_by_the_stream_loader(tmp_path):
    _, shards = packed(tmp_path)
    common = dict(image_size=8, val_size=3, loader="stream", mean=[0.5] * 3, std=[0.25] * 3)
    intact = prepare_data("shards", root=str(shards), **common)
    transform = BatchTransform(intact.mean, intact.std)
    rules = dict(shuffle=True, plan=ViewPlan(seed=3, crop_padding=1, hflip=True), seed=5)
    before = StreamLoader(intact.train, 4, transform, device=CPU, **rules)
    before.set_epoch(1)
    expected = [b.sample_id.tolist() for b in before]
    data = intact.train
    row = int(torch.nonzero(torch.from_numpy(data.shard) == 1)[0])  # a sample of the second shard
    sample_id, offset, size = int(data.ids[row]), int(data.offsets[row]), int(data.sizes[row])
    with open(data.shards[1], "r+b") as tar:  # its image overwritten in place: the shard keeps its size
        tar.seek(offset)
        tar.write(b"x" * size)
    damaged = prepare_data("shards", root=str(shards), **common)  # the sizes still match the manifest
    where = rf"train-00001\.tar \(sample id {sample_id}, {size} bytes at offset {offset}\): cannot read image"
    with pytest.raises(DatasetFormatError, match=where):
        list(StreamLoader(damaged.train, 4, transform, device=CPU, **rules))
    for workers in (0, 2):
        loader = StreamLoader(damaged.train, 4, transform, device=CPU, workers=workers, on_corrupt="skip", **rules)
        loader.set_epoch(1)
        with pytest.warns(CorruptImageWarning, match=f"epoch 1: data.on_corrupt: skip left out 1 sample.*{where}"):
            assert [b.sample_id.tolist() for b in loader] == [[i for i in b if i != sample_id] for b in expected]
        assert loader.skipped == 1


def test_bad_folders_are_refused_naming_the_folder(tmp_path):
    source = write_folder(tmp_path / "folder")
    (source / "train" / "dog").mkdir()
    with pytest.raises(DatasetFormatError, match=r"train/dog: a class folder with no images"):
        pack_imagefolder(source, tmp_path / "out", ShardLimit(images=4), quiet=True)
    (source / "train" / "dog").rmdir()
    (source / "val" / "emu").mkdir()
    (source / "val" / "ant" / "000.png").rename(source / "val" / "emu" / "000.png")
    with pytest.raises(DatasetFormatError, match=r"class folders \['emu'\] are not in"):
        pack_imagefolder(source, tmp_path / "out", ShardLimit(images=4), quiet=True)


def test_images_that_are_not_rgb_are_converted_as_the_folder_loader_converts_them(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (9, 9, 3)).astype(np.uint8))
    for split in ("train", "val"):
        folder = tmp_path / "folder" / split / "a"
        folder.mkdir(parents=True)
        rgb.convert("L").save(folder / "grey.png")
        rgb.convert("P").save(folder / "palette.png")
        rgb.convert("RGBA").save(folder / "alpha.png")
        rgb.convert("CMYK").save(folder / "cmyk.jpg")
    pack_imagefolder(tmp_path / "folder", tmp_path / "shards", ShardLimit(images=2), quiet=True)
    a = prepare_data("imagefolder", root=str(tmp_path / "folder"), image_size=9, val_size=0, normalize=False)
    b = prepare_data("shards", root=str(tmp_path / "shards"), image_size=9, val_size=0, normalize=False)
    assert b.train.images.shape == (4, 3, 9, 9) and torch.equal(a.train.images, b.train.images)


def _die(task):
    os._exit(3)


def test_a_pack_worker_that_dies_stops_the_pack_with_a_message(tmp_path, monkeypatch):
    import softdistill.data.shards as shards_module

    source = write_folder(tmp_path / "folder")
    monkeypatch.setattr(shards_module, "_write_shard", _die)
    with pytest.raises(PackError, match=r"a pack worker process died .* train-00000\.tar; the shards finished so far "
                                        "are kept"):
        pack_imagefolder(source, tmp_path / "out", ShardLimit(images=4), workers=2, quiet=True)


def test_a_store_labelled_on_the_folder_serves_a_run_on_its_shards(tmp_path):
    from softdistill.config import load_recipe, recipe_from_dict
    from softdistill.runner import label_recipe, run_recipe
    from softdistill.checkpoint import load_checkpoint, model_from_checkpoint
    from softdistill.store import Store

    folder, shards = packed(tmp_path)

    def data(name, root):
        return {"name": name, "root": str(root), "image_size": 8, "val_size": 3, "loader": "stream", "workers": 0,
                "batch_size": 5, "eval_batch_size": 8, "augment": {"crop_padding": 1, "hflip": True}, "views": 2,
                "view_seed": 0}

    common = {"output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    teacher = recipe_from_dict({"name": "t", "student": "mlp", "epochs": 1, "data": data("imagefolder", folder),
                                **common})
    run_recipe(teacher, quiet=True)
    checkpoint = teacher.run_dir / "best.pt"
    (tmp_path / "label.yaml").write_text(json.dumps({"name": "store", "data": data("imagefolder", folder),
                                                     "soft_labels": {"source": "teacher", "checkpoint": str(checkpoint)},
                                                     **common}))
    labelled = load_recipe(tmp_path / "label.yaml")
    label_recipe(labelled, quiet=True)
    student = recipe_from_dict({"name": "s", "student": "mlp", "epochs": 2, "seed": 3, "data": data("shards", shards),
                                "method": {"name": "kd", "alpha": 0.7},
                                "soft_labels": {"source": "store", "path": str(labelled.run_dir)}, **common})
    assert run_recipe(student, quiet=True)["epochs"] == 2  # the store fits the shards: its fingerprint is theirs
    on_shards = prepare_data("shards", root=str(shards), image_size=8, val_size=3, loader="stream")
    loader = StreamLoader(on_shards.train, 5, BatchTransform(on_shards.mean, on_shards.std), device=CPU,
                          shuffle=True, plan=student.view_plan, seed=3)
    store, model = Store(labelled.run_dir), model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        for batch in loader:  # each view of the shards is the view the teacher labelled on the folder
            with torch.inference_mode():
                torch.testing.assert_close(store.logits(store.rows_of(batch.sample_id), batch.view), model(batch.x))


# ------------------------------------------------------------------------------------------ untrusted manifests

def edit_manifest(folder, change, reseal=True):
    """Apply ``change(manifest)`` to a pack's manifest by hand (``reseal``: and recompute its own hash)."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(seal(manifest) if reseal else manifest))


def swap_entries(m):
    shards = m["splits"]["train"]["shards"]
    shards[0], shards[1] = shards[1], shards[0]


def swap_contents(m):
    """Entries 0 and 1 keep their names, but each lists the other's sizes and hashes (the files swapped)."""
    shards = m["splits"]["train"]["shards"]
    keys = ("samples", "bytes", "sha256", "index_bytes", "index_sha256")
    a, b = ({k: s[k] for k in keys} for s in shards[:2])
    shards[0].update(b)
    shards[1].update(a)


def test_a_manifest_names_files_only_inside_its_pack(tmp_path):
    _, shards = packed(tmp_path)
    shutil.copy(shards / "train-00001.tar", tmp_path / "outside.tar")  # the same bytes, outside the pack
    for name in ("../outside.tar", str(tmp_path / "outside.tar")):
        edit_manifest(shards, lambda m: m["splits"]["train"]["shards"][1].update(file=name))
        with pytest.raises(DatasetFormatError, match=rf"train shard entry 1: files '{re.escape(name)}', "
                                                     r"'train-00001\.idx\.npy' \(expected 'train-00001\.tar'"):
            load_split("shards", "train", root=str(shards), image_size=8)
        assert any("train shard entry 1" in p for p in verify_folder(shards, (PACK,)).problems)


@pytest.mark.parametrize("edit, message", [
    (swap_entries, r"train shard entry 0: files 'train-00001\.tar', 'train-00001\.idx\.npy' \(expected 'train-00000\.tar'"),
    (lambda m: m["splits"]["train"]["shards"].pop(), r"the train shards hold 16 samples, the manifest's train\.samples "
                                                     r"says 18"),
    (lambda m: m["splits"]["train"].update(samples="18"), r"splits\.train\.samples: input should be a valid integer"),
])
def test_every_manifest_rule_is_checked_when_shards_are_read(tmp_path, edit, message):
    _, shards = packed(tmp_path)
    edit_manifest(shards, edit)
    with pytest.raises(DatasetFormatError, match=message):
        load_split("shards", "train", root=str(shards), image_size=8)


def test_swapped_shard_files_are_found_by_the_order_of_their_samples(tmp_path):
    _, shards = packed(tmp_path)
    for suffix in (".tar", ".idx.npy"):  # the files of shards 0 and 1 swapped, the manifest made to match
        a, b = shards / f"train-00000{suffix}", shards / f"train-00001{suffix}"
        a.rename(tmp_path / "x")
        b.rename(a)
        (tmp_path / "x").rename(b)
    edit_manifest(shards, swap_contents)
    with pytest.raises(DatasetFormatError, match="the train shards' sample ids are not in increasing order"):
        load_split("shards", "train", root=str(shards), image_size=8)


def test_an_edited_pack_manifest_is_refused_and_verify_lists_every_problem(tmp_path, capsys):
    _, shards = packed(tmp_path)
    edit_manifest(shards, lambda m: m.update(class_names=["ant", "bee", "wasp"]), reseal=False)
    with pytest.raises(DatasetFormatError, match="the manifest was changed after it was written"):
        load_split("shards", "train", root=str(shards), image_size=8)
    tar = shards / "test-00001.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    index = shards / "train-00002.idx.npy"
    index.unlink()
    for argv in (["verify", str(shards)], ["data", "verify", str(shards)]):  # one command, and its alias
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "3 problem(s) found" in err and "the manifest was changed after it was written" in err
        assert "test shard 1 test-00001.tar is truncated" in err and "the index of train shard 2 train-00002.idx.npy is " \
                                                                   "missing" in err and "Pack the image folder again" in err


def test_a_pack_of_the_version_before_the_self_hash_is_read(tmp_path, capsys):
    _, shards = packed(tmp_path)

    def legacy(m):
        m.pop("manifest_sha256")
        m["format"] = "softdistill-shards-v1"

    edit_manifest(shards, legacy, reseal=False)
    split = load_split("shards", "train", root=str(shards), image_size=8)
    data, classes = split.samples, split.class_names
    assert len(data) == 18 and classes == ("ant", "bee", "cat")
    assert main(["verify", str(shards)]) == 0 and "carries no hash of its own" in capsys.readouterr().out
    edit_manifest(shards, lambda m: m["splits"]["train"]["shards"].pop(), reseal=False)
    with pytest.raises(DatasetFormatError, match="the train shards hold 16 samples"):
        load_split("shards", "train", root=str(shards), image_size=8)


# ------------------------------------------------------------------------------------------ the pack's process

def test_pack_refuses_a_folder_with_other_files_or_inside_its_source(tmp_path):
    source = write_folder(tmp_path / "folder")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DatasetFormatError, match=r"out is not empty: it holds notes\.txt, which are not part of a pack"):
        pack_imagefolder(source, out, ShardLimit(images=4), quiet=True)
    for inside in (source, source / "train" / "packed"):
        with pytest.raises(DatasetFormatError, match="is inside the image folder .*: the shards would be mixed with"):
            pack_imagefolder(source, inside, ShardLimit(images=4), quiet=True)
    assert (out / "notes.txt").read_text() == "mine" and not (source / "train" / "packed").exists()
    assert not list(source.rglob("*.tar"))


PACK_PAUSER = '''
import os, sys, time
from pathlib import Path
import softdistill.data.shards as shards
from softdistill.atomic import write_atomic
from softdistill.cli import main

MARKS = Path(os.environ["MARKS"])
write_shard = shards._write_shard


def pausing_write_shard(task):
    """From train shard 2 on: a temporary file half written, a mark with this process's id, then a long sleep."""
    if task.split == "train" and task.number >= 2:
        def half(handle):
            handle.write(b"half a shard")
            handle.flush()
            (MARKS / str(os.getpid())).touch()
            print("PAUSED", flush=True)
            time.sleep(600)
        write_atomic(Path(task.out) / f"train-{task.number:05d}.tar", half)
    return write_shard(task)


shards._write_shard = pausing_write_shard
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def paused_pack(tmp_path, *extra):
    """A ``softdistill data pack`` process paused in train shard 2 (each worker in its own), and the marks
    folder where each paused process leaves its id."""
    source = write_folder(tmp_path / "folder")
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "pauser.py").write_text(PACK_PAUSER)
    argv = ["data", "pack", str(source), str(tmp_path / "out"), "--shard-size", "4", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "MARKS": str(marks),
           "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(tmp_path / "pauser.py"), *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return process, argv, marks


def test_a_killed_pack_leaves_no_worker_running_and_a_rerun_clears_its_temporaries(tmp_path):
    process, argv, marks = paused_pack(tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while len(list(marks.iterdir())) < 2:  # both workers are writing a shard
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.1)
        workers = [int(p.name) for p in marks.iterdir()]
        assert process.pid not in workers
        process.kill()  # SIGKILL to the pack alone, as the out-of-memory killer would
        process.wait()
        deadline = time.monotonic() + 10
        while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(process_alive(pid) for pid in workers), "a pack worker outlived the pack"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its group
    out = tmp_path / "out"
    assert len(list(out.glob(".train-*.tmp"))) == 2  # the half-written shards of the killed workers
    assert main(argv) == 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*")) and verify_folder(out, (PACK,)).problems == []


def test_an_interrupted_pack_says_that_its_finished_shards_are_kept(tmp_path):
    process, argv, _ = paused_pack(tmp_path)
    try:
        for line in process.stdout:
            if line.strip() == "PAUSED":
                os.killpg(process.pid, signal.SIGINT)
                break
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    out = tmp_path / "out"
    assert process.returncode == 130 and "Traceback" not in err
    assert err.strip() == (f"softdistill data: interrupted; the shards finished so far are kept in {out} (the one "
                           f"being written is not). Run the same command again to continue: "
                           f"{shlex.join(['softdistill', *argv])}")
    assert sorted(p.name for p in out.iterdir()) == ["pack-progress.json", "train-00000.idx.npy", "train-00000.tar",
                                                     "train-00001.idx.npy", "train-00001.tar"]
    assert main(argv) == 0 and verify_folder(out, (PACK,)).problems == []
