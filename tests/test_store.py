"""The soft-label store: encodings, labelling (resumable, distributed, locked), training from a
store (bit-identical to the online teacher), inspection, and every bad input."""

import errno
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

import softdistill.sharded as sharded
import softdistill.store.writer as writer
from softdistill.checkpoint import load_checkpoint
from softdistill.cli import main
from softdistill.config import ConfigError, LabelRecipe, load_recipe, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.data.views import ViewPlan
from softdistill.locking import hold_lock
from softdistill.report.inspect import inspect_soft_labels
from softdistill.runner import label_recipe, run_recipe
from softdistill.store import Encoding, Store, StoreError, topk_encode, topk_logits
from softdistill.store.format import LOCK
from softdistill.data import DataConfig

DATA = {"name": "synthetic", "val_size": 100, "batch_size": 50, "eval_batch_size": 50}
CROP_FLIP = {"crop_padding": 1, "hflip": True}


# ------------------------------------------------------------------------------------------ encodings

def test_full_encodings_round_trip():
    logits = torch.randn(6, 3, 11, generator=torch.Generator().manual_seed(0)) * 5
    exact = Encoding("full", 11)
    assert torch.equal(exact.decode(exact.encode(logits)), logits)
    half = Encoding("full", 11, "float16")
    assert half.record_bytes == 22 and exact.record_bytes == 44
    torch.testing.assert_close(half.decode(half.encode(logits)), logits, rtol=1e-3, atol=1e-3)


def test_the_topk_rule_keeps_the_top_k_and_the_tail_mass_at_t1():
    """z_hat_j = z_j on the top k, tail - log(K - k) elsewhere, tail = logsumexp of the others."""
    z = torch.tensor([[3.0, 1.0, -2.0, 0.5, -1.0]])
    values, indices, tail = topk_encode(z, 2)
    assert indices.tolist() == [[0, 1]] and values.tolist() == [[3.0, 1.0]]
    assert tail.item() == pytest.approx(math.log(math.exp(-2) + math.exp(0.5) + math.exp(-1)))
    rebuilt = topk_logits(values, indices, tail, 5)
    spread = tail.item() - math.log(3)
    torch.testing.assert_close(rebuilt, torch.tensor([[3.0, 1.0, spread, spread, spread]]))
    many = torch.randn(200, 10, generator=torch.Generator().manual_seed(1)) * 3
    enc = Encoding("topk", 10, k=3)
    p, q = torch.softmax(many, 1), torch.softmax(enc.decode(enc.encode(many)), 1)
    top = many.topk(3, dim=1).indices
    torch.testing.assert_close(q.gather(1, top), p.gather(1, top))  # top-k probabilities exact at T = 1
    torch.testing.assert_close(1 - q.gather(1, top).sum(1), 1 - p.gather(1, top).sum(1))  # so is the tail's mass
    kl = lambda a, b: (a * (a.log() - b.log())).sum(1).mean().item()  # noqa: E731
    assert kl(torch.softmax(many / 4, 1), torch.softmax(enc.decode(enc.encode(many)) / 4, 1)) > 1e-4  # T != 1: approximate
    for k in (9, 10):  # one class left out, or none: exact at every temperature
        enc = Encoding("topk", 10, k=k)
        torch.testing.assert_close(torch.softmax(enc.decode(enc.encode(many)) / 4, 1), torch.softmax(many / 4, 1))


def test_encoding_records_and_bad_settings():
    assert Encoding("topk", 100, k=10).record_dtype["indices"].base == np.int16
    assert Encoding("topk", 40000, k=10).record_dtype["indices"].base == np.int32
    assert Encoding("topk", 100, "float16", k=10).record_bytes == 10 * 2 + 10 * 2 + 4
    with pytest.raises(ValueError, match=r"a topk encoding needs 1 <= k <= 10"):
        Encoding("topk", 10, k=11)
    with pytest.raises(ValueError, match="k belongs to the topk encoding only"):
        Encoding("full", 10, k=3)


# ------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained teacher checkpoint on the synthetic data (shared by the tests of this module)."""
    folder = tmp_path_factory.mktemp("teacher")
    raw = {"name": "t", "student": "mlp", "epochs": 2, "data": DATA, "output_dir": str(folder / "runs"),
           "train": {"device": "cpu"}}
    run_recipe(recipe_from_dict(raw), quiet=True)
    return folder / "runs" / "t" / "seed0" / "best.pt"


