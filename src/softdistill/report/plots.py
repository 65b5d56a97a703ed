"""PNG plots of training curves (matplotlib, headless).

Every curve is the mean over seeds of one metrics.jsonl key per epoch, drawn with a band of
mean ± one sample standard deviation (when two or more seeds finished).  A recipe keeps its style
across panels (a colour, a dash pattern and a marker, so that ten recipes stay apart, in grey
too), and a recipe that trains fewer epochs than the longest one ends in a dot and says so in the
legend.  Shares and accuracies are in %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from softdistill.atomic import save_figure_atomic
from softdistill.report.tables import RecipeResult

__all__ = ["plot_curves", "plot_diagnostics", "DIAGNOSTIC_KEYS", "BAND_NOTE"]

# metrics.jsonl key -> (axis label, factor from the logged value to the plotted one)
DIAGNOSTIC_KEYS = {
    "train/reg_share": ("regularization samples (% of training samples)", 100.0),
    "train/w_mean": ("mean WSL weight w (0 to 1)", 1.0),
    "train/teacher_concordance": ("IDA: teacher's order concordance\non mixed views (-1 to 1; 1 = the λ order)", 1.0),
    "train/teacher_top2": ("IDA: mixed views with a label of the\nmix in the teacher's top-2 (%)", 100.0),
    "train/adv_divergence": (r"HARD: $T^2$ KL($p_t \,\|\, p_s$) on $\tilde{x}$ (nats)", 1.0),
    "train/aug_teacher_acc": (r"HARD: teacher accuracy on $\tilde{x}$ (%)", 100.0),
}
BAND_NOTE = "Line: mean over seeds; band: mean ± 1 sample std over seeds; dot: where a run with fewer epochs ends"
HARD_HEALTH = ("$\\tilde{{x}}$ start as clean training images (the augmentor starts as the identity).\n"
               "Healthy: the teacher keeps most of them (near its clean accuracy, dashed);\n"
               "towards chance ({chance:.0f} %) they lose their class: raise method.teacher_ce_weight")
# one style per recipe, in order: ten colours, each with its own marker, and four dash patterns
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#B8A200", "#8C564B", "#7F7F7F")
DASHES = ("-", (0, (5, 2)), (0, (1, 1.2)), (0, (6, 2, 1, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _epochs(result: RecipeResult) -> int:
    return int(result.config.get("epochs") or max((r["epoch"] for h in result.histories for r in h), default=0))


def _style(index: int) -> dict[str, Any]:
    """The line style of the ``index``-th recipe of a figure."""
    return {"color": COLORS[index % len(COLORS)], "linestyle": DASHES[index % len(DASHES)],
            "marker": MARKERS[index % len(MARKERS)], "markersize": 4, "linewidth": 1.5}


class _Curves:
    """The recipes of one figure: a style each, and which of them train fewer epochs than the longest."""

    def __init__(self, results: Sequence[RecipeResult]) -> None:
        self.results = [r for r in results if r.histories]
        self.styles = {r.name: _style(i) for i, r in enumerate(self.results)}
        self.most_epochs = max((_epochs(r) for r in self.results), default=0)
        self.drawn: dict[str, str] = {}  # name -> legend label, in drawing order

    def draw(self, ax, key: str, scale: float = 1.0) -> None:
        """Per recipe that logged ``key``: the mean over seeds per epoch with a mean ± std band."""
        for r in self.results:
            series = r.series(key)
            if not series:
                continue
            length = min(len(values) for _, values in series)
            values = scale * np.array([v[:length] for _, v in series])
            epochs = np.array(series[0][0][:length])
            mean = values.mean(axis=0)
            style = self.styles[r.name]
            ax.plot(epochs, mean, markevery=max(1, len(epochs) // 6), **style)
            if len(values) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)
            short = _epochs(r) < self.most_epochs
            if short:
                ax.plot(epochs[-1:], mean[-1:], "o", color=style["color"], markersize=6)
            self.drawn.setdefault(r.name, f"{r.name} (n={len(series)}"
                                  + (f", {_epochs(r)} of {self.most_epochs} epochs)" if short else ")"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    def legend(self, fig) -> None:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], **self.styles[name]) for name in self.drawn]
        fig.legend(handles, list(self.drawn.values()), loc="outside lower center", fontsize=8, frameon=False,
                   ncols=min(3, max(1, len(handles))))


def _teachers_clean_accuracy(ax, curves: _Curves, results: Sequence[RecipeResult]) -> None:
    """On HARD's panel of the teacher's accuracy on x~: each HARD recipe's teacher on clean test
    images, dashed in the recipe's colour, and what a healthy curve looks like."""
    teachers = [(r, r.teacher) for r in results if r.series("train/aug_teacher_acc") and r.teacher is not None]
    for r, teacher in teachers:
        if not math.isnan(teacher.test_acc):
            ax.axhline(teacher.test_acc, color=curves.styles[r.name]["color"], linestyle="--", linewidth=1.0)
            ax.annotate(f"teacher, clean test images: {teacher.test_acc:.1f} %", (0.02, teacher.test_acc),
                        xycoords=("axes fraction", "data"), xytext=(0, 3), textcoords="offset points", fontsize=8)
            low, high = ax.get_ylim()
            ax.set_ylim(low, max(high, teacher.test_acc + 2.0))
    if teachers:
        ax.set_title(HARD_HEALTH.format(chance=100 / teachers[0][1].num_classes), fontsize=7.5)


