"""Matplotlib drawing with the Agg backend (no display needed)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..core.io import atomic_open  # noqa: E402


def to_image(pixels) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] or (H, W, 3) array -> (H, W, 3) float array in [0, 1]."""
    if isinstance(pixels, torch.Tensor):
        arr = pixels.detach().float().cpu()
        if arr.dim() == 4:
            arr = arr[0]
        if arr.shape[0] in (1, 3) and arr.dim() == 3:
            arr = arr.permute(1, 2, 0)
        arr = arr.numpy()
    else:
        arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    return np.clip(arr, 0, 1)


def _map_at(saliency, size: tuple[int, int]) -> np.ndarray:
    s = saliency.detach().float().cpu() if isinstance(saliency, torch.Tensor) else torch.as_tensor(saliency).float()
    s = s.reshape(1, 1, *s.shape[-2:])
    if tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s, size=size, mode="bilinear", align_corners=True)
    s = s[0, 0].numpy()
    lo, hi = float(s.min()), float(s.max())
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def colorize(saliency, size: tuple[int, int], cmap: str = "jet") -> np.ndarray:
    """Min-max normalised map upsampled to ``size``, through ``cmap``: (H, W, 3) in [0, 1]."""
    return plt.get_cmap(cmap)(_map_at(saliency, size))[..., :3]


def overlay(image, saliency, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The photo with the colour-mapped saliency blended over it: (H, W, 3) in [0, 1]."""
    img = to_image(image)
    return (1 - alpha) * img + alpha * colorize(saliency, img.shape[:2], cmap)


def plain_text(fig) -> None:
    """Show every text of ``fig`` literally: no mathtext (``$...$`` in an image name), no TeX."""
    for t in fig.findobj(Text):
        t.set_parse_math(False)
        t.set_usetex(False)


def _save(fig, path: str) -> None:
    """Write ``fig`` as a PNG atomically (:func:`faithmap.core.io.atomic_open`), user text taken literally."""
    try:
        plain_text(fig)
        with atomic_open(path) as fh:
            fig.savefig(fh, format="png", dpi=fig.dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def save_heatmap(path: str, image, saliency, title: str = "", alpha: float = 0.5, cmap: str = "jet") -> None:
    """Photo and its heatmap overlay side by side, with a colour bar."""
    img = to_image(image)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=100)
    axes[0].imshow(img)
    axes[0].set_title("input")
    im = axes[1].imshow(overlay(img, saliency, alpha, cmap))
    axes[1].set_title("saliency")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=axes[1], fraction=0.046, pad=0.04, label="importance (min-max)")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    del im
    _save(fig, path)


def save_curves(path: str, fractions, deletion, insertion, title: str = "") -> None:
    """Deletion (red) and insertion (blue) curves with their AUCs in the legend."""
    x = np.asarray(torch.as_tensor(fractions).cpu())
    d = np.asarray(torch.as_tensor(deletion).cpu())
    i = np.asarray(torch.as_tensor(insertion).cpu())
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    ax.plot(x, d, color="tab:red", label=f"deletion  AUC {np.trapezoid(d, x):.3f}")
    ax.plot(x, i, color="tab:blue", label=f"insertion AUC {np.trapezoid(i, x):.3f}")
    ax.fill_between(x, d, color="tab:red", alpha=0.12)
    ax.fill_between(x, i, color="tab:blue", alpha=0.12)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of cells deleted / inserted")
    ax.set_ylabel("probability of target")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)


def save_strip(path: str, panels: Sequence[tuple[np.ndarray, str]], title: str = "") -> None:
    """A row of images with captions (photo, heatmap, deletion image, insertion image)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4), dpi=100)
    for ax, (img, caption) in zip(np.atleast_1d(axes), panels):
        ax.imshow(to_image(img))
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
