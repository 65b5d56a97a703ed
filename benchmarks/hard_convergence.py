"""Convergence of HARD against its baselines, from finished compare runs (benchmarks/results/hard.md).

For each recipe: mean ± std over seeds of the test accuracy at a few epochs, and the first epoch
at which each seed reaches a target accuracy (default: 99 % of the first recipe's final mean).

Usage: python benchmarks/hard_convergence.py OUTPUT_DIR RECIPE_NAME... [--epochs 1 2 5 10 20] [--target 0.99]
"""

from __future__ import annotations

import argparse

from softdistill.report.tables import aggregate_runs, mean_std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("names", nargs="+")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--target", type=float, default=0.99, help="share of the first recipe's final mean accuracy")
    args = parser.parse_args()
    results = aggregate_runs(args.output_dir, args.names)
    target = args.target * mean_std(results[0].last)[0]
    print("| recipe | " + " | ".join(f"epoch {e}" for e in args.epochs)
          + f" | first epoch ≥ {target:.2f} % (per seed) |")
    print("|---" * (len(args.epochs) + 2) + "|")
    for r in results:
        cells = []
        for epoch in args.epochs:
            values = [acc for epochs, accs in r.series("test/acc") for e, acc in zip(epochs, accs) if e == epoch]
            mean, std = mean_std(values)
            cells.append("n/a" if not values else f"{mean:.2f} ± " + ("n/a" if len(values) < 2 else f"{std:.2f}"))
        reached = [next((e for e, acc in zip(epochs, accs) if acc >= target), None) for epochs, accs in r.series("test/acc")]
        shown = ", ".join("never" if e is None else str(e) for e in reached)
        print(f"| {r.name} | " + " | ".join(cells) + f" | {shown} |")


if __name__ == "__main__":
    main()
