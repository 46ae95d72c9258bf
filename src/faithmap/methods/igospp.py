"""iGOS++ (Khorram et al., ACM CHIL 2021; ``igos_plus_plus.txt``) and its Table 3 ablations.

iGOS++ is the second configuration of the mask engine (:mod:`faithmap.methods.mask`): two masks,
a deletion mask ``Md`` and an insertion mask ``Mi``, four integrated-gradient terms (eq. 6), the
bilateral TV on their product (eq. 7) and the revised Armijo condition over the IG intervals
(eq. 8). The saliency map is ``1 - Md * Mi``.
"""

from __future__ import annotations

import torch

from ..core.batching import DEFAULT_BATCH_SIZE, Seed
from ..explanation import Explanation
from ..errors import FaithmapError
from ..registry import register_method
from .mask import (ArmijoLineSearch, FixedStep, L1BTV, MaskOptimizer, PathTerm, check_init, check_resolution, default_l1,
                   parse_quadrature, run_mask_method)

ABLATIONS = {
    "insertion": "insertion only: one mask, I-GOS with its deletion term replaced by the insertion term",
    "naive": "I-GOS + insertion (naive): one mask, the deletion and insertion terms added (no separate masks)",
    "no-noise": "no noise on the integrated-gradient path images",
    "fixed-step": "a fixed step size (step_size) instead of the line search",
    "no-btv": "no smoothness term (the same as l2 = 0)",
}
"""Table 3 of ``igos_plus_plus.txt``: ``--ablation NAME`` (several: comma-separated)."""

_ALIASES = {"insertion-only": "insertion", "ins": "insertion", "i-gos+insertion": "naive",
            "igos+insertion": "naive", "naive-insertion": "naive", "nonoise": "no-noise",
            "fixed": "fixed-step", "fixed-step-size": "fixed-step", "fix-step": "fixed-step",
            "nobtv": "no-btv", "no-tv": "no-btv"}


FINAL_MASKS = {"product": "product", "xy": "product", "deletion": 0, "x": 0, "md": 0, "insertion": 1, "y": 1, "mi": 1}
"""``final_mask`` names: the product ``Md*Mi`` (``M_xy``), the deletion mask ``Md`` (``M_x``), the insertion
mask ``Mi`` (``M_y``)."""


def parse_ablation(ablation: str | None) -> set[str]:
    """The set of ablation switches named in ``ablation`` (comma-separated, case-insensitive)."""
    if ablation is None or str(ablation).strip().lower() in ("", "none", "full"):
        return set()
    out = set()
    for part in str(ablation).split(","):
        key = part.strip().lower().replace("_", "-").replace(" ", "-")
        key = _ALIASES.get(key, key)
        if key not in ABLATIONS:
            raise FaithmapError(f"unknown ablation {part.strip()!r} for igos++; choose from: {', '.join(ABLATIONS)}")
        out.add(key)
    if {"insertion", "naive"} <= out:
        raise FaithmapError("ablations 'insertion' and 'naive' exclude each other")
    return out


