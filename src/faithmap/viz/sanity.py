"""Pictures of the sanity checks (drawing only; the numbers come from :mod:`faithmap.metrics.sanity`)."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from .draw import _save, colorize, new_figure, subplots, to_image


def save_randomisation_plot(path: str, steps: Sequence[str], sims: dict[str, torch.Tensor], title: str,
                            maps: Sequence[torch.Tensor] | None = None, image=None, max_maps: int = 8) -> None:
    """Similarity to the original map (mean and spread over images) per randomisation step, and,
    if ``maps`` are given, the first image's map after a few of the steps."""
    show = maps is not None and len(maps) > 0
    fig = new_figure((max(6.0, 0.55 * len(steps) + 2), 6.5 if show else 4.0), dpi=110)
    ax = fig.add_axes([0.08, 0.42 if show else 0.28, 0.9, 0.5 if show else 0.62])
    xs = np.arange(len(steps))
    for key, label in (("spearman", "Spearman rank"), ("spearman_abs", "Spearman rank of |map|"), ("ssim", "SSIM")):
        v = sims[key].double().cpu()
        mean = torch.nanmean(v, 0).numpy()
        with warnings.catch_warnings():  # a constant map has no rank correlation: NaN, not drawn
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmin(v.numpy(), 0)
            hi = np.nanmax(v.numpy(), 0)
        ax.plot(xs, mean, marker="o", label=label)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks(xs)
    ax.set_xticklabels(steps, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("similarity to the original map")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    if show:
        idx = np.unique(np.linspace(0, len(maps) - 1, min(max_maps, len(maps))).round().astype(int))
        n = len(idx) + (1 if image is not None else 0)
        w = 0.9 / n
        col = 0
        size = tuple(image.shape[-2:]) if image is not None else (64, 64)
        if image is not None:
            a = fig.add_axes([0.05 + col * w, 0.02, w * 0.95, 0.22])
            a.imshow(to_image(image))
            a.set_title("input", fontsize=7)
            a.axis("off")
            col += 1
        for j in idx:
            a = fig.add_axes([0.05 + col * w, 0.02, w * 0.95, 0.22])
            a.imshow(colorize(maps[j][0].abs(), size))
            a.set_title(steps[j] if len(steps[j]) < 16 else steps[j][-15:], fontsize=7)
            a.axis("off")
            col += 1
    _save(fig, path)


def save_data_randomisation_plot(path: str, images: torch.Tensor, maps_true: torch.Tensor, maps_random: torch.Tensor,
                                 sims: dict[str, torch.Tensor], title: str, max_rows: int = 6) -> None:
    """Rows of (input, map of the real-label model, map of the random-label model) with the similarities."""
    n = min(max_rows, images.shape[0])
    fig, axes = subplots(n, 3, figsize=(6.0, 2.0 * n + 0.6), dpi=110, squeeze=False)
    size = tuple(images.shape[-2:])
    for i in range(n):
        axes[i, 0].imshow(to_image(images[i]))
        axes[i, 1].imshow(colorize(maps_true[i].abs(), size))
        axes[i, 2].imshow(colorize(maps_random[i].abs(), size))
        axes[i, 2].set_title(f"rank {float(sims['spearman'][i, 0]):.2f}  ssim {float(sims['ssim'][i, 0]):.2f}",
                             fontsize=7)
        for a in axes[i]:
            a.axis("off")
    axes[0, 0].set_title("input", fontsize=8)
    axes[0, 1].set_title("real labels", fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
