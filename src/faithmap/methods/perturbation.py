"""The perturbation baselines of the I-GOS and iGOS++ tables: meaningful perturbation ("Mask"),
RISE and occlusion.

* ``mask`` — Fong & Vedaldi (ICCV 2017), the objective of I-GOS's eq. 2 minimised by plain
  projected gradient steps (Adam) on the mask engine of :mod:`faithmap.methods.mask`;
* ``rise`` — Petsiuk, Das & Saenko (BMVC 2018): random binary cell masks, upsampled and shifted,
  weighted by the model's score;
* ``occlusion`` — Zeiler & Fergus (ECCV 2014): a patch slid over the image, the score drop
  averaged over the windows covering each pixel.

All three send every perturbed image through the model in batches of at most ``batch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..core.batching import (Seed, DEFAULT_BATCH_SIZE, chunks, image_runs, model_guard, per_image_generators,
                             resolve_batch_size)
from ..explanation import Explanation
from ..core.progress import ticker
from ..core.perturb import make_baseline, phi
from ..core.scores import score_of
from ..errors import FaithmapError
from ..params import knob
from ..registry import register_method
from .mask import AdamStep, MaskOptimizer, MaskStartParams, PathTerm, check_resolution, run_mask_method


# ----------------------------------------------------------------------------------------------
# meaningful perturbation (the "Mask" rows of the I-GOS paper's Tables 1-2 and 4)
# ----------------------------------------------------------------------------------------------
@dataclass
class SumL1TV:
    """Fong & Vedaldi's regulariser in their units: ``l1 * sum|1 - M| + l2 * sum |grad M|^beta``.

    Sums over the cells of the low-resolution mask and over its vertical and horizontal
    neighbour differences (I-GOS eq. 2 with the weights of the meaningful-perturbation
    paper, lambda1 = 1e-4, lambda2 = 1e-2, beta = 3).
    """

    l1: float = 1e-4
    l2: float = 1e-2
    beta: float = 3.0

    def __call__(self, st, m: torch.Tensor) -> torch.Tensor:
        m = m.reshape(m.shape[0], *m.shape[-2:])
        dv = (m[:, 1:, :] - m[:, :-1, :]).abs().pow(self.beta).flatten(1).sum(1)
        dh = (m[:, :, 1:] - m[:, :, :-1]).abs().pow(self.beta).flatten(1).sum(1)
        return self.l1 * (1 - m).abs().flatten(1).sum(1) + self.l2 * (dv + dh)


@dataclass(frozen=True, kw_only=True)
class MaskParams(MaskStartParams):
    """The settings of meaningful perturbation (``mask``): the mask engine's, with Fong & Vedaldi's
    objective and step (:func:`meaningful_perturbation`)."""

    iterations: int = knob(500, "projected Adam steps (500, as in the I-GOS paper's Table 4)")
    lr: float = knob(0.1, "Adam's learning rate")
    l1: float = knob(1e-4, "weight of sum|1 - M| (Fong & Vedaldi's lambda1)")
    l2: float = knob(1e-2, "weight of sum|grad M|^tv_beta (their lambda2)")
    tv_beta: float = knob(3.0, "exponent of the mask's neighbour differences")
    noise_std: float = knob(0.0, "Gaussian noise on the masked image at every step")


@register_method(
    "mask", family="mask", resolution="mask", min_resolution=2,
    paper="Fong & Vedaldi, ICCV 2017 (as compared in Qi, Khorram & Li, AAAI 2020)",
    aliases=("meaningful_perturbation", "fong_vedaldi"),
    summary="meaningful perturbation: a deletion mask optimised by plain gradient steps (Adam)",
    fast={"iterations": 20}, params=MaskParams,
)
def meaningful_perturbation(model, x: torch.Tensor, target: torch.Tensor, p: MaskParams) -> Explanation:
    """Meaningful perturbation (Fong & Vedaldi, ICCV 2017), the "Mask" of the I-GOS paper's Tables 1, 2, 4.

    Minimises ``f_c(phi(I, B, up(M))) + l1 * sum|1 - M| + l2 * sum|grad M|^tv_beta`` (I-GOS
    eq. 2 with Fong & Vedaldi's weights lambda1 = 1e-4, lambda2 = 1e-2, beta = 3, in their summed
    units) by ``iterations`` (500, as in the I-GOS paper's Table 4) projected Adam steps with learning
    rate ``lr`` on the plain gradient at the mask: no integrated gradients, no line search. The
    baseline is the I-GOS blur, as in the I-GOS comparison. ``noise_std`` > 0 adds Gaussian noise
    to the masked image at every step (their jitter is not reproduced). ``init`` (B, h, w) and
    ``warmup`` / ``warmup_blur``: AOP's start mask and start-up blur (``aop`` with ``refine="mask"``).
    Settings :class:`MaskParams`. Returns saliency ``1 - M`` at mask resolution.
    """
    p = replace(p, resolution=check_resolution(p.resolution, x, 2))
    opt = MaskOptimizer(terms=[PathTerm("deletion", 0, integrated=False, noise=p.noise_std > 0)],
                        regularizer=SumL1TV(p.l1, p.l2, p.tv_beta), step_rule=AdamStep(p.lr), iterations=p.iterations,
                        ig_steps=1, ls_points=1, noise_std=p.noise_std)
    return run_mask_method(opt, model, x, target, p, name="mask")


# ----------------------------------------------------------------------------------------------
# RISE
# ----------------------------------------------------------------------------------------------
def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RISE masks (n, H, W) from binary cell grids (n, s, s) and shifts (n, 2).

    Each grid is upsampled bilinearly (pixel-centre aligned) to ``(s + 1) * cell`` pixels per side,
    ``cell = ceil(H / s)``, and the ``H x W`` window starting at ``shift`` is cut out (RISE's
    random shifts by less than one cell).
    """
    s = grids.shape[-1]
    hgt, wid = size
    ch, cw = math.ceil(hgt / s), math.ceil(wid / s)
    up = F.interpolate(grids.unsqueeze(1), size=((s + 1) * ch, (s + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    if up.shape[0] == 0:
        return up[:, :hgt, :wid]
    # one window per mask, cut by slicing (an advanced-index gather of every pixel was ~3x slower)
    return torch.stack([m[r:r + hgt, c:c + wid] for m, (r, c) in zip(up, shifts.tolist())])


@register_method(
    "rise", family="perturbation", resolution="input", paper="Petsiuk, Das & Saenko, BMVC 2018",
    summary="RISE: the score-weighted average of random binary cell masks (upsampled, shifted)",
    fast={"n_masks": 48},
)
def rise(model, x: torch.Tensor, target: torch.Tensor, *, n_masks: int = 4000, cells: int = 7, p: float = 0.5,
         baseline: str | torch.Tensor = "blur", score: str = "prob", batch_size: int | None = DEFAULT_BATCH_SIZE,
         seed: Seed = 0) -> Explanation:
    """RISE (Petsiuk, Das & Saenko 2018): ``S = sum_i f_c(phi(I, B, M_i)) M_i / (N p)``.

    ``n_masks`` = N binary ``cells`` x ``cells`` grids, each cell kept with probability ``p``,
    upsampled bilinearly and shifted at random by less than a cell (:func:`rise_masks`). Masked
    pixels show ``baseline`` (default the blur of the I-GOS metrics; ``"zero"`` is the original
    code's multiplication by 0 in normalised space). Each image draws its masks from its own
    generator seeded with ``seed``, so batched runs equal one-by-one runs. Masks are made chunk by
    chunk: memory is ``batch_size`` masks, not N. Returns input-resolution maps.
    """
    b, _, hgt, wid = x.shape
    if n_masks < 1 or not 0 < p < 1:
        raise FaithmapError(f"rise needs n_masks >= 1 and 0 < p < 1, got n_masks={n_masks}, p={p}")
    if not 1 <= cells <= min(hgt, wid):
        raise FaithmapError(f"rise cells must be 1 to {min(hgt, wid)} for {hgt}x{wid} inputs, got {cells}")
    bs = resolve_batch_size(batch_size, x.device)
    fn = score_of(score)
    ch, cw = math.ceil(hgt / cells), math.ceil(wid / cells)
    gens = per_image_generators(seed, b, x.device)
    grids = torch.stack([(torch.rand(n_masks, cells, cells, generator=g, device=x.device) < p).to(x.dtype)
                         for g in gens])
    shifts = torch.stack([torch.stack([torch.randint(0, ch, (n_masks,), generator=g, device=x.device),
                                       torch.randint(0, cw, (n_masks,), generator=g, device=x.device)], 1)
                          for g in gens])
    base = make_baseline(baseline, x, getattr(model, "mean", None), getattr(model, "std", None))
    diff = x - base
    sal = torch.zeros(b, hgt * wid, device=x.device, dtype=x.dtype)
    with model_guard(model), torch.no_grad():
        tick = ticker(math.ceil(b * n_masks / bs), "batch")
        for sl in chunks(b * n_masks, bs):
            flat = torch.arange(sl.start, sl.stop, device=x.device)
            img, j = flat // n_masks, flat % n_masks
            masks = rise_masks(grids[img, j], shifts[img, j], (hgt, wid))
            batch = torch.empty((len(img), *x.shape[1:]), device=x.device, dtype=x.dtype)
            for i, r in image_runs(img):  # phi(x, base, m) = base + m (x - base), the photo broadcast
                torch.mul(masks[r].unsqueeze(1), diff[i], out=batch[r]).add_(base[i])
            s = fn(model(batch), target[img])
            sal.index_add_(0, img, s.unsqueeze(1) * masks.flatten(1))
            tick()
    sal = sal.view(b, hgt, wid) / (n_masks * p)
    return Explanation(saliency=sal, target=target, method="rise",
                       params=dict(n_masks=n_masks, cells=cells, p=p, seed=seed))


# ----------------------------------------------------------------------------------------------
# occlusion
# ----------------------------------------------------------------------------------------------
def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of a window of ``patch`` pixels slid by ``stride`` over ``size`` pixels.

    A last window flush with the far edge is added when the stride does not reach it, so that
    every pixel is covered.
    """
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


@register_method(
    "occlusion", family="perturbation", resolution="input", paper="Zeiler & Fergus, ECCV 2014",
    summary="occlusion: the drop in score when a sliding patch shows the baseline, averaged per pixel",
    fast={"patch": 12, "stride": 8},
)
def occlusion(model, x: torch.Tensor, target: torch.Tensor, *, patch: int = 32, stride: int = 16,
              baseline: str | torch.Tensor = "blur", score: str = "prob", batch_size: int | None = DEFAULT_BATCH_SIZE,
              seed: Seed = 0) -> Explanation:
    """Occlusion (Zeiler & Fergus 2014): ``patch`` x ``patch`` windows every ``stride`` pixels.

    A window's value is ``f_c(I) - f_c(I with the window showing baseline)``; a pixel's saliency
    is the mean over the windows that cover it (as captum's ``Occlusion``; with a stride that
    does not reach the far edge, one more window flush with it is added so every pixel is
    covered). Deterministic; ``seed`` is unused. Returns input-resolution maps.
    """
    b, _, hgt, wid = x.shape
    if not 1 <= patch <= min(hgt, wid) or stride < 1:
        raise FaithmapError(f"occlusion needs 1 <= patch <= {min(hgt, wid)} and stride >= 1, "
                            f"got patch={patch}, stride={stride}")
    bs = resolve_batch_size(batch_size, x.device)
    fn = score_of(score)
    rows, cols = window_starts(hgt, patch, stride), window_starts(wid, patch, stride)
    r0 = torch.tensor(rows, device=x.device).repeat_interleave(len(cols))
    c0 = torch.tensor(cols, device=x.device).repeat(len(rows))
    nw = len(rows) * len(cols)
    ar_h, ar_w = torch.arange(hgt, device=x.device), torch.arange(wid, device=x.device)

    def windows(k: torch.Tensor) -> torch.Tensor:  # (n, H, W), 1 inside window k
        inr = (ar_h >= r0[k, None]) & (ar_h < r0[k, None] + patch)
        inc = (ar_w >= c0[k, None]) & (ar_w < c0[k, None] + patch)
        return (inr[:, :, None] & inc[:, None, :]).to(x.dtype)

    # windows covering each pixel: (row windows covering its row) x (column windows covering its column)
    rc = sum(((ar_h >= r) & (ar_h < r + patch)).to(x.dtype) for r in rows)
    cc = sum(((ar_w >= c) & (ar_w < c + patch)).to(x.dtype) for c in cols)
    count = rc[:, None] * cc[None, :]
    base = make_baseline(baseline, x, getattr(model, "mean", None), getattr(model, "std", None))
    sal = torch.zeros(b, hgt * wid, device=x.device, dtype=x.dtype)
    with model_guard(model), torch.no_grad():
        full = torch.cat([fn(model(x[sl]), target[sl]) for sl in chunks(b, bs)])
        tick = ticker(math.ceil(b * nw / bs), "batch")
        for sl in chunks(b * nw, bs):
            flat = torch.arange(sl.start, sl.stop, device=x.device)
            img, k = flat // nw, flat % nw
            occ = windows(k)
            s = fn(model(phi(x[img], base[img], 1 - occ.unsqueeze(1))), target[img])
            sal.index_add_(0, img, (full[img] - s).unsqueeze(1) * occ.flatten(1))
            tick()
    sal = sal.view(b, hgt, wid) / count
    return Explanation(saliency=sal, target=target, method="occlusion", params=dict(patch=patch, stride=stride))
