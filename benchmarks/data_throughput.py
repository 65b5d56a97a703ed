"""Data loading speed and memory: the stream loader against a hand-written DataLoader, peak RSS, the memory loader.

Three parts (``python benchmarks/data_throughput.py PART``), each printing a markdown table:

- ``decode``: images/s of decode + random resized crop (0.08-1, 3/4-4/3) + flip to 224 x 224 on a
  folder of JPEGs the script writes (default 2000 images of 256 x 256 in 100 classes), for 0, 1, 2
  DataLoader workers: softdistill's :class:`StreamLoader` (batches of the ViewPlan's crops,
  normalised in this process) against a hand-written ``torch.utils.data.DataLoader`` over a
  Pillow ``Dataset`` doing the same per sample (open, RGB, a random box drawn as torchvision's
  RandomResizedCrop draws it, bilinear resize, flip, then the batch normalised in this process),
  and torchvision's ``ImageFolder`` + ``RandomResizedCrop`` + ``RandomHorizontalFlip`` +
  ``PILToTensor`` when torchvision is installed.  One untimed warm-up epoch each, then ``--pairs``
  alternated pairs (baseline epoch, softdistill epoch) in this process; the ratio of each pair,
  min / median / max, of the speed and of the CPU seconds spent (this process and its workers:
  less sensitive than wall time to what the machine's neighbours do).
- ``decode-work``: CPU ms per image of the decode work alone (no DataLoader, no normalisation) in
  this process, the baseline's per-sample pipeline alternated with softdistill's decoder on the
  same images: the part of ``decode`` that the machine's scheduling noise touches least.
- ``memory``: peak RSS (this process + its workers, ``getrusage``) of one training epoch of
  ``--model`` on the stream loader over generated folders of ``--sizes`` images (default 5000 and
  50000), each run in a fresh process: flat means no growth with the size of the data set.
- ``fmnist``: images/s of the in-memory loader's training epoch (crop 2 + flip, batch 128) on
  Fashion-MNIST (the Debian package's files, or ``--root``); run it on this checkout and on one
  from before the stream loader, alternately, to compare.

glibc's allocator is fixed (the script re-runs itself under ``GLIBC_TUNABLES``), as in
``benchmarks/throughput.py``.  ``--tiny`` is a smoke test (a few small images, one pair), not a
measurement.  Run on an idle machine; the commands are in ``benchmarks/results/data.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import prepare_data
from softdistill.data.views import ViewPlan

TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["decode", "decode-work", "memory", "fmnist", "memory-run"])
    parser.add_argument("--tiny", action="store_true", help="a smoke test at toy sizes, not a measurement")
    parser.add_argument("--images", type=int, default=2000, help="decode: images in the generated folder")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--side", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--crop", type=int, default=224, help="side of the training crops")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2", help="decode: the worker counts to measure")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--sizes", default="5000,50000", help="memory: data set sizes")
    parser.add_argument("--model", default="cnn-small", help="memory: the model trained for one epoch")
    parser.add_argument("--root", help="fmnist: the Fashion-MNIST folder; memory-run: the generated folder")
    parser.add_argument("--data", default=None, help="where generated folders go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def write_folder(root: Path, images: int, classes: int, side: int) -> Path:
    """``images`` random JPEGs (quality 90) of ``side`` x ``side`` in ``classes`` classes, train/ and a one-image val/."""
    from PIL import Image

    if (root / "done").exists():
        return root
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / "train" / f"c{i % classes:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        block = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)  # JPEG-like low frequencies
        Image.fromarray(np.kron(block, np.ones((8, 8, 1), dtype=np.uint8))).save(folder / f"{i:06d}.jpg", quality=90)
    for k in range(min(classes, images)):
        (root / "val" / f"c{k:04d}").mkdir(parents=True, exist_ok=True)
        (root / "val" / f"c{k:04d}" / "0.jpg").write_bytes((root / "train" / f"c{k:04d}" / f"{k:06d}.jpg").read_bytes())
    (root / "done").touch()
    return root


def random_box(rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    """A random resized crop box (left, top, right, bottom), drawn as torchvision's RandomResizedCrop does."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    return 0, 0, width, height


