"""kill -9 in the middle of an epoch, then ``--resume``: the weights of an uninterrupted run, bit for bit.

A real ``softdistill train`` process (``python PAUSER train ...``: the command with one change, made by
:data:`PAUSER`: as global optimiser step ``$PAUSE_AT_STEP`` begins it prints ``PAUSED`` and sleeps) writes
a mid-epoch ``last.pt`` (``train.checkpoint_every``), trains on past it, and is then sent SIGKILL as a
whole process group, stream loader workers included.  ``softdistill train ... --resume`` (a fresh
process, no pauser) must end with the weights, ``metrics.jsonl`` and ``summary.json`` of a run that
was never stopped, and find nothing in the run folder (the dead process's lock, a temporary) that
blocks it.  The same when only a stream worker is killed: the run stops with a one-paragraph error
(exit code 2), not a hang, and resumes the same.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_stream import write_folder

PAUSER = '''
import os, sys, time
from softdistill.cli import main
from softdistill.engine.optim import LRSchedule

STEP = int(os.environ["PAUSE_AT_STEP"])
GO_ON = os.environ.get("GO_ON_FILE")  # the pause ends when this file appears (else after 600 s)
lr_at = LRSchedule.lr_at


def pausing_lr_at(self, step):
    if step == STEP:
        print("PAUSED", flush=True)
        end = time.monotonic() + 600
        while time.monotonic() < end and not (GO_ON and os.path.exists(GO_ON)):
            time.sleep(0.05)
    return lr_at(self, step)


LRSchedule.lr_at = pausing_lr_at
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''

# 27 training images in batches of 4 (drop_last): 6 steps an epoch.  A mid-epoch last.pt every 4 steps:
# global steps 4 (epoch 1, step 4) and 8 (epoch 2, step 2).  Paused as global step 10 begins, the
# process has trained steps 8 and 9 past the last checkpoint: the kill lands in the middle of epoch 2.
PAUSE_AT_STEP = 10
CHECKPOINT = {"epoch": 1, "step": 2}


def environment() -> dict[str, str]:
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def write_recipe(folder: Path, root: Path, loader: str, workers: int = 2) -> Path:
    data = {"name": "imagefolder", "root": str(root), "image_size": 8, "val_size": 3, "batch_size": 4,
            "eval_batch_size": 8, "loader": loader, "augment": {"crop_padding": 1, "hflip": True}}
    if loader == "stream":
        data["workers"] = workers  # worker processes, killed with the run
    recipe = {"name": f"kill-{loader}", "student": "mlp", "epochs": 2, "seed": 1, "data": data,
              "optim": {"lr": 0.1}, "output_dir": str(folder / "runs"),
              "train": {"device": "cpu", "threads": 1, "checkpoint_every": 4}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def softdistill(*argv: str) -> None:
    done = subprocess.run([sys.executable, "-m", "softdistill", *argv, "--quiet"], capture_output=True, text=True,
                          env=environment(), timeout=300)
    assert done.returncode == 0, done.stderr


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def paused(recipe: Path, run_dir: Path, tmp_path: Path, pause_at: int = PAUSE_AT_STEP,
           checkpoint: dict = CHECKPOINT, **env: str) -> subprocess.Popen:
    """``softdistill train recipe`` (its own process group), paused as global step ``pause_at`` begins, past
    the mid-epoch ``last.pt`` at ``checkpoint``, which is checked."""
    pauser = tmp_path / "pauser.py"
    pauser.write_text(PAUSER)
    process = subprocess.Popen([sys.executable, str(pauser), "train", str(recipe), "--quiet"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**environment(), "PAUSE_AT_STEP": str(pause_at), **env})
    try:
        line = process.stdout.readline()  # blocks until PAUSED, or '' when the process ended
        assert line.strip() == "PAUSED", line + process.stdout.read() + process.stderr.read()
        saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        assert (saved["epoch"], saved["step"]["step"]) == (checkpoint["epoch"], checkpoint["step"])
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
        raise
    return process


def killed_mid_epoch(recipe: Path, run_dir: Path, tmp_path: Path) -> list[int]:
    """Run ``softdistill train recipe`` until it pauses past its mid-epoch checkpoint, and kill -9 its whole
    process group; the pids of the group's other processes at the kill."""
    process = paused(recipe, run_dir, tmp_path)
    try:
        others = [pid for pid in group_members(process.pid) if pid != process.pid]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while group_members(process.pid) and time.monotonic() < deadline:  # the kernel ends them one by one
        time.sleep(0.1)
    assert not group_members(process.pid), "a process of the killed run survived it"
    return others


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def summary(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items()
            if not k.startswith("seconds")}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_kill_9_mid_epoch_then_resume_ends_bit_identical(tmp_path, loader):
    root = write_folder(tmp_path / "folder", per_class=10)
    recipe = write_recipe(tmp_path, root, loader)
    run_dir = tmp_path / "runs" / f"kill-{loader}" / "seed1"
    others = killed_mid_epoch(recipe, run_dir, tmp_path)
    if loader == "stream":
        assert len(others) >= 2, "the stream loader's workers were not running at the kill"
    assert not (run_dir / "summary.json").exists() and (run_dir / ".lock").exists()  # the dead process's lock
    assert_resumes_as_if_never_stopped(recipe, run_dir, tmp_path, f"kill-{loader}")


