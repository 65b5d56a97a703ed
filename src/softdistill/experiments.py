"""Experiments made of many runs: ``compare`` (recipes x seeds -> one table) and the quickstart.

Runs are independent, so ``jobs`` of them may run side by side, each in its own process with its
share of the CPU cores as threads (``cores // jobs``).  A run computes the same in parallel as
alone under the same thread count: each process seeds and threads itself.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from softdistill.artifacts import pending_dependencies
from softdistill.atomic import write_bytes_atomic, write_text_atomic
from softdistill.config import Recipe, load_recipe
from softdistill.data.config import DataConfig
from softdistill.data.prepare import prepare_data
from softdistill.data.samples import TensorSet
from softdistill.data.shifts import ood_set, parse_ood_spec
from softdistill.runtime.progress import ProgressBar, progress_bar, use_thread_lock
from softdistill.evaluation import evaluate_on_sets
from softdistill.report import (aggregate_runs, format_final_markdown, format_markdown, plot_curves, plot_diagnostics,
                                write_csv)
from softdistill.report.plots import BAND_NOTE
from softdistill.report.tables import RecipeResult, TeacherResult, format_teachers_markdown
from softdistill.runner import resolve_dependencies, run_recipe
from softdistill.runs import RunInterrupted, check_outside_package, check_same_recipe, run_dir_state
from softdistill.store import Store

__all__ = ["CompareResult", "compare", "write_report", "packaged_recipes", "quickstart", "usable_cores",
           "threads_per_job"]


@dataclass
class CompareResult:
    results: list[RecipeResult]
    baseline: str | None
    report_dir: Path
    markdown: str
    seconds: float
    files: list[str]  # the report's files, in report_dir


def _resolve(paths: Sequence[str | Path], seed: int, output_dir: Path, overrides: Sequence[str], epochs: int | None) -> list[Recipe]:
    if epochs is not None and any(text.partition("=")[0].strip() == "epochs" for text in overrides):
        raise ValueError("--epochs and -o epochs=... both set the epochs: give one")
    extra = [f"seed={seed}", f"output_dir={output_dir}"] + ([f"epochs={epochs}"] if epochs is not None else [])
    return [load_recipe(p, list(overrides) + extra, kind="train") for p in paths]


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Each of ``jobs`` parallel runs' share of the usable cores; ValueError when there are more jobs than cores."""
    cores = usable_cores()
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if jobs > cores:
        raise ValueError(f"--jobs {jobs} is more than the {cores} CPU core(s) this process may use: the runs would "
                         f"compete for cores and each would wait on the others; use --jobs {cores} or fewer")
    return cores // jobs


def _run_job(raw: dict[str, Any], recipe_file: str | None, resume: bool) -> dict[str, Any]:
    """One run of a parallel compare, in its own process (the recipe travels as plain data)."""
    return run_recipe(Recipe.from_dict(raw, recipe_file), resume=resume, quiet=True)


def _start_parallel_run_process() -> None:
    """A parallel run's process ignores Ctrl-C (the compare that started it stops it, with one message),
    and its bars lock nothing that outlives it (it may be terminated)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_thread_lock()


def _train_dependencies_job(raws: list[tuple[dict[str, Any], str | None]], rows: frozenset[Path]) -> None:
    """Train (or finish) every unfinished teacher, store and VAE that the given recipes name, in
    their order, in one parallel-run process; each inherits the asking recipe's thread count."""
    for raw, recipe_file in raws:
        resolve_dependencies(Recipe.from_dict(raw, recipe_file), quiet=True, trained_here=rows)


def _result_line(recipe: Recipe, how: str = "", summary: Mapping[str, Any] | None = None) -> str:
    """One line on a finished run: how it came to be finished, when not trained just now, and its accuracy
    (``summary``: read from its run folder when not given)."""
    if summary is None:
        summary = json.loads((recipe.run_dir / "summary.json").read_text())
    how = f"{how}, " if how else ""
    return (f"{recipe.name} seed {recipe.seed}: {how}test accuracy {summary['test_acc_last']:.2f}% "
            f"last, {summary['test_acc_best']:.2f}% best, {summary['test_acc_selected']:.2f}% at best "
            f"{summary['selection']} ({summary['seconds']:.1f}s)")


