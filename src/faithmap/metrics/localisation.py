"""Localisation metrics of the Expected Grad-CAM paper (appendix Table 2; Tables 4 and 5).

Attribution Localisation (Kohlbrenner et al. 2020), Top-K Intersection (Theiner et al. 2022),
Relevance Rank Accuracy and Relevance Mass Accuracy (Arras et al. 2022). They compare the map,
upsampled to the input size, with a ground-truth region: ``masks`` (B, H, W) bool, or ``boxes``
(per image a (k, 4) tensor of x0, y0, x1, y1 in input pixels; a pixel (row r, column c) is inside
when x0 <= c < x1 and y0 <= r < y1, the union over an image's boxes). No model evaluation.
An image whose region is empty scores NaN (as in Quantus 0.6). Defaults follow Quantus 0.6.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import FaithmapError
from ..registry import register_metric
from ._common import check_inputs, check_ties, prepare_maps, topk_weights


def boxes_to_masks(boxes: Sequence[torch.Tensor], size: tuple[int, int], device=None) -> torch.Tensor:
    """Boolean masks (B, H, W) from per-image boxes (k, 4) of x0, y0, x1, y1 (x1, y1 exclusive)."""
    h, w = size
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    out = []
    for i, bx in enumerate(boxes):
        bx = torch.as_tensor(bx, device=device, dtype=torch.float32).reshape(-1, 4)
        if bx.numel() and ((bx[:, 2] < bx[:, 0]) | (bx[:, 3] < bx[:, 1])).any():
            raise FaithmapError(f"box of image {i} has x1 < x0 or y1 < y0; boxes are x0, y0, x1, y1")
        x0, y0, x1, y1 = (bx[:, j].view(-1, 1, 1) for j in range(4))
        inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
        out.append(inside.any(0) if len(bx) else torch.zeros(h, w, dtype=torch.bool, device=device))
    return torch.stack(out)


def region(name: str, x: torch.Tensor, masks=None, boxes=None) -> torch.Tensor:
    """The ground-truth region (B, H, W) bool from ``masks`` or ``boxes``; one clear error otherwise."""
    b, _, h, w = x.shape
    if masks is None and boxes is None:
        raise FaithmapError(f"metric {name} needs masks (B, H, W) or boxes (per image a (k, 4) tensor); none given")
    if masks is not None:
        m = torch.as_tensor(masks, device=x.device)
        if m.dim() == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.dim() == 2 and b == 1:
            m = m.unsqueeze(0)
        if tuple(m.shape) != (b, h, w):
            raise FaithmapError(f"metric {name}: masks must be (B, H, W) = {(b, h, w)} like the images, got {tuple(m.shape)}")
        return m.bool()
    if len(boxes) != b:
        raise FaithmapError(f"metric {name}: got boxes for {len(boxes)} images, expected {b}")
    return boxes_to_masks(boxes, (h, w), x.device)


def _nan_where_empty(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    empty = s.flatten(1).sum(1) == 0
    return torch.where(empty, torch.full_like(v, float("nan")), v)


@register_metric("attribution_localisation", higher_is_better=True, category="localisation", needs=("masks",),
                 paper="Kohlbrenner et al., IJCNN 2020", aliases=("attribution_localization",),
                 summary="share of the map's (absolute) attribution that falls inside the object region")
def attribution_localisation(model, x, saliency, target, *, masks=None, boxes=None, weighted: bool = False,
                             positive: bool = False, normalise: bool = True, absolute: bool = True,
                             batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Attribution Localisation (Kohlbrenner et al. 2020): ``mu = R_in / R_tot``.

    ``positive`` keeps only positive attribution (the paper's definition; the default takes
    absolute values, as Quantus 0.6). ``weighted`` gives the paper's ``mu_w = mu * S_tot / S_in``
    (area of the image over area of the region). Quantus 0.6 multiplies by ``S_in / S_tot``
    instead, and computes ``S_tot`` from ``x_batch[2:].size`` (the images from the third on), so its
    weighted variant is not followed. A ratio above 1 (possible with negative values) gives NaN
    as in Quantus. Higher is better.
    """
    name = "attribution_localisation"
    x, saliency, target = check_inputs(name, None, x, saliency, torch.zeros(x.shape[0], dtype=torch.long),
                                         check_values=False)
    s = region(name, x, masks, boxes)
    a = prepare_maps(saliency, x.shape[-2:], normalise=normalise, absolute=absolute).double()
    if positive:
        a = a.clamp_min(0)
    inside = (a * s).flatten(1).sum(1)
    ratio = inside / (a.flatten(1).sum(1) + 1e-9)
    ratio = torch.where(ratio > 1, torch.full_like(ratio, float("nan")), ratio)
    if weighted:
        s_in = s.flatten(1).sum(1).double()
        ratio = ratio * s[0].numel() / s_in
    return _nan_where_empty(ratio, s)


