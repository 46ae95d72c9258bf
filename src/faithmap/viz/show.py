"""The picture of an explanation for notebooks and scripts: photo, overlay, and optionally the curves.

:func:`show` takes an :class:`faithmap.Explanation` (or anything with its attributes) and returns a
:class:`~faithmap.viz.draw.Picture` (a :class:`matplotlib.figure.Figure`): a notebook displays it,
``fig.savefig("x.png")`` writes it. No pyplot, no backend change.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import FaithmapError
from .draw import Picture, colorbar, colorize, draw_curves, new_figure, overlay, plain_text, to_image

MAX_ROWS = 8
"""Images drawn when ``index`` is not given (the first ones; ``index=`` picks others)."""


def _indices(n: int, index) -> tuple[list[int], str]:
    """The images to draw and a note when some were left out."""
    if index is None:
        rows = list(range(min(n, MAX_ROWS)))
        note = f" (the first {MAX_ROWS} of {n}; index= picks others)" if n > MAX_ROWS else ""
        return rows, note
    rows = [int(index)] if isinstance(index, (int, np.integer)) else [int(i) for i in index]
    bad = [i for i in rows if not -n <= i < n]
    if bad or not rows:
        raise FaithmapError(f"index must pick images 0 to {n - 1} of this explanation, got {index!r}")
    return [i % n for i in rows], ""


def _curve_rows(curves, i: int):
    """(fractions, deletion, insertion) of image ``i`` from a curves object (``faithmap.metrics.Curves``)."""
    d, ins = curves.deletion, curves.insertion
    return curves.fractions, d[i] if d.dim() > 1 else d, ins[i] if ins.dim() > 1 else ins


def target_label(exp, i: int) -> str:
    """``'espresso' (967)`` or ``class 3`` for image ``i``'s target."""
    t = int(exp.target[i])
    names = getattr(exp, "target_names", None)
    return f"'{names[i]}' ({t})" if names else f"class {t}"


def show(exp, index: int | Sequence[int] | None = None, *, curves: Any = None, model=None, alpha: float = 0.5,
         cmap: str | None = None, title: str | None = None) -> Picture:
    """A figure with one row per image: the photo, the map over it (with its colour bar) and, when
    ``curves`` is given, the deletion and insertion curves.

    ``curves``: a ``faithmap.metrics.Curves`` of the same images, or ``True`` to compute them with
    ``exp.curves(model)`` (the model the explanation came from, while it is alive, or ``model=``).
    ``index``: an image or a list of images (default: the first 8). Signed maps (any negative
    value) are drawn on a diverging scale centred at 0, other maps min-max on ``jet``
    (:mod:`faithmap.viz.draw`). A map that is constant or has NaN says so in red.
    """
    n = int(exp.saliency.shape[0])
    rows, note = _indices(n, index)
    if curves is True:
        curves = exp.curves(model)
    elif curves is False:
        curves = None
    pixels = getattr(exp, "pixels", None)
    problems = exp.problems() if hasattr(exp, "problems") else [None] * n
    ncols = 2 + (curves is not None)
    fig = new_figure((3.6 * ncols + 0.4, 3.3 * len(rows) + 0.5))
    axes = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    for r, i in enumerate(rows):
        sal = exp.saliency[i].detach().float().cpu()
        img = to_image(pixels[i]) if pixels is not None else None
        ax_in, ax_map = axes[r, 0], axes[r, 1]
        if img is not None:
            ax_in.imshow(img)
            ax_in.set_title(f"image {i}: {target_label(exp, i)}", fontsize=9)
            ax_map.imshow(overlay(img, sal, alpha, cmap))
        else:  # an Explanation made by a method directly keeps no pixels: the map alone
            ax_in.text(0.5, 0.5, "no input pixels kept", ha="center", va="center", fontsize=9, color="gray")
            ax_map.imshow(colorize(sal, tuple(sal.shape[-2:]), cmap), interpolation="nearest")
        colorbar(fig, ax_map, sal, cmap)
        grid = "x".join(str(v) for v in sal.shape[-2:])
        ax_map.set_title(f"{exp.method or 'saliency'} ({grid} map)", fontsize=9)
        if problems[i]:
            ax_map.text(0.5, -0.04, problems[i].split(":")[0], transform=ax_map.transAxes, ha="center", va="top",
                        fontsize=8, color="red")
        for ax in (ax_in, ax_map):
            ax.axis("off")
        if curves is not None:
            fr, d, ins = _curve_rows(curves, i)
            draw_curves(axes[r, 2], fr, d, ins)
    model_name = getattr(exp, "model_name", "")
    head = title if title is not None else f"{exp.method}{' on ' + model_name if model_name else ''}{note}"
    if head:
        fig.suptitle(head, fontsize=10)
    fig.tight_layout()
    plain_text(fig)
    return fig

