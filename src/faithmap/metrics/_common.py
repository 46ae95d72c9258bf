"""Helpers shared by the explanation-quality metrics (Expected Grad-CAM paper, appendix Table 2).

Conventions, the same in every metric of ``faithfulness.py``, ``robustness.py``,
``complexity.py`` and ``localisation.py``:

* Maps arrive at their native resolution (B, h, w) and are **upsampled to the input size** with
  :func:`faithmap.core.perturb.upsample` (bilinear, corners aligned) before anything else: every
  metric of Table 2 is defined on pixels, and Quantus, which the paper used, receives input-size
  maps (a CAM's 224 x 224 upsampling gives the paper's complexity of about ln(224^2)).
* A "pixel" carries all its channels: when a metric removes a pixel it replaces its three values.
* ``normalise=True`` divides each map by its own largest absolute value. Quantus divides the whole
  batch by one maximum (``normalise_by_max`` over all axes), which makes one image's score depend
  on the other images in the batch; ours does not, so batched equals one-by-one.
* Ties in a ranking (pixels or cells with exactly equal values) follow one rule, ``ties``:
  ``"interpolate"`` (the default) lets a block of tied pixels enter as one step. A curve is
  evaluated only where the set of removed pixels is the same whatever the order of the ties (at
  the ends of a tie block, never inside one): a grid point inside a block moves to the block's
  nearer end, and the curve at a grid point is the linear interpolation, in the fraction removed,
  between the evaluated points around it (:func:`curve_plans`), so it runs straight across a block
  wider than a step. The AUC no longer depends on the arbitrary order of tied pixels, a map
  without ties gives exactly the old curve, and no curve needs more model images than before
  (a wide block saves the images of the grid points inside it). Top-k sets take each tied pixel of a block that straddles k with weight
  ``(k - start) / size`` (the exact expectation over random orders; :func:`topk_weights`).
  ``"index"``: ties broken by the lower pixel index (stable sort), the order before this rule and
  Quantus' order.
* Stochastic metrics take ``seed`` and draw from one generator per image
  (:func:`faithmap.core.batching.per_image_generators`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.batching import chunks, model_guard, resolve_batch_size
from ..core.perturb import BASELINES, make_baseline, upsample
from ..core.scores import score_of
from ..errors import FaithmapError

QUANTUS_BASELINES = ("min", "max", "mean")
"""Per-image baselines as Quantus defines them: the image's smallest, largest or mean input value
over all channels (Quantus calls the first two "black" and "white")."""


@dataclass
class MetricResult:
    """Per-image ``scores`` (B,) with the curves they come from (``curves`` (B, T) over ``x``)."""

    scores: torch.Tensor
    curves: torch.Tensor | None = None
    x: torch.Tensor | None = None
    images: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def check_inputs(name: str, model, x: torch.Tensor, saliency: torch.Tensor, target,
                 check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated ``x`` (B, C, H, W), ``saliency`` (B, h, w) float on x's device and ``target`` (B,) long.

    ``check_values=False`` skips the scan of the images for NaN (metrics that only read their shape).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise FaithmapError(f"metric {name}: images must be a float (B, C, H, W) tensor, got "
                            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(saliency, torch.Tensor):
        raise FaithmapError(f"metric {name}: saliency must be a tensor, got {type(saliency).__name__}")
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() == 2 and x.shape[0] == 1:
        saliency = saliency.unsqueeze(0)
    if saliency.dim() != 3 or saliency.shape[0] != x.shape[0]:
        raise FaithmapError(f"metric {name}: saliency maps must be (B, h, w) with B = {x.shape[0]}, "
                            f"got {tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise FaithmapError(f"metric {name}: saliency maps contain NaN or infinite values")
    if check_values and not torch.isfinite(x).all():
        raise FaithmapError(f"metric {name}: images contain NaN or infinite values")
    if target is None:
        if model is None:
            raise FaithmapError(f"metric {name}: no targets given")
        with model_guard(model), torch.no_grad():
            target = model(x).argmax(1)
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    if target.numel() == 1 and x.shape[0] > 1:
        target = target.expand(x.shape[0])
    if target.numel() != x.shape[0]:
        raise FaithmapError(f"metric {name}: got {target.numel()} targets for {x.shape[0]} images")
    return x, saliency.to(device=x.device, dtype=x.dtype), target


def to_input_size(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps bilinearly upsampled (corners aligned) to ``size``: (B, H, W)."""
    return upsample(saliency.unsqueeze(1), tuple(size))[:, 0]


