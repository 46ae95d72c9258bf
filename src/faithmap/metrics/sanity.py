"""Sanity checks for saliency maps (Adebayo et al. 2018, as used in Khorram, Lawson & Li, ACM CHIL 2021 sec. 4).

* **Cascading model-parameter randomisation**: the layers of a deep copy of the model are
  re-initialised one after another from the top (logits) down, cumulatively; after each one the
  maps are recomputed and compared with the original maps. A method that explains the model
  must produce different maps once the model is random; a method that merely reproduces the
  image (an edge detector) does not.
* **Data (label) randomisation**: the maps of a model trained on real labels are compared with
  those of the same architecture trained on shuffled labels (:mod:`faithmap.data.digits`).

Similarities per image, on maps upsampled to the input size: Spearman rank correlation of the
raw maps and of their absolute values (average ranks for ties, as scipy's ``spearmanr``), and
SSIM of the absolute maps min-max normalised to [0, 1] (scikit-image's defaults: 7 x 7 uniform
window, K1 = 0.01, K2 = 0.03, sample covariance, the mean over the window positions inside the
image). All in torch; a test checks both against scipy and scikit-image.

Both checks take an ``explain`` callable ``(model, x, target) -> saliency`` (a tensor (B, h, w)
or an Explanation); metrics never import methods. The user's model is never changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FaithmapError
from ..models import Classifier
from ._common import as_saliency, to_input_size

# ----------------------------------------------------------------------------------------------
# similarities
# ----------------------------------------------------------------------------------------------


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (scipy's ``rankdata``)."""
    sorted_v, order = torch.sort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2  # average of the 1-based ranks of each tie group
    ranks = torch.empty(v.numel(), dtype=torch.float64, device=v.device)
    ranks[order] = avg[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image of (B, ...) tensors (NaN for a constant map)."""
    out = []
    for u, v in zip(a.flatten(1), b.flatten(1)):
        ru, rv = average_ranks(u), average_ranks(v)
        ru, rv = ru - ru.mean(), rv - rv.mean()
        den = ru.norm() * rv.norm()
        out.append((ru * rv).sum() / den if den > 0 else torch.tensor(float("nan"), dtype=torch.float64))
    return torch.stack(out)


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, win_size: int = 7, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Mean structural similarity per image of (B, H, W) tensors (Wang et al. 2004), as scikit-image's
    ``structural_similarity`` with its defaults: uniform ``win_size`` window, sample covariance,
    averaged over the window positions that lie inside the image."""
    if min(a.shape[-2:]) < win_size:
        raise FaithmapError(f"SSIM needs images of at least {win_size} x {win_size} pixels")
    x, y = a.double().unsqueeze(1), b.double().unsqueeze(1)

    def mean(t):
        return F.avg_pool2d(t, win_size, stride=1)

    n = win_size * win_size
    cov = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _unit(m: torch.Tensor) -> torch.Tensor:
    """|m| min-max normalised to [0, 1] per image (constant maps become zeros)."""
    m = m.abs().flatten(1)
    lo, hi = m.min(1, keepdim=True).values, m.max(1, keepdim=True).values
    return ((m - lo) / (hi - lo).clamp_min(1e-12)).view(m.shape)


def similarities(reference: torch.Tensor, other: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Spearman (raw and absolute) and SSIM per image between two batches of maps, at ``size``."""
    r = to_input_size(reference.double(), size)
    o = to_input_size(other.double(), size)
    ur, uo = _unit(r).view_as(r), _unit(o).view_as(o)
    return {"spearman": spearman(r, o), "spearman_abs": spearman(r.abs(), o.abs()), "ssim": ssim(ur, uo)}


# ----------------------------------------------------------------------------------------------
# cascading model-parameter randomisation
# ----------------------------------------------------------------------------------------------


def parameter_layers(net: nn.Module) -> list[str]:
    """Names of the modules that own parameters, in registration (for sequential nets: forward) order."""
    return [name for name, m in net.named_modules() if any(True for _ in m.parameters(recurse=False))]


def randomise_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the module's own parameters with Gaussian draws of the same RMS (in place)."""
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            rms = float(p.detach().double().pow(2).mean().sqrt()) or 0.01
            p.copy_((torch.randn(p.shape, generator=generator, dtype=torch.float64) * rms).to(p))


@dataclass
class RandomisationResult:
    """Similarities (B, steps) to the original maps; step 0 is the original model itself."""

    steps: list[str]
    spearman: torch.Tensor
    spearman_abs: torch.Tensor
    ssim: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """One row per step: the mean and standard deviation over images of each similarity."""
        rows = []
        for j, step in enumerate(self.steps):
            row = {"step": step}
            for key in ("spearman", "spearman_abs", "ssim"):
                v = getattr(self, key)[:, j]
                row[key] = float(torch.nanmean(v))
                row[f"{key}_std"] = float(v[~torch.isnan(v)].std()) if int((~torch.isnan(v)).sum()) > 1 else 0.0
            rows.append(row)
        return rows


def _explain(explain: Callable, model, x, target) -> torch.Tensor:
    out = as_saliency(explain(model, x, target)).detach()
    if out.dim() == 4 and out.shape[1] == 1:
        out = out[:, 0]
    if out.dim() != 3 or out.shape[0] != x.shape[0]:
        raise FaithmapError(f"explain returned maps of shape {tuple(out.shape)} for {x.shape[0]} images")
    return out


def model_randomisation(model, x: torch.Tensor, target: torch.Tensor, explain: Callable, *,
                        layers: list[str] | None = None, seed: int = 0, keep_maps: bool = True) -> RandomisationResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, sec. 3.1).

    ``model``: a :class:`faithmap.models.Classifier`; ``layers``: names inside ``model.net`` to
    randomise, top first (default: every module owning parameters, from the last to the first).
    Works on a deep copy; the user's model is not changed.
    """
    if not isinstance(model, Classifier):
        raise FaithmapError("model randomisation needs a faithmap Classifier (faithmap.models.wrap(net))")
    net_layers = parameter_layers(model.net)
    if layers is None:
        layers = list(reversed(net_layers))
    unknown = [n for n in layers if n not in net_layers]
    if unknown:
        raise FaithmapError(f"no layer with parameters named {unknown[0]!r}; choose from: {', '.join(net_layers)}")
    if not layers:
        raise FaithmapError("the model has no layer with parameters to randomise")
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    original = _explain(explain, model, x, target)
    size = tuple(x.shape[-2:])
    work = copy.deepcopy(model)
    modules = dict(work.net.named_modules())
    g = torch.Generator().manual_seed(int(seed))
    sims = [similarities(original, original, size)]
    maps = [original.cpu()] if keep_maps else []
    for name in layers:
        randomise_layer(modules[name], g)
        m = _explain(explain, work, x, target)
        sims.append(similarities(original, m, size))
        if keep_maps:
            maps.append(m.cpu())
    stack = {k: torch.stack([s[k] for s in sims], 1) for k in sims[0]}
    return RandomisationResult(["original"] + list(layers), stack["spearman"], stack["spearman_abs"], stack["ssim"],
                               maps)


def data_randomisation(true_model, random_model, x: torch.Tensor, target: torch.Tensor,
                       explain: Callable) -> RandomisationResult:
    """Data randomisation (Adebayo et al. 2018, sec. 3.2): maps of ``true_model`` (trained on real
    labels) against maps of ``random_model`` (same architecture, shuffled labels), for ``target``."""
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    a = _explain(explain, true_model, x, target)
    b = _explain(explain, random_model, x, target)
    s = similarities(a, b, tuple(x.shape[-2:]))
    return RandomisationResult(["random labels"], s["spearman"][:, None], s["spearman_abs"][:, None],
                               s["ssim"][:, None], [a.cpu(), b.cpu()])


__all__ = ["RandomisationResult", "average_ranks", "data_randomisation", "model_randomisation", "parameter_layers",
           "randomise_layer", "similarities", "spearman", "ssim"]
