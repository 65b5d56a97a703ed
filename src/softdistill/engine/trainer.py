"""One training loop for teachers and students alike.

The trainer calls ``method(batch)`` for a :class:`~softdistill.types.StepOutput`, sums its loss
terms, steps the optimiser and logs every term; it evaluates ``method.student`` on the
evaluation sets after each epoch and writes the run folder (rank 0 only):

- ``last.pt`` every epoch (model, optimiser, history: enough to resume exactly),
  ``best.pt`` at the best selection accuracy, ``epoch_N.pt`` for requested epochs;
- ``metrics.jsonl``: one record per epoch; ``summary.json`` when the run has finished.

``final_loaders`` (e.g. out-of-domain versions of the test set) are evaluated once, after the
last epoch, and reported as ``final/NAME/acc`` and in the summary.  The method's hooks
(``start_epoch``, ``end_epoch``, ``training_state``/``load_training_state``, see
:class:`~softdistill.methods.base.Method`) are called when the method has them.

Every write is atomic.  Exact resume: all randomness of an epoch is seeded by (seed, epoch),
so continuing from the end of epoch e reproduces the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from softdistill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from softdistill.data.loader import BatchLoader
from softdistill.engine.distributed import DistContext, all_reduce_sum, barrier
from softdistill.engine.optim import LRSchedule

__all__ = ["Trainer", "evaluate", "NonFiniteLossError", "RunStateError", "write_text_atomic", "config_differences",
           "resume_checkpoint"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the epoch, step and term."""


