"""Step speed of the logit methods (issue 23): from a store against plain cross-entropy, online against KD.

The workload of benchmarks/store_benchmark.py: ResNet-20 teacher -> ResNet-8 student, 100 classes,
3x32x32 random images (throughput does not depend on the pixels), crop+flip views, batch 128,
``--threads`` threads; every method at its authors' defaults.  The modes run one after the other
within a round (``--steps`` steps each, after one warm-up step), ``--rounds`` rounds; each ratio is
taken within a round, then min / median / max over rounds:

- ``store M`` / ``plain CE``: the method's step with its soft labels from a float32 store (goal >= 0.9);
- ``online M`` / ``online KD``: the method's step with the teacher online (goal >= 0.9);
- a method without a teacher (USKD) against plain CE only.

MLKD learns from two views of each sample per step, so its step runs the student (and an online
teacher) on twice the images: it is also given against the same references on two views per step
(``plain CE, two views``: cross-entropy on both views; ``online KD, two views``: KD on both).

Run (the allocator setting steadies timings; nothing else may run on the machine)::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 \\
        python benchmarks/logit_speed.py --threads 2
    python benchmarks/logit_speed.py --tiny      # seconds: proves the script runs, numbers mean nothing
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.views import ViewPlan
from softdistill.losses import cross_entropy, kd_loss
from softdistill.methods import method_class, method_names
from softdistill.models import build_model
from softdistill.soft_labels.store import StoredSoftLabels
from softdistill.soft_labels.teacher import FrozenTeacher
from softdistill.store import Store
from softdistill.types import Batch, InputSpec, MethodContext, StepOutput
from store_benchmark import CLASSES, SIZE, label_into, random_split, spread, steps_per_second, timing_arguments

#: the methods of issue 23
METHODS = ("dkd", "dist", "nkd", "uskd", "kd-ls", "ttm", "wttm", "ctkd", "mlkd")
MEAN, STD = (0.5,) * 3, (0.25,) * 3


class OnBothViews(torch.nn.Module):
    """A reference for two views per step: ``loss(student(x), soft labels of x)`` summed over both views."""

    def __init__(self, student: torch.nn.Module, source: torch.nn.Module | None) -> None:
        super().__init__()
        self.student, self.source = student, source

    def forward(self, batch: Batch) -> StepOutput:
        losses = {}
        for name, view in (("first", batch), ("second", batch.second)):
            logits = self.student(view.x)
            losses[name] = (cross_entropy(logits, view.y) if self.source is None
                            else kd_loss(logits, self.source(view)))
        return StepOutput(logits, losses)


def stepper(task: torch.nn.Module, loader: BatchLoader) -> Callable[[], None]:
    """One optimiser step of ``task`` on the next batch of ``loader`` (cycled), its student and learned parts trained."""
    optimizer = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    batches = iter(())

    def step() -> None:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        out = task(batch)
        loss = sum(out.losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def modes(teacher: FrozenTeacher, stored: StoredSoftLabels, one: BatchLoader, two: BatchLoader
          ) -> dict[str, Callable[[], None]]:
    """Every mode of the module docstring, in the order they run."""
    context = MethodContext(InputSpec(3, SIZE, MEAN, STD))

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("resnet8", CLASSES, 3, SIZE)

    def method(name: str, source: torch.nn.Module | None) -> Callable[[], None]:
        cls = method_class(name)
        model = student()
        task = cls(cls.Config(), model, CLASSES, source if cls.uses_soft_labels else None, context)
        return stepper(task, two if cls.views_per_step == 2 else one)

    def both_views(source: torch.nn.Module | None) -> Callable[[], None]:
        model = student()
        return stepper(OnBothViews(model, source), two)

    made = {"plain CE": method("ce", None), "online KD": method("kd", teacher),
            "plain CE, two views": both_views(None), "online KD, two views": both_views(teacher)}
    for name in METHODS:
        if method_class(name).uses_soft_labels:
            made[f"store {name}"] = method(name, stored)
            made[f"online {name}"] = method(name, teacher)
        else:
            made[name] = method(name, None)
    return made


def references(mode: str) -> list[str]:
    """What a mode's step is compared with: plain CE from a store (or without a teacher), KD online; MLKD also
    with the reference of two views per step."""
    if mode in ("plain CE", "online KD") or "two views" in mode:
        return []
    online = mode.startswith("online")
    plain = ["online KD" if online else "plain CE"]
    return plain + (["online KD, two views" if online else "plain CE, two views"] if mode.endswith("mlkd") else [])


def main() -> None:
    args = timing_arguments(__doc__.split("\n")[0])
    torch.set_num_threads(args.threads)
    assert set(METHODS) <= set(method_names())
    batch = 128
    data = random_split(args.samples)
    transform = BatchTransform(MEAN, STD)
    plans = {steps: ViewPlan(seed=0, views=2, crop_padding=4, hflip=True, views_per_step=steps) for steps in (1, 2)}
    one, two = (BatchLoader(data, batch, transform, shuffle=True, drop_last=True, plan=plans[s]) for s in (1, 2))
    torch.manual_seed(1)
    teacher = FrozenTeacher(build_model("resnet20", CLASSES, 3, SIZE))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "store"
        label_into(folder, teacher, BatchLoader(data, batch, transform, plan=plans[1]), 2, 4096)
        stored = StoredSoftLabels(Store(folder))
        stored.verify_lookups(data.ids, 2)  # once, as a run does: lookups unchecked per batch
        every = modes(teacher, stored, one, two)
        rates: dict[str, list[float]] = {name: [] for name in every}
        for _ in range(args.rounds):
            for name, step in every.items():
                rates[name].append(steps_per_second(step, args.steps))

    print(f"## Steps per second (batch {batch}, {args.threads} threads, {args.rounds} rounds of {args.steps} steps)\n")
    print("Steps/s are medians; each ratio is taken within a round, then min / median / max over rounds.\n")
    print("| mode | steps/s | reference | ratio min / median / max |\n|---|---:|---|---:|")
    for name, values in rates.items():
        for reference in references(name):
            print(f"| {name} | {statistics.median(values):.2f} | {reference} | {spread(values, rates[reference])} |")
        if not references(name):
            print(f"| {name} | {statistics.median(values):.2f} | — | — |")


if __name__ == "__main__":
    main()
