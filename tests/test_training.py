"""End-to-end behaviour of the trainer through recipes: outputs, determinism, resume, DDP, errors."""

import dataclasses
import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from softdistill.atomic import FileWriteError
from softdistill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from softdistill.config import ConfigError, recipe_from_dict
from softdistill.engine import NonFiniteLossError
from softdistill.runs import RunStateError
from softdistill.runtime.distributed import DEFAULT_DIST_TIMEOUT, dist_timeout
from softdistill.runner import run_recipe


def make_recipe(tmp_path, **changes):
    raw = {
        "name": "syn", "student": "mlp", "epochs": 3, "seed": 1,
        "data": {"name": "synthetic", "val_size": 100, "batch_size": 50},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "output_dir": str(tmp_path / "runs"),
        "train": {"device": "cpu"},
    }
    for key, value in changes.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return recipe_from_dict(raw)


def weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / name)["state_dict"]


def assert_same_weights(a, b, **tol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tol)


def test_run_writes_folder_and_learns(tmp_path):
    recipe = make_recipe(tmp_path, epochs=4)
    summary = run_recipe(recipe, quiet=True)
    run = recipe.run_dir
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for key in ("train/loss", "train/ce", "train/acc", "val/acc", "test/acc", "test/loss", "lr", "seconds"):
        assert key in records[0]
    assert records[-1]["train/loss"] < records[0]["train/loss"]
    assert summary["test_acc_last"] == records[-1]["test/acc"]
    assert summary["test_acc_best"] == max(r["test/acc"] for r in records)
    assert summary["test_acc_last"] > 30.0  # 10 classes: chance is 10 %
    assert json.loads((run / "summary.json").read_text()) == summary
    assert load_checkpoint(run / "best.pt")["epoch"] == summary["selected_epoch"]


def test_eval_every_evaluates_on_schedule_and_after_the_last_epoch(tmp_path):
    recipe = make_recipe(tmp_path, epochs=5, train={"device": "cpu", "eval_every": 2})
    summary = run_recipe(recipe, quiet=True)
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "test/acc" in r] == [2, 4, 5]
    assert "train/loss" in records[0] and "test/acc" not in records[0]
    assert summary["best_test_epoch"] in (2, 4, 5) and summary["test_acc_last"] == records[-1]["test/acc"]


def test_bf16_autocast_on_cpu_learns_like_float32_and_fp16_needs_cuda(tmp_path):
    fp32 = run_recipe(make_recipe(tmp_path / "fp32", epochs=3), quiet=True)
    recipe = make_recipe(tmp_path / "bf16", epochs=3, train={"device": "cpu", "amp": "bf16"})
    bf16 = run_recipe(recipe, quiet=True)
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train/loss"] < records[0]["train/loss"]
    assert abs(bf16["test_acc_last"] - fp32["test_acc_last"]) < 10.0 and bf16["test_acc_last"] > 20.0
    assert all(v.dtype == torch.float32 for v in load_checkpoint(recipe.run_dir / "last.pt")["state_dict"].values()
               if v.is_floating_point())  # autocast leaves the weights in float32
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        run_recipe(make_recipe(tmp_path / "f", train={"device": "cpu", "amp": "fp16"}), quiet=True)


def test_same_seed_same_weights_different_seed_differs(tmp_path):
    a = make_recipe(tmp_path / "a", epochs=2)
    b = make_recipe(tmp_path / "b", epochs=2)
    c = make_recipe(tmp_path / "c", epochs=2, seed=2)
    for r in (a, b, c):
        run_recipe(r, quiet=True)
    assert_same_weights(weights(a.run_dir), weights(b.run_dir), rtol=0, atol=0)
    assert not torch.equal(weights(a.run_dir)["fc.weight"], weights(c.run_dir)["fc.weight"])