def write_yaml(path, raw):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def label_recipe_file(folder, teacher, name="store", augment=CROP_FLIP, views=2, **extra):
    raw = {"name": name, "data": {**DATA, "augment": augment, "views": views}, "output_dir": str(folder / "runs"),
           "soft_labels": {"source": "teacher", "checkpoint": str(teacher)}, "shard_samples": 128,
           "train": {"device": "cpu"}, **extra}
    return write_yaml(folder / f"{name}.yaml", raw)


def student_recipe(folder, soft_labels, name, augment=CROP_FLIP, views=2, method=None, **data):
    raw = {"name": name, "student": "mlp", "epochs": 2, "seed": 3, "data": {**DATA, "augment": augment,
                                                                             "views": views, "view_seed": 0, **data},
           "method": method or {"name": "kd", "alpha": 0.7}, "soft_labels": soft_labels,
           "output_dir": str(folder / "runs"), "train": {"device": "cpu"}}
    return write_yaml(folder / f"{name}.yaml", raw)


def store_folder(folder, name="store"):
    return folder / "runs" / name / "seed0"


def weights(run_dir):
    return load_checkpoint(run_dir / "last.pt")["state_dict"]


def shard_hashes(folder):
    return [s["sha256"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]


# ------------------------------------------------------------------------------------------ training from a store

@pytest.mark.parametrize("augment,method", [(CROP_FLIP, {"name": "kd", "alpha": 0.7}), (CROP_FLIP, {"name": "wsl"}),
                                            ({**CROP_FLIP, "mix": "cutmix"}, {"name": "ida", "correction": "replace"})])
def test_a_student_from_a_float32_store_has_the_online_teachers_weights_bit_for_bit(tmp_path, teacher, augment,
                                                                                    method):
    """As many views as epochs: every epoch shows each sample the view the teacher labelled.

    Bit-identity needs the teacher's logits of a sample not to depend on its batch companions:
    the store labels 50 consecutive rows at a time, training shows 50 shuffled rows.  The premise
    is asserted first, so that a BLAS that rounds by batch composition fails here, named.
    """
    label_recipe_file(tmp_path, teacher, augment=augment)
    online = run_recipe(load_recipe(student_recipe(tmp_path, {"source": "teacher", "checkpoint": str(teacher)},
                                                   "online", augment, method=method)), quiet=True)
    stored = load_recipe(student_recipe(tmp_path, {"source": "store", "recipe": "store.yaml"}, "stored", augment,
                                        method=method))
    from_store = run_recipe(stored, quiet=True)
    store = Store(store_folder(tmp_path))
    data = prepare_data("synthetic", val_size=100)
    loader = BatchLoader(data.train, 50, BatchTransform(data.mean, data.std), shuffle=True, plan=stored.view_plan,
                         seed=3)
    model = load_teacher_model(teacher)
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        for batch in loader:
            with torch.inference_mode():
                assert torch.equal(model(batch.x), store.logits(store.rows_of(batch.sample_id), batch.view))
    a, b = weights(tmp_path / "runs" / "online" / "seed3"), weights(tmp_path / "runs" / "stored" / "seed3")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert online["test_acc_last"] == from_store["test_acc_last"]


def load_teacher_model(path):
    from softdistill.checkpoint import model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(path)).eval()


def test_fewer_views_than_epochs_replay_periodically_or_at_random(tmp_path, teacher):
    plan = ViewPlan(seed=2, views=3, crop_padding=1, replay="random")
    ids = torch.arange(400)
    first, again = plan.views_in_epoch(ids, 5), plan.views_in_epoch(ids, 5)
    assert torch.equal(first, again) and set(first.tolist()) == {0, 1, 2}
    assert not torch.equal(first, plan.views_in_epoch(ids, 6))  # a fresh choice each epoch
    counts = torch.bincount(first, minlength=3).double() / len(ids)
    assert counts.sub(1 / 3).abs().max() < 0.08
    assert plan.fingerprint() == ViewPlan(seed=2, views=3, crop_padding=1).fingerprint()  # same views, other order
    with pytest.raises(ValueError, match="replay: random chooses among a fixed number of views"):
        ViewPlan(seed=2, views=0, crop_padding=1, replay="random")
    # a 4-view store serves a 2-view recipe (views 0 and 1 are the same images) over 3 epochs, at random
    label_recipe_file(tmp_path, teacher, views=4)
    recipe = load_recipe(student_recipe(tmp_path, {"source": "store", "recipe": "store.yaml"}, "few", views=2,
                                        replay="random"))
    assert run_recipe(recipe, quiet=True)["finished"]


