"""iGOS++ (Khorram, Lawson & Li, ACM CHIL 2021) and its Table 3 ablations.

iGOS++ is the second configuration of the mask engine (:mod:`faithmap.methods.mask`): two masks,
a deletion mask ``Md`` and an insertion mask ``Mi``, four integrated-gradient terms (eq. 6), the
bilateral TV on their product (eq. 7) and the revised Armijo condition over the IG intervals
(eq. 8). The saliency map is ``1 - Md * Mi``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from ..explanation import Explanation
from ..errors import FaithmapError
from ..params import build, knob
from ..registry import register_method
from .mask import (FixedStep, IGOSParams, L1BTV, MaskOptimizer, PathTerm, check_init, check_resolution, default_l1,
                   line_search, parse_quadrature, run_mask_method)

ABLATIONS = {
    "insertion": "insertion only: one mask, I-GOS with its deletion term replaced by the insertion term",
    "naive": "I-GOS + insertion (naive): one mask, the deletion and insertion terms added (no separate masks)",
    "no-noise": "no noise on the integrated-gradient path images",
    "fixed-step": "a fixed step size (step_size) instead of the line search",
    "no-btv": "no smoothness term (the same as l2 = 0)",
}
"""Table 3 of the iGOS++ paper: ``--ablation NAME`` (several: comma-separated)."""

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


@dataclass(frozen=True, kw_only=True)
class IGOSPPParams(IGOSParams):
    """iGOS++'s settings: I-GOS's (:class:`faithmap.methods.mask.IGOSParams`), with what iGOS++ changes
    or adds (:func:`igos_plus_plus` gives the equations)."""

    ls_points: int = knob(2, "path points averaged in the line-search objective (eq. 8)")
    step_size: float = knob(1.0, "the step of the fixed-step ablation")
    smooth: Literal["btv", "tv"] = knob("btv", "smoothness term: bilateral TV (eq. 7) or plain TV")
    tv_beta: float = knob(2.0, "exponent of the TV's neighbour differences")
    sigma: float = knob(0.01, "width of the bilateral TV's image guidance")
    noise_product: bool = knob(False, "noise on the product terms too (the authors' code)")
    data_scale: float | None = knob(None, "weight of the data terms (None: 1/2 with two masks, else 1)")
    ablation: str | None = knob(None, "Table 3 ablations, comma-separated: " + ", ".join(ABLATIONS))
    final_mask: str = knob("product", "the map: product (1 - Md*Mi), deletion (1 - Md) or insertion (1 - Mi)")

    def __post_init__(self) -> None:
        super().__post_init__()
        abl = parse_ablation(self.ablation)
        final = FINAL_MASKS.get(str(self.final_mask).strip().lower())
        if final is None:
            raise FaithmapError(f"unknown final_mask {self.final_mask!r} for igos++; choose from: product, deletion, "
                                f"insertion")
        if final != "product" and abl & {"insertion", "naive"}:
            raise FaithmapError(f"final_mask={self.final_mask!r} needs iGOS++'s two masks; ablation {self.ablation!r} "
                                f"has one")


def _terms(abl: set[str], noisy: bool, noise_product: bool, data_scale: float | None):
    """iGOS++'s data terms (eq. 6), or those of a one-mask ablation: (terms, number of masks, final mask)."""
    if "insertion" in abl:
        w = 1.0 if data_scale is None else data_scale
        return [PathTerm("insertion", 0, noise=noisy, weight=w)], 1, 0
    if "naive" in abl:
        w = 1.0 if data_scale is None else data_scale
        return [PathTerm("deletion", 0, noise=noisy, weight=w), PathTerm("insertion", 0, noise=noisy, weight=w)], 1, 0
    # eq. 6: deletion and insertion on the product, deletion on Md (mask 0), insertion on Mi
    # (mask 1); noise on the two single-mask terms (the paper; noise_product adds it to the
    # product terms too, as the authors' code). data_scale: the authors' /2, applied to the
    # direction AND to the line-search objective so both are on one scale.
    w = 0.5 if data_scale is None else data_scale
    return [PathTerm("deletion", "product", noise=noisy and noise_product, weight=w),
            PathTerm("insertion", "product", noise=noisy and noise_product, weight=w),
            PathTerm("deletion", 0, noise=noisy, weight=w),
            PathTerm("insertion", 1, noise=noisy, weight=w)], 2, "product"