def test_resume_equals_uninterrupted_run(tmp_path, run_until_interrupted):
    full = make_recipe(tmp_path / "full", epochs=3, data__augment={"crop_padding": 1, "hflip": True})
    run_recipe(full, quiet=True)

    cut = make_recipe(tmp_path / "cut", epochs=3, data__augment={"crop_padding": 1, "hflip": True})
    run_until_interrupted(cut, epoch=3)
    assert load_checkpoint(cut.run_dir / "last.pt")["epoch"] == 2
    assert not (cut.run_dir / "summary.json").exists()

    with pytest.raises(RunStateError, match="holds an unfinished run of this recipe: continue it with --resume"):
        run_recipe(cut, quiet=True)
    summary = run_recipe(cut, resume=True, quiet=True)
    assert_same_weights(weights(full.run_dir), weights(cut.run_dir), rtol=0, atol=0)
    full_summary = json.loads((full.run_dir / "summary.json").read_text())
    assert summary["test_acc_last"] == full_summary["test_acc_last"]
    assert len((cut.run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_errors(tmp_path):
    recipe = make_recipe(tmp_path, epochs=1)
    with pytest.raises(RunStateError, match="nothing to resume: no checkpoint"):
        run_recipe(recipe, resume=True, quiet=True)
    summary = run_recipe(recipe, quiet=True)
    stamp = (recipe.run_dir / "last.pt").stat().st_mtime_ns
    assert run_recipe(recipe, resume=True, quiet=True) == summary  # finished: left as it is
    assert (recipe.run_dir / "last.pt").stat().st_mtime_ns == stamp
    changed = make_recipe(tmp_path, epochs=1, optim__lr=0.5)
    with pytest.raises(RunStateError, match="optim.lr: 0.05 -> 0.5"):
        run_recipe(changed, resume=True, quiet=True)


def test_starting_over_an_existing_run_says_what_it_holds_what_differs_and_what_to_do(tmp_path, run_until_interrupted):
    finished = make_recipe(tmp_path, epochs=1)
    run_recipe(finished, quiet=True)
    with pytest.raises(RunStateError) as refused:
        run_recipe(finished, quiet=True)
    assert str(refused.value) == (
        f"{finished.run_dir} holds a finished run of this recipe (summary.json): nothing to train. To train it again, "
        f"choose another output folder (-o output_dir=FOLDER) or name (-o name=NAME), or delete {finished.run_dir}.")
    with pytest.raises(RunStateError) as refused:  # another version of the recipe: the differences come first
        run_recipe(make_recipe(tmp_path, epochs=2, optim__lr=0.5), quiet=True)
    assert str(refused.value) == (
        f"{finished.run_dir} holds a finished run of another version of this recipe:\n  epochs: 1 -> 2\n"
        "  optim.lr: 0.05 -> 0.5\nTo keep both, choose another output folder (-o output_dir=FOLDER) or name "
        f"(-o name=NAME); to replace it, delete {finished.run_dir}. (--resume continues a run only with the recipe "
        "it was started with.)")
    unfinished = make_recipe(tmp_path / "b", epochs=3)
    run_until_interrupted(unfinished, epoch=2)
    (unfinished.run_dir / "config.yaml").unlink()  # the recipe is read from last.pt then
    with pytest.raises(RunStateError, match=r"holds an unfinished run of another version of this recipe:\n  "
                                            r"optim.lr: 0.05 -> 0.5\nTo keep both"):
        run_recipe(make_recipe(tmp_path / "b", epochs=3, optim__lr=0.5), quiet=True)


def test_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    recipe = make_recipe(tmp_path, epochs=1)
    run_recipe(recipe, quiet=True)
    last = recipe.run_dir / "last.pt"
    data = last.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch file"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a softdistill checkpoint"):
        load_checkpoint(foreign)
    # a checkpoint of another model used as a teacher of the wrong class count
    from softdistill.soft_labels import load_teacher

    with pytest.raises(CheckpointError, match="predicts 10 classes but the data has 100"):
        load_teacher(last, 100, 1, [0.0], [1.0])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"x": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(FileWriteError, match=r"c\.pt: No space left on device\. The previous version of c\.pt"):
        save_checkpoint({"x": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["x"] == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_run_files_follow_the_umask_and_a_resume_removes_stale_temporaries(tmp_path, run_until_interrupted):
    recipe = make_recipe(tmp_path, epochs=3)
    old = os.umask(0o022)
    try:
        run_until_interrupted(recipe, 2)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = recipe.run_dir / f".last.pt.{dead.pid}.0123456789abcdef.tmp"  # what a kill mid-write leaves
        stale.write_bytes(b"PK partial")
        run_recipe(recipe, resume=True, quiet=True)
    finally:
        os.umask(old)
    files = sorted(p.name for p in recipe.run_dir.iterdir())
    assert files == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "summary.json"]
    assert {stat.S_IMODE((recipe.run_dir / name).stat().st_mode) for name in files} == {0o644}


def test_nan_loss_stops_with_epoch_step_and_term(tmp_path):
    recipe = make_recipe(tmp_path, epochs=3, optim__lr=1.0e6, optim__momentum=0.0, schedule={"name": "constant"})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch \d+, step \d+: term ce.*"
                                                 r"outputs are non-finite: training diverged. Lower the learning rate"):
        run_recipe(recipe, quiet=True)


def test_non_finite_inputs_are_named_as_the_cause(tmp_path, monkeypatch):
    import softdistill.build as build

    real_load = build.load_data
    monkeypatch.setattr(build, "load_data", lambda recipe: dataclasses.replace(real_load(recipe), std=(0.0,)))
    with pytest.raises(NonFiniteLossError, match="The input batch itself holds NaN or infinite values"):
        run_recipe(make_recipe(tmp_path, epochs=1), quiet=True)


@pytest.fixture(scope="module")
def broken_teacher(tmp_path_factory):
    """A teacher checkpoint whose weights hold NaN (what a diverged run may have saved)."""
    tmp = tmp_path_factory.mktemp("teacher")
    teacher = make_recipe(tmp, name="teacher", epochs=1)
    run_recipe(teacher, quiet=True)
    payload = load_checkpoint(teacher.run_dir / "last.pt")
    next(iter(payload["state_dict"].values())).fill_(float("nan"))
    save_checkpoint(payload, tmp / "nan-teacher.pt")
    return tmp / "nan-teacher.pt"


def test_a_non_finite_teacher_is_named_not_the_learning_rate(tmp_path, broken_teacher):
    recipe = make_recipe(tmp_path, epochs=1, method={"name": "kd", "alpha": 0.5},
                         soft_labels={"source": "teacher", "checkpoint": str(broken_teacher)})
    with pytest.raises(NonFiniteLossError) as info:
        run_recipe(recipe, quiet=True)
    message = str(info.value)
    assert "term kd" in message and "check the soft-label source" in message and "learning rate" not in message


def test_an_absurd_temperature_is_named_before_any_nan(tmp_path):
    recipe = make_recipe(tmp_path, epochs=1, method={"name": "tfkd-reg", "temperature": 1e30})
    with pytest.raises(ValueError, match=r"temperature 1e\+30 is absurdly large"):
        run_recipe(recipe, quiet=True)


def test_kd_from_teacher_recipe_trains_teacher_once_and_caches(tmp_path):
    teacher_yaml = tmp_path / "teacher.yaml"
    teacher_yaml.write_text("name: syn-teacher\nstudent: mlp\nepochs: 2\n"
                            "data: {name: synthetic, val_size: 100, batch_size: 50}\n")
    raw = {"soft_labels": {"source": "cache", "recipe": str(teacher_yaml)}, "method": {"name": "kd", "alpha": 0.5}}
    recipe = make_recipe(tmp_path, epochs=2, student="cnn-small", **raw)
    run_recipe(recipe, quiet=True)
    teacher_run = tmp_path / "runs" / "syn-teacher" / "seed0"
    assert (teacher_run / "summary.json").exists()  # trained into the student's output_dir
    stamp = (teacher_run / "best.pt").stat().st_mtime_ns
    run_recipe(make_recipe(tmp_path / "again", epochs=1, student="cnn-small",
                           output_dir=str(tmp_path / "runs"), name="syn2", **raw), quiet=True)
    assert (teacher_run / "best.pt").stat().st_mtime_ns == stamp  # reused, not retrained
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "train/kd" in records[0] and "train/ce" in records[0]


def test_recipe_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="method 'kd' learns from soft labels: add a soft_labels section"):
        make_recipe(tmp_path, method={"name": "kd"})
    with pytest.raises(ConfigError, match="source 'cache' holds the soft labels of a fixed set of views(.|\n)*set data.views"):
        make_recipe(tmp_path, method={"name": "kd"}, soft_labels={"source": "cache", "checkpoint": "x.pt"},
                    data__augment={"hflip": True})
    missing = make_recipe(tmp_path, method={"name": "kd"}, soft_labels={"source": "teacher", "checkpoint": "x.pt"})
    with pytest.raises(ConfigError, match=r"soft_labels.checkpoint: no file .*x.pt \(paths in a recipe are relative"):
        run_recipe(missing, quiet=True)
    assert not missing.run_dir.exists()  # refused before anything was written


