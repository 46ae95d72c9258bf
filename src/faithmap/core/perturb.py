"""Perturbation primitives: the blur baseline, the composition phi and mask upsampling.

Conventions of I-GOS (Qi, Khorram & Li, AAAI 2020, eq. 2) used throughout: a mask value of 1 keeps the image and 0
shows the baseline, ``phi(I, B, M) = I * M + B * (1 - M)``. Everything works on normalised model
inputs; the blur is linear and uses reflect padding, so it commutes with per-channel normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import FaithmapError


def blur_params(size: int) -> tuple[int, float]:
    """Kernel size and sigma of the I-GOS blur baseline for an image whose longer side is ``size``.

    51/50 below 500 px (the 224 px case of the papers), 151/150 below 800 px, 201/200 above,
    as in the authors' code.
    """
    if size < 500:
        return 51, 50.0
    if size < 800:
        return 151, 150.0
    return 201, 200.0


def gaussian_kernel1d(kernel_size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian weights (the same as OpenCV's ``getGaussianKernel`` for sigma > 0)."""
    x = torch.arange(kernel_size, device=device, dtype=torch.float64) - (kernel_size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return (w / w.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 51, sigma: float = 50.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (OpenCV's default border).

    The kernel is shrunk to the largest odd size that reflect padding allows when the image is
    smaller than half the kernel.
    """
    if x.dim() != 4:
        raise ValueError("gaussian_blur expects (B, C, H, W)")
    b, c, h, w = x.shape
    out = x
    for dim, n in ((2, h), (3, w)):
        k = min(kernel_size, 2 * (n - 1) + 1 if n > 1 else 1)
        if k % 2 == 0:
            k -= 1
        if k <= 1:
            continue
        weight = gaussian_kernel1d(k, sigma, x.device, x.dtype)
        pad = k // 2
        if dim == 2:
            out = F.pad(out, (0, 0, pad, pad), mode="reflect")
            out = F.conv2d(out, weight.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
        else:
            out = F.pad(out, (pad, pad, 0, 0), mode="reflect")
            out = F.conv2d(out, weight.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return out


def blur_baseline(x: torch.Tensor, kernel_size: int | None = None, sigma: float | None = None) -> torch.Tensor:
    """The I-GOS baseline image: a heavy Gaussian blur of ``x`` (kernel 51, sigma 50 at 224 px)."""
    k, s = blur_params(max(x.shape[-2:]))
    return gaussian_blur(x, kernel_size or k, sigma or s)


def phi(image: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image * mask + baseline * (1 - mask)`` (I-GOS eq. 2), broadcasting the mask over channels."""
    return baseline + mask * (image - baseline)


def swap(image: torch.Tensor, baseline: torch.Tensor, removed: torch.Tensor,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``baseline`` where ``removed`` is 1 (or True), ``image`` where it is 0 (masks broadcast over
    channels).

    The values of ``torch.where(removed, baseline, image)`` for finite inputs, about twice as fast
    on the CPU: ``torch.lerp`` with weights exactly 0 or 1 returns its ends exactly
    (``a + 0 (b - a) = a``, ``b - (b - a) 0 = b``) and its kernel is vectorised, where's is not.
    ``removed`` as 0/1 floats of the image's dtype (:func:`below`) saves converting a bool mask.
    Callers make sure the inputs are finite (a NaN or infinity would spread).
    """
    if removed.dtype != image.dtype:
        removed = removed.to(image.dtype)
    return torch.lerp(image, baseline, removed, out=out)


def below(rank: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """1.0 where ``rank < count``, else 0.0, for integer-valued float tensors (broadcast).

    ``clamp(count - rank, 0, 1)``: exact while the values are integers a float holds exactly (below
    2**24 in float32), and about 5x faster on the CPU than a bool comparison converted to floats.
    """
    return torch.sub(count, rank).clamp_(0, 1)


def upsample(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, k, h, w) masks to ``size`` with ``align_corners=True``.

    Corner-aligned interpolation keeps a constant mask constant and makes a cell grid's corners
    land on the image corners, as in the I-GOS and iGOS++ reference code.
    """
    if isinstance(size, int):
        size = (size, size)
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=True)


BASELINES = ("blur", "black", "white", "zero", "gray", "noise", "uniform")


def make_baseline(kind: str | torch.Tensor, x: torch.Tensor, mean: torch.Tensor | None = None,
                  std: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A baseline image for normalised inputs ``x`` (B, C, H, W).

    ``kind``: ``blur`` (I-GOS blur), ``black``/``white``/``gray`` (pixel 0, 1, 0.5 normalised with
    ``mean``/``std``), ``zero`` (0 in normalised space), ``noise``/``uniform`` (uniform pixel noise
    in [0, 1], normalised), or a tensor broadcastable to ``x``.
    """
    if isinstance(kind, torch.Tensor):
        return kind.to(device=x.device, dtype=x.dtype).expand_as(x)
    if mean is None:
        mean = torch.zeros(1, x.shape[1], 1, 1, device=x.device, dtype=x.dtype)
    if std is None:
        std = torch.ones(1, x.shape[1], 1, 1, device=x.device, dtype=x.dtype)
    if kind == "blur":
        return blur_baseline(x)
    if kind == "zero":
        return torch.zeros_like(x)
    if kind in ("black", "white", "gray"):
        v = {"black": 0.0, "white": 1.0, "gray": 0.5}[kind]
        return ((v - mean) / std).expand_as(x).clone()
    if kind in ("noise", "uniform"):
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (u - mean) / std

    raise FaithmapError(f"unknown baseline {kind!r}; choose from: {', '.join(BASELINES)} or a tensor")


def grid_size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    """(h, w) from an int or a pair."""
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = resolution
    return int(h), int(w)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0


__all__ = ["blur_params", "gaussian_kernel1d", "gaussian_blur", "blur_baseline", "phi", "upsample",
           "make_baseline", "BASELINES", "grid_size", "ceil_div", "math"]