def igospp_optimizer(resolution, *, iterations: int = 15, ig_steps: int = 20, l1: float | None = None,
                     l2: float = 20.0, smooth: str = "btv", tv_beta: float = 2.0, sigma: float = 0.01,
                     noise_std: float = 0.2, noise_product: bool = False, data_scale: float | None = None,
                     alpha_max: float = 1000.0, decay: float = 0.2, beta: float = 1e-4, alpha_min: float = 1e-5,
                     ls_points: int = 2, ls_window: int | None = None, warm_start: bool = False, step_size: float = 1.0,
                     ablation: str | None = None, quadrature: str = "riemann", ls_noise: bool = False,
                     tol: float = 0.0) -> MaskOptimizer:
    """The :class:`MaskOptimizer` of iGOS++ (or of one of its ablations) at ``resolution``."""
    abl = parse_ablation(ablation)
    if smooth not in ("btv", "tv"):
        raise FaithmapError(f"smooth must be 'btv' or 'tv', got {smooth!r}")
    if ls_points < 1 or ig_steps < 1 or iterations < 0:
        raise FaithmapError("ig_steps and ls_points must be at least 1, iterations at least 0")
    if tol < 0 or noise_std < 0:
        raise FaithmapError("tol and noise_std must be at least 0")
    rule, ig_steps = parse_quadrature(quadrature, ig_steps)
    l1 = default_l1(resolution) if l1 is None else l1
    if "no-btv" in abl:
        l2 = 0.0
    noisy = noise_std > 0 and "no-noise" not in abl
    if "insertion" in abl:
        w = 1.0 if data_scale is None else data_scale
        terms = [PathTerm("insertion", 0, noise=noisy, weight=w)]
        n_masks, final = 1, 0
    elif "naive" in abl:
        w = 1.0 if data_scale is None else data_scale
        terms = [PathTerm("deletion", 0, noise=noisy, weight=w), PathTerm("insertion", 0, noise=noisy, weight=w)]
        n_masks, final = 1, 0
    else:
        # eq. 6: deletion and insertion on the product, deletion on Md (mask 0), insertion on Mi
        # (mask 1); noise on the two single-mask terms (the paper; noise_product adds it to the
        # product terms too, as the authors' code). data_scale: the authors' /2, applied to the
        # direction AND to the line-search objective so both are on one scale.
        w = 0.5 if data_scale is None else data_scale
        terms = [PathTerm("deletion", "product", noise=noisy and noise_product, weight=w),
                 PathTerm("insertion", "product", noise=noisy and noise_product, weight=w),
                 PathTerm("deletion", 0, noise=noisy, weight=w),
                 PathTerm("insertion", 1, noise=noisy, weight=w)]
        n_masks, final = 2, "product"
    if "fixed-step" in abl:
        step_rule = FixedStep(step_size)
    else:
        step_rule = ArmijoLineSearch(alpha_max, decay, beta, alpha_min, window=ls_window, warm_start=warm_start)
    return MaskOptimizer(terms=terms, regularizer=L1BTV(l1, l2, tv_beta, sigma, smooth), step_rule=step_rule,
                         n_masks=n_masks, final=final, reg_on=final, iterations=iterations, ig_steps=ig_steps,
                         ls_points=ls_points, noise_std=noise_std if noisy else 0.0, quadrature=rule,
                         ls_noise=bool(ls_noise) and noisy, tol=float(tol))