# ------------------------------------------------------------------------------- DDP

def _ddp_worker(rank, world_size, port, tmp, changes):
    """One process of a ``world_size``-process run of ``make_recipe(tmp, **changes)``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from softdistill.runtime import shutdown_distributed

    try:
        run_recipe(make_recipe(tmp, **changes), quiet=True)
    finally:
        shutdown_distributed()


def run_two_processes(tmp, port, **changes):
    """The run folder of a 2-process (gloo) run of ``make_recipe(tmp, **changes)``."""
    mp.start_processes(_ddp_worker, args=(2, port, tmp, changes), nprocs=2, join=True, start_method="spawn")
    return make_recipe(tmp, **changes).run_dir


def test_two_process_ddp_matches_single_process(tmp_path, free_port):
    torch.set_num_threads(1)
    augment = {"crop_padding": 1, "hflip": True}
    single = make_recipe(tmp_path / "single", data__augment=augment)
    single_summary = run_recipe(single, quiet=True)
    ddp_dir = run_two_processes(tmp_path / "ddp", free_port, data__augment=augment)
    assert_same_weights(weights(single.run_dir), weights(ddp_dir), rtol=1e-4, atol=1e-5)
    ddp_summary = json.loads((ddp_dir / "summary.json").read_text())
    assert ddp_summary["test_acc_last"] == pytest.approx(single_summary["test_acc_last"], abs=0.51)


def test_two_processes_train_what_one_does_when_the_global_batch_splits_unevenly(tmp_path, free_port):
    """A global batch of 61: slices of 31 and 30, each process's loss weighted by its share of the batch."""
    torch.set_num_threads(1)
    uneven = dict(data__batch_size=61, data__augment={"crop_padding": 1, "hflip": True})
    single = make_recipe(tmp_path / "single", **uneven)
    run_recipe(single, quiet=True)
    ddp_dir = run_two_processes(tmp_path / "ddp", free_port, **uneven)
    assert_same_weights(weights(single.run_dir), weights(ddp_dir), rtol=1e-5, atol=1e-6)


