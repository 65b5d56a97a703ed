"""The store experiment behind benchmarks/results/store.md (experiment section).

Fashion-MNIST, the quickstart's ResNet-8 teacher and MLP student on 300 images per class, 40
epochs, seeds 0..N-1, crop+flip augmentation (pad 2, flip) unless said otherwise:

- KD with the teacher online (a fresh view every epoch) against KD from a float32 store that
  cycles through V = 1, 4, 16 or 40 (= epochs) views; V = 40 replays the online run's views;
- KD from top-k stores (k = 1, 3, 5; float32 values, the tail rule of docs/store.md) of the same
  40 views against the full store;
- IDA KD-i (replace) on mixup views from the quickstart's store against the same recipe with
  the teacher online;
- references: plain CE with crop+flip, KD on the clean images (the quickstart's cached KD row).

Every store is labelled once (the top-k ones here, the others by the artifact resolver). At the
end the script compares the final weights of the pairs that replay the same views (online KD and
V = 40; online and stored IDA) and says whether they are bit-identical.

Usage: python benchmarks/store_experiment.py [OUTPUT_DIR] [--seeds N] [-o key=value ...]
(the teacher is shared with the quickstart's and the other Fashion-MNIST benchmarks' OUTPUT_DIR).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softdistill.checkpoint import load_checkpoint
from softdistill.config import load_label_recipe, load_recipe
from softdistill.experiments import packaged_recipes, write_report
from softdistill.runner import label_store, run_recipe
from softdistill.runs import check_same_recipe, run_dir_state

STORE = packaged_recipes("store")
QUICKSTART = packaged_recipes("quickstart")
TOP_K = (1, 3, 5)
ONLINE_TEACHER = "{source: teacher, recipe: ../quickstart/teacher.yaml}"


def rows(out: Path) -> dict[str, tuple[Path, list[str]]]:
    """Every row of the table: name -> (recipe, overrides)."""
    kd = STORE / "kd-cropflip.yaml"
    table = {
        "fmnist-ce-cropflip": (kd, ["soft_labels=null", "method={name: ce}", "data.views=0"]),
        "fmnist-kd": (QUICKSTART / "kd.yaml", []),
        "fmnist-kd-cropflip-online": (kd, [f"soft_labels={ONLINE_TEACHER}", "data.views=0"]),
    }
    table.update({f"fmnist-kd-cropflip-v{v}": (kd, [f"data.views={v}"]) for v in (1, 4, 16, 40)})
    table.update({f"fmnist-kd-cropflip-top{k}": (kd, [f"soft_labels={{source: store, path: {topk_store(out, k)}}}"])
                  for k in TOP_K})
    ida = QUICKSTART / "ida-mixup-kdi.yaml"
    table["fmnist-ida-mixup-kdi-online"] = (ida, ["soft_labels={source: teacher, recipe: teacher.yaml}", "data.views=0"])
    table["fmnist-ida-mixup-kdi"] = (ida, [])
    return table


def topk_store(out: Path, k: int) -> Path:
    return out / f"fmnist-store-cropflip-top{k}" / "seed0"


# pairs of rows whose students see the same views with the same soft labels (up to rounding)
SAME_VIEWS = (("fmnist-kd-cropflip-online", "fmnist-kd-cropflip-v40"),
              ("fmnist-ida-mixup-kdi-online", "fmnist-ida-mixup-kdi"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", default="runs/benchmarks/fmnist", help="output folder (OUTPUT_DIR)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="key=value for every recipe")
    args = parser.parse_args()
    out = Path(args.output)
    machine = [*args.overrides, f"output_dir={out}"]
    for k in TOP_K:
        label_store(load_label_recipe(STORE / "fmnist-cropflip.yaml", [
            *machine, f"name=fmnist-store-cropflip-top{k}", f"encoding={{kind: topk, k: {k}, dtype: float32}}"]))
    table = rows(out)
    for name, (path, overrides) in table.items():  # row by row: the IDA rows, which share the quickstart's store, last
        for seed in range(args.seeds):
            recipe = load_recipe(path, [*overrides, *machine, "train.eval_every=2", f"name={name}", f"seed={seed}"])
            check_same_recipe(recipe)
            state = run_dir_state(recipe.run_dir)
            if state != "finished":
                summary = run_recipe(recipe, resume=state == "partial", quiet=True)
                print(f"{name} seed {seed}: {summary['test_acc_last']:.2f}% last, {summary['test_acc_best']:.2f}% best")
    report = write_report(out, list(table), "fmnist-kd-cropflip-online", title="softdistill store experiment",
                          report_dir=out / "report-store")
    print(report.markdown)
    for a, b in SAME_VIEWS:
        for seed in range(args.seeds):
            wa, wb = (load_checkpoint(out / name / f"seed{seed}" / "last.pt")["state_dict"] for name in (a, b))
            diff = max(float((wa[key].double() - wb[key].double()).abs().max()) for key in wa)
            print(f"{a} vs {b}, seed {seed}: " + ("bit-identical weights" if diff == 0 else
                                                  f"weights differ by at most {diff:.3g}"))


if __name__ == "__main__":
    main()