def assert_resumes_as_if_never_stopped(recipe: Path, run_dir: Path, tmp_path: Path, name: str) -> None:
    """``--resume`` ends with the weights, metrics, summary and files of a run of ``recipe`` never stopped."""
    softdistill("train", str(recipe), "--resume")
    reference = tmp_path / "uninterrupted"
    softdistill("train", str(recipe), "-o", f"output_dir={reference}")
    whole = reference / name / "seed1"
    resumed, expected = (torch.load(r / "last.pt", map_location="cpu", weights_only=True) for r in (run_dir, whole))
    assert resumed["state_dict"].keys() == expected["state_dict"].keys()
    assert all(torch.equal(resumed["state_dict"][k], expected["state_dict"][k]) for k in expected["state_dict"])
    assert records(run_dir) == records(whole) and summary(run_dir) == summary(whole)
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == sorted(p.name for p in whole.iterdir()) and ".lock" not in left  # no lock, no temporary
    assert not [name for name in left if name.endswith(".tmp")]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_stream_worker_killed_mid_epoch_stops_the_run_with_its_error_then_resume_ends_bit_identical(tmp_path,
                                                                                                    workers):
    # 57 training images in batches of 4: 14 steps an epoch; paused as step 6 begins (last.pt after step 4),
    # eight batches of the epoch are still to come, more than the workers fetch ahead (2 each)
    root = write_folder(tmp_path / "folder", per_class=20)
    recipe = write_recipe(tmp_path, root, "stream", workers=workers)
    run_dir = tmp_path / "runs" / "kill-stream" / "seed1"
    go_on = tmp_path / "go-on"
    process = paused(recipe, run_dir, tmp_path, pause_at=6, checkpoint={"epoch": 0, "step": 4},
                     GO_ON_FILE=str(go_on))
    try:
        worker = min(pid for pid in group_members(process.pid) if pid != process.pid)
        os.kill(worker, signal.SIGKILL)
        go_on.touch()
        _, stderr = process.communicate(timeout=120)  # an error, not a hang
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert re.fullmatch(rf"softdistill train: error: epoch 1: a data worker stopped \(process {worker} was killed by "
                        rf"signal SIGKILL\) and the pass cannot go on \(data.workers: {workers}\)\. .* A run continues "
                        r"from its last checkpoint with --resume\.\n", stderr), stderr
    assert not group_members(process.pid), "a worker outlived the run"
    assert_resumes_as_if_never_stopped(recipe, run_dir, tmp_path, "kill-stream")
