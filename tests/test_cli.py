"""The softdistill command: quickstart --tiny end to end, train/eval/compare, and error messages."""

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from softdistill.checkpoint import load_checkpoint, save_checkpoint
from softdistill.cli import build_parser, main
from softdistill.runtime.distributed import resolve_device
from softdistill.experiments import write_report

SYNTHETIC = {"name": "syn", "student": "mlp", "epochs": 2, "data": {"name": "synthetic", "val_size": 100, "batch_size": 50},
             "train": {"device": "cpu"}}


def write_recipe(folder: Path, **changes) -> Path:
    raw = {**SYNTHETIC, **changes}
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_quickstart_tiny_end_to_end(tiny_quickstart, capsys):
    out = tiny_quickstart
    teacher = out / "digits-teacher" / "seed0" / "summary.json"
    stamp = teacher.stat().st_mtime_ns
    # a second call finds every run finished and only rewrites the report
    assert main(["quickstart", "--tiny", "--output", str(out), "--seeds", "2", "--quiet"]) == 0
    assert teacher.stat().st_mtime_ns == stamp
    printed = capsys.readouterr().out
    for name in ("digits-baseline", "digits-ls", "digits-kd", "(baseline)", "test acc last (%)"):
        assert name in printed
    report = out / "report"
    assert printed.rstrip().splitlines()[-1].startswith(  # the last line lists every file of the report
        f"report: {report}/ table.md, table.csv, results.json, curves.png, diagnostics.png, "
        "digits-hard-affine-hard-augmentations.png  (")
    for name in ("table.md", "table.csv", "curves.png", "diagnostics.png", "results.json",
                 "digits-hard-affine-hard-augmentations.png"):
        assert (report / name).stat().st_size > 0, name
    table = (report / "table.md").read_text()
    assert "![diagnostics](diagnostics.png)" in table  # KD logs reg_share
    assert "![digits-hard-affine](digits-hard-affine-hard-augmentations.png)" in table
    assert (report / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["recipe"]: r for r in csv.DictReader((report / "table.csv").open())}
    assert rows["digits-kd"]["seeds"] == "2"
    assert rows["digits-hard-affine"]["label"] == "hard (affine)"
    summary = json.loads(teacher.read_text())
    assert summary["test_acc_last"] > 80.0  # a real teacher, trained once
    # the teacher line: the accuracy of best.pt, the epoch with the best validation accuracy
    assert (f"| digits-teacher | cnn | `{out}/digits-teacher/seed0/best.pt` (epoch {summary['selected_epoch']} of 8) | "
            f"{summary['test_acc_selected']:.2f} | digits-kd, digits-hard-affine |") in table
    assert float(rows["digits-kd"]["teacher_test_acc"]) == pytest.approx(summary["test_acc_selected"])
    # every row of the out-of-domain table has numbers: HARD's recipe names the sets, the others are evaluated
    finals = {r["name"]: r["final"] for r in json.loads((report / "results.json").read_text())}
    assert {name: sorted(f) for name, f in finals.items()} == {name: ["rotate15", "shift1"] for name in finals}
    assert all(len(seeds) == 2 for f in finals.values() for seeds in f.values())


