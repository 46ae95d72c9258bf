"""``python -m bench truth-leaks``: where the mass outside what a tier-0 model can see comes from.

On the tier-0 scenarios (:mod:`faithmap.truth.tier0`; ``--param trunk=lite0`` for the Lite0 ones,
``seeds=3``, ``images=4``), each row changes one thing about one method and reports the share of the
map outside the evidence (mean over images and model seeds, with the bootstrap interval of
:func:`faithmap.truth.scores.interval`):

* **CAM upsampling**: Layer-CAM and HiResCAM (element-wise, so 0 outside the cell on the layer's
  grid) and Grad-CAM under the three upsamplings (bilinear corner-aligned as faithmap's metrics,
  bilinear half-pixel, nearest);
* **CAM channel weights**: Grad-CAM (one weight per channel, averaged over the whole map) against
  HiResCAM (gradient times activation, per position) on the grid model, nearest upsampling;
* **mask grid**: I-GOS and the meaningful-perturbation mask at three mask resolutions;
* **blur baseline**: I-GOS and occlusion with the blur baseline against a black one;
* **smooth masks**: Extremal Perturbation's mask smoothing ``sigma`` and its flip ``jitter``;
* **windows**: occlusion's patch size;
* **noise**: SmoothGrad's input noise (no leak: the gradient outside stays 0) against RISE's random
  masks (their mean, weighted by the average score, lands everywhere) at two mask counts;
* **regions**: XRAI's Felzenszwalb segments, which do not know the cell borders.
"""

from __future__ import annotations

import sys
import time

import faithmap
from faithmap.registry import METHODS
from faithmap.truth import tier0
from faithmap.truth.scores import interval, truth_scores

from .common import Options, bench, dump, machine, table

# (source, method, label, params, upsampling); params on top of the method's fast settings
VARIANTS = [
    ("CAM upsampling", "layercam", "corner-aligned bilinear", {}, "outside"),
    ("CAM upsampling", "layercam", "half-pixel bilinear", {}, "outside_halfpixel"),
    ("CAM upsampling", "layercam", "nearest", {}, "outside_nearest"),
    ("CAM upsampling", "hirescam", "corner-aligned bilinear", {}, "outside"),
    ("CAM upsampling", "hirescam", "nearest", {}, "outside_nearest"),
    ("CAM channel weights", "gradcam", "global weights, nearest", {}, "outside_nearest"),
    ("CAM channel weights", "hirescam", "per-position weights, nearest", {}, "outside_nearest"),
    ("mask grid", "igos", "mask 8 x 8", {"resolution": 8}, "outside"),
    ("mask grid", "igos", "mask 16 x 16", {"resolution": 16}, "outside"),
    ("mask grid", "igos", "mask 32 x 32", {"resolution": 32}, "outside"),
    ("mask grid", "mask", "mask 8 x 8", {"resolution": 8}, "outside"),
    ("mask grid", "mask", "mask 16 x 16", {"resolution": 16}, "outside"),
    ("mask grid", "mask", "mask 32 x 32", {"resolution": 32}, "outside"),
    ("blur baseline", "igos", "blur baseline", {"resolution": 16}, "outside"),
    ("blur baseline", "igos", "black baseline", {"resolution": 16, "baseline": "black"}, "outside"),
    ("blur baseline", "occlusion", "blur baseline", {}, "outside"),
    ("blur baseline", "occlusion", "black baseline", {"baseline": "black"}, "outside"),
    ("blur baseline", "ig", "blur baseline", {"baseline": "blur"}, "outside"),
    ("smooth masks", "extremal_perturbation", "jitter, default sigma", {"resolution": 64}, "outside"),
    ("smooth masks", "extremal_perturbation", "no jitter, default sigma", {"resolution": 64, "jitter": False}, "outside"),
    ("smooth masks", "extremal_perturbation", "no jitter, sigma 2 px", {"resolution": 64, "jitter": False, "sigma": 2.0},
     "outside"),
    ("smooth masks", "extremal_perturbation", "800 iterations, jitter", {"resolution": 64, "iterations": 800}, "outside"),
    ("smooth masks", "extremal_perturbation", "800 iterations, no jitter",
     {"resolution": 64, "iterations": 800, "jitter": False}, "outside"),
    ("windows", "occlusion", "patch 4, stride 4", {"patch": 4, "stride": 4}, "outside"),
    ("windows", "occlusion", "patch 12, stride 8", {"patch": 12, "stride": 8}, "outside"),
    ("windows", "occlusion", "patch 24, stride 8", {"patch": 24, "stride": 8}, "outside"),
    ("noise", "smoothgrad", "16 noisy copies", {"samples": 16}, "outside"),
    ("noise", "rise", "48 masks", {"n_masks": 48}, "outside"),
    ("noise", "rise", "1000 masks", {"n_masks": 1000}, "outside"),
    ("noise", "rise", "1000 masks, minus the map's minimum", {"n_masks": 1000}, "outside:floor"),
    ("regions", "xrai", "fast", {}, "outside"),
]


