"""Costs of the soft-label store (issue 13): training from a store, labelling, bytes, opening.

Workload: ResNet-20 teacher -> ResNet-8 student, 100 classes, 3x32x32 random images (throughput
does not depend on the pixels), batch 128, ``--threads`` threads; the three training modes are
alternated round by round in one process (fixed order, ``--rounds`` rounds; ratios within a round,
min / median / max over rounds):

1. student steps per second: plain cross-entropy (the limit) | KD with the teacher online | KD
   from a float32 store (the same ``KnowledgeDistillation`` method, the source swapped);
   goals: store >= 0.9x plain CE and >= 1.6x online KD;
2. labelling throughput (``softdistill.store.write_store``, full float32) against plain teacher
   inference over the same batches; goal >= 0.9x;
3. bytes per (sample, view) of each encoding at K = 10, 100, 1000 (exact, from the record
   layout) and the projected store size for ImageNet-1k (1.28 M samples) at V = 10 and 100;
4. opening a store and reading one batch, at two store sizes (should not grow with the size).

Run (results go to benchmarks/results/store.md; the allocator setting steadies timings)::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 \\
        python benchmarks/store_benchmark.py --threads 2
    python benchmarks/store_benchmark.py --tiny      # seconds: proves the script runs, numbers mean nothing
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.samples import TensorSet
from softdistill.data.views import ViewPlan
from softdistill.engine.predict import predict
from softdistill.methods import method_class
from softdistill.models import build_model
from softdistill.store import Encoding, Store, write_store
from softdistill.store.writer import human_bytes
from softdistill.soft_labels.store import StoredSoftLabels
from softdistill.soft_labels.teacher import FrozenTeacher
from softdistill.types import Batch

CLASSES, SIZE = 100, 32
IMAGENET = 1_281_167


def random_split(n: int, seed: int = 0) -> TensorSet:
    gen = torch.Generator().manual_seed(seed)
    return TensorSet(torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8),
                     torch.randint(0, CLASSES, (n,), generator=gen))


def label_into(folder: Path, teacher: torch.nn.Module, loader: BatchLoader, views: int, shard_samples: int) -> None:
    """A store of ``teacher``'s soft labels (any source) of ``views`` views of the plan of ``loader``."""
    data = loader.data
    plan = loader.plan.model_copy(update={"views": views})
    header = {"data": {"name": "random"}, "teacher": {"files": []},
              "views": {**plan.model_dump(mode="json", exclude={"replay"}), "fingerprint": plan.fingerprint()}}
    write_store(folder, header, data.ids, data.labels, lambda rows, v: teacher(loader.batch_of(rows, v)),
                encoding=Encoding("full", CLASSES), views=views, shard_samples=shard_samples,
                batch_size=loader.batch_size, quiet=True)