class RunStateError(RuntimeError):
    """The run folder does not allow the requested start (exists, finished, nothing to resume)."""


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def config_differences(old: Any, new: Any, ignore: Sequence[str] = (), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (keys in ``ignore`` are skipped)."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new)):
            if f"{prefix}{key}" not in ignore:
                diffs += config_differences(old.get(key), new.get(key), ignore, f"{prefix}{key}.")
        return diffs
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def resume_checkpoint(run_dir: Path, resume: bool, epochs: int, config_check: Callable[[Any], list[str]],
                      map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The ``last.pt`` payload a run continues from, or None for a new run.

    The run-folder rules: a new run refuses a folder that holds one; a resume needs ``last.pt``,
    the same recipe (``config_check(saved_config)`` lists what changed) and epochs left to train.
    """
    last = run_dir / "last.pt"
    if not resume:
        if last.exists() or (run_dir / "summary.json").exists():
            raise RunStateError(f"{run_dir} already holds a run; continue it with --resume, "
                                "or choose another output folder / delete it to start over")
        return None
    if not last.exists():
        raise RunStateError(f"nothing to resume: no checkpoint {last}; start the run without --resume")
    state = load_checkpoint(last, map_location=map_location)
    diffs = config_check(state.get("config"))
    if diffs:
        raise RunStateError(f"cannot resume {run_dir}: the recipe changed since the checkpoint:\n  " + "\n  ".join(diffs))
    if state["epoch"] >= epochs:
        raise RunStateError(f"{run_dir} has already finished ({state['epoch']} of {epochs} epochs); nothing to resume")
    return state


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, ctx: DistContext = DistContext(), amp: str = "off") -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` over ``loader``, summed over ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # correct, loss sum, count
    with torch.inference_mode():
        for batch in loader:
            with _autocast(ctx.device, amp):
                logits = model(batch.x)
            logits = logits.float()
            totals[0] += (logits.argmax(1) == batch.y).sum()
            totals[1] += F.cross_entropy(logits, batch.y, reduction="sum")
            totals[2] += len(batch)
    model.train(was_training)
    all_reduce_sum(totals, ctx)
    count = max(totals[2].item(), 1.0)
    return {"acc": 100.0 * totals[0].item() / count, "loss": totals[1].item() / count}


class Trainer:
    """Train ``method`` (an ``nn.Module`` returning StepOutput) and write the run folder.

    ``method.student`` is what gets evaluated and checkpointed; ``checkpoint_meta`` (model
    spec, normalisation, resolved config) goes into every checkpoint so that it stands alone.
    A run resumes only under the same config: ``config_check(saved_config)`` lists the differences
    (default: every differing key of ``checkpoint_meta["config"]``).
    Selection ("best") uses the ``val`` set when given, else ``test`` (flagged in the summary).
    """

    def __init__(self, method: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 train_loader: BatchLoader, eval_loaders: Mapping[str, BatchLoader], run_dir: str | os.PathLike, *,
                 epochs: int, seed: int, checkpoint_meta: Mapping[str, Any], ctx: DistContext = DistContext(),
                 amp: str = "off", keep_epochs: Sequence[int] = (), quiet: bool = False,
                 config_check: Callable[[Any], list[str]] | None = None, eval_every: int = 1,
                 final_loaders: Mapping[str, BatchLoader] | None = None) -> None:
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
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=(amp == "fp16"))
        self.selection = "val" if "val" in self.eval_loaders else "test"
        self.history: list[dict[str, Any]] = []
        self.loss_names: set[str] = set()
        self.epoch = 0

    # ---------------------------------------------------------------- state
    def _hook(self, name: str, *args: Any) -> Any:
        hook = getattr(self.method, name, None)
        return hook(*args) if hook is not None else None

    @property
    def student(self) -> nn.Module:
        student = self.method.student
        return student.module if hasattr(student, "module") else student  # unwrap DDP

    def _payload(self, with_optimizer: bool) -> dict[str, Any]:
        payload = {**self.meta, "epoch": self.epoch, "epochs": self.epochs, "seed": self.seed,
                   "state_dict": self.student.state_dict(), "history": self.history}
        if with_optimizer:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["scaler"] = self.scaler.state_dict()
            payload["method_state"] = self._hook("training_state") or {}
        return payload

    def _start(self, resume: bool) -> None:
        state = resume_checkpoint(self.run_dir, resume, self.epochs, self.config_check, self.ctx.device)
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

    # ---------------------------------------------------------------- loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Run the remaining epochs; return the summary (also written to summary.json)."""
        self._start(resume)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        while self.epoch < self.epochs:
            self.epoch += 1
            record = self._train_epoch()
            self._hook("end_epoch", self.epoch, self.run_dir / "report" if self.ctx.is_main else None)
            evaluated = dict(self.eval_loaders) if self.epoch % self.eval_every == 0 or self.epoch == self.epochs else {}
            if self.epoch == self.epochs:
                evaluated.update({f"final/{name}": loader for name, loader in self.final_loaders.items()})
            for name, loader in evaluated.items():
                for key, value in evaluate(self.student, loader, self.ctx, self.amp).items():
                    record[f"{name}/{key}"] = value
            record["seconds"] = time.perf_counter() - record.pop("_start")
            self.history.append(record)
            if self.ctx.is_main:
                self._save_epoch()
                self._log(record)
        summary = self.summary()
        if self.ctx.is_main:
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        barrier(self.ctx)  # every rank returns once the run folder is complete, and they leave together
        return summary

    def _train_epoch(self) -> dict[str, Any]:
        ctx, epoch = self.ctx, self.epoch
        torch.manual_seed(self.seed * 1_000_003 + epoch + 500_000)  # model-side randomness of this epoch
        self.train_loader.set_epoch(epoch)
        self.method.train()
        self._hook("start_epoch", epoch, self.epochs)
        steps = len(self.train_loader)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
        seen = torch.zeros((), dtype=torch.float64, device=ctx.device)
        start = time.perf_counter()
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", leave=False, disable=self.quiet, dynamic_ncols=True)
        lr = 0.0
        for step, batch in enumerate(self.train_loader):
            lr = self.schedule.lr_at((epoch - 1) * steps + step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with _autocast(ctx.device, self.amp):
                out = self.method(batch)
            loss = sum(term.float() for term in out.losses.values())
            self.loss_names.update(out.losses)
            self._check_finite(loss, out.losses, step)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = len(batch)
            with torch.no_grad():
                for name, value in {"loss": loss, **out.losses, **out.metrics}.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().double() * n
                correct += (out.logits.argmax(1) == batch.y).sum()
                seen += n
            if not self.quiet and (step % 10 == 0 or step == steps - 1):
                bar.set_postfix(loss=f"{sums['loss'].item() / seen.item():.4f}",
                                acc=f"{100 * correct.item() / seen.item():.1f}%", refresh=False)
            bar.update(1)
        bar.close()
        names = list(sums)
        packed = torch.stack([sums[k] for k in names] + [correct, seen]) if names else torch.stack([correct, seen])
        all_reduce_sum(packed, ctx)
        total = max(packed[-1].item(), 1.0)
        record: dict[str, Any] = {"epoch": epoch, "lr": lr, "_start": start}
        record.update({f"train/{k}": packed[i].item() / total for i, k in enumerate(names)})
        record["train/acc"] = 100.0 * packed[-2].item() / total
        return record

    def _check_finite(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor], step: int) -> None:
        bad = torch.zeros((), device=self.ctx.device) if torch.isfinite(loss) else torch.ones((), device=self.ctx.device)
        all_reduce_sum(bad, self.ctx)
        if bad.item() == 0:
            return
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        culprits = [k for k, v in terms.items() if not math.isfinite(v.item())] or ["(on another rank)"]
        kept = f"epoch {self.epoch - 1}" if self.epoch > 1 else "none yet"
        raise NonFiniteLossError(
            f"non-finite loss at epoch {self.epoch}, step {step + 1}: term {', '.join(culprits)} ({values}). "
            f"The run folder keeps its last good checkpoint ({kept}). Lower the learning rate "
            "(alpha * T^2 scales soft-label gradients), or check the data and the teacher.")

    # ---------------------------------------------------------------- outputs
    def _save_epoch(self) -> None:
        save_checkpoint(self._payload(with_optimizer=True), self.run_dir / "last.pt")
        key = f"{self.selection}/acc"
        earlier = [r[key] for r in self.history[:-1] if key in r]
        if key in self.history[-1] and (not earlier or self.history[-1][key] > max(earlier)):  # ties: the earliest
            save_checkpoint(self._payload(with_optimizer=False), self.run_dir / "best.pt")
        if self.epoch in self.keep_epochs:
            save_checkpoint(self._payload(with_optimizer=False), self.run_dir / f"epoch_{self.epoch}.pt")
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        write_text_atomic(self.run_dir / "metrics.jsonl", lines)

    def _log(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        train = {k[6:]: v for k, v in record.items() if k.startswith("train/") and k not in ("train/loss", "train/acc")}
        losses = ", ".join(f"{k} {v:.4f}" for k, v in train.items() if k in self.loss_names)
        diagnostics = ", ".join(f"{k} {v:.3f}" for k, v in train.items() if k not in self.loss_names)
        names = [*self.eval_loaders, *(f"final/{name}" for name in self.final_loaders)]
        evals = "  ".join(f"{name} {record[f'{name}/acc']:.2f}%" for name in names if f"{name}/acc" in record)
        tqdm.write(f"epoch {record['epoch']:>3}/{self.epochs}  loss {record['train/loss']:.4f} ({losses})  "
                   f"train {record['train/acc']:.2f}%  {evals}  lr {record['lr']:.4g}  {record['seconds']:.1f}s"
                   + (f"  | {diagnostics}" if diagnostics else ""))

    def summary(self) -> dict[str, Any]:
        """Last-epoch and best-epoch test accuracy, the test accuracy at the selected epoch, timing."""
        hist = [r for r in self.history if "test/acc" in r]  # the evaluated epochs
        sel = max(hist, key=lambda r: (r[f"{self.selection}/acc"], -r["epoch"]))
        best_test = max(hist, key=lambda r: (r["test/acc"], -r["epoch"]))
        return {
            "name": self.meta.get("config", {}).get("name"),
            "seed": self.seed,
            "epochs": self.epochs,
            "test_acc_last": hist[-1]["test/acc"],
            "test_acc_best": best_test["test/acc"],
            "best_test_epoch": best_test["epoch"],
            "selection": self.selection,
            "selected_epoch": sel["epoch"],
            "test_acc_selected": sel["test/acc"],
            "val_acc_best": sel["val/acc"] if self.selection == "val" else None,
            "seconds": sum(r["seconds"] for r in self.history),
            "seconds_per_epoch": sum(r["seconds"] for r in self.history) / len(self.history),
            "parameters": sum(p.numel() for p in self.student.parameters()),
            "final_acc": {k.split("/")[1]: v for k, v in self.history[-1].items()
                          if k.startswith("final/") and k.endswith("/acc")},
            "finished": True,
        }