def test_sync_batchnorm_makes_two_processes_train_what_one_does(tmp_path, free_port):
    """Without it each process normalises with its half of the batch, and the weights differ."""
    torch.set_num_threads(1)
    bn = dict(student="cnn-small", epochs=2)
    single = make_recipe(tmp_path / "single", **bn)
    run_recipe(single, quiet=True)
    synced = run_two_processes(tmp_path / "synced", free_port, **bn, train={"device": "cpu", "sync_batchnorm": True})
    assert_same_weights(weights(single.run_dir), weights(synced), rtol=1e-4, atol=1e-5)
    local = run_two_processes(tmp_path / "local", free_port, **bn)
    assert not torch.allclose(weights(single.run_dir)["fc.weight"], weights(local)["fc.weight"], rtol=1e-3, atol=1e-4)


def _global_batchnorm_worker(rank, port, tmp):
    """Rank ``rank`` of 2 runs its slice (4 or 3 of 7 images) of 3 batches through a GlobalBatchNorm."""
    from softdistill.engine.wrap import GlobalBatchNorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, w = torch.load(tmp / "inputs.pt")
        layer = GlobalBatchNorm(4, momentum=None)  # a cumulative average of the batch statistics
        grads = []
        for batch in x:
            part = batch.tensor_split(2)[rank].clone().requires_grad_()
            (layer(part) * w.tensor_split(2)[rank]).sum().backward()
            grads.append(part.grad)
        torch.save({"mean": layer.running_mean, "var": layer.running_var, "batches": layer.num_batches_tracked,
                    "x_grad": grads, "weight_grad": layer.weight.grad, "bias_grad": layer.bias.grad},
                   tmp / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_global_batchnorm_over_uneven_slices_is_batchnorm_over_the_global_batch(tmp_path, free_port):
    """Outputs' gradients, parameter gradients (summed over ranks) and running statistics, with momentum None."""
    torch.manual_seed(0)
    x, w = torch.randn(3, 7, 4, 5, 5) * 3 + 1, torch.randn(7, 4, 5, 5)
    torch.save((x, w), tmp_path / "inputs.pt")
    mp.start_processes(_global_batchnorm_worker, args=(free_port, tmp_path), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    reference = torch.nn.BatchNorm2d(4, momentum=None)
    for i, batch in enumerate(x):
        whole = batch.clone().requires_grad_()
        (reference(whole) * w).sum().backward()
        torch.testing.assert_close(torch.cat([r["x_grad"][i] for r in ranks]), whole.grad, rtol=1e-4, atol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["mean"], reference.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["var"], reference.running_var, rtol=1e-5, atol=1e-6)
        assert r["batches"] == reference.num_batches_tracked == 3
    torch.testing.assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ranks[0]["bias_grad"] + ranks[1]["bias_grad"], reference.bias.grad, rtol=1e-4, atol=1e-4)


def _rank_that_dies_worker(rank, port, tmp):
    """Rank 1 dies as epoch 2 starts; every rank records its exit code and stderr."""
    import contextlib
    import io

    from softdistill.cli import main
    from softdistill.engine.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), SOFTDISTILL_DIST_TIMEOUT="20")
    torch.set_num_threads(1)
    original = Trainer.train_epoch

    def train_epoch(self):
        if rank == 1 and self.epoch == 2:
            os._exit(1)
        return original(self)

    Trainer.train_epoch = train_epoch
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", str(tmp / "syn.yaml"), "--quiet"])
    (tmp / f"rank{rank}.json").write_text(json.dumps({"code": code, "err": err.getvalue()}))


