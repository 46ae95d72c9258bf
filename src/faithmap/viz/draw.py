"""Matplotlib drawing without pyplot: :class:`matplotlib.figure.Figure` objects on the Agg canvas.

Nothing here touches matplotlib's global state: no ``matplotlib.use``, no pyplot figure manager. The
user's backend (a notebook's inline figures, a GUI) stays as it was; files are written by the Agg
canvas, so no display is needed. Figures are :class:`Picture` objects, which notebooks display on
their own (``_repr_png_``) and ``fig.savefig(path)`` saves.

Colours: a map with no negative value is drawn min-max on ``jet`` (larger = more important); a
signed map (Integrated Gradients, gradient x input, ...) on the diverging ``RdBu_r`` centred at 0
with symmetric limits ``[-L, L]``, ``L`` the 99th percentile of ``|s|`` (pixel-level attributions
have a few cells far above the rest; captum's ``visualize_image_attr`` clips the top 2% the same way),
red for evidence for the target, blue against. Over a photo it is blended in proportion to ``|s| / L``
on a light grey copy of the photo, so that zero attribution shows the photo and red and blue are not
lost in the photo's own colours.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text

from ..core.io import atomic_open

SEQUENTIAL = "jet"
DIVERGING = "RdBu_r"


class Picture(Figure):
    """A figure that notebooks display by itself (``_repr_png_``); drawn on the Agg canvas, never
    registered with pyplot (``plt.show()`` does not know it; ``fig.savefig(path)`` writes it)."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def new_figure(figsize: tuple[float, float], dpi: int = 100) -> Picture:
    """An empty :class:`Picture` with its Agg canvas."""
    fig = Picture(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], dpi: int = 100, squeeze: bool = True,
             **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` returns them, without pyplot."""
    fig = new_figure(figsize, dpi)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def plain_text(fig) -> None:
    """Show every text of ``fig`` literally: no mathtext (``$...$`` in an image name), no TeX."""
    for t in fig.findobj(Text):
        t.set_parse_math(False)
        t.set_usetex(False)


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (user text taken literally)."""
    plain_text(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def _save(fig: Figure, path: str) -> None:
    """Write ``fig`` as a PNG atomically (:func:`faithmap.core.io.atomic_open`), user text taken literally."""
    plain_text(fig)
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=fig.dpi, bbox_inches="tight")


# ----------------------------------------------------------------------------------------------
# maps -> colours
# ----------------------------------------------------------------------------------------------
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


def _as_array(saliency) -> np.ndarray:
    s = saliency.detach().float().cpu().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency, float)
    s = s.reshape(s.shape[-2:])
    return np.where(np.isfinite(s), s, 0.0)  # NaN/inf cells are drawn as 0 (the warnings say so)


def is_signed(saliency) -> bool:
    """Whether the map has a negative value (then it is drawn on a diverging scale centred at 0)."""
    return bool((_as_array(saliency) < 0).any())


SIGNED_PERCENTILE = 99.0
"""Signed maps are scaled by this percentile of ``|s|`` (values beyond it are drawn at full colour)."""


def signed_limit(saliency) -> float:
    """``L`` of a signed map: the 99th percentile of ``|s|`` over its cells (its maximum when that is 0)."""
    a = np.abs(_as_array(saliency))
    lim = float(np.percentile(a, SIGNED_PERCENTILE))
    return lim if lim > 0 else float(a.max())


def _map_at(saliency, size: tuple[int, int], signed: bool | None = None) -> np.ndarray:
    """The map upsampled (bilinear) to ``size`` and scaled: min-max to [0, 1], or, signed, by
    :func:`signed_limit` to [-1, 1] (0 stays 0, beyond the limit clipped). A constant map becomes zeros."""
    arr = _as_array(saliency)
    signed = bool((arr < 0).any()) if signed is None else signed
    s = torch.from_numpy(arr.astype(np.float32)).reshape(1, 1, *arr.shape)
    if tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=True)
    s = s[0, 0].numpy()
    if signed:
        m = signed_limit(arr)
        return np.clip(s / m, -1, 1) if m > 0 else np.zeros_like(s)
    lo, hi = float(s.min()), float(s.max())
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def scale_of(saliency, cmap: str | None = None) -> tuple[str, Normalize, str]:
    """(colour map, norm, colour-bar label) of a map: its values as :func:`colorize` shows them."""
    if is_signed(saliency):
        m = signed_limit(saliency)
        return cmap or DIVERGING, Normalize(-m, m), "attribution (signed, 0 = none; 99th pct of |s|)"
    return cmap or SEQUENTIAL, Normalize(0, 1), "importance (min-max)"


def colorize(saliency, size: tuple[int, int], cmap: str | None = None) -> np.ndarray:
    """The map upsampled to ``size`` through a colour map: (H, W, 3) in [0, 1]. Non-negative maps
    min-max on ``jet``; signed maps on ``RdBu_r`` with symmetric limits (0 in the middle)."""
    signed = is_signed(saliency)
    v = _map_at(saliency, size, signed)
    if signed:
        v = (v + 1) / 2
    return colormaps[cmap or (DIVERGING if signed else SEQUENTIAL)](v)[..., :3]


def overlay(image, saliency, alpha: float = 0.5, cmap: str | None = None) -> np.ndarray:
    """The photo with the colour-mapped saliency blended over it: (H, W, 3) in [0, 1].

    Non-negative maps are blended with weight ``alpha`` everywhere; signed maps with weight
    ``max(alpha, 0.9) * min(1, |s| / L)`` over a light grey copy of the photo (see the module notes),
    so zero attribution leaves the (grey) photo.
    """
    img = to_image(image)
    color = colorize(saliency, img.shape[:2], cmap)
    if not is_signed(saliency):
        return (1 - alpha) * img + alpha * color
    grey = 0.35 + 0.55 * (img @ np.array([0.299, 0.587, 0.114]))[..., None]
    w = max(alpha, 0.9) * np.abs(_map_at(saliency, img.shape[:2], True))[..., None]
    return (1 - w) * grey + w * color


def colorbar(fig: Figure, ax, saliency, cmap: str | None = None) -> None:
    """A colour bar beside ``ax`` for the scale :func:`overlay` used for ``saliency``."""
    name, norm, label = scale_of(saliency, cmap)
    fig.colorbar(ScalarMappable(norm=norm, cmap=colormaps[name]), ax=ax, fraction=0.046, pad=0.04, label=label,
                 extend="both" if norm.vmin < 0 else "neither")


# ----------------------------------------------------------------------------------------------
# the files of ``faithmap explain``
# ----------------------------------------------------------------------------------------------
def save_heatmap(path: str, image, saliency, title: str = "", alpha: float = 0.5, cmap: str | None = None) -> None:
    """Photo and its heatmap overlay side by side, with a colour bar."""
    img = to_image(image)
    fig, axes = subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(img)
    axes[0].set_title("input")
    axes[1].imshow(overlay(img, saliency, alpha, cmap))
    axes[1].set_title("saliency")
    colorbar(fig, axes[1], saliency, cmap)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def draw_curves(ax, fractions, deletion, insertion, title: str = "") -> None:
    """Deletion (red) and insertion (blue) curves on ``ax`` with their AUCs in the legend."""
    x = np.asarray(torch.as_tensor(fractions).detach().cpu())
    d = np.asarray(torch.as_tensor(deletion).detach().cpu())
    i = np.asarray(torch.as_tensor(insertion).detach().cpu())
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


def save_curves(path: str, fractions, deletion, insertion, title: str = "") -> None:
    """Deletion (red) and insertion (blue) curves with their AUCs in the legend."""
    fig, ax = subplots(figsize=(5, 3.6))
    draw_curves(ax, fractions, deletion, insertion, title)
    _save(fig, path)


def save_strip(path: str, panels: Sequence[tuple[np.ndarray, str]], title: str = "") -> None:
    """A row of images with captions (photo, heatmap, deletion image, insertion image)."""
    fig, axes = subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (img, caption) in zip(np.atleast_1d(axes), panels):
        ax.imshow(to_image(img))
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
