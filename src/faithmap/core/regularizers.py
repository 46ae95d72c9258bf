"""Mask regularisers of I-GOS (``igos.txt`` eq. 2, 10) and iGOS++ (``igos_plus_plus.txt`` eq. 7)."""

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


def btv(image: torch.Tensor, mask: torch.Tensor, beta: float = 2.0, sigma: float = 0.01) -> torch.Tensor:
    """Bilateral total variation (iGOS++ eq. 7), per image.

    Neighbour differences of the mask upsampled to the image size, each weighted by
    ``exp(-dI^2 / sigma)`` where ``dI`` is the channel-mean neighbour difference of the (normalised)
    image, averaged over positions, plus the plain TV of the low-resolution mask; the two halves
    are averaged. On a constant image every weight is 1 and the bilateral half equals the TV of
    the upsampled mask.
    """
    up = upsample(mask.reshape(mask.shape[0], 1, *mask.shape[-2:]), image.shape[-2:])[:, 0]
    gray = image.mean(1)
    wv = torch.exp(-(gray[:, 1:, :] - gray[:, :-1, :]) ** 2 / sigma)
    wh = torch.exp(-(gray[:, :, 1:] - gray[:, :, :-1]) ** 2 / sigma)
    bv = (wv * (up[:, 1:, :] - up[:, :-1, :]).abs().pow(beta)).flatten(1).mean(1)
    bh = (wh * (up[:, :, 1:] - up[:, :, :-1]).abs().pow(beta)).flatten(1).mean(1)
    return 0.5 * (tv(mask, beta) + bv + bh)