@bench("truth-leaks")
def bench_truth_leaks(opts: Options) -> int:
    """Outside mass per leak source and setting on the tier-0 scenarios (see the module docstring)."""
    extra = dict(opts.params)
    trunk = str(extra.pop("trunk", "cnn"))
    seeds = range(int(extra.pop("seeds", 3)))
    images = int(extra.pop("images", 4))
    kinds = str(extra.pop("kinds", "grid,masked")).split(",")
    scenarios = [tier0.MAKERS[k](s, trunk, images=images) for s in seeds for k in kinds]
    rows = []
    for source, method, label, params, score in VARIANTS:
        p = {**METHODS.get(method).fast, **params}
        if METHODS.get(method).resolution == "mask":
            p.setdefault("resolution", scenarios[0].x.shape[-1] // 4)
        for kind in kinds:
            vals, seeds_of, start = [], [], time.perf_counter()
            for sc in (s for s in scenarios if s.info["kind"] == kind):
                sal = faithmap.explain(sc.model, sc.x, method, target=sc.target, seed=0, **p).saliency
                if score.endswith(":floor"):  # RISE's floor, E[score] on every pixel, taken away
                    sal = sal - sal.flatten(1).min(1).values.view(-1, 1, 1)
                v = truth_scores(sal, sc.evidence, tier=0)[score.split(":")[0]]
                vals += v.tolist()
                seeds_of += [sc.model_seed] * len(v)
            mean, lo, hi, n = interval(vals, seeds_of)
            up = score.split(":")[0].replace("outside_", "").replace("outside", "corners")
            rows.append({"source": source, "method": method, "setting": label, "model": f"{kind}-{trunk}",
                         "upsampling": up, "outside": mean,
                         "low": lo, "high": hi, "n": n, "seconds": time.perf_counter() - start})
            print(f"{source:20s} {method:22s} {label:32s} {kind}-{trunk}: {mean:.3f} [{lo:.3f}, {hi:.3f}]",
                  file=sys.stderr)
    for kind in kinds:
        if kind == "masked":
            rows.append(_hidden_activations(scenarios, trunk))
    print(f"machine: {machine()}")
    print(table(rows, [("source", "leak source", ""), ("method", "method", ""), ("setting", "setting", ""),
                       ("model", "model", ""), ("upsampling", "upsampling", ""), ("outside", "outside", ".3f"),
                       ("low", "low", ".3f"), ("high", "high", ".3f"), ("n", "maps", "d")]))
    dump(opts.json, {"machine": machine(), "rows": rows})
    return 0


def _hidden_activations(scenarios, trunk: str) -> dict:
    """Masked models: the share of Grad-CAM's mass (on the layer's grid) at positions whose
    activations are the same for every image (their receptive field lies in the hidden region, so
    they hold the network's response to the zero input), which the head still averages into the logit."""
    vals, seeds_of = [], []
    for sc in (s for s in scenarios if s.info["kind"] == "masked"):
        e = faithmap.explain(sc.model, sc.x, "gradcam", target=sc.target)
        act = e.extras["activations"]  # (B, K, h, w)
        constant = (act.std(0).amax(0) < 1e-6)  # (h, w): no image changes them
        cam = e.saliency.clamp_min(0)
        share = (cam * constant).flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-30)
        vals += share.tolist()
        seeds_of += [sc.model_seed] * len(share)
    mean, lo, hi, n = interval(vals, seeds_of)
    return {"source": "CAM on hidden activations", "method": "gradcam",
            "setting": "share of the map on input-independent positions", "model": f"masked-{trunk}",
            "upsampling": "layer grid", "outside": mean, "low": lo, "high": hi, "n": n}
