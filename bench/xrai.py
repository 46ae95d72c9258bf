"""``python -m bench xrai``: XRAI against the authors' package (PAIR ``saliency``) and beside the
methods of SIGCAM's Table 2 (Zhang, Rao & Yang, AAAI 2021; ``bench/data/sigcam_paper_table2.json``).

``--param part=pair`` (per photo, EfficientNet-Lite0's IG attribution from a black and a white
baseline, computed once and given to both libraries as float64, and the same segments):

* **segments**: ``felzenszwalb_regions`` against PAIR's ``_get_segments_felzenszwalb`` (equal masks?);
* **greedy**: ``rank_regions`` against PAIR's ``XRAI._xrai`` / ``_xrai_fast`` on PAIR's boolean masks.
  faithmap's time includes packing those masks into :class:`Regions` and splitting them into cells
  (``from masks``); ``own regions`` is the selection alone on regions that come from its own
  segmentation with their cells computed (what a second call on the same image costs);
* **whole call**: PAIR's ``GetMaskWithDetails`` with ``base_attribution`` (it segments the image
  itself) against faithmap's segmentation + selection.

Each timing is the best of ``--repeats``, the two libraries interleaved; "identical" means equal
ranks and maps within 1e-9 of the largest attribution (the largest difference is printed).

``--param part=table``: Grad-CAM, Grad-CAM++, I-GOS, XRAI and SIGCAM with their registered defaults
on the sample photos: deletion, insertion and over-all AUCs (``deletion_insertion`` at each map's
own grid), seconds and model images, and whether Table 2's ordering (XRAI's deletion the worst of
the five) holds here. ``--param methods=xrai,xrai-fast,...`` picks rows.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from faithmap.errors import FaithmapError
from faithmap.methods.xrai import Regions, base_attribution, felzenszwalb_regions, rank_regions

from .common import Options, bench, dump, explain_and_curves, gather_images, load_model, machine, reference, table

ENTRIES: dict[str, tuple[str, str, dict]] = {  # key: (label, method, params)
    "gradcam": ("GradCAM", "gradcam", {}),
    "gradcam++": ("GradCAM++", "gradcam++", {}),
    "igos": ("I-GOS", "igos", {}),
    "xrai": ("XRAI", "xrai", {}),
    "sigcam": ("SIGCAM", "sigcam", {}),
    "xrai-fast": ("XRAI (fast)", "xrai", {"variant": "fast"}),
}
DEFAULT_METHODS = ("gradcam", "gradcam++", "igos", "xrai", "sigcam")
PAPER_TABLE2 = reference("sigcam_paper_table2")
"""SIGCAM's Table 2: deletion / insertion (%) on DenseNet201, Inception v3, VGG19."""


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@bench("xrai")
def bench_xrai(options: Options) -> int:
    """XRAI against PAIR saliency (segments, greedy selection, whole call) and beside Table 2's methods."""
    opts = dict(options.params)
    part = str(opts.pop("part", "pair,table"))
    parts = {p.strip() for p in part.split(",") if p.strip()}
    if not parts <= {"pair", "table"}:
        raise FaithmapError(f"bench xrai: part must be pair, table or pair,table; got {part!r}")
    if options.resolution or options.iterations:
        raise FaithmapError("bench xrai runs every method with its registered defaults (no --resolution/--iterations)")
    model = load_model(options)
    images = gather_images(options)
    out: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": os.getloadavg()[0]}
    if "pair" in parts:
        out["pair"] = _pair(model, images, options, opts, out)
    if "table" in parts:
        out["table"] = _table(model, images, options, opts, out)
    out["load_end"] = os.getloadavg()[0]
    print(f"\nmachine: {machine()}; load average {out['load_start']:.1f} at start, {out['load_end']:.1f} at end")
    dump(options.json, out)
    return 0