def test_a_lost_rank_ends_the_others_with_a_clear_error(tmp_path, free_port):
    (tmp_path / "syn.yaml").write_text(json.dumps(make_recipe(tmp_path, epochs=3).to_dict()))
    started = time.monotonic()
    procs = mp.start_processes(_rank_that_dies_worker, args=(free_port, tmp_path), nprocs=2, join=False,
                               start_method="spawn")
    for process in procs.processes:
        process.join(120)
    assert time.monotonic() - started < 120 and [p.exitcode for p in procs.processes] == [0, 1]
    survivor = json.loads((tmp_path / "rank0.json").read_text())
    assert survivor["code"] == 2
    assert "process 0 of 2 lost contact with the others" in survivor["err"] and "--resume" in survivor["err"]
    assert "Traceback" not in survivor["err"]


def launched_by_hand(rank: int, port: int, timeout: int, **extra: str) -> dict[str, str]:
    """The environment of process ``rank`` of 2 started by hand (no torchrun), with this checkout's code."""
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
            "RANK": str(rank), "LOCAL_RANK": str(rank), "SOFTDISTILL_DIST_TIMEOUT": str(timeout),
            "OMP_NUM_THREADS": "1", **extra}


def test_a_missing_rank_zero_ends_the_rendezvous_within_the_timeout_in_one_paragraph(tmp_path, free_port):
    recipe = tmp_path / "syn.yaml"
    recipe.write_text(json.dumps(make_recipe(tmp_path).to_dict()))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "softdistill", "train", str(recipe), "--quiet"],
                            env=launched_by_hand(1, free_port, 12), capture_output=True, text=True, timeout=120)
    # PyTorch's own connection retries alone take twice the timeout, and print C++ stack frames
    assert time.monotonic() - started < 12 + 11
    assert result.returncode == 2
    assert result.stderr.startswith("softdistill train: error: process 1 of 2 lost contact with the others (nothing "
                                    f"answered at MASTER_ADDR:MASTER_PORT = 127.0.0.1:{free_port}")
    assert "SOFTDISTILL_DIST_TIMEOUT = 12 s (default 180)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "frame #" not in result.stderr


