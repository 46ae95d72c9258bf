"""Faithfulness metrics of the Expected Grad-CAM paper (appendix Table 2; Tables 1, 3 and 7).

Faithfulness Estimate (Alvarez-Melis and Jaakkola 2018), Pixel Flipping (Bach et al. 2015), IROF
(Rieger and Hansen 2020), Sufficiency (Dasgupta et al. 2022), Infidelity (Yeh et al. 2019) and the
pixel-level Insertion/Deletion of RISE (Petsiuk et al. 2018) with its difference Ins-Del
(Englebert et al.). Conventions (input-size maps, per-image normalisation, tie breaking, seeds):
see :mod:`faithmap.metrics._common`.

Every metric builds its perturbed images on the model's device, chunk by chunk, and sends at most
``batch_size`` images through the model at once; nothing loops over images in numpy except the
SLIC superpixel segmentation of IROF (scikit-image), done once per image.

``rise_deletion``/``rise_insertion``/``ins_del`` differ from the I-GOS protocol of
:mod:`faithmap.metrics.deletion` (``deletion``/``insertion``/``overall``): they rank *pixels* of
the map upsampled to the input size (not cells of the native map), change ``step`` = 224 pixels a
step at 224 x 224 (not 1/50 of the cells), delete to the zero image of model-input space (the
dataset mean colour; I-GOS: the 51/50 blur) and insert from an 11 x 11, sigma 5 blur (I-GOS: the
same 51/50 blur), with the target's softmax probability and the trapezoid over equally spaced
steps, as in the RISE authors' ``evaluation.py``.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from ..core.batching import chunks, image_runs, model_guard, per_image_generators, resolve_batch_size, Seed
from ..core.perturb import below, swap
from ..errors import FaithmapError
from ..registry import register_metric
from ._common import (MetricResult, baseline_image, check_inputs, check_positive_int, check_ties, curve_plans,
                      pixel_rank, prepare_maps, run_jobs, tie_bounds)

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _float_ranks(rank: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Ranks of an (B, 1, H, W) image's pixels as floats for :func:`~faithmap.core.perturb.below`:
    in the image's dtype while it holds every count up to H x W exactly (float32: 2**24), else in
    float64 (``swap`` converts the 0/1 weights)."""
    exact = round(2 / torch.finfo(dtype).eps)  # 2**(mantissa bits + 1)
    return rank.to(dtype if rank.shape[-2] * rank.shape[-1] <= exact else torch.float64)


