"""The store experiment behind benchmarks/results/store.md (experiment section).

Fashion-MNIST, the quickstart's ResNet-8 teacher and MLP student on 300 images per class, E
epochs (default 20), seeds 0..N-1, crop+flip augmentation (pad 2, flip) unless said otherwise:

- KD with the teacher online (a fresh view every epoch) against KD from a float32 store of E
  views that cycles through V = 1, 4, 16 or E of them; V = E replays the online run's views;
- KD from top-k stores (k = 1, 3, 5; float32 values, the tail rule of docs/store.md) of the same
  E views against the full store;
- IDA KD-i (replace) on mixup views from the quickstart's store (40 views, of which it shows the
  first E) against the same recipe with the teacher online;
- references: plain CE with crop+flip, KD on the clean images (the quickstart's cached KD row).

The crop+flip stores are labelled here, once; the mixup store by the artifact resolver (shared
with the quickstart). At the end the script compares the final weights of the pairs that replay
the same views (online KD and V = E; online and stored IDA) and says whether they are bit-identical.

Usage: python benchmarks/store_experiment.py [OUTPUT_DIR] [--seeds N] [--epochs E] [-o key=value ...]
(the teacher is shared with the quickstart's and the other Fashion-MNIST benchmarks' OUTPUT_DIR).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softdistill.checkpoint import load_checkpoint
from softdistill.config import load_recipe
from softdistill.experiments import packaged_recipes, write_report
from softdistill.runner import label_recipe, run_recipe
from softdistill.runs import check_same_recipe, run_dir_state

STORE = packaged_recipes("store")
QUICKSTART = packaged_recipes("quickstart")
ENCODINGS = {"full": "{kind: full, dtype: float32}",
             **{f"top{k}": f"{{kind: topk, k: {k}, dtype: float32}}" for k in (1, 3, 5)}}
ONLINE_TEACHER = "{source: teacher, recipe: ../quickstart/teacher.yaml}"


def store_folder(out: Path, encoding: str, epochs: int) -> Path:
    """The crop+flip store of ``epochs`` views in one of the ENCODINGS."""
    return out / f"fmnist-store-cropflip-{encoding}-v{epochs}" / "seed0"


def rows(out: Path, epochs: int) -> dict[str, tuple[Path, list[str], str | None]]:
    """Every row of the table, in the order they run: name -> (recipe, overrides, the encoding of
    the crop+flip store it reads, or None)."""
    kd, ida = STORE / "kd-cropflip.yaml", QUICKSTART / "ida-mixup-kdi.yaml"

    def stored(encoding: str, views: int) -> list[str]:
        return [f"soft_labels={{source: store, path: {store_folder(out.resolve(), encoding, epochs)}}}",
                f"data.views={views}"]

    table = {f"fmnist-kd-cropflip-v{v}": (kd, stored("full", v), "full") for v in sorted({1, 4, 16, epochs})}
    table.update({f"fmnist-kd-cropflip-{e}": (kd, stored(e, epochs), e) for e in ENCODINGS if e != "full"})
    table.update({
        "fmnist-kd-cropflip-online": (kd, [f"soft_labels={ONLINE_TEACHER}", "data.views=0"], None),
        "fmnist-ce-cropflip": (kd, ["soft_labels=null", "method={name: ce}", "data.views=0"], None),
        "fmnist-kd-clean": (QUICKSTART / "kd.yaml", [], None),
        # the quickstart's store of 40 mixup views, of which the run shows the first E
        "fmnist-ida-mixup-kdi-store": (ida, [f"data.views={epochs}"], None),
        "fmnist-ida-mixup-kdi-online": (ida, ["soft_labels={source: teacher, recipe: teacher.yaml}", "data.views=0"],
                                        None),
    })
    return {name: (path, [*overrides, f"epochs={epochs}"], encoding) for name, (path, overrides, encoding) in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", default="runs/benchmarks/fmnist", help="output folder (OUTPUT_DIR)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20, help="of every student, and the views of each store")
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="key=value for every recipe")
    args = parser.parse_args()
    out, epochs = Path(args.output), args.epochs
    machine = [*args.overrides, f"output_dir={out}"]
    table = rows(out, epochs)
    for name, (path, overrides, encoding) in table.items():
        if encoding is not None:  # labelled once, before the first row that reads it
            label_recipe(load_recipe(STORE / "fmnist-cropflip.yaml", [
                *machine, f"name={store_folder(out, encoding, epochs).parent.name}", f"encoding={ENCODINGS[encoding]}",
                f"data.views={epochs}"]))
        for seed in range(args.seeds):
            recipe = load_recipe(path, [*overrides, *machine, "train.eval_every=2", f"name={name}", f"seed={seed}"])
            check_same_recipe(recipe)
            state = run_dir_state(recipe.run_dir)
            if state != "finished":
                summary = run_recipe(recipe, resume=state == "partial", quiet=True)
                print(f"{name} seed {seed}: {summary['test_acc_last']:.2f}% last, {summary['test_acc_best']:.2f}% best",
                      flush=True)
    report = write_report(out, list(table), "fmnist-kd-cropflip-online", title="softdistill store experiment",
                          report_dir=out / "report-store")
    print(report.markdown)
    same_views = (("fmnist-kd-cropflip-online", f"fmnist-kd-cropflip-v{epochs}"),
                  ("fmnist-ida-mixup-kdi-online", "fmnist-ida-mixup-kdi-store"))  # the same views and soft labels
    for a, b in same_views:
        for seed in range(args.seeds):
            wa, wb = (load_checkpoint(out / name / f"seed{seed}" / "last.pt")["state_dict"] for name in (a, b))
            diff = max(float((wa[key].double() - wb[key].double()).abs().max()) for key in wa)
            print(f"{a} vs {b}, seed {seed}: " + ("bit-identical weights" if diff == 0 else
                                                  f"weights differ by at most {diff:.3g}"))


if __name__ == "__main__":
    main()