def test_hard_refuses_a_store_and_the_compatibility_rules_hold(tmp_path):
    base = {"name": "c", "student": "mlp", "epochs": 1, "data": {**DATA, "views": 2, "augment": CROP_FLIP},
            "soft_labels": {"source": "store", "path": "store"}}
    with pytest.raises(ConfigError, match="method 'hard' needs soft labels of new inputs, computed when asked, which "
                                          "soft_labels.source 'store' cannot serve"):
        recipe_from_dict({**base, "method": {"name": "hard"}})
    for method in ("kd", "wsl", "soft-label"):
        recipe_from_dict({**base, "method": {"name": method}})
    recipe_from_dict({**base, "method": {"name": "ida"}, "data": {**base["data"], "augment": {"mix": "mixup"}}})
    with pytest.raises(ConfigError, match="source 'store' holds the soft labels of a fixed set of views"):
        recipe_from_dict({**base, "method": {"name": "kd"}, "data": {**base["data"], "views": 0}})


# ------------------------------------------------------------------------------------------ labelling

def test_an_interrupted_label_run_continues_and_never_accepts_a_damaged_shard(tmp_path, teacher, monkeypatch, capsys):
    whole = load_recipe(label_recipe_file(tmp_path / "whole", teacher))
    label_recipe(whole, quiet=True)
    cut = load_recipe(label_recipe_file(tmp_path / "cut", teacher))
    original = writer.write_shard
    written = []

    def crash_after_two(folder, index, records):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(original(folder, index, records))
        return written[-1]

    monkeypatch.setattr(writer, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        label_recipe(cut, quiet=True)
    folder = store_folder(tmp_path / "cut")
    assert not (folder / LOCK).exists() and not list(folder.glob("*.tmp"))  # lock released, no stray file
    with pytest.raises(StoreError, match="is an incomplete store: labelling stopped"):
        Store(folder)
    damaged = written[1]
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)  # the bytes no longer match the hash in the name
    (folder / "shard-00003-0123456789abcdef.npy").write_bytes(b"half")  # a file that is no shard
    labelled = []
    monkeypatch.setattr(writer, "write_shard", lambda f, i, records: labelled.append(i) or original(f, i, records))
    summary = label_recipe(cut, quiet=True)
    assert labelled == [1, 2, 3] and summary["labelled_records"] == (128 + 128 + 116) * 2  # shards 1, 2, 3 again
    assert shard_hashes(folder) == shard_hashes(store_folder(tmp_path / "whole"))
    assert label_recipe(cut, quiet=False) is None and "the store is complete; nothing to label" in capsys.readouterr().out