def default_pixels_in_step(h: int, w: int) -> int:
    """Pixels changed per step when not given: ``max(1, H*W // 224)`` (224 steps at 224 x 224)."""
    return max(1, (h * w) // 224)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (B, T) tensors in float64 (NaN for a constant row)."""
    a, b = a.double(), b.double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den
    return torch.where(den > 0, r.clamp(-1, 1), torch.full_like(r, float("nan")))


def _node_jobs(plans) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Jobs (image, count) for every node of every image's :class:`~._common.CurvePlan`, image by
    image, and where each image's nodes start in that list."""
    imgs, cnts, starts = [], [], []
    for i, p in enumerate(plans):
        starts.append(sum(len(c) for c in cnts))
        imgs.append(torch.full_like(p.nodes, i))
        cnts.append(p.nodes)
    return torch.cat(imgs), torch.cat(cnts), starts


def _steps(name: str, h: int, w: int, pixels_in_step) -> tuple[int, int]:
    k = default_pixels_in_step(h, w) if pixels_in_step is None else check_positive_int(name, "pixels_in_step", pixels_in_step)
    if k > h * w:
        raise FaithmapError(f"metric {name}: pixels_in_step ({k}) exceeds the {h * w} pixels of the image")
    return k, math.ceil(h * w / k)


# ----------------------------------------------------------------------------------------------
# Faithfulness Estimate
# ----------------------------------------------------------------------------------------------


def faithfulness_estimate_scores(model, x, saliency, target, *, pixels_in_step: int | None = None,
                                 baseline="min", score: str = "logit", normalise: bool = True,
                                 absolute: bool = False, ties: str = "interpolate",
                                 batch_size: int | None = None) -> MetricResult:
    """Faithfulness Estimate (Alvarez-Melis and Jaakkola 2018, "faithfulness" of sec. 3).

    The pixels are grouped by rank, ``pixels_in_step`` at a time; each group alone is replaced by
    the baseline and the score drop ``f(x) - f(x without the group)`` is recorded. The estimate is
    the Pearson correlation, over the groups, of the drops with the summed attribution of the
    group. Defaults as Quantus 0.6 (``FaithfulnessEstimate``): logits, baseline = the image's
    smallest value, maps normalised. Quantus counts channel values as features; ours moves whole
    pixels, which equals Quantus with ``features_in_step = channels * pixels_in_step``.

    ``ties="interpolate"`` (default): which pixels of a tie block that spans several groups fall
    into which group is arbitrary, so such a block is removed once, whole, and a group holding
    ``m`` of its ``size`` pixels is credited ``m / size`` of that drop, plus the drop of removing
    its other pixels (which do not depend on the order); the groups' attribution sums are the
    same in any order. Without such blocks this is the plain rule. ``"index"``: ties by lower
    pixel index (Quantus' order).
    """
    name = "faithfulness_estimate"
    x, saliency, target = check_inputs(name, model, x, saliency, target)
    check_ties(name, ties)
    b, c, h, w = x.shape
    a = prepare_maps(saliency, (h, w), normalise=normalise, absolute=absolute)
    k, n = _steps(name, h, w, pixels_in_step)
    rank = pixel_rank(a).view(b, h * w)
    group = rank // k  # group index of every pixel
    att = torch.zeros(b, n, device=x.device, dtype=torch.float64).scatter_add_(1, group, a.view(b, -1).double())
    base = baseline_image(baseline, x, model)
    # per image: "units" removed alone; unit u of image i is the pixel set label[i] == u.
    # Plain rule: unit g = group g. Ties: a block spread over several groups is a unit of its own
    # (label n + j), the groups keep their other pixels; credit[i] maps unit drops to group drops.
    labels = group.clone()
    credit = []
    for i in range(b):
        m = torch.eye(n, dtype=torch.float64, device=x.device)
        if ties == "interpolate":
            extra = []
            bnd = tie_bounds(a[i:i + 1].reshape(1, -1))[0].tolist()
            for s0, e0 in zip(bnd[:-1], bnd[1:]):
                g0, g1 = s0 // k, (e0 - 1) // k
                if g1 == g0:
                    continue
                inblock = (rank[i] >= s0) & (rank[i] < e0)
                labels[i][inblock] = n + len(extra)
                col = torch.zeros(n, dtype=torch.float64, device=x.device)
                for g in range(g0, g1 + 1):
                    col[g] = (min(e0, (g + 1) * k) - max(s0, g * k)) / (e0 - s0)
                extra.append(col)
            if extra:
                m = torch.cat([m, torch.stack(extra, 1)], 1)
        credit.append(m)
    # jobs: per image every unit that holds pixels, then the photo (unit -1: nothing removed)
    job_img, job_unit = [], []
    for i in range(b):
        present = torch.zeros(credit[i].shape[1], dtype=torch.bool, device=x.device)
        present[labels[i]] = True
        units = torch.nonzero(present).flatten()
        job_img.append(torch.full((len(units) + 1,), i, device=x.device, dtype=torch.long))
        job_unit.append(torch.cat([units, units.new_full((1,), -1)]))
    job_img, job_unit = torch.cat(job_img), torch.cat(job_unit)
    lab = labels.view(b, 1, h, w)

    def build(sl):
        img, unit = job_img[sl], job_unit[sl]
        out = torch.empty(len(img), c, h, w, device=x.device, dtype=x.dtype)
        for i, r in image_runs(img):
            swap(x[i], base[i], lab[i] == unit[r].view(-1, 1, 1, 1), out=out[r])
        return out, target[img]

    s = run_jobs(model, len(job_img), build, score=score, batch_size=batch_size, device=x.device)
    drops = torch.empty(b, n, dtype=torch.float64, device=x.device)
    for i in range(b):
        sel = torch.nonzero(job_img == i).flatten()
        photo = s[sel[-1]]
        unit_drop = torch.zeros(credit[i].shape[1], dtype=torch.float64, device=x.device)
        unit_drop[job_unit[sel[:-1]]] = photo - s[sel[:-1]]
        drops[i] = credit[i] @ unit_drop
    return MetricResult(pearson(att, drops), curves=drops, images=len(job_img))


@register_metric("faithfulness_estimate", higher_is_better=True, category="faithfulness",
                 paper="Alvarez-Melis & Jaakkola, NeurIPS 2018", aliases=("fe",),
                 summary="correlation of each pixel group's attribution with the score drop when that group alone is removed")
def faithfulness_estimate(model, x, saliency, target, *, pixels_in_step: int | None = None, baseline="min",
                          score: str = "logit", normalise: bool = True, absolute: bool = False,
                          ties: str = "interpolate", batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Faithfulness Estimate per image (higher is better); see :func:`faithfulness_estimate_scores`."""
    return faithfulness_estimate_scores(model, x, saliency, target, pixels_in_step=pixels_in_step, baseline=baseline,
                                        score=score, normalise=normalise, absolute=absolute, ties=ties,
                                        batch_size=batch_size).scores


# ----------------------------------------------------------------------------------------------
# Pixel Flipping
# ----------------------------------------------------------------------------------------------


@register_metric("pixel_flipping", higher_is_better=False, category="faithfulness",
                 paper="Bach et al., PLoS ONE 2015", aliases=("pf",),
                 summary="area under the score curve as the most relevant pixels are flipped to the baseline, cumulatively")
def pixel_flipping(model, x, saliency, target, *, pixels_in_step: int | None = None, baseline="min",
                   score: str = "prob", normalise: bool = True, absolute: bool = False, ties: str = "interpolate",
                   batch_size: int | None = None, seed: int = 0) -> MetricResult:
    """Pixel Flipping (Bach et al. 2015, sec. 4.1): the most relevant pixels are replaced first.

    After each step of ``pixels_in_step`` pixels (cumulative) the target's score is recorded; the
    curve has ``ceil(H*W / pixels_in_step)`` points (the unperturbed image is not one of them) and
    the score is its trapezoid area with unit spacing, as Quantus 0.6 ``PixelFlipping`` with
    ``return_auc_per_sample=True`` (defaults: softmax probability, baseline = the image's smallest
    value, maps normalised). Lower is better. ``curves``/``x`` hold the curve over the fraction of
    pixels flipped. ``ties="interpolate"`` (default): a point inside a block of tied pixels is
    interpolated between the block's ends (:mod:`faithmap.metrics._common`); ``"index"``: ties by
    lower pixel index (Quantus' order).
    """
    name = "pixel_flipping"
    x, saliency, target = check_inputs(name, model, x, saliency, target)
    check_ties(name, ties)
    b, c, h, w = x.shape
    a = prepare_maps(saliency, (h, w), normalise=normalise, absolute=absolute)
    k, n = _steps(name, h, w, pixels_in_step)
    rank = _float_ranks(pixel_rank(a).view(b, 1, h, w), x.dtype)
    base = baseline_image(baseline, x, model)
    counts = torch.tensor([min(h * w, k * (t + 1)) for t in range(n)], device=x.device)
    plans = curve_plans(a.view(b, -1), counts.tolist(), ties)
    job_img, job_cnt, starts = _node_jobs(plans)
    fcounts = job_cnt.to(rank.dtype)

    def build(sl):
        img = job_img[sl]
        out = torch.empty(len(img), c, h, w, device=x.device, dtype=x.dtype)
        for i, r in image_runs(img):
            swap(x[i], base[i], below(rank[i], fcounts[sl][r].view(-1, 1, 1, 1)), out=out[r])
        return out, target[img]

    values = run_jobs(model, len(job_img), build, score=score, batch_size=batch_size, device=x.device)
    curve = torch.stack([p.curve(values[st:st + len(p.nodes)]) for p, st in zip(plans, starts)])
    auc = torch.trapezoid(curve, dx=1.0, dim=1)
    return MetricResult(auc, curves=curve, x=counts.double() / (h * w), images=len(job_img))


# ----------------------------------------------------------------------------------------------
# IROF
# ----------------------------------------------------------------------------------------------


def slic_segments(x: torch.Tensor, n_segments: int = 100) -> torch.Tensor:
    """SLIC superpixels of each image (scikit-image, defaults as Quantus): (B, H, W) labels 0..n-1.

    The one numpy step of the metrics: the segmentation runs once per image on the CPU, on the
    model inputs in channels-last float64, exactly as Quantus 0.6 calls it; the images are spread
    over ``torch.get_num_threads()`` threads (scikit-image's SLIC releases the GIL: 16 images at
    224 px took 1.13 s in one thread and 0.64 s in two here, with identical segments).
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from skimage.segmentation import slic

    # numpy does the layout change: a torch op here would wake torch's worker threads, which then
    # spin for a while on the cores the segmentation threads need (measured: 1-1.5 ms of 20)
    arr = np.ascontiguousarray(x.detach().cpu().numpy().transpose(0, 2, 3, 1), dtype=np.float64)
    if not np.isfinite(arr).all():
        raise FaithmapError("images contain NaN or infinite values; SLIC cannot segment them")
    imgs = list(arr)

    def one(img):
        return torch.from_numpy(slic(img, n_segments=n_segments, start_label=0, channel_axis=-1).astype("int64"))

    workers = min(len(imgs), max(1, torch.get_num_threads()))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(one, imgs))
    else:
        out = [one(img) for img in imgs]
    return torch.stack(out).to(x.device)


def _relabel(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive labels 0..n_i-1 per image, in the order of the given labels, and the counts n_i.

    One scatter of "label present" flags and a cumulative sum over the whole batch (the labels of
    scikit-image's SLIC are already 0..n-1); labels spread wider than the image has pixels (an
    unusual numbering a user passed) go through ``torch.unique`` image by image instead.
    """
    b = segments.shape[0]
    flat = segments.reshape(b, -1)
    shifted = flat - flat.amin(1, keepdim=True)
    width = int(shifted.max()) + 1
    if width > flat.shape[1]:
        out, counts = torch.empty_like(flat), []
        for i in range(b):
            uniq, inv = torch.unique(flat[i], return_inverse=True)
            out[i] = inv
            counts.append(len(uniq))
        return out.view_as(segments), torch.tensor(counts, device=segments.device)
    present = torch.zeros(b, width, dtype=torch.long, device=segments.device).scatter_(1, shifted, 1)
    new_id = present.cumsum(1) - 1
    return new_id.gather(1, shifted).view_as(segments), present.sum(1)


@register_metric("irof", higher_is_better=True, category="faithfulness",
                 paper="Rieger & Hansen, arXiv 2020",
                 summary="area over the relative score curve as superpixels are removed, most relevant first")
def irof(model, x, saliency, target, *, segments: torch.Tensor | None = None, n_segments: int = 100,
         baseline="mean", score: str = "prob", normalise: bool = True, absolute: bool = False,
         ties: str = "interpolate", batch_size: int | None = None, seed: int = 0) -> MetricResult:
    """IROF, Iterative Removal Of Features (Rieger and Hansen 2020).

    The image is cut into SLIC superpixels (``segments`` (B, H, W) labels, or ``n_segments`` for
    scikit-image's SLIC); superpixels are ranked by their mean attribution and replaced by the
    baseline one more at a time, most relevant first (``baseline="mean"``: the image's mean
    value, fixed). The curve is the target's probability relative to the unperturbed image, from
    1 (nothing removed) to the last superpixel, over the fraction of superpixels removed; IROF is
    the area over it, ``1 - trapezoid``. Higher is better. ``ties="interpolate"`` (default):
    superpixels with exactly equal mean attribution (e.g. several inside a map's zero region) are
    removed as one block and the curve is interpolated across it; ``"index"``: ties by lower label.

    Differences from Quantus 0.6 ``IROF``: it fails on 3-channel images (an assertion on the
    mask's shape), recomputes its "mean" baseline from the partly perturbed batch at every step,
    and reports ``n - trapezoid(curve without its first point, dx=1)`` with ``n`` the number of
    superpixels, which grows with ``n``; ``extras["quantus_aoc"]`` holds that value computed from
    our curve.
    """
    name = "irof"
    check_ties(name, ties)
    own = segments is None
    # with our own segments, the images' NaN check happens in numpy inside slic_segments
    x, saliency, target = check_inputs(name, model, x, saliency, target, check_values=not own)
    b, c, h, w = x.shape
    if own:  # segment before this call's torch work (see slic_segments)
        n_segments = check_positive_int(name, "n_segments", n_segments, 2)
        try:
            segments = slic_segments(x, n_segments)
        except FaithmapError as e:  # its NaN check: name the metric
            raise FaithmapError(f"metric {name}: {e}") from None
    a = prepare_maps(saliency, (h, w), normalise=normalise, absolute=absolute)
    segments = torch.as_tensor(segments, device=x.device)
    if segments.shape != (b, h, w):
        raise FaithmapError(f"metric {name}: segments must be (B, H, W) = {(b, h, w)}, got {tuple(segments.shape)}")
    seg, nseg = _relabel(segments.long())
    if int(nseg.min()) < 2:
        raise FaithmapError(f"metric {name}: every image needs at least 2 superpixels")
    L = int(nseg.max())
    flat = (seg + torch.arange(b, device=x.device).view(-1, 1, 1) * L).flatten()
    sums = torch.zeros(b * L, device=x.device, dtype=torch.float64).scatter_add_(0, flat, a.flatten().double())
    cnt = torch.zeros(b * L, device=x.device, dtype=torch.float64).scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    means = (sums / cnt.clamp_min(1)).view(b, L)
    means = torch.where(cnt.view(b, L) > 0, means, torch.full_like(means, -math.inf))
    order = torch.sort(-means, dim=1, stable=True).indices
    seg_rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=x.device).expand(b, L))
    prank = _float_ranks(seg_rank.gather(1, seg.view(b, -1)).view(b, 1, h, w), x.dtype)
    base = baseline_image(baseline, x, model)
    # each image's curve on t = 0 .. n_i superpixels removed; with ties="interpolate" the points
    # inside a block of superpixels with equal mean attribution are interpolated (no images)
    plans = [curve_plans(means[i:i + 1], range(int(nseg[i]) + 1), ties)[0] for i in range(b)]
    # jobs: the photos, then each image's nodes t >= 1
    later = [p.nodes[p.nodes > 0] for p in plans]
    job_img = torch.cat([torch.arange(b, device=x.device)] +
                        [torch.full_like(t, i) for i, t in enumerate(later)])
    job_t = torch.cat([torch.zeros(b, device=x.device, dtype=torch.long)] + later)

    ft = job_t.to(prank.dtype)

    def build(sl):
        img, t = job_img[sl], ft[sl]
        out = torch.empty(len(img), c, h, w, device=x.device, dtype=x.dtype)
        for i, r in image_runs(img):
            swap(x[i], base[i], below(prank[i], t[r].view(-1, 1, 1, 1)), out=out[r])
        return out, target[img]

    s = run_jobs(model, len(job_img), build, score=score, batch_size=batch_size, device=x.device)
    p0 = s[:b]
    curves = torch.full((b, L + 1), float("nan"), device=x.device, dtype=torch.float64)
    rel = s[b:] / p0[job_img[b:]]
    pos = b
    for i, p in enumerate(plans):
        m = len(later[i])
        node_vals = torch.cat([torch.ones(1, dtype=torch.float64, device=x.device), rel[pos - b:pos - b + m]])
        curves[i, :int(nseg[i]) + 1] = p.curve(node_vals)
        pos += m
    # trapezoids over curves of different lengths, all images at once: torch.trapezoid's own
    # formula, (sum - (first + last) / 2) * dx, over each curve's n_i + 1 points
    last = curves.gather(1, nseg.view(-1, 1)).squeeze(1)
    valid = torch.arange(L + 1, device=x.device) <= nseg.view(-1, 1)
    total = torch.where(valid, curves, torch.zeros_like(curves)).sum(1)
    n = nseg.to(torch.float64)
    scores = 1 - (total - (curves[:, 0] + last) * 0.5) * (1.0 / n)
    quantus = n - ((total - curves[:, 0]) - (curves[:, 1] + last) * 0.5)
    return MetricResult(scores, curves=curves, images=len(job_img),
                        extras={"segments": nseg, "quantus_aoc": quantus})


# ----------------------------------------------------------------------------------------------
# Sufficiency
# ----------------------------------------------------------------------------------------------


@register_metric("sufficiency", higher_is_better=True, category="faithfulness", set_level=True,
                 paper="Dasgupta, Frost & Moshkovitz, ICML 2022",
                 summary="share of the other images with a similar map that get the same predicted class (within the batch)")
def sufficiency(model, x, saliency, target, *, threshold: float = 0.6, normalise: bool = True,
                absolute: bool = True, batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Local sufficiency (Dasgupta et al. 2022), as Quantus 0.6 ``Sufficiency`` estimates it.

    A map "applies to" another image of the batch when the standardized Euclidean distance of
    the two maps (each feature divided by its variance over the batch, ``ddof=1``), divided by
    the largest distance in the batch, is at most ``threshold``; the score of an image is the
    fraction of those other images whose predicted class equals its own (0 when there are none).
    A set-level metric: an image's score depends on the other images of the batch (a batch of
    one scores 0), so the batch is the evaluation set. Features with zero variance over the
    batch are left out (scipy's ``seuclidean``, which Quantus calls, turns them into NaN).
    Unlike Quantus, maps are normalised per image, not by one maximum over the batch.
    """
    name = "sufficiency"
    x, saliency, target = check_inputs(name, model, x, saliency, target)
    b, c, h, w = x.shape
    a = prepare_maps(saliency, (h, w), normalise=normalise, absolute=absolute).flatten(1).double()
    if b < 2:
        return torch.zeros(b, device=x.device, dtype=torch.float64)
    var = a.var(0, unbiased=True)
    keep = var > 0
    z = a[:, keep] / var[keep].sqrt()
    d = torch.cdist(z, z)
    d = d / d.max() if float(d.max()) > 0 else d
    close = (d <= threshold) & ~torch.eye(b, dtype=torch.bool, device=x.device)
    bs = resolve_batch_size(batch_size, x.device)
    with model_guard(model), torch.no_grad():
        pred = torch.cat([model(x[sl]).argmax(1) for sl in chunks(b, bs)])
    same = pred.view(1, -1) == pred.view(-1, 1)
    n_close = close.sum(1)
    frac = (close & same).sum(1).double() / n_close.clamp_min(1)
    return torch.where(n_close > 0, frac, torch.zeros_like(frac))


# ----------------------------------------------------------------------------------------------
# Infidelity
# ----------------------------------------------------------------------------------------------


def infidelity_perturbations(x: torch.Tensor, n_samples: int, *, perturbation: str = "square", patch: int | None = None,
                             noise_std: float = 0.2, baseline="black", model=None, seed: Seed = 0,
                             per_chunk: int | None = None) -> Iterator[torch.Tensor]:
    """The perturbations ``I`` of :func:`infidelity`, in chunks (B, k, C, H, W) of ``per_chunk``
    samples (all at once by default). Image ``i`` draws from its own generator seeded with
    ``seed``, one sample after the other, so the draws do not depend on the batch or chunk size."""
    b, c, h, w = x.shape
    gens = per_image_generators(seed, b, "cpu")
    per = per_chunk or n_samples
    if perturbation == "square":
        p = patch or max(1, min(h, w) // 4)
        pos = torch.stack([torch.stack([torch.randint(0, h - p + 1, (n_samples,), generator=g),
                                        torch.randint(0, w - p + 1, (n_samples,), generator=g)], 1) for g in gens])
        pos = pos.to(x.device)  # (B, S, 2)
        base = baseline_image(baseline, x, model)
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        diff = (x - base).unsqueeze(1)
        for s0 in range(0, n_samples, per):
            q = pos[:, s0:s0 + per]
            r0, c0 = q[..., 0].view(b, -1, 1, 1), q[..., 1].view(b, -1, 1, 1)
            # the square as the product of its row band (B, k, H, 1) and column band (B, k, 1, W)
            in_rows = ((rows >= r0) & (rows < r0 + p)).to(x.dtype)
            in_cols = ((cols >= c0) & (cols < c0 + p)).to(x.dtype)
            yield diff * (in_rows * in_cols).unsqueeze(2)
    elif perturbation == "gaussian":
        for s0 in range(0, n_samples, per):
            k = min(per, n_samples - s0)
            draws = torch.stack([torch.stack([torch.randn((c, h, w), generator=g) for _ in range(k)]) for g in gens])
            yield (noise_std * draws).to(device=x.device, dtype=x.dtype)
    else:
        raise FaithmapError(f"metric infidelity: unknown perturbation {perturbation!r}; choose square or gaussian")


@register_metric("infidelity", higher_is_better=False, category="faithfulness",
                 paper="Yeh et al., NeurIPS 2019",
                 summary="mean squared gap between the map's predicted and the model's actual score change under random perturbations")
def infidelity(model, x, saliency, target, *, n_samples: int = 10, perturbation: str = "square",
               patch: int | None = None, noise_std: float = 0.2, baseline="black", score: str = "logit",
               normalise: bool = False, absolute: bool = False, optimal_scaling: bool = False,
               batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019, def. 2.1): ``E_I[(I^T Phi - (f(x) - f(x - I)))^2]``.

    ``Phi`` is the map at input size, the same for every channel. ``perturbation="square"``
    (the paper's square removal): ``I = (x - baseline)`` on a ``patch`` x ``patch`` square (default
    a quarter of the side: 56 at 224, the paper's setting) at a uniformly random position, 0
    elsewhere, so ``x - I`` shows the baseline in the square; ``"gaussian"``: ``I`` is Gaussian noise
    of std ``noise_std`` on every value. ``optimal_scaling`` multiplies ``I^T Phi`` by the beta that
    minimises the error (Yeh et al.'s code, captum's ``normalize=True``), making the score
    invariant to the map's scale. Lower is better.

    Quantus 0.6 ``Infidelity`` is not this expectation: it removes the patches of a fixed grid
    one after another, cumulatively, in raster order, with no randomness (its ``n_perturb_samples``
    repeats the same computation), so it is not compared here; captum's ``infidelity`` is, on the
    same perturbations.
    """
    name = "infidelity"
    x, saliency, target = check_inputs(name, model, x, saliency, target)
    b, c, h, w = x.shape
    n_samples = check_positive_int(name, "n_samples", n_samples)
    if patch is not None and not 1 <= int(patch) <= min(h, w):
        raise FaithmapError(f"metric {name}: patch must be between 1 and {min(h, w)}, got {patch}")
    a = prepare_maps(saliency, (h, w), normalise=normalise, absolute=absolute)
    bs = resolve_batch_size(batch_size, x.device)
    per = max(1, bs // b)  # samples per chunk: about batch_size images
    if perturbation not in ("square", "gaussian"):
        raise FaithmapError(f"metric {name}: unknown perturbation {perturbation!r}; choose square or gaussian")
    f0, dots, deltas = None, [], []
    for pert in infidelity_perturbations(x, n_samples, perturbation=perturbation, patch=patch, noise_std=noise_std,
                                         baseline=baseline, model=model, seed=seed, per_chunk=per):
        k = pert.shape[1]
        dots.append((pert * a.view(b, 1, 1, h, w)).flatten(2).sum(2).double())  # (B, s)
        moved = (x.unsqueeze(1) - pert).reshape(b * k, c, h, w)
        tt = target.repeat_interleave(k)
        if f0 is None:  # the photos go through the model with the first chunk
            moved, tt = torch.cat([x, moved]), torch.cat([target, tt])
        f1 = run_jobs(model, len(tt), lambda s_: (moved[s_], tt[s_]), score=score, batch_size=bs, device=x.device)
        if f0 is None:
            f0, f1 = f1[:b], f1[b:]
        deltas.append(f0.view(b, 1) - f1.view(b, k))
    dot, delta = torch.cat(dots, 1), torch.cat(deltas, 1)
    if optimal_scaling:
        beta = (dot * delta).mean(1, keepdim=True) / (dot * dot).mean(1, keepdim=True).clamp_min(1e-300)
        dot = beta * dot
    return ((dot - delta) ** 2).mean(1)


# ----------------------------------------------------------------------------------------------
# RISE insertion / deletion and Ins-Del
# ----------------------------------------------------------------------------------------------


def rise_kernel(klen: int = 11, sigma: float = 5.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """The RISE blur kernel (klen x klen): scipy's ``gaussian_filter`` of a centred delta with
    ``sigma`` (reflect borders, truncated at 4 sigma), which folds the Gaussian's tails back
    into the window; computed here in closed form."""
    radius = int(4.0 * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (k / sigma) ** 2)
    g = g / g.sum()
    centre = klen // 2
    one = torch.zeros(klen, dtype=torch.float64)
    for j in range(klen):  # out[j] = sum_k g[k] * delta[reflect(j + k)]
        for kk, gv in zip(k.tolist(), g.tolist()):
            m = j + int(kk)
            while m < 0 or m >= klen:
                m = -m - 1 if m < 0 else 2 * klen - m - 1
            if m == centre:
                one[j] += gv
    return torch.outer(one, one).to(device=device, dtype=dtype)


def rise_blur(x: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion substrate: each channel convolved with :func:`rise_kernel`, zero padding."""
    c = x.shape[1]
    k = rise_kernel(klen, sigma, x.device, x.dtype).view(1, 1, klen, klen).expand(c, 1, klen, klen)
    return F.conv2d(x, k, padding=klen // 2, groups=c)


def rise_curves(model, x, saliency, target, *, step: int | None = None, score: str = "prob",
                deletion_baseline="zero", insertion_baseline="blur11", ties: str = "interpolate",
                batch_size: int | None = None) -> MetricResult:
    """RISE deletion and insertion curves (Petsiuk et al. 2018), (B, n+1) each, in ``extras``.

    Pixels of the input-size map are ranked; ``step`` pixels (default: the image width, 224 at
    224 x 224 as in RISE) change at a time, ``n = ceil(H*W / step)`` steps. Deletion starts at the
    photo and moves pixels to ``deletion_baseline`` (RISE: the zero image); insertion starts at
    ``insertion_baseline`` (RISE: the 11 x 11, sigma 5 blur, ``"blur11"``) and moves pixels to the
    photo. AUC = trapezoid over n equal intervals of [0, 1], RISE's ``(sum - first/2 - last/2) / n``.
    The photo is scored once for both curves: ``B (2n + 1)`` images for maps without ties.
    ``ties="interpolate"`` (default): points inside a block of tied pixels (e.g. the zero region of
    an upsampled mask or CAM) are interpolated between the block's ends
    (:mod:`faithmap.metrics._common`), which needs fewer images; ``"index"``: ties by lower pixel
    index (RISE's order).
    """
    name = "ins_del"
    x, saliency, target = check_inputs(name, model, x, saliency, target)
    check_ties(name, ties)
    b, c, h, w = x.shape
    a = prepare_maps(saliency, (h, w), normalise=False, absolute=False)
    k = w if step is None else check_positive_int(name, "step", step)
    n = math.ceil(h * w / k)
    rank = _float_ranks(pixel_rank(a).view(b, 1, h, w), x.dtype)
    dele = baseline_image(deletion_baseline, x, model)
    ins = rise_blur(x) if insertion_baseline == "blur11" else baseline_image(insertion_baseline, x, model)
    grid = [min(h * w, k * t) for t in range(n + 1)]
    plans = curve_plans(a.view(b, -1), grid, ties)
    # jobs per image: deletion at every node (node 0 is the photo, scored once for both curves),
    # then insertion at every node but the last (all pixels inserted: the photo again)
    job_img, job_kind, job_cnt, where = [], [], [], []
    for i, p in enumerate(plans):
        nd = p.nodes
        where.append(sum(len(t) for t in job_cnt))
        job_img += [torch.full((2 * len(nd) - 1,), i, dtype=torch.long, device=x.device)]
        job_kind += [torch.cat([torch.zeros(len(nd), dtype=torch.long, device=x.device),
                                torch.ones(len(nd) - 1, dtype=torch.long, device=x.device)])]
        job_cnt += [torch.cat([nd, nd[:-1]])]
    job_img, job_kind, job_cnt = torch.cat(job_img), torch.cat(job_kind), torch.cat(job_cnt)
    fcnt = job_cnt.to(rank.dtype)
    run_key = job_img * 2 + job_kind

    def build(sl):
        img = job_img[sl]
        out = torch.empty(len(img), c, h, w, device=x.device, dtype=x.dtype)
        for key, r in image_runs(run_key[sl]):
            i, kind = divmod(key, 2)
            t = fcnt[sl][r].view(-1, 1, 1, 1)
            if kind == 0:
                swap(x[i], dele[i], below(rank[i], t), out=out[r])
            else:
                swap(ins[i], x[i], below(rank[i], t), out=out[r])  # inserted pixels show the photo
        return out, target[img]

    s = run_jobs(model, len(job_img), build, score=score, batch_size=batch_size, device=x.device)
    dels, inss = [], []
    for p, st in zip(plans, where):
        m = len(p.nodes)
        dv = s[st:st + m]
        iv = torch.cat([s[st + m:st + 2 * m - 1], s[st:st + 1]])
        dels.append(p.curve(dv))
        inss.append(p.curve(iv))
    deletion, insertion = torch.stack(dels), torch.stack(inss)

    def auc(cv):
        return (cv.sum(1) - cv[:, 0] / 2 - cv[:, -1] / 2) / (cv.shape[1] - 1)

    d_auc, i_auc = auc(deletion), auc(insertion)
    return MetricResult(i_auc - d_auc, x=torch.arange(n + 1, device=x.device, dtype=torch.float64) / n,
                        images=len(job_img), extras={"deletion": deletion, "insertion": insertion,
                                                     "deletion_auc": d_auc, "insertion_auc": i_auc})


@register_metric("rise_deletion", higher_is_better=False, category="faithfulness",
                 paper="Petsiuk, Das & Saenko, BMVC 2018",
                 summary="RISE deletion AUC: input-size pixels, most salient first, moved to the zero image, 224 a step")
def rise_deletion(model, x, saliency, target, *, step: int | None = None, score: str = "prob",
                  deletion_baseline="zero", insertion_baseline="blur11", ties: str = "interpolate",
                  batch_size: int | None = None, seed: int = 0) -> MetricResult:
    """RISE deletion AUC per image (lower is better); see :func:`rise_curves`."""
    r = rise_curves(model, x, saliency, target, step=step, score=score, deletion_baseline=deletion_baseline,
                    insertion_baseline=insertion_baseline, ties=ties, batch_size=batch_size)
    return MetricResult(r.extras["deletion_auc"], curves=r.extras["deletion"], x=r.x, images=r.images)


@register_metric("rise_insertion", higher_is_better=True, category="faithfulness",
                 paper="Petsiuk, Das & Saenko, BMVC 2018",
                 summary="RISE insertion AUC: input-size pixels, most salient first, revealed on an 11x11 blur, 224 a step")
def rise_insertion(model, x, saliency, target, *, step: int | None = None, score: str = "prob",
                   deletion_baseline="zero", insertion_baseline="blur11", ties: str = "interpolate",
                   batch_size: int | None = None, seed: int = 0) -> MetricResult:
    """RISE insertion AUC per image (higher is better); see :func:`rise_curves`."""
    r = rise_curves(model, x, saliency, target, step=step, score=score, deletion_baseline=deletion_baseline,
                    insertion_baseline=insertion_baseline, ties=ties, batch_size=batch_size)
    return MetricResult(r.extras["insertion_auc"], curves=r.extras["insertion"], x=r.x, images=r.images)


@register_metric("ins_del", higher_is_better=True, category="faithfulness",
                 paper="Englebert, Cornu & De Vleeschouwer, arXiv 2022; Petsiuk, Das & Saenko, BMVC 2018", aliases=("insertion_deletion",),
                 summary="RISE insertion AUC minus RISE deletion AUC (pixel level, the paper's Ins-Del)")
def ins_del(model, x, saliency, target, *, step: int | None = None, score: str = "prob", deletion_baseline="zero",
            insertion_baseline="blur11", ties: str = "interpolate", batch_size: int | None = None,
            seed: int = 0) -> MetricResult:
    """Insertion AUC minus deletion AUC of :func:`rise_curves` per image (higher is better)."""
    return rise_curves(model, x, saliency, target, step=step, score=score, deletion_baseline=deletion_baseline,
                       insertion_baseline=insertion_baseline, ties=ties, batch_size=batch_size)