def normalise_by_max(a: torch.Tensor) -> torch.Tensor:
    """Each map divided by its largest absolute value (all-zero maps are left as they are)."""
    m = a.flatten(1).abs().amax(1).view(-1, *([1] * (a.dim() - 1)))
    return torch.where(m > 0, a / torch.where(m > 0, m, torch.ones_like(m)), a)


def prepare_maps(saliency: torch.Tensor, size: tuple[int, int], *, normalise: bool, absolute: bool) -> torch.Tensor:
    """Maps at input size, optionally normalised by their maximum and made absolute (Quantus' order)."""
    a = to_input_size(saliency, size)
    if normalise:
        a = normalise_by_max(a)
    if absolute:
        a = a.abs()
    return a


def baseline_image(kind: str | float | torch.Tensor, x: torch.Tensor, model=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A (B, C, H, W) replacement image for ``x``.

    ``min``/``max``/``mean``: the image's smallest/largest/mean value over all channels (Quantus'
    "black", "white" and "mean"); a number: that value in model-input space; otherwise any kind of
    :func:`faithmap.core.perturb.make_baseline` (``blur``, ``black`` = a black pixel normalised with
    the model's mean/std, ``zero``, ``gray``, ``noise``...) or a tensor.
    """
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        out = torch.full_like(x, float(kind))
    elif isinstance(kind, str) and kind in QUANTUS_BASELINES:
        flat = x.flatten(1)
        v = {"min": flat.amin(1), "max": flat.amax(1), "mean": flat.mean(1)}[kind]
        out = v.view(-1, 1, 1, 1).expand_as(x).clone()
    elif isinstance(kind, str) and kind not in BASELINES:
        raise FaithmapError(f"unknown baseline {kind!r}; choose from: "
                            f"{', '.join(QUANTUS_BASELINES + BASELINES)}, a number or a tensor")
    else:
        out = make_baseline(kind, x, getattr(model, "mean", None), getattr(model, "std", None), generator)
    if not torch.isfinite(out).all():  # the metrics' compositing (core.perturb.swap) needs finite values
        raise FaithmapError("the baseline contains NaN or infinite values")
    return out


TIES = ("interpolate", "index")
"""The tie rules of every ranking metric (module docstring)."""


def check_ties(name: str, ties: str) -> str:
    if ties not in TIES:
        raise FaithmapError(f"metric {name}: ties must be one of {', '.join(TIES)}, got {ties!r}")
    return ties


@dataclass
class CurvePlan:
    """Where one image's ranking curve is evaluated and how its grid points follow from there.

    ``nodes`` (m,): the sorted counts of removed pixels whose images go through the model; the
    curve at grid point ``j`` is ``(1 - lam[j]) * v[lo[j]] + lam[j] * v[hi[j]]`` for the values
    ``v`` (m,) at the nodes.
    """

    nodes: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    lam: torch.Tensor

    def curve(self, values: torch.Tensor) -> torch.Tensor:
        v = values.double()
        return v[self.lo] * (1 - self.lam) + v[self.hi] * self.lam


def tie_bounds(values: torch.Tensor) -> list[torch.Tensor]:
    """Per row of ``values`` (B, N), ranked from the largest down: the counts 0 .. N at which a
    tie block ends (0, N and every position where the sorted value changes), sorted."""
    sv = torch.sort(values.flatten(1), dim=1, descending=True).values
    n = sv.shape[1]
    out = []
    change = sv[:, 1:] != sv[:, :-1]
    for row in change:
        inner = torch.nonzero(row).flatten() + 1
        out.append(torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), n)]))
    return out


def curve_plans(values: torch.Tensor, counts, ties: str = "interpolate") -> list[CurvePlan]:
    """One :class:`CurvePlan` per row of ``values`` (B, N) for curves on the grid ``counts``
    (pixels removed at each grid point, increasing, within 0 .. N; the last is N).

    ``ties="index"``: every grid point is a node (the curve under index order).
    ``"interpolate"``: a grid count strictly inside a tie block moves to the nearer end of its
    block (the lower one when both are as near), so no node depends on the order of tied pixels;
    the curve at a grid point is the linear interpolation, in the count, between the nodes around
    it. A block wider than a step thus gets both its ends and a straight curve across it, a block
    inside one step costs one image as before: never more nodes than grid points (plus, rarely, a
    block start below the first grid point, so that every grid point has a node below it).
    """
    dev = values.device
    c = torch.as_tensor(list(counts), dtype=torch.long, device=dev)
    t = c.numel()
    if ties == "index":
        idx = torch.arange(t, device=dev)
        return [CurvePlan(c, idx, idx, torch.zeros(t, dtype=torch.float64, device=dev)) for _ in range(values.shape[0])]
    plans = []
    for bnd in tie_bounds(values):
        pos = torch.searchsorted(bnd, c)  # bnd[pos - 1] < c <= bnd[pos]
        exact = bnd[pos] == c
        s = torch.where(exact, c, bnd[(pos - 1).clamp_min(0)])
        e = torch.where(exact, c, bnd[pos])
        snapped = torch.where(c - s <= e - c, s, e)
        nodes = torch.unique(snapped)
        if int(nodes[0]) > int(c[0]):  # the first grid point moved up: its block's start below it too
            nodes = torch.unique(torch.cat([nodes, s[:1]]))
        hi = torch.searchsorted(nodes, c)  # nodes[hi - 1] < c <= nodes[hi]
        on = nodes[hi] == c
        lo = torch.where(on, hi, hi - 1)
        span = (nodes[hi] - nodes[lo]).double()
        lam = torch.where(on, torch.zeros_like(span), (c - nodes[lo]).double() / span.clamp_min(1))
        plans.append(CurvePlan(nodes, lo, hi, lam))
    return plans


def topk_weights(values: torch.Tensor, k, ties: str = "interpolate") -> torch.Tensor:
    """Membership (B, N) float64 of each entry in the top ``k`` of its row of ``values`` (B, N)
    (``k`` an int or (B,)): 1 above the tie block that straddles ``k``, ``(k - start) / size``
    inside it (``ties="interpolate"``, the expectation over random orders of the ties), 0 below;
    ``ties="index"``: 0/1 with ties by lower index."""
    b, n = values.flatten(1).shape
    kk = torch.as_tensor(k, device=values.device).long().view(-1).expand(b)
    rank = pixel_rank(values.flatten(1).view(b, 1, n)).view(b, n)
    if ties == "index":
        return (rank < kk.view(-1, 1)).double()
    out = torch.empty(b, n, dtype=torch.float64, device=values.device)
    sv = torch.sort(values.flatten(1), dim=1, descending=True).values
    for i, bnd in enumerate(tie_bounds(values)):
        ki = kk[i].clamp(0, n)
        pos = int(torch.searchsorted(bnd, ki))
        if int(bnd[pos]) == int(ki):
            out[i] = (rank[i] < ki).double()
            continue
        s, e = int(bnd[pos - 1]), int(bnd[pos])
        v = sv[i, s]
        row = (values.flatten(1)[i] > v).double()
        row[values.flatten(1)[i] == v] = (int(ki) - s) / (e - s)
        out[i] = row
    return out


def pixel_rank(a: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel of maps (B, H, W) from the most important (0) down; ties by lower index."""
    b = a.shape[0]
    flat = a.flatten(1)
    order = torch.sort(-flat, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=a.device).expand(b, -1))
    return rank.view_as(a)