def plot_curves(results: Sequence[RecipeResult], path: str | Path, title: str = "Test accuracy") -> None:
    """Test accuracy (%) per epoch: every epoch on the left, the final accuracies zoomed on the right."""
    plt = _pyplot()
    curves = _Curves(results)
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(11.0, 4.6), dpi=100, layout="constrained")
    for ax in (whole, zoom):
        curves.draw(ax, "test/acc")
        ax.set_ylabel("test accuracy (%)")
    whole.set_title("every epoch")
    zoom.set_title("zoom: the second half of each run")
    halves = [(line.get_xdata()[len(line.get_xdata()) // 2:], line.get_ydata()[len(line.get_ydata()) // 2:])
              for line in zoom.lines]
    if halves:
        tails = np.concatenate([y for _, y in halves])
        zoom.set_xlim(left=min(x[0] for x, _ in halves) - 0.5)
        zoom.set_ylim(max(0.0, tails.min() - 1.0), min(100.0, tails.max() + 0.5))
    fig.suptitle(f"{title}\n{BAND_NOTE}", fontsize=10)
    curves.legend(fig)
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_diagnostics(results: Sequence[RecipeResult], path: str | Path, title: str = "Soft-label diagnostics") -> bool:
    """The per-epoch diagnostics that distillation methods log (see DIAGNOSTIC_KEYS), one panel each
    in a grid of two columns; returns False (and writes nothing) when no recipe logged any."""
    keys = [k for k in DIAGNOSTIC_KEYS if any(r.series(k) for r in results)]
    if not keys:
        return False
    plt = _pyplot()
    curves = _Curves(results)
    columns = min(2, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.4 * rows + 1.0), dpi=100, squeeze=False,
                             layout="constrained")
    for ax, key in zip(axes.flat, keys):
        label, scale = DIAGNOSTIC_KEYS[key]
        curves.draw(ax, key, scale)
        ax.set_ylabel(label)
        if key == "train/aug_teacher_acc":
            _teachers_clean_accuracy(ax, curves, results)
        if scale == 100.0:  # a share in %: no axis beyond 0 and 100
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, -1.0), min(high, 101.0))
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}\n{BAND_NOTE}", fontsize=10)
    curves.legend(fig)
    save_figure_atomic(fig, path)
    plt.close(fig)
    return True
