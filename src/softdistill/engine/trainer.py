"""One training loop for every task: teachers, students, the VAE.

The trainer calls ``task(batch)`` for a :class:`~softdistill.types.StepOutput` (the task is a
:class:`~softdistill.engine.task.Task`: a method, or the VAE), sums its loss terms, steps the
optimiser and logs every term; it evaluates ``task.student`` on the evaluation sets after each epoch
and hands each epoch's record to its :class:`~softdistill.engine.recorder.Recorder`, which writes the
run folder.  ``final_loaders`` (e.g. out-of-domain versions of the test set) are evaluated once,
after the last epoch, and reported as ``final/NAME/acc``.

Exact resume: all randomness of an epoch is seeded by (seed, epoch), so continuing from the end of
epoch e reproduces the weights of an uninterrupted run.  With ``checkpoint_every=N``, ``last.pt`` is
also written every N optimiser steps inside an epoch, with the epoch's running sums and the RNG
state of every rank: a resume skips the batches done and continues bit-identically.  The loop knows
no recipe and no run-folder rule: whoever starts it says whether it continues a ``last.pt``
(:meth:`Trainer.fit`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from softdistill.data.loader import EpochBatches
from softdistill.engine.optim import LRSchedule
from softdistill.engine.predict import autocast, evaluate
from softdistill.engine.recorder import NonFiniteStateError, Recorder, rng_state, set_rng_state
from softdistill.engine.task import Task
from softdistill.engine.wrap import compile_errors, unwrap
from softdistill.runtime.distributed import DistContext, all_reduce_min, all_reduce_sum, barrier, global_batch_weight
from softdistill.runtime.progress import progress_bar
from softdistill.types import Batch, StepOutput

__all__ = ["Trainer", "evaluate", "NonFiniteLossError", "NonFiniteStateError"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the epoch, step and term."""


def _non_finite_cause(inputs_finite: bool, logits_finite: bool | None) -> str:
    """The likeliest cause of a non-finite loss, from whether the batch's inputs and the student's
    outputs were finite (``None`` for a model without class logits, e.g. the VAE)."""
    if not inputs_finite:
        return "The input batch itself holds NaN or infinite values: check the data and its transform."
    if logits_finite is None:
        return "Lower the learning rate, or check the data."
    if not logits_finite:
        return ("The student's outputs are non-finite: training diverged. Lower the learning rate "
                "(soft-label terms scale their gradients by alpha * T^2).")
    return ("The student's outputs are finite, so another input of the loss is not: check the soft-label source "
            "(a teacher checkpoint or label table with non-finite values) and the method's weights.")


class FiniteWatch:
    """Non-finite loss terms, watched on the device: the first bad step and its term values.

    ``observe`` costs a few device operations and no host read; ``raise_if_bad`` (the log point)
    reads one number, after agreeing over ranks on the first bad step.  With the terms it keeps
    whether that step's inputs and student outputs were finite, which names the likeliest cause.
    """

    NONE = 2**62  # "no bad step yet"

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), self.NONE, dtype=torch.long, device=device)
        self.values: dict[str, torch.Tensor] = {}
        self.finite = torch.ones(2, dtype=torch.bool, device=device)  # inputs, student outputs
        self.with_logits = True

    def observe(self, step: int, out: StepOutput, batch: Batch) -> None:
        values = {name: term.detach().float() for name, term in out.losses.items()}
        bad = ~torch.isfinite(torch.stack(list(values.values()))).all()
        new = bad & (self.first == self.NONE)
        self.first = torch.where(new, step, self.first)
        for name, value in values.items():
            self.values[name] = torch.where(new, value, self.values.get(name, value))
        self.with_logits = out.logits is not None
        logits = out.logits.detach().float() if out.logits is not None else batch.x.new_zeros(())
        finite = torch.stack([torch.isfinite(batch.x).all(), torch.isfinite(logits).all()])
        self.finite = torch.where(new, finite, self.finite)

    def raise_if_bad(self, epoch: int, ctx: DistContext, kept: str) -> None:
        """:class:`NonFiniteLossError` naming the epoch, the first bad step (over ranks), its terms and
        ``kept``, the last checkpoint written (which the error leaves in place)."""
        first = all_reduce_min(self.first.clone(), ctx).item()
        if first == self.NONE:
            return
        here = self.first.item() == first
        values = {name: value.item() for name, value in self.values.items()}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items()) if here else "values on another rank"
        culprits = [k for k, v in values.items() if not math.isfinite(v)] if here else []
        inputs_finite, logits_finite = self.finite.tolist()
        cause = (_non_finite_cause(inputs_finite, logits_finite if self.with_logits else None) if here
                 else "That rank's message names the cause.")
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, step {first + 1}: term {', '.join(culprits) or '(on another rank)'} "
            f"({shown}). The run folder keeps its last good checkpoint ({kept}). {cause}")