def igospp_optimizer(resolution, config: IGOSPPParams | None = None, **params: Any) -> MaskOptimizer:
    """The :class:`MaskOptimizer` of iGOS++ (or of one of its ablations) at ``resolution``, from the
    settings ``config`` (default: iGOS++'s) with ``params`` set (:func:`faithmap.params.build`)."""
    p = build(IGOSPPParams, "method igos++", config, params)
    abl = parse_ablation(p.ablation)
    rule, ig_steps = parse_quadrature(p.quadrature, p.ig_steps)
    noisy = p.noise_std > 0 and "no-noise" not in abl
    terms, n_masks, final = _terms(abl, noisy, p.noise_product, p.data_scale)
    l1 = default_l1(resolution) if p.l1 is None else p.l1
    l2 = 0.0 if "no-btv" in abl else p.l2
    step_rule = FixedStep(p.step_size) if "fixed-step" in abl else line_search(p)
    return MaskOptimizer(terms=terms, regularizer=L1BTV(l1, l2, p.tv_beta, p.sigma, p.smooth), step_rule=step_rule,
                         n_masks=n_masks, final=final, reg_on=final, iterations=p.iterations, ig_steps=ig_steps,
                         ls_points=p.ls_points, ls_rule=p.ls_rule, noise_std=p.noise_std if noisy else 0.0,
                         quadrature=rule, ls_noise=p.ls_noise and noisy, tol=float(p.tol))


@register_method(
    "igos++", family="mask", resolution="mask", min_resolution=2, paper="Khorram, Lawson & Li, ACM CHIL 2021",
    aliases=("igospp", "igos_pp"),
    summary="iGOS++: separate deletion and insertion masks, integrated gradients, bilateral TV, line search",
    fast={"iterations": 4, "ig_steps": 6}, params=IGOSPPParams,
)
def igos_plus_plus(model, x: torch.Tensor, target: torch.Tensor, p: IGOSPPParams) -> Explanation:
    """iGOS++ (Khorram, Lawson & Li, ACM CHIL 2021, eq. 4-8); settings :class:`IGOSPPParams`.

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
    the fixed-step ablation of the I-GOS paper's Table 3),
    ``no-btv``; comma-separated to combine. Returns saliency ``1 - Md*Mi`` at mask resolution;
    ``extras["masks"]`` holds the masks, ``history`` the line-search objective and steps.

    ``quadrature``, ``ls_noise`` and ``tol`` as in :func:`faithmap.methods.mask.igos` (``gl5``:
    five Gauss-Legendre nodes per IG term instead of ``ig_steps`` Riemann points).

    ``init`` (B, h, w), AOP's start (Zhang, Rao & Yang, AAAI 2021, eq. 5), is the start of the *combined*
    mask ``Md * Mi``: both masks start at ``sqrt(init)``, so the product that the regulariser and
    the saliency use starts exactly at ``init`` and neither game is favoured (one-mask ablations
    start at ``init``). ``warmup`` iterations use a weaker blur (``warmup_blur``; see
    :func:`faithmap.methods.mask.warmup_schedule`).

    ``final_mask`` picks the map: ``product`` (``1 - Md*Mi``, iGOS++), ``deletion`` (``1 - Md``) or
    ``insertion`` (``1 - Mi``) alone, the rows of the paper's Table 5 (preset
    ``igospp-table5``); the optimisation is the same. One-mask ablations have only ``product``.
    """
    hw = check_resolution(p.resolution, x, 2)
    opt = igospp_optimizer(hw, p)
    final = FINAL_MASKS[p.final_mask.strip().lower()]
    if final != "product":
        opt.final = final
    start = check_init(p.init, x, hw)
    if start is not None and opt.n_masks == 2:
        start = start.sqrt()
    p = replace(p, resolution=hw, ig_steps=opt.ig_steps, quadrature=opt.quadrature, l1=opt.regularizer.l1,
                l2=opt.regularizer.l2, noise_std=opt.noise_std, ls_noise=opt.ls_noise,
                ablation=",".join(sorted(parse_ablation(p.ablation))) or None,
                final_mask={0: "deletion", 1: "insertion"}.get(final, "product"))
    return run_mask_method(opt, model, x, target, p, name="igos++", init=start)
