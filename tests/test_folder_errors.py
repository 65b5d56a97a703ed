"""Every command's folder problems are one paragraph and exit status 2: an output folder that a file is
in the way of, a read-only file system, and a full disk of any size (real ones: a tmpfs of a few
sizes, mounted in a user and mount namespace of its own; skipped where the system allows none)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from softdistill.cli import main
from softdistill.config import recipe_from_dict
from softdistill.runner import run_recipe
from test_stream import write_folder

SYNTHETIC = {"name": "syn", "student": "mlp", "epochs": 1, "data": {"name": "synthetic", "val_size": 100, "batch_size": 50},
             "train": {"device": "cpu", "threads": 1}}
VAE = Path(__file__).parents[1] / "src" / "softdistill" / "recipes" / "hard" / "vae-tiny.yaml"
VERBS = ("train", "train-vae", "label", "compare", "inspect", "data pack")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """What every command reads, outside the folders it writes: a teacher checkpoint, an image folder."""
    folder = tmp_path_factory.mktemp("inputs")
    run_recipe(recipe_from_dict({**SYNTHETIC, "name": "teacher", "output_dir": str(folder / "runs")}), quiet=True)
    return {"teacher": folder / "runs" / "teacher" / "seed0" / "best.pt", "images": write_folder(folder / "images"),
            "folder": folder}


def argv_of(verb: str, target: Path, inputs: dict, tag: str) -> list[str]:
    """The command line of ``verb`` writing into ``target`` (its recipes written next to the inputs)."""
    def recipe(raw: dict) -> str:
        path = inputs["folder"] / f"{verb.replace(' ', '-')}-{tag}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    teacher = {"source": "teacher", "checkpoint": str(inputs["teacher"])}
    commands = {
        "train": lambda: ["train", recipe({**SYNTHETIC, "output_dir": str(target)}), "--quiet"],
        "train-vae": lambda: ["train-vae", str(VAE), "-o", f"output_dir={target}", "-o", "train.device=cpu", "-o",
                              "epochs=1", "-o", "width=4", "--quiet"],
        "label": lambda: ["label", recipe({"name": "store", "data": {**SYNTHETIC["data"], "augment": {"hflip": True},
                                                                      "views": 2},
                                           "soft_labels": teacher, "shard_samples": 64, "output_dir": str(target),
                                           "train": {"device": "cpu"}}), "--quiet"],
        "compare": lambda: ["compare", recipe({**SYNTHETIC, "output_dir": str(target)}), "--seeds", "1", "--output",
                            str(target), "--quiet"],
        "inspect": lambda: ["inspect", str(inputs["teacher"]), "--output", str(target), "--device", "cpu", "--quiet"],
        "data pack": lambda: ["data", "pack", str(inputs["images"]), str(target), "--shard-size", "4", "--quiet"],
    }
    return commands[verb]()


def assert_one_paragraph(verb: str, code: int | None, err: str) -> str:
    assert code == 2 and "Traceback" not in err, (verb, code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"softdistill {verb.split()[0]}: error: "), err
    return lines[0]


@pytest.mark.parametrize("verb", VERBS)
def test_a_file_in_the_way_of_any_commands_output_is_one_paragraph(tmp_path, inputs, verb, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("I am a file")
    code = main(argv_of(verb, blocker / "sub", inputs, "file"))
    message = assert_one_paragraph(verb, code, capsys.readouterr().err)
    assert f"{blocker} is a file, not a folder" in message
    assert blocker.read_text() == "I am a file"


# Runs in its own user and mount namespace: for each case, a tmpfs of the case's size (read-only when
# asked) at the case's folder, the command run in this process, its exit status and stderr recorded.
FULL_DISK = r'''
import contextlib, io, json, os, subprocess, sys, traceback
from softdistill.cli import main

cases, report = json.loads(open(sys.argv[1]).read()), sys.argv[2]
results = []
for case in cases:
    disk = case["disk"]
    os.makedirs(disk, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={case['size']}", "tmpfs", disk], check=True)
    if case["read_only"]:
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(case["argv"])
        text = err.getvalue()
    except BaseException:
        code, text = None, err.getvalue() + traceback.format_exc()
    left = sorted(os.path.relpath(os.path.join(d, f), disk) for d, _, files in os.walk(disk) for f in files)
    results.append({**case, "code": code, "err": text, "left": left})
    subprocess.run(["umount", disk], check=True)
open(report, "w").write(json.dumps(results))
'''

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE, "sh", "-c", "mount -t tmpfs -o size=8k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


# sizes that stop each command at another write: its folder, lock, first files, checkpoints, shards, manifest
SIZES = ("4k", "12k", "32k", "96k", "256k", "1m")


@pytest.mark.skipif(not namespaces_allowed(), reason="no user and mount namespaces here (unshare) for a real tmpfs")
def test_a_read_only_or_full_disk_of_any_size_is_one_paragraph_for_every_command(tmp_path, inputs):
    cases = []
    for verb in VERBS:
        for size, read_only in [("1m", True), *((s, False) for s in SIZES)]:
            disk = tmp_path / f"{verb.replace(' ', '-')}-{size}{'-ro' if read_only else ''}"
            cases.append({"verb": verb, "size": size, "read_only": read_only, "disk": str(disk),
                          "argv": argv_of(verb, disk / "out", inputs, f"{size}-{read_only}")})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    subprocess.run([*UNSHARE, sys.executable, "-c", FULL_DISK, str(tmp_path / "cases.json"), str(tmp_path / "out.json")],
                   env=env, check=True, timeout=900)
    results = json.loads((tmp_path / "out.json").read_text())
    stopped = {verb: [] for verb in VERBS}
    for r in results:
        if r["code"] == 0:  # the disk was large enough
            assert not r["read_only"], r
            continue
        message = assert_one_paragraph(r["verb"], r["code"], r["err"])
        assert ("Read-only file system" in message) if r["read_only"] else ("No space left on device" in message
                                                                            or "disk is full" in message), r
        assert not [f for f in r["left"] if f.endswith(".tmp")], r  # nothing half-written left behind
        stopped[r["verb"]].append(r["size"])
    for verb, sizes in stopped.items():  # every command was stopped by a full disk at several sizes
        assert len(sizes) >= 3, (verb, sizes)


def test_a_download_folder_that_cannot_be_made_is_one_paragraph(tmp_path, capsys):
    blocker = tmp_path / "data"
    blocker.write_text("a file")
    recipe = tmp_path / "mnist.yaml"
    recipe.write_text(yaml.safe_dump({**SYNTHETIC, "output_dir": str(tmp_path / "runs"),
                                      "data": {"name": "mnist", "root": str(blocker / "mnist"), "download": True}}))
    message = assert_one_paragraph("train", main(["train", str(recipe), "--quiet"]), capsys.readouterr().err)
    assert f"{blocker} is a file, not a folder" in message  # before any download is tried
