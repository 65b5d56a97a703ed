"""The trainer's record keeping: what a run folder holds, written as training goes, and read back to resume.

A :class:`Recorder` writes (rank 0 only, every write atomic):

- ``last.pt`` every epoch, and every ``checkpoint_every`` steps (model, optimiser, history: enough to
  resume exactly), ``best.pt`` at the best value of the selection metric, ``epoch_N.pt`` for requested
  epochs;
- ``metrics.jsonl``: one record per epoch; ``summary.json`` when the run has finished.

Crash consistency: ``last.pt`` is written first and commits the epoch; ``best.pt``, ``epoch_N.pt``
and ``metrics.jsonl`` follow from it, and a resume rewrites whichever a kill left missing or stale
(the only best that can be missing is the epoch of ``last.pt`` itself).  A mid-epoch ``last.pt`` is
written only after every file of the epochs before it, so it implies them all (a resume from it
checks them and rewrites nothing).  No checkpoint, at an epoch's end or mid-epoch, holds a
non-finite parameter or buffer (:class:`NonFiniteStateError`).

"Best" selects on the ``val`` set when there is one, else ``test`` (flagged in the summary), by the
task's selection metric; the summary reports the last-epoch and best-epoch test value too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from softdistill.atomic import ensure_folder, remove_stale_temporaries, write_text_atomic
from softdistill.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from softdistill.engine.task import Task
from softdistill.engine.wrap import unwrap
from softdistill.runtime.distributed import DistContext, all_reduce_sum

__all__ = ["Recorder", "RunStateError", "NonFiniteStateError", "rng_state", "set_rng_state"]


class RunStateError(RuntimeError):
    """The run folder does not allow the requested start (exists, finished, nothing to resume, changed by
    hand, or written by another number of processes)."""


class NonFiniteStateError(FloatingPointError):
    """At a checkpoint (an epoch's end or a mid-epoch one) the student holds a NaN or infinite
    parameter or buffer (e.g. a BatchNorm running variance); that checkpoint is not written."""


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states (CPU, and CUDA when available)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (its tensors may have been loaded onto the training device)."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch of the checkpoint at ``path``; None when there is none or it cannot be read."""
    try:
        return load_checkpoint(path)["epoch"]
    except CheckpointError:
        return None


class Recorder:
    """The run folder ``run_dir`` of a task trained for ``epochs`` epochs from ``seed``, and the history
    of its epochs.  ``meta`` goes into every checkpoint, so that each stands alone; ``keep_epochs``
    asks for ``epoch_N.pt``; ``has_val`` says whether a validation set selects "best"."""

    def __init__(self, run_dir: str | os.PathLike, meta: CheckpointMeta, *, epochs: int, seed: int,
                 has_val: bool, selection_metric: tuple[str, str] = ("acc", "max"), keep_epochs: tuple[int, ...] = (),
                 ctx: DistContext = DistContext(), quiet: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.epochs = epochs
        self.seed = seed
        self.selection = "val" if has_val else "test"
        self.metric, self.goal = selection_metric
        self.keep_epochs = set(keep_epochs)
        self.ctx = ctx
        self.quiet = quiet or not ctx.is_main
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # epochs complete
        self.kept = "none yet"  # the last checkpoint written, for error messages
        self.resume_step: dict[str, Any] | None = None  # where a mid-epoch checkpoint left the current epoch

    # ---------------------------------------------------------------- state
    def payload(self, task: Task, optimizer: torch.optim.Optimizer | None = None,
                scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
        """A checkpoint of the task's student after ``self.epoch`` epochs (with what a resume needs when
        ``optimizer`` is given)."""
        payload = {**self.meta.to_payload(), "epoch": self.epoch, "epochs": self.epochs, "seed": self.seed,
                   "state_dict": unwrap(task.student).state_dict(), "history": self.history}
        if optimizer is not None:
            payload["optimizer"] = optimizer.state_dict()
            payload["scaler"] = scaler.state_dict() if scaler is not None else {}
            payload["method_state"] = task.training_state()
        return payload

    def restore(self, state: dict[str, Any], task: Task, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler) -> None:
        """Continue from ``state``, a ``last.pt`` payload: the student's weights, the optimiser, the task's
        own state and the history."""
        where = self.run_dir / "last.pt"
        try:
            unwrap(task.student).load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            task.load_training_state(state.get("method_state", {}))
            scaler.load_state_dict(state["scaler"])
            self.history = list(state["history"])
            self.epoch = int(state["epoch"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where} does not fit this run's model or optimiser: {exc}") from None
        self.resume_step = state.get("step")
        self.kept = (f"epoch {self.epoch}" if self.resume_step is None
                     else f"step {self.resume_step['step']} of epoch {self.epoch + 1}")
        if self.resume_step is not None and len(self.resume_step["ranks"]) != self.ctx.world_size:
            raise RunStateError(f"{where} was written in the middle of epoch {self.epoch + 1} by "
                                f"{len(self.resume_step['ranks'])} process(es): resume it with as many")

    def begin(self, task: Task) -> None:
        """Before the first epoch of this process: the temporaries a killed write left removed, and the files
        that a kill after ``last.pt`` left unwritten written."""
        if self.ctx.is_main:
            remove_stale_temporaries(ensure_folder(self.run_dir))
            if self.history:
                self._write_epoch_files(task, repair=True)

    # ---------------------------------------------------------------- writing
    def end_epoch(self, record: dict[str, Any], task: Task, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler) -> None:
        """Epoch ``record["epoch"]`` is done: its record kept and, on rank 0, ``last.pt`` written (which commits
        it), then the files it implies and the log line."""
        self.history.append(record)
        self.epoch = record["epoch"]
        self.check_finite_state(task, f"epoch {self.epoch}")
        if self.ctx.is_main:
            save_checkpoint(self.payload(task, optimizer, scaler), self.run_dir / "last.pt")
            self._write_epoch_files(task)
        self.kept = f"epoch {self.epoch}"

    def save_step(self, step: int, own: dict[str, Any], task: Task, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler) -> None:
        """``last.pt`` after ``step`` steps of the epoch under way: what an epoch checkpoint holds, plus every
        rank's ``own`` (its running sums and RNG state), so that a resume continues at step ``step`` exactly
        (the loader skips the batches done; their order and views are stateless).  Written only when every
        parameter and buffer is finite."""
        current = self.epoch + 1
        self.check_finite_state(task, f"step {step} of epoch {current}")
        ranks = _gather_objects(own, self.ctx)
        self.kept = f"step {step} of epoch {current}"
        if not self.ctx.is_main:
            return
        payload = self.payload(task, optimizer, scaler)  # epoch: the epochs complete
        payload["step"] = {"step": step, "ranks": ranks}
        save_checkpoint(payload, self.run_dir / "last.pt")

    def finish(self, task: Task) -> dict[str, Any]:
        """The run is done: the task's own last files, then ``summary.json`` (rank 0); the summary."""
        summary = self.summary(unwrap(task.student))
        if self.ctx.is_main:
            task.finish(self.run_dir)
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary

    def check_finite_state(self, task: Task, when: str) -> None:
        """:class:`NonFiniteStateError` (on every rank) unless every floating-point parameter and buffer
        of the student is finite on every rank, so that no checkpoint with NaN or inf is ever written.
        Called at checkpoints only: one host read, never inside a step."""
        tensors = {k: v for k, v in unwrap(task.student).state_dict().items() if v.is_floating_point()}
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

    def _write_epoch_files(self, task: Task, repair: bool = False) -> None:
        """The files that ``last.pt`` (written first, the epoch's commit point) implies: ``best.pt`` when
        this epoch is the selected one, ``epoch_N.pt`` when kept, ``metrics.jsonl``.  ``repair`` (on
        resume, the student holding last.pt's weights): rewrite only the checkpoints that a
        kill after ``last.pt`` left missing or stale.  A mid-epoch ``last.pt`` holds later weights than
        epoch ``self.epoch``'s, but is written after all of that epoch's files, so a missing or stale one
        there means the folder was changed by hand."""
        selected = self.selected()
        names = (["best.pt"] if selected is not None and selected["epoch"] == self.epoch else []) + (
            [f"epoch_{self.epoch}.pt"] if self.epoch in self.keep_epochs else [])
        stale = [name for name in names if not repair or _checkpoint_epoch(self.run_dir / name) != self.epoch]
        if stale and self.resume_step is not None:
            raise RunStateError(
                f"{self.run_dir}: {', '.join(stale)} should hold epoch {self.epoch} but is missing or holds another "
                f"epoch, while last.pt was written in the middle of epoch {self.epoch + 1}, after every file of epoch "
                f"{self.epoch}: the folder was changed by hand. Restore the file, or delete the folder to train again.")
        if stale:
            payload = self.payload(task)
            for name in stale:
                save_checkpoint(payload, self.run_dir / name)
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        write_text_atomic(self.run_dir / "metrics.jsonl", lines)

    # ---------------------------------------------------------------- reading
    def selected(self) -> dict[str, Any] | None:
        """The epoch record "best" means: the best value of the selection metric on the selection set
        among the evaluated epochs (ties: the earliest); None before the first evaluation."""
        key, sign = f"{self.selection}/{self.metric}", (1 if self.goal == "max" else -1)
        return max((r for r in self.history if key in r), key=lambda r: (sign * r[key], -r["epoch"]), default=None)

    def log(self, record: dict[str, Any], loss_names: set[str], eval_names: list[str]) -> None:
        """The epoch's line on the console (rank 0, unless quiet)."""
        if self.quiet:
            return
        train = {k[6:]: v for k, v in record.items() if k.startswith("train/")
                 and k not in ("train/loss", "train/acc", "train/skipped")}
        losses = ", ".join(f"{k} {v:.4f}" for k, v in train.items() if k in loss_names)
        diagnostics = ", ".join(f"{k} {v:.3f}" for k, v in train.items() if k not in loss_names)
        unit = "%" if self.metric == "acc" else ""
        evals = "  ".join(f"{name} {record[f'{name}/{self.metric}']:.2f}{unit}" for name in eval_names
                          if f"{name}/{self.metric}" in record)
        train_acc = f"train {record['train/acc']:.2f}%  " if "train/acc" in record else ""
        tqdm.write(f"epoch {record['epoch']:>3}/{self.epochs}  loss {record['train/loss']:.4f} ({losses})  "
                   f"{train_acc}{evals}  lr {record['lr']:.4g}  {record['seconds']:.1f}s"
                   + (f"  | {diagnostics}" if diagnostics else "")
                   + (f"  | {record['train/skipped']} unreadable sample(s) left out" if record.get("train/skipped")
                      else ""))

    def summary(self, student: nn.Module) -> dict[str, Any]:
        """Last-epoch and best-epoch test value of the selection metric (``test_acc_last``, ...), the
        test value at the epoch selected on ``selection``, timing, and the final evaluations."""
        m, sign = self.metric, (1 if self.goal == "max" else -1)
        hist = [r for r in self.history if f"test/{m}" in r]  # the evaluated epochs
        sel = self.selected()
        assert sel is not None  # the last epoch is always evaluated
        best_test = max(hist, key=lambda r: (sign * r[f"test/{m}"], -r["epoch"]))
        seconds = sum(r["seconds"] for r in self.history)
        return {
            "name": self.meta.config.get("name"),
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
            "parameters": sum(p.numel() for p in student.parameters()),
            f"final_{m}": {k.split("/")[1]: v for k, v in self.history[-1].items()
                           if k.startswith("final/") and k.endswith(f"/{m}")},
            # data.on_corrupt: skip: the training samples left out, over the whole run (val_ and test_skipped
            # above are those of the last evaluation)
            **({"train_skipped": sum(r.get("train/skipped", 0) for r in self.history)}
               if "train/skipped" in self.history[-1] else {}),
            "finished": True,
        }


def _gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` of every rank, in rank order (a list of one in a single process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
