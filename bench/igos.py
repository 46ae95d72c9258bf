"""``python -m bench igos``: I-GOS on the sample photos against the authors' code.

Reference figures (``bench/data/igos_authors.json``, with their source): the authors' I-GOS (``khorrams/IGOS_pp`` at b0820a2, ``methods.IGOS``, run on CPU
with two one-line fixes for current torch: masks created on the CPU, and the line search's in-place
boolean indexing rewritten through a copy) on this 2-core CPU with EfficientNet-Lite0, 28 x 28,
15 iterations, 20 IG steps, L1 = 1, L2 = 20, alpha 1000, on the photos as our model preprocesses
them (shorter side 224, centre crop; blur 51/50 by OpenCV). Model images and AUCs were measured
here on 2026-11-23 (our AUC routine on their masks). Their seconds were measured under heavy load,
so the time reference is the notes' idle-machine figure (``shared/notes/reference-implementations.md``:
coffee 106.5 s, chelsea 121.0 s), and for the other photos the notes' fastest photo, 106.5 s.

Paired comparison with the authors' code on any photo set (``--param reference=FILE``): ``FILE``
holds one JSON line per (configuration, photo) written by a harness that ran the authors' code
(outside this repository; BENCHMARKS.md): ``config`` (``igos28``, ``igos224``, ``igospp28``, ...),
``photo``, ``target``, ``seconds``, ``cpu_seconds``, ``images``, ``grad_images``, ``threads``; the
authors' final mask ``M`` (1 keeps the image) lies in ``masks/<config>/<photo>.npy`` beside ``FILE``.
Both codes' maps are scored here by the same evaluator (:func:`faithmap.metrics.deletion_insertion`,
tie rule ``--param ties=...``, default ``interpolate``), and the bench prints the mean paired
difference (ours minus theirs) of deletion and insertion with a 95% t-interval.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

import faithmap
from faithmap.errors import FaithmapError
from faithmap.metrics import deletion_insertion

from faithmap.evaluation.stats import t_interval

from .common import (Options, bench, dump, gather_images, load_model, machine, mean_row, reference,
                     resolutions, table)

TIES = ("interpolate", "index")
"""The evaluator's tie rules (``--param ties=...``)."""

BENCH_KEYS = ("ties", "reference", "reference_config")
"""``--param`` keys of the bench itself (the others go to the method)."""


def reference_config(method: str, resolution: int) -> str:
    """The harness's configuration name for ``method`` at ``resolution`` (``igos28``, ``igospp28``)."""
    return ("igospp" if method == "igos++" else method) + str(resolution)


def load_reference(path: str) -> dict[tuple[str, str], dict]:
    """The authors' runs of a harness file: (config, photo) -> row, with the saliency ``1 - M``
    (numpy, the mask's grid) under ``"saliency"``. Rows with a ``tag`` are trial runs and skipped."""
    if not os.path.isfile(path):
        raise FaithmapError(f"reference file {path} does not exist")
    out = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (str(row["config"]), str(row["photo"]))
            except (ValueError, KeyError, TypeError):
                raise FaithmapError(f"{path}, line {n}: not a harness row (JSON with config and photo)") from None
            if row.get("tag"):
                continue
            mask = os.path.join(os.path.dirname(os.path.abspath(path)), "masks", key[0], key[1] + ".npy")
            if not os.path.isfile(mask):
                raise FaithmapError(f"{path}, line {n}: its mask {mask} is missing")
            row["saliency"] = 1.0 - np.load(mask).astype("float32")
            out[key] = row
    return out


def paired_summary(rows: list[dict]) -> dict:
    """Mean paired differences (ours - authors) of deletion and insertion with 95% t-intervals,
    and the per-photo ratios of model images and seconds, over the rows that carry ``ref_*``."""
    both = [r for r in rows if "ref_deletion" in r]
    out: dict = {"photos": len(both)}
    for k in ("deletion", "insertion"):
        iv = t_interval([r[k] - r[f"ref_{k}"] for r in both])
        out[k] = {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n,
                  "ours": sum(r[k] for r in both) / max(1, len(both)),
                  "authors": sum(r[f"ref_{k}"] for r in both) / max(1, len(both))}
    for k, ours, ref in (("image_ratio", "images", "ref_images"), ("time_ratio", "seconds", "ref_seconds"),
                         ("cpu_ratio", "cpu_seconds", "ref_cpu_seconds")):
        vals = [r[ref] / r[ours] for r in both if r.get(ref) and r.get(ours)]
        if vals:
            out[k] = {"mean_of_ratios": sum(vals) / len(vals), "min": min(vals), "max": max(vals),
                      "ratio_of_means": sum(r[ref] for r in both) / sum(r[ours] for r in both)}
    return out


