"""One training loop for teachers and students alike.

The trainer calls ``method(batch)`` for a :class:`~softdistill.types.StepOutput`, sums its loss
terms, steps the optimiser and logs every term; it evaluates ``method.student`` on the
evaluation sets after each epoch and writes the run folder (rank 0 only):

- ``last.pt`` every epoch, and every ``checkpoint_every`` steps (model, optimiser, history: enough to resume exactly),
  ``best.pt`` at the best value of the selection metric, ``epoch_N.pt`` for requested epochs;
- ``metrics.jsonl``: one record per epoch; ``summary.json`` when the run has finished.

``final_loaders`` (e.g. out-of-domain versions of the test set) are evaluated once, after the
last epoch, and reported as ``final/NAME/acc`` and in the summary.  The method's hooks
(``start_epoch``, ``end_epoch``, ``training_state``/``load_training_state``, ``finish``, see
:class:`~softdistill.methods.base.Method`) are called when the method has them.  A task whose
evaluation is not top-1 accuracy (e.g. the VAE) gives ``evaluation_sums(model, batch)`` (per-batch
sums, averaged over the set) and ``selection_metric`` (name, "max" or "min"); ``StepOutput.logits``
may then be None.

Every write is atomic.  Exact resume: all randomness of an epoch is seeded by (seed, epoch),
so continuing from the end of epoch e reproduces the weights of an uninterrupted run.  With
``checkpoint_every=N``, ``last.pt`` is also written every N optimiser steps inside an epoch, with
the epoch's running sums and the RNG state of every rank: a resume skips the batches done and
continues bit-identically.

Crash consistency: ``last.pt`` is written first and commits the epoch; ``best.pt``, ``epoch_N.pt``
and ``metrics.jsonl`` follow from it, and a resume rewrites whichever a kill left missing or stale
(the only best that can be missing is the epoch of ``last.pt`` itself).  A mid-epoch ``last.pt`` is
written only after every file of the epochs before it, so it implies them all (a resume from it
checks them and rewrites nothing).  A resume from the final epoch's ``last.pt`` (killed before
``summary.json``) writes those files, calls ``finish`` and writes the summary; the final
evaluations are part of the final epoch's record.  No checkpoint, at an epoch's end or mid-epoch,
holds a non-finite parameter or buffer (:class:`NonFiniteStateError`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from softdistill.atomic import ensure_folder, remove_stale_temporaries
from softdistill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from softdistill.data.loader import EpochBatches
from softdistill.runtime.distributed import DistContext, all_reduce_min, all_reduce_sum, barrier
from softdistill.engine.optim import LRSchedule
from softdistill.engine.predict import autocast, classification_sums, evaluate
from softdistill.runtime.progress import progress_bar
from softdistill.engine.wrap import compile_errors, unwrap
from softdistill.runs import RunStateError, config_differences, resume_checkpoint, write_text_atomic
from softdistill.types import Batch, StepOutput

__all__ = ["Trainer", "evaluate", "NonFiniteLossError", "NonFiniteStateError", "RunStateError"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the epoch, step and term."""


