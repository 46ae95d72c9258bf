"""Mask regularisers of I-GOS (Qi, Khorram & Li, AAAI 2020, eq. 2, 10) and iGOS++ (Khorram, Lawson &
Li, ACM CHIL 2021, eq. 7)."""

from __future__ import annotations

import torch

from .perturb import upsample


def l1_keep(mask: torch.Tensor) -> torch.Tensor:
    """``mean |1 - M|`` per image: the L1 term, averaged over cells so lambda is resolution-free."""
    return (1 - mask).abs().flatten(1).mean(1)


def tv(mask: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Total variation per image: mean |vertical diff|^beta + mean |horizontal diff|^beta.

    ``mask`` is (B, 1, h, w) or (B, h, w); the channel dimension, if any, must be 1.
    """
    m = mask.reshape(mask.shape[0], *mask.shape[-2:])
    dv = (m[:, 1:, :] - m[:, :-1, :]).abs().pow(beta).flatten(1).mean(1)
    dh = (m[:, :, 1:] - m[:, :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return dv + dh


def bilateral_weights(image: torch.Tensor, sigma: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge weights ``exp(-d^2 / sigma)`` of the bilateral TV (iGOS++ eq. 7), per direction.

    ``d^2`` is the squared colour distance of two neighbouring pixels of ``image`` (B, C, H, W),
    averaged over channels: ``mean_c (I_c(u) - I_c(v))^2``. Returns the vertical (B, H-1, W) and
    horizontal (B, H, W-1) weights. ``sigma`` plays the role of the paper's ``sigma^2`` (the
    authors' code divides by ``sigma`` = 0.01; see the README for this and the colour reading).
    """
    dv = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).mean(1)
    dh = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).mean(1)
    return torch.exp(-dv / sigma), torch.exp(-dh / sigma)


def bilateral_tv(image: torch.Tensor, mask: torch.Tensor, beta: float = 2.0, sigma: float = 0.01) -> torch.Tensor:
    """The bilateral half of iGOS++'s BTV (eq. 7), per image.

    The mask (B, 1, h, w) or (B, h, w) is upsampled bilinearly to the image size; each neighbour
    difference ``|up(M)(u) - up(M)(v)|^beta`` is weighted by :func:`bilateral_weights` and the
    weighted differences are averaged over positions, per direction, and the two directions added
    (the same normalisation as :func:`tv`). On a constant image every weight is 1 and this equals
    ``tv(up(M), beta)``.
    """
    up = upsample(mask.reshape(mask.shape[0], 1, *mask.shape[-2:]), image.shape[-2:])[:, 0]
    wv, wh = bilateral_weights(image, sigma)
    bv = (wv * (up[:, 1:, :] - up[:, :-1, :]).abs().pow(beta)).flatten(1).mean(1)
    bh = (wh * (up[:, :, 1:] - up[:, :, :-1]).abs().pow(beta)).flatten(1).mean(1)
    return bv + bh


def btv(image: torch.Tensor, mask: torch.Tensor, beta: float = 2.0, sigma: float = 0.01) -> torch.Tensor:
    """Bilateral total variation as iGOS++ uses it, per image: ``0.5 * (TV(M) + bilateral_tv(I, M))``.

    The plain TV of the low-resolution mask and the image-guided TV of the upsampled mask are
    averaged (iGOS++ supplement: "BTV and TV term (with beta = 2) also can be averaged"; the
    authors' code does this). On a constant image this is ``0.5 * (tv(M) + tv(up(M)))``, and for a
    mask at the image's resolution (no upsampling) exactly ``tv(M)``.
    """
    return 0.5 * (tv(mask, beta) + bilateral_tv(image, mask, beta, sigma))