def test_train_then_eval_then_resume_finished(tmp_path, capsys):
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "runs"))
    assert main(["train", str(recipe), "--quiet", "-o", "optim.lr=0.1", "--seed", "4"]) == 0
    assert "done: test accuracy last" in capsys.readouterr().out
    run = tmp_path / "runs" / "syn" / "seed4"
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 0.1
    assert main(["eval", str(run / "best.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert result["samples"] == 200 and result["split"] == "test"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert result["acc"] == pytest.approx(history[summary["selected_epoch"] - 1]["test/acc"])
    assert main(["eval", str(run / "last.pt"), "--split", "val"]) == 0
    assert "val (100 images)" in capsys.readouterr().out
    stamp = (run / "last.pt").stat().st_mtime_ns
    assert main(["train", str(recipe), "--seed", "4", "-o", "optim.lr=0.1", "--resume"]) == 0  # finished: kept as is
    printed = capsys.readouterr().out
    assert f"{run} has finished; nothing to resume" in printed and "done: test accuracy last" in printed
    assert (run / "last.pt").stat().st_mtime_ns == stamp


def test_compare_skips_finished_runs_and_resumes(tmp_path, capsys):
    a = write_recipe(tmp_path, name="base")
    b = write_recipe(tmp_path, name="smooth", method={"name": "ls", "epsilon": 0.1})
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--seeds", "2", "--output", str(out), "--quiet"]) == 0
    table = (out / "report" / "table.md").read_text()
    assert "| base | ce | mlp | 2 |" in table and "| smooth | ls | mlp | 2 |" in table
    capsys.readouterr()
    # delete one finished run's summary: compare resumes nothing (finished epochs) but re-runs only that one
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")}
    (out / "smooth" / "seed1" / "summary.json").unlink()
    (out / "smooth" / "seed1" / "last.pt").unlink()
    (out / "smooth" / "seed1" / "best.pt").unlink()
    assert main(["compare", str(a), str(b), "--seeds", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, reused") == 3  # printed without --quiet
    changed = [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert changed == [out / "smooth" / "seed1" / "last.pt"]


def test_compare_says_which_runs_it_trained_as_teachers_and_which_it_reused(tmp_path, capsys):
    base = write_recipe(tmp_path, name="base")
    own = write_recipe(tmp_path, name="own", soft_labels={"source": "cache", "recipe": "base.yaml"},
                       method={"name": "kd", "alpha": 0.9, "temperature": 4})
    argv = ["compare", str(base), str(own), "--seeds", "1", "--output", str(tmp_path / "cmp")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "training 'base' seed 0, which soft_labels.recipe of 'own' names, first" in printed
    assert "base seed 0: trained above as the teacher of own, test accuracy " in printed
    assert "finished earlier" not in printed
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "base seed 0: finished earlier, reused, test accuracy " in printed
    assert "own seed 0: finished earlier, reused, test accuracy " in printed
    assert "trained above" not in printed and "training 'base'" not in printed


def test_compare_refuses_runs_of_an_edited_recipe(tmp_path, capsys):
    a = write_recipe(tmp_path, name="base")
    out = tmp_path / "cmp"
    assert main(["compare", str(a), "--seeds", "1", "--output", str(out), "--quiet"]) == 0
    write_recipe(tmp_path, name="base", epochs=3)
    assert main(["compare", str(a), "--seeds", "1", "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different version of recipe 'base'" in err and "epochs: 2 -> 3" in err
    # a comment-like change (description) or another output folder name does not count
    write_recipe(tmp_path, name="base", description="same experiment, new words")
    assert main(["compare", str(a), "--seeds", "1", "--output", str(out), "--quiet", "--report", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "table.md").is_file()


def _fake_run(root: Path, name: str, seed: int, method: str, accs: list[float], seconds: float = 1.0,
              final: dict[str, float] | None = None) -> None:
    run = root / name / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "student": "mlp", "method": {"name": method}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "test/acc": a}) + "\n" for i, a in enumerate(accs)))
    (run / "summary.json").write_text(json.dumps({
        "seed": seed, "test_acc_last": accs[-1], "test_acc_best": max(accs), "test_acc_selected": accs[-2],
        "seconds": seconds, "seconds_per_epoch": seconds / len(accs), **({"final_acc": final} if final else {})}))


def test_report_aggregates_fake_run_folders(tmp_path):
    _fake_run(tmp_path, "base", 0, "ce", [50.0, 60.0, 70.0])
    _fake_run(tmp_path, "base", 1, "ce", [50.0, 62.0, 72.0])
    _fake_run(tmp_path, "kd", 0, "kd", [55.0, 80.0, 75.0], 3.0)
    _fake_run(tmp_path, "kd", 1, "kd", [55.0, 78.0, 77.0], 5.0)
    (tmp_path / "kd" / "seed2").mkdir()  # unfinished: ignored
    result = write_report(tmp_path, ["base", "kd"], "base", title="t")
    rows = {r["recipe"]: r for r in csv.DictReader((result.report_dir / "table.csv").open())}
    assert float(rows["base"]["last_mean"]) == pytest.approx(71.0)
    assert float(rows["base"]["last_std"]) == pytest.approx(2 ** 0.5)  # sample std of 70, 72
    assert float(rows["kd"]["best_mean"]) == pytest.approx(79.0)
    assert float(rows["kd"]["selected_mean"]) == pytest.approx(79.0)
    assert float(rows["kd"]["gain_last"]) == pytest.approx(5.0)
    assert float(rows["kd"]["gain_best"]) == pytest.approx(79.0 - 71.0)
    assert float(rows["kd"]["seconds_mean"]) == pytest.approx(4.0)
    assert "| kd | kd | mlp | 2 | 76.00 ± 1.41 | 79.00 ± 1.41 | 79.00 ± 1.41 | +5.00 | +8.00 | 4.0 |" in result.markdown
    assert "Out-of-domain" not in result.markdown  # no run evaluated final sets


def test_report_tabulates_out_of_domain_sets(tmp_path):
    _fake_run(tmp_path, "kd", 0, "kd", [50.0, 60.0], 2.0, final={"shift4": 30.0, "blur1": 55.0})
    _fake_run(tmp_path, "kd", 1, "kd", [50.0, 62.0], 4.0, final={"shift4": 34.0, "blur1": 57.0})
    _fake_run(tmp_path, "hard", 0, "hard", [50.0, 61.0], 6.0, final={"shift4": 40.0})
    result = write_report(tmp_path, ["kd", "hard"], "kd", title="t")
    assert "| recipe | in-domain (%) | shift4 (%) | blur1 (%) | s / epoch |" in result.markdown
    assert "| kd | 61.00 ± 1.41 | 32.00 ± 2.83 | 56.00 ± 1.41 | 1.50 |" in result.markdown
    assert "| hard | 61.00 ± n/a | 40.00 ± n/a | n/a | 3.00 |" in result.markdown
    rows = {r["recipe"]: r for r in csv.DictReader((result.report_dir / "table.csv").open())}
    assert float(rows["kd"]["shift4_mean"]) == pytest.approx(32.0) and rows["hard"]["blur1_mean"] == "nan"


def test_bad_input_messages(tmp_path, capsys):
    bad = write_recipe(tmp_path, name="bad", optim={"lr": 0.1, "momentun": 0.9})
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'momentum'" in err and "Traceback" not in err
    missing = write_recipe(tmp_path, name="nodata", data={"name": "cifar10", "root": str(tmp_path / "nowhere")})
    assert main(["train", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "download" in err
    assert main(["eval", str(tmp_path / "none.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", str(write_recipe(tmp_path, name="r", output_dir=str(tmp_path / "o"))), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_help_explains_every_command():
    parser = build_parser()
    text = parser.format_help()
    for command in ("train", "eval", "compare", "quickstart"):
        assert command in text
    result = subprocess.run([sys.executable, "-m", "softdistill", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--resume" in result.stdout and "-o KEY=VALUE" in result.stdout


def test_compare_help_names_every_report_file(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal width, also at hyphens
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for name in ("table.md", "table.csv", "results.json", "curves.png", "diagnostics.png", "hard-augmentations.png"):
        assert name in text, name


# ------------------------------------------------------------------------- file system and machine errors

def one_paragraph_error(capsys, command: str) -> str:
    """The stderr of a failed command: one 'softdistill COMMAND: error:' paragraph, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith(f"softdistill {command}: error: ") and "Traceback" not in err
    return err


def test_an_output_dir_that_is_a_file_is_named(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    assert main(["train", str(write_recipe(tmp_path, output_dir=str(blocker))), "--quiet"]) == 2
    err = one_paragraph_error(capsys, "train")
    assert f"{blocker} is a file, not a folder" in err


def test_a_read_only_output_folder_is_a_clear_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "readonly"
    out.mkdir()
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(path) -> None:  # what a read-only mount answers (also under root, which chmod cannot stop)
        if Path(path).is_relative_to(out):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    assert main(["train", str(write_recipe(tmp_path, output_dir=str(out))), "--quiet"]) == 2
    err = one_paragraph_error(capsys, "train")
    assert f"cannot create the folder {out / 'syn' / 'seed0'}: Read-only file system" in err


def test_a_full_disk_mid_run_keeps_the_run_resumable(tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path, epochs=3, output_dir=str(tmp_path / "runs"))
    run = tmp_path / "runs" / "syn" / "seed0"
    real_save = torch.save

    def disk_full_at_epoch_2(obj, handle):
        if obj.get("epoch") == 2:
            handle.write(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", disk_full_at_epoch_2)
    assert main(["train", str(recipe), "--quiet"]) == 2
    err = one_paragraph_error(capsys, "train")
    assert f"could not write {run / 'last.pt'}" in err and "intact" in err and "--resume" in err
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert main(["train", str(recipe), "--quiet", "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("device, message", [
    ("cuda", "CUDA is not available on this machine"),
    ("cuda:1", "CUDA is not available on this machine"),
    ("gpu", "unknown device 'gpu': use auto, cpu, cuda or cuda:N"),
])
def test_device_errors(tmp_path, capsys, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", str(write_recipe(tmp_path, output_dir=str(tmp_path / "o"))), "-o", f"train.device={device}"]) == 2
    assert message in one_paragraph_error(capsys, "train")


def test_a_cuda_index_beyond_the_machine_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:3' does not exist: this machine has 1 CUDA device"):
        resolve_device("cuda:3")
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda:0")


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "epochs: Input should be greater than or equal to 1, got 0"),
    (["--epochs", "2", "-o", "epochs=3"], "--epochs and -o epochs=... both set the epochs: give one"),
])
def test_compare_epochs_that_are_not_honoured_are_refused(tmp_path, capsys, extra, message):
    argv = ["compare", str(write_recipe(tmp_path)), "--seeds", "1", "--output", str(tmp_path / "out"), "--quiet", *extra]
    assert main(argv) == 2
    assert message in one_paragraph_error(capsys, "compare")
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.parametrize("argv", [["compare", "RECIPE", "--seeds", "0"], ["compare", "RECIPE", "--seeds", "-2"],
                                  ["quickstart", "--tiny", "--seeds", "0"]])
def test_seed_counts_below_one_are_refused(tmp_path, capsys, argv):
    argv = [str(write_recipe(tmp_path)) if a == "RECIPE" else a for a in argv]
    assert main([*argv, "--output", str(tmp_path / "out"), "--quiet"]) == 2
    assert "needs at least one seed" in one_paragraph_error(capsys, argv[0])
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_eval_refuses_images_of_another_shape_than_the_model_was_trained_on(tmp_path, capsys):
    recipe = write_recipe(tmp_path, student="cnn-small", epochs=1, output_dir=str(tmp_path / "runs"))
    assert main(["train", str(recipe), "--quiet"]) == 0
    payload = load_checkpoint(tmp_path / "runs" / "syn" / "seed0" / "last.pt")
    payload["model"]["image_size"] = 12  # a CNN for 12x12 images: its weights fit any size, its accuracy would not
    save_checkpoint(payload, tmp_path / "wide.pt")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "wide.pt"), "--data", "synthetic"]) == 2
    err = one_paragraph_error(capsys, "eval")
    assert "holds a model for 10 classes and 1x12x12 images; synthetic has 10 classes and 1x8x8 images" in err


def test_a_file_with_pickled_objects_is_refused_without_advice_to_load_it_unsafely(tmp_path, capsys):
    import argparse

    from softdistill.soft_labels.table import load_soft_labels

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "softdistill-checkpoint-v1", "payload": argparse.Namespace(x=1)}, unsafe)
    for argv in (["eval", str(unsafe)], ["inspect", str(unsafe), "--output", str(tmp_path / "report")]):
        assert main(argv) == 2
        err = one_paragraph_error(capsys, argv[0])
        assert str(unsafe) in err and "not plain data or tensors (Unsupported global: GLOBAL argparse.Namespace" in err
        assert "weights_only" not in err and "add_safe_globals" not in err and "trust" not in err
    with pytest.raises(ValueError, match="cannot read soft-label file") as info:
        load_soft_labels(unsafe)
    assert "weights_only" not in str(info.value)


def test_a_report_is_never_written_through_a_planted_link(tmp_path):
    recipe = write_recipe(tmp_path, epochs=1, output_dir=str(tmp_path / "runs"))
    assert main(["train", str(recipe), "--quiet"]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    report = tmp_path / "report"
    report.mkdir()
    for name in ("report.md", "report.json"):
        (report / name).symlink_to(victim)
    assert main(["inspect", str(tmp_path / "runs" / "syn" / "seed0" / "best.pt"), "--output", str(report), "--quiet"]) == 0
    assert victim.read_text() == "precious" and not any(p.is_symlink() for p in report.iterdir())


def test_a_failure_under_torchrun_is_printed_once(tmp_path):
    """Every process meets a recipe's error before the processes connect: process 0 alone prints it."""
    recipe = write_recipe(tmp_path, name="base")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "softdistill", "train", str(recipe), "-o", "optim.lr=-1"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("softdistill train: error: invalid recipe") == 1, done.stderr
    assert "optim.lr: Input should be greater than 0, got -1" in done.stderr
