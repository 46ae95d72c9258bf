"""Proxy metrics on the maps that the truth scores judged, and how far each proxy agrees with the truth.

The proxies are faithmap's registered metrics (:data:`faithmap.registry.METRICS`), called as
``faithmap evaluate`` calls them: deletion, insertion and over-all (one set of curves, shared inside a
:func:`faithmap.core.memo.sharing` scope), pixel flipping, IROF, faithfulness estimate and the RISE
deletion/insertion curves. ``quick`` runs coarser curves (about 8 steps each, 16 IROF superpixels asked):
a CI-sized run, not a measurement.

Agreement: for each scenario, each method's mean proxy score and mean truth score over the same
images; the Spearman rank correlation across methods (scipy) between the two; and a percentile
bootstrap interval that resamples the images (within each model seed, the same images for every
method). ``agreement`` is the correlation signed so that > 0 means "the methods the proxy ranks
better are the methods the truth ranks better" (lower-is-better scores are turned around).
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from ..core.memo import sharing
from ..errors import FaithmapError
from ..registry import METRICS

PROXIES = ("deletion", "insertion", "overall", "pixel_flipping", "irof", "faithfulness_estimate", "rise_deletion",
           "rise_insertion")
QUICK_STEPS = 8


def _quick_options(name: str, saliency: torch.Tensor, x: torch.Tensor) -> dict:
    """Coarse curve settings for ``quick`` runs: about :data:`QUICK_STEPS` steps per curve."""
    cells = saliency.shape[-2] * saliency.shape[-1]
    pixels = x.shape[-2] * x.shape[-1]
    if name in ("deletion", "insertion", "overall"):
        return {"step": max(1, cells // QUICK_STEPS)}
    if name in ("pixel_flipping", "faithfulness_estimate"):
        return {"pixels_in_step": max(1, pixels // QUICK_STEPS)}
    if name == "irof":
        return {"n_segments": 2 * QUICK_STEPS}  # SLIC makes fewer segments than asked; 8 can end as 1
    if name in ("rise_deletion", "rise_insertion"):
        return {"step": max(1, pixels // QUICK_STEPS)}
    return {}


def proxy_scores(model, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor, *, seeds, names=PROXIES,
                 batch_size: int | None = None, quick: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each proxy's per-image scores (B,) of maps ``saliency`` (B, h, w, native grid), and the proxies
    that refused these images (name -> their one-line reason; their scores are NaN), e.g. IROF on an
    image that SLIC cuts into fewer than 2 superpixels.

    ``seeds``: one int per image for the metrics that draw random numbers (each metric gets its own
    stream: ``seed + 1 + its index in names``)."""
    out: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    sal = saliency.detach().float()
    with sharing():
        for j, name in enumerate(names):
            spec = METRICS.get(name)
            params = inspect.signature(spec.fn).parameters
            call = _quick_options(name, sal, x) if quick else {}
            if "batch_size" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
                call["batch_size"] = batch_size
            if "seed" in params:
                call["seed"] = [int(s) + 1 + j for s in seeds]
            try:
                res = spec.fn(model, x, sal, target, **call)
            except FaithmapError as exc:
                errors[name] = str(exc)
                out[name] = np.full(x.shape[0], np.nan)
                continue
            scores = res.scores if hasattr(res, "scores") else res
            out[name] = torch.as_tensor(scores).detach().double().cpu().reshape(-1).numpy()
    return out, errors


def _ranks_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of the columns of a and b (methods x replicates) -> (replicates,)."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra = ra - ra.mean(0)
    rb = rb - rb.mean(0)
    den = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / den, np.nan)


def _resample(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, units) unit indices resampled with replacement within each stratum (model seed)."""
    idx = np.empty((n_boot, len(strata)), dtype=np.int64)
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        idx[:, members] = members[rng.integers(len(members), size=(n_boot, len(members)))]
    return idx


def _means(values: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    """Per-method means (methods,) or, with resampled indices, (methods, replicates)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a method whose every drawn map is empty
        if idx is None:
            return np.nanmean(values, 1)
        return np.nanmean(values[:, idx], 2)


def agreement(proxy: np.ndarray, truth: np.ndarray, strata, *, proxy_higher: bool, truth_higher: bool,
              n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Spearman correlation across methods of two (methods, units) score tables, with its bootstrap
    interval (units resampled within ``strata``). Methods without a finite mean in either table are
    left out; fewer than 3 methods give NaN."""
    proxy, truth = np.asarray(proxy, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    strata = np.asarray(strata)
    pm, tm = _means(proxy, None), _means(truth, None)
    keep = np.isfinite(pm) & np.isfinite(tm)
    sign = (1 if proxy_higher else -1) * (1 if truth_higher else -1)
    nan = {"rho": math.nan, "low": math.nan, "high": math.nan, "agreement": math.nan, "agreement_low": math.nan,
           "agreement_high": math.nan, "methods": int(keep.sum())}
    if keep.sum() < 3:
        return nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant column: NaN, reported as such
        rho = float(spearmanr(pm[keep], tm[keep]).statistic)
    rng = np.random.default_rng(seed)
    idx = _resample(strata, n_boot, rng)
    bp, bt = _means(proxy[keep], idx), _means(truth[keep], idx)
    ok = np.isfinite(bp).all(0) & np.isfinite(bt).all(0)
    boots = _ranks_corr(bp[:, ok], bt[:, ok])
    boots = boots[np.isfinite(boots)]
    a = (1 - level) / 2
    lo, hi = (np.quantile(boots, [a, 1 - a]) if boots.size else (math.nan, math.nan))
    lo, hi = float(lo), float(hi)
    ag = sorted((sign * lo, sign * hi))
    return {"rho": rho, "low": lo, "high": hi, "agreement": sign * rho, "agreement_low": ag[0],
            "agreement_high": ag[1], "methods": int(keep.sum())}


def higher_is_better(name: str) -> bool:
    return bool(METRICS.get(name).higher_is_better)


__all__ = ["PROXIES", "agreement", "higher_is_better", "proxy_scores"]
