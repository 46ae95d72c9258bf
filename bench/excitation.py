"""``python -m bench excitation``: Excitation Backprop on the sample photos, beside I-GOS and Grad-CAM,
and its cost against one plain gradient pass.

Quality: each photo is explained on its own (top-1 class) by c-MWP (``excitation_bp``, the seed papers'
"Excitation BP") and MWP at two read-out layers — ``features.5`` (the end of Lite0's stride-8 stage,
a 28 x 28 grid: the 28 x 28 column of I-GOS's Table 1, Qi, Khorram & Li, AAAI 2020) and the default
layer (``features.11``, 14 x 14) — by I-GOS at 28 x 28 with the registry's defaults (the paper's settings) and by Grad-CAM on its layer's
grid (7 x 7); every map is scored by ``deletion_insertion`` on its own grid (the I-GOS protocol:
blurred baseline, softmax probability). Seconds (wall and CPU, all torch threads) and model images are
those of the method's call; each method is run once on the first photo before the timed calls.

Cost: the photos as one batch, explained by ``saliency`` (one forward and one backward pass to the
pixels) and by c-MWP / MWP at both layers, calls interleaved ``--repeats`` times (best wall and CPU
seconds kept), so that load from other processes hits all alike; the ratio to ``saliency`` is the
figure to read. ``--param`` options: ``methods=excitation_bp,mwp,igos,gradcam`` (quality rows),
``layers=features.5,default``, ``cost=false`` or ``quality=false`` to skip a part.
"""

from __future__ import annotations

import os
import sys
import time

import torch

import faithmap
from faithmap.errors import FaithmapError
from faithmap.metrics import deletion_insertion

from .common import Options, bench, dump, gather_images, load_model, machine, mean_row, table

QUALITY_METHODS = ("excitation_bp", "mwp", "igos", "gradcam")
RULE_METHODS = ("excitation_bp", "mwp")

COLUMNS = [("image", "image", ""), ("method", "method", ""), ("layer", "layer / grid", ""),
           ("seconds", "seconds", ".2f"), ("cpu", "CPU s", ".2f"), ("images", "model images", ".0f"),
           ("deletion", "deletion ↓", ".3f"),
           ("insertion", "insertion ↑", ".3f"), ("overall", "over-all ↑", ".3f")]
COST_COLUMNS = [("method", "method", ""), ("layer", "layer", ""), ("seconds", "best s", ".3f"),
                ("cpu", "best CPU s", ".3f"), ("images", "model images", ".0f"), ("ratio", "s / saliency s", ".2f"),
                ("cpu_ratio", "CPU s / saliency CPU s", ".2f")]


def _split(v, default) -> list[str]:
    vals = v if isinstance(v, (list, tuple)) else str(v if v is not None else default).split(",")
    return [str(u).strip() for u in vals if str(u).strip()]


def _flag(v) -> bool:
    return str(v).strip().lower() not in ("0", "false", "no", "off")


@bench("excitation")
def bench_excitation(options: Options) -> int:
    """Excitation BP vs I-GOS and Grad-CAM (deletion, insertion, seconds, images); its cost vs a gradient pass."""
    load_start = os.getloadavg()[0]
    opts = dict(options.params)
    methods = _split(opts.pop("methods", None), ",".join(QUALITY_METHODS))
    layers = _split(opts.pop("layers", None), "features.5,default")
    do_cost, do_quality = _flag(opts.pop("cost", True)), _flag(opts.pop("quality", True))
    bad = [m for m in methods if m not in QUALITY_METHODS]
    if bad or opts:
        raise FaithmapError(f"bench excitation: unknown method or option {(bad or list(opts))[0]!r}")
    model = load_model(options)
    images = gather_images(options)
    photos = model.preprocess([arr for _, arr in images])
    names = [stem for stem, _ in images]
    with torch.no_grad():
        targets = model(photos).argmax(1)
    extra = {"batch_size": options.batch_size} if options.batch_size else {}

    def layer_kw(layer):
        return {} if layer == "default" else {"layer": layer}

    runs = []  # (method, layer label, params)
    for m in methods:
        if m in RULE_METHODS:
            runs += [(m, layer, {**layer_kw(layer), **extra}) for layer in layers]
        elif m == "igos":
            runs.append((m, "28", {"resolution": 28, **extra}))
        else:
            runs.append((m, "layer", dict(extra)))
    rows = []
    if do_quality:
        for method, label, params in runs:  # warm-up (lazy initialisation, the default layer's look-up), untimed
            if method != "igos":
                faithmap.explain(model, photos[:1], method, target=targets[:1], **params)
        for i, stem in enumerate(names):
            x, t = photos[i:i + 1], targets[i:i + 1]
            for method, label, params in runs:
                c0 = time.process_time()
                e = faithmap.explain(model, x, method, target=t, **params)
                cpu = time.process_time() - c0
                c = deletion_insertion(model, x, e.saliency, e.target, batch_size=options.batch_size)
                grid = "x".join(map(str, e.resolution))
                where = e.extras.get("layer", label)
                rows.append({"image": stem, "method": method, "layer": f"{where} ({grid})" if method != "igos" else grid,
                             "key": f"{method}@{label}", "seconds": e.seconds, "cpu": cpu, "images": e.counts["images"],
                             "deletion": float(c.deletion_auc[0]), "insertion": float(c.insertion_auc[0]),
                             "overall": float(c.overall[0])})
                print(f"{stem} {method}@{where} {grid}: {e.seconds:.2f} s, {e.counts['images']} images, deletion "
                      f"{rows[-1]['deletion']:.3f}, insertion {rows[-1]['insertion']:.3f}", file=sys.stderr, flush=True)
        print(table(rows, COLUMNS))
        means = []
        for method, label, _ in runs:
            sub = [r for r in rows if r["key"] == f"{method}@{label}"]
            m = mean_row(sub, "image", "mean")
            m.update(method=method, layer=sub[0]["layer"])
            means.append(m)
        print(f"\nmeans over {len(names)} photos:\n")
        print(table(means, COLUMNS[1:]))
    cost = []
    if do_cost:
        calls = [("saliency", "pixels", dict(extra))]
        for m in RULE_METHODS:
            calls += [(m, layer, {**layer_kw(layer), **extra}) for layer in layers]
        best: dict[int, dict] = {}
        for _ in range(options.repeats):
            for k, (method, label, params) in enumerate(calls):
                c0 = time.process_time()
                e = faithmap.explain(model, photos, method, target=targets, **params)
                cpu = time.process_time() - c0
                b = best.setdefault(k, {"method": method, "layer": e.extras.get("layer", label), "seconds": 1e9,
                                        "cpu": 1e9, "images": e.counts["images"]})
                b["seconds"], b["cpu"] = min(b["seconds"], e.seconds), min(b["cpu"], cpu)
        base = best[0]
        for k in sorted(best):
            r = dict(best[k])
            r.update(ratio=r["seconds"] / base["seconds"], cpu_ratio=r["cpu"] / base["cpu"])
            cost.append(r)
        print(f"\ncost on one batch of {photos.shape[0]} photos (best of {options.repeats} interleaved rounds):\n")
        print(table(cost, COST_COLUMNS))
    load_end = os.getloadavg()[0]
    print(f"\nmachine: {machine()}; load average {load_start:.1f} at start, {load_end:.1f} at end")
    dump(options.json, {"machine": machine(), "load": [load_start, load_end], "rows": rows, "cost": cost})
    return 0
