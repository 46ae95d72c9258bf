"""AOP and SIGCAM (Zhang, Rao & Yang, AAAI 2021).

AOP ("Activation Optimized with Perturbation") is a composition of two registered methods, not a
new algorithm:

1. stage 1, any activation-based method (registry family ``cam``: Grad-CAM, WGradCAM,
   Grad-CAM++, Expected Grad-CAM, ...) gives a base map on its layer's grid;
2. the base map is turned into a start mask (eq. 4-5, :func:`base_mask_transform`): min-max
   normalised, cells below ``theta`` set to 0, scaled by ``lam``, upsampled to the refinement
   resolution (28 x 28) and flipped, ``M0 = 1 - up(lam * filter(M))``;
3. stage 2, any registered mask optimiser (family ``mask``: I-GOS, iGOS++, Fong-Vedaldi's
   ``mask``) plays the deletion game from ``M0`` instead of from all ones, with the "start-up":
   the first ``warmup`` iterations use a weaker blur baseline
   (:func:`faithmap.methods.mask.warmup_schedule`).

SIGCAM is AOP(WGradCAM, I-GOS) with the paper's settings (ImageNet: theta = 0.7, lam = 0.15;
COCO: theta = 0.6, lam = 0.25; 28 x 28; 5 start-up iterations; everything else I-GOS's registered
defaults). Both stages are looked up in :data:`faithmap.registry.METHODS`, so any pair the
registry allows works.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..explanation import Explanation
from ..core.perturb import grid_size
from ..errors import FaithmapError
from ..params import knob, record
from ..registry import METHODS, MethodSpec, check_params, register_method
from .mask import EngineParams, WarmupParams, check_resolution

BASE_FAMILY = "cam"
REFINE_FAMILY = "mask"

SIGCAM_PRESETS: dict[str, tuple[float, float]] = {"imagenet": (0.7, 0.15), "coco": (0.6, 0.25)}
"""(theta, lambda) of eq. 5 per data set (the paper's Experimental Setup)."""


def base_methods() -> list[str]:
    """Registered methods usable as AOP's stage 1 (family ``cam``)."""
    return [s.name for s in METHODS if s.family == BASE_FAMILY]


REFINE_NEEDS = ("init", "warmup", "warmup_blur")
"""What a stage-2 method must take: the start mask and the start-up blur (Extremal Perturbation, a
``mask`` method whose masks are fixed-area smooth masks of their own parameters, takes neither)."""


def refine_methods() -> list[str]:
    """Registered methods usable as AOP's stage 2 (family ``mask``, taking a start mask and a start-up)."""
    return [s.name for s in METHODS if s.family == REFINE_FAMILY and set(REFINE_NEEDS) <= set(s.params)]


def minmax01(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1] (eq. 4); a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat)).view_as(maps)


def base_mask_transform(base: torch.Tensor, theta: float, lam: float, resolution: int | tuple[int, int]
                        ) -> torch.Tensor:
    """The start mask of AOP's refinement stage from base maps (B, h0, w0): (B, h, w).

    ``M = minmax(base)`` (eq. 4); ``M = lam * filter(M < theta)`` (eq. 5: cells below ``theta``
    set to 0, then scaled); ``M0 = 1 - up(M, (h, w))`` (the deletion-game start). ``up`` is bilinear
    with pixel-centre alignment (``align_corners=False``, as CAMs are resized to images), which maps
    a layer's cells to the right places of the mask grid; when the base grid is finer than the
    mask, it is area-weighted (antialiased).
    """
    if base.dim() == 4 and base.shape[1] == 1:
        base = base[:, 0]
    if base.dim() != 3:
        raise FaithmapError(f"base maps must be (B, h, w), got {tuple(base.shape)}")
    if not 0 <= theta <= 1:
        raise FaithmapError(f"theta must be in [0, 1], got {theta}")
    if not 0 <= lam <= 1:
        raise FaithmapError(f"the modulating factor lam must be in [0, 1], got {lam}")
    m = minmax01(base.detach())
    m = torch.where(m < theta, torch.zeros_like(m), m) * lam
    h, w = grid_size(resolution)
    if tuple(m.shape[-2:]) != (h, w):
        down = h < m.shape[-2] or w < m.shape[-1]
        m = F.interpolate(m.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False,
                          antialias=down)[:, 0]
    return (1.0 - m).clamp(0, 1)


