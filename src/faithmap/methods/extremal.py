"""Extremal Perturbation (Fong, Patrick & Vedaldi, ICCV 2019, "Understanding deep networks via
extremal perturbations and smooth masks"), a configuration of the mask engine.

An extremal perturbation of area ``a`` is the smooth mask ``m`` covering a fraction ``a`` of the image
that keeps the target's score highest when only ``m`` is kept (the *preservation* game), lowest when
``m`` is removed (the *deletion* game), or both (``dual``: the preserved score minus the deleted one).
Every part is a piece of :class:`faithmap.methods.mask.MaskOptimizer`; none is a second optimiser:

* **parametrisation** (:class:`SmoothMask`): the engine's masks are the low-resolution parameters
  ``p`` (one grid point every ``step`` pixels); the mask at pixel ``u`` is the smooth max over the
  grid points ``i`` near ``u`` of ``g(|u - u_i|) * p_i`` (a max-convolution with the kernel ``g``,
  the max softened by a temperature), so every mask of the family is at least as smooth as ``g``;
* **perturbation** (:class:`BlurPyramid`): a pixel keeping ``k`` of the image shows the image
  blurred with ``sigma = max_blur * (1 - k)``, interpolated linearly between ``levels`` blur levels;
* **regulariser** (:class:`AreaLoss`): ``lambda_t * mean((sort(m) - r_a)^2)`` with ``r_a`` the
  sorted target (zeros, then ``a * N`` ones) and ``lambda_t = area_weight * area_growth^t`` growing
  with the iteration ``t``, so the area becomes a constraint by the end;
* **terms**: preservation is the engine's insertion game and deletion its deletion game on
  ``M = 1 - m`` (one term per area; ``dual`` has both), on the model's logit;
* **step rule**: :class:`faithmap.methods.mask.MomentumStep` (SGD with momentum, projected to [0, 1]).

The defaults are those of the authors' TorchRay code for 224 px inputs (read to understand, not
copied; it is CC BY-NC): 800 iterations, learning rate 0.01, momentum 0.9, area weight 300 growing by
1.0035 an iteration, grid step 7 px, kernel width 21 px, temperature 1/20, 8 blur levels up to sigma
20 px, the image flipped left-right on even iterations. Pixel sizes scale with the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.batching import model_guard
from ..explanation import Explanation
from ..core.perturb import BASELINES, gaussian_blur, make_baseline, phi
from ..errors import FaithmapError
from ..params import knob, record
from ..registry import register_method
from .mask import MaskOptimizer, MaskRunParams, MaskState, MomentumStep, PathTerm, check_resolution

PAPER_SIZE = 224
"""The input size the paper's pixel settings (step 7, kernel 21, blur 20) are given for."""
GAMES = {"preserve": ("insertion",), "preservation": ("insertion",), "delete": ("deletion",),
         "deletion": ("deletion",), "dual": ("insertion", "deletion"), "union": ("insertion", "deletion")}
"""Game name -> the engine games of its terms (preservation = insertion on ``1 - m``)."""


def kernel(d: torch.Tensor, sigma: float) -> torch.Tensor:
    """The 1-D smooth-mask kernel at distance ``d`` px: 1 up to ``sigma / 2``, then a Gaussian fall-off
    of standard deviation ``sigma / 2`` (a flat-topped Gaussian, as in the authors' code)."""
    return torch.exp(-((d.abs() - sigma / 2).clamp_min(0) ** 2) / (2 * (sigma / 2) ** 2))


