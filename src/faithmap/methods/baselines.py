"""Model-blind baselines: maps made without ever calling the model, the floor every method must beat.

Adebayo et al. (NeurIPS 2018, "Sanity checks for saliency maps") showed that an edge detector
reproduces much of what several saliency methods draw; Zhou, Booth, Ribeiro & Shah (AAAI 2022)
found it ties common methods when the planted evidence is the most salient thing in the image.
Registered as methods (family ``baseline``) so that ``faithmap evaluate`` and ``faithmap truth``
score them beside the real methods:

* ``random``: uniform noise at input size, drawn from each image's own generator (the project's
  one-generator-per-image contract: a batch gives the maps of its images explained one by one);
* ``edge``: the Sobel gradient magnitude of the image's grey levels (not smoothed unless
  ``sigma > 0``), normalised as scikit-image's ``filters.sobel``;
* ``centre``: a centred Gaussian bump (a centre prior; photographers centre their subjects).

None of them reads the model's parameters or outputs, so the model is never evaluated
(``Explanation.counts["images"] == 0``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.batching import Seed, per_image_generators, rand_per_image
from ..explanation import Explanation
from ..core.perturb import gaussian_blur
from ..registry import register_method

_SOBEL = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 4
"""scikit-image's horizontal-edge Sobel kernel (``filters.sobel_h``); its transpose finds vertical edges."""


@register_method(
    "random", family="baseline", paper="Hooker et al., NeurIPS 2019 (random-ranking control of ROAR)",
    summary="model-blind: uniform noise at input size from each image's own seeded generator (the floor)",
)
def random_map(model, x: torch.Tensor, target: torch.Tensor, *, batch_size: int | None = None,
               seed: Seed = 0) -> Explanation:
    """A map of independent uniform values per pixel; never calls ``model``."""
    gens = per_image_generators(seed, x.shape[0], x.device)
    sal = rand_per_image(gens, x.shape[-2:], x.device, x.dtype)
    return Explanation(sal, target, method="random", params={"seed": seed})


def sobel_magnitude(grey: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of (B, 1, H, W) images: ``sqrt((g_h^2 + g_v^2) / 2)`` with edge
    replication at the border, as scikit-image's ``filters.sobel`` (mode ``reflect``, which for a
    one-pixel border repeats the edge pixel). Returns (B, H, W)."""
    k = _SOBEL.to(grey)
    kernels = torch.stack([k, k.t()]).unsqueeze(1)  # (2, 1, 3, 3): horizontal and vertical edges
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    return torch.sqrt((g.pow(2).sum(1)) / 2)


@register_method(
    "edge", family="baseline", paper="Adebayo et al., NeurIPS 2018 (edge detector comparison)",
    summary="model-blind: Sobel gradient magnitude of the image's grey levels (optionally Gaussian-smoothed first)",
    bounds={"sigma": "[0, 1000]"},
)
def edge(model, x: torch.Tensor, target: torch.Tensor, *, sigma: float = 0.0, batch_size: int | None = None,
         seed: Seed = 0) -> Explanation:
    """Sobel magnitude of the mean of the RGB pixels in [0, 1] (``model.to_pixels`` undoes the
    normalisation; the model is never called). ``sigma > 0`` blurs the grey image first with a
    Gaussian of that standard deviation in pixels (kernel ``2 * ceil(3 sigma) + 1``, reflect padding)."""
    pixels = model.to_pixels(x) if hasattr(model, "to_pixels") else x
    grey = pixels.mean(1, keepdim=True)
    if sigma > 0:
        grey = gaussian_blur(grey, 2 * math.ceil(3 * sigma) + 1, float(sigma))
    return Explanation(sobel_magnitude(grey), target, method="edge", params={"sigma": sigma})


@register_method(
    "centre", family="baseline", paper="Judd et al., ICCV 2009 (centre-bias baseline)", aliases=("center", "centre-prior"),
    summary="model-blind: a centred Gaussian bump (standard deviation sigma x the image side), the centre prior",
    bounds={"sigma": "(0, 1000]"},
)
def centre(model, x: torch.Tensor, target: torch.Tensor, *, sigma: float = 0.25, batch_size: int | None = None,
           seed: Seed = 0) -> Explanation:
    """``exp(-d^2 / (2 (sigma s)^2))`` with ``d`` the distance of each pixel centre to the image
    centre and ``s`` the side (the shorter one); the same map for every image."""
    h, w = x.shape[-2:]
    s = float(min(h, w)) * float(sigma)
    r = torch.arange(h, device=x.device, dtype=x.dtype) - (h - 1) / 2
    c = torch.arange(w, device=x.device, dtype=x.dtype) - (w - 1) / 2
    bump = torch.exp(-(r[:, None] ** 2 + c[None, :] ** 2) / (2 * s * s))
    return Explanation(bump.expand(x.shape[0], h, w).clone(), target, method="centre", params={"sigma": sigma})