class PillowCrops(Dataset):
    """The hand-written baseline: one file per item, opened, cropped, resized and flipped with Pillow."""

    def __init__(self, files: list[Path], labels: list[int], size: int) -> None:
        self.files, self.labels, self.size = files, labels, size
        self.rng = random.Random(0)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
        img = img.resize((self.size, self.size), Image.BILINEAR, box=random_box(self.rng, *img.size))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1), self.labels[i]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended (workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def images_per_second(batches, normalise) -> float:
    return measured(batches, normalise)[0]


def measured(batches, normalise) -> tuple[float, float]:
    """Images per second of wall time, and CPU seconds (this process and its workers) per 1000 images."""
    start, cpu, count = time.perf_counter(), cpu_seconds(), 0
    for x in batches:
        count += len(normalise(x))
    return count / (time.perf_counter() - start), 1000 * (cpu_seconds() - cpu) / count


def decode_part(args: argparse.Namespace, folder: Path) -> str:
    from softdistill.data.stream import StreamLoader  # here: the fmnist part also runs on checkouts without it

    data = prepare_data("imagefolder", root=str(folder), image_size=args.crop, val_size=0, loader="stream",
                        mean=MEAN, std=STD)
    transform = BatchTransform(MEAN, STD)
    plan = ViewPlan(seed=0, resized_crop=SCALE, crop_ratio=RATIO, hflip=True)
    files, labels = list(data.train.files), data.train.labels.tolist()
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        def ours(epoch: int) -> tuple[float, float]:
            loader = StreamLoader(data.train, args.batch_size, transform, device=torch.device("cpu"), workers=workers,
                                  shuffle=True, plan=plan, seed=0)
            loader.set_epoch(epoch)
            return measured((b.x for b in loader), lambda x: x)

        def baseline(dataset: Dataset) -> Callable:
            def epoch(_: int) -> tuple[float, float]:
                loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers)
                return measured((x for x, _ in loader), transform)
            return epoch

        references = [("hand-written DataLoader + Pillow", baseline(PillowCrops(files, labels, args.crop)))]
        try:
            from torchvision import datasets, transforms
            tv = transforms.Compose([transforms.RandomResizedCrop(args.crop, SCALE, RATIO),
                                     transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
            references.append(("torchvision ImageFolder + transforms",
                               baseline(datasets.ImageFolder(str(folder / "train"), tv))))
        except ImportError:
            pass
        for name, reference in references:
            reference(0), ours(0)  # warm-up: page cache, worker start-up
            pairs = [(reference(p + 1), ours(p + 1)) for p in range(args.pairs)]
            ratios = [o[0] / r[0] for r, o in pairs]
            cpu = [r[1] / o[1] for r, o in pairs]  # baseline CPU over ours: > 1 when ours needs less
            median = statistics.median
            rows.append(f"| {workers} | {name} | {median(r[0] for r, _ in pairs):.0f} | {median(o[0] for _, o in pairs):.0f} | "
                        f"{min(ratios):.2f} / {median(ratios):.2f} / {max(ratios):.2f} | "
                        f"{median(r[1] for r, _ in pairs):.2f} | {median(o[1] for _, o in pairs):.2f} | "
                        f"{min(cpu):.2f} / {median(cpu):.2f} / {max(cpu):.2f} |")
    head = (f"decode + random resized crop + flip to {args.crop}: {len(files)} JPEGs of {args.side}x{args.side}, "
            f"batch {args.batch_size}, {args.pairs} alternated pairs, {args.threads} thread(s), GLIBC_TUNABLES={TUNABLES}\n\n"
            "| workers | baseline | baseline img/s (median) | softdistill img/s (median) | speed ratio min / median / max "
            "| baseline CPU s / 1000 img | softdistill CPU s / 1000 img | CPU ratio (baseline / ours) min / median / max |\n"
            "|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *rows])


def decode_work_part(args: argparse.Namespace, folder: Path) -> str:
    """CPU ms per image of the decode work alone, in this process: no DataLoader, no normalisation, so none
    of the machine's scheduling noise of worker processes.  Sets of 4 batches of random images, the
    baseline's per-sample Pillow pipeline + ``torch.stack`` alternated with softdistill's
    ``Decoder.batch`` (crop boxes, decode, resize, flip, copy) on the same rows."""
    from softdistill.data.stream import Decoder

    train = prepare_data("imagefolder", root=str(folder), image_size=args.crop, val_size=0, loader="stream",
                         mean=MEAN, std=STD).train
    decoder = Decoder(args.crop, ViewPlan(seed=0, resized_crop=SCALE, crop_ratio=RATIO, hflip=True))
    pillow = PillowCrops(list(train.files), train.labels.tolist(), args.crop)
    n = 4 * args.batch_size
    times: dict[str, list[float]] = {"baseline": [], "softdistill": []}
    for rep in range(2 * args.pairs + 1):  # the first set is a warm-up
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(rep))[:n]
        start = time.process_time()
        for batch in rows.split(args.batch_size):
            torch.stack([pillow[i][0] for i in batch.tolist()])
        middle = time.process_time()
        for batch in rows.split(args.batch_size):
            decoder.batch(train, batch, torch.full_like(batch, rep))
        if rep:
            times["baseline"].append(1000 * (middle - start) / n)
            times["softdistill"].append(1000 * (time.process_time() - middle) / n)
    ratios = [b / o for b, o in zip(times["baseline"], times["softdistill"])]
    return (f"decode work alone (CPU ms per image, this process), {2 * args.pairs} sets of {n} images, crops of "
            f"{args.crop}\n\n| baseline ms/img (median) | softdistill ms/img (median) | "
            "CPU ratio (baseline / ours) min / median / max |\n|---|---|---|\n"
            f"| {statistics.median(times['baseline']):.3f} | {statistics.median(times['softdistill']):.3f} | "
            f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f} |")


def memory_run(args: argparse.Namespace) -> None:
    """One training epoch on the stream loader over ``args.root``; prints the peak RSS in MiB as JSON."""
    from softdistill.config import recipe_from_dict
    from softdistill.runner import run_recipe

    with tempfile.TemporaryDirectory() as runs:
        recipe = recipe_from_dict({
            "name": "rss", "student": args.model, "epochs": 1, "seed": 0, "output_dir": runs,
            "data": {"name": "imagefolder", "root": args.root, "image_size": args.crop, "val_size": 0,
                     "batch_size": args.batch_size, "eval_batch_size": args.batch_size, "loader": "stream",
                     "workers": 2, "mean": list(MEAN), "std": list(STD),
                     "augment": {"resized_crop": list(SCALE), "hflip": True}},
            "train": {"device": "cpu", "threads": args.threads}})
        run_recipe(recipe, quiet=True)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"main_mib": own, "largest_worker_mib": workers}))