def recipe_worker(rank, world_size, port, recipe_path):
    """Process ``rank`` of ``world_size`` running the recipe at ``recipe_path`` (a label recipe labels its store)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from softdistill.runtime import shutdown_distributed

    try:
        run_recipe(load_recipe(recipe_path), quiet=True)
    finally:
        shutdown_distributed()


def test_two_ranks_label_the_same_store_as_one(tmp_path, teacher, free_port):
    mix = {**CROP_FLIP, "mix": "mixup"}
    label_recipe(load_recipe(label_recipe_file(tmp_path / "one", teacher, augment=mix)), quiet=True)
    two = label_recipe_file(tmp_path / "two", teacher, augment=mix)
    mp.start_processes(recipe_worker, args=(2, free_port, two), nprocs=2, join=True, start_method="spawn")
    a, b = (json.loads((store_folder(tmp_path / part) / "manifest.json").read_text()) for part in ("one", "two"))
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]] and len(a["shards"]) == 4
    assert a["samples_file"] == b["samples_file"] and a["data"] == b["data"]


def test_two_writers_are_refused_and_a_stale_lock_is_taken_over(tmp_path, teacher, capsys):
    recipe = load_recipe(label_recipe_file(tmp_path, teacher))
    folder = store_folder(tmp_path)
    folder.mkdir(parents=True)
    with hold_lock(folder / LOCK):  # held as another process holds it: a lock of another open file
        with pytest.raises(StoreError, match=r"is being written by another 'softdistill label' process \(pid \d+ .*two writers "
                                             "on one store are refused"):
            label_recipe(recipe, quiet=True)
    dead = mp.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    (folder / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0}))
    label_recipe(recipe, quiet=False)
    assert f"took over the stale lock of pid {dead.pid}" in capsys.readouterr().out
    assert not (folder / LOCK).exists() and Store(folder).views == 2


def test_labelling_into_a_training_runs_folder_is_refused_and_the_run_kept(tmp_path, teacher, capsys):
    runs = teacher.parent.parent.parent  # the teacher's OUTPUT_DIR: its run is OUTPUT_DIR/t/seed0
    recipe = label_recipe_file(tmp_path, teacher, name="t", output_dir=str(runs))
    before = sorted(p.name for p in teacher.parent.iterdir())
    assert main(["label", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(r"seed0 holds a training run \(.*best\.pt.*\), not a store: choose another output folder or "
                     r"name for the label recipe$", err) and "\n" not in err
    assert sorted(p.name for p in teacher.parent.iterdir()) == before  # nothing written, nothing lost


def test_a_full_disk_stops_labelling_with_the_store_resumable(tmp_path, teacher, monkeypatch):
    recipe = load_recipe(label_recipe_file(tmp_path, teacher))
    real_write = sharded.write_atomic
    calls = []

    def full_disk(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    def disk_fills(path, write):
        calls.append(path)
        return real_write(path, full_disk if len(calls) == 3 else write)  # the sample table, shard 0, then shard 1

    monkeypatch.setattr(sharded, "write_atomic", disk_fills)
    with pytest.raises(StoreError, match=r"the disk is full while writing shard 1 .*shards written so far are complete "
                                         "and kept .*run the same command again to continue"):
        label_recipe(recipe, quiet=True)
    assert not list(store_folder(tmp_path).glob("*.tmp"))  # the half-written shard was removed
    monkeypatch.setattr(sharded, "write_atomic", real_write)
    assert label_recipe(recipe, quiet=True)["labelled_records"] == (128 + 128 + 116) * 2
    assert Store(store_folder(tmp_path)).verify() == []


# ------------------------------------------------------------------------------------------ bad input

def test_a_store_for_another_view_plan_is_refused_before_anything_is_labelled(tmp_path, teacher):
    label_recipe_file(tmp_path, teacher, augment={"hflip": True})
    with pytest.raises(ConfigError, match=r"holds the views of another view plan \(crop_padding 0 in the store, 1 in "
                                          r"the recipe\): the student would see images the teacher did not label"):
        load_recipe(student_recipe(tmp_path, {"source": "store", "recipe": "store.yaml"}, "s"))
    label_recipe_file(tmp_path, teacher, name="few", views=2)
    with pytest.raises(ConfigError, match=r"holds 2 view\(s\) per sample, the recipe asks for 3 \(data.views\)"):
        load_recipe(student_recipe(tmp_path, {"source": "store", "recipe": "few.yaml"}, "s", views=3))
    with pytest.raises(ConfigError, match=r"is made for other data \(data.per_class: None in the label recipe, 20 here\)"):
        load_recipe(student_recipe(tmp_path, {"source": "store", "recipe": "few.yaml"}, "s", per_class=20))
    assert not (tmp_path / "runs").exists()  # refused when the recipe loaded: nothing labelled or trained


def test_stores_named_by_path_are_checked_against_the_run(tmp_path, teacher, capsys):
    label_recipe(load_recipe(label_recipe_file(tmp_path, teacher)), quiet=True)
    folder = store_folder(tmp_path)
    other_seed = student_recipe(tmp_path, {"source": "store", "path": str(folder)}, "seed", view_seed=9)
    with pytest.raises(StoreError, match=r"holds the views of another view plan \(seed 0 in the store, 9 in the recipe"):
        run_recipe(load_recipe(other_seed), quiet=True)
    other_teacher = tmp_path / "other.pt"
    shutil.copy(teacher, other_teacher)
    with open(other_teacher, "ab") as handle:
        handle.write(b"\0")  # another file: another sha256
    named = student_recipe(tmp_path, {"source": "store", "path": str(folder), "teacher": str(other_teacher)}, "who")
    with pytest.raises(StoreError, match=r"was labelled by another teacher: .*best.pt \(sha256 [0-9a-f]{12}\.\.\.\); "
                                         r"soft_labels.teacher names .*other.pt"):
        run_recipe(load_recipe(named), quiet=True)
    assert main(["train", str(named), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "was labelled by another teacher" in err and "\n" not in err and "Traceback" not in err
    same = student_recipe(tmp_path, {"source": "store", "path": str(folder), "teacher": str(teacher)}, "same")
    assert run_recipe(load_recipe(same), quiet=True)["finished"]
    subset = student_recipe(tmp_path, {"source": "store", "path": str(folder)}, "subset", per_class=20)
    assert run_recipe(load_recipe(subset), quiet=True)["finished"]  # every sample of a subset is in the store
    store = Store(folder)
    digits = prepare_data("digits", val_size=100)
    spec = DataConfig.of({**DATA, "name": "digits", "split_seed": 0, "normalize": True})
    where = f"store {folder}"
    [message] = store.fit_problems(digits.train.ids, digits.train.labels, store.plan, num_classes=10,
                                   data_identity=spec.split_identity())
    assert message.startswith(f"{where} was labelled on other data (data.name: 'synthetic' in the store, 'digits' here")
    assert re.search(r"\): \d+ of the 1337 samples are not in it \(e.g. sample id \d+\); the store has 500 samples$",
                     message)
    assert store.fit_problems(digits.train.ids, digits.train.labels, ViewPlan(), num_classes=7) == [
        f"{where} holds soft labels of 10 classes, the data has 7"]
    few = prepare_data("synthetic", val_size=100, per_class=20).train
    assert store.fit_problems(few.ids, few.labels, store.plan) == []  # a subset of single views is served
    [mixed, views] = store.fit_problems(few.ids, few.labels, ViewPlan(mix="mixup", views=2))
    assert mixed == (f"{where} was labelled on another split (500 samples, this split 200 or another order): mixed "
                     "views pair rows of the labelled split, so they need the same split")
    assert views.startswith(f"{where} holds the views of another view plan")
    with pytest.raises(StoreError, match="fresh view every epoch"):
        store.check_fit(few.ids, few.labels, store.plan.model_copy(update={"views": 0}))


def test_damaged_and_foreign_folders_are_named(tmp_path, teacher, capsys):
    recipe = load_recipe(label_recipe_file(tmp_path, teacher))
    label_recipe(recipe, quiet=True)
    folder = store_folder(tmp_path)
    assert main(["store", "verify", str(folder)]) == 0 and "intact; 500 samples x 2 views" in capsys.readouterr().out
    shards = sorted(folder.glob("shard-*.npy"))
    data = bytearray(shards[1].read_bytes())
    data[-1] ^= 0xFF
    shards[1].write_bytes(bytes(data))
    assert main(["store", "verify", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"shard 1 {shards[1].name}: its sha256 differs from the manifest's (the file is damaged or was replaced)" in err
    shards[2].write_bytes(shards[2].read_bytes()[:100])
    with pytest.raises(StoreError, match=rf"shard 2 {shards[2].name} is truncated \(100 bytes, the manifest says"):
        Store(folder)
    with pytest.raises(StoreError, match=r"is not a store: it has no manifest.json"):
        Store(tmp_path)
    another = load_recipe(label_recipe_file(tmp_path, teacher, views=3))
    with pytest.raises(StoreError, match=r"holds another store \(labelled with other settings\):(.|\n)*  views.views: 2 -> 3"):
        label_recipe(another, quiet=True)
    shards[1].unlink()
    shards[2].unlink()
    with pytest.raises(StoreError, match=rf"shard 1 {shards[1].name} is missing"):
        Store(folder)
    assert label_recipe(recipe, quiet=True)["labelled_records"] == 2 * 128 * 2  # only the deleted shards again
    assert Store(folder).verify() == []


# ------------------------------------------------------------------------------------------ inspect, CLI

def test_inspect_reports_on_a_store_with_order_diagnostics_on_mixed_views(tmp_path, teacher, capsys):
    recipe = load_recipe(label_recipe_file(tmp_path, teacher, augment={"mix": "mixup"}, encoding={"kind": "topk", "k": 3}))
    assert main(["label", str(recipe.recipe_file), "--quiet"]) == 0
    assert main(["inspect", str(store_folder(tmp_path)), "--output", str(tmp_path / "report")]) == 0
    assert f"{store_folder(tmp_path)}: 1000 soft labels, top-1 accuracy" in capsys.readouterr().out
    assert (tmp_path / "report" / "report.md").is_file()
    result = inspect_soft_labels(store_folder(tmp_path))
    s = result.summary
    assert s["source"]["kind"] == "store" and s["rows"] == 1000 and s["mixup"]["samples"] == 1000
    assert 0 <= s["mixup"]["teacher"]["top2_hit_either"] <= 1 and "mixup.png" in result.files
    store = Store(store_folder(tmp_path))
    probs = torch.softmax(store.all_logits().reshape(1000, 10), 1)
    expected = 100 * (probs.argmax(1) == store.labels.repeat_interleave(2)).double().mean().item()
    assert s["soft_labels"]["accuracy"] == pytest.approx(expected)


def test_label_recipes_are_checked_when_they_load():
    base = {"name": "l", "data": {**DATA, "augment": CROP_FLIP, "views": 2},
            "soft_labels": {"source": "teacher", "checkpoint": "t.pt"}}
    assert LabelRecipe.from_dict(base).view_plan.distinct_views == 2
    cases = [
        ({"data": {**DATA, "augment": CROP_FLIP}}, r"data.views: a store holds a fixed number of views per sample"),
        ({"data": {**DATA, "augment": {"mix": "mixup"}, "views": 2}, "soft_labels": {"source": "cache",
                                                                                      "checkpoint": "t.pt"}},
         r"soft_labels.source 'cache' cannot label soft labels of mixed \(mixup / cutmix\) views; use source: teacher"),
        ({"soft_labels": {"source": "store", "path": "s"}}, "a label recipe labels from a teacher .*not from a store"),
        ({"soft_labels": None}, "soft_labels: required: the source that labels"),
        ({"encoding": {"kind": "topk"}}, "encoding.k is needed for kind: topk and only there"),
        ({"epochs": 3}, r"epochs: unknown key"),
    ]
    for change, message in cases:
        raw = {k: v for k, v in {**base, **change}.items() if v is not None}
        with pytest.raises(ConfigError, match=message):
            LabelRecipe.from_dict(raw)


# ------------------------------------------------------------------------------------------ untrusted files

def edit_manifest(folder, change, reseal=True):
    """Apply ``change(manifest)`` to a store's manifest by hand; ``reseal``: recompute its own hash, as a
    careful forger would, so that the rule under test is the one that must catch the edit."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(sharded.seal(manifest) if reseal else manifest))