class _Pass:
    """One axis of :class:`SmoothMask`: ``n_grid`` grid points -> ``n_out`` pixels along the last dim.

    Pixel ``u`` pools the points ``i`` within ``2 * sigma`` px: ``smax_i kernel(u - c_i) * q_i`` with
    ``smax(z) = sum z softmax(z / temperature)``; grid point ``i`` sits at the pixel coordinate
    ``c_i = (i + 0.5) * n_out / n_grid - 0.5`` (the grid spans the axis evenly), and points beyond
    the ends take the value of the end point.
    """

    def __init__(self, n_grid: int, n_out: int, sigma: float, temperature: float, device, dtype):
        cell = n_out / n_grid
        reach = 2.0 * sigma  # the kernel is below 1.2 % beyond
        r = math.ceil(reach / cell) + 1
        u = torch.arange(n_out, dtype=torch.float64)
        near = ((u + 0.5) * n_grid / n_out).floor().long().clamp(0, n_grid - 1)  # nearest grid point
        pts = near[:, None] + torch.arange(-r, r + 1)[None, :]  # (n_out, 2r + 1)
        d = u[:, None] - ((pts.double() + 0.5) * cell - 0.5)
        # points beyond the grid repeat the edge parameter (at their own positions), so that every
        # pixel pools the same configuration and a constant grid gives a mask without edge effects
        valid = (d.abs() <= reach) | (pts == near[:, None])
        self.index = pts.clamp(0, n_grid - 1).to(device)
        self.weight = torch.where(valid, kernel(d, sigma), 0.0).to(device=device, dtype=dtype)
        self.valid = valid.to(device=device, dtype=dtype)
        self.inv_t = 1.0 / temperature

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        z = q[..., self.index] * self.weight  # (..., n_out, 2r + 1)
        # softmax(z / T) over the valid points, shifted by the (constant) max: one exp, no -inf masking
        e = torch.exp((z - z.detach().amax(-1, keepdim=True)) * self.inv_t) * self.valid
        return (e * z).sum(-1) / e.sum(-1)


class SmoothMask:
    """Smooth masks (B, K, H, W) from parameters (B, K, gh, gw) in [0, 1] (paper sec. 3, "smooth masks").

    ``m(u) = smax_i g(u - u_i) p_i``, a smooth max-convolution of the parameter grid with a
    separable kernel ``g(dy, dx) = kernel(dy) kernel(dx)`` (flat-topped: 1 within ``sigma / 2`` px of
    a grid point on both axes, so a block of ones gives a flat plateau; a Gaussian fall-off of
    standard deviation ``sigma / 2`` beyond). Because the kernel is a product of non-negative
    factors, the max-convolution separates exactly: ``max_i kernel(dy_i) max_j kernel(dx_j) p_ij``;
    the smooth max (temperature ``temperature``; hard max as it tends to 0) is applied the same way,
    one axis after the other. That costs about ``2 * (4 sigma / step + 3)`` terms a pixel instead of
    the ``(4 sigma / step + 3)^2`` of a 2-D window (13 + 13 against about 140 at 224 px).
    """

    def __init__(self, grid: tuple[int, int], size: tuple[int, int], sigma: float, temperature: float,
                 device=None, dtype=torch.float32):
        (gh, gw), (hgt, wid) = grid, size
        self.grid, self.size = (gh, gw), (hgt, wid)
        self.cols = _Pass(gw, wid, sigma, temperature, device, dtype)
        self.rows = _Pass(gh, hgt, sigma, temperature, device, dtype)

    def __call__(self, params: torch.Tensor, size=None) -> torch.Tensor:
        """(B, K, gh, gw) -> (B, K, H, W) masks in [0, 1] (``size``, the input's, is fixed at construction)."""
        q = self.cols(params)  # (B, K, gh, W)
        m = self.rows(q.transpose(-1, -2)).transpose(-1, -2)  # (B, K, H, W)
        return m.clamp(0, 1)


