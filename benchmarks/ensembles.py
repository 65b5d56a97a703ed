"""Ensembles of teachers (issue 27): which teachers teach, alone and combined, and what training from a store
of an ensemble costs.

``experiment``: KD of the quickstart's student (recipes/quickstart/kd.yaml: MLP, 300 Fashion-MNIST images
per class, 40 epochs, alpha 0.9, T = 4) from each of the five teachers of recipes/ensembles/ alone and
from their ensembles (one recipe per combine rule, and the mean of the three good teachers), beside the
cross-entropy baseline, over seeds, with ``softdistill compare``; then ``softdistill inspect`` of the
ensemble recipe: every member's indicators on the students' 3,000 images.  Prints one table: each
member's indicators beside what it teaches alone, then every combine rule::

    python benchmarks/ensembles.py experiment runs/ensembles --seeds 3 --jobs 2 -o train.threads=1

``speed``: student steps per second of KD from a store of one teacher, from a store of an ensemble of
three teachers (their combined soft labels, written once) and from an ensemble of three stores
(combined at every step), the modes alternated round by round in one process, ratios within a round
(min / median / max over rounds), as benchmarks/store_benchmark.py measures (its workload: ResNet-20
teachers, ResNet-8 student, 100 classes, 3x32x32 random images, batch 128)::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 \\
        python benchmarks/ensembles.py speed --threads 2
    python benchmarks/ensembles.py speed --tiny      # seconds: proves the script runs, numbers mean nothing
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from softdistill.config import read_recipe_file
from softdistill.experiments import compare, packaged_recipes
from softdistill.models import build_model
from softdistill.report.inspect import inspect_soft_labels
from softdistill.report.tables import mean_std
from softdistill.soft_labels.ensemble import CombineConfig, Ensemble
from softdistill.soft_labels.store import StoredSoftLabels
from softdistill.soft_labels.teacher import FrozenTeacher
from softdistill.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from store_benchmark import (CLASSES, SIZE, cycling, label_into, spread, steps_per_second,  # noqa: E402
                             student_step, workload)

ENSEMBLES = ("kd-mean-probabilities", "kd-mean-logits", "kd-fixed-weights", "kd-confidence", "kd-indicators",
             "kd-mean-good")
#: the recipe whose members every ensemble recipe lists (in the same order), and whose indicators are measured
MEMBERS_OF = "kd-indicators"
SHORT = ("ResNet-8 seed 0", "ResNet-8 seed 1", "MLP-1024", "ResNet-8 epoch 1", "SBT (MLP)")


def alone_recipes(folder: Path) -> list[Path]:
    """KD from each member alone: the quickstart's KD recipe with the member's section (member 0 is that recipe)."""
    ensembles = packaged_recipes("ensembles")
    kd = packaged_recipes("quickstart") / "kd.yaml"
    members = read_recipe_file(ensembles / f"{MEMBERS_OF}.yaml")["soft_labels"]["members"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [kd]
    for index, member in enumerate(members[1:], start=1):
        raw = read_recipe_file(kd)
        raw["name"] = f"fmnist-kd-member{index}"
        raw["description"] = f"MLP on 300 images per class, KD from member {index} alone: {SHORT[index]}"
        raw["soft_labels"] = {**member, "recipe": str((ensembles / member["recipe"]).resolve())}
        path = folder / f"kd-member{index}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        paths.append(path)
    return paths


def experiment(args: argparse.Namespace) -> None:
    out = Path(args.output)
    ensembles = packaged_recipes("ensembles")
    alone = alone_recipes(out / "recipes")
    recipes = [packaged_recipes("quickstart") / "baseline.yaml", *alone,
               *(ensembles / f"{name}.yaml" for name in ENSEMBLES)]
    result = compare(recipes, seeds=args.seeds, overrides=args.override, output_dir=out, jobs=args.jobs,
                     quiet=args.quiet)
    print(result.markdown)
    inspected = inspect_soft_labels(ensembles / f"{MEMBERS_OF}.yaml", overrides=[f"output_dir={out}"],
                                    output_dir=out / "inspect", device="cpu", quiet=args.quiet).summary
    accuracy = {r.name: mean_std(r.last) for r in result.results}
    names = [read_recipe_file(path)["name"] for path in recipes]
    print("\n## Members: indicators on the students' images, and KD from each alone\n")
    print("| member | its top-1 on the students' images (%) | Δ_1 + γ_1 | Δ_2 + γ_2 | Δ_3 + γ_3 | condition holds at k | "
          "able to teach | KD alone: test acc, last epoch (%) |\n|---|---:|---:|---:|---:|---|:---:|---:|")
    for short, member, name in zip(SHORT, inspected["members"], names[1:]):
        sums = " | ".join(f"{r['sum']:.3f}" for r in member["indicators"][:3])
        holds = ", ".join(map(str, member["condition_holds_at"])) or "none"
        mean, std = accuracy[name]
        print(f"| {short} | {member['soft_labels']['accuracy']:.2f} | {sums} | {holds} | "
              f"{'yes' if member['able_to_teach'] else 'no'} | {mean:.2f} ± {std:.2f} |")
    print("\n## Every combine rule (test acc at the last epoch, mean ± std over seeds)\n\n| recipe | test acc (%) |\n"
          "|---|---:|")
    for name in [names[0], *names[len(alone) + 1:]]:
        mean, std = accuracy[name]
        print(f"| {name} | {mean:.2f} ± {std:.2f} |")


def speed(args: argparse.Namespace) -> None:
    train, in_order = workload(args)
    data = train.data
    teachers = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        teachers.append(FrozenTeacher(build_model("resnet20", CLASSES, 3, SIZE)))
    combine = CombineConfig(average="probabilities", temperature=4.0, weights="confidence")
    with tempfile.TemporaryDirectory() as tmp:
        folders = [Path(tmp) / f"teacher{i}" for i in range(len(teachers))]
        for folder, teacher in zip(folders, teachers):
            label_into(folder, teacher, in_order, 1, 4096)
        label_into(Path(tmp) / "ensemble", Ensemble(teachers, combine), in_order, 1, 4096)

        def stored(folder: Path) -> StoredSoftLabels:
            source = StoredSoftLabels(Store(folder))
            source.verify_lookups(data.ids, 1)  # once, as a run does: lookups unchecked per batch
            return source

        next_batch = cycling(train)
        modes = {"store of one teacher": student_step(stored(folders[0]), next_batch),
                 "store of an ensemble of 3": student_step(stored(Path(tmp) / "ensemble"), next_batch),
                 "ensemble of 3 stores": student_step(Ensemble([stored(f) for f in folders], combine), next_batch)}
        rates: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, step in modes.items():
                rates[name].append(steps_per_second(step, args.steps))
    reference = rates["store of one teacher"]
    print(f"## KD student steps per second (batch {train.batch_size}, {args.threads} threads, {args.rounds} rounds; ensembles: "
          f"{combine.weights} weights, probabilities at T = {combine.temperature:g})\n")
    print("| mode | steps/s (median) | vs a store of one teacher: min / median / max |\n|---|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.2f} | {spread(values, reference)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("experiment", help="KD from each teacher and from each combine rule, over seeds")
    exp.add_argument("output", help="output folder of the runs and reports")
    exp.add_argument("--seeds", type=int, default=3)
    exp.add_argument("--jobs", type=int, default=1)
    exp.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    exp.add_argument("--quiet", action="store_true")
    exp.set_defaults(run=experiment)
    spd = sub.add_parser("speed", help="KD from a store of one teacher, of an ensemble, and from an ensemble of stores")
    spd.add_argument("--threads", type=int, default=2)
    spd.add_argument("--samples", type=int, default=10_000, help="training samples of the workload")
    spd.add_argument("--steps", type=int, default=30, help="student steps per mode and round")
    spd.add_argument("--rounds", type=int, default=5)
    spd.add_argument("--tiny", action="store_true", help="a few samples and steps: checks that the script runs")
    spd.set_defaults(run=speed)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