@pytest.fixture
def labelled(tmp_path, teacher):
    """A complete store (4 shards of 128, 128, 128, 116 samples x 2 views) and its label recipe."""
    recipe = load_recipe(label_recipe_file(tmp_path, teacher))
    label_recipe(recipe, quiet=True)
    return store_folder(tmp_path), recipe


def test_an_edited_manifest_is_refused_by_its_own_hash(labelled):
    folder, _ = labelled
    edit_manifest(folder, lambda m: m["views"].update(crop_padding=2), reseal=False)
    with pytest.raises(StoreError, match=r"manifest.json: the manifest was changed after it was written: its content no "
                                         r"longer has the sha256 it records \(manifest_sha256\)"):
        Store(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["views"].update(crop_padding=2, fingerprint="0" * 16),
     r"views.fingerprint is '0{16}', the view plan the manifest records has '[0-9a-f]{16}': the views were edited"),
    (lambda m: m["shards"].__setitem__(slice(0, 2), [{**m["shards"][0], **{k: m["shards"][1][k] for k in ("name", "sha256")}},
                                                   {**m["shards"][1], **{k: m["shards"][0][k] for k in ("name", "sha256")}}]),
     r"shard entry 0: name 'shard-00001-[0-9a-f]{16}.npy' \(expected 'shard-00000-"),
    (lambda m: m["shards"][1].update(first=100), r"shard entry 1: first 100 \(expected 128\)"),
    (lambda m: m["shards"].pop(2), r"the shard table lists 3 shard\(s\); 500 samples in shards of 128 make 4: an entry "
                                   r"was deleted or added"),
    (lambda m: m["shards"][0].update(first="0"), r"shards.0.first: input should be a valid integer"),
    (lambda m: m.pop("samples_file"), r"samples_file: field required"),
])
def test_every_manifest_rule_is_checked_when_a_store_opens(labelled, edit, message):
    folder, _ = labelled
    edit_manifest(folder, edit)
    with pytest.raises(StoreError, match=message):
        Store(folder)