@register_metric("top_k_intersection", higher_is_better=True, category="localisation", needs=("masks",),
                 paper="Theiner, Müller-Budack & Ewerth, WACV 2022",
                 summary="share of the map's k most relevant pixels (k = 1000) that lie inside the object region")
def top_k_intersection(model, x, saliency, target, *, masks=None, boxes=None, k: int = 1000,
                       concept_influence: bool = False, normalise: bool = True, absolute: bool = False,
                       ties: str = "interpolate", batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Top-K Intersection (Theiner et al. 2022): the fraction of the ``k`` highest-ranked pixels
    inside the region; ``concept_influence`` divides by the region's share of the image. Higher is
    better. ``ties="interpolate"`` (default): a block of tied pixels that straddles ``k`` counts
    each of its pixels with weight ``(k - start) / size`` (the expectation over random orders of
    the ties); ``"index"``: ties by lower pixel index (Quantus' order)."""
    name = "top_k_intersection"
    check_ties(name, ties)
    x, saliency, target = check_inputs(name, None, x, saliency, torch.zeros(x.shape[0], dtype=torch.long),
                                         check_values=False)
    s = region(name, x, masks, boxes)
    h, w = x.shape[-2:]
    if not 1 <= int(k) <= h * w:
        raise FaithmapError(f"metric {name}: k must be between 1 and {h * w} (the pixels of the image), got {k}")
    a = prepare_maps(saliency, (h, w), normalise=normalise, absolute=absolute)
    top = topk_weights(a.flatten(1), int(k), ties)
    v = (top * s.flatten(1)).sum(1) / int(k)
    if concept_influence:
        v = v * (h * w) / s.flatten(1).sum(1).double()
    return _nan_where_empty(v, s)


@register_metric("relevance_rank_accuracy", higher_is_better=True, category="localisation", needs=("masks",),
                 paper="Arras, Osman & Samek, Information Fusion 2022",
                 summary="share of the K most relevant pixels inside the region, K = the region's size")
def relevance_rank_accuracy(model, x, saliency, target, *, masks=None, boxes=None, normalise: bool = True,
                            absolute: bool = False, ties: str = "interpolate", batch_size: int | None = None,
                            seed: int = 0) -> torch.Tensor:
    """Relevance Rank Accuracy (Arras et al. 2022, eq. 8): with ``K`` the number of region pixels,
    the fraction of the ``K`` highest-ranked pixels inside the region. Higher is better. ``ties``
    as :func:`top_k_intersection`."""
    name = "relevance_rank_accuracy"
    check_ties(name, ties)
    x, saliency, target = check_inputs(name, None, x, saliency, torch.zeros(x.shape[0], dtype=torch.long),
                                         check_values=False)
    s = region(name, x, masks, boxes)
    a = prepare_maps(saliency, x.shape[-2:], normalise=normalise, absolute=absolute)
    size = s.flatten(1).sum(1)
    top = topk_weights(a.flatten(1), size, ties)
    v = (top * s.flatten(1)).sum(1) / size.clamp_min(1).double()
    return _nan_where_empty(v, s)


@register_metric("relevance_mass_accuracy", higher_is_better=True, category="localisation", needs=("masks",),
                 paper="Arras, Osman & Samek, Information Fusion 2022",
                 summary="share of the map's total relevance that lies inside the region")
def relevance_mass_accuracy(model, x, saliency, target, *, masks=None, boxes=None, normalise: bool = True,
                            absolute: bool = False, batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Relevance Mass Accuracy (Arras et al. 2022, eq. 7): ``R_within / R_total`` (signed values
    unless ``absolute``; Quantus 0.6 defaults). Higher is better."""
    name = "relevance_mass_accuracy"
    x, saliency, target = check_inputs(name, None, x, saliency, torch.zeros(x.shape[0], dtype=torch.long),
                                         check_values=False)
    s = region(name, x, masks, boxes)
    a = prepare_maps(saliency, x.shape[-2:], normalise=normalise, absolute=absolute).double()
    v = (a * s).flatten(1).sum(1) / a.flatten(1).sum(1)
    return _nan_where_empty(v, s)
