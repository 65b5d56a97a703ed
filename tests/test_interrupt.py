"""Ctrl-C: a real ``softdistill`` process, sent SIGINT at a known point, prints one message that says
what was kept and the command that continues, exits with status 130, and that command finishes the work.

The process is ``python PAUSER ARGS``: the ``softdistill`` command with one change, made by
:data:`PAUSER` in every process of the run (parallel runs re-import it): when the trainer starts
epoch E of recipe NAME (``$PAUSE_AT=NAME:E``), it prints ``PAUSED`` and sleeps.  The test waits for
that line and sends SIGINT to the whole process group, as a terminal's Ctrl-C does.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softdistill.experiments import packaged_recipes, usable_cores

PAUSER = '''
import os, sys, time
from softdistill.cli import main
from softdistill.engine.trainer import Trainer

NAME, EPOCH = os.environ["PAUSE_AT"].rsplit(":", 1)
train_epoch = Trainer.train_epoch


def pausing_train_epoch(self):
    if self.recorder.meta.config["name"] == NAME and self.epoch == int(EPOCH):
        print("PAUSED", flush=True)
        time.sleep(600)
    return train_epoch(self)


Trainer.train_epoch = pausing_train_epoch
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''
TINY = packaged_recipes("tiny")


def environment(**extra: str) -> dict[str, str]:
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def interrupted(tmp_path: Path, pause_at: str, *argv: str) -> tuple[str, str]:
    """Run ``softdistill ARGV`` until it pauses at ``pause_at``, Ctrl-C it; (stdout, stderr), status 130."""
    pauser = tmp_path / "pauser.py"
    pauser.write_text(PAUSER)
    # SIGINT back to its default in the child: a test run started in the background of a
    # non-interactive shell (as some CI runners do) inherits it ignored, and Python keeps it so
    process = subprocess.Popen([sys.executable, str(pauser), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment(PAUSE_AT=pause_at), start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.strip() == "PAUSED":
                os.killpg(process.pid, signal.SIGINT)
                break
        out, err = process.communicate(timeout=900)
    finally:
        if process.poll() is None:  # it did not stop: end it and its children, then fail
            os.killpg(process.pid, signal.SIGKILL)
    assert lines and lines[-1].strip() == "PAUSED", "".join(lines) + out + err
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "resource_tracker" not in err, err  # a terminated parallel run left no semaphore behind
    return "".join(lines) + out, err


def the_message(err: str, command: str) -> str:
    """The one line of stderr that reports the interruption."""
    messages = [line for line in err.splitlines() if line.startswith(f"softdistill {command}: interrupted")]
    assert len(messages) == 1, err
    return messages[0]


def continue_with(message: str) -> subprocess.CompletedProcess:
    """Run the command the message names (``softdistill ...``, through this Python)."""
    argv = shlex.split(message.split(": softdistill ", 1)[1])
    done = subprocess.run([sys.executable, "-m", "softdistill", *argv], capture_output=True, text=True,
                          env=environment(), timeout=900)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr  # not a terminal: progress as lines, no redraws
    return done


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["state_dict"]


def test_an_interrupted_run_says_what_it_kept_and_resumes_exactly(tmp_path):
    recipe = str(TINY / "kd.yaml")
    out = tmp_path / "runs"
    argv = ["train", recipe, "-o", f"output_dir={out}", "-o", "train.threads=1"]
    _, err = interrupted(tmp_path, "digits-kd:3", *argv)
    message = the_message(err, "train")
    run = out / "digits-kd" / "seed0"
    assert message == (f"softdistill train: interrupted; {run}/last.pt keeps epoch 2 (15 epochs in all). "
                       f"Continue it exactly with: {shlex.join(['softdistill', *argv, '--resume'])}")
    continue_with(message)
    reference = tmp_path / "uninterrupted"
    assert subprocess.run([sys.executable, "-m", "softdistill", "train", recipe, "-o", f"output_dir={reference}",
                           "-o", "train.threads=1", "--quiet"], env=environment(), timeout=900).returncode == 0
    resumed, whole = weights(run), weights(reference / "digits-kd" / "seed0")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_an_interrupt_while_a_run_trains_its_teacher_names_the_teacher(tmp_path):
    out = tmp_path / "runs"
    argv = ["train", str(TINY / "kd.yaml"), "-o", f"output_dir={out}", "-o", "train.threads=1"]
    printed, err = interrupted(tmp_path, "digits-teacher:2", *argv)
    assert "training 'digits-teacher' seed 0, which soft_labels.recipe of 'digits-kd' names, first" in printed
    message = the_message(err, "train")
    teacher = out / "digits-teacher" / "seed0"
    assert message == (f"softdistill train: interrupted; while training 'digits-teacher' seed 0, which "
                       f"soft_labels.recipe of 'digits-kd' names: {teacher}/last.pt keeps epoch 1 (8 epochs in all). "
                       f"Run the same command again to continue: {shlex.join(['softdistill', *argv])}")
    done = continue_with(message)
    assert "(continued from its last.pt)" in done.stdout
    assert (teacher / "summary.json").is_file() and (out / "digits-kd" / "seed0" / "summary.json").is_file()


@pytest.mark.parametrize("pause_at, jobs", [("digits-teacher:2", 1), ("digits-kd:2", 1), ("digits-kd:2", 2)])
def test_an_interrupted_quickstart_keeps_its_finished_runs_and_continues(tmp_path, pause_at, jobs):
    if jobs > usable_cores():
        pytest.skip("parallel runs need two cores")
    argv = ["quickstart", "--tiny", "--seeds", "1", "--jobs", str(jobs), "--output", str(tmp_path / "qs")]
    _, err = interrupted(tmp_path, pause_at, *argv)
    message = the_message(err, "quickstart")
    finished = re.search(r"interrupted; (\d) of 4 runs are finished and kept", message)
    assert finished is not None, message
    assert message.endswith(f"Run the same command again to continue: {shlex.join(['softdistill', *argv])}")
    if pause_at.startswith("digits-teacher"):  # trained in this process, before every student
        assert finished.group(1) == "0" and "while training 'digits-teacher' seed 0" in message
    elif jobs == 1:  # the students run in this process, in recipe order: baseline and ls before kd
        assert finished.group(1) == "2" and "digits-kd/seed0/last.pt keeps epoch 1 (15 epochs in all)" in message
    done = continue_with(message)
    assert (tmp_path / "qs" / "report" / "table.md").is_file() and "digits-kd" in done.stdout
    assert done.stdout.count("finished earlier, reused") == int(finished.group(1))