def test_a_manifest_names_files_only_inside_its_store(labelled, tmp_path):
    folder, _ = labelled
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = sorted(folder.glob("shard-00001-*.npy"))[0]
    shutil.copy(shard, outside / shard.name)
    for name in (f"../../../outside/{shard.name}", str(outside / shard.name)):  # the store is tmp/runs/store/seed0
        edit_manifest(folder, lambda m: m["shards"][1].update(name=name))
        with pytest.raises(StoreError, match=r"is not the name of a file inside the folder"):
            Store(folder)
    edit_manifest(folder, lambda m: m["shards"][1].update(name=shard.name))
    Store(folder)
    shard.unlink()
    shard.symlink_to(outside / shard.name)  # the same bytes, but leading out of the store
    with pytest.raises(StoreError, match=rf"shard 1: {shard.name} is a symbolic link to {outside / shard.name}, "
                                         "outside the folder"):
        Store(folder)


def test_verify_reports_every_problem_it_is_shown(labelled, capsys):
    folder, _ = labelled
    shards = sorted(folder.glob("shard-*.npy"))
    data = bytearray(shards[0].read_bytes())
    data[-1] ^= 0xFF
    shards[0].write_bytes(bytes(data))
    shards[3].write_bytes(shards[3].read_bytes()[:-4])
    edit_manifest(folder, lambda m: m["shards"][1].update(first=5), reseal=False)
    assert main(["verify", str(folder)]) == 2
    err = capsys.readouterr().err
    for expected in ("the manifest was changed after it was written", "shard entry 1: first 5 (expected 128)",
                     f"shard 0 {shards[0].name}: its sha256 differs", f"shard 3 {shards[3].name} is truncated",
                     "Delete the store and label it again"):
        assert expected in err, expected
    assert "4 problem(s) found" in err and "Traceback" not in err


