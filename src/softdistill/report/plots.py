"""PNG plots of training curves (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softdistill.atomic import save_figure_atomic
from softdistill.report.tables import RecipeResult

__all__ = ["plot_curves", "plot_diagnostics", "DIAGNOSTIC_KEYS"]

DIAGNOSTIC_KEYS = {"train/reg_share": "regularization-sample share", "train/w_mean": "mean WSL weight w",
                   "train/adv_divergence": "HARD: teacher-student KL on x~", "train/aug_teacher_acc": "HARD: teacher accuracy on x~"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_mean_band(ax, results: Sequence[RecipeResult], key: str) -> None:
    """One line per recipe: the mean over seeds of ``key`` per epoch, with a mean ± std band."""
    for r in results:
        series = r.series(key)
        if not series:
            continue
        length = min(len(values) for _, values in series)
        values = np.array([v[:length] for _, v in series])
        epochs = np.array(series[0][0][:length])
        mean = values.mean(axis=0)
        (line,) = ax.plot(epochs, mean, label=f"{r.name} (n={len(series)})", linewidth=1.6)
        if len(values) > 1:
            std = values.std(axis=0, ddof=1)
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def plot_curves(results: Sequence[RecipeResult], path: str | Path, title: str = "Test accuracy") -> None:
    """Test accuracy per epoch: the mean over seeds as a line, mean ± std as a band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    _draw_mean_band(ax, results, "test/acc")
    if ax.lines:  # zoom on the part of training where the methods differ
        tails = [y for line in ax.lines for y in line.get_ydata()[len(line.get_ydata()) // 4:]]
        ax.set_ylim(max(0.0, min(tails) - 2.0), min(100.0, max(tails) + 1.0))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_diagnostics(results: Sequence[RecipeResult], path: str | Path, title: str = "Soft-label diagnostics") -> bool:
    """The per-epoch diagnostics that distillation methods log (see DIAGNOSTIC_KEYS), one panel
    each; returns False (and writes nothing) when no recipe logged any."""
    keys = [k for k in DIAGNOSTIC_KEYS if any(r.series(k) for r in results)]
    if not keys:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(6.0 * len(keys), 4.2), dpi=120, squeeze=False)
    for ax, key in zip(axes[0], keys):
        _draw_mean_band(ax, [r for r in results if r.series(key)], key)
        ax.set_ylabel(DIAGNOSTIC_KEYS[key])
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return True