class NonFiniteStateError(FloatingPointError):
    """At a checkpoint (an epoch's end or a mid-epoch one) the student holds a NaN or infinite
    parameter or buffer (e.g. a BatchNorm running variance); that checkpoint is not written."""


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch of the checkpoint at ``path``; None when there is none or it cannot be read."""
    try:
        return load_checkpoint(path)["epoch"]
    except CheckpointError:
        return None


def _rng_state() -> dict[str, Any]:
    """This process's torch RNG states (CPU, and CUDA when available)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`_rng_state` (its tensors may have been loaded onto the training device)."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` of every rank, in rank order (a list of one in a single process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


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
    """Train ``method`` (an ``nn.Module`` returning StepOutput) and write the run folder.

    ``method.student`` is what gets evaluated and checkpointed; ``checkpoint_meta`` (model
    spec, normalisation, resolved config) goes into every checkpoint so that it stands alone.
    A run resumes only under the same config: ``config_check(saved_config)`` lists the differences
    (default: every differing key of ``checkpoint_meta["config"]``).
    Selection ("best") uses the ``val`` set when given, else ``test`` (flagged in the summary).
    """

    def __init__(self, method: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 train_loader: EpochBatches, eval_loaders: Mapping[str, EpochBatches], run_dir: str | os.PathLike, *,
                 epochs: int, seed: int, checkpoint_meta: Mapping[str, Any], ctx: DistContext = DistContext(),
                 amp: str = "off", keep_epochs: Sequence[int] = (), quiet: bool = False,
                 config_check: Callable[[Any], list[str]] | None = None, eval_every: int = 1,
                 final_loaders: Mapping[str, EpochBatches] | None = None, checkpoint_every: int = 0,
                 grad_accum: int = 1, clip_grad: float | None = None, log_every: int = 50) -> None:
        if amp == "fp16" and ctx.device.type != "cuda":
            raise ValueError("amp: fp16 needs a CUDA device; on the CPU use amp: bf16")
        if "test" not in eval_loaders:
            raise ValueError("the trainer needs a 'test' evaluation set")
        self.method = method
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_loader = train_loader
        self.eval_loaders = dict(eval_loaders)
        self.final_loaders = dict(final_loaders or {})
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.seed = seed
        self.meta = dict(checkpoint_meta)
        self.ctx = ctx
        self.amp = amp
        self.keep_epochs = set(keep_epochs)
        self.quiet = quiet or not ctx.is_main
        self.config_check = config_check or (lambda saved: config_differences(saved, self.meta.get("config")))
        self.eval_every = eval_every
        self.checkpoint_every = checkpoint_every
        self.grad_accum = grad_accum
        self.clip_grad = clip_grad
        self.log_every = log_every
        self._ddp_modules = [m for m in method.modules() if isinstance(m, DistributedDataParallel)]
        self.kept = "none yet"  # the last checkpoint written, for the non-finite error
        self.resume_step: dict[str, Any] | None = None  # where a mid-epoch checkpoint left the current epoch
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=(amp == "fp16"))
        self.selection = "val" if "val" in self.eval_loaders else "test"
        # what "best" means: the method's (metric, max | min), top-1 accuracy by default
        self.metric, self.goal = getattr(method, "selection_metric", ("acc", "max"))
        self.eval_sums = getattr(method, "evaluation_sums", classification_sums)
        self.history: list[dict[str, Any]] = []
        self.loss_names: set[str] = set()
        self.epoch = 0

    # ---------------------------------------------------------------- state
    def _hook(self, name: str, *args: Any) -> Any:
        hook = getattr(self.method, name, None)
        return hook(*args) if hook is not None else None

    @property
    def student(self) -> nn.Module:
        return unwrap(self.method.student)

    def _payload(self, with_optimizer: bool) -> dict[str, Any]:
        payload = {**self.meta, "epoch": self.epoch, "epochs": self.epochs, "seed": self.seed,
                   "state_dict": self.student.state_dict(), "history": self.history}
        if with_optimizer:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["scaler"] = self.scaler.state_dict()
            payload["method_state"] = self._hook("training_state") or {}
        return payload

    def _start(self, resume: bool) -> None:
        state = resume_checkpoint(self.run_dir, resume, self.config_check, self.ctx.device)
        if state is None:
            return
        try:
            self.student.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._hook("load_training_state", state.get("method_state", {}))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.run_dir / 'last.pt'} does not fit this run's model or optimiser: {exc}") from None
        self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.epoch = state["epoch"]
        self.resume_step = state.get("step")
        self.kept = (f"epoch {self.epoch}" if self.resume_step is None
                     else f"step {self.resume_step['step']} of epoch {self.epoch + 1}")
        if self.resume_step is not None and len(self.resume_step["ranks"]) != self.ctx.world_size:
            raise RunStateError(f"{self.run_dir / 'last.pt'} was written in the middle of epoch {self.epoch + 1} by "
                                f"{len(self.resume_step['ranks'])} process(es): resume it with as many")

    # ---------------------------------------------------------------- loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Run the remaining epochs; return the summary (also written to summary.json)."""
        self._start(resume)
        if self.ctx.is_main:
            remove_stale_temporaries(ensure_folder(self.run_dir))  # left by a process killed mid-write
            if self.history:
                self._write_epoch_files(repair=True)  # what a kill after last.pt left unwritten
        while self.epoch < self.epochs:
            self.epoch += 1
            record = self.train_epoch()
            self._hook("end_epoch", self.epoch, self.run_dir / "report" if self.ctx.is_main else None)
            evaluated = dict(self.eval_loaders) if self.epoch % self.eval_every == 0 or self.epoch == self.epochs else {}
            if self.epoch == self.epochs:
                evaluated.update({f"final/{name}": loader for name, loader in self.final_loaders.items()})
            for name, loader in evaluated.items():
                for key, value in evaluate(self.student, loader, self.ctx, self.amp, self.eval_sums).items():
                    record[f"{name}/{key}"] = value
                if getattr(loader, "skipped", None) is not None:  # samples left out of the evaluation (unreadable)
                    record[f"{name}/skipped"] = self._total(loader.skipped)
            record["seconds"] = time.perf_counter() - record.pop("_start")
            self.history.append(record)
            self._check_finite_state(f"epoch {self.epoch}")
            if self.ctx.is_main:
                save_checkpoint(self._payload(with_optimizer=True), self.run_dir / "last.pt")  # commits the epoch
                self._write_epoch_files()
                self._log(record)
            self.kept = f"epoch {self.epoch}"
        summary = self.summary()
        if self.ctx.is_main:
            self._hook("finish", self.run_dir)
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        barrier(self.ctx)  # every rank returns once the run folder is complete, and they leave together
        return summary

    def train_epoch(self) -> dict[str, Any]:
        """Train epoch ``self.epoch`` (no evaluation; only mid-epoch checkpoints are written); its record.

        The step never reads a device value on the host: sums, accuracy and the non-finite watch
        stay on the device and are read every ``log_every`` steps, before a mid-epoch checkpoint
        and at the epoch's end.
        """
        ctx, epoch = self.ctx, self.epoch
        first, resumed = (0, None) if self.resume_step is None else (self.resume_step["step"],
                                                                     self.resume_step["ranks"][ctx.rank])
        self.resume_step = None
        if resumed is None:
            torch.manual_seed(self.seed * 1_000_003 + epoch + 500_000)  # model-side randomness of this epoch
        else:
            _set_rng_state(resumed["rng"])
        self.train_loader.set_epoch(epoch, skip=first)
        self.method.train()
        self._hook("start_epoch", epoch, self.epochs)
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
                watch.raise_if_bad(epoch, ctx, self.kept)  # never write weights a non-finite step has touched
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
        """One optimiser step on ``batch``, in ``grad_accum`` parts of near-equal size (each weighted
        by its share of the batch; a short last batch may have fewer), gradients clipped to
        ``clip_grad`` when set."""
        self.optimizer.zero_grad(set_to_none=True)
        parts = [part for part in batch.chunks(self.grad_accum) if len(part)] if self.grad_accum > 1 else [batch]
        for i, part in enumerate(parts):
            with contextlib.ExitStack() as stack:
                if i < len(parts) - 1:  # DDP all-reduces the gradients once, after the last part
                    for module in self._ddp_modules:
                        stack.enter_context(module.no_sync())
                with compile_errors():
                    with autocast(self.ctx.device, self.amp):
                        out = self.method(part)
                    loss = sum(term.float() for term in out.losses.values())
                    self.scaler.scale(loss * (len(part) / len(batch))).backward()
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
        watch.raise_if_bad(self.epoch, self.ctx, self.kept)
        if not self.quiet:
            loss, correct, seen = torch.stack([self._sums["loss"], self._correct, self._seen]).tolist()
            shown = {"loss": f"{loss / seen:.4f}"}
            if self._with_logits:
                shown["acc"] = f"{100 * correct / seen:.1f}%"
            bar.set_postfix(shown, refresh=False)

    def _save_step(self, step: int) -> None:
        """``last.pt`` after ``step`` steps of the current epoch: what an epoch checkpoint holds, plus the
        epoch's running sums and RNG state of every rank, so that a resume continues at step ``step``
        exactly (the loader skips the batches done; their order and views are stateless).  Written only
        when every parameter and buffer is finite (the check reads the device once, here only)."""
        self._check_finite_state(f"step {step} of epoch {self.epoch}")
        own = {"rng": _rng_state(), "sums": {k: v.cpu() for k, v in self._sums.items()},
               "correct": self._correct.cpu(), "seen": self._seen.cpu()}
        if self._skipped() is not None:
            own["skipped"] = self._skipped()
        ranks = _gather_objects(own, self.ctx)
        self.kept = f"step {step} of epoch {self.epoch}"
        if not self.ctx.is_main:
            return
        payload = self._payload(with_optimizer=True)
        payload["epoch"] = self.epoch - 1  # epochs complete
        payload["step"] = {"step": step, "ranks": ranks}
        save_checkpoint(payload, self.run_dir / "last.pt")

    def _check_finite_state(self, when: str) -> None:
        """:class:`NonFiniteStateError` (on every rank) unless every floating-point parameter and buffer
        of the student is finite on every rank, so that no checkpoint with NaN or inf is ever written.
        Called at checkpoints only: one host read, never inside a step."""
        tensors = {k: v for k, v in self.student.state_dict().items() if v.is_floating_point()}
        if not tensors:
            return
        bad = torch.stack([~torch.isfinite(v).all() for v in tensors.values()]).float()
        all_reduce_sum(bad, self.ctx)
        names = [name for name, count in zip(tensors, bad.tolist()) if count]
        if not names:
            return
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise NonFiniteStateError(
            f"after {when} the student holds NaN or infinite values in {shown}: training diverged (lower the "
            f"learning rate). That state was not written: the run folder keeps its last good checkpoint "
            f"({self.kept}), whose every parameter and buffer is finite.")

    def _write_epoch_files(self, repair: bool = False) -> None:
        """The files that ``last.pt`` (written first, the epoch's commit point) implies: ``best.pt`` when
        this epoch is the selected one, ``epoch_N.pt`` when kept, ``metrics.jsonl``.  ``repair`` (on
        resume): rewrite only the checkpoints that a kill after ``last.pt`` left missing or stale.  A
        mid-epoch ``last.pt`` holds later weights than epoch ``self.epoch``'s, but is written after all
        of that epoch's files, so a missing or stale one there means the folder was changed by hand."""
        selected = self._selected()
        names = (["best.pt"] if selected is not None and selected["epoch"] == self.epoch else []) + (
            [f"epoch_{self.epoch}.pt"] if self.epoch in self.keep_epochs else [])
        stale = [name for name in names if not repair or _checkpoint_epoch(self.run_dir / name) != self.epoch]
        if stale and self.resume_step is not None:
            raise RunStateError(
                f"{self.run_dir}: {', '.join(stale)} should hold epoch {self.epoch} but is missing or holds another "
                f"epoch, while last.pt was written in the middle of epoch {self.epoch + 1}, after every file of epoch "
                f"{self.epoch}: the folder was changed by hand. Restore the file, or delete the folder to train again.")
        if stale:
            payload = self._payload(with_optimizer=False)
            for name in stale:
                save_checkpoint(payload, self.run_dir / name)
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        write_text_atomic(self.run_dir / "metrics.jsonl", lines)

    def _selected(self) -> dict[str, Any] | None:
        """The epoch record "best" means: the best value of the selection metric on the selection set
        among the evaluated epochs (ties: the earliest); None before the first evaluation."""
        key, sign = f"{self.selection}/{self.metric}", (1 if self.goal == "max" else -1)
        return max((r for r in self.history if key in r), key=lambda r: (sign * r[key], -r["epoch"]), default=None)

    def _log(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        train = {k[6:]: v for k, v in record.items() if k.startswith("train/")
                 and k not in ("train/loss", "train/acc", "train/skipped")}
        losses = ", ".join(f"{k} {v:.4f}" for k, v in train.items() if k in self.loss_names)
        diagnostics = ", ".join(f"{k} {v:.3f}" for k, v in train.items() if k not in self.loss_names)
        names = [*self.eval_loaders, *(f"final/{name}" for name in self.final_loaders)]
        unit = "%" if self.metric == "acc" else ""
        evals = "  ".join(f"{name} {record[f'{name}/{self.metric}']:.2f}{unit}" for name in names
                          if f"{name}/{self.metric}" in record)
        train_acc = f"train {record['train/acc']:.2f}%  " if "train/acc" in record else ""
        tqdm.write(f"epoch {record['epoch']:>3}/{self.epochs}  loss {record['train/loss']:.4f} ({losses})  "
                   f"{train_acc}{evals}  lr {record['lr']:.4g}  {record['seconds']:.1f}s"
                   + (f"  | {diagnostics}" if diagnostics else "")
                   + (f"  | {record['train/skipped']} unreadable sample(s) left out" if record.get("train/skipped")
                      else ""))

    def summary(self) -> dict[str, Any]:
        """Last-epoch and best-epoch test value of the selection metric (``test_acc_last``, ...), the
        test value at the epoch selected on ``selection``, timing, and the final evaluations."""
        m, sign = self.metric, (1 if self.goal == "max" else -1)
        hist = [r for r in self.history if f"test/{m}" in r]  # the evaluated epochs
        sel = self._selected()
        assert sel is not None  # the last epoch is always evaluated
        best_test = max(hist, key=lambda r: (sign * r[f"test/{m}"], -r["epoch"]))
        seconds = sum(r["seconds"] for r in self.history)
        return {
            "name": self.meta.get("config", {}).get("name"),
            "seed": self.seed,
            "epochs": self.epochs,
            f"test_{m}_last": hist[-1][f"test/{m}"],
            f"test_{m}_best": best_test[f"test/{m}"],
            "best_test_epoch": best_test["epoch"],
            "selection": self.selection,
            "selected_epoch": sel["epoch"],
            f"test_{m}_selected": sel[f"test/{m}"],
            f"val_{m}_best": sel[f"val/{m}"] if self.selection == "val" else None,
            **{k.replace("/", "_"): v for k, v in hist[-1].items() if k.startswith(("test/", "val/"))
               and not k.endswith(f"/{m}")},
            "seconds": seconds,
            "seconds_per_epoch": seconds / len(self.history),
            "parameters": sum(p.numel() for p in self.student.parameters()),
            f"final_{m}": {k.split("/")[1]: v for k, v in self.history[-1].items()
                           if k.startswith("final/") and k.endswith(f"/{m}")},
            # data.on_corrupt: skip: the training samples left out, over the whole run (val_ and test_skipped
            # above are those of the last evaluation)
            **({"train_skipped": sum(r.get("train/skipped", 0) for r in self.history)}
               if "train/skipped" in self.history[-1] else {}),
            "finished": True,
        }
