"""Run folders under crashes: kills between the writes of an epoch, non-finite states, locks."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_training import assert_same_weights, make_recipe, weights

from softdistill.checkpoint import load_checkpoint
from softdistill.config import recipe_from_dict
from softdistill.engine import NonFiniteLossError, NonFiniteStateError
from softdistill.runs import RunStateError, check_outside_package
from softdistill.runner import run_recipe


class Killed(BaseException):
    """Stands for a kill -9 at an injected point (nothing after it runs)."""


@pytest.fixture
def kill_after_write(monkeypatch):
    """``kill_after_write(name, n)``: the n-th atomic write of a file called ``name`` lands, then the
    process "dies" (:class:`Killed`)."""

    def arm(name: str, n: int = 1) -> None:
        real = os.replace
        landed = []

        def replace(src, dst):
            real(src, dst)
            if Path(dst).name == name:
                landed.append(dst)
                if len(landed) == n:
                    monkeypatch.setattr(os, "replace", real)
                    raise Killed(f"after write {n} of {name}")

        monkeypatch.setattr(os, "replace", replace)

    return arm


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("seconds")}


def assert_same_run(reference: Path, resumed: Path) -> None:
    """The same checkpoints (weights and epoch), summary and metrics (timing aside), and files."""
    for path in reference.glob("*.pt"):
        assert_same_weights(weights(reference, path.name), weights(resumed, path.name), rtol=0, atol=0)
        assert load_checkpoint(resumed / path.name)["epoch"] == load_checkpoint(path)["epoch"]
    read = lambda run: without_timing(json.loads((run / "summary.json").read_text()))  # noqa: E731
    assert read(resumed) == read(reference)
    records = lambda run: [without_timing(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert records(resumed) == records(reference)
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in reference.iterdir())


# 3 epochs whose validation accuracy peaks at epoch 2, so "best" is neither the first nor the last epoch
PEAKS_EARLY = dict(optim__lr=0.2, schedule={"name": "constant"}, train={"device": "cpu", "keep_epochs": [2]})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted run, the result every interrupted one must end with."""
    recipe = make_recipe(tmp_path_factory.mktemp("reference"), **PEAKS_EARLY)
    run_recipe(recipe, quiet=True)
    return recipe.run_dir


def test_a_kill_before_the_summary_is_finished_by_resume(tmp_path, reference_run, kill_after_write):
    recipe = make_recipe(tmp_path, **PEAKS_EARLY)
    kill_after_write("last.pt", n=recipe.epochs)  # the final epoch's checkpoint, nothing after it
    with pytest.raises(Killed):
        run_recipe(recipe, quiet=True)
    assert not (recipe.run_dir / "summary.json").exists()
    run_recipe(recipe, resume=True, quiet=True)
    assert_same_run(reference_run, recipe.run_dir)


def test_a_kill_between_last_and_best_leaves_no_stale_best(tmp_path, reference_run, kill_after_write):
    selected = json.loads((reference_run / "summary.json").read_text())["selected_epoch"]
    assert 1 < selected < 3  # a stale best.pt (epoch 1) would stay for good
    recipe = make_recipe(tmp_path, **PEAKS_EARLY)
    kill_after_write("last.pt", n=selected)  # the epoch that becomes "best": its best.pt is not written
    with pytest.raises(Killed):
        run_recipe(recipe, quiet=True)
    run_recipe(recipe, resume=True, quiet=True)
    assert_same_run(reference_run, recipe.run_dir)


@pytest.mark.parametrize("name", ["best.pt", "metrics.jsonl"])
def test_a_kill_after_any_write_of_an_epoch_resumes_to_the_same_run(tmp_path, reference_run, kill_after_write, name):
    recipe = make_recipe(tmp_path, **PEAKS_EARLY)
    kill_after_write(name)
    with pytest.raises(Killed):
        run_recipe(recipe, quiet=True)
    run_recipe(recipe, resume=True, quiet=True)
    assert_same_run(reference_run, recipe.run_dir)


