"""Experiments made of many runs: ``compare`` (recipes x seeds -> one table) and the quickstart."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from softdistill.atomic import write_text_atomic
from softdistill.config import Recipe, load_recipe
from softdistill.report import (aggregate_runs, format_final_markdown, format_markdown, plot_curves, plot_diagnostics,
                                write_csv)
from softdistill.report.tables import RecipeResult
from softdistill.runner import resolve_dependencies, run_recipe
from softdistill.runs import check_same_recipe, run_dir_state

__all__ = ["CompareResult", "compare", "write_report", "packaged_recipes", "quickstart"]


@dataclass
class CompareResult:
    results: list[RecipeResult]
    baseline: str | None
    report_dir: Path
    markdown: str
    seconds: float


def _resolve(paths: Sequence[str | Path], seed: int, output_dir: Path, overrides: Sequence[str], epochs: int | None) -> list[Recipe]:
    extra = [f"seed={seed}", f"output_dir={output_dir}"] + ([f"epochs={epochs}"] if epochs else [])
    return [load_recipe(p, list(overrides) + extra) for p in paths]


def compare(recipe_paths: Sequence[str | Path], *, seeds: int | Sequence[int] = 3, epochs: int | None = None,
            overrides: Sequence[str] = (), output_dir: str | Path = "runs/compare", baseline: str | None = None,
            quiet: bool = False, title: str = "softdistill compare", report_dir: str | Path | None = None) -> CompareResult:
    """Run every recipe for every seed into ``output_dir/NAME/seedS``, then write the report.

    Finished runs are skipped and interrupted ones resumed, so an interrupted compare can simply be
    started again.  The baseline defaults to the first recipe whose method is ``ce``.  The report
    goes to ``report_dir`` (default ``output_dir/report``).
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError(f"a comparison needs at least one seed (seeds = N runs seeds 0..N-1), got {seeds!r}")
    recipes_by_seed = {s: _resolve(recipe_paths, s, output_dir, overrides, epochs) for s in seed_list}
    names = [r.name for r in recipes_by_seed[seed_list[0]]]
    if len(set(names)) != len(names):
        raise ValueError(f"recipe names must be unique in a comparison, got {names}")
    if baseline is None:
        baseline = next((r.name for r in recipes_by_seed[seed_list[0]] if r.method.name == "ce"), names[0])
    elif baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the recipes {names}")
    for recipe in recipes_by_seed[seed_list[0]]:  # teachers (and VAEs) first, with their own progress output
        resolve_dependencies(recipe, quiet=quiet)
    jobs = [recipe for seed in seed_list for recipe in recipes_by_seed[seed]]
    bar = tqdm(jobs, desc="compare", unit="run", disable=quiet, dynamic_ncols=True)
    for recipe in bar:
        state = run_dir_state(recipe.run_dir)
        check_same_recipe(recipe)
        label = f"{recipe.name} seed {recipe.seed}"
        if state == "finished":
            if not quiet:
                bar.write(f"{label}: finished earlier, skipped")
            continue
        bar.set_postfix_str(label + (" (resuming)" if state == "partial" else ""))
        summary = run_recipe(recipe, resume=(state == "partial"), quiet=True)
        if not quiet:
            bar.write(f"{label}: test accuracy {summary['test_acc_last']:.2f}% last, {summary['test_acc_best']:.2f}% "
                      f"best, {summary['test_acc_selected']:.2f}% at best {summary['selection']} "
                      f"({summary['seconds']:.1f}s)")
    return write_report(output_dir, names, baseline, title=title, seconds=time.perf_counter() - start,
                        report_dir=report_dir)


def write_report(output_dir: str | Path, names: Sequence[str], baseline: str | None, *, title: str,
                 seconds: float = float("nan"), report_dir: str | Path | None = None) -> CompareResult:
    """Aggregate the run folders and write {table.md, table.csv, curves.png, results.json} to
    ``report_dir`` (default ``output_dir/report``)."""
    output_dir = Path(output_dir)
    results = aggregate_runs(output_dir, names)
    report_dir = Path(report_dir) if report_dir is not None else output_dir / "report"
    table = format_markdown(results, baseline)
    final = format_final_markdown(results)
    if final:
        table += ("\nOut-of-domain test sets, evaluated after the last epoch (test accuracy %, mean ± sample std; "
                  "see docs/data.md):\n\n" + final)
    seeds = sorted({s for r in results for s in r.seeds})
    markdown = (f"# {title}\n\nTest accuracy over seeds {seeds} (mean ± sample std). *last*: after the final epoch; "
                "*best*: best epoch (optimistic); *@best val*: at the epoch with the best validation accuracy. "
                f"Gains are differences of means against `{baseline}`.\n\n{table}\n![test accuracy](curves.png)\n")
    write_csv(results, report_dir / "table.csv", baseline)
    plot_curves(results, report_dir / "curves.png", title=title)
    if plot_diagnostics(results, report_dir / "diagnostics.png", title=f"{title}: soft-label diagnostics"):
        markdown += ("\n![diagnostics](diagnostics.png)\n\n*reg_share*: share of training samples per epoch on which "
                     "the teacher's cross-entropy on the true label exceeds the student's (WSL's regularization "
                     "samples); *w*: WSL weight 1 - exp(-CE_s/CE_t), batch means averaged over the epoch; HARD panels: the "
                     "augmentor's objective term T^2 KL(p_t || p_s) on its inputs x~ (before its step) and the "
                     "teacher's accuracy on x~ (low = the augmentations no longer show the true class).\n")
    write_text_atomic(report_dir / "table.md", markdown)
    write_text_atomic(report_dir / "results.json", json.dumps(
        [{"name": r.name, "method": r.method, "student": r.student, "seeds": r.seeds, "last": r.last, "best": r.best,
          "selected": r.selected, "seconds": r.seconds} for r in results], indent=2))
    return CompareResult(results, baseline, report_dir, table, seconds)


def packaged_recipes(group: str) -> Path:
    """Folder of a recipe group shipped with the package (``quickstart``, ``tiny``, ...)."""
    return Path(str(resources.files("softdistill") / "recipes" / group))


QUICKSTART_ORDER = ("baseline", "ls", "kd", "tfkd-self", "tfkd-reg", "tfkd-reg-reference", "wsl", "ida-mixup-kdi",
                    "ida-mixup-kdp", "hard-affine")


def quickstart(*, tiny: bool = False, seeds: int = 3, output_dir: str | Path | None = None,
               overrides: Sequence[str] = (), quiet: bool = False) -> CompareResult:
    """Teacher once, then every quickstart recipe over ``seeds`` seeds, then the report.

    Fashion-MNIST by default; ``tiny`` runs the digits version in well under a minute.
    """
    group = "tiny" if tiny else "quickstart"
    folder = packaged_recipes(group)
    paths = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("teacher"))
    rank = {name: i for i, name in enumerate(QUICKSTART_ORDER)}
    paths.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    output_dir = Path(output_dir or f"runs/{group}")
    title = "softdistill quickstart" + (" (tiny: digits)" if tiny else " (Fashion-MNIST)")
    # Evaluating 15,000 validation and test images costs an MLP more than training on 3,000:
    # every second epoch is enough for the curves.
    overrides = ["train.eval_every=2", *overrides]
    return compare(paths, seeds=seeds, overrides=overrides, output_dir=output_dir, quiet=quiet, title=title)
