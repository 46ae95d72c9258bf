"""Truth scores of saliency maps against known evidence, and their intervals.

Every map is first brought to input size the way faithmap's metrics do it
(:func:`faithmap.core.perturb.upsample`: bilinear, ``align_corners=True``); maps already at input
size are used as they are. Then, per image, with ``E`` the evidence (a boolean mask at input size):

* **pointing** (Zhang et al., ECCV 2016): whether the map's maximum lies in ``E`` dilated by
  ``tolerance`` pixels (Chebyshev distance; default 0: the maximum itself must be in ``E``). When
  several pixels share the maximum, the score is the share of them that lie in ``E`` (the expected
  hit of a random tie break): a constant map scores ``E``'s area share.
* **mass**: the share of the map's mass inside ``E``, ``sum(S E) / sum(S)`` (the relevance mass
  accuracy of Arras et al. 2022); a map with no positive value has no mass: NaN, counted as
  ``empty`` and left out of means.
* **auroc**: the area under the ROC curve of the map as a pixel detector of ``E``: the
  Mann-Whitney statistic with average ranks for ties (equal to scikit-learn's ``roc_auc_score``);
  0.5 for a constant map.

Signed maps (Gradient x Input, Integrated Gradients, ...): every score reads the map's
non-negative part ``max(S, 0)``, the evidence *for* the target; negative values count as 0.
* **outside** (tier 0): ``1 - mass``, the share of the map where the model provably cannot look;
  ``outside_nearest`` and ``outside_halfpixel`` are the same with the map upsampled by nearest
  neighbours (each map cell a block of pixels) and by bilinear interpolation with
  ``align_corners=False``: how much of the leak the upsampling itself makes.

Intervals: :func:`interval` bootstraps over model seeds and over images within each seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ..core.perturb import upsample

SCORES = ("pointing", "mass", "auroc")
"""Truth scores of every tier (higher is better)."""
TIER0_SCORES = ("outside", "outside_nearest", "outside_halfpixel")
"""Tier 0 only: map mass where the model cannot look (lower is better), under three upsamplings."""
HIGHER_IS_BETTER = {"pointing": True, "mass": True, "auroc": True, "outside": False, "outside_nearest": False,
                    "outside_halfpixel": False}
UPSAMPLING = {"outside": "bilinear, align_corners=True (faithmap's metrics)", "outside_nearest": "nearest-exact",
              "outside_halfpixel": "bilinear, align_corners=False"}


def at_input(saliency: torch.Tensor, size: tuple[int, int], mode: str = "corners") -> torch.Tensor:
    """(B, h, w) maps at input ``size`` (B, H, W), float32: ``corners`` as faithmap's metrics
    (:func:`~faithmap.core.perturb.upsample`), ``halfpixel`` (bilinear, ``align_corners=False``) or
    ``nearest`` (``nearest-exact``)."""
    s = saliency.detach().float().unsqueeze(1)
    size = tuple(int(v) for v in size)
    if tuple(s.shape[-2:]) == size:
        return s[:, 0]
    if mode == "corners":
        return upsample(s, size)[:, 0]
    if mode == "halfpixel":
        return F.interpolate(s, size=size, mode="bilinear", align_corners=False)[:, 0]
    if mode == "nearest":
        return F.interpolate(s, size=size, mode="nearest-exact")[:, 0]
    raise ValueError(f"unknown upsampling {mode!r}")


def pointing(maps: torch.Tensor, evidence: torch.Tensor, tolerance: int = 0) -> np.ndarray:
    """Pointing game per image (B,): the share of the maximal pixels inside ``evidence`` dilated by
    ``tolerance`` pixels (1 or 0 when the maximum is unique)."""
    m = maps.detach().double().flatten(1)
    e = evidence.to(maps.device).bool()
    if tolerance > 0:
        k = 2 * int(tolerance) + 1
        e = F.max_pool2d(e.float().unsqueeze(1), k, stride=1, padding=int(tolerance))[:, 0] > 0
    top = m == m.max(1, keepdim=True).values
    hits = (top & e.flatten(1)).sum(1).double() / top.sum(1).double()
    return hits.cpu().numpy()


def mass(maps: torch.Tensor, evidence: torch.Tensor) -> np.ndarray:
    """Share of each map's positive part inside ``evidence`` (B,); NaN for a map without positive values."""
    pos = maps.detach().double().clamp_min(0).flatten(1)
    e = evidence.to(maps.device).flatten(1)
    total = pos.sum(1)
    inside = (pos * e).sum(1)
    out = torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    return out.cpu().numpy()


