"""``python -m bench evaluate``: throughput of ``faithmap evaluate`` by engine, the store at scale, a projection.

Three parts (``--param part=throughput,store,projection``, all by default), each in one run:

* **throughput**: EfficientNet-Lite0 on ``images`` (64) photos -- the sample photos, their mirror images
  and crops -- explained by Grad-CAM and I-GOS (fast settings) at 28x28 and scored by deletion and
  insertion, three ways: one-image tasks, batched tasks (``batch`` images each), and the Ray engine
  with ``workers`` actors (the same batches). Images per second of the whole ``evaluate`` call (plan,
  tasks, parts; no report), and model images per photo, which must agree across the three. Beside
  them, in the same process, the bare network's own batch gain: seconds per image of its forward
  pass (and of forward + input-gradient backward) one image at a time against ``--batch-size``
  images at once.
* **store**: synthetic results of ``rows`` (10^4, 10^5, 10^6) rows laid out as a run writes them
  (parts of 20 images x 3 metrics, curves on each image's first row), then, each in a fresh
  process, the resume scan (keys from the parts' footers) and the whole report; seconds and the
  child's peak resident memory (``getrusage``), against a child that only imports faithmap.
* **projection**: the ``sigcam-table2`` preset (its full settings) on ``projection_images`` photos:
  seconds and model images per photo, times 50,000 (the size of SIGCAM's Table 2).

Other ``--param`` options: ``images=64``, ``batch=8``, ``workers=2``, ``rows=10000,100000,1000000``,
``projection_images=2``, ``keep=DIR`` (keep the output folders there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import faithmap
from faithmap import models
from faithmap.core.batching import model_guard
from faithmap.core.io import atomic_open, write_json
from faithmap.data import load_sample, sample_names
from faithmap.errors import FaithmapError

from faithmap.evaluation import store as store_mod
from faithmap.evaluation.store import META_KEY, STORE_FORMAT

from .common import Options, bench, dump, machine, table


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def photo_set(n: int) -> list[tuple[str, np.ndarray]]:
    """``n`` distinct photos: each sample photo, mirrored, and cropped at several places."""
    def crops(p):
        h, w = p.shape[:2]
        out = [("", p), ("flip", p[:, ::-1])]
        for f in (0.9, 0.8, 0.7):
            ch, cw = int(h * f), int(w * f)
            for tag, (y, x) in (("tl", (0, 0)), ("br", (h - ch, w - cw)), ("c", ((h - ch) // 2, (w - cw) // 2))):
                c = p[y:y + ch, x:x + cw]
                out += [(f"crop{int(f * 100)}{tag}", c), (f"crop{int(f * 100)}{tag}-flip", c[:, ::-1])]
        return out

    photos = {n_: load_sample(n_) for n_ in sample_names()}
    variants = {n_: crops(p) for n_, p in photos.items()}
    out = []
    for k in range(max(len(v) for v in variants.values())):
        for n_, v in variants.items():
            if k < len(v) and len(out) < n:
                tag, arr = v[k]
                out.append((f"{n_}-{tag}" if tag else n_, np.ascontiguousarray(arr)))
    if len(out) < n:
        raise FaithmapError(f"at most {len(out)} distinct photos can be made from the samples")
    return out


def network_gain(model, photos, batch: int, repeats: int = 3) -> dict:
    """Seconds per image of the bare network one image at a time and ``batch`` at once (best of ``repeats``)."""
    x = model.preprocess([p for _, p in photos[:batch]])

    def timed(fn):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best / x.shape[0]

    def fwd(xx):
        with torch.no_grad():
            model(xx)

    def fwd_bwd(xx):
        xx = xx.detach().clone().requires_grad_(True)
        torch.autograd.grad(model(xx)[:, 0].sum(), xx)

    out = {}
    with model_guard(model):
        for name, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
            fn(x[:1])
            one = timed(lambda: [fn(x[i:i + 1]) for i in range(x.shape[0])])
            together = timed(lambda: fn(x))
            out[name] = {"one_s": one, "batch_s": together, "gain": one / together}
    return out


def throughput(opts: dict, work: str) -> dict:
    """Images per second of ``faithmap.evaluate`` with one-image tasks, batched tasks and the Ray engine."""
    n, batch, workers = int(opts.get("images", 64)), int(opts.get("batch", 8)), int(opts.get("workers", 2))
    photos = photo_set(n)
    model = models.load()
    gain = network_gain(model, photos, int(opts.get("batch_size", 20)))
    common = dict(methods="gradcam,igos", resolutions="28", metrics="deletion,insertion", fast=True,
                  progress=False, report=False, csv=False, images=photos, model="efficientnet_lite0", save_maps=0)
    runs, rows = {}, {}
    modes = [("one-image tasks", dict(batch_images=1)), ("batched tasks", dict(batch_images=batch)),
             (f"ray, {workers} workers", dict(batch_images=batch, engine="ray", workers=workers))]
    for label, kw in modes:
        if kw.get("engine") == "ray":
            import ray

            from faithmap.evaluation.ray_engine import RayEngine

            t0 = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            ray_start = time.perf_counter() - t0
            kw = dict(batch_images=batch, engine=RayEngine(workers=workers))
        out = os.path.join(work, label.split(",")[0].replace(" ", "-"))
        la = load()
        t0 = time.perf_counter()
        res = faithmap.evaluate(out=out, **common, **kw)
        secs = time.perf_counter() - t0
        runs[label] = {"seconds": secs, "images_per_s": n / secs, "model_images_per_photo": res.model_images / n,
                       "tasks": res.tasks_run, "load_before": la, "load_after": load()}
        rows[label] = res.rows
        for m in ("gradcam", "igos"):  # per method: explain + metrics + the task's prediction pass, per photo
            rs = [r for r in res.rows if r["method"] == m]
            per = {}
            for r in rs:
                per.setdefault(r["image"], r["explain_images"] + 1.0)
                per[r["image"]] += r["metric_images"]
            runs[label][f"{m}_images"] = sum(per.values()) / len(per)
        if kw.get("engine") is not None:
            import ray

            runs[label]["ray_start_s"] = ray_start
            runs[label]["actors_ready_s"] = kw["engine"].startup_s
            ray.shutdown()
    ray_label = [k for k in runs if k.startswith("ray")][0]
    r = runs[ray_label]
    r["images_per_s_after_startup"] = n / (r["seconds"] - r["actors_ready_s"])
    base = runs["one-image tasks"]["images_per_s"]
    for r in runs.values():
        r["speedup"] = r["images_per_s"] / base
    labels = list(runs)
    agree = {}
    for b in labels[1:]:
        for m in ("gradcam", "igos"):
            ra = [r for r in rows[labels[0]] if r["method"] == m]
            rb = [r for r in rows[b] if r["method"] == m]
            d = [abs(x["value"] - y["value"]) for x, y in zip(ra, rb)]
            agree[f"{m}: {labels[0]} vs {b}"] = {
                "max_abs_diff": max(d), "over_1e-4": sum(v > 1e-4 for v in d), "rows": len(d),
                "within_rounding": store_mod.rows_close(store_mod.comparable(ra, store_mod.COST_COLUMNS),
                                                        store_mod.comparable(rb, store_mod.COST_COLUMNS)) is None}
    return {"images": n, "batch": batch, "workers": workers, "network": gain, "runs": runs, "rows": agree}


def synth(out: str, rows: int) -> dict:
    """A run directory with ``rows`` synthetic rows: parts of 20 images x 3 metrics, curves of 54 points."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sch = store_mod.schema()
    per_part, metrics, L = 20, ("deletion", "insertion", "overall"), 54
    methods = ("gradcam", "gradcam++", "igos", "sigcam")
    per_block = per_part * len(metrics) * len(methods)
    n_images = per_part * -(-rows // per_block)
    os.makedirs(os.path.join(out, "parts"), exist_ok=True)
    g = np.random.default_rng(0)
    fr = list(np.linspace(0, 1, L))
    written = 0
    part = 0
    while written < rows:
        m = methods[part % len(methods)]
        start = (part // len(methods)) * per_part
        imgs = [f"img{start + i:06d}" for i in range(per_part)]
        k = min(per_part * len(metrics), rows - written)
        img_col = [imgs[j // len(metrics)] for j in range(k)]
        met = [metrics[j % len(metrics)] for j in range(k)]
        first = [j % len(metrics) == 0 for j in range(k)]
        curve = lambda: [list(np.sort(g.random(L))[::-1]) if f else None for f in first]  # noqa: E731
        cols = {"key": [f"{i}|{m}|28" for i in img_col], "image": img_col, "label": [None] * k,
                "predicted": [1] * k, "correct": [None] * k, "target": [1] * k, "target_name": ["goldfish"] * k,
                "target_prob": list(g.random(k)), "category": ["goldfish"] * k, "method": [m] * k,
                "resolution": ["28"] * k, "grid": ["28x28" if m.startswith(("igos", "sig")) else "7x7"] * k,
                "metric": met, "value": list(g.random(k)), "higher_is_better": [x != "deletion" for x in met],
                "seed": [0] * k, "image_seed": [0] * k, "fast": [False] * k, "explain_seconds": [1.0] * k,
                "explain_images": [100.0] * k, "explain_grad_images": [50.0] * k, "metric_seconds": [1.0] * k,
                "metric_images": [106.0 if f else 0.0 for f in first], "task_row": [j % len(metrics) for j in range(k)],
                "fractions": [fr if f else None for f in first], "deletion_curve": curve(), "insertion_curve": curve()}
        t = pa.table({c: pa.array(cols[c], type=sch.field(c).type) for c in sch.names}, schema=sch)
        keys = list(dict.fromkeys(cols["key"]))
        t = t.replace_schema_metadata({META_KEY: json.dumps({"format": STORE_FORMAT, "keys": keys, "images": {}}).encode()})
        with atomic_open(os.path.join(out, "parts", f"part-{part:08d}.parquet")) as fh:  # as a run writes a part
            pq.write_table(t, fh, compression="zstd")
        written += k
        part += 1
    run = {"faithmap": "bench", "store": STORE_FORMAT, "settings": {"model": "efficientnet_lite0",
           "metrics": list(metrics), "target": "top1", "seed": 0}, "methods": list(methods), "resolutions": ["28"],
           "images": [f"img{i:06d}" for i in range(n_images)], "metrics": list(metrics)}
    write_json(os.path.join(out, "run.json"), run)
    return {"parts": part, "images": n_images}


CHILD = """
import sys, time, json
def status(key):  # this process's own memory (VmHWM: peak resident set; getrusage would include a vfork parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
t0 = time.perf_counter()
import pyarrow as pa
import faithmap
from faithmap.evaluation.store import Store
from faithmap.evaluation.report import write_report
imported = time.perf_counter() - t0
what, out = sys.argv[1], sys.argv[2]
before = status("VmRSS:")
t = time.perf_counter()
if what == "scan":
    n = len(Store(out).scan().keys)
elif what == "report":
    write_report(out)
    n = 0
elif what == "compact":
    n = Store(out).compact()
else:  # the baseline: imports only
    n = 0
secs = time.perf_counter() - t
print(json.dumps({"seconds": secs, "keys": n, "import_s": imported, "rss_before_mb": before,
                  "peak_rss_mb": status("VmHWM:"), "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20}))
"""


def child(what: str, out: str) -> dict:
    """Run :data:`CHILD` in a fresh process that imports this faithmap (the one this process imported)."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(faithmap.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", CHILD, what, out], capture_output=True, env=env, timeout=3600)
    if p.returncode != 0:
        raise FaithmapError(f"the {what} child failed: {p.stderr.decode().strip().splitlines()[-1:]}")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def store(opts: dict, work: str) -> dict:
    raw = opts.get("rows", (10_000, 100_000, 1_000_000))
    sizes = [int(float(v)) for v in (raw if isinstance(raw, (list, tuple)) else [raw])]
    out = {"baseline": child("none", work)}
    for n in sizes:
        d = os.path.join(work, f"store-{n}")
        t = time.perf_counter()
        info = synth(d, n)
        info["write_s"] = time.perf_counter() - t
        info["bytes"] = sum(e.stat().st_size for e in os.scandir(os.path.join(d, "parts")))
        info["load_before"] = load()
        info["scan"] = child("scan", d)
        info["report"] = child("report", d)
        info["compact"] = child("compact", d)
        info["compacted_parts"] = len(os.listdir(os.path.join(d, "parts")))
        info["scan_compacted"] = child("scan", d)
        info["report_compacted"] = child("report", d)
        info["load_after"] = load()
        out[n] = info
        shutil.rmtree(d, ignore_errors=True)
    return out


def projection(opts: dict, work: str) -> dict:
    """Seconds and model images per photo of the sigcam-table2 preset, projected to 50,000 photos."""
    n = int(opts.get("projection_images", 2))
    photos = photo_set(max(n, 6))[:n]
    la = load()
    t0 = time.perf_counter()
    res = faithmap.evaluate(out=os.path.join(work, "sigcam"), preset="sigcam-table2", images=photos, progress=False,
                            report=False, csv=False, save_maps=0, batch_images=n)
    secs = time.perf_counter() - t0
    return {"images": n, "seconds": secs, "seconds_per_image": secs / n, "model_images_per_image": res.model_images / n,
            "methods": res.run["methods"], "skipped": res.skipped_methods,
            "hours_for_50000": secs / n * 50000 / 3600, "load_before": la, "load_after": load()}


@bench("evaluate")
def bench_evaluate(options: Options) -> int:
    """Throughput of faithmap evaluate (one-image, batched, Ray), the Parquet store at scale, a projection."""
    opts = dict(options.params)
    parts = str(opts.get("part", "throughput,store,projection")).split(",")
    if opts.get("batch_size") is None and options.batch_size:
        opts["batch_size"] = options.batch_size
    keep = opts.get("keep")
    work = str(keep) if keep else tempfile.mkdtemp(prefix="faithmap-bench-")
    os.makedirs(work, exist_ok=True)
    result = {"machine": machine(), "load_start": load()}
    try:
        if "throughput" in parts:
            r = result["throughput"] = throughput(opts, work)
            print(f"## Throughput: {r['images']} photos, Grad-CAM and I-GOS (fast) at 28x28, deletion and insertion\n")
            print(table([{"mode": k, **v} for k, v in r["runs"].items()],
                        [("mode", "mode", ""), ("seconds", "seconds", ".1f"), ("images_per_s", "photos/s", ".3f"),
                         ("speedup", "vs one-image", ".2f"), ("model_images_per_photo", "model images/photo", ".1f"),
                         ("gradcam_images", "of which Grad-CAM", ".2f"), ("igos_images", "of which I-GOS", ".2f"),
                         ("tasks", "image tasks", "d"), ("load_before", "load before", ""),
                         ("load_after", "load after", "")]))
            ray_r = [v for k, v in r["runs"].items() if k.startswith("ray")][0]
            print(f"\nray: cluster start {ray_r['ray_start_s']:.1f} s (not counted); actors ready after "
                  f"{ray_r['actors_ready_s']:.1f} s (counted); photos/s after that: "
                  f"{ray_r['images_per_s_after_startup']:.3f}\n")
            print(table([{"pass": k, **v} for k, v in r["network"].items()],
                        [("pass", "bare network", ""), ("one_s", "s/image, 1 at a time", ".4f"),
                         ("batch_s", "s/image, batch", ".4f"), ("gain", "batch gain", ".2f")]))
            print()
            print(table([{"pair": k, **v} for k, v in r["rows"].items()],
                        [("pair", "rows compared", ""), ("rows", "rows", "d"), ("max_abs_diff", "max |value diff|", ".2e"),
                         ("over_1e-4", "rows differing > 1e-4", "d"), ("within_rounding", "within 1e-4 rel / 1e-6", "")]))
            print()
        if "store" in parts:
            r = result["store"] = store(opts, work)
            print("## Store: synthetic results; resume scan and report, each in a fresh process\n")
            rows = []
            for n, v in r.items():
                if n == "baseline":
                    continue
                for tag, scan, rep, files in (("as written", "scan", "report", v["parts"]),
                                              ("compacted", "scan_compacted", "report_compacted", v["compacted_parts"])):
                    rows.append({"rows": n, "layout": tag, "parts": files, "scan": v[scan]["seconds"],
                                 "scan_mb": v[scan]["peak_rss_mb"], "report": v[rep]["seconds"],
                                 "report_mb": v[rep]["peak_rss_mb"], "arrow_mb": v[rep]["arrow_peak_mb"]})
                rows[-1]["compact"] = v["compact"]["seconds"]
                rows[-1]["compact_mb"] = v["compact"]["peak_rss_mb"]
                rows[-2]["write"] = v["write_s"]
                rows[-2]["mb"] = v["bytes"] / 1e6
                rows[-1]["load"] = rows[-2]["load"] = f"{v['load_before']}-{v['load_after']}"
            print(table(rows, [("rows", "rows", "d"), ("layout", "parts", ""), ("parts", "files", "d"),
                               ("mb", "MB on disk", ".1f"), ("write", "synthesis s", ".1f"),
                               ("compact", "compaction s", ".1f"), ("compact_mb", "compaction peak RSS MB", ".0f"),
                               ("scan", "resume scan s", ".2f"), ("scan_mb", "scan peak RSS MB", ".0f"),
                               ("report", "report s", ".2f"), ("report_mb", "report peak RSS MB", ".0f"),
                               ("arrow_mb", "of which Arrow pool peak MB", ".0f"), ("load", "load", "")]))
            print(f"\nbaseline child (imports only): {r['baseline']['peak_rss_mb']:.0f} MB peak RSS\n")
        if "projection" in parts:
            r = result["projection"] = projection(opts, work)
            print(f"## Projection: sigcam-table2 on {r['images']} photos: {r['seconds_per_image']:.1f} s and "
                  f"{r['model_images_per_image']:.0f} model images per photo -> {r['hours_for_50000']:.0f} h for "
                  f"50,000 photos on this machine (methods {', '.join(r['methods'])}; skipped: "
                  f"{', '.join(r['skipped']) or 'none'}; load {r['load_before']}-{r['load_after']})\n")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result["load_end"] = load()
    print(f"machine: {result['machine']}; load average {result['load_start']} at start, {result['load_end']} at end")
    dump(options.json, result)
    return 0
