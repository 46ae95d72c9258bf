"""The objective of iGOS++'s Table 7 at a given map (Khorram, Lawson & Li, "iGOS++: Integrated
Gradient Optimized Saliency by Bilateral Perturbations", ACM CHIL 2021).

Table 7 compares the objective reached by iGOS++ and by the naive extension of I-GOS (one mask,
the insertion term added to I-GOS's eq. 1) "for the same objective". The common objective is read
as the naive one, evaluated at each method's final mask (iGOS++'s final solution is ``M = Md * Mi``,
eq. 4)::

    L(M) = f(phi(I, B, M)) - f(phi(B, I, M)) + l1 * mean|1 - M| + l2 * BTV(I, M)

with probability scores, the blur baseline, no noise, at the mask itself (one path point). It is
the mask engine's own line-search objective (:meth:`faithmap.methods.mask.MaskOptimizer.objective`)
of the naive configuration: two model images per map.
"""

from __future__ import annotations

import torch

from ..core.batching import model_guard, per_image_generators, resolve_batch_size
from ..core.perturb import make_baseline
from ..core.scores import score_of
from .igospp import igospp_optimizer
from .mask import MaskState


def naive_objective(model, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor, l1: float, l2: float,
                    batch_size: int | None = None) -> torch.Tensor:
    """``L(M)`` of the module docstring for maps ``saliency`` (B, h, w) = ``1 - M`` of images ``x``
    (B, C, H, W) and ``target`` (B,): one value per image, (B,)."""
    b, h, w = saliency.shape
    opt = igospp_optimizer((h, w), l1=l1, l2=l2, ablation="naive", ls_points=1, noise_std=0.0)
    base = make_baseline("blur", x, getattr(model, "mean", None), getattr(model, "std", None))
    st = MaskState(model, x, base, target, score_of("prob"), resolve_batch_size(batch_size, x.device),
                   per_image_generators(0, b, x.device), 0.0)
    masks = (1 - saliency).to(x).view(b, 1, 1, h, w)
    with model_guard(model), torch.no_grad():
        return opt.objective(st, masks, torch.arange(b, device=x.device))[:, 0]