def steps_per_second(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def cycling(loader: BatchLoader) -> Callable[[], Batch]:
    """The next batch of ``loader`` at each call, epoch after epoch."""
    batches = iter(())

    def next_batch() -> Batch:
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    return next_batch


def student_step(source: torch.nn.Module | None, next_batch: Callable[[], Batch]) -> Callable[[], None]:
    """One optimiser step of a fresh ResNet-8 student on the next batch: KD from ``source``, or plain CE (None)."""
    name = "kd" if source is not None else "ce"
    method_cls = method_class(name)
    torch.manual_seed(0)
    student = build_model("resnet8", CLASSES, 3, SIZE)
    method = method_cls(method_cls.Config(), student, CLASSES, source)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

    def step() -> None:
        out = method(next_batch())
        loss = sum(out.losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def training_modes(teacher: FrozenTeacher, store: Store, loader: BatchLoader) -> dict[str, Callable[[], None]]:
    """One optimiser step of each mode on the next batch of ``loader`` (cycled)."""
    next_batch = cycling(loader)
    stored = StoredSoftLabels(store)
    stored.verify_lookups(loader.data.ids, store.views)  # once, as a run does: lookups unchecked per batch
    return {"plain CE": student_step(None, next_batch), "online KD": student_step(teacher, next_batch),
            "store KD": student_step(stored, next_batch)}


def workload(args: argparse.Namespace) -> tuple[BatchLoader, BatchLoader]:
    """The benchmark's threads and its loaders of ``args.samples`` random images (one crop+flip view each, batch
    128): shuffled for training, in order for labelling; ``args.tiny`` makes every count small."""
    tiny_if_asked(args)
    torch.set_num_threads(args.threads)
    plan = ViewPlan(seed=0, views=1, crop_padding=4, hflip=True)
    data = random_split(args.samples)
    transform = BatchTransform([0.5] * 3, [0.25] * 3)
    return (BatchLoader(data, 128, transform, shuffle=True, drop_last=True, plan=plan),
            BatchLoader(data, 128, transform, plan=plan))


def spread(values: list[float], references: list[float]) -> str:
    """Min / median / max over rounds of values[r] / references[r]."""
    ratios = [v / r for v, r in zip(values, references)]
    return f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}x"


def timing_arguments(description: str) -> argparse.Namespace:
    """The command line of a timing benchmark: threads, workload size, steps per mode and round, rounds, --tiny."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10_000, help="training samples of the workload")
    parser.add_argument("--steps", type=int, default=30, help="student steps per mode and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a few samples and steps: checks that the script runs")
    args = parser.parse_args()
    return tiny_if_asked(args)


def tiny_if_asked(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with few samples, steps and rounds under ``--tiny`` (a check that a script runs)."""
    if args.tiny:
        args.samples, args.steps, args.rounds = 512, 2, 1
    return args


def main() -> None:
    args = timing_arguments(__doc__.split("\n")[0])
    train, in_order = workload(args)
    batch = train.batch_size
    torch.manual_seed(1)
    teacher = FrozenTeacher(build_model("resnet20", CLASSES, 3, SIZE))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "store"
        # 2. labelling vs plain inference, alternated
        label_rates, infer_rates = [], []
        for r in range(args.rounds):
            start = time.perf_counter()
            predict(teacher, in_order.in_order(0))
            infer_rates.append(args.samples / (time.perf_counter() - start))
            target = Path(tmp) / f"label{r}"
            start = time.perf_counter()
            label_into(target, teacher, in_order, 1, 4096)
            label_rates.append(args.samples / (time.perf_counter() - start))
            if r == 0:
                target.rename(folder)
        store = Store(folder)
        # 1. training modes, alternated
        modes = training_modes(teacher, store, train)
        rates: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, step in modes.items():
                rates[name].append(steps_per_second(step, args.steps))
        # 4. open + read a batch at two sizes
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        label_into(small, teacher, in_order, 1, 1024)
        label_into(large, teacher, in_order, 8, 1024)
        opening = {}
        for name, path in (("small", small), ("large", large)):
            times = []
            for _ in range(max(args.rounds, 3)):
                start = time.perf_counter()
                opened = Store(path)
                rows = torch.randperm(len(opened))[:batch]
                opened.logits(rows, torch.zeros(batch, dtype=torch.long))
                times.append(time.perf_counter() - start)
            opening[name] = (opened.manifest["bytes"], statistics.median(times))

    med = {name: statistics.median(values) for name, values in rates.items()}
    print(f"## Student steps per second (batch {batch}, {args.threads} threads, {args.rounds} rounds)\n")
    print("Steps/s are medians; each ratio is taken within a round (the modes run back to back), then "
          "min / median / max over rounds.\n")
    print("| mode | steps/s | vs plain CE: min / median / max | vs online KD: min / median / max |\n|---|---:|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {med[name]:.2f} | {spread(values, rates['plain CE'])} | {spread(values, rates['online KD'])} |")
    print(f"\n## Labelling\n\nlabelling {statistics.median(label_rates):.0f} samples/s, plain inference "
          f"{statistics.median(infer_rates):.0f} samples/s (medians); ratio per round, min / median / max: "
          f"{spread(label_rates, infer_rates)}\n")
    print("## Bytes per (sample, view)\n\n| encoding | K = 10 | K = 100 | K = 1000 | ImageNet, K = 1000, V = 10 | V = 100 |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, dtype, k in (("full", "float32", None), ("full", "float16", None), ("topk", "float16", 5),
                           ("topk", "float16", 10), ("topk", "float32", 10)):
        sizes = [Encoding(kind, c, dtype, min(k, c) if k else None).record_bytes for c in (10, 100, 1000)]
        name = f"{kind}{f' k={k}' if k else ''} {dtype}"
        print(f"| {name} | " + " | ".join(map(str, sizes)) + f" | {human_bytes(IMAGENET * 10 * sizes[2])} | "
              f"{human_bytes(IMAGENET * 100 * sizes[2])} |")
    print("\n## Opening a store and reading one batch\n\n| store | bytes | seconds |\n|---|---:|---:|")
    for name, (size, seconds) in opening.items():
        print(f"| {name} | {human_bytes(size)} | {seconds:.4f} |")


if __name__ == "__main__":
    main()
