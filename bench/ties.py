"""``python -m bench ties``: how far each method's deletion and insertion AUCs move with the tie rule.

Every registered method (or ``--param methods=a,b``) explains the photos (default: the six
samples) once; the same map is scored with ``ties="index"`` (tied cells by lower index, the rule
before) and ``ties="interpolate"`` (the default: a tie block enters as one step, the curve linear
across it). Per method and photo: the share of the map's cells that are tied (in a block of two
or more equal values), both AUCs under both rules, and the model images each rule needed.
``--param fast=true`` uses each method's quick settings (``fast`` of the registry); mask methods
run at ``--resolution`` (default 28).
"""

from __future__ import annotations

import sys

import torch

import faithmap
from faithmap.errors import FaithmapError
from faithmap.metrics import deletion_insertion

from .common import Options, bench, dump, gather_images, load_model, machine, table


def tied_share(saliency: torch.Tensor) -> float:
    """Fraction of the map's cells whose value equals another cell's."""
    flat = saliency.flatten()
    _, counts = torch.unique(flat, return_counts=True)
    return float(counts[counts > 1].sum()) / flat.numel()


@bench("ties")
def bench_ties(opts: Options) -> int:
    """Deletion/insertion AUCs of every method's map under both tie rules, per photo and on average."""
    extra = dict(opts.params)
    names = [m.strip() for m in str(extra.pop("methods", ",".join(faithmap.METHODS.names()))).split(",") if m.strip()]
    fast = bool(extra.pop("fast", False))
    for m in names:
        if m not in faithmap.METHODS:
            raise FaithmapError(f"unknown method {m!r}; choose from: {', '.join(faithmap.METHODS.names())}")
    res = int(opts.resolution or 28)
    model = load_model(opts)
    images = gather_images(opts)
    rows = []
    for m in names:
        spec = faithmap.METHODS.get(m)
        params = dict(spec.fast) if fast else {}
        params.update({k: v for k, v in extra.items() if k in spec.params})
        if spec.resolution == "mask":
            params["resolution"] = res
        if opts.batch_size is not None and "batch_size" in spec.params:
            params["batch_size"] = opts.batch_size
        for stem, arr in images:
            x = model.preprocess(arr)
            e = faithmap.explain(model, x, m, **params)
            row = {"method": m, "image": stem, "grid": "x".join(map(str, e.saliency.shape[-2:])),
                   "tied": tied_share(e.saliency[0]), "explain_images": e.counts["images"]}
            for rule in ("index", "interpolate"):
                c = deletion_insertion(model, x, e.saliency, e.target, ties=rule, batch_size=opts.batch_size)
                row[f"deletion_{rule}"] = float(c.deletion_auc[0])
                row[f"insertion_{rule}"] = float(c.insertion_auc[0])
                row[f"images_{rule}"] = c.images
            row["d_deletion"] = row["deletion_interpolate"] - row["deletion_index"]
            row["d_insertion"] = row["insertion_interpolate"] - row["insertion_index"]
            rows.append(row)
            print(f"{m} {stem}: tied {row['tied']:.0%}, deletion {row['deletion_index']:.3f} -> "
                  f"{row['deletion_interpolate']:.3f}, insertion {row['insertion_index']:.3f} -> "
                  f"{row['insertion_interpolate']:.3f}", file=sys.stderr, flush=True)
    summary = []
    for m in names:
        sub = [r for r in rows if r["method"] == m]
        n = len(sub)
        summary.append({
            "method": m, "grid": sub[0]["grid"], "tied": sum(r["tied"] for r in sub) / n,
            "del_index": sum(r["deletion_index"] for r in sub) / n,
            "del_interp": sum(r["deletion_interpolate"] for r in sub) / n,
            "abs_d_del": sum(abs(r["d_deletion"]) for r in sub) / n,
            "max_d_del": max(abs(r["d_deletion"]) for r in sub),
            "ins_index": sum(r["insertion_index"] for r in sub) / n,
            "ins_interp": sum(r["insertion_interpolate"] for r in sub) / n,
            "abs_d_ins": sum(abs(r["d_insertion"]) for r in sub) / n,
            "max_d_ins": max(abs(r["d_insertion"]) for r in sub),
            "img_index": sum(r["images_index"] for r in sub) / n,
            "img_interp": sum(r["images_interpolate"] for r in sub) / n})
    cols = [("method", "method", ""), ("grid", "map grid", ""), ("tied", "tied cells", ".0%"),
            ("del_index", "deletion (index)", ".3f"), ("del_interp", "deletion (interpolate)", ".3f"),
            ("abs_d_del", "mean abs change", ".3f"), ("max_d_del", "largest", ".3f"),
            ("ins_index", "insertion (index)", ".3f"), ("ins_interp", "insertion (interpolate)", ".3f"),
            ("abs_d_ins", "mean abs change", ".3f"), ("max_d_ins", "largest", ".3f"),
            ("img_index", "eval images (index)", ".0f"), ("img_interp", "eval images (interpolate)", ".1f")]
    print(table(summary, cols))
    print(f"\nmeans over {len(images)} photos; machine: {machine()}")
    dump(opts.json, {"machine": machine(), "rows": rows, "summary": summary, "fast": fast, "resolution": res})
    return 0
