"""Complexity metrics of the Expected Grad-CAM paper (appendix Table 2; Table 1): Complexity, the
entropy of the map's share of attribution per pixel (Bhatt et al. 2020), and Sparseness, its Gini
index (Chalasani et al. 2020). Both work on the map upsampled to the input size (a 224 x 224
uniform map has entropy ln(224^2) = 10.82, the scale of the paper's 10.4-10.6) and need no model
evaluation; defaults as Quantus 0.6 (absolute values, maps normalised by their maximum)."""

from __future__ import annotations

import torch

from ..registry import register_metric
from ._common import check_inputs, prepare_maps


@register_metric("complexity", higher_is_better=False, category="complexity",
                 paper="Bhatt, Weller & Moura, IJCAI 2020",
                 summary="entropy of the map's fractional attribution per pixel (0 for one pixel, ln(H*W) for a flat map)")
def complexity(model, x, saliency, target, *, normalise: bool = True, absolute: bool = True,
               batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Complexity (Bhatt et al. 2020, eq. 5): ``-sum_i p_i ln(p_i + 1e-12)``, ``p = |a| / sum |a|``
    over the pixels of the input-size map (natural logarithm, Quantus 0.6's epsilon). Lower is better."""
    x, saliency, target = check_inputs("complexity", None, x, saliency, torch.zeros(x.shape[0], dtype=torch.long),
                                         check_values=False)
    a = prepare_maps(saliency, x.shape[-2:], normalise=normalise, absolute=absolute).flatten(1).double()
    p = a / a.abs().sum(1, keepdim=True)
    return -(p * torch.log(p + 1e-12)).sum(1)


@register_metric("sparseness", higher_is_better=True, category="complexity",
                 paper="Chalasani et al., ICML 2020",
                 summary="Gini index of the map's absolute values (1 - 1/(H*W) for one pixel, 0 for a flat map)")
def sparseness(model, x, saliency, target, *, normalise: bool = True, absolute: bool = True,
               batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Sparseness (Chalasani et al. 2020, the Gini index of Hurley and Rickard 2009):
    ``sum_k (2k - n - 1) a_(k) / (n sum a)`` with ``a_(k)`` sorted ascending and ``1e-7`` added to
    every value (Quantus 0.6). A one-hot map scores ``(n - 1) / n``, a flat map 0. Higher is better."""
    x, saliency, target = check_inputs("sparseness", None, x, saliency, torch.zeros(x.shape[0], dtype=torch.long),
                                         check_values=False)
    a = prepare_maps(saliency, x.shape[-2:], normalise=normalise, absolute=absolute).flatten(1).double() + 1e-7
    n = a.shape[1]
    a = torch.sort(a, dim=1).values
    k = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    return ((2 * k - n - 1) * a).sum(1) / (n * a.sum(1))
