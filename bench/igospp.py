"""``python -m bench igos++``: iGOS++ beside I-GOS, Mask (Fong & Vedaldi) and RISE on the photos.

Per photo and resolution: seconds, model images and deletion/insertion AUCs of every method, whether
iGOS++'s insertion beats I-GOS's (the claim of iGOS++'s Table 1, Khorram et al., ACM CHIL 2021), iGOS++
against the authors' code (``bench/data/igospp_authors.json``: 556 s, 8,240 model images, deletion
0.112, insertion 0.742 on ``coffee``; 380-400 s and 7,800-9,100 images on the other photos), and
RISE batched against a loop of one masked image per forward, timed in the same run.

Bench-level keys of ``--param``: ``methods=igos++,igos,mask,rise`` (which to run),
``rise_loop=STEM`` (the photo of the RISE loop comparison; ``none`` skips it). Other ``--param``
keys go to every method that takes them. ``--iterations`` applies to iGOS++ and I-GOS only
(Mask keeps its 500 Adam steps).
"""

from __future__ import annotations

import dataclasses
import sys

import torch

import faithmap
from faithmap.errors import FaithmapError
from faithmap.metrics import deletion_insertion

from .common import Options, bench, dump, gather_images, load_model, machine, reference, resolutions, table
from .igos import BENCH_KEYS, REFERENCE_IGOS, paired_summary, print_paired, run_mask_bench

_AUTHORS = reference("igospp_authors")
REFERENCE_IGOSPP = _AUTHORS["photos"]
"""The authors' iGOS++ (28 x 28, 15 iterations, 20 IG steps, squashed photo): seconds, model images, deletion, insertion."""
AUTHORS_FASTEST = tuple(_AUTHORS["fastest"])
"""The authors' cheapest iGOS++ photo here: the bound for the other photos (seconds, images)."""

LABELS = {"igos++": "iGOS++", "igos": "I-GOS", "mask": "Mask", "rise": "RISE"}


def _method_opts(opts: Options, method: str, bench_keys: set[str]) -> Options:
    """``opts`` with only the ``--param`` keys that ``method`` takes (and --iterations where it fits)."""
    known = set(faithmap.METHODS.get(method).params) | set(BENCH_KEYS)  # the mask bench's own keys pass through
    params = {k: v for k, v in opts.params.items() if k in known and k not in bench_keys}
    iterations = opts.iterations if method in ("igos", "igos++") else None
    return dataclasses.replace(opts, params=params, iterations=iterations)


def _rise_rows(model, images, params: dict, ties: str = "interpolate") -> list[dict]:
    rows = []
    for stem, arr in images:
        x = model.preprocess(arr)
        e = faithmap.explain(model, x, "rise", **params)
        c = deletion_insertion(model, x, e.saliency, e.target, ties=ties, batch_size=params.get("batch_size"))
        rows.append({"image": stem, "method": "rise", "seconds": e.seconds, "images": e.counts["images"],
                     "deletion": float(c.deletion_auc[0]), "insertion": float(c.insertion_auc[0]),
                     "overall": float(c.overall[0])})
        print(f"{stem}: rise {e.seconds:.1f} s, {e.counts['images']} images, deletion {rows[-1]['deletion']:.3f}, "
              f"insertion {rows[-1]['insertion']:.3f}", file=sys.stderr, flush=True)
    return rows