def test_a_store_of_the_version_before_the_self_hash_is_read_by_every_rule(labelled, capsys):
    folder, _ = labelled

    def legacy(m):
        m.pop("manifest_sha256")
        m["format"] = "softdistill-store-v1"

    edit_manifest(folder, legacy, reseal=False)
    assert Store(folder).views == 2
    assert main(["store", "verify", str(folder)]) == 0  # the alias of 'softdistill verify'
    assert "carries no hash of its own" in capsys.readouterr().out
    edit_manifest(folder, lambda m: m["views"].update(crop_padding=2), reseal=False)
    with pytest.raises(StoreError, match="views.fingerprint is .* the views were edited"):
        Store(folder)
    edit_manifest(folder, lambda m: m["views"].update(crop_padding=1), reseal=False)
    edit_manifest(folder, lambda m: m["shards"].pop(), reseal=False)
    with pytest.raises(StoreError, match="an entry was deleted or added"):
        Store(folder)


def test_a_deleted_entry_stops_training_when_the_store_opens_not_mid_epoch(labelled, tmp_path, capsys):
    folder, _ = labelled
    edit_manifest(folder, lambda m: m["shards"].pop())
    recipe = student_recipe(tmp_path, {"source": "store", "path": str(folder)}, "deleted")
    assert main(["train", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "an entry was deleted or added" in err and "\n" not in err and "IndexError" not in err
    assert not (tmp_path / "runs" / "deleted").exists() or not list((tmp_path / "runs" / "deleted").rglob("*.pt"))


def test_a_shard_with_a_broken_header_is_named(labelled):
    folder, _ = labelled
    shard = sorted(folder.glob("shard-*.npy"))[2]
    data = shard.read_bytes()
    length = int.from_bytes(data[8:10], "little")  # a format 1.0 header: magic, version, 2-byte length, text
    objects = "{'descr': '|O', 'fortran_order': False, 'shape': (128, 2), }".ljust(length - 1) + "\n"
    for header in (objects, "{'descr': [('logits', ".ljust(length - 1) + "\n"):  # object records; a cut header
        shard.write_bytes(data[:10] + header.encode("latin1") + data[10 + length:])
        with pytest.raises(StoreError, match=rf"{shard}: not a readable .npy file of plain records"):
            Store(folder)


def test_label_repairs_a_damaged_complete_store_and_training_from_it_works(labelled, tmp_path, monkeypatch, capsys):
    folder, recipe = labelled
    before = shard_hashes(folder)
    shards = sorted(folder.glob("shard-*.npy"))
    shards[1].write_bytes(shards[1].read_bytes()[:-100])  # truncated
    student = student_recipe(tmp_path, {"source": "store", "path": str(folder)}, "s1")
    assert main(["train", str(student), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is truncated" in err and "'softdistill label RECIPE --verify' keeps the intact shards" in err
    labelled_again = []
    original = writer.write_shard
    monkeypatch.setattr(writer, "write_shard", lambda f, i, records: labelled_again.append(i) or original(f, i, records))
    assert main(["label", str(recipe.recipe_file), "--quiet"]) == 0
    assert labelled_again == [1] and shard_hashes(folder) == before
    assert main(["train", str(student), "--quiet"]) == 0
    data = bytearray(shards[2].read_bytes())
    data[-1] ^= 0xFF  # a flipped bit: same size and header
    shards[2].write_bytes(bytes(data))
    assert label_recipe(recipe, quiet=True) is None  # sizes and headers only: nothing to repair seen
    hashed = student_recipe(tmp_path, {"source": "store", "path": str(folder), "verify": True}, "s2")
    assert main(["train", str(hashed), "--quiet"]) == 2
    assert "its sha256 differs from the manifest's" in capsys.readouterr().err
    assert main(["label", str(recipe.recipe_file), "--verify", "--quiet"]) == 0
    assert labelled_again == [1, 2] and shard_hashes(folder) == before and Store(folder).verify() == []
    assert main(["train", str(hashed), "--quiet"]) == 0


def test_a_label_lock_link_is_refused_and_no_store_file_is_written_through_a_link(tmp_path, teacher, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    recipe = load_recipe(label_recipe_file(tmp_path, teacher))
    folder = store_folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / LOCK).symlink_to(victim)
    assert main(["label", str(recipe.recipe_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the lock file {folder / LOCK} is a symbolic link" in err and victim.read_text() == "precious"
    (folder / LOCK).unlink()
    (folder / "manifest.json").symlink_to(victim)
    assert main(["label", str(recipe.recipe_file), "--quiet"]) == 2
    assert f"manifest.json is a symbolic link to {victim}, outside the folder" in capsys.readouterr().err
    (folder / "manifest.json").unlink()
    reference = load_recipe(label_recipe_file(tmp_path / "reference", teacher))
    label_recipe(reference, quiet=True)  # the same shards: their names (with their hashes) are known
    for name in ["samples.npy", *(p.name for p in store_folder(tmp_path / "reference").glob("shard-*.npy"))]:
        (folder / name).symlink_to(victim)  # (a summary.json would make the folder a training run's)
    label_recipe(recipe, quiet=True)
    assert victim.read_text() == "precious" and Store(folder).verify() == []
    assert not any(p.is_symlink() for p in folder.iterdir())


def test_a_store_recipe_whose_folder_cannot_be_made_is_one_paragraph(tmp_path, teacher, capsys):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file")
    label_recipe_file(tmp_path, teacher)
    student = student_recipe(tmp_path, {"source": "store", "recipe": "store.yaml"}, "s")
    # the store (labelled first, in the student's output_dir) cannot get its folder
    assert main(["train", str(student), "-o", f"output_dir={blocker}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot create the folder {blocker / 'store' / 'seed0'}: {blocker} is a file, not a folder" in err
    assert "\n" not in err and "Traceback" not in err and blocker.read_text() == "a file"


def test_settings_that_are_not_part_of_the_identity_do_not_make_another_store(tmp_path, teacher):
    """A store's labeller identity leaves out the source's settings declared not part of a run's identity, so
    a store labelled before such a setting existed, or with another value of it, is the same store."""
    recipe = load_recipe(label_recipe_file(tmp_path, teacher))
    label_recipe(recipe, quiet=True)
    recorded = json.loads((store_folder(tmp_path) / "manifest.json").read_text())["teacher"]["soft_labels"]
    assert "allow_other_data" not in recorded and recorded["checkpoint"] == str(teacher)
    again = load_recipe(label_recipe_file(tmp_path, teacher), ["soft_labels.allow_other_data=true"])
    assert label_recipe(again, quiet=True) is None  # complete and sound: nothing to label, not "another store"