def test_a_teacher_killed_before_its_summary_is_finished_for_its_student(tmp_path, kill_after_write):
    out = tmp_path / "runs"
    teacher = {"name": "t", "student": "mlp", "epochs": 1, "data": {"name": "synthetic", "batch_size": 50},
               "output_dir": str(out), "train": {"device": "cpu"}}
    (tmp_path / "teacher.yaml").write_text(json.dumps(teacher))
    kill_after_write("last.pt")
    with pytest.raises(Killed):
        run_recipe(recipe_from_dict(teacher), quiet=True)
    student = recipe_from_dict({**teacher, "name": "s", "method": {"name": "kd"},
                                "soft_labels": {"source": "teacher", "recipe": "teacher.yaml"}},
                               recipe_file=str(tmp_path / "student.yaml"))
    run_recipe(student, quiet=True)
    assert (out / "t" / "seed0" / "summary.json").is_file() and (out / "t" / "seed0" / "best.pt").is_file()


def test_a_vae_killed_before_its_summary_writes_vae_pt_on_resume(tmp_path, kill_after_write):
    from softdistill.config import load_recipe
    from softdistill.experiments import packaged_recipes

    recipe = load_recipe(packaged_recipes("hard") / "vae-tiny.yaml",
                             [f"output_dir={tmp_path}", "train.device=cpu", "train.threads=null", "epochs=1"])
    kill_after_write("last.pt")
    with pytest.raises(Killed):
        run_recipe(recipe, quiet=True)
    assert not (recipe.run_dir / "vae.pt").exists()
    run_recipe(recipe, resume=True, quiet=True)
    assert_same_weights(load_checkpoint(recipe.run_dir / "vae.pt")["state_dict"], weights(recipe.run_dir), rtol=0, atol=0)
    assert (recipe.run_dir / "summary.json").is_file()


def test_a_diverged_student_never_becomes_a_checkpoint(tmp_path):
    """At lr=100 BatchNorm's running variances overflow while every loss stays finite."""
    recipe = make_recipe(tmp_path, student="cnn-small", optim__lr=100.0, schedule={"name": "constant"})
    with pytest.raises((NonFiniteStateError, NonFiniteLossError), match="keeps its last good checkpoint"):
        run_recipe(recipe, quiet=True)
    for name in ("last.pt", "best.pt"):
        if (recipe.run_dir / name).exists():
            assert all(torch.isfinite(v).all() for v in weights(recipe.run_dir, name).values() if v.is_floating_point())


