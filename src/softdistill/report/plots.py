"""PNG plots of training curves (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softdistill.report.tables import RecipeResult

__all__ = ["plot_curves"]


def plot_curves(results: Sequence[RecipeResult], path: str | Path, title: str = "Test accuracy") -> None:
    """Test accuracy per epoch: the mean over seeds as a line, mean ± std as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for r in results:
        if not r.curves:
            continue
        length = min(len(c) for c in r.curves)
        curves = np.array([c[:length] for c in r.curves])
        epochs = np.arange(1, length + 1)
        mean = curves.mean(axis=0)
        (line,) = ax.plot(epochs, mean, label=f"{r.name} (n={len(r.curves)})", linewidth=1.6)
        if len(curves) > 1:
            std = curves.std(axis=0, ddof=1)
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.18, linewidth=0)
    if ax.lines:  # zoom on the part of training where the methods differ
        tails = [y for line in ax.lines for y in line.get_ydata()[len(line.get_ydata()) // 4:]]
        ax.set_ylim(max(0.0, min(tails) - 2.0), min(100.0, max(tails) + 1.0))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