def print_paired(summary: dict, label: str) -> None:
    """The paired summary as a few lines of text."""
    n = summary["photos"]
    if not n:
        print(f"\n{label}: no photo with an authors' run")
        return
    print(f"\n{label}, {n} photos, ours minus the authors' (mean, 95% t-interval):")
    for k, better in (("deletion", "lower"), ("insertion", "higher")):
        d = summary[k]
        print(f"  {k}: {d['ours']:.3f} vs {d['authors']:.3f}, difference {d['mean']:+.4f} "
              f"[{d['low']:+.4f}, {d['high']:+.4f}] ({better} is better)")
    for k, what in (("image_ratio", "model images"), ("cpu_ratio", "CPU seconds"), ("time_ratio", "seconds")):
        if k in summary:
            d = summary[k]
            print(f"  {what}: authors / ours {d['ratio_of_means']:.1f}x over the set "
                  f"({d['min']:.1f}x-{d['max']:.1f}x per photo)")

REFERENCE_IGOS = reference("igos_authors")
"""image: (seconds, model images, deletion AUC, insertion AUC) of the authors' I-GOS at 28 x 28."""


def run_mask_bench(opts: Options, method: str, fixed: dict, extra: dict | None = None, model=None,
                   images: list | None = None) -> list[dict]:
    """Explain each image with ``method`` at each resolution; rows of seconds, counts and AUCs.

    Bench keys of ``--param`` (:data:`BENCH_KEYS`): ``ties`` (the evaluator's tie rule, for both
    codes), ``reference`` (a harness file of the authors' runs: their maps are scored beside ours,
    :func:`load_reference`), ``reference_config`` (its configuration, default
    :func:`reference_config`). Without a reference file, ``fixed`` holds fixed figures (seconds,
    images, deletion, insertion) per photo at 28 x 28. ``model`` and ``images``: loaded from ``opts``
    when not given.
    """
    params = dict(extra or {})
    if opts.iterations is not None:
        params["iterations"] = opts.iterations
    if opts.batch_size is not None:
        params["batch_size"] = opts.batch_size
    params.update(opts.params)
    own = {k: params.pop(k) for k in BENCH_KEYS if k in params}
    ties = str(own.get("ties", "interpolate"))
    if ties not in TIES:
        raise FaithmapError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    ref_file = load_reference(str(own["reference"])) if "reference" in own else None
    model = model if model is not None else load_model(opts)
    images = images if images is not None else gather_images(opts)
    bs = params.get("batch_size")
    rows = []
    for res in resolutions(opts):
        cfg = str(own.get("reference_config", reference_config(method, res)))
        for stem, arr in images:
            x = model.preprocess(arr)
            best, best_cpu = None, None
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            for _ in range(opts.repeats):
                c0 = time.process_time()
                e = faithmap.explain(model, x, method, resolution=res, **params)
                cpu = time.process_time() - c0
                if best is None or e.seconds < best.seconds:
                    best, best_cpu = e, cpu
            c = deletion_insertion(model, x, best.saliency, best.target, ties=ties, batch_size=bs)
            row = {"image": stem, "method": method, "resolution": res, "seconds": best.seconds, "cpu_seconds": best_cpu,
                   "load": load, "images": best.counts["images"], "grad_images": best.counts["grad_images"],
                   "nograd_images": best.counts["nograd_images"], "deletion": float(c.deletion_auc[0]),
                   "insertion": float(c.insertion_auc[0]), "overall": float(c.overall[0]), "ties": ties,
                   "target": int(best.target[0])}
            if ref_file is not None:
                ref = ref_file.get((cfg, stem))
                if ref is not None:
                    if int(ref["target"]) != row["target"]:
                        raise FaithmapError(f"{stem}: the authors' run explains class {ref['target']}, ours {row['target']}")
                    sal = torch.from_numpy(np.ascontiguousarray(ref["saliency"]))[None].to(x.device)
                    rc = deletion_insertion(model, x, sal, best.target, ties=ties, batch_size=bs)
                    row.update(ref_seconds=ref["seconds"], ref_cpu_seconds=ref.get("cpu_seconds"),
                               ref_threads=ref.get("threads"), ref_images=ref["images"],
                               ref_grad_images=ref.get("grad_images"), ref_deletion=float(rc.deletion_auc[0]),
                               ref_insertion=float(rc.insertion_auc[0]),
                               speedup=ref["seconds"] / best.seconds, image_ratio=ref["images"] / best.counts["images"])
            else:
                ref = fixed.get(stem) if res == 28 else None
                if ref:
                    row.update(ref_seconds=ref[0], ref_images=ref[1], ref_deletion=ref[2], ref_insertion=ref[3],
                               speedup=ref[0] / best.seconds, image_ratio=ref[1] / best.counts["images"])
            rows.append(row)
            print(f"{stem} @{res}: {best.seconds:.1f} s ({best_cpu:.1f} CPU s), {best.counts['images']} images "
                  f"({best.counts['grad_images']} with gradient), deletion {row['deletion']:.3f}, "
                  f"insertion {row['insertion']:.3f}"
                  + (f"; authors {row['ref_deletion']:.3f} / {row['ref_insertion']:.3f}, {row['ref_images']} images"
                     if "ref_deletion" in row and ref_file is not None else ""), file=sys.stderr, flush=True)
    return rows