class Trainer:
    """Train ``task`` for the recorder's epochs (see the module docstring).

    ``train_loader`` gives the batches of an epoch (``set_epoch``), ``eval_loaders`` the sets evaluated
    after each ``eval_every``-th epoch and the last (a ``test`` set is required; ``val``, when given,
    selects "best"), ``final_loaders`` those evaluated after the last epoch only.  ``grad_accum`` splits
    every batch into parts whose gradients are summed; ``clip_grad`` clips the gradient norm;
    ``log_every`` steps between log points (progress bar, non-finite check).
    """

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 train_loader: EpochBatches, eval_loaders: Mapping[str, EpochBatches], recorder: Recorder, *,
                 ctx: DistContext = DistContext(), amp: str = "off", eval_every: int = 1,
                 final_loaders: Mapping[str, EpochBatches] | None = None, checkpoint_every: int = 0,
                 grad_accum: int = 1, clip_grad: float | None = None, log_every: int = 50) -> None:
        if amp == "fp16" and ctx.device.type != "cuda":
            raise ValueError("amp: fp16 needs a CUDA device; on the CPU use amp: bf16")
        if "test" not in eval_loaders:
            raise ValueError("the trainer needs a 'test' evaluation set")
        self.task = task
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_loader = train_loader
        self.eval_loaders = dict(eval_loaders)
        self.final_loaders = dict(final_loaders or {})
        self.recorder = recorder
        self.epochs = recorder.epochs
        self.seed = recorder.seed
        self.ctx = ctx
        self.amp = amp
        self.quiet = recorder.quiet
        self.eval_every = eval_every
        self.checkpoint_every = checkpoint_every
        self.grad_accum = grad_accum
        self.clip_grad = clip_grad
        self.log_every = log_every
        self._ddp_modules = [m for m in task.modules() if isinstance(m, DistributedDataParallel)]
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=(amp == "fp16"))
        self.loss_names: set[str] = set()
        self.epoch = 0

    @property
    def student(self) -> torch.nn.Module:
        return unwrap(self.task.student)

    # ---------------------------------------------------------------- loop
    def fit(self, resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the remaining epochs (after those of ``resume_from``, a ``last.pt`` payload, when given);
        return the summary (also written to summary.json)."""
        record = self.recorder
        if resume_from is not None:
            record.restore(resume_from, self.task, self.optimizer, self.scaler)
        self.epoch = record.epoch
        record.begin(self.task)
        while self.epoch < self.epochs:
            self.epoch += 1
            epoch = self.train_epoch()
            self.task.end_epoch(self.epoch, record.run_dir / "report" if self.ctx.is_main else None)
            evaluated = dict(self.eval_loaders) if self.epoch % self.eval_every == 0 or self.epoch == self.epochs else {}
            if self.epoch == self.epochs:
                evaluated.update({f"final/{name}": loader for name, loader in self.final_loaders.items()})
            for name, loader in evaluated.items():
                for key, value in evaluate(self.student, loader, self.ctx, self.amp, self.task.evaluation_sums).items():
                    epoch[f"{name}/{key}"] = value
                if getattr(loader, "skipped", None) is not None:  # samples left out of the evaluation (unreadable)
                    epoch[f"{name}/skipped"] = self._total(loader.skipped)
            epoch["seconds"] = time.perf_counter() - epoch.pop("_start")
            record.end_epoch(epoch, self.task, self.optimizer, self.scaler)
            record.log(epoch, self.loss_names, [*self.eval_loaders, *(f"final/{n}" for n in self.final_loaders)])
        summary = record.finish(self.task)
        barrier(self.ctx)  # every rank returns once the run folder is complete, and they leave together
        return summary

    def train_epoch(self) -> dict[str, Any]:
        """Train epoch ``self.epoch`` (no evaluation; only mid-epoch checkpoints are written); its record.

        The step never reads a device value on the host: sums, accuracy and the non-finite watch
        stay on the device and are read every ``log_every`` steps, before a mid-epoch checkpoint
        and at the epoch's end.
        """
        ctx, epoch = self.ctx, self.epoch
        at = self.recorder.resume_step
        first, resumed = (0, None) if at is None else (at["step"], at["ranks"][ctx.rank])
        self.recorder.resume_step = None
        if resumed is None:
            torch.manual_seed(self.seed * 1_000_003 + epoch + 500_000)  # model-side randomness of this epoch
        else:
            set_rng_state(resumed["rng"])
        self.train_loader.set_epoch(epoch, skip=first)
        self.task.train()
        self.task.start_epoch(epoch, self.epochs)
        steps = len(self.train_loader)
        self._sums = {k: v.to(ctx.device) for k, v in (resumed or {}).get("sums", {}).items()}
        self._correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self._seen = torch.zeros((), dtype=torch.float64, device=ctx.device)
        if resumed is not None:
            self._correct += resumed["correct"]
            self._seen += resumed["seen"]
        # samples the loader left out in the batches a mid-epoch checkpoint skips on resume (this rank's)
        self._skipped_before = (resumed or {}).get("skipped", 0)
        self._with_logits = False
        watch = FiniteWatch(ctx.device)
        start = time.perf_counter()
        bar = progress_bar(steps, f"epoch {epoch}/{self.epochs}", quiet=self.quiet, unit="step", initial=first,
                           leave=False)
        lr = 0.0
        for step, batch in enumerate(self.train_loader, start=first):
            lr = self.schedule.lr_at((epoch - 1) * steps + step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._step(batch, step, watch)
            if (self.log_every and (step + 1) % self.log_every == 0) or step == steps - 1:
                self._examine(watch, bar)
            bar.update(1)
            done = (epoch - 1) * steps + step + 1
            if self.checkpoint_every and done % self.checkpoint_every == 0 and step + 1 < steps:
                watch.raise_if_bad(epoch, ctx, self.recorder.kept)  # never write weights a non-finite step has touched
                self._save_step(step + 1)
        bar.close()
        sums = self._sums
        names = list(sums)
        packed = torch.stack([sums[k] for k in names] + [self._correct, self._seen])
        all_reduce_sum(packed, ctx)
        values = packed.tolist()
        total = max(values[-1], 1.0)
        record: dict[str, Any] = {"epoch": epoch, "lr": lr, "_start": start}
        record.update({f"train/{k}": values[i] / total for i, k in enumerate(names)})
        if self._with_logits:
            record["train/acc"] = 100.0 * values[-2] / total
        if self._skipped() is not None:  # samples left out of the epoch's batches (unreadable images), all ranks
            record["train/skipped"] = self._total(self._skipped())
        return record

    def _skipped(self) -> int | None:
        """Samples of this rank the training loader left out so far this epoch (None: a loader that never does)."""
        now = getattr(self.train_loader, "skipped", None)
        return None if now is None else self._skipped_before + now

    def _total(self, count: int) -> int:
        """``count`` summed over ranks."""
        total = torch.tensor(float(count), dtype=torch.float64, device=self.ctx.device)
        all_reduce_sum(total, self.ctx)
        return int(total.item())

    def _step(self, batch: Batch, step: int, watch: "FiniteWatch") -> None:
        """One optimiser step on ``batch`` (this process's slice of the global batch), in ``grad_accum``
        parts of near-equal size (a short last batch may have fewer), gradients clipped to ``clip_grad``
        when set.  Each part's loss is weighted by its share of the global batch
        (:func:`~softdistill.runtime.distributed.global_batch_weight`), so that the gradients DDP averages
        are those of the mean loss over the global batch, however unevenly it splits."""
        self.optimizer.zero_grad(set_to_none=True)
        slice_weight = global_batch_weight(len(batch), self.ctx.device)  # 1.0 in a single process
        parts = [part for part in batch.chunks(self.grad_accum) if len(part)] if self.grad_accum > 1 else [batch]
        for i, part in enumerate(parts):
            with contextlib.ExitStack() as stack:
                if i < len(parts) - 1:  # DDP all-reduces the gradients once, after the last part
                    for module in self._ddp_modules:
                        stack.enter_context(module.no_sync())
                with compile_errors():
                    with autocast(self.ctx.device, self.amp):
                        out = self.task(part)
                    loss = sum(term.float() for term in out.losses.values())
                    self.scaler.scale(loss * (len(part) / len(batch) * slice_weight)).backward()
            self.loss_names.update(out.losses)
            watch.observe(step, out, part)
            self._accumulate(part, loss, out)
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad, foreach=True)
            self._sums["grad_norm"] = self._sums.get("grad_norm", 0.0) + norm.detach().double() * len(batch)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    @torch.no_grad()
    def _accumulate(self, part: Batch, loss: torch.Tensor, out: Any) -> None:
        """Add a (part of a) batch to the epoch's device-side sums."""
        n = len(part)
        for name, value in {"loss": loss, **out.losses, **out.metrics}.items():
            self._sums[name] = self._sums.get(name, 0.0) + value.detach().double() * n
        if out.logits is not None:
            self._with_logits = True
            self._correct += (out.logits.argmax(1) == part.y).sum()
        self._seen += n

    def _examine(self, watch: "FiniteWatch", bar: Any) -> None:
        """The log point: raise if a loss term became non-finite (on any rank); update the progress bar."""
        watch.raise_if_bad(self.epoch, self.ctx, self.recorder.kept)
        if not self.quiet:
            loss, correct, seen = torch.stack([self._sums["loss"], self._correct, self._seen]).tolist()
            shown = {"loss": f"{loss / seen:.4f}"}
            if self._with_logits:
                shown["acc"] = f"{100 * correct / seen:.1f}%"
            bar.set_postfix(shown, refresh=False)

    def _save_step(self, step: int) -> None:
        """``last.pt`` after ``step`` steps of the current epoch, with this rank's running sums and RNG state."""
        own = {"rng": rng_state(), "sums": {k: v.cpu() for k, v in self._sums.items()},
               "correct": self._correct.cpu(), "seen": self._seen.cpu()}
        if self._skipped() is not None:
            own["skipped"] = self._skipped()
        self.recorder.save_step(step, own, self.task, self.optimizer, self.scaler)