class Perturbed:
    """``compose(idx, keep, iteration)`` for the engine: images whose pixels keep ``keep`` of the image.

    With ``baseline=None`` the perturbation is the blur pyramid of the paper (:meth:`pyramid`):
    ``levels`` Gaussian blurs of sigma ``max_blur * (1 - l / (levels - 1))``, l = 0 .. levels - 1
    (the last level the image itself), each pixel linearly interpolated between the two levels
    around ``keep * (levels - 1)``. Otherwise ``phi(I, B, keep)`` with a faithmap baseline ``B``
    (``blur`` is I-GOS's). ``jitter`` flips the images left-right on even iterations.
    """

    def __init__(self, x: torch.Tensor, baseline: torch.Tensor | None, levels: int, max_blur: float, jitter: bool):
        self.jitter = jitter
        self.x, self.baseline = x, baseline
        self.levels = levels
        if baseline is None:
            self.pyr = self.pyramid(x, levels, max_blur)  # (B, L, C, H, W)
            self.step = self.pyr[:, 1:] - self.pyr[:, :-1]  # level l to l + 1

    @staticmethod
    def pyramid(x: torch.Tensor, levels: int, max_blur: float) -> torch.Tensor:
        """(B, L, C, H, W): blur levels from the strongest (sigma ``max_blur``) to the image itself."""
        out = []
        for lvl in range(levels):
            s = max_blur * (1 - lvl / (levels - 1))
            out.append(x if s <= 0 else gaussian_blur(x, 2 * math.ceil(4 * s) + 1, s))
        return torch.stack(out, 1)

    def __call__(self, idx: torch.Tensor, keep: torch.Tensor, iteration: int) -> torch.Tensor:
        if self.baseline is not None:
            images = phi(self.x[idx], self.baseline[idx], keep)
        else:  # level lo + frac: pyr[lo] + frac * (pyr[lo + 1] - pyr[lo]), two levels gathered a pixel
            pos = keep.clamp(0, 1) * (self.levels - 1)  # (N, 1, H, W)
            lo = pos.detach().floor().clamp(max=self.levels - 2)
            li = lo.long().unsqueeze(2).expand(-1, -1, self.pyr.shape[2], -1, -1)  # (N, 1, C, H, W)
            images = self.pyr[idx].gather(1, li)[:, 0] + (pos - lo) * self.step[idx].gather(1, li)[:, 0]
        if self.jitter and iteration % 2 == 0:
            images = images.flip(-1)
        return images