def _run_all(runs: list[tuple[Recipe, bool]], jobs: int, bar: ProgressBar, quiet: bool,
             rows: frozenset[Path]) -> None:
    """Run ``(recipe, resume)`` pairs, ``jobs`` at a time, reporting each as it finishes (``rows``: the
    run folders of the whole comparison).

    In parallel, the unfinished dependencies of the runs (teachers, stores, VAEs) are trained by one
    of the ``jobs`` processes while the others run the recipes that need none; the runs that wait on
    a dependency start when it is done.  A run that is itself a dependency is trained as one.
    """
    def finished(recipe: Recipe, summary: dict[str, Any] | None = None, how: str = "") -> None:
        bar.update(1)
        if not quiet:
            bar.write(_result_line(recipe, how, summary))

    if jobs == 1:
        for recipe, resume in runs:
            bar.set_postfix_str(f"{recipe.name} seed {recipe.seed}" + (" (resuming)" if resume else ""))
            finished(recipe, run_recipe(recipe, resume=resume, quiet=True))
        return
    threads = threads_per_job(jobs)

    def job(recipe: Recipe) -> dict[str, Any]:
        raw = recipe.to_dict()
        raw["train"]["threads"] = threads
        return raw

    waits = {id(recipe): pending_dependencies(recipe, rows) for recipe, _ in runs}
    dependency_dirs = {folder for folders in waits.values() for folder in folders}
    as_dependency = [recipe for recipe, _ in runs if recipe.run_dir.resolve() in dependency_dirs]
    runs = [(recipe, resume) for recipe, resume in runs if recipe.run_dir.resolve() not in dependency_dirs]
    ready = [(recipe, resume) for recipe, resume in runs if not waits[id(recipe)]]
    waiting = [(recipe, resume) for recipe, resume in runs if waits[id(recipe)]]
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_parallel_run_process)
    try:
        futures: dict[Future, Recipe | None] = {}
        if dependency_dirs:
            askers = list({recipe.name: recipe for recipe, _ in waiting}.values()) or as_dependency
            futures[pool.submit(_train_dependencies_job, [(job(r), r.recipe_file) for r in askers], rows)] = None
            if not quiet:
                bar.write(f"[softdistill] training {', '.join(sorted(folder.parent.name for folder in dependency_dirs))}"
                          f" (needed by {len(waiting)} runs) alongside the {len(ready)} runs that need none")
        for recipe, resume in ready:
            futures[pool.submit(_run_job, job(recipe), recipe.recipe_file, resume)] = recipe
        bar.set_postfix_str(f"{jobs} runs at a time, {threads} thread(s) each")
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                recipe = futures.pop(future)
                if recipe is not None:
                    finished(recipe, future.result())
                    continue
                future.result()  # the dependencies are trained: their errors end the comparison here
                for run in as_dependency:
                    finished(run, how="trained above as a dependency of the other runs")
                for waiter, resume in waiting:
                    futures[pool.submit(_run_job, job(waiter), waiter.recipe_file, resume)] = waiter
    except KeyboardInterrupt:
        # stop the runs at once (each keeps its last checkpoint); Python 3.14 names this terminate_workers()
        for process in list(pool._processes.values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _teachers_of(recipes: Sequence[Recipe], quiet: bool, rows: frozenset[Path]
                 ) -> tuple[dict[str, Path], dict[Path, list[str]]]:
    """Make (or find) the dependencies of ``recipes``; (recipe name -> the teacher checkpoint its soft
    labels come from, directly or through a store, when they come from one; a teacher's run folder -> the
    recipes it teaches)."""
    teachers: dict[str, Path] = {}
    taught: dict[Path, list[str]] = {}
    for recipe in recipes:
        checkpoints = []
        for dependency, path in resolve_dependencies(recipe, quiet=quiet, trained_here=rows).items():
            if dependency.kind == "model" and dependency.field.startswith("soft_labels."):
                checkpoints.append(path)
                taught.setdefault(path.parent.resolve(), []).append(recipe.name)
            elif dependency.kind == "store" and (checkpoint := Store(path).teacher_checkpoint) is not None:
                checkpoints.append(checkpoint)
        if len({path.resolve() for path in checkpoints}) == 1:  # an ensemble of several teachers has none to show
            teachers[recipe.name] = checkpoints[0]
    return teachers, taught


def _how_finished(recipe: Recipe, earlier: set[Path], taught: Mapping[Path, list[str]]) -> str:
    """Why a run that ``compare`` does not train is finished: an earlier call, or this one as a teacher."""
    folder = recipe.run_dir.resolve()
    if folder in earlier:
        return "finished earlier, reused"
    return f"trained above as the teacher of {', '.join(taught.get(folder, ['another recipe']))}"


def _interrupted_comparison(every_run: Sequence[Recipe], exc: KeyboardInterrupt) -> RunInterrupted:
    """What an interrupted compare keeps: its finished runs, and the last.pt of each unfinished one."""
    finished = sum(run_dir_state(recipe.run_dir) == "finished" for recipe in every_run)
    kept = (f"{finished} of {len(every_run)} runs are finished and kept, the others continue from their last.pt "
            "when there is one")
    return RunInterrupted(kept + (f"; {exc.kept}" if isinstance(exc, RunInterrupted) else ""), resume=False)


def compare(recipe_paths: Sequence[str | Path], *, seeds: int | Sequence[int] = 3, epochs: int | None = None,
            overrides: Sequence[str] = (), output_dir: str | Path = "runs/compare", baseline: str | None = None,
            quiet: bool = False, title: str = "softdistill compare", report_dir: str | Path | None = None,
            jobs: int = 1) -> CompareResult:
    """Run every recipe for every seed into ``output_dir/NAME/seedS``, then write the report.

    Finished runs are skipped and interrupted ones resumed, so an interrupted compare can simply be
    started again.  The baseline defaults to the first recipe whose method is ``ce``.  The report
    goes to ``report_dir`` (default ``output_dir/report``).  ``jobs`` runs at a time, each in its
    own process with ``usable_cores() // jobs`` threads (1: one after the other, in this process).
    """
    threads_per_job(jobs)  # more jobs than cores: refused before anything runs
    start = time.perf_counter()
    output_dir = Path(output_dir)
    check_outside_package(output_dir, "the output folder")
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
    every_run = [recipe for seed in seed_list for recipe in recipes_by_seed[seed]]
    earlier = {recipe.run_dir.resolve() for recipe in every_run if run_dir_state(recipe.run_dir) == "finished"}
    rows = frozenset(recipe.run_dir.resolve() for recipe in every_run)  # trained here: not looked for elsewhere
    teachers: dict[str, Path] = {}  # recipe name -> the teacher checkpoint its soft labels come from
    taught: dict[Path, list[str]] = {}  # a teacher's run folder -> the recipes it teaches
    try:
        if jobs == 1:  # teachers, stores and VAEs first, with their own progress output
            teachers, taught = _teachers_of(recipes_by_seed[seed_list[0]], quiet, rows)
        runs = []
        bar = progress_bar(len(every_run), "compare", quiet=quiet, unit="run")
        try:
            for recipe in every_run:
                state = run_dir_state(recipe.run_dir)
                check_same_recipe(recipe)
                if state == "finished":
                    bar.update(1)
                    if not quiet:
                        bar.write(_result_line(recipe, _how_finished(recipe, earlier, taught)))
                    continue
                runs.append((recipe, state == "partial"))
            _run_all(runs, jobs, bar, quiet, rows)
        finally:
            bar.close()
        if jobs > 1:  # the parallel runs trained them: this only finds them
            teachers, taught = _teachers_of(recipes_by_seed[seed_list[0]], quiet, rows)
    except KeyboardInterrupt as exc:
        raise _interrupted_comparison(every_run, exc) from None
    return write_report(output_dir, names, baseline, title=title, seconds=time.perf_counter() - start,
                        report_dir=report_dir, teachers=teachers)


def _evaluate_missing_final_sets(results: Sequence[RecipeResult]) -> list[str]:
    """Evaluate each run on the final (out-of-domain) sets that other recipes of the report name in
    ``data.ood`` and its own recipe does not, as training evaluates them: the model after the last
    epoch (last.pt), the shifted copy of its test split drawn with its ``data.split_seed``, under its
    ``train.amp``.  Fills ``finals`` in place; returns the names of the recipes evaluated here."""
    specs = {parse_ood_spec(text).name: text for r in results for text in (r.config.get("data") or {}).get("ood", [])}
    test_sets: dict[str, TensorSet] = {}
    shifted: dict[tuple[str, str], TensorSet] = {}
    evaluated = []
    for r in results:
        data = r.config.get("data") or {}
        key = json.dumps(data, sort_keys=True)
        for run, finals in zip(r.runs, r.finals):
            missing = [n for n in specs if n not in finals]
            if not missing or not data or not (run / "last.pt").is_file():
                continue
            if key not in test_sets:
                test_sets[key] = prepare_data(DataConfig.saved(data)).test
            for name in missing:
                if (key, name) not in shifted:
                    shifted[key, name] = ood_set(test_sets[key], specs[name], data.get("split_seed", 0))
            scores = evaluate_on_sets(run / "last.pt", {n: shifted[key, n] for n in missing},
                                      amp=(r.config.get("train") or {}).get("amp", "off"))
            finals.update({n: score["acc"] for n, score in scores.items()})
            evaluated.append(r.name)
    return list(dict.fromkeys(evaluated))


def _copy_method_figures(results: Sequence[RecipeResult], report_dir: Path) -> list[tuple[str, str]]:
    """Copy the figures that methods draw into a run's ``report/`` folder (HARD: hard-augmentations.png)
    from each recipe's first seed to ``report_dir/RECIPE-FIGURE``; returns (recipe, file name) pairs."""
    copied = []
    for r in results:
        if not r.runs:
            continue
        for figure in sorted((r.runs[0] / "report").glob("*.png")):
            target = f"{r.name}-{figure.name}"
            write_bytes_atomic(report_dir / target, figure.read_bytes())
            copied.append((r.name, target))
    return copied


def _final_caption(evaluated_here: Sequence[str]) -> str:
    where = ("during training for the recipes that name a set in `data.ood`, and when this report was written "
             f"for the others ({', '.join(evaluated_here)}: their last.pt on the same shifted test images)"
             if evaluated_here else "during training")
    return (f"Out-of-domain test sets: test accuracy (%) of the model after the last epoch, mean ± sample std, "
            f"evaluated {where}; n/a: a run without last.pt. The sets are described in docs/data.md.")


DIAGNOSTICS_CAPTION = (
    "*regularization samples*: share of training samples per epoch on which the teacher's cross-entropy on the "
    "true label exceeds the student's (WSL's regularization samples); *w*: WSL weight 1 - exp(-CE_s/CE_t), batch "
    "means averaged over the epoch; IDA panels: how the teacher orders the classes of the mixed views it labels "
    "(order concordance: 1 when the class with the larger lambda comes first and both come before every other "
    "class; top-2: views with a class of the mix among the teacher's two largest logits), a property of the soft "
    "labels, so IDA rows that share a store draw the same curve; HARD panels: the augmentor's objective term "
    "T^2 KL(p_t || p_s) on its inputs x~ (before its step) and the teacher's accuracy on x~, which starts at its "
    "accuracy on clean training images (the augmentor starts as the identity) and should stay near its clean "
    "accuracy (the dashed line, on test images): towards chance the augmentations no longer show the true class "
    "(raise method.teacher_ce_weight or lower the augmentor's bounds). Shares and accuracies in %. "
    f"{BAND_NOTE}.")


def _teacher_json(teacher: TeacherResult | None) -> dict | None:
    if teacher is None:
        return None
    return {**asdict(teacher), "checkpoint": str(teacher.checkpoint),
            "test_acc": None if math.isnan(teacher.test_acc) else teacher.test_acc}


def write_report(output_dir: str | Path, names: Sequence[str], baseline: str | None, *, title: str,
                 seconds: float = float("nan"), report_dir: str | Path | None = None,
                 teachers: Mapping[str, str | Path] | None = None) -> CompareResult:
    """Aggregate the run folders and write {table.md, table.csv, curves.png, diagnostics.png, results.json}
    and the methods' figures of each recipe's first seed to ``report_dir`` (default ``output_dir/report``).

    ``teachers`` maps a recipe name to the teacher checkpoint its runs distilled from (what
    :func:`compare` resolved); the report lists each with its test accuracy.  Runs whose recipe names
    no out-of-domain set that another recipe names are evaluated on it here, so that the
    out-of-domain table compares every row on the same sets.
    """
    output_dir = Path(output_dir)
    results = aggregate_runs(output_dir, names, teachers)
    report_dir = Path(report_dir) if report_dir is not None else output_dir / "report"
    evaluated_here = _evaluate_missing_final_sets(results)
    table = format_markdown(results, baseline)
    final = format_final_markdown(results)
    if final:
        table += f"\n{_final_caption(evaluated_here)}\n\n{final}"
    teacher_table = format_teachers_markdown(results)
    if teacher_table:
        table += ("\nTeachers: the checkpoint each student recipe distilled from, with its test accuracy at that "
                  f"epoch:\n\n{teacher_table}")
    seeds = sorted({s for r in results for s in r.seeds})
    markdown = (f"# {title}\n\nTest accuracy over seeds {seeds} (mean ± sample std). *last*: after the final epoch; "
                "*best*: best epoch (optimistic); *@best val*: at the epoch with the best validation accuracy. "
                f"Gains are differences of means against `{baseline}`.\n\n{table}\n![test accuracy](curves.png)\n\n"
                f"Test accuracy per epoch, every epoch (left) and zoomed on the second half of each run (right). "
                f"{BAND_NOTE}.\n")
    write_csv(results, report_dir / "table.csv", baseline)
    plot_curves(results, report_dir / "curves.png", title=title)
    files = ["table.md", "table.csv", "results.json", "curves.png"]
    if plot_diagnostics(results, report_dir / "diagnostics.png", title=f"{title}: soft-label diagnostics"):
        markdown += f"\n![diagnostics](diagnostics.png)\n\n{DIAGNOSTICS_CAPTION}\n"
        files.append("diagnostics.png")
    figures = _copy_method_figures(results, report_dir)
    files += [file for _, file in figures]
    if figures:
        markdown += "\n## Figures the methods drew (first seed)\n"
        markdown += "".join(f"\n{name}:\n\n![{name}]({file})\n" for name, file in figures)
    write_text_atomic(report_dir / "table.md", markdown)
    write_text_atomic(report_dir / "results.json", json.dumps(
        [{"name": r.name, "method": r.method, "label": r.label, "student": r.student, "seeds": r.seeds,
          "last": r.last, "best": r.best, "selected": r.selected, "seconds": r.seconds, "final": r.final,
          "teacher": _teacher_json(r.teacher)} for r in results], indent=2))
    return CompareResult(results, baseline, report_dir, table, seconds, files)


def packaged_recipes(group: str) -> Path:
    """Folder of a recipe group shipped with the package (``quickstart``, ``tiny``, ...)."""
    return Path(str(resources.files("softdistill") / "recipes" / group))


# files of a quickstart folder that its rows depend on, not rows themselves: the teacher recipes
# and the label recipes of stores (each made once, when the first row needs it)
QUICKSTART_DEPENDENCIES = ("teacher", "store")
QUICKSTART_ORDER = ("baseline", "ls", "kd", "tfkd-self", "tfkd-reg", "tfkd-reg-reference", "wsl", "ida-mixup-kdi",
                    "ida-mixup-kdp", "hard-affine")


def quickstart(*, tiny: bool = False, seeds: int = 3, output_dir: str | Path | None = None,
               overrides: Sequence[str] = (), quiet: bool = False, jobs: int | None = None) -> CompareResult:
    """Teacher (and stores) once, then every quickstart recipe over ``seeds`` seeds, then the report.

    Fashion-MNIST by default; ``tiny`` runs the digits version (4 small recipes).  The
    students are small models, which gain little from several threads and stall when a busy
    machine cannot give them all at once: by default one run per core, one thread each
    (``jobs``: runs at a time).
    """
    group = "tiny" if tiny else "quickstart"
    folder = packaged_recipes(group)
    paths = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith(QUICKSTART_DEPENDENCIES))
    rank = {name: i for i, name in enumerate(QUICKSTART_ORDER)}
    paths.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    output_dir = Path(output_dir or f"runs/{group}")
    title = "softdistill quickstart" + (" (tiny: digits)" if tiny else " (Fashion-MNIST)")
    # Evaluating 15,000 validation and test images costs an MLP more than training on 3,000:
    # every second epoch is enough for the curves.
    overrides = ["train.eval_every=2", *overrides]
    return compare(paths, seeds=seeds, overrides=overrides, output_dir=output_dir, quiet=quiet, title=title,
                   jobs=usable_cores() if jobs is None else jobs)