def test_a_non_finite_buffer_is_named_and_nothing_of_its_epoch_is_written(tmp_path, monkeypatch):
    from softdistill.engine.trainer import Trainer

    real = Trainer.train_epoch

    def poison_at_epoch_2(self):
        record = real(self)
        if self.epoch == 2:
            self.student.features[1].running_var[0] = float("inf")
        return record

    monkeypatch.setattr(Trainer, "train_epoch", poison_at_epoch_2)
    recipe = make_recipe(tmp_path, student="cnn-small")
    with pytest.raises(NonFiniteStateError, match=r"after epoch 2 .* in features\.1\.running_var: .*"
                                                  r"That state was not written: .* checkpoint \(epoch 1\)"):
        run_recipe(recipe, quiet=True)
    assert load_checkpoint(recipe.run_dir / "last.pt")["epoch"] == 1
    assert len((recipe.run_dir / "metrics.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------------------- with mid-epoch checkpoints

# 10 steps an epoch and a mid-epoch last.pt every 4 steps (global steps 4, 8 | 12, 16 | 24, 28; step 20 ends epoch 2):
# last.pt writes 1, 2 are mid-epoch 1, 3 ends epoch 1, 4, 5 are mid-epoch 2, 6 ends epoch 2, 7, 8 mid-epoch 3, 9 the end
MID_EPOCH = {**PEAKS_EARLY, "train": {**PEAKS_EARLY["train"], "checkpoint_every": 4}}


@pytest.mark.parametrize("write", [2, 4, 6, 9], ids=["mid-epoch-1", "mid-epoch-2", "end-of-best-epoch", "final"])
def test_with_mid_epoch_checkpoints_a_kill_after_any_last_pt_resumes_to_the_same_run(tmp_path, reference_run,
                                                                                     kill_after_write, write):
    """The reference run writes no mid-epoch checkpoint: writing them changes nothing either."""
    recipe = make_recipe(tmp_path, **MID_EPOCH)
    kill_after_write("last.pt", n=write)
    with pytest.raises(Killed):
        run_recipe(recipe, quiet=True)
    assert ("step" in load_checkpoint(recipe.run_dir / "last.pt")) == (write in (2, 4))
    run_recipe(recipe, resume=True, quiet=True)
    assert_same_run(reference_run, recipe.run_dir)


def test_a_mid_epoch_resume_refuses_an_epoch_file_changed_by_hand(tmp_path, kill_after_write):
    """A mid-epoch last.pt comes after every file of the epochs before it, and holds later weights than
    theirs: a missing best.pt there cannot be rewritten from it."""
    recipe = make_recipe(tmp_path, **MID_EPOCH)
    kill_after_write("last.pt", n=5)  # epoch 2, step 6
    with pytest.raises(Killed):
        run_recipe(recipe, quiet=True)
    (recipe.run_dir / "best.pt").unlink()
    with pytest.raises(RunStateError, match=r"best\.pt should hold epoch 1 but is missing .* written in the middle "
                                            r"of epoch 2, after every file of epoch 1: the folder was changed by hand"):
        run_recipe(recipe, resume=True, quiet=True)


def test_a_non_finite_buffer_at_a_mid_epoch_checkpoint_is_named_and_not_written(tmp_path, monkeypatch):
    from softdistill.engine.trainer import Trainer

    real = Trainer._step

    def poison_in_epoch_2(self, batch, step, watch):
        real(self, batch, step, watch)
        if (self.epoch, step) == (2, 4):  # its 5th step: after the checkpoint of step 2, before the one of step 6
            self.student.features[1].running_var[0] = float("inf")

    monkeypatch.setattr(Trainer, "_step", poison_in_epoch_2)
    recipe = make_recipe(tmp_path, student="cnn-small", train={"device": "cpu", "checkpoint_every": 4})
    with pytest.raises(NonFiniteStateError, match=r"after step 6 of epoch 2 the student holds NaN or infinite values in "
                                                  r"features\.1\.running_var: .*That state was not written: .*"
                                                  r"checkpoint \(step 2 of epoch 2\)"):
        run_recipe(recipe, quiet=True)
    saved = load_checkpoint(recipe.run_dir / "last.pt")
    assert saved["epoch"] == 1 and saved["step"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------- one process per run folder

def softdistill(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softdistill", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_a_second_process_on_a_run_folder_is_refused_and_a_killed_holder_blocks_nothing(tmp_path):
    recipe_file = tmp_path / "syn.yaml"
    recipe_file.write_text(json.dumps(make_recipe(tmp_path).to_dict()))
    marker = tmp_path / "in-epoch-2"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, sys, time
from softdistill.cli import main
from softdistill.engine.trainer import Trainer
real = Trainer.train_epoch
def wait_in_epoch_2(self):
    if self.epoch == 2:
        pathlib.Path({str(marker)!r}).touch()
        time.sleep(600)
    return real(self)
Trainer.train_epoch = wait_in_epoch_2
sys.exit(main(["train", {str(recipe_file)!r}, "--quiet"]))
"""])
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the first process did not reach epoch 2"
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            second = softdistill("train", str(recipe_file), "--quiet", *extra)
            assert second.returncode == 2
            assert f"is in use by another process (pid {holder.pid} on {socket.gethostname()}, started " in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        holder.kill()  # kill -9: its lock must not outlive it
        holder.wait()
    run_dir = tmp_path / "runs" / "syn" / "seed1"
    assert (run_dir / ".lock").exists() and load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    resumed = softdistill("train", str(recipe_file), "--quiet", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "summary.json").is_file() and not (run_dir / ".lock").exists()


def test_a_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    recipe = make_recipe(tmp_path, epochs=1)
    recipe.run_dir.mkdir(parents=True)
    (recipe.run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                      "started": "earlier", "command": "softdistill train"}))
    run_recipe(recipe, quiet=True)
    assert (recipe.run_dir / "summary.json").is_file() and not (recipe.run_dir / ".lock").exists()


def test_a_file_system_without_locks_runs_with_a_warning(tmp_path, monkeypatch):
    import fcntl

    from softdistill.locking import hold_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="has no file locks .*nothing stops a second process"):
        with hold_lock(tmp_path / ".lock"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_that_cannot_hold_a_lock_is_a_clear_error(tmp_path, monkeypatch):
    from softdistill.atomic import FileWriteError
    from softdistill.runs import lock_run_folder

    real_open = os.open

    def read_only(path, flags, *args):
        if Path(path).name == ".lock":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(FileWriteError, match=r"cannot create the lock file .*run/\.lock: Read-only file system"):
        with lock_run_folder(tmp_path / "run"):
            pass


def test_a_planted_lock_link_is_refused_and_no_run_file_is_written_through_a_link(tmp_path, capsys):
    from softdistill.cli import main

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    recipe = make_recipe(tmp_path, epochs=1)
    recipe_file = tmp_path / "syn.yaml"
    recipe_file.write_text(json.dumps(recipe.to_dict()))
    recipe.run_dir.mkdir(parents=True)
    (recipe.run_dir / ".lock").symlink_to(victim)  # ln -s /some/file RUN/.lock; softdistill train ...
    assert main(["train", str(recipe_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the lock file {recipe.run_dir / '.lock'} is a symbolic link (to {victim})" in err and "\n" not in err.strip()
    assert victim.read_text() == "precious"
    (recipe.run_dir / ".lock").unlink()
    written = ("config.yaml", "best.pt", "metrics.jsonl")  # (a last.pt or summary.json would make it a run's folder)
    for name in written:
        (recipe.run_dir / name).symlink_to(victim)
    run_recipe(recipe, quiet=True)  # a new run: its files replace the links, never write into what they point at
    assert victim.read_text() == "precious"
    assert all((recipe.run_dir / name).is_file() and not (recipe.run_dir / name).is_symlink() for name in written)
    assert load_checkpoint(recipe.run_dir / "last.pt")["epoch"] == 1


def test_an_unreadable_copy_of_the_recipe_is_named(tmp_path, capsys):
    from softdistill.cli import main

    recipe = make_recipe(tmp_path, epochs=1)
    recipe_file = tmp_path / "syn.yaml"
    recipe_file.write_text(json.dumps(recipe.to_dict()))
    assert main(["train", str(recipe_file), "--quiet"]) == 0
    (recipe.run_dir / "config.yaml").write_bytes(b"\x00\xff{{: [")
    capsys.readouterr()
    assert main(["train", str(recipe_file), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{recipe.run_dir / 'config.yaml'} is not a readable copy of a recipe" in err and "\n" not in err


def test_a_run_started_from_the_packages_recipes_folder_is_refused_before_anything_is_written(tmp_path):
    """`cd recipes/quickstart && softdistill train kd.yaml`: output_dir is read from the current folder,
    which would put the run (and its teacher's) inside the package; on a copy of the package."""
    package = tmp_path / "src" / "softdistill"
    shutil.copytree(Path(__file__).parents[1] / "src" / "softdistill", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    folder = package / "recipes" / "quickstart"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    for argv in (["train", "kd.yaml"], ["quickstart", "--tiny"]):
        done = subprocess.run([sys.executable, "-m", "softdistill", *argv], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert (f"would be written inside the softdistill package ({package}): a relative output folder is read from "
                f"the current folder ({folder})") in done.stderr
        assert "-o output_dir=FOLDER (compare and quickstart: --output FOLDER)" in done.stderr
    assert not list(package.rglob("seed0")) and not (folder / "runs").exists()
    check_outside_package(tmp_path / "runs")  # beside the package: allowed