def _stage_params(spec: MethodSpec, fast: bool, given: dict | None, extra: dict[str, Any]) -> dict[str, Any]:
    """A stage's parameters: its ``fast`` overrides (if asked), then ``given``, then AOP's own
    (``extra``, only those the stage takes and ``given`` does not set)."""
    params = dict(spec.fast) if fast else {}
    params.update(given or {})
    for k, v in extra.items():
        if v is not None and k in spec.params and k not in (given or {}):
            params[k] = v
    check_params(spec, params)
    return params


def _stage(name: str, family: str, role: str) -> MethodSpec:
    spec = METHODS.get(name)
    if spec.family == family == REFINE_FAMILY and spec.name not in refine_methods():
        raise FaithmapError(f"aop refine must start from a given mask ({', '.join(REFINE_NEEDS)}): one of "
                            f"{', '.join(refine_methods())}; {spec.name} takes no start mask")
    if spec.family != family:
        choices = base_methods() if family == BASE_FAMILY else refine_methods()
        raise FaithmapError(f"aop {role} must be a registered '{family}' method ({', '.join(choices)}), "
                            f"got {spec.name} ({spec.family})")
    return spec


@dataclass(frozen=True, kw_only=True)
class AOPStageParams(WarmupParams, EngineParams):
    """What AOP and SIGCAM share: the eq. 5 transform, the start-up and what goes to stage 2."""

    warmup: int = knob(5, "first iterations of stage 2 on a weaker blur (the paper's start-up: 5)")
    theta: float = knob(0.7, "cells of the min-max normalised base map below theta are dropped (eq. 5)")
    lam: float = knob(0.15, "modulating factor of the base map in the start mask (eq. 5)")
    iterations: int | None = knob(None, "stage 2's iterations (None: its registered default)")
    layer: str | None = knob(None, "stage 1's layer (None: the CAM method's default)")
    refine_params: dict | None = knob(None, "more parameters of stage 2 (e.g. {'ig_steps': 10})")
    fast_stages: bool = knob(False, "run each stage with its registered fast settings")

    def __post_init__(self) -> None:
        for key in ("init", "resolution", "warmup", "warmup_blur"):
            if key in (self.refine_params or {}):
                raise FaithmapError(f"set {key} as an aop parameter, not in refine_params")


@dataclass(frozen=True, kw_only=True)
class AOPParams(AOPStageParams):
    """AOP's settings: the shared ones and the choice of both stages."""

    base: str = knob("gradcam", "stage 1: a registered 'cam' method")
    refine: str = knob("igos", "stage 2: a registered 'mask' method that takes a start mask")
    base_params: dict | None = knob(None, "more parameters of stage 1")