@dataclass
class AreaLoss:
    """The area constraint as a loss: ``lambda_t * sum_k mean((sort(m_k) - r_{a_k})^2)`` per image.

    ``r_a`` is the sorted target mask: ``N - round(a N)`` zeros then ``round(a N)`` ones, N the
    pixels; ``lambda_t = weight * growth^t`` at iteration t (``MaskState.iteration``). The masks
    (one per area) are expanded by ``expand`` first; the regulariser gets all of them
    (``reg_on="all"``).
    """

    expand: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
    areas: Sequence[float]
    weight: float = 300.0
    growth: float = 1.0035

    @staticmethod
    def targets(areas: Sequence[float], n: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """(K, n): the sorted target vector of each area."""
        r = torch.zeros(len(areas), n, device=device, dtype=dtype)
        for k, a in enumerate(areas):
            ones = int(round(a * n))
            if ones:
                r[k, n - ones:] = 1
        return r

    @classmethod
    def residual(cls, masks: torch.Tensor, areas: Sequence[float]) -> torch.Tensor:
        """``mean((sort(m) - r_a)^2)`` of input-size masks (B, K, H, W), per image and area: (B, K).

        Equal mask values (a constant start, saturated cells) would get targets by their position in
        the image, not by their value; so the gradient uses, for each run of equal values, the run's
        mean target ``rbar``: ``sum (s - r)^2 = sum (s - rbar)^2 + sum (r^2 - rbar^2)`` on a run of
        equal ``s``, the same value, with every tied pixel pulled the same way.
        """
        flat = masks.flatten(2)
        n = flat.shape[-1]
        r = cls.targets(areas, n, masks.device, masks.dtype)  # (K, n)
        s = flat.sort(dim=-1).values
        with torch.no_grad():  # only a run of ties across the step of r_a has r != rbar
            first = torch.tensor([n - int(round(a * n)) for a in areas], device=s.device).clamp(max=n - 1)
            at = s.gather(-1, first.view(1, -1, 1).expand(s.shape[0], -1, 1))  # (B, K, 1): the value there
            tied = s == at
            rbar = torch.where(tied, (tied * r).sum(-1, keepdim=True) / tied.sum(-1, keepdim=True), r)
            const = (r.pow(2) - rbar.pow(2)).mean(-1)
        return (s - rbar).pow(2).mean(-1) + const

    def __call__(self, st: MaskState, params: torch.Tensor) -> torch.Tensor:
        lam = self.weight * self.growth ** st.iteration
        return lam * self.residual(self.expand(params, st.size), self.areas).sum(1)


def parse_areas(area: float | None, areas) -> tuple[float, ...]:
    """The target areas from ``area`` (one fraction) or ``areas`` (several), each in (0, 1)."""
    if area is not None and areas is not None:
        raise FaithmapError("give extremal_perturbation one area= or several areas=, not both")
    if areas is None:
        vals: list = [0.1 if area is None else area]
    elif isinstance(areas, (int, float)) and not isinstance(areas, bool):
        vals = [areas]
    elif isinstance(areas, str):
        vals = [v for v in areas.replace(";", ",").split(",") if v.strip()]
    else:
        vals = list(areas)
    out = []
    for v in vals:
        try:
            a = float(v)
        except (TypeError, ValueError):
            raise FaithmapError(f"areas must be fractions of the image in (0, 1), got {v!r}") from None
        if not 0 < a < 1:
            raise FaithmapError(f"areas must be fractions of the image in (0, 1), got {a}")
        out.append(a)
    if not out:
        raise FaithmapError("extremal_perturbation needs at least one area")
    return tuple(out)


def scaled(value: float | None, paper: float, size: int) -> float:
    """``value``, or the paper's pixel setting ``paper`` (for 224 px) scaled to ``size`` px."""
    return float(value) if value is not None else paper * size / PAPER_SIZE


@dataclass(frozen=True, kw_only=True)
class ExtremalParams(MaskRunParams):
    """Extremal Perturbation's settings: the mask engine's run, with its own optimiser, smooth masks and
    blur pyramid (:func:`extremal_perturbation`). Pixel sizes given as None scale the paper's 224 px ones."""

    area: float | None = knob(None, "the mask's area as a fraction of the image (None: 0.1)", "(0, 1)")
    areas: tuple[float, ...] | None = knob(None, "several areas, one mask each, optimised together")
    game: str = knob("preserve", "preserve (keep only the mask), delete (remove it) or dual (both)")
    iterations: int = knob(800, "SGD steps")
    lr: float = knob(0.01, "SGD learning rate")
    momentum: float = knob(0.9, "SGD momentum (the dampening is the same)", "[0, 1)")
    area_weight: float = knob(300.0, "weight of the area loss at the first iteration", "[0, inf)")
    area_growth: float = knob(1.0035, "factor of that weight per iteration", "(0, inf)")
    step: int | None = knob(None, "px between mask parameters (None: 7 at 224 px)", "[1, 32]")
    sigma: float | None = knob(None, "smooth-mask kernel width in px (None: 21 at 224 px)", "(0, inf)")
    temperature: float = knob(0.05, "temperature of the smooth max", "(0, inf)")
    levels: int = knob(8, "blur levels of the perturbation", "[2, inf)")
    max_blur: float | None = knob(None, "sigma of the strongest blur in px (None: 20 at 224 px)", "(0, inf)")
    jitter: bool = knob(True, "flip the images left-right on even iterations")
    baseline: str | None = knob(None, "None: the blur pyramid; or a faithmap baseline (blur, zero, ...)")
    score: str = knob("logit", "the target's score the mask plays on: logit (the paper) or prob")

    def __post_init__(self) -> None:
        parse_areas(self.area, self.areas)
        if str(self.game).strip().lower() not in GAMES:
            raise FaithmapError(f"unknown game {self.game!r} for extremal_perturbation; choose from: preserve, delete, "
                                f"dual")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise FaithmapError(f"extremal_perturbation baseline must be None (the blur pyramid) or one of: "
                                f"{', '.join(BASELINES)}, got {self.baseline!r}")


def _resolved(p: ExtremalParams, x: torch.Tensor) -> ExtremalParams:
    """``p`` with the grid, areas, game and pixel sizes of these inputs filled in."""
    hgt, wid = x.shape[-2:]
    big = max(hgt, wid)
    step_px = int(p.step) if p.step is not None else max(1, round(7 * big / PAPER_SIZE))
    if step_px > min(hgt, wid):
        raise FaithmapError(f"extremal_perturbation: step must be 1 to {min(hgt, wid)} px, got {step_px}")
    return replace(p, resolution=check_resolution(p.resolution, x, 1), area=None, areas=parse_areas(p.area, p.areas),
                   game=str(p.game).strip().lower(), step=step_px, sigma=scaled(p.sigma, 21.0, big),
                   max_blur=scaled(p.max_blur, 20.0, big))


@register_method(
    "extremal_perturbation", family="mask", resolution="mask", min_resolution=1,
    paper="Fong, Patrick & Vedaldi, ICCV 2019", aliases=("extremal", "ep"),
    summary="Extremal Perturbation: smooth masks of a fixed area (sorted-value area loss) that preserve "
            "or delete the target's logit on a blur pyramid",
    fast={"iterations": 20}, params=ExtremalParams,
)
def extremal_perturbation(model, x: torch.Tensor, target: torch.Tensor, p: ExtremalParams) -> Explanation:
    """Extremal Perturbation (Fong, Patrick & Vedaldi, ICCV 2019; see the module docstring); settings
    :class:`ExtremalParams`.

    ``area`` (default 0.1) or ``areas`` (several fractions, one mask each, all optimised together):
    the mask's area as a fraction of the image. ``game``: ``preserve`` (keep only the mask: the
    target's ``score``, by default the logit, as high as possible), ``delete`` (remove the mask: as
    low as possible) or ``dual`` (both terms on one mask). ``iterations`` steps of SGD with
    ``momentum`` (velocity an exponential average, dampening = momentum) and learning rate ``lr``;
    area weight ``area_weight * area_growth^t``. Smooth masks: a parameter every ``step`` px
    (default 7 px at 224 px), kernel width ``sigma`` px (21 at 224), smooth-max ``temperature``.
    Perturbation: ``levels`` blur levels up to sigma ``max_blur`` px (20 at 224), or ``phi`` with a
    faithmap ``baseline`` (e.g. ``blur``, I-GOS's) when one is named; ``jitter`` flips the images on
    even iterations. ``seed`` is unused (deterministic).

    Returns the smooth mask ``m`` (averaged over the areas) as the saliency, area-averaged onto
    ``resolution`` x ``resolution`` cells (the input size, e.g. 224, gives the smooth mask itself). ``extras`` holds the parameters
    (``masks``), the input-size masks per area (``smooth_masks``), ``areas`` and ``area_residual``
    (``mean((sort(m) - r_a)^2)`` at the end, per image and area).
    """
    p = _resolved(p, x)
    hgt, wid = x.shape[-2:]
    grid = (math.ceil(hgt / p.step), math.ceil(wid / p.step))
    smooth = SmoothMask(grid, (hgt, wid), p.sigma, p.temperature, x.device, x.dtype)
    expand = lambda q, size: 1 - smooth(q)  # the engine's M = 1 - m  # noqa: E731

    def perturbation(st: MaskState) -> Perturbed:
        base = None if p.baseline is None else make_baseline(p.baseline, st.x, getattr(model, "mean", None),
                                                             getattr(model, "std", None))
        return Perturbed(st.x, base, int(p.levels), p.max_blur, bool(p.jitter))

    terms = [PathTerm(g, k, integrated=False, noise=False) for k in range(len(p.areas)) for g in GAMES[p.game]]
    opt = MaskOptimizer(terms=terms, regularizer=AreaLoss(smooth, p.areas, p.area_weight, p.area_growth),
                        step_rule=MomentumStep(p.lr, p.momentum, p.momentum), n_masks=len(p.areas), final="all",
                        reg_on="all", iterations=int(p.iterations), ig_steps=1, ls_points=1, noise_std=0.0,
                        parametrization=expand, perturbation=perturbation)
    with model_guard(model):
        params, history = opt.run(model, x, target, resolution=grid, baseline="zero", score=p.score,
                                  batch_size=p.batch_size, seed=p.seed)
    with torch.no_grad():
        masks = smooth(params)  # (B, K, H, W)
        residual = AreaLoss.residual(masks, p.areas)
        sal = masks.mean(1)
        if p.resolution != (hgt, wid):
            sal = F.adaptive_avg_pool2d(sal.unsqueeze(1), p.resolution)[:, 0]
    history["area_residual"] = residual
    return Explanation(saliency=sal, target=target, method="extremal_perturbation", params=record(p), history=history,
                       extras={"masks": params, "smooth_masks": masks, "areas": list(p.areas),
                               "area_residual": residual})
