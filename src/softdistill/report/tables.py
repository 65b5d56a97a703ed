"""Aggregate finished runs over seeds into mean +- std tables.

Statistics: the mean and the sample standard deviation (ddof = 1) over seeds; with a single
seed the deviation is reported as n/a.  "last" is the test accuracy after the final epoch,
"best" the highest test accuracy of any epoch (what many papers report; optimistic), and
"selected" the test accuracy at the epoch with the best validation accuracy (the honest pick).
"final" sets (out-of-domain versions of the test set) are evaluated once, after the last epoch.
Method labels come from each run's saved config.yaml (:func:`method_label`), and a teacher's
test accuracy from the history stored in its checkpoint (:func:`read_teacher`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softdistill.atomic import write_text_atomic
from softdistill.checkpoint import load_checkpoint

__all__ = ["RecipeResult", "TeacherResult", "aggregate_runs", "read_teacher", "method_label", "format_markdown",
           "format_final_markdown", "format_teachers_markdown", "final_names", "write_csv", "mean_std"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values)."""
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


@dataclass
class TeacherResult:
    """A teacher checkpoint that students distilled from, and its test accuracy at that epoch."""

    checkpoint: Path
    name: str  # the teacher recipe's name
    model: str
    epoch: int
    epochs: int
    test_acc: float  # nan when the checkpoint's epoch was not evaluated on the test set
    num_classes: int


def read_teacher(checkpoint: str | Path) -> TeacherResult:
    """The teacher recipe, model and test accuracy that a softdistill checkpoint records."""
    payload = load_checkpoint(checkpoint)
    record = next((r for r in payload.get("history", []) if r["epoch"] == payload["epoch"]), {})
    return TeacherResult(Path(checkpoint), payload["config"]["name"], payload["model"]["name"], payload["epoch"],
                         payload["epochs"], record.get("test/acc", math.nan), payload["model"]["num_classes"])


def _ida_details(method: dict[str, Any], config: dict[str, Any]) -> list[str]:
    variants = {"replace": ["KD-i"], "add": ["KD-i add"]}.get(method.get("correction", "none"), [])
    if method.get("order_penalty", 0):
        variants.append("KD-p")
    mixer = ((config.get("data") or {}).get("augment") or {}).get("mix", "mixup")  # the views mix, not the method
    return [" + ".join(variants or ["KD-aug"])] + ([mixer] if mixer != "mixup" else [])


def _hard_details(method: dict[str, Any], config: dict[str, Any]) -> list[str]:
    return [method.get("augmentor", "affine")] + (["random strength"] if method.get("strength") == "random" else [])


# What sets a run of each method apart, read from its method section and the run's config (the
# schema's defaults left out).
_METHOD_DETAILS = {
    "ida": _ida_details,
    "hard": _hard_details,
    "tfkd-reg": lambda method, config: [method.get("mode", "paper")],
    "ls": lambda method, config: [] if method.get("convention", "uniform") == "uniform" else [method["convention"]],
    "wsl": lambda method, config: ["label-free"] if method.get("label_free") else [],
}


def method_label(config: dict[str, Any], teacher_model: str | None = None) -> str:
    """The method of a run's saved config as tables show it: its name, then in parentheses what sets
    the run apart, e.g. ``kd (self)`` (the teacher is the student's architecture), ``ida (KD-i)``,
    ``hard (affine)``, ``tfkd-reg (reference)``, ``kd (teacher epoch_1)``, ``soft-label (weak: partial)``."""
    method = config.get("method") or {}
    details = _METHOD_DETAILS.get(method.get("name"), lambda method, config: [])(method, config)
    if teacher_model is not None and teacher_model == config.get("student"):
        details.insert(0, "self")
    soft_labels = config.get("soft_labels") or {}
    select = soft_labels.get("select", "best")
    if select != "best":
        details.append(f"teacher {select}")
    if soft_labels.get("source") == "weak":
        details.append(f"weak: {soft_labels['kind']}")
    name = method.get("name", "?")
    return f"{name} ({', '.join(details)})" if details else name


