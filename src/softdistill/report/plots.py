"""PNG plots of training curves (matplotlib, headless).

Every curve is the mean over seeds of one metrics.jsonl key per epoch, drawn with a band of
mean ± one sample standard deviation (when two or more seeds finished).  A recipe keeps its colour
across panels, and a recipe that trains fewer epochs than the longest one ends in a dot and says
so in the legend.  Shares and accuracies are in %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softdistill.atomic import save_figure_atomic
from softdistill.report.tables import RecipeResult

__all__ = ["plot_curves", "plot_diagnostics", "DIAGNOSTIC_KEYS", "BAND_NOTE"]

# metrics.jsonl key -> (axis label, factor from the logged value to the plotted one)
DIAGNOSTIC_KEYS = {
    "train/reg_share": ("regularization samples (% of training samples)", 100.0),
    "train/w_mean": ("mean WSL weight w (0 to 1)", 1.0),
    "train/adv_divergence": (r"HARD: $T^2$ KL($p_t \,\|\, p_s$) on $\tilde{x}$ (nats)", 1.0),
    "train/aug_teacher_acc": (r"HARD: teacher accuracy on $\tilde{x}$ (%)", 100.0),
}
BAND_NOTE = "Line: mean over seeds; band: mean ± 1 sample std over seeds; dot: where a run with fewer epochs ends"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _epochs(result: RecipeResult) -> int:
    return int(result.config.get("epochs") or max((r["epoch"] for h in result.histories for r in h), default=0))


class _Curves:
    """The recipes of one figure: a colour each, and which of them train fewer epochs than the longest."""

    def __init__(self, results: Sequence[RecipeResult]) -> None:
        self.results = [r for r in results if r.histories]
        self.colors = {r.name: f"C{i % 10}" for i, r in enumerate(self.results)}
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
            color = self.colors[r.name]
            ax.plot(epochs, mean, color=color, linewidth=1.6)
            if len(values) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
            short = _epochs(r) < self.most_epochs
            if short:
                ax.plot(epochs[-1:], mean[-1:], "o", color=color, markersize=5)
            self.drawn.setdefault(r.name, f"{r.name} (n={len(series)}"
                                  + (f", {_epochs(r)} of {self.most_epochs} epochs)" if short else ")"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    def legend(self, fig) -> None:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=self.colors[name], linewidth=1.6) for name in self.drawn]
        fig.legend(handles, list(self.drawn.values()), loc="outside lower center", fontsize=8, frameon=False,
                   ncols=min(3, max(1, len(handles))))


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
