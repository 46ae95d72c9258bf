"""``python -m bench metrics``: the explanation-quality metrics against Quantus 0.6, same run, same inputs.

Each metric scores one batch of ``images`` (16) maps on three models: ``tiny``, one strided
convolution and a linear head at 48 x 48 (the model costs almost nothing, so what is timed is the
metric's own work), ``small``, a random 4-layer CNN at 48 x 48, and ``lite0``, EfficientNet-Lite0
at 224 x 224 (the model's cost dominates). Both libraries get the same model
(a faithmap Classifier, which counts the images it sees), inputs, input-size maps, masks and
settings; the sampling metrics replay our noise in Quantus through its ``perturb_func`` hook, so
the scores can be compared (column "max rel. diff"). Where our definition differs from
Quantus' (per-image normalisation, dropped class changes) the bench uses the settings on which
the two coincide. Infidelity is compared with captum (Quantus' is another computation); Quantus
0.6's IROF fails on RGB images and calls ``np.trapz`` (gone in numpy 2), so it runs with a
broadcasting ``perturb_func`` and ``np.trapz`` lent for the call, and our IROF reports its value
in Quantus' form for the comparison. The explanation for the robustness metrics is the
channel-summed absolute input gradient average-pooled to a CAM-sized grid (6 x 6 / 7 x 7),
computed by the same function for both libraries.

Options (``--param KEY=VALUE``): ``models=tiny,small,lite0``, ``metrics=name,name``, ``images=16``,
``samples=50`` (robustness samples on ``tiny`` and ``small``), ``samples_lite0=5``, ``threads`` (torch threads for
both libraries; default torch's); ``--repeats N`` keeps the
best time of N runs; ``--batch-size`` is faithmap's (default 256 on ``tiny``/``small``, 20 on ``lite0``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from faithmap import models
from faithmap.core.batching import model_guard
from faithmap.core.perturb import upsample
from faithmap.data import load_sample, sample_names
from faithmap.errors import FaithmapError
from faithmap.metrics import complexity as C
from faithmap.metrics import faithfulness as F
from faithmap.metrics import localisation as L
from faithmap.metrics import robustness as R

from .common import Options, bench, dump, machine, table


def to_input_size(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps upsampled to ``size`` as the metrics do it (bilinear, corners aligned): (B, H, W)."""
    return upsample(saliency.unsqueeze(1), tuple(size))[:, 0]


class BenchCNN(nn.Module):
    """A small random CNN (4 conv layers, 10 classes) with moderate logits."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                    m.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class TinyCNN(nn.Module):
    """One strided convolution, a ReLU, global pooling and a linear head: a model that costs
    almost nothing, so that what is timed is the metric's own work."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def gradient_map(model, grid: int) -> Callable:
    """``(x, target) -> |d score / d x|`` summed over channels and average-pooled to ``grid`` x ``grid``."""

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            s = model(x).gather(1, target.view(-1, 1)).sum()
            g, = torch.autograd.grad(s, x)
        return nn.functional.adaptive_avg_pool2d(g.abs().sum(1, keepdim=True), grid)[:, 0].detach()

    return explain


