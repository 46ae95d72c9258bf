"""Pictures of an evaluation: mean deletion/insertion curves per method, and a heatmap grid.

Drawing only: the numbers come from :mod:`faithmap.evaluation.stats`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.patches import Rectangle

from .draw import _save, overlay, plain_text, subplots, to_image


def _colors(n: int):
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def save_mean_curves(path: str, curves: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, int]],
                     title: str = "") -> None:
    """Deletion (left) and insertion (right) curves averaged over images, one line per method.

    ``curves``: (label, fractions, mean deletion, mean insertion, number of images). The legend
    gives the AUC of each mean curve (the mean AUC when all maps share a grid). As Fig. 4 of
    Zhang, Rao & Yang (AAAI 2021): the probability of the target as cells are deleted or inserted.
    """
    fig, axes = subplots(1, 2, figsize=(11.5, 4.4), sharey=True)
    colors = _colors(len(curves))
    for (label, fr, d, ins, n), c in zip(curves, colors):
        fr, d, ins = np.asarray(fr), np.asarray(d), np.asarray(ins)
        axes[0].plot(fr, d, color=c, lw=1.8, label=f"{label}  AUC {np.trapezoid(d, fr):.3f}")
        axes[1].plot(fr, ins, color=c, lw=1.8, label=f"{label}  AUC {np.trapezoid(ins, fr):.3f}")
    for ax, name, arrow in ((axes[0], "Deletion", "lower AUC is better ↓"), (axes[1], "Insertion", "higher AUC is better ↑")):
        ax.set_title(f"{name} ({arrow})", fontsize=11)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"fraction of cells {'deleted (blurred)' if name == 'Deletion' else 'inserted (revealed)'}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right" if name == "Deletion" else "lower right", fontsize=8, framealpha=0.85)
    axes[0].set_ylabel("mean probability of the target")
    if title:
        fig.suptitle(title, fontsize=11)
    plain_text(fig)  # image names and labels come from users: ``$x$`` stays ``$x$``
    fig.tight_layout()
    _save(fig, path)


def save_heatmap_grid(path: str, rows: Sequence[tuple[str, np.ndarray, Sequence[Sequence[float]]]],
                      columns: Sequence[str], cells: dict[tuple[int, int], np.ndarray | None],
                      points: dict[tuple[int, int], tuple[int, int]] | None = None, title: str = "",
                      cell_inches: float = 1.7) -> None:
    """Images down, methods across: the photo (with its ground-truth boxes) then each method's heatmap.

    ``rows``: (image name, (H, W, 3) pixels, boxes x0, y0, x1, y1 in those pixels); ``cells[(i, j)]``
    the map of image i under column j (any grid; upsampled for display) or None; ``points`` the most
    salient point (row, col) of a cell, drawn as a white cross.
    """
    points = points or {}
    nr, nc = len(rows), len(columns) + 1
    fig, axes = subplots(nr, nc, figsize=(cell_inches * nc, cell_inches * nr + (0.5 if title else 0.2)), squeeze=False)
    for i, (name, pix, boxes) in enumerate(rows):
        img = to_image(pix)
        ax = axes[i][0]
        ax.imshow(img)
        for b in boxes:
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="#ff00ff", lw=1.4))
        ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        for j, col in enumerate(columns, start=1):
            ax = axes[i][j]
            sal = cells.get((i, j - 1))
            if sal is None:
                ax.imshow(np.ones_like(img))
                ax.text(0.5, 0.5, "–", ha="center", va="center", transform=ax.transAxes, fontsize=14, color="gray")
            else:
                ax.imshow(overlay(img, sal))
                p = points.get((i, j - 1))
                if p is not None:
                    ax.plot([p[1]], [p[0]], marker="x", color="white", ms=7, mew=2)
                    ax.plot([p[1]], [p[0]], marker="x", color="black", ms=4, mew=1)
    for j, col in enumerate(["input"] + list(columns)):
        axes[0][j].set_title(col, fontsize=8)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    plain_text(fig)  # image names and labels come from users: ``$x$`` stays ``$x$``
    fig.tight_layout(pad=0.3)
    _save(fig, path)
