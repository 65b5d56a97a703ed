"""The error of the store's top-k rebuilding rule against the full distribution (a measurement, not a timing).

For a teacher checkpoint's logits on its training split (clean images), every k and temperature T:
``KL(p_T || p_hat_T)`` in nats, mean and maximum over samples, where ``p_T = softmax(z / T)`` and
``p_hat_T = softmax(z_hat / T)`` with ``z_hat`` the logits a top-k record of the store rebuilds
(softdistill.store.encoding: the tail's log-mass spread evenly over the classes left out).
Prints a markdown table::

    python benchmarks/store_topk_error.py --teacher runs/tiny/digits-teacher/seed0/best.pt --ks 1 3 5 --temperatures 1 4
"""

from __future__ import annotations

import argparse

import torch

from softdistill.checkpoint import CheckpointMeta, load_checkpoint, model_from_checkpoint
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.evaluation import saved_data
from softdistill.engine.predict import predict
from softdistill.store import Encoding


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(softmax(p / T) || softmax(q / T)) in float64."""
    log_p = torch.log_softmax(p_logits.double() / temperature, dim=1)
    log_q = torch.log_softmax(q_logits.double() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="a softdistill checkpoint")
    parser.add_argument("--root", help="data folder")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--limit", type=int, help="use the first N training samples only")
    args = parser.parse_args()

    payload = load_checkpoint(args.teacher)
    data = prepare_data(saved_data(CheckpointMeta.of(payload, args.teacher), root=args.root))
    train = data.train if args.limit is None else data.train.subset(torch.arange(min(args.limit, len(data.train))))
    norm = payload["normalization"]
    loader = BatchLoader(train, 1024, BatchTransform(norm["mean"], norm["std"]))
    logits = predict(model_from_checkpoint(payload, args.teacher), loader).logits
    classes = logits.shape[1]
    entropy = -(torch.softmax(logits.double(), 1) * torch.log_softmax(logits.double(), 1)).sum(1).mean().item()
    print(f"{payload['model']['name']} on {data.name} train: {len(train)} samples, K = {classes}, "
          f"mean entropy at T=1 {entropy:.4f} nats\n")
    print("| k | " + " | ".join(f"KL mean, T={t:g} | KL max, T={t:g}" for t in args.temperatures) + " |")
    print("|---:|" + "---:|---:|" * len(args.temperatures))
    for k in args.ks:
        encoding = Encoding("topk", classes, "float32", k)
        rebuilt = encoding.decode(encoding.encode(logits))
        cells = []
        for t in args.temperatures:
            kl = kl_rows(logits, rebuilt, t)
            cells += [f"{kl.mean().item():.2e}", f"{kl.max().item():.2e}"]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