@register_method(
    "igos++", family="mask", resolution="mask", min_resolution=2, paper="igos_plus_plus.txt",
    aliases=("igospp", "igos_pp"),
    summary="iGOS++: separate deletion and insertion masks, integrated gradients, bilateral TV, line search",
    fast={"iterations": 4, "ig_steps": 6},
    bounds={"tol": "[0, inf)"},  # iterations, ig_steps, ls_points, noise_std: faithmap.params.COMMON_BOUNDS
)
def igos_plus_plus(model, x: torch.Tensor, target: torch.Tensor, *, resolution: int | tuple[int, int] = 28, iterations: int = 15,
                   ig_steps: int = 20, l1: float | None = None, l2: float = 20.0, smooth: str = "btv",
                   tv_beta: float = 2.0, sigma: float = 0.01, noise_std: float = 0.2, noise_product: bool = False,
                   data_scale: float | None = None, alpha_max: float = 1000.0, decay: float = 0.2, beta: float = 1e-4,
                   alpha_min: float = 1e-5, ls_points: int = 2, ls_window: int | None = None, warm_start: bool = False,
                   step_size: float = 1.0, ablation: str | None = None, quadrature: str = "riemann",
                   ls_noise: bool = False, tol: float = 0.0, baseline: str | torch.Tensor = "blur",
                   score: str = "prob", batch_size: int | None = DEFAULT_BATCH_SIZE,
                   seed: Seed = 0, init: torch.Tensor | None = None, warmup: int = 0,
                   warmup_blur: float = 0.5, final_mask: str = "product") -> Explanation:
    """iGOS++ (``igos_plus_plus.txt`` eq. 4-8).

    Minimises ``f(phi(I, B, Md)) - f(phi(B, I, Mi)) + f(phi(I, B, Md*Mi)) - f(phi(B, I, Md*Mi))
    + l1 * mean|1 - Md*Mi| + l2 * BTV(I, Md*Mi)`` over two ``resolution`` x ``resolution`` masks
    (eq. 4; ``phi(B, I, M)`` reveals the image where ``M`` is low). The data terms' gradients are
    integrated gradients along ``t * M``, t = 1/S .. 1 (eq. 2 and 5, S = ``ig_steps``), all four
    terms of all images sent through the model together; Gaussian noise (``noise_std``) is added
    to the path images of the ``Md`` and ``Mi`` terms (``noise_product=True``: also the product's).
    The data terms are weighted ``data_scale`` (default 1/2, the authors' averaging) in the
    direction and in the line-search objective alike. BTV (eq. 7) averages the TV of the mask and
    the image-guided TV of the upsampled mask (``sigma``, ``tv_beta``); ``smooth="tv"`` uses plain
    TV. One step per image from the revised Armijo condition over the IG intervals (eq. 8), with
    the objective averaged over ``ls_points`` noise-free path points. ``l1`` defaults to 10 at
    224 x 224 and 1 otherwise.

    ``ablation`` (Table 3): ``insertion``, ``naive``, ``no-noise``, ``fixed-step`` (``step_size``, 1 as in
    the fixed-step ablation of ``igos.txt`` Table 3),
    ``no-btv``; comma-separated to combine. Returns saliency ``1 - Md*Mi`` at mask resolution;
    ``extras["masks"]`` holds the masks, ``history`` the line-search objective and steps.

    ``quadrature``, ``ls_noise`` and ``tol`` as in :func:`faithmap.methods.mask.igos` (``gl5``:
    five Gauss-Legendre nodes per IG term instead of ``ig_steps`` Riemann points).

    ``init`` (B, h, w), AOP's start (``aop_sigcam.txt`` eq. 5), is the start of the *combined*
    mask ``Md * Mi``: both masks start at ``sqrt(init)``, so the product that the regulariser and
    the saliency use starts exactly at ``init`` and neither game is favoured (one-mask ablations
    start at ``init``). ``warmup`` iterations use a weaker blur (``warmup_blur``; see
    :func:`faithmap.methods.mask.warmup_schedule`).

    ``final_mask`` picks the map: ``product`` (``1 - Md*Mi``, iGOS++), ``deletion`` (``1 - Md``) or
    ``insertion`` (``1 - Mi``) alone, the rows of ``igos_plus_plus.txt`` Table 5 (preset
    ``igospp-table5``); the optimisation is the same. One-mask ablations have only ``product``.
    """
    h, w = check_resolution(resolution, x, 2)
    final = FINAL_MASKS.get(str(final_mask).strip().lower())
    if final is None:
        raise FaithmapError(f"unknown final_mask {final_mask!r} for igos++; choose from: product, deletion, insertion")
    opt = igospp_optimizer((h, w), iterations=iterations, ig_steps=ig_steps, l1=l1, l2=l2, smooth=smooth,
                           tv_beta=tv_beta, sigma=sigma, noise_std=noise_std, noise_product=noise_product,
                           data_scale=data_scale, alpha_max=alpha_max, decay=decay, beta=beta, alpha_min=alpha_min,
                           ls_points=ls_points, ls_window=ls_window, warm_start=warm_start, step_size=step_size,
                           ablation=ablation, quadrature=quadrature, ls_noise=ls_noise, tol=tol)
    params = dict(resolution=(h, w), iterations=iterations, ig_steps=opt.ig_steps, quadrature=opt.quadrature,
                  l1=opt.regularizer.l1, l2=opt.regularizer.l2, smooth=smooth, noise_std=opt.noise_std,
                  ls_points=ls_points, ls_noise=opt.ls_noise, tol=opt.tol,
                  ablation=",".join(sorted(parse_ablation(ablation))) or None, seed=seed)
    if final != "product":
        if opt.n_masks != 2:
            raise FaithmapError(f"final_mask={final_mask!r} needs iGOS++'s two masks; ablation {ablation!r} has one")
        opt.final = final
        params["final_mask"] = {0: "deletion", 1: "insertion"}[final]
    start = check_init(init, x, (h, w))
    if start is not None and opt.n_masks == 2:
        start = start.sqrt()
    return run_mask_method(opt, model, x, target, name="igos++", params=params, resolution=(h, w),
                           baseline=baseline, score=score, batch_size=batch_size, seed=seed, init=start,
                           warmup=warmup, warmup_blur=warmup_blur)