def model_scores(model, images: torch.Tensor, target: torch.Tensor, score: str) -> torch.Tensor:
    """Scores of ``target`` for ``images`` (one forward pass, no autograd)."""
    return score_of(score)(model(images), target)


def run_jobs(model, n_jobs: int, build: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], *,
             score: str, batch_size: int | None, device) -> torch.Tensor:
    """Score ``n_jobs`` images built chunk by chunk: ``build(slice) -> (images, targets)``.

    At most ``batch_size`` images are materialised and sent through the model at once.
    """
    bs = resolve_batch_size(batch_size, device)
    fn = score_of(score)
    out = torch.empty(n_jobs, device=device, dtype=torch.float64)
    with model_guard(model), torch.no_grad():
        for sl in chunks(n_jobs, bs):
            images, t = build(sl)
            out[sl] = fn(model(images), t).double()
    return out


def as_saliency(out) -> torch.Tensor:
    """A saliency tensor from what an ``explain`` callable returned (a tensor or an Explanation)."""
    if isinstance(out, torch.Tensor):
        return out
    sal = getattr(out, "saliency", None)
    if isinstance(sal, torch.Tensor):
        return sal
    raise FaithmapError(f"explain must return a (B, h, w) tensor or an Explanation, got {type(out).__name__}")


def need(name: str, value, what: str):
    """``value``, or one clear FaithmapError naming the missing input."""
    if value is None:
        raise FaithmapError(f"metric {name} needs {what}; none given")
    return value


def check_positive_int(name: str, param: str, value, minimum: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise FaithmapError(f"metric {name}: {param} must be an integer, got {value!r}") from None
    if v < minimum or v != value:
        raise FaithmapError(f"metric {name}: {param} must be an integer of at least {minimum}, got {value!r}")
    return v
