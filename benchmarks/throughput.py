"""Training throughput of softdistill against a hand-written PyTorch KD loop over the same models.

Workload (defaults): a ResNet-20 teacher and a ResNet-8 student, 100 classes, 3 x 32 x 32 images
that the script generates (uint8, on the device), batch 128, SGD, KD (alpha 0.9, T 4), 2 threads,
glibc's allocator fixed to keep its large blocks (the script re-runs itself under
``GLIBC_TUNABLES`` when it is not set, the setting of the Makefile).  Rows, each in images/s of a
training epoch (no evaluation, nothing written):

- ``hand-written KD``: the reference, a plain loop (shuffle, gather, normalise, teacher forward
  under ``no_grad``, student forward, CE + T^2 KL, SGD step), what torchdistill was measured equal to;
- ``softdistill KD``: ``method: kd`` from ``source: teacher`` with the default ``train`` options;
- ``softdistill KD, speed options``: the same with ``--speed`` (default ``compile=true,
  channels_last=true``; any ``train.`` keys, e.g. ``--speed channels_last=true,teacher_dtype=bfloat16``);
- ``softdistill CE``: plain cross-entropy on the student, the limit of KD without a teacher forward;
- ``softdistill KD from cache``: the teacher's logits of the clean images cached in memory.

Each softdistill row runs one untimed warm-up epoch (compilation included), then ``--pairs``
alternated pairs (a reference epoch, then the row's epoch); the ratio of each pair is reported
with min / median / max over pairs.  Run on an idle machine:

    python benchmarks/throughput.py                              # CPU, the workload above
    python benchmarks/throughput.py --device cuda --teacher resnet56 --student resnet20 --batch-size 256
    python benchmarks/throughput.py --pairs 1 --batches 2        # a smoke test, not a measurement
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from softdistill.checkpoint import save_checkpoint
from softdistill.config import recipe_from_dict
from softdistill.data.samples import TensorSet
from softdistill.data.prepare import DataBundle
from softdistill.models import build_model
from softdistill.runner import prepare_run

TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
ALPHA, TEMPERATURE = 0.9, 4.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="training batches per epoch")
    parser.add_argument("--pairs", type=int, default=5, help="alternated (reference, row) epoch pairs per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed", default="compile=true,channels_last=true",
                        help="train options of the 'speed options' row, KEY=VALUE,... (values read as YAML)")
    parser.add_argument("--rows", default="kd,kd-speed,ce,kd-cache", help="softdistill rows to measure")
    parser.add_argument("--output", help="also write the table to this markdown file")
    return parser.parse_args()


def generated_data(classes: int, samples: int, device: str) -> DataBundle:
    """Random uint8 images and labels (a fixed seed); the test split is one batch of the same."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (samples, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, classes, (samples,), generator=gen)
    train = TensorSet(images, labels).to(device)
    return DataBundle("generated", train, None, train.subset(torch.arange(min(256, samples))),
                      tuple(f"class{k}" for k in range(classes)), MEAN, STD)


def models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = build_model(args.teacher, args.classes, 3, 32).to(args.device).eval().requires_grad_(False)
    torch.manual_seed(1)
    return teacher, build_model(args.student, args.classes, 3, 32).to(args.device)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class HandWrittenKD:
    """The reference: the KD loop a user would write by hand over the same models and data."""

    def __init__(self, args: argparse.Namespace, data: DataBundle) -> None:
        self.teacher, self.student = models(args)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.images, self.labels = data.train.images, data.train.labels
        self.mean = torch.tensor(MEAN, device=args.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=args.device).view(1, 3, 1, 1)
        self.batch_size, self.device, self.epoch = args.batch_size, args.device, 0

    def epoch_seconds(self) -> float:
        self.epoch += 1
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.epoch))
        start = time.perf_counter()
        for first in range(0, len(order) - self.batch_size + 1, self.batch_size):
            rows = order[first:first + self.batch_size].to(self.device)
            x = (self.images[rows].float() / 255 - self.mean) / self.std
            y = self.labels[rows]
            with torch.no_grad():
                soft = self.teacher(x)
            logits = self.student(x)
            kd = F.kl_div(F.log_softmax(logits / TEMPERATURE, 1), F.log_softmax(soft / TEMPERATURE, 1),
                          reduction="batchmean", log_target=True) * TEMPERATURE ** 2
            loss = (1 - ALPHA) * F.cross_entropy(logits, y) + ALPHA * kd
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)
        return time.perf_counter() - start


