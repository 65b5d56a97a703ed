"""How well does a teacher order the classes of clean and mixed images? (IDA's diagnostic.)

For a teacher checkpoint and its data set's test split: order concordance and top-2 hit rate of
the teacher's logits on clean images, on mixup and on cutmix images (the views of a mixing plan:
lam ~ Beta(1, 1) per sample, a partner drawn among the other samples of the split, both a pure
function of (seed, sample id)), before and after isotonic correction.  Prints a markdown table.

    python benchmarks/ida_teacher_order.py runs/benchmarks/fmnist/fmnist-teacher/seed0/best.pt
"""

from __future__ import annotations

import argparse

import torch

from softdistill.checkpoint import CheckpointMeta, load_checkpoint, model_from_checkpoint
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.data.views import ViewPlan
from softdistill.evaluation import saved_data
from softdistill.isotonic import isotonic_logits
from softdistill.metrics.ordering import order_concordance, top2_hit_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    payload = load_checkpoint(args.checkpoint)
    meta = CheckpointMeta.of(payload, args.checkpoint)
    data = prepare_data(saved_data(meta))
    model = model_from_checkpoint(payload, args.checkpoint).eval()
    transform = BatchTransform(meta.normalization.mean, meta.normalization.std)
    rows = {name: {"n": 0, "conc": 0.0, "top2": 0.0, "both": 0.0, "conc_ir": 0.0, "top2_ir": 0.0}
            for name in ("clean", "mixup", "cutmix")}
    with torch.inference_mode():
        for name, mix in (("clean", "none"), ("mixup", "mixup"), ("cutmix", "cutmix")):
            plan = ViewPlan(mix=mix, mix_alpha=1.0, seed=args.seed, views=1)
            for batch in BatchLoader(data.test, args.batch_size, transform, plan=plan):
                a = batch.y
                b, lam = (batch.y_b, batch.lam) if batch.is_mixed else (a, torch.ones(len(a)))
                logits = model(batch.x)
                corrected = isotonic_logits(logits, a, b, lam)
                n = len(a)
                row = rows[name]
                row["n"] += n
                row["conc"] += n * float(order_concordance(logits, a, b, lam))
                row["top2"] += n * float(top2_hit_rate(logits, a, b))
                row["both"] += n * float(top2_hit_rate(logits, a, b, both=True))
                row["conc_ir"] += n * float(order_concordance(corrected, a, b, lam))
                row["top2_ir"] += n * float(top2_hit_rate(corrected, a, b))
    print(f"Teacher {args.checkpoint} ({meta.model.name}), {data.name} test split, "
          f"{rows['clean']['n']} images, lam ~ Beta(1,1) per sample, view seed {args.seed}\n")
    print("| input | order concordance | a or b in top-2 (%) | neither in top-2 (%) | both a and b in top-2 (%) "
          "| concordance after IR | a or b in top-2 after IR (%) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        n = r["n"]
        print(f"| {name} | {r['conc'] / n:.3f} | {100 * r['top2'] / n:.2f} | {100 * (1 - r['top2'] / n):.2f} "
              f"| {100 * r['both'] / n:.2f} | {r['conc_ir'] / n:.3f} | {100 * r['top2_ir'] / n:.2f} |")


if __name__ == "__main__":
    main()