COLUMNS = [("image", "image", ""), ("resolution", "res", ""), ("seconds", "seconds", ".1f"),
           ("cpu_seconds", "CPU s", ".1f"),
           ("images", "model images", ".0f"), ("grad_images", "with grad", ".0f"),
           ("nograd_images", "without grad", ".0f"), ("deletion", "deletion ↓", ".3f"),
           ("insertion", "insertion ↑", ".3f"), ("overall", "over-all ↑", ".3f"), ("ref_seconds", "authors' s", ".1f"),
           ("ref_cpu_seconds", "authors' CPU s", ".1f"), ("ref_images", "authors' images", ".0f"),
           ("ref_deletion", "authors' del", ".3f"),
           ("ref_insertion", "authors' ins", ".3f"), ("speedup", "time ratio", ".1f"),
           ("image_ratio", "image ratio", ".1f")]


@bench("igos")
def bench_igos(opts: Options) -> int:
    """I-GOS per photo and on average: seconds, model images (with/without gradient), AUCs."""
    resolutions(opts)  # a bad --resolution fails before the model loads
    rows = run_mask_bench(opts, "igos", REFERENCE_IGOS)
    paired: dict = {}
    for res in sorted({r["resolution"] for r in rows}):
        sub = [r for r in rows if r["resolution"] == res]
        sub.append(mean_row(sub, "image"))
        sub[-1]["resolution"] = res
        print(table(sub, COLUMNS))
        if any("ref_cpu_seconds" in r for r in sub[:-1]):  # a harness file: paired statistics
            summary = paired_summary(sub[:-1])
            print_paired(summary, f"I-GOS at {res} x {res} against the authors' code")
            paired[res] = summary
            continue
        refd = [r for r in sub[:-1] if "ref_seconds" in r]
        if refd:
            m = mean_row(refd, "image", "mean over photos with authors' figures")
            print(f"\nphotos with authors' figures ({', '.join(r['image'] for r in refd)}): time ratio "
                  f"{m['ref_seconds'] / m['seconds']:.1f}x, model-image ratio {m['ref_images'] / m['images']:.1f}x, "
                  f"deletion {m['deletion']:.3f} vs {m['ref_deletion']:.3f}, insertion {m['insertion']:.3f} vs "
                  f"{m['ref_insertion']:.3f}")
    print(f"\nmachine: {machine()}")
    dump(opts.json, {"machine": machine(), "rows": rows, "paired": paired})
    return 0