def speed_options(text: str) -> dict:
    """``"compile=true,channels_last=true"`` -> {"compile": True, "channels_last": True}."""
    pairs = [item.partition("=") for item in text.split(",") if item]
    return {key.strip(): yaml.safe_load(value) for key, _, value in pairs}


class SoftdistillRow:
    """A softdistill run built from a recipe over the generated data; an epoch is ``Trainer.train_epoch``
    (which ends by reading its sums back, so the device has finished when it returns)."""

    def __init__(self, args: argparse.Namespace, data: DataBundle, folder: Path, method: dict,
                 soft_labels: dict | None, train: dict) -> None:
        raw = {"name": "throughput", "student": args.student, "epochs": 10_000, "method": method,
               "soft_labels": soft_labels, "output_dir": str(folder),
               "data": {"name": "synthetic", "batch_size": args.batch_size, "eval_batch_size": 1024},
               "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
               "schedule": {"name": "constant"},
               "train": {"device": args.device, "threads": args.threads, "log_every": 0, **train}}
        self.trainer = prepare_run(recipe_from_dict({k: v for k, v in raw.items() if v is not None}),
                                   quiet=True, data=data).trainer

    def epoch_seconds(self) -> float:
        self.trainer.epoch += 1
        start = time.perf_counter()
        self.trainer.train_epoch()
        return time.perf_counter() - start


def main() -> int:
    args = parse_args()
    if sys.platform.startswith("linux") and os.environ.get("GLIBC_TUNABLES") != TUNABLES:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": TUNABLES})
    torch.set_num_threads(args.threads)
    images = args.batches * args.batch_size
    data = generated_data(args.classes, images, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        teacher, _ = models(args)
        checkpoint = folder / "teacher.pt"
        save_checkpoint({"model": {"name": args.teacher, "num_classes": args.classes, "in_channels": 3,
                                   "image_size": 32},
                         "normalization": {"mean": list(MEAN), "std": list(STD)},
                         "state_dict": teacher.state_dict()}, checkpoint)
        kd, online = {"name": "kd", "alpha": ALPHA, "temperature": TEMPERATURE}, {"source": "teacher",
                                                                                 "checkpoint": str(checkpoint)}
        rows = {"kd": ("softdistill KD", kd, online, {}),
                "kd-speed": (f"softdistill KD, speed options ({args.speed})", kd, online, speed_options(args.speed)),
                "ce": ("softdistill CE (no teacher)", {"name": "ce"}, None, {}),
                "kd-cache": ("softdistill KD from cache", kd, {**online, "source": "cache"}, {})}
        reference = HandWrittenKD(args, data)
        reference.epoch_seconds()  # warm-up
        table = [f"{args.teacher} -> {args.student}, {args.classes} classes, 3x32x32, batch {args.batch_size}, "
                 f"{images} images per epoch, {args.threads} threads, {args.device}, GLIBC_TUNABLES={TUNABLES}, "
                 f"torch {torch.__version__}, {args.pairs} pairs per row\n",
                 "| row | images/s (median) | ratio to hand-written: min | median | max |", "|---|---|---|---|---|"]
        reference_speeds = []
        for key in args.rows.split(","):
            label, method, soft_labels, train = rows[key]
            row = SoftdistillRow(args, data, folder / key, method, soft_labels, train)
            row.epoch_seconds()  # warm-up (and compilation)
            ratios, speeds = [], []
            for _ in range(args.pairs):
                ref = images / reference.epoch_seconds()
                speed = images / row.epoch_seconds()
                reference_speeds.append(ref)
                speeds.append(speed)
                ratios.append(speed / ref)
            table.append(f"| {label} | {statistics.median(speeds):.0f} | {min(ratios):.3f} | "
                         f"{statistics.median(ratios):.3f} | {max(ratios):.3f} |")
            print(table[-1], flush=True)
        table.insert(3, f"| hand-written KD (reference) | {statistics.median(reference_speeds):.0f} | 1 | 1 | 1 |")
    text = "\n".join(table) + "\n"
    print("\n" + text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
