"""Average drop and increase in confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018, sec. 5.1).

The explanation map of an image is the image multiplied point-wise by its saliency map: the map is
upsampled to the input size (bilinear, ``align_corners=True``) and min-max normalised to [0, 1]
per image (Grad-CAM++ maps are non-negative and scaled by their maximum; min-max is the same for
them and defined for maps of any sign). The product is taken on pixels, so a zero keeps black:
``phi(x, black, E)`` in normalised inputs. With ``Y`` the softmax probability of the target on the
image and ``O`` on its explanation map, per image:

* average drop (%) = ``100 * max(0, Y - O) / Y`` (lower is better; the paper's figure is the mean),
* increase in confidence (%) = ``100 * [Y < O]`` (higher is better; the mean is the paper's rate).

Both come from one shared computation of two images per map (:func:`explanation_map_scores`).
"""

from __future__ import annotations

import torch

from ..core.batching import chunks, model_guard, resolve_batch_size
from ..core.memo import shared
from ..core.perturb import make_baseline, phi, upsample
from ..core.scores import score_of
from ..errors import FaithmapError
from ..registry import register_metric


def explanation_map(model, x: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """``E * image`` on pixels (black where E = 0), as normalised inputs (B, 3, H, W)."""
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() != 3 or saliency.shape[0] != x.shape[0]:
        raise FaithmapError(f"saliency maps must be (B, h, w) with B = {x.shape[0]}, got {tuple(saliency.shape)}")
    s = saliency.to(device=x.device, dtype=x.dtype)
    flat = s.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    e = ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(s)
    e = upsample(e.unsqueeze(1), tuple(x.shape[-2:])).clamp(0, 1)
    black = make_baseline("black", x, getattr(model, "mean", None), getattr(model, "std", None))
    return phi(x, black, e)


@shared
def explanation_map_scores(model, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor, *,
                           score: str = "prob", batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (Y on the images, O on their explanation maps), each (B,); 2B model images in all."""
    fn = score_of(score)
    masked = explanation_map(model, x, saliency)
    both = torch.cat([x, masked])
    t2 = torch.cat([target, target])
    bs = resolve_batch_size(batch_size, x.device)
    with model_guard(model), torch.no_grad():
        s = torch.cat([fn(model(both[sl]), t2[sl]) for sl in chunks(both.shape[0], bs)])
    b = x.shape[0]
    return s[:b].double(), s[b:].double()


@register_metric("average_drop", higher_is_better=False, category="faithfulness", paper="Chattopadhyay et al., WACV 2018",
                 aliases=("avg_drop", "drop"), default=True,
                 summary="average drop (%): relative fall of the target probability on the image times its map")
def average_drop(model, x, saliency, target, *, score: str = "prob", batch_size=None, seed=0) -> torch.Tensor:
    """``100 * max(0, Y - O) / Y`` per image (lower is better)."""
    y, o = explanation_map_scores(model, x, saliency, target, score=score, batch_size=batch_size)
    return 100.0 * torch.clamp(y - o, min=0) / y.clamp_min(1e-12)


@register_metric("increase_confidence", higher_is_better=True, category="faithfulness",
                 paper="Chattopadhyay et al., WACV 2018", aliases=("increase", "increase_in_confidence"),
                 default=True,
                 summary="increase in confidence (%): share of images whose target probability rises on the image times its map")
def increase_confidence(model, x, saliency, target, *, score: str = "prob", batch_size=None, seed=0) -> torch.Tensor:
    """``100 * [Y < O]`` per image (higher is better; its mean is the paper's percentage)."""
    y, o = explanation_map_scores(model, x, saliency, target, score=score, batch_size=batch_size)
    return 100.0 * (o > y).double()
