"""What the audit reads off one map: the map on a common grid, its most salient patch, and that patch's
embedding in the model's own features.

Maps come at their method's native grid (a CAM's layer grid, a mask resolution, the input's
pixels). The audit compares them on one grid of :data:`STAT_GRID` x :data:`STAT_GRID` cells over
the whole image (:func:`stat_maps`: the positive part, area-averaged down or bilinearly up, scaled
to sum 1). An image's *salient patch* is the square window of side ``patch`` (a fraction of the
image side) holding the most of that mass (:func:`salient_windows`); boxes are ``[x0, y0, x1, y1]``
in fractions of the image. Its *embedding* is the mean of the model's features at its CAM layer
(the last spatial layer before pooling: the penultimate features) over the layer's cells inside
the patch (:func:`pool_features`); a model without a spatial layer embeds the patch's pixels
(:func:`pixel_features`, a 4 x 4 colour thumbnail).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

STAT_GRID = 32
"""Cells per side of the common grid the maps are compared on."""
FLAT = 1e-9
"""A map whose largest and smallest cell differ by less than this share of the largest shows nothing."""


def window_cells(patch: float, grid: int = STAT_GRID) -> int:
    """The side of the salient patch in cells of the common grid (at least 1)."""
    return max(1, min(grid, int(round(patch * grid))))


def stat_maps(maps: torch.Tensor, grid: int = STAT_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (n, h, w) -> (their positive part on ``grid`` x ``grid`` cells, each summing to 1 (float64);
    whether each map shows something: not all zero, not constant)."""
    m = torch.relu(maps.detach().double().cpu())
    if m.dim() == 2:
        m = m.unsqueeze(0)
    m = m.unsqueeze(1)
    h, w = m.shape[-2:]
    if h >= grid and w >= grid:
        m = F.adaptive_avg_pool2d(m, grid)
    else:
        m = F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False)
    m = m[:, 0].clamp_min(0)
    flat = m.flatten(1)
    hi, lo, total = flat.max(1).values, flat.min(1).values, flat.sum(1)
    shows = (total > 0) & ((hi - lo) > FLAT * hi)
    out = torch.where(shows[:, None, None], m / total.clamp_min(1e-300)[:, None, None], torch.zeros_like(m))
    return out, shows


def salient_windows(stat: torch.Tensor, cells: int) -> torch.Tensor:
    """The top-left cell (row, col) of the ``cells`` x ``cells`` window holding the most mass of each
    map (n, S, S): (n, 2) long. Ties go to the window nearest the centre (a flat map has no patch)."""
    s = F.avg_pool2d(stat.unsqueeze(1), cells, stride=1)[:, 0] * cells * cells  # (n, P, P) window sums
    p = s.shape[-1]
    r = torch.arange(p, dtype=s.dtype)
    d2 = ((r[:, None] - (p - 1) / 2) ** 2 + (r[None, :] - (p - 1) / 2) ** 2) / max(p * p, 1)
    top = s.flatten(1).max(1).values
    score = s - 1e-9 * top[:, None, None] * d2  # equal sums: the central window
    idx = score.flatten(1).argmax(1)
    return torch.stack([idx // p, idx % p], 1)


def window_box(row: int, col: int, cells: int, grid: int = STAT_GRID) -> list[float]:
    """The box ``[x0, y0, x1, y1]`` (fractions of the image) of the window whose top-left cell is (row, col)."""
    return [col / grid, row / grid, (col + cells) / grid, (row + cells) / grid]


def _cells(lo: float, hi: float, n: int) -> torch.Tensor:
    """Indices of the cells of an ``n``-cell axis whose centres lie in [lo, hi); the cell holding the middle
    when none does."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    idx = torch.nonzero((c >= lo) & (c < hi)).flatten()
    if idx.numel() == 0:
        idx = torch.tensor([min(n - 1, int((lo + hi) / 2 * n))])
    return idx


def pool_features(features: torch.Tensor, boxes: list[list[float]]) -> torch.Tensor:
    """The mean of each image's features (n, K, h, w) over its grid cells inside its box: (n, K) float32."""
    out = []
    for f, (x0, y0, x1, y1) in zip(features, boxes):
        rows, cols = _cells(y0, y1, f.shape[-2]), _cells(x0, x1, f.shape[-1])
        out.append(f[:, rows][:, :, cols].float().mean((1, 2)))
    return torch.stack(out)


def pixel_features(x: torch.Tensor, boxes: list[list[float]]) -> torch.Tensor:
    """Each image's pixels (n, C, H, W) inside its box as a 4 x 4 thumbnail, flattened: (n, C * 16) float32."""
    h, w = x.shape[-2:]
    out = []
    for img, box in zip(x, boxes):
        x0, y0, x1, y1 = pixel_box(box, h, w)
        out.append(F.adaptive_avg_pool2d(img[:, y0:y1, x0:x1].float(), 4).flatten())
    return torch.stack(out)


def pixel_box(box, h: int, w: int) -> tuple[int, int, int, int]:
    """A box in fractions -> pixel bounds (x0, y0, x1, y1) of an h x w image, at least one pixel each way."""
    x0 = min(w - 1, max(0, int(np.floor(box[0] * w + 1e-9))))
    y0 = min(h - 1, max(0, int(np.floor(box[1] * h + 1e-9))))
    x1 = max(x0 + 1, min(w, int(np.ceil(box[2] * w - 1e-9))))
    y1 = max(y0 + 1, min(h, int(np.ceil(box[3] * h - 1e-9))))
    return x0, y0, x1, y1
