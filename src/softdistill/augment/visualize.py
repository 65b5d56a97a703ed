"""Image grids of clean and augmented samples (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from softdistill.atomic import save_figure_atomic

__all__ = ["save_image_grid"]


def save_image_grid(rows: Sequence[tuple[str, Tensor]], path: str | os.PathLike, title: str | None = None,
                    captions: Sequence[Sequence[str]] = ()) -> Path:
    """Write one labelled row per ``(label, images)``; images are N x C x H x W in [0, 1]
    (one channel is shown in grey, three as RGB), ``captions[r][c]`` under image c of row r when
    given.  The file is replaced atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(images.shape[0] for _, images in rows)
    height = 1.1 + (0.3 if captions else 0.0)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.1 * columns + 1.2, height * len(rows) + 0.4),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        pixels = images.detach().float().clamp(0, 1).cpu()
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < pixels.shape[0]:
                image = pixels[c]
                if image.shape[0] == 1:
                    ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(image[:3].permute(1, 2, 0).numpy())
                if r < len(captions) and c < len(captions[r]):
                    ax.set_xlabel(captions[r][c], fontsize=7, labelpad=2)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)
