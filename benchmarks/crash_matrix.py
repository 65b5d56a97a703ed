"""Crash matrix: kill a real training process (SIGKILL) at each kill point, resume it, and check
that the resumed run ends bit-identical to an uninterrupted one.

    PYTHONPATH=src python benchmarks/crash_matrix.py [--points POINT ...] [--out FILE]

The run is a 3-epoch MLP on the synthetic data set whose validation accuracy peaks at epoch 2, so
"best" is neither the first nor the last epoch.  For each kill point a child process (this script
with ``--child POINT``) arms the kill and runs ``softdistill train``: ``FILE:before:N`` kills it
while the N-th write of FILE is a temporary not yet renamed (mid-write), ``FILE:after:N`` right
after the N-th write lands, ``step:K`` after the K-th optimiser step (mid-epoch; 10 steps an
epoch).  Points named ``mid/...`` run the same recipe with mid-epoch checkpoints
(``train.checkpoint_every: 4``): ``last.pt`` is then written after steps 4 and 8 of every epoch
and at its end, so its writes 1, 2, 4, 5, 7, 8 are mid-epoch and 3, 6, 9 end epochs 1, 2, 3; such a
point is compared with an uninterrupted run of that recipe.  Then ``softdistill train --resume`` runs in the same folder (a plain start where no
``last.pt`` was written yet, as compare does; a folder whose ``summary.json`` was written before the
kill must refuse the resume), and the folder is compared with the
uninterrupted run: last.pt and best.pt weights (bit for bit), best.pt's epoch, summary.json and
metrics.jsonl (timing aside) and the list of files (no temporaries, no lock left behind).
This is a correctness check, not a timing measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RECIPE = {
    "name": "crash", "student": "mlp", "epochs": 3, "seed": 1,
    "data": {"name": "synthetic", "val_size": 100, "batch_size": 50},
    "optim": {"name": "sgd", "lr": 0.2}, "schedule": {"name": "constant"},
    "train": {"device": "cpu", "threads": 1},
}

CHECKPOINT_EVERY = 4
VARIANTS = {"": RECIPE, "mid": {**RECIPE, "train": {**RECIPE["train"], "checkpoint_every": CHECKPOINT_EVERY}}}

KILL_POINTS = {
    "config.yaml:after:1": "after config.yaml, before any step",
    "step:5": "mid-epoch 1 (after step 5)",
    "last.pt:after:1": "after epoch 1's last.pt, before its best.pt",
    "step:15": "mid-epoch 2 (after step 15)",
    "last.pt:before:2": "while epoch 2's last.pt is being written",
    "last.pt:after:2": "between last.pt and best.pt of epoch 2 (the best epoch)",
    "best.pt:before:2": "while epoch 2's best.pt is being written",
    "best.pt:after:2": "after epoch 2's best.pt, before metrics.jsonl",
    "metrics.jsonl:after:2": "after all of epoch 2's files",
    "step:25": "mid-epoch 3 (after step 25)",
    "last.pt:after:3": "after the final last.pt, before metrics and summary",
    "metrics.jsonl:after:3": "before summary.json",
    "summary.json:before:1": "while summary.json is being written",
    "summary.json:after:1": "after summary.json (the run has finished)",
    # with a mid-epoch checkpoint every 4 steps
    "mid/last.pt:after:1": "after the first mid-epoch last.pt (epoch 1, step 4), no epoch done",
    "mid/step:6": "mid-epoch 1, between mid-epoch checkpoints (after step 6)",
    "mid/last.pt:before:2": "while the mid-epoch last.pt of epoch 1, step 8 is being written",
    "mid/last.pt:after:3": "after epoch 1's last.pt (which replaced a mid-epoch one), before its best.pt",
    "mid/last.pt:after:4": "after epoch 2's first mid-epoch last.pt (step 2 of epoch 2)",
    "mid/step:19": "mid-epoch 2 after its last mid-epoch checkpoint (after step 19)",
    "mid/last.pt:after:6": "between last.pt and best.pt of epoch 2 (the best epoch), after mid-epoch ones",
    "mid/best.pt:before:2": "while epoch 2's best.pt is being written",
    "mid/last.pt:after:8": "after the final epoch's last mid-epoch last.pt (epoch 3, step 8)",
    "mid/last.pt:after:9": "after the final last.pt, before metrics and summary",
}


def split_point(point: str) -> tuple[str, str]:
    """``(variant, kill point)``: ``mid/last.pt:after:1`` -> ``("mid", "last.pt:after:1")``."""
    variant, _, kill = point.rpartition("/")
    return variant, kill


def arm(point: str) -> None:
    """Make this process SIGKILL itself at ``point`` (see the module docstring)."""
    kind, *rest = point.split(":")
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if kind == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        steps = [0]

        def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
            steps[0] += 1
            if steps[0] == int(rest[0]):
                die()

        register_optimizer_step_post_hook(after_step)
        return
    when, n = rest[0], int(rest[1])
    real, writes = os.replace, [0]

    def replace(src: Any, dst: Any) -> None:
        hit = Path(dst).name == kind and (writes.__setitem__(0, writes[0] + 1) or writes[0] == n)
        if hit and when == "before":
            die()
        real(src, dst)
        if hit and when == "after":
            die()

    os.replace = replace


def train(recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softdistill", "train", str(recipe), "--quiet", *extra],
                          capture_output=True, text=True, timeout=900)


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("seconds")}


def folder_state(run: Path) -> str:
    """What a kill left: the epochs of last.pt and best.pt (``1 + 4 steps``: a mid-epoch last.pt after
    epoch 1 and 4 steps of epoch 2), and whether summary.json exists."""
    from softdistill.checkpoint import load_checkpoint

    def epoch(name: str) -> str:
        if not (run / name).is_file():
            return "-"
        payload = load_checkpoint(run / name)
        step = payload.get("step")
        return f"{payload['epoch']}" + (f" + {step['step']} steps" if step else "")

    return f"{epoch('last.pt')} / {epoch('best.pt')} / {'yes' if (run / 'summary.json').is_file() else 'no'}"


def compare_runs(reference: Path, run: Path) -> dict[str, bool]:
    """Which parts of ``run`` equal the uninterrupted ``reference``."""
    import torch

    from softdistill.checkpoint import load_checkpoint

    def same_weights(name: str) -> bool:
        if not (run / name).is_file():
            return False
        a, b = load_checkpoint(reference / name), load_checkpoint(run / name)
        return (a["epoch"] == b["epoch"] and a["state_dict"].keys() == b["state_dict"].keys()
                and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]))

    def records(folder: Path, name: str) -> Any:
        path = folder / name
        if not path.is_file():
            return None
        if name == "summary.json":
            return without_timing(json.loads(path.read_text()))
        return [without_timing(json.loads(line)) for line in path.read_text().splitlines()]

    return {"last.pt": same_weights("last.pt"), "best.pt": same_weights("best.pt"),
            "summary, metrics": all(records(reference, n) == records(run, n) for n in ("summary.json", "metrics.jsonl")),
            "files": sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())}


def run_matrix(work: Path, points: list[str]) -> list[dict[str, Any]]:
    def recipe_file(name: str, variant: str) -> Path:
        path = work / f"{name}.yaml"
        path.write_text(json.dumps({**VARIANTS[variant], "output_dir": str(work / name)}))
        return path

    references = {}
    for variant in dict.fromkeys(split_point(point)[0] for point in points):
        done = train(recipe_file(f"reference{variant}", variant))
        if done.returncode != 0:
            raise SystemExit(f"the uninterrupted run {variant or 'plain'} failed:\n{done.stderr}")
        references[variant] = work / f"reference{variant}" / RECIPE["name"] / f"seed{RECIPE['seed']}"
    rows = []
    for i, point in enumerate(points):
        variant, kill = split_point(point)
        reference = references[variant]
        path = recipe_file(f"point{i}", variant)
        killed = subprocess.run([sys.executable, __file__, "--child", kill, str(path)], capture_output=True,
                                text=True, timeout=900)
        run = work / f"point{i}" / RECIPE["name"] / f"seed{RECIPE['seed']}"
        left = folder_state(run)
        again = ["--resume"] if (run / "last.pt").is_file() else []  # no epoch finished: start again, as compare does
        resumed = train(path, *again)
        finished_before = killed.returncode == -signal.SIGKILL and "summary.json:after" in point
        resume_ok = resumed.returncode == (2 if finished_before else 0)
        checks = compare_runs(reference, run)
        error = resumed.stderr.replace(str(run), "RUN").strip().splitlines()[-1:]
        rows.append({"point": point, "where": KILL_POINTS.get(point, ""), "killed": killed.returncode == -signal.SIGKILL,
                     "left": left, "again": " ".join(again) or "plain start", "resume": resumed.returncode,
                     "error": error, **checks, "identical": resume_ok and all(checks.values())})
        print(f"{point:28} killed={rows[-1]['killed']} left={left} resume={resumed.returncode} "
              f"identical={rows[-1]['identical']}", flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    mark = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = ["| kill point | where | after the kill: last.pt / best.pt epoch / summary | restart: exit code | "
             "last.pt | best.pt | summary, metrics | files | bit-identical |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        resume = f"{r['again']}: {r['resume']}" + (f" ({r['error'][0][:120]})" if r["resume"] != 0 and r["error"] else "")
        lines.append(f"| `{r['point']}` | {r['where']}{'' if r['killed'] else ' (not killed!)'} | {r['left']} | {resume} "
                     f"| {mark(r['last.pt'])} | {mark(r['best.pt'])} | {mark(r['summary, metrics'])} | "
                     f"{mark(r['files'])} | {mark(r['identical'])} |")
    ok = sum(r["identical"] for r in rows)
    return f"`{command}`\n\n{ok} of {len(rows)} kill points end bit-identical.\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("POINT", "RECIPE"), help=argparse.SUPPRESS)
    parser.add_argument("--points", nargs="*", default=list(KILL_POINTS), help="kill points (default: all)")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here")
    args = parser.parse_args()
    if args.child:
        point, recipe = args.child
        arm(point)
        from softdistill.cli import main as softdistill

        sys.exit(softdistill(["train", recipe, "--quiet"]))
    with tempfile.TemporaryDirectory(prefix="crash-matrix-") as work:
        rows = run_matrix(Path(work), args.points)
    table = markdown(rows, "PYTHONPATH=src python benchmarks/crash_matrix.py " + " ".join(sys.argv[1:]))
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
