"""The pointing game (Zhang et al. 2016/2018, as run in Qi, Khorram & Li, AAAI 2020 sec. 4 and Zhang, Rao & Yang, AAAI 2021).

The most salient point of a map is the argmax of the map upsampled to the input size with
:func:`faithmap.core.perturb.upsample` (bilinear, ``align_corners=True``, the same upsampling the
deletion/insertion metric uses; the first maximum in row-major order on ties). It is a hit when it
lies in a ground-truth region of the target, or within ``tolerance`` pixels of one (Zhang et al. use
15 px; the I-GOS and AOP papers count only points inside, ``tolerance=0``, the default).

Coordinates: a point is the pixel (row r, column c); its centre is (c + 0.5, r + 0.5) in the
continuous coordinates of boxes ``x0, y0, x1, y1`` (pixel edges, x to the right, y down), so pixel
(r, c) is inside a box when ``x0 <= c + 0.5 <= x1`` and ``y0 <= r + 0.5 <= y1``. The distance to a
box is the Euclidean distance from that centre to the rectangle; the distance to a mask is the
distance to the nearest pixel of the mask (between pixel centres).

Each image scores 1 (hit), 0 (miss) or NaN (no region of its target, or, with ``min_score``, a
target the model scores at most ``min_score``: the AOP paper keeps only classes with
``F_c(I_0) > 0.5``). Reports average hits per category, then over categories
(``aggregate="category_mean"``): accuracy = #hits / (#hits + #misses) per category.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.batching import chunks, model_guard, resolve_batch_size
from ..core.perturb import upsample
from ..errors import FaithmapError
from ..registry import register_metric


def most_salient_point(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 2) long: row and column of the maximum of each map upsampled to ``size`` (H, W)."""
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() != 3:
        raise FaithmapError(f"saliency maps must be (B, h, w), got shape {tuple(saliency.shape)}")
    up = upsample(saliency.unsqueeze(1).to(torch.float32), tuple(size))[:, 0]
    w = up.shape[-1]
    idx = up.flatten(1).argmax(1)  # first maximum in row-major order
    return torch.stack([idx // w, idx % w], 1)


def box_distance(point: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distance (k,) from the centre of pixel ``point`` (row, col) to each box (k, 4) x0, y0, x1, y1."""
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    cy, cx = float(point[0]) + 0.5, float(point[1]) + 0.5
    dx = torch.clamp(torch.maximum(boxes[:, 0] - cx, cx - boxes[:, 2]), min=0)
    dy = torch.clamp(torch.maximum(boxes[:, 1] - cy, cy - boxes[:, 3]), min=0)
    return torch.sqrt(dx * dx + dy * dy)


def mask_distance(point: torch.Tensor, mask: torch.Tensor) -> float:
    """Distance from pixel ``point`` (row, col) to the nearest pixel of ``mask`` (H, W); inf if empty."""
    pix = torch.nonzero(mask.bool())
    if pix.numel() == 0:
        return float("inf")
    d = (pix.to(torch.float64) - point.to(pix.device, torch.float64).view(1, 2)).pow(2).sum(1)
    return float(d.min().sqrt())


def _target_scores(model, x: torch.Tensor, target: torch.Tensor, batch_size) -> torch.Tensor:
    bs = resolve_batch_size(batch_size, x.device)
    with model_guard(model), torch.no_grad():
        probs = [torch.softmax(model(x[s]), 1).gather(1, target[s].view(-1, 1))[:, 0] for s in chunks(x.shape[0], bs)]
    return torch.cat(probs)


def pointing_hits(saliency: torch.Tensor, size: tuple[int, int], *, boxes: Sequence[torch.Tensor] | None = None,
                  masks: torch.Tensor | None = None, tolerance: float = 0.0) -> torch.Tensor:
    """Hits (B,) float64: 1 hit, 0 miss, NaN where the image has no region (no box / empty mask)."""
    if (boxes is None) == (masks is None):
        raise FaithmapError("pointing needs exactly one of boxes or masks")
    if tolerance < 0:
        raise FaithmapError(f"pointing tolerance must be at least 0 pixels, got {tolerance}")
    points = most_salient_point(saliency, size)
    b = points.shape[0]
    regions = boxes if boxes is not None else masks
    if len(regions) != b:
        raise FaithmapError(f"got regions for {len(regions)} images but {b} maps")
    out = torch.full((b,), float("nan"), dtype=torch.float64)
    for i in range(b):
        if boxes is not None:
            bx = torch.as_tensor(boxes[i]).reshape(-1, 4)
            if bx.shape[0] == 0:
                continue
            d = float(box_distance(points[i].cpu(), bx.cpu()).min())
        else:
            m = masks[i]
            if m.shape[-2:] != tuple(size):
                raise FaithmapError(f"masks must be {size[0]}x{size[1]} (the input size), got {tuple(m.shape[-2:])}")
            if not m.any():
                continue
            d = mask_distance(points[i].cpu(), m.cpu())
        out[i] = 1.0 if d <= tolerance + 1e-9 else 0.0
    return out.to(saliency.device)


def _apply_min_score(hits, model, x, target, min_score, batch_size):
    if min_score is None:
        return hits
    keep = _target_scores(model, x, target, batch_size).to(hits.device) > float(min_score)
    return torch.where(keep, hits, torch.full_like(hits, float("nan")))


@register_metric("pointing", higher_is_better=True, category="localisation", needs=("boxes",),
                 aggregate="category_mean", paper="Zhang et al., ECCV 2016 (as run by Qi, Khorram & Li, AAAI 2020)",
                 default=True,
                 summary="pointing game: the most salient point lies in a box of the target; hits per category, mean over categories")
def pointing(model, x, saliency, target, *, boxes, tolerance: float = 0.0, min_score: float | None = None,
             batch_size=None, seed=0) -> torch.Tensor:
    """Pointing-game hits on boxes (B,): 1, 0, or NaN (no box of the target, or score <= ``min_score``)."""
    hits = pointing_hits(saliency, tuple(x.shape[-2:]), boxes=boxes, tolerance=tolerance)
    return _apply_min_score(hits, model, x, target, min_score, batch_size)


@register_metric("pointing_mask", higher_is_better=True, category="localisation", needs=("masks",),
                 aggregate="category_mean", paper="Zhang et al., ECCV 2016 (as run by Zhang, Rao & Yang, AAAI 2021)",
                 summary="pointing game on segmentation masks (AOP/SIGCAM protocol); boxes filled where no mask is given")
def pointing_mask(model, x, saliency, target, *, masks, tolerance: float = 0.0, min_score: float | None = None,
                  batch_size=None, seed=0) -> torch.Tensor:
    """Pointing-game hits on masks (B,): 1, 0, or NaN (empty mask, or score <= ``min_score``)."""
    hits = pointing_hits(saliency, tuple(x.shape[-2:]), masks=masks, tolerance=tolerance)
    return _apply_min_score(hits, model, x, target, min_score, batch_size)