def memory_part(args: argparse.Namespace, base: Path) -> str:
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        folder = write_folder(base / f"rss-{size}", size, args.classes, args.side)
        out = subprocess.run([sys.executable, __file__, "memory-run", "--root", str(folder), "--model", args.model,
                              "--crop", str(args.crop), "--batch-size", str(args.batch_size),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(f"| {size} | {peak['main_mib']:.0f} | {peak['largest_worker_mib']:.0f} |")
    head = (f"peak RSS of one training epoch ({args.model}, stream loader, 2 workers, crops of {args.crop}, batch "
            f"{args.batch_size})\n\n| images | training process MiB | largest worker MiB |\n|---|---|---|")
    return "\n".join([head, *rows])


def fmnist_part(args: argparse.Namespace) -> str:
    data = prepare_data("fashion-mnist", root=args.root, val_size=0, per_class=20 if args.tiny else None)
    loader = BatchLoader(data.train, 128, BatchTransform(data.mean, data.std), shuffle=True, drop_last=True,
                         plan=ViewPlan(seed=0, crop_padding=2, hflip=True), seed=0)
    speeds = []
    for epoch in range(args.pairs + 1):
        loader.set_epoch(epoch + 1)
        speeds.append(images_per_second((b.x for b in loader), lambda x: x))
    rest = speeds[1:]  # the first epoch is a warm-up
    return (f"memory loader, Fashion-MNIST training split ({len(data.train)} images), crop 2 + flip, batch 128, "
            f"{args.threads} thread(s)\n\n| img/s min | median | max |\n|---|---|---|\n"
            f"| {min(rest):.0f} | {statistics.median(rest):.0f} | {max(rest):.0f} |")


def main() -> int:
    args = parse_args()
    if sys.platform.startswith("linux") and os.environ.get("GLIBC_TUNABLES") != TUNABLES:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": TUNABLES})
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.images, args.classes, args.side, args.crop, args.batch_size, args.pairs = 24, 4, 40, 32, 8, 1
        args.sizes = "24,48"
    if args.part == "memory-run":
        memory_run(args)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.data or scratch)
        if args.part in ("decode", "decode-work"):
            part = decode_part if args.part == "decode" else decode_work_part
            print(part(args, write_folder(base / f"decode-{args.images}", args.images, args.classes, args.side)))
        elif args.part == "memory":
            print(memory_part(args, base))
        else:
            print(fmnist_part(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
