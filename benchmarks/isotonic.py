"""Speed of the exact isotonic correction (IDA) against per-sample loops and a plain sort.

Median time per batch (wall clock; ``--clock cpu`` for the process's CPU time) of:

- ``ours``: :func:`softdistill.isotonic.isotonic_logits` (batched; sort or topk, prefix sums,
  binary search);
- ``sort``: one ``torch.sort`` of the same logits, the practical floor;
- ``loop (torch)``: the authors' style: one batched sort puts each row in chain order r, s, o_1, ...;
  then per sample a pool-adjacent-violators loop in Python over the chain on 0-dim torch tensors,
  stopping at the first other class below the current level; blocks written back per block;
- ``loop (floats)``: the same loop on Python floats (``tolist``), one batched write-back: a tuned
  per-sample loop;
- ``scipy``: ``scipy.optimize.isotonic_regression(increasing=False)`` row by row on the chain.

Two kinds of logits, 3 N(0, 1) each, random labels a, b, lam = 0.7:
``random`` as is (r and s anywhere: many rows need many classes pooled; the full-sort path), and
``teacher``, where a and b lead (+3 sqrt(2 ln K) + 6 and +3 sqrt(2 ln K) + 3) and 10% of the
rows have one other class raised above a (few classes above min(y_r, y_s): the topk path).
Run (the allocator setting steadies the timings on small VMs):

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 \\
        python benchmarks/isotonic.py            # 2 threads, wall clock
        python benchmarks/isotonic.py --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import isotonic_regression
from torch import Tensor

from softdistill.isotonic import isotonic_logits

SIZES = [(128, 10), (128, 100), (256, 1000), (1024, 1000), (64, 32000)]
LAM = 0.7


def make_logits(kind: str, batch: int, classes: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Logits and labels a, b of one batch, ``random`` or ``teacher`` (see the module docstring)."""
    logits = 3 * torch.randn(batch, classes, generator=gen)
    labels_a = torch.randint(0, classes, (batch,), generator=gen)
    labels_b = torch.randint(0, classes, (batch,), generator=gen)
    if kind == "teacher":
        lead = 3 * math.sqrt(2 * math.log(classes))
        rows = torch.arange(batch)
        logits[rows, labels_a] += lead + 6
        logits[rows, labels_b] += lead + 3
        intruder = torch.randint(0, classes, (batch,), generator=gen)
        raised = (torch.rand(batch, generator=gen) < 0.1) & (intruder != labels_a) & (intruder != labels_b)
        logits[rows[raised], intruder[raised]] = logits[rows[raised], labels_a[raised]] + 1
    return logits, labels_a, labels_b


def chain_order(logits: Tensor, labels_a: Tensor, labels_b: Tensor) -> tuple[Tensor, Tensor]:
    """Batched: per row the class indices r, s, then the others by descending logit; and the head length."""
    r, s = (labels_a, labels_b) if LAM > 0.5 else (labels_b, labels_a)
    keyed = logits.clone()
    keyed.scatter_(1, s.view(-1, 1), torch.finfo(logits.dtype).max)
    keyed.scatter_(1, r.view(-1, 1), float("inf"))
    return keyed.argsort(dim=1, descending=True), 2 - (r == s).long()