@bench("igos++")
def bench_igospp(opts: Options) -> int:
    """iGOS++, I-GOS, Mask and RISE per photo: seconds, model images, AUCs, claims and speed checks."""
    extra = dict(opts.params)
    bench_keys = {"methods", "rise_loop"}
    methods = [m.strip() for m in str(extra.get("methods", "igos++,igos,mask,rise")).split(",") if m.strip()]
    for m in methods:
        if m not in LABELS:
            raise FaithmapError(f"bench igos++ compares {', '.join(LABELS)}; got {m!r}")
    opts = dataclasses.replace(opts, resolution=",".join(map(str, resolutions(opts, "28,224"))))
    model = load_model(opts)
    images = gather_images(opts)
    probs = {}
    for stem, arr in images:
        with torch.no_grad():
            probs[stem] = float(torch.softmax(model(model.preprocess(arr)), 1).max())

    rows: dict[str, list[dict]] = {}
    for m in [m for m in methods if m != "rise"]:
        ref = REFERENCE_IGOSPP if m == "igos++" else REFERENCE_IGOS if m == "igos" else {}
        print(f"-- {m}", file=sys.stderr, flush=True)
        rows[m] = run_mask_bench(_method_opts(opts, m, bench_keys), m, ref, model=model, images=images)
    rise_params = {}
    if "rise" in methods:
        print("-- rise", file=sys.stderr, flush=True)
        rise_params = dict(_method_opts(opts, "rise", bench_keys).params)
        for k in BENCH_KEYS:
            rise_params.pop(k, None)
        if opts.batch_size is not None:
            rise_params["batch_size"] = opts.batch_size
        rows["rise"] = _rise_rows(model, images, rise_params, str(extra.get("ties", "interpolate")))

    out = {"machine": machine(), "resize": model.resize, "methods": methods, "rows": rows, "probs": probs}
    for res in resolutions(opts):
        print(f"\n### {res} x {res} masks" + (" (RISE: its 224 x 224 map)" if "rise" in methods else "") + "\n")
        cols = [("image", "photo", ""), ("p", "p(top-1)", ".3f")]
        table_rows = []
        for stem, _ in images:
            r = {"image": stem, "p": probs[stem]}
            for m in methods:
                src = rows[m] if m == "rise" else [x for x in rows[m] if x["resolution"] == res]
                hit = next((x for x in src if x["image"] == stem), None)
                if hit:
                    for k in ("seconds", "images", "deletion", "insertion", "overall"):
                        r[f"{m}:{k}"] = hit[k]
            if "igos++" in methods and "igos" in methods:
                r["claim"] = "yes" if r["igos++:insertion"] > r["igos:insertion"] else "no"
            table_rows.append(r)
        mean = {"image": "mean", "p": sum(r["p"] for r in table_rows) / len(table_rows)}
        for k in table_rows[0]:
            if ":" in k:
                mean[k] = sum(r[k] for r in table_rows) / len(table_rows)
        if "claim" in table_rows[0]:
            mean["claim"] = f"{sum(r['claim'] == 'yes' for r in table_rows)}/{len(table_rows)}"
        for m in methods:
            lab = LABELS[m]
            cols += [(f"{m}:seconds", f"{lab} s", ".1f"), (f"{m}:images", f"{lab} images", ".0f"),
                     (f"{m}:deletion", f"{lab} del ↓", ".3f"), (f"{m}:insertion", f"{lab} ins ↑", ".3f"),
                     (f"{m}:overall", f"{lab} over-all ↑", ".3f")]
        if "claim" in table_rows[0]:
            cols.append(("claim", "iGOS++ ins > I-GOS ins", ""))
        print(table(table_rows + [mean], cols))
        out.setdefault("tables", {})[res] = table_rows + [mean]
        for m in methods:
            sub = [] if m == "rise" else [x for x in rows[m] if x["resolution"] == res]
            if any("ref_cpu_seconds" in x for x in sub):  # a harness file of the authors' runs
                pcols = [("image", "photo", ""), ("seconds", "s", ".1f"), ("cpu_seconds", "CPU s", ".1f"),
                         ("images", "images", ".0f"), ("ref_seconds", "authors' s", ".1f"),
                         ("ref_cpu_seconds", "authors' CPU s", ".1f"), ("ref_images", "authors' images", ".0f"),
                         ("deletion", "del ↓", ".3f"), ("ref_deletion", "authors' del", ".3f"),
                         ("insertion", "ins ↑", ".3f"), ("ref_insertion", "authors' ins", ".3f")]
                print(f"\n{LABELS[m]} against the authors' code:\n")
                print(table(sub, pcols))
                summary = paired_summary(sub)
                print_paired(summary, f"{LABELS[m]} at {res} x {res} against the authors' code")
                out.setdefault("paired", {}).setdefault(m, {})[res] = summary
        if "igos++" in methods and res == 28:
            pp = [x for x in rows["igos++"] if x["resolution"] == 28]
            worst_s = max(x["seconds"] for x in pp)
            worst_i = max(x["images"] for x in pp)
            print(f"\niGOS++ at 28 x 28: slowest photo {worst_s:.1f} s, most model images {worst_i}; against the "
                  f"authors' cheapest photo ({AUTHORS_FASTEST[0]:.0f} s, {AUTHORS_FASTEST[1]} images): "
                  f"{AUTHORS_FASTEST[0] / worst_s:.1f}x less time, {AUTHORS_FASTEST[1] / worst_i:.1f}x fewer images")
            for x in pp:
                if "ref_seconds" in x:
                    print(f"{x['image']} against the authors' iGOS++: {x['speedup']:.1f}x less time, "
                          f"{x['image_ratio']:.1f}x fewer model images, deletion {x['deletion']:.3f} vs "
                          f"{x['ref_deletion']:.3f}, insertion {x['insertion']:.3f} vs {x['ref_insertion']:.3f}")

    loop_stem = str(extra.get("rise_loop", images[0][0]))
    if "rise" in methods and loop_stem.lower() != "none":
        arr = dict(images).get(loop_stem)
        if arr is None:
            raise FaithmapError(f"rise_loop={loop_stem}: no such photo among the benchmarked ones")
        x = model.preprocess(arr)
        print(f"\n-- rise loop on {loop_stem}", file=sys.stderr, flush=True)
        batched = faithmap.explain(model, x, "rise", **rise_params)
        loop = faithmap.explain(model, x, "rise", **{**rise_params, "batch_size": 1})
        same = bool(torch.allclose(batched.saliency, loop.saliency, rtol=1e-4, atol=1e-6))
        print(f"\nRISE on {loop_stem}, {batched.counts['images']} masked images: batched {batched.seconds:.1f} s, "
              f"one image per forward {loop.seconds:.1f} s: {loop.seconds / batched.seconds:.2f}x "
              f"(same map: {same})")
        out["rise_loop"] = {"image": loop_stem, "batched_seconds": batched.seconds, "loop_seconds": loop.seconds,
                            "images": batched.counts["images"], "same_map": same}
    print(f"\nmachine: {machine()}; photos resized: {model.resize}")
    dump(opts.json, out)
    return 0