def _pair(model, images, options: Options, opts: dict, out: dict) -> list[dict]:
    try:
        from saliency.core import xrai as pair_xrai
        from saliency.core import XRAI, XRAIParameters
    except ImportError:
        raise FaithmapError("bench xrai part=pair needs the PAIR saliency package "
                            "(pip install saliency==0.2.*)") from None
    variants = [v.strip() for v in str(opts.get("variants", "full,fast")).split(",") if v.strip()]
    reps = options.repeats
    rows: list[dict] = []
    out["pair_rows"] = rows
    for stem, arr in images:
        x = model.preprocess(arr)
        with torch.no_grad():
            t = model(x).argmax(1)
        snap = model.counter.snapshot()
        start = time.perf_counter()
        attr, _ = base_attribution(model, x, t, batch_size=options.batch_size)
        ig_seconds, ig_images = time.perf_counter() - start, model.counter.since(snap)["images"]
        pixels_t = model.to_pixels(x)
        pixels = pixels_t[0].permute(1, 2, 0).cpu().numpy()
        a_hwc = attr[0].permute(1, 2, 0).double().cpu().numpy()  # our float32 values, exactly, for both
        a_map = attr[0].amax(0).double().cpu()
        # segments
        seg_ours = seg_pair = float("inf")
        regions = masks = None
        for _ in range(max(1, reps)):
            s, regions = _best(lambda: felzenszwalb_regions(pixels_t)[0], 1)
            seg_ours = min(seg_ours, s)
            s, masks = _best(lambda: pair_xrai._get_segments_felzenszwalb(pixels), 1)
            seg_pair = min(seg_pair, s)
        same_segments = regions.count == len(masks) and bool(np.array_equal(regions.masks().cpu().numpy(),
                                                                              np.stack(masks)))
        regions.cells()  # the warm case below: cells computed once
        for variant in variants:
            pair_fn = pair_xrai.XRAI._xrai if variant == "full" else pair_xrai.XRAI._xrai_fast
            stacked = torch.from_numpy(np.stack(masks))
            t_pair = t_masks = t_warm = t_call_pair = t_call_ours = float("inf")
            ref = ours = warm = call_pair = call_ours = None
            params = XRAIParameters(algorithm=variant, return_xrai_segments=True)
            for _ in range(max(1, reps)):  # interleaved
                s, ref = _best(lambda: pair_fn(a_map.numpy(), masks), 1)
                t_pair = min(t_pair, s)
                s, ours = _best(lambda: rank_regions(a_map, Regions.from_masks(stacked), variant=variant), 1)
                t_masks = min(t_masks, s)
                s, warm = _best(lambda: rank_regions(a_map, regions, variant=variant), 1)
                t_warm = min(t_warm, s)
                s, call_pair = _best(lambda: XRAI().GetMaskWithDetails(pixels, None, base_attribution=a_hwc,
                                                                       extra_parameters=params), 1)
                t_call_pair = min(t_call_pair, s)
                s, call_ours = _best(lambda: rank_regions(a_map, felzenszwalb_regions(pixels_t)[0], variant=variant), 1)
                t_call_ours = min(t_call_ours, s)
            scale = float(np.abs(a_hwc).max())

            def agree(o, ref_map, ref_ranks):
                d = float(np.abs(o.map.cpu().numpy() - ref_map).max())
                return bool(np.array_equal(o.ranks.cpu().numpy(), ref_ranks)) and d <= 1e-9 * scale, d / scale

            ok_g, d_g = agree(ours, *ref)
            ok_w, d_w = agree(warm, *ref)
            ok_c, d_c = agree(call_ours, call_pair.attribution_mask, call_pair.segments)
            row = {"image": stem, "variant": variant, "regions": regions.count, "selected": len(ours.order),
                   "cells": int(regions.cells().sizes.numel()), "ig_images": ig_images, "ig_seconds": ig_seconds,
                   "seg_pair": seg_pair, "seg_ours": seg_ours, "seg_ratio": seg_pair / seg_ours,
                   "same_segments": same_segments,
                   "greedy_pair": t_pair, "greedy_ours": t_masks, "greedy_ratio": t_pair / t_masks,
                   "greedy_warm": t_warm, "warm_ratio": t_pair / t_warm,
                   "call_pair": t_call_pair, "call_ours": t_call_ours, "call_ratio": t_call_pair / t_call_ours,
                   "identical": ok_g and ok_w and ok_c, "max_diff": max(d_g, d_w, d_c)}
            rows.append(row)
            print(f"{stem} {variant}: greedy {t_pair:.3f} s PAIR / {t_masks:.3f} s ours ({row['greedy_ratio']:.1f}x), "
                  f"whole call {t_call_pair:.2f} / {t_call_ours:.2f} s ({row['call_ratio']:.1f}x), identical "
                  f"{row['identical']} (max diff {row['max_diff']:.1e})", file=sys.stderr, flush=True)
        dump(options.json, out)
    cols = [("image", "photo", ""), ("variant", "variant", ""), ("regions", "regions", ""),
            ("selected", "selected", ""), ("greedy_pair", "greedy PAIR s", ".3f"),
            ("greedy_ours", "greedy ours s (from masks)", ".3f"), ("greedy_ratio", "ratio", ".1f"),
            ("greedy_warm", "ours s (own regions)", ".3f"), ("warm_ratio", "ratio", ".1f"),
            ("call_pair", "whole call PAIR s", ".2f"), ("call_ours", "whole call ours s", ".2f"),
            ("call_ratio", "ratio", ".1f"), ("identical", "identical", ""), ("max_diff", "max diff / max|a|", ".1e")]
    print(table(rows, cols))
    seg = [r for r in rows if r["variant"] == rows[0]["variant"]]
    print("\nSegmentation (Felzenszwalb at 6 scales + dilation), best of repeats:\n")
    print(table(seg, [("image", "photo", ""), ("regions", "regions", ""), ("cells", "cells", ""),
                      ("seg_pair", "PAIR s", ".2f"), ("seg_ours", "ours s", ".2f"), ("seg_ratio", "ratio", ".1f"),
                      ("same_segments", "same masks", ""), ("ig_images", "IG model images", ""),
                      ("ig_seconds", "IG s", ".1f")]))
    for v in variants:
        sub = [r for r in rows if r["variant"] == v]
        if sub:
            g = [r["greedy_ratio"] for r in sub]
            c = [r["call_ratio"] for r in sub]
            print(f"\n{v}: greedy ratio min {min(g):.1f} / median {float(np.median(g)):.1f}; whole call ratio min "
                  f"{min(c):.1f} / median {float(np.median(c)):.1f}; identical on {sum(r['identical'] for r in sub)}/"
                  f"{len(sub)} photos")
    return rows