def loop_torch(logits: Tensor, labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Per sample, PAVA over the chain on 0-dim tensors (the authors' style)."""
    out = logits.clone()
    chains, heads = chain_order(logits, labels_a, labels_b)
    for row, chain, head in zip(out, chains, heads.tolist()):
        levels: list[Tensor] = []
        sizes: list[int] = []
        for k in range(len(chain)):
            value = row[chain[k]]
            if k >= head and not value > levels[-1]:
                break  # the remaining others are all below the last level
            levels.append(value.clone())
            sizes.append(1)
            while len(levels) > 1 and levels[-1] > levels[-2]:
                level, size = levels.pop(), sizes.pop()
                levels[-1] = (levels[-1] * sizes[-1] + level * size) / (sizes[-1] + size)
                sizes[-1] += size
        start = 0
        for level, size in zip(levels, sizes):
            row[chain[start:start + size]] = level
            start += size
    return out


def loop_floats(logits: Tensor, labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Per sample, PAVA over the chain on Python floats; one batched gather and scatter."""
    chains, heads = chain_order(logits, labels_a, labels_b)
    values = logits.gather(1, chains).tolist()
    for row, head in zip(values, heads.tolist()):
        sums: list[float] = []
        sizes: list[int] = []
        for k, value in enumerate(row):
            if k >= head and value * sizes[-1] <= sums[-1]:
                break
            sums.append(value)
            sizes.append(1)
            while len(sums) > 1 and sums[-1] * sizes[-2] > sums[-2] * sizes[-1]:
                total, size = sums.pop(), sizes.pop()
                sums[-1] += total
                sizes[-1] += size
        start = 0
        for total, size in zip(sums, sizes):
            row[start:start + size] = [total / size] * size
            start += size
    return torch.empty_like(logits).scatter_(1, chains, torch.tensor(values, dtype=logits.dtype))


def scipy_rows(logits: Tensor, labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Per sample, ``scipy.optimize.isotonic_regression`` (decreasing) on the whole chain."""
    chains, _ = chain_order(logits, labels_a, labels_b)
    values = logits.gather(1, chains).numpy()
    fitted = np.empty_like(values)
    for i, row in enumerate(values):
        fitted[i] = isotonic_regression(row, increasing=False).x
    return torch.empty_like(logits).scatter_(1, chains, torch.from_numpy(fitted))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_ms(fns: list[Callable[[], object]], budget_s: float, first_s: float,
              clock: Callable[[], float]) -> tuple[list[float], int]:
    """Median milliseconds of each of ``fns`` (warmed up; one round took ``first_s``), timed in turn
    round by round so that all see the same load; 3 to 200 rounds in ``budget_s``."""
    repeats = int(min(200, max(3, budget_s / max(first_s, 1e-9))))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = clock()
            fn()
            spent.append(clock() - start)
    return [1e3 * statistics.median(spent) for spent in times], repeats


def timed_once(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per method and size")
    parser.add_argument("--slow-limit", type=float, default=20.0,
                        help="skip a per-sample baseline whose warm-up call takes longer (seconds)")
    parser.add_argument("--data", nargs="+", default=["random", "teacher"], choices=["random", "teacher"])
    parser.add_argument("--clock", default="wall", choices=list(CLOCKS),
                        help="wall: elapsed time; cpu: CPU time of the process, all threads (with --threads 1 it "
                             "equals the wall time of an idle machine and ignores other processes' load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.clock} clock, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    baselines = {"loop (torch)": loop_torch, "loop (floats)": loop_floats, "scipy": scipy_rows}
    for kind in args.data:
        print(f"\n{kind} logits\n")
        print("| B x K | sort (ms) | ours (ms) | ours / sort | "
              + " | ".join(f"{name} (ms) | {name} / ours" for name in baselines) + " | repeats (sort and ours, each baseline) |")
        print("|---" * (5 + 2 * len(baselines)) + "|")
        gen = torch.Generator().manual_seed(0)
        for batch, classes in SIZES:
            logits, labels_a, labels_b = make_logits(kind, batch, classes, gen)
            ours, first = timed_once(lambda: isotonic_logits(logits, labels_a, labels_b, LAM))
            _, first_sort = timed_once(lambda: torch.sort(logits, dim=1, descending=True))
            (sort_ms, ours_ms), n_pair = median_ms([lambda: torch.sort(logits, dim=1, descending=True),
                                                    lambda: isotonic_logits(logits, labels_a, labels_b, LAM)],
                                                   args.budget, first + first_sort, CLOCKS[args.clock])
            cells = [f"{batch} x {classes}", f"{sort_ms:.3f}", f"{ours_ms:.3f}", f"{ours_ms / sort_ms:.2f}"]
            repeats = [n_pair]
            for name, baseline in baselines.items():
                ref, first = timed_once(lambda: baseline(logits, labels_a, labels_b))
                torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-3)
                if first > args.slow_limit:
                    cells += [f"skipped (one call {first:.0f} s)", "-"]
                    continue
                (base_ms,), n_base = median_ms([lambda: baseline(logits, labels_a, labels_b)], args.budget, first,
                                            CLOCKS[args.clock])
                cells += [f"{base_ms:.1f}", f"{base_ms / ours_ms:.0f}x"]
                repeats.append(n_base)
            print("| " + " | ".join(cells + [", ".join(map(str, repeats))]) + " |", flush=True)


if __name__ == "__main__":
    main()