def auroc(maps: torch.Tensor, evidence: torch.Tensor) -> np.ndarray:
    """Pixel AUROC of each map as a detector of ``evidence`` (B,): ``(R_E - n_E (n_E + 1) / 2) / (n_E n_not)``
    with ``R_E`` the sum of the evidence pixels' average ranks; NaN when ``evidence`` is empty or everything."""
    m = maps.detach().double().flatten(1).cpu().numpy()
    e = evidence.flatten(1).bool().cpu().numpy()
    ranks = rankdata(m, axis=1, method="average")
    n_pos = e.sum(1).astype(np.float64)
    n_neg = e.shape[1] - n_pos
    r_pos = (ranks * e).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def truth_scores(saliency: torch.Tensor, evidence: torch.Tensor, *, tier: int, tolerance: int = 0
                 ) -> dict[str, np.ndarray]:
    """Every truth score of maps ``saliency`` (B, h, w, native grid) against ``evidence`` (B, H, W),
    on the maps' non-negative part: :data:`SCORES`, and for tier 0 :data:`TIER0_SCORES` too. Each is
    (B,) float64."""
    size = tuple(evidence.shape[-2:])
    maps = at_input(saliency, size).clamp_min(0)  # the evidence for the target (module docstring)
    ev = evidence.to(maps.device).bool()
    out = {"pointing": pointing(maps, ev, tolerance), "mass": mass(maps, ev), "auroc": auroc(maps, ev)}
    if tier == 0:
        out["outside"] = 1.0 - out["mass"]
        for name, mode in (("outside_nearest", "nearest"), ("outside_halfpixel", "halfpixel")):
            out[name] = 1.0 - mass(at_input(saliency, size, mode), ev)
    return out


def interval(values, groups=None, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
             ) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of ``values``: the mean of the per-group means (each model seed counts
    the same) and a percentile bootstrap interval, resampling the groups (model seeds) with
    replacement and, inside each drawn group, its values (images) with replacement. NaN values are
    left out; ``n`` counts the rest. One group: the images alone are resampled."""
    v = np.asarray(values, dtype=np.float64)
    g = np.zeros(len(v), dtype=np.int64) if groups is None else np.asarray(groups)
    keep = ~np.isnan(v)
    v, g = v[keep], g[keep]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    members = [v[g == k] for k in np.unique(g)]
    point = float(np.mean([m.mean() for m in members]))
    rng = np.random.default_rng(seed)
    k = len(members)
    pick = rng.integers(k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), dtype=np.int64)
    # each (replicate, slot) draws its own resample of the images of the group it picked
    means = np.empty((n_boot, k))
    for j, m in enumerate(members):
        draws = rng.integers(len(m), size=(n_boot, k, len(m)))
        boot = m[draws].mean(2)  # (n_boot, k): group j resampled once per replicate and slot
        means = np.where(pick == j, boot, means)
    stats = means.mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(stats, [a, 1 - a])
    return point, float(lo), float(hi), int(v.size)


__all__ = ["HIGHER_IS_BETTER", "SCORES", "TIER0_SCORES", "UPSAMPLING", "at_input", "auroc", "interval", "mass",
           "pointing", "truth_scores"]