def _table(model, images, options: Options, opts: dict, out: dict) -> list[dict]:
    keys = [k.strip() for k in str(opts.get("methods", ",".join(DEFAULT_METHODS))).split(",") if k.strip()]
    for k in keys:
        if k not in ENTRIES:
            raise FaithmapError(f"bench xrai runs {', '.join(ENTRIES)}; got {k!r}")
    rows: list[dict] = []
    out["table_rows"] = rows
    for stem, arr in images:
        x = model.preprocess(arr)
        for k in keys:
            label, method, params = ENTRIES[k]
            e, c = explain_and_curves(model, x, method, params, options.batch_size)
            r = {"image": stem, "key": k, "method": label, "grid": "x".join(map(str, e.saliency.shape[-2:])),
                 "deletion": float(c.deletion_auc[0]), "insertion": float(c.insertion_auc[0]),
                 "overall": float(c.overall[0]), "seconds": e.seconds, "images": e.counts["images"],
                 "grad_images": e.counts["grad_images"]}
            rows.append(r)
            print(f"{stem}: {label}: deletion {r['deletion']:.3f}, insertion {r['insertion']:.3f}, "
                  f"{r['seconds']:.1f} s, {r['images']} images", file=sys.stderr, flush=True)
        dump(options.json, out)
    cols = [("image", "photo", ""), ("method", "method", ""), ("grid", "map grid", ""),
            ("deletion", "deletion ↓", ".3f"), ("insertion", "insertion ↑", ".3f"),
            ("overall", "over-all ↑", ".3f"),
            ("seconds", "seconds", ".1f"), ("images", "model images", ".0f"), ("grad_images", "with grad", ".0f")]
    print(table(rows, cols))
    stems = list(dict.fromkeys(r["image"] for r in rows))
    means = []
    for k in keys:
        sub = [r for r in rows if r["key"] == k]
        m = {"method": ENTRIES[k][0], "n": len(sub), "grid": sub[0]["grid"]}
        for f in ("deletion", "insertion", "overall", "seconds", "images", "grad_images"):
            m[f] = sum(r[f] for r in sub) / len(sub)
        if k in PAPER_TABLE2:
            m["paper"] = " · ".join(f"{d / 100:.2f} / {i / 100:.2f}" for d, i in PAPER_TABLE2[k])
        means.append(m)
    print(f"\nMean over {len(stems)} photo(s) (paper: Table 2, deletion / insertion on DenseNet201 · Inception v3 · "
          f"VGG19, 50,000 ImageNet images):\n")
    print(table(means, [("method", "method", ""), ("n", "photos", ""), *cols[2:], ("paper", "paper", "")]))
    five = [k for k in DEFAULT_METHODS if k in keys]
    if "xrai" in five and len(five) > 1:
        mean = {m["method"]: m["deletion"] for m in means}
        worst = max(five, key=lambda k: mean[ENTRIES[k][0]])
        per = []
        for s in stems:
            d = {r["key"]: r["deletion"] for r in rows if r["image"] == s}
            per.append(max(five, key=lambda k: d[k]) == "xrai")
        print(f"\nTable 2's ordering, XRAI's deletion the worst of the {len(five)}: mean "
              f"{'holds' if worst == 'xrai' else 'does not hold'} (worst: {ENTRIES[worst][0]}, "
              f"{mean[ENTRIES[worst][0]]:.3f}; XRAI {mean['XRAI']:.3f}); per photo XRAI worst on {sum(per)}/{len(per)}")
    return rows