@dataclass
class RecipeResult:
    """Every finished seed of one recipe: its run folders, summaries and per-epoch metrics.jsonl records."""

    name: str
    method: str
    student: str
    config: dict[str, Any] = field(default_factory=dict)  # the first finished seed's config.yaml
    teacher: TeacherResult | None = None
    runs: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    selected: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    finals: list[dict[str, float]] = field(default_factory=list)  # per seed: final set -> test accuracy
    histories: list[list[dict]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The method as tables show it (:func:`method_label`)."""
        return method_label(self.config, self.teacher.model if self.teacher else None)

    @property
    def final(self) -> dict[str, list[float]]:
        """Per final (out-of-domain) set, the test accuracy of every seed evaluated on it."""
        found: dict[str, list[float]] = {}
        for per_seed in self.finals:
            for set_name, acc in per_seed.items():
                found.setdefault(set_name, []).append(acc)
        return found

    def series(self, key: str) -> list[tuple[list[int], list[float]]]:
        """Per seed, (epochs, values) of one metrics.jsonl key (e.g. ``test/acc``, ``train/reg_share``)."""
        found = [[(r["epoch"], r[key]) for r in history if key in r] for history in self.histories]
        return [([e for e, _ in pairs], [v for _, v in pairs]) for pairs in found if pairs]

    def stat(self, key: str) -> tuple[float, float]:
        return mean_std(getattr(self, key))


def aggregate_runs(output_dir: str | Path, names: Sequence[str],
                   teachers: Mapping[str, str | Path] | None = None) -> list[RecipeResult]:
    """Read ``output_dir/NAME/seed*/`` (summary.json, metrics.jsonl, config.yaml) for each name.

    Unfinished seeds (no summary.json) are left out.  Order follows ``names``.  ``teachers`` maps a
    name to the teacher checkpoint its runs distilled from; without an entry, an absolute
    ``soft_labels.checkpoint`` of the saved config that exists is read.
    """
    teachers = dict(teachers or {})
    read: dict[Path, TeacherResult] = {}
    results = []
    for name in names:
        seed_dirs = sorted(Path(output_dir, name).glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1)
        result = None
        for run in seed_dirs:
            summary_path = run / "summary.json"
            if not summary_path.is_file():
                continue
            summary = json.loads(summary_path.read_text())
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            config = _read_config(run)
            if result is None:
                result = RecipeResult(name, config.get("method", {}).get("name", "?"), config.get("student", "?"), config)
                saved = (config.get("soft_labels") or {}).get("checkpoint")
                checkpoint = teachers.get(name) or (saved if saved and Path(saved).is_absolute() else None)
                if checkpoint is not None and Path(checkpoint).is_file():
                    path = Path(checkpoint)
                    if path not in read:
                        read[path] = read_teacher(path)
                    result.teacher = read[path]
            result.runs.append(run)
            result.seeds.append(summary["seed"])
            result.last.append(summary["test_acc_last"])
            result.best.append(summary["test_acc_best"])
            result.selected.append(summary["test_acc_selected"])
            result.seconds.append(summary["seconds"])
            result.seconds_per_epoch.append(summary.get("seconds_per_epoch", math.nan))
            result.finals.append(dict(summary.get("final_acc", {})))
            result.histories.append(records)
        results.append(result or RecipeResult(name, "?", "?"))
    return results


def _read_config(run: Path) -> dict:
    path = run / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f} ± n/a"


def _rows(results: Sequence[RecipeResult], baseline: str | None) -> tuple[list[str], list[list[str]]]:
    base = next((r for r in results if r.name == baseline), None)
    header = ["recipe", "method", "student", "seeds", "test acc last (%)", "test acc best (%)",
              "test acc @best val (%)", "gain last", "gain best", "s / run"]
    rows = []
    for r in results:
        last, best, sel, secs = r.stat("last"), r.stat("best"), r.stat("selected"), r.stat("seconds")
        if base is not None and base.last and r.last:
            gain_last = f"{last[0] - base.stat('last')[0]:+.2f}"
            gain_best = f"{best[0] - base.stat('best')[0]:+.2f}"
        else:
            gain_last = gain_best = "n/a"
        if r is base:
            gain_last = gain_best = "(baseline)"
        rows.append([r.name, r.label, r.student, str(len(r.seeds)), _fmt(*last), _fmt(*best), _fmt(*sel),
                     gain_last, gain_best, "n/a" if math.isnan(secs[0]) else f"{secs[0]:.1f}"])
    return header, rows


def format_markdown(results: Sequence[RecipeResult], baseline: str | None = None) -> str:
    """A markdown table: one row per recipe, mean ± std over seeds, gain over the baseline's mean."""
    header, rows = _rows(results, baseline)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_teachers_markdown(results: Sequence[RecipeResult]) -> str:
    """One row per teacher checkpoint that students distilled from: its recipe, model, epoch, test
    accuracy and the recipes that used it; empty when no result has a teacher."""
    users: dict[Path, list[RecipeResult]] = {}
    for r in results:
        if r.teacher is not None:
            users.setdefault(r.teacher.checkpoint, []).append(r)
    if not users:
        return ""
    lines = ["| teacher | model | checkpoint | test acc (%) | students |", "|---|---|---|---|---|"]
    for checkpoint, students in users.items():
        t = students[0].teacher
        acc = "n/a (epoch not evaluated)" if math.isnan(t.test_acc) else f"{t.test_acc:.2f}"
        lines.append(f"| {t.name} | {t.model} | `{checkpoint}` (epoch {t.epoch} of {t.epochs}) | {acc} | "
                     f"{', '.join(r.name for r in students)} |")
    return "\n".join(lines) + "\n"


def final_names(results: Sequence[RecipeResult]) -> list[str]:
    """The final (out-of-domain) evaluation sets of any result, in first-seen order."""
    return list(dict.fromkeys(name for r in results for name in r.final))


def format_final_markdown(results: Sequence[RecipeResult]) -> str:
    """In-domain vs final-set (out-of-domain) test accuracy after the last epoch, and seconds per
    epoch; empty when no run has final sets."""
    names = final_names(results)
    if not names:
        return ""
    header = ["recipe", "in-domain (%)", *(f"{n} (%)" for n in names), "s / epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        cells = [_fmt(*mean_std(r.final[n])) if n in r.final else "n/a" for n in names]
        per_epoch = mean_std(r.seconds_per_epoch)[0]
        lines.append("| " + " | ".join([r.name, _fmt(*r.stat("last")), *cells,
                                         "n/a" if math.isnan(per_epoch) else f"{per_epoch:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def write_csv(results: Sequence[RecipeResult], path: str | Path, baseline: str | None = None) -> None:
    """Numeric CSV: means and stds as separate columns, plus the per-seed values."""
    base = next((r for r in results if r.name == baseline), None)
    finals = final_names(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["recipe", "method", "label", "student", "teacher_test_acc", "seeds", "last_mean", "last_std",
                     "best_mean", "best_std", "selected_mean", "selected_std", "gain_last", "gain_best",
                     "seconds_mean", "last_per_seed", *(f"{n}_{stat}" for n in finals for stat in ("mean", "std"))])
    for r in results:
        last, best, sel, secs = r.stat("last"), r.stat("best"), r.stat("selected"), r.stat("seconds")
        gains = (last[0] - base.stat("last")[0], best[0] - base.stat("best")[0]) if base and base.last else (math.nan, math.nan)
        teacher_acc = r.teacher.test_acc if r.teacher else math.nan
        writer.writerow([r.name, r.method, r.label, r.student, teacher_acc, len(r.seeds), *last, *best, *sel, *gains,
                         secs[0], " ".join(f"{v:.2f}" for v in r.last),
                         *(x for n in finals for x in mean_std(r.final.get(n, [])))])
    write_text_atomic(path, buffer.getvalue())