PEER_DIES = """
import os, sys
from softdistill.cli import main
from softdistill.engine.trainer import Trainer

train_epoch = Trainer.train_epoch


def dying_train_epoch(self):
    if os.environ["RANK"] == "1" and self.epoch == 2:
        os._exit(1)
    return train_epoch(self)


Trainer.train_epoch = dying_train_epoch
sys.exit(main(sys.argv[1:]))
"""


def test_a_peer_that_dies_after_the_rendezvous_ends_the_other_in_one_paragraph(tmp_path, free_port):
    recipe = tmp_path / "syn.yaml"
    recipe.write_text(json.dumps(make_recipe(tmp_path, epochs=3, train={"device": "cpu", "threads": 1}).to_dict()))
    (tmp_path / "dies.py").write_text(PEER_DIES)
    started = time.monotonic()
    ranks = [subprocess.Popen([sys.executable, str(tmp_path / "dies.py"), "train", str(recipe), "--quiet"],
                              env=launched_by_hand(rank, free_port, 20), stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    errors = [p.communicate(timeout=120)[1] for p in ranks]
    assert time.monotonic() - started < 20 + 30 and [p.returncode for p in ranks] == [2, 1]
    assert errors[0].startswith("softdistill train: error: process 0 of 2 lost contact with the others")
    assert len(errors[0].strip().splitlines()) == 1 and "frame #" not in errors[0]


def test_the_distributed_timeout_is_checked(monkeypatch):
    assert DEFAULT_DIST_TIMEOUT == 180  # a few minutes; docs/getting-started.md says so
    monkeypatch.setenv("SOFTDISTILL_DIST_TIMEOUT", "90")
    assert dist_timeout().total_seconds() == 90
    monkeypatch.delenv("SOFTDISTILL_DIST_TIMEOUT")
    assert dist_timeout().total_seconds() == DEFAULT_DIST_TIMEOUT
    for bad in ("0", "-5", "soon", "inf"):
        monkeypatch.setenv("SOFTDISTILL_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match="SOFTDISTILL_DIST_TIMEOUT must be a positive number of seconds"):
            dist_timeout()


def test_evaluation_reports_top5_from_ten_classes(tmp_path):
    from softdistill.engine.predict import classification_sums
    from softdistill.types import Batch

    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0]] * 3)
    batch = Batch(x=logits, y=torch.tensor([0, 4, 5]), sample_id=torch.arange(3), view=torch.zeros(3, dtype=torch.long))
    sums = classification_sums(torch.nn.Identity(), batch)
    assert sums["acc"].item() == 100.0 and sums["top5"].item() == 200.0  # top-1: sample 0; top-5: samples 0 and 1
    few = Batch(x=logits[:, :4], y=torch.tensor([0, 1, 2]), sample_id=torch.arange(3), view=torch.zeros(3, dtype=torch.long))
    assert "top5" not in classification_sums(torch.nn.Identity(), few)
    summary = run_recipe(make_recipe(tmp_path, epochs=1), quiet=True)  # synthetic: 10 classes
    assert summary["test_acc_last"] <= summary["test_top5"] <= 100.0 and "val_top5" in summary
