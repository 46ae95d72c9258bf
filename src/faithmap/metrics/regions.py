"""Region metrics of GAD (Mazini Rodrigues, Boutry & Najman, 2024 sec. 5): convex hulls of the most important pixels, the
complexity ratio RC (eq. 1) and the sensitivity RS (eq. 2).

A map's *important pixels* are chosen by :func:`important_pixels`: by default the top
``threshold`` fraction of all pixels (sec. 6: "we filtered out 50% of the pixels, retaining only
the most important half"), counting only pixels with a strictly positive value (a pixel with zero
or negative saliency is never important; this matters for maps that are exactly zero on a black
background, such as Gradient x Input). ``mode="relative"`` instead keeps the pixels reaching
``threshold`` times the map's maximum (the convention of Fig. 4).

The hull is scikit-image's ``convex_hull_image`` of those pixels (each pixel taken with its
extent, so one pixel or a line of pixels still has a hull); ``M`` is 1 on the pixels whose centres
lie inside or on the hull (sec. 5: "internal or boundary pixels"), and a hull's area is its pixel
count. Metrics never import methods: the maps come in as tensors.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..core.batching import DEFAULT_BATCH_SIZE, chunks, model_guard, resolve_batch_size
from ..core.perturb import make_baseline, phi
from ..core.scores import score_of
from ..errors import FaithmapError
from ..registry import register_metric

HULL_MODES = ("fraction", "relative")


def _check_maps(saliency: torch.Tensor, name: str = "saliency") -> torch.Tensor:
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() == 2:
        saliency = saliency.unsqueeze(0)
    if saliency.dim() != 3:
        raise FaithmapError(f"{name} must be (B, H, W) maps, got shape {tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise FaithmapError(f"{name} contain NaN or infinite values")
    return saliency


def important_pixels(saliency: torch.Tensor, threshold: float = 0.5, mode: str = "fraction") -> torch.Tensor:
    """Boolean (B, H, W): the important pixels of each map.

    ``mode="fraction"``: the ``ceil(threshold * H * W)`` highest-valued pixels (ties broken by the
    lower flat index), restricted to values > 0. ``mode="relative"``: the pixels with value > 0 and
    ``>= threshold * max``.
    """
    s = _check_maps(saliency)
    if not 0 < threshold <= 1:
        raise FaithmapError(f"threshold must be in (0, 1], got {threshold}")
    b, h, w = s.shape
    flat = s.flatten(1)
    if mode == "fraction":
        k = max(1, math.ceil(threshold * h * w))
        order = torch.sort(-flat, dim=1, stable=True).indices[:, :k]
        top = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    elif mode == "relative":
        top = flat >= threshold * flat.max(1, keepdim=True).values
    else:
        raise FaithmapError(f"unknown hull mode {mode!r}; choose from: {', '.join(HULL_MODES)}")
    return (top & (flat > 0)).view(b, h, w)


def convex_hull_mask(pixels: torch.Tensor) -> torch.Tensor:
    """Boolean (B, H, W) hull masks ``M`` of boolean pixel sets (B, H, W); an empty set gives an empty hull."""
    from skimage.morphology import convex_hull_image

    p = pixels
    if p.dim() == 2:
        p = p.unsqueeze(0)
    arr = p.detach().bool().cpu().numpy()
    out = np.zeros_like(arr)
    for i, one in enumerate(arr):
        if one.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[i] = convex_hull_image(one)
    return torch.from_numpy(out).to(pixels.device)


def hull_masks(saliency: torch.Tensor, threshold: float = 0.5, mode: str = "fraction") -> torch.Tensor:
    """Hull masks (B, H, W) of each map's important pixels (:func:`important_pixels`)."""
    return convex_hull_mask(important_pixels(saliency, threshold, mode))


def hull_area(mask: torch.Tensor) -> torch.Tensor:
    """Area of hull masks (B, H, W) in pixels, as float (B,)."""
    return mask.flatten(1).sum(1).to(torch.float64)


def region_complexity(original: torch.Tensor, gad: torch.Tensor, threshold: float = 0.5,
                      mode: str = "fraction") -> torch.Tensor:
    """RC = A(CH_GAD) / A(CH_Orig) per image (eq. 1); NaN where the original has no important pixel.

    ``original`` and ``gad`` are maps (B, H, W) or, when boolean, the hull masks themselves.
    """
    m_orig = original if original.dtype == torch.bool else hull_masks(original, threshold, mode)
    m_gad = gad if gad.dtype == torch.bool else hull_masks(gad, threshold, mode)
    a_orig, a_gad = hull_area(m_orig), hull_area(m_gad)
    return torch.where(a_orig > 0, a_gad / a_orig.clamp_min(1), torch.full_like(a_orig, float("nan")))


