"""The error of the store's top-k rebuilding rule against the full distribution (a measurement, not a timing).

For a teacher checkpoint's logits on its training split (clean images), every k and temperature T:
``KL(p_T || p_hat_T)`` in nats, mean and maximum over samples, where ``p_T = softmax(z / T)`` and
``p_hat_T = softmax(z_hat / T)`` with ``z_hat`` the logits a top-k record of the store rebuilds
(softdistill.store.encoding: the tail's log-mass spread evenly over the classes left out).
Prints a markdown table; ``--methods`` adds a second one, the error of what each logit method that
a top-k store serves reads of the teacher, at its authors' default temperatures (means over samples):
KD's and MLKD's softened distributions, DKD's binary (target vs rest) and non-target distributions,
NKD's target probability and non-target distribution, DIST's per-sample correlation::

    python benchmarks/store_topk_error.py --teacher runs/tiny/digits-teacher/seed0/best.pt --ks 1 3 5 --temperatures 1 4
    python benchmarks/store_topk_error.py --teacher runs/logit/pairs/fmnist-pairs-teacher/seed0/best.pt --methods
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


def non_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The N x (K - 1) logits of the classes other than each row's label."""
    keep = torch.arange(logits.shape[1]) != labels.view(-1, 1)
    return logits[keep].view(len(logits), -1)


def binary(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """N x 2 logits of DKD's binary distribution at T: log p(y) and log(1 - p(y))."""
    log_p = torch.log_softmax(logits.double() / temperature, dim=1)
    target = log_p.gather(1, labels.view(-1, 1))
    return torch.cat([target, torch.logsumexp(non_target(log_p, labels), dim=1, keepdim=True)], dim=1)


def pearson_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row 1 - Pearson(softmax(a), softmax(b)) (DIST's inter-class relation, T = 1)."""
    p, q = (torch.softmax(x.double(), dim=1) for x in (a, b))
    p, q = p - p.mean(1, keepdim=True), q - q.mean(1, keepdim=True)
    return 1 - (p * q).sum(1) / (p.norm(dim=1) * q.norm(dim=1) + 1e-8)


#: what each logit method a top-k store serves reads of the teacher (full logits, rebuilt logits, labels) -> per-row error
METHOD_READS = {
    "KD: KL of p at T = 4": lambda z, r, y: kl_rows(z, r, 4.0),
    "DKD: KL of [p(y), 1 - p(y)] at T = 4 (TCKD)": lambda z, r, y: kl_rows(binary(z, y, 4.0), binary(r, y, 4.0), 1.0),
    "DKD: KL of the non-target distribution at T = 4 (NCKD)": lambda z, r, y: kl_rows(non_target(z, y),
                                                                                     non_target(r, y), 4.0),
    "NKD: abs. error of p(y) at T = 1": lambda z, r, y: (torch.softmax(z.double(), 1) - torch.softmax(r.double(), 1))
    .gather(1, y.view(-1, 1)).abs().squeeze(1),
    "NKD: KL of the non-target distribution at T = 1": lambda z, r, y: kl_rows(non_target(z, y), non_target(r, y), 1.0),
    "DIST: 1 - correlation of p at T = 1 (inter-class)": lambda z, r, y: pearson_gap(z, r),
    "MLKD: KL of p, worst of T = 2, 3, 4, 5, 6": lambda z, r, y: torch.stack([kl_rows(z, r, t) for t in (2.0, 3.0, 4.0,
                                                                                                       5.0, 6.0)]).amax(0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="a softdistill checkpoint")
    parser.add_argument("--root", help="data folder")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--limit", type=int, help="use the first N training samples only")
    parser.add_argument("--methods", action="store_true", help="also the error of what each logit method reads")
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
    if not args.methods:
        return
    labels = train.labels.cpu()
    rebuilt = {k: Encoding("topk", classes, "float32", k).decode(Encoding("topk", classes, "float32", k).encode(logits))
               for k in args.ks}
    print("\n| what the method reads (mean over samples) | " + " | ".join(f"k = {k}" for k in args.ks) + " |")
    print("|---|" + "---:|" * len(args.ks))
    for what, error in METHOD_READS.items():
        print(f"| {what} | " + " | ".join(f"{error(logits, rebuilt[k], labels).mean().item():.2e}" for k in args.ks)
              + " |")


if __name__ == "__main__":
    main()