def _setup(kind: str, n: int, batch_size: int | None = None) -> dict[str, Any]:
    """The model, inputs, maps and masks of one bench model (``tiny``, ``small``, ``lite0``), ``n`` images;
    ``batch_size``: faithmap's (default 256 on tiny/small, 20 on lite0)."""
    if kind in ("tiny", "small"):
        net = TinyCNN() if kind == "tiny" else BenchCNN()
        clf = models.wrap(net.eval(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=48, name=f"bench_{kind}")
        g = torch.Generator().manual_seed(0)
        low = torch.rand(n, 3, 6, 6, generator=g)
        x = nn.functional.interpolate(low, size=48, mode="bilinear", align_corners=False)
        x = (x + 0.1 * torch.rand(n, 3, 48, 48, generator=g) - 0.5) / 0.5
        grid, pixels, features, bs = 6, 24, 72, batch_size or 256
    elif kind == "lite0":
        clf = models.load()
        photos = [clf.preprocess(load_sample(s))[0] for s in sample_names()]
        g = torch.Generator().manual_seed(0)
        x = torch.stack([photos[i % len(photos)] for i in range(n)])
        x = x + 0.05 * torch.randn(x.shape, generator=g) * (torch.arange(n) >= len(photos)).view(-1, 1, 1, 1)
        flip = ((torch.arange(n) // len(photos)) % 2 == 1).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        grid, pixels, features, bs = 7, 523, 1568, batch_size or 20
    else:
        raise FaithmapError(f"unknown bench model {kind!r}; choose tiny, small or lite0")
    clf.eval()  # Quantus refuses a module in training mode
    with model_guard(clf), torch.no_grad():
        target = clf(x).argmax(1)
    explain = gradient_map(clf, grid)
    sal = explain(x, target)
    h = x.shape[-1]
    masks = torch.zeros(n, h, h, dtype=torch.bool)
    for i in range(n):
        r, c = (i * 7) % (h // 2), (i * 11) % (h // 2)
        masks[i, r:r + h // 2, c:c + h // 2] = True
    a = to_input_size(sal, (h, h)).numpy()[:, None]
    return {"kind": kind, "model": clf, "x": x, "t": target, "sal": sal, "explain": explain, "masks": masks, "a": a,
            "pixels": pixels, "features": features, "bs": bs, "grid": grid}


def _quantus_explain(explain: Callable) -> Callable:
    def fn(model, inputs, targets, **kw):
        x = torch.as_tensor(inputs).float()
        sal = explain(x, torch.as_tensor(targets).long())
        return to_input_size(sal, tuple(x.shape[-2:])).numpy()[:, None]

    return fn


def _replay(noise: torch.Tensor) -> Callable:
    state = {"i": 0}

    def fn(arr, indices=None, **kw):
        out = arr + noise[state["i"]].reshape(arr.shape).numpy()
        state["i"] += 1
        return out

    return fn


def _entries(ctx: dict, samples: int) -> list[tuple[str, str, Callable, Callable | None, str]]:
    """(metric, settings, ours(), peer() or None, peer name)."""
    import quantus

    m, x, t, sal, ex, bs = ctx["model"], ctx["x"], ctx["t"], ctx["sal"], ctx["explain"], ctx["bs"]
    xn, tn, a, s = x.numpy(), t.numpy(), ctx["a"], ctx["masks"].numpy()[:, None].astype(float)
    k, f = ctx["pixels"], ctx["features"]
    qex = _quantus_explain(ex)
    q = dict(disable_warnings=True)
    out = [
        ("pixel_flipping", f"{k} px/step",  # Quantus' order of tied pixels: ties="index"
         lambda: F.pixel_flipping(m, x, sal, t, pixels_in_step=k, ties="index", batch_size=bs).scores,
         lambda: np.trapezoid(np.array(quantus.PixelFlipping(features_in_step=f, **q)(m, xn, tn, a, device="cpu")), axis=1),
         "Quantus"),
        ("faithfulness_estimate", f"{k} px/step",
         lambda: F.faithfulness_estimate(m, x, sal, t, pixels_in_step=k, ties="index", batch_size=bs),
         lambda: quantus.FaithfulnessEstimate(features_in_step=f, **q)(m, xn, tn, a, device="cpu"), "Quantus"),
        ("irof", "SLIC 100", lambda: _irof_quantus_form(F.irof(m, x, sal, t, ties="index", batch_size=bs)),
         lambda: _quantus_irof(ctx), "Quantus (patched)"),
        ("sufficiency", "threshold 0.6", lambda: F.sufficiency(m, x, sal, t, normalise=False, batch_size=bs),
         lambda: quantus.Sufficiency(normalise=False, **q)(m, xn, tn, np.abs(a), device="cpu"), "Quantus"),
        ("infidelity", "10 squares", lambda: F.infidelity(m, x, sal, t, n_samples=10, batch_size=bs), "captum", "captum"),
        ("ins_del", "RISE", lambda: F.ins_del(m, x, sal, t, batch_size=bs).scores, None, "-"),
        ("complexity", "", lambda: C.complexity(m, x, sal, t),
         lambda: quantus.Complexity(normalise=False, **q)(m, xn, tn, a / np.abs(a).reshape(len(a), -1).max(1).reshape(-1, 1, 1, 1),
                                                          device="cpu"), "Quantus"),
        ("sparseness", "", lambda: C.sparseness(m, x, sal, t),
         lambda: quantus.Sparseness(normalise=False, **q)(m, xn, tn, a / np.abs(a).reshape(len(a), -1).max(1).reshape(-1, 1, 1, 1),
                                                          device="cpu"), "Quantus"),
        ("attribution_localisation", "", lambda: L.attribution_localisation(m, x, sal, t, masks=ctx["masks"]),
         lambda: quantus.AttributionLocalisation(**q)(m, xn, tn, a, s_batch=s, device="cpu"), "Quantus"),
        ("top_k_intersection", "k=1000" if x.shape[-1] > 48 else "k=200",
         lambda: L.top_k_intersection(m, x, sal, t, masks=ctx["masks"], k=1000 if x.shape[-1] > 48 else 200,
                                       ties="index"),
         lambda: quantus.TopKIntersection(k=1000 if x.shape[-1] > 48 else 200, **q)(m, xn, tn, a, s_batch=s, device="cpu"),
         "Quantus"),
        ("relevance_rank_accuracy", "", lambda: L.relevance_rank_accuracy(m, x, sal, t, masks=ctx["masks"], ties="index"),
         lambda: quantus.RelevanceRankAccuracy(**q)(m, xn, tn, a, s_batch=s, device="cpu"), "Quantus"),
        ("relevance_mass_accuracy", "", lambda: L.relevance_mass_accuracy(m, x, sal, t, masks=ctx["masks"]),
         lambda: quantus.RelevanceMassAccuracy(**q)(m, xn, tn, a, s_batch=s, device="cpu"), "Quantus"),
    ]
    uni = R.perturbation_noise(x, samples, noise="uniform", low=-0.2, high=0.2, seed=0)
    gau = R.perturbation_noise(x, samples, noise="gaussian", std=0.1, seed=0)
    pos = R.perturbation_noise(x, samples, noise="uniform", low=0.02, high=0.2, seed=0)
    rob = dict(explain=ex, n_samples=samples, batch_size=bs, seed=0)
    out += [
        ("max_sensitivity", f"{samples} samples", lambda: R.max_sensitivity(m, x, sal, t, **rob),
         lambda: quantus.MaxSensitivity(nr_samples=samples, perturb_func=_replay(uni), **q)(
             m, xn, tn, a, explain_func=qex, device="cpu"), "Quantus"),
        ("avg_sensitivity", f"{samples} samples", lambda: R.avg_sensitivity(m, x, sal, t, **rob),
         lambda: quantus.AvgSensitivity(nr_samples=samples, perturb_func=_replay(uni), **q)(
             m, xn, tn, a, explain_func=qex, device="cpu"), "Quantus"),
        ("local_lipschitz", f"{samples} samples", lambda: R.local_lipschitz(m, x, sal, t, normalise=False, **rob),
         lambda: quantus.LocalLipschitzEstimate(nr_samples=samples, normalise=False, perturb_func=_replay(gau), **q)(
             m, xn, tn, a, explain_func=qex, device="cpu"), "Quantus"),
        ("relative_input_stability", f"{samples} samples",
         lambda: R.relative_input_stability(m, x, sal, t, exclude_changed=False, **rob),
         lambda: quantus.RelativeInputStability(nr_samples=samples, perturb_func=_replay(pos),
                                                return_nan_when_prediction_changes=False, **q)(
             m, xn, tn, a_batch=a, explain_func=qex, device="cpu"), "Quantus"),
        ("relative_output_stability", f"{samples} samples",
         lambda: R.relative_output_stability(m, x, sal, t, exclude_changed=False, **rob),
         lambda: quantus.RelativeOutputStability(nr_samples=samples, perturb_func=_replay(pos),
                                                 return_nan_when_prediction_changes=False, **q)(
             m, xn, tn, a_batch=a, explain_func=qex, device="cpu"), "Quantus"),
    ]
    return out


@contextlib.contextmanager
def _numpy_trapz():
    """Quantus 0.6 calls ``np.trapz``, which numpy 2 removed: lend it ``np.trapezoid`` meanwhile."""
    missing = not hasattr(np, "trapz")
    if missing:
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if missing:
            del np.trapz


def _quantus_irof(ctx: dict):
    """Quantus 0.6 IROF made to run on RGB images: its mask is (B, 1, H, W) and its own perturb
    function asserts the image's shape, so we pass one that broadcasts the mask and fills with
    each image's mean (our fixed baseline; Quantus' recomputes the batch mean at every step)."""
    import quantus

    x = ctx["x"]
    base = x.flatten(1).mean(1).view(-1, 1, 1, 1).expand_as(x).numpy()

    def perturb(arr, mask, **kw):
        return np.where(mask, base, arr)

    with _numpy_trapz():
        return quantus.IROF(perturb_func=perturb, return_aggregate=False, disable_warnings=True)(
            ctx["model"], x.numpy(), ctx["t"].numpy(), ctx["a"], device="cpu")


def _irof_quantus_form(res) -> np.ndarray:
    """Quantus' IROF value from our curves: ``n - trapezoid(curve[1:])``, less the half step its
    zero padding adds to images with fewer superpixels than the batch's largest count."""
    n = res.extras["segments"]
    out = res.extras["quantus_aoc"].clone()
    last = res.curves[torch.arange(len(n)), n]
    return (out - torch.where(n < n.max(), last / 2, torch.zeros_like(last))).numpy()


def _captum_infidelity(ctx: dict) -> Callable:
    """captum's ``infidelity`` on faithmap's perturbations. captum leaves drawing them to the
    user's ``perturb_func``; the timed call draws them with faithmap's generator and upsamples the
    maps, as a captum user has to, so both sides pay for the same draws."""
    from captum.metrics import infidelity

    m, x, t, sal = ctx["model"], ctx["x"], ctx["t"], ctx["sal"]

    def run():
        pert = torch.cat(list(F.infidelity_perturbations(x, 10, model=m, seed=0)), 1)  # (B, S, C, H, W)
        attr = to_input_size(sal, tuple(x.shape[-2:])).unsqueeze(1).expand_as(x)
        state = {"at": 0}

        def perturb(inp):
            # captum asks for the samples in chunks of k per image (k = max_examples_per_batch // B),
            # each chunk laid out image-major (its inputs repeat_interleave'd): hand out samples
            # at .. at + k of every image
            k = len(inp) // len(x)
            p = pert[:, state["at"]:state["at"] + k].reshape(-1, *x.shape[1:])
            state["at"] += k
            return p, inp - p

        return infidelity(m, perturb, x, attr, target=t, n_perturb_samples=10, max_examples_per_batch=ctx["bs"])

    return run


def _timed(fn: Callable, model, repeats: int) -> tuple[float, Any, int]:
    best, out, images = float("inf"), None, 0
    for _ in range(max(1, repeats)):
        snap = model.counter.snapshot()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
        sec = time.perf_counter() - start
        images = model.counter.since(snap)["images"]
        best = min(best, sec)
    return best, out, images


def _scores(v) -> np.ndarray:
    if hasattr(v, "scores"):
        v = v.scores
    if isinstance(v, torch.Tensor):
        v = v.detach().double().cpu().numpy()
    return np.asarray(v, dtype=np.float64).reshape(-1)


COLUMNS = [("model", "model", ""), ("metric", "metric", ""), ("settings", "settings", ""),
           ("seconds", "faithmap s", ".3f"), ("peer_seconds", "peer s", ".3f"), ("speedup", "speed-up", ".1f"),
           ("images", "faithmap model images", ".0f"), ("peer_images", "peer model images", ".0f"),
           ("diff", "max rel. diff", ".1e"), ("peer", "peer", "")]


@bench("metrics")
def bench_metrics(opts: Options) -> int:
    """Seconds and model images of every Table-2 metric against Quantus 0.6 (captum for infidelity)."""
    p = opts.params
    kinds = [k.strip() for k in str(p.get("models", "tiny,small,lite0")).split(",") if k.strip()]
    wanted = [k.strip() for k in str(p.get("metrics", "")).split(",") if k.strip()]
    n = int(p.get("images", 16))
    if n < 2:
        raise FaithmapError("--param images must be at least 2")
    threads = int(p.get("threads", torch.get_num_threads()))
    if threads < 1:
        raise FaithmapError("--param threads must be at least 1")
    torch.set_num_threads(threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for kind in kinds:
        ctx = _setup(kind, n, opts.batch_size)
        samples = int(p.get("samples_lite0", 5)) if kind == "lite0" else int(p.get("samples", 50))
        for name, settings, ours, peer, peer_name in _entries(ctx, samples):
            if wanted and name not in wanted:
                continue
            if peer == "captum":
                peer = _captum_infidelity(ctx)
            sec, val, images = _timed(ours, ctx["model"], opts.repeats)
            row = {"model": f"{kind} {ctx['x'].shape[-1]}px", "metric": name, "settings": settings, "seconds": sec,
                   "images": images, "peer": peer_name}
            if peer is not None:
                psec, pval, pimages = _timed(peer, ctx["model"], opts.repeats)
                a, b = _scores(val), _scores(pval)
                scale = np.maximum(np.abs(b), 1e-12)
                row.update(peer_seconds=psec, peer_images=pimages, speedup=psec / sec,
                           diff=float(np.nanmax(np.abs(a - b) / scale)) if a.shape == b.shape else float("nan"))
            rows.append(row)
            print(f"{row['model']} {name}: {sec:.3f} s" + (f", peer {row['peer_seconds']:.3f} s" if peer else ""),
                  file=sys.stderr, flush=True)
    print(table(rows, COLUMNS))
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{n} images per batch, best of {opts.repeats} run(s); load average {load:.1f} at the start, "
          f"{end_load:.1f} at the end; machine: {machine()}")
    dump(opts.json, {"machine": machine(), "threads": threads, "load": [load, end_load], "rows": rows})
    return 0
