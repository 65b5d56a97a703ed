"""How well does a teacher order the classes of clean and mixed images? (IDA's diagnostic.)

For a teacher checkpoint and its data set's test split: order concordance and top-2 hit rate of
the teacher's logits on clean images, on mixup and on cutmix images (lam ~ Beta(1, 1), one per
batch, partners drawn by a permutation of each batch), before and after isotonic correction.
Prints a markdown table.

    python benchmarks/ida_teacher_order.py runs/benchmarks/fmnist/fmnist-teacher/seed0/best.pt
"""

from __future__ import annotations

import argparse

import torch

from softdistill.augment import cutmix, mixup
from softdistill.checkpoint import load_checkpoint, model_from_checkpoint
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.isotonic import isotonic_logits
from softdistill.metrics.ordering import order_concordance, top2_hit_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    payload = load_checkpoint(args.checkpoint)
    cfg = payload["config"]["data"]
    data = prepare_data(cfg["name"], root=cfg.get("root"), val_size=cfg["val_size"], split_seed=cfg.get("split_seed", 0))
    model = model_from_checkpoint(payload, args.checkpoint).eval()
    norm = payload["normalization"]
    loader = BatchLoader(data.test, args.batch_size, BatchTransform(norm["mean"], norm["std"]))
    torch.manual_seed(args.seed)
    rows = {name: {"n": 0, "conc": 0.0, "top2": 0.0, "both": 0.0, "conc_ir": 0.0, "top2_ir": 0.0}
            for name in ("clean", "mixup", "cutmix")}
    with torch.inference_mode():
        for batch in loader:
            views = {"clean": (batch.x, batch.y, batch.y, torch.ones(len(batch)))}
            views["mixup"] = mixup(batch.x, batch.y, 1.0)
            views["cutmix"] = cutmix(batch.x, batch.y, 1.0)
            for name, (x, a, b, lam) in views.items():
                logits = model(x)
                corrected = isotonic_logits(logits, a, b, lam)
                n = len(a)
                row = rows[name]
                row["n"] += n
                row["conc"] += n * float(order_concordance(logits, a, b, lam))
                row["top2"] += n * float(top2_hit_rate(logits, a, b))
                row["both"] += n * float(top2_hit_rate(logits, a, b, both=True))
                row["conc_ir"] += n * float(order_concordance(corrected, a, b, lam))
                row["top2_ir"] += n * float(top2_hit_rate(corrected, a, b))
    print(f"Teacher {args.checkpoint} ({payload['model']['name']}), {cfg['name']} test split, "
          f"{rows['clean']['n']} images, lam ~ Beta(1,1) per batch, seed {args.seed}\n")
    print("| input | order concordance | a or b in top-2 (%) | neither in top-2 (%) | both a and b in top-2 (%) "
          "| concordance after IR | a or b in top-2 after IR (%) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        n = r["n"]
        print(f"| {name} | {r['conc'] / n:.3f} | {100 * r['top2'] / n:.2f} | {100 * (1 - r['top2'] / n):.2f} "
              f"| {100 * r['both'] / n:.2f} | {r['conc_ir'] / n:.3f} | {100 * r['top2_ir'] / n:.2f} |")


if __name__ == "__main__":
    main()