def supplementary_mask(m_orig: torch.Tensor, m_gad: torch.Tensor) -> torch.Tensor:
    """``M_Orig - M_GAD`` of sec. 6.2 as a set difference (pixels of the original hull outside the GAD hull)."""
    return m_orig.bool() & ~m_gad.bool()


def occlude(model, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``I x (1 - M)`` in pixel space: the masked pixels set to black (0), as model inputs."""
    black = make_baseline("black", x, getattr(model, "mean", None), getattr(model, "std", None))
    keep = 1 - mask.to(x.dtype).unsqueeze(1)
    return phi(x, black, keep)


def region_sensitivity_of_masks(model, x: torch.Tensor, masks: torch.Tensor, target: torch.Tensor, *,
                                score: str = "logit", batch_size: int | None = DEFAULT_BATCH_SIZE,
                                base_scores: torch.Tensor | None = None) -> torch.Tensor:
    """RS(I, M, a) = |N_a(I) - N_a(I x (1 - M))| / sum(M) per image (eq. 2), float64 (B,).

    ``N_a`` is the model's output ``a`` = ``target``: the pre-softmax logit by default (the
    activations GAD works on), ``score="prob"`` for the softmax probability. An empty mask gives
    NaN (0/0). ``base_scores`` may pass ``N_a(I)`` when already known.
    """
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if masks.shape[0] != x.shape[0] or tuple(masks.shape[-2:]) != tuple(x.shape[-2:]):
        raise FaithmapError(f"masks must be (B, H, W) = ({x.shape[0]}, {x.shape[-2]}, {x.shape[-1]}), "
                            f"got {tuple(masks.shape)}")
    fn = score_of(score)
    bs = resolve_batch_size(batch_size, x.device)
    masks = masks.to(x.device)
    target = target.to(x.device)
    with model_guard(model), torch.no_grad():
        occ = torch.cat([fn(model(occlude(model, x[s], masks[s])), target[s]) for s in chunks(x.shape[0], bs)])
        if base_scores is None:
            base_scores = torch.cat([fn(model(x[s]), target[s]) for s in chunks(x.shape[0], bs)])
    area = hull_area(masks)
    diff = (base_scores.double() - occ.double()).abs()
    return torch.where(area > 0, diff / area.clamp_min(1), torch.full_like(diff, float("nan")))


@register_metric("hull_area", higher_is_better=False, category="complexity", paper="Mazini Rodrigues, Boutry & Najman, 2024",
                 summary="fraction of the image inside the convex hull of the map's top-50% pixels (GAD sec. 5)")
def hull_area_metric(model, x, saliency, target, *, threshold: float = 0.5, mode: str = "fraction",
                     batch_size=None, seed=0) -> torch.Tensor:
    """A(CH) / (H W) of each map's hull (the per-map half of RC, eq. 1); lower = simpler region."""
    s = _check_maps(saliency)
    m = hull_masks(s, threshold, mode)
    return (hull_area(m) / (s.shape[-2] * s.shape[-1])).float().to(x.device)


@register_metric("region_sensitivity", higher_is_better=True, category="faithfulness", paper="Mazini Rodrigues, Boutry & Najman, 2024",
                 summary="RS: absolute logit change per occluded pixel when the hull of the map's top-50% pixels is blacked out (GAD eq. 2)")
def region_sensitivity_metric(model, x, saliency, target, *, threshold: float = 0.5, mode: str = "fraction",
                              score: str = "logit", batch_size=None, seed=0) -> torch.Tensor:
    """RS(I, M, a) of eq. 2 with ``M`` the hull of the map's important pixels, upsampled to the input
    size when the map is coarser (nearest); 0 where the map has no important pixel (nothing occluded)."""
    s = _check_maps(saliency).to(x.device)
    if s.shape[0] != x.shape[0]:
        raise FaithmapError(f"got {s.shape[0]} maps for {x.shape[0]} images")
    m = hull_masks(s, threshold, mode)
    if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
        m = torch.nn.functional.interpolate(m[:, None].float(), size=x.shape[-2:], mode="nearest")[:, 0] > 0.5
    rs = region_sensitivity_of_masks(model, x, m, target, score=score, batch_size=batch_size)
    return torch.nan_to_num(rs, nan=0.0).float()