@dataclass(frozen=True, kw_only=True)
class SIGCAMParams(AOPStageParams):
    """SIGCAM's settings: AOP(WGradCAM, I-GOS) with the paper's (theta, lam) per data set."""

    preset: str = knob("imagenet", "(theta, lam) of a data set: " + ", ".join(SIGCAM_PRESETS))
    theta: float | None = knob(None, "overrides the preset's theta (eq. 5)")
    lam: float | None = knob(None, "overrides the preset's lam (eq. 5)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if str(self.preset).strip().lower() not in SIGCAM_PRESETS:
            raise FaithmapError(f"unknown sigcam preset {self.preset!r}; choose from: {', '.join(SIGCAM_PRESETS)}")


def run_aop(model, x: torch.Tensor, target: torch.Tensor, p: AOPParams, *, name: str) -> Explanation:
    """Stage 1, the eq. 5 transform, stage 2 (see the module docstring)."""
    b_spec = _stage(p.base, BASE_FAMILY, "base")
    r_spec = _stage(p.refine, REFINE_FAMILY, "refine")
    h, w = check_resolution(p.resolution, x, 2)
    shared = {"batch_size": p.batch_size, "seed": p.seed}
    bp = _stage_params(b_spec, p.fast_stages, p.base_params, {"layer": p.layer, **shared})
    counter = getattr(model, "counter", None)
    snap = counter.images if counter is not None else 0
    eb = b_spec.fn(model, x, target, **bp)
    base_images = (counter.images - snap) if counter is not None else 0
    base_map = eb.saliency.detach()
    start = base_mask_transform(base_map, p.theta, p.lam, (h, w))
    rp = _stage_params(r_spec, p.fast_stages, p.refine_params, {"iterations": p.iterations, **shared})
    rp.update(resolution=(h, w), init=start, warmup=int(p.warmup), warmup_blur=p.warmup_blur)
    er = r_spec.fn(model, x, target, **rp)
    history = dict(er.history)
    if "images" in history:  # cumulative from the start of AOP, base stage included
        history["images"] = [base_images + n for n in history["images"]]
    history["base_images"] = base_images
    params = {**record(p), "base": b_spec.name, "refine": r_spec.name, "resolution": (h, w),
              **{f"base.{k}": v for k, v in bp.items() if k not in ("batch_size",)},
              **{f"refine.{k}": v for k, v in er.params.items()}}
    extras = {"base_map": base_map, "init": start, "base": b_spec.name, "refine": r_spec.name,
              "masks": er.extras.get("masks"), "layer": eb.extras.get("layer")}
    return Explanation(saliency=er.saliency, target=target, method=name, params=params, history=history,
                       extras=extras)


@register_method(
    "aop", family="aop", resolution="mask", min_resolution=2, paper="Zhang, Rao & Yang, AAAI 2021",
    summary="AOP: a CAM base map (base=, family cam) thresholded and scaled into the start mask of a "
            "mask optimiser (refine=, family mask) with a weaker-blur start-up",
    fast={"fast_stages": True, "warmup": 2}, params=AOPParams,
)
def aop(model, x: torch.Tensor, target: torch.Tensor, p: AOPParams) -> Explanation:
    """AOP (Zhang, Rao & Yang, AAAI 2021, "Optimizing Activation with Perturbation" and eq. 4-6);
    settings :class:`AOPParams`.

    ``base``: a registered ``cam`` method (stage 1; ``layer`` and ``base_params`` go to it);
    ``refine``: a registered ``mask`` method (stage 2; ``iterations`` and ``refine_params`` go to it,
    otherwise its registered defaults apply). The base map becomes the start mask
    ``1 - up(lam * filter(minmax(map) < theta))`` at ``resolution`` (eq. 5,
    :func:`base_mask_transform`; defaults: the paper's ImageNet theta = 0.7, lam = 0.15, 28 x 28);
    the first ``warmup`` iterations use a blur ``warmup_blur`` times as strong (kernel and sigma).
    ``fast_stages`` applies each stage's registered ``fast`` settings.
    Returns stage 2's saliency; ``extras`` holds ``base_map`` and the start mask ``init``;
    ``history["images"]`` counts model images from the start of stage 1.
    """
    return run_aop(model, x, target, p, name="aop")


@register_method(
    "sigcam", family="aop", resolution="mask", min_resolution=2, paper="Zhang, Rao & Yang, AAAI 2021",
    summary="SIGCAM: AOP with WGradCAM as base and I-GOS as refinement (preset imagenet or coco)",
    fast={"fast_stages": True, "warmup": 2}, params=SIGCAMParams,
)
def sigcam(model, x: torch.Tensor, target: torch.Tensor, p: SIGCAMParams) -> Explanation:
    """SIGCAM (Zhang, Rao & Yang, AAAI 2021, "SIGCAM" and Experimental Setup): AOP(WGradCAM, I-GOS);
    settings :class:`SIGCAMParams`.

    ``preset`` gives (theta, lam): ``imagenet`` (0.7, 0.15) or ``coco`` (0.6, 0.25); ``theta``/``lam``
    override it. 28 x 28 mask, 5 start-up iterations; every other I-GOS parameter (iterations,
    integration steps, L1/TV weights, line search) is the registered ``igos`` default unless set
    with ``iterations`` / ``refine_params``.
    """
    key = str(p.preset).strip().lower()
    t0, l0 = SIGCAM_PRESETS[key]
    shared = {f.name: getattr(p, f.name) for f in fields(AOPStageParams)}
    shared.update(theta=t0 if p.theta is None else p.theta, lam=l0 if p.lam is None else p.lam)
    out = run_aop(model, x, target, AOPParams(base="wgradcam", refine="igos", **shared), name="sigcam")
    out.params["preset"] = key
    return out
