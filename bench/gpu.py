"""``python -m bench gpu``: photos per second on an accelerator, in one run (under 8 minutes on one H100).

On the default model and faithmap.data's ``PHOTOS`` (the 20 photos; images given on the command
line replace them), three sections, each row with its seconds, photos per second and model images
per photo:

* **mask**: I-GOS and iGOS++ with their registered defaults at mask resolutions 28 and 224, the
  photos as one batch (one ``faithmap.explain`` call);
* **cam**: every registered method of the CAM family with its defaults, at batch 1 (one call per
  photo) and on the batch of all photos (one call);
* **evaluate**: ``faithmap.evaluate`` of Grad-CAM and I-GOS (fast settings) at 28 x 28 with deletion
  and insertion, the photos in one task (no report), images per second of the whole call.

Seconds are wall-clock with the device synchronised before and after each timed call, the best of
``--repeats``; every method first runs once untimed on one photo (kernels, allocator; not under
``--quick``). Mask methods run with ``ls_window=3``, the line-search window faithmap picks on an
accelerator, on every device: with the window CPU runs pick (1) the line search would send other
images through the model, and the counts could not be compared. Even so, the line search accepts
a step by comparing floats, so a mask row may differ where a GPU's rounding flips a close call;
the CAM rows should match exactly (the evaluate row runs I-GOS too).

``--device cpu --json FILE`` writes a CPU run; ``--compare-cpu FILE`` then checks, after this run,
that every row's model images equal the CPU run's (the settings must be the same, checked before
anything runs): the differences are printed and the exit status is 1. ``--quick``: 2 photos; the
mask methods with 1 iteration, 2 IG steps and 1 line-search point; each CAM method's fast settings
and, on the default model, a 24-channel layer (``features.3``) so that Score-CAM and Ablation-CAM
stay cheap; no warm-up calls: a CPU smoke run of the whole script (about 730 model images).
``--json`` defaults to ``bench_gpu_<device type>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import torch

import faithmap
from faithmap.core.device import resolve_device
from faithmap.errors import FaithmapError

from .common import Options, bench, dump, gather_images, load_model, machine, table

MASK_METHODS = ("igos", "igos++")
MASK_RESOLUTIONS = (28, 224)
LS_WINDOW = 3
"""The line-search window of the mask methods on every device (faithmap's choice on an accelerator)."""
QUICK_MASK = {"iterations": 1, "ig_steps": 2, "ls_points": 1}
QUICK_PHOTOS = 2
QUICK_CAM_LAYER = "features.3"
"""The layer of the CAM methods under ``--quick`` on the default model (24 channels, 56 x 56)."""
EVAL_METHODS = ("gradcam", "igos")
COLUMNS = [("section", "section", ""), ("method", "method", ""), ("setting", "setting", ""),
           ("photos", "photos", "d"), ("seconds", "seconds", ".3f"), ("photos_per_s", "photos/s", ".2f"),
           ("model_images", "model images", "d"), ("per_photo", "model images / photo", ".1f")]


def cam_methods() -> list[str]:
    """Every registered method of the CAM family, in registry order."""
    return [s.name for s in faithmap.METHODS if s.family == "cam"]


def settings(opts: Options, model, photos: list[str]) -> dict[str, Any]:
    """What determines the model-image counts (a CPU run must have the same to be compared)."""
    mask = {"ls_window": LS_WINDOW, **(QUICK_MASK if opts.quick else {})}
    cam: dict[str, dict] = {}
    for m in cam_methods():
        p = dict(faithmap.METHODS.get(m).fast) if opts.quick else {}
        if opts.quick and model.name == faithmap.models.DEFAULT_MODEL:
            p["layer"] = QUICK_CAM_LAYER
        cam[m] = p
    evaluate = {"methods": list(EVAL_METHODS), "resolutions": "28", "metrics": "deletion,insertion", "fast": True,
                "params": {"igos": dict(mask)}}
    return {"quick": opts.quick, "model": model.name, "weights": opts.weights, "photos": photos, "mask": mask,
            "mask_resolutions": list(MASK_RESOLUTIONS), "cam": cam, "evaluate": evaluate}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so that wall-clock seconds include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """(best seconds, last result) of ``repeats`` calls of ``fn``, the device synchronised around each."""
    best, out = float("inf"), None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def _row(section: str, method: str, setting: str, n: int, seconds: float, images: int) -> dict[str, Any]:
    print(f"{section} {method} {setting}: {seconds:.2f} s, {n / seconds:.2f} photos/s, {images} model images",
          file=sys.stderr, flush=True)
    return {"section": section, "method": method, "setting": setting, "photos": n, "seconds": seconds,
            "photos_per_s": n / seconds, "model_images": int(images), "per_photo": images / n}


def mask_rows(model, x: torch.Tensor, cfg: dict, opts: Options, device: torch.device) -> list[dict]:
    """I-GOS and iGOS++ at each mask resolution, the photos as one batch."""
    rows = []
    extra = {"batch_size": opts.batch_size} if opts.batch_size else {}
    for m in MASK_METHODS:
        if not opts.quick:  # warm-up
            faithmap.explain(model, x[:1], m, resolution=MASK_RESOLUTIONS[0], **{**cfg["mask"], **extra, "iterations": 1})
        for res in MASK_RESOLUTIONS:
            s, e = timed(lambda: faithmap.explain(model, x, m, resolution=res, **cfg["mask"], **extra), device,
                         opts.repeats)
            rows.append(_row("mask", m, f"{res}x{res}, batch of {len(x)}", len(x), s, e.counts["images"]))
    return rows


def cam_rows(model, x: torch.Tensor, cfg: dict, opts: Options, device: torch.device) -> list[dict]:
    """Each CAM method at batch 1 (a call per photo) and on the whole batch (one call)."""
    rows = []
    extra = {"batch_size": opts.batch_size} if opts.batch_size else {}
    n = len(x)
    with torch.no_grad():
        targets = model(x).argmax(1)  # given to every call: no prediction pass is counted
    for m in cam_methods():
        params = {**cfg["cam"][m], **extra}
        if not opts.quick:  # warm-up
            faithmap.explain(model, x[:1], m, target=targets[:1], **params)

        def singles(m=m, params=params):
            return sum(faithmap.explain(model, x[i:i + 1], m, target=targets[i:i + 1], **params).counts["images"]
                       for i in range(n))

        s, images = timed(singles, device, opts.repeats)
        rows.append(_row("cam", m, "batch 1", n, s, images))
        s, e = timed(lambda m=m, params=params: faithmap.explain(model, x, m, target=targets, **params), device,
                     opts.repeats)
        rows.append(_row("cam", m, f"batch of {n}", n, s, e.counts["images"]))
    return rows


def evaluate_rows(photos: list[tuple[str, Any]], cfg: dict, opts: Options, device: torch.device,
                  work: str) -> list[dict]:
    """``faithmap.evaluate`` of a small method set on the photos: images per second of the whole call."""
    ev = cfg["evaluate"]
    kw = dict(methods=",".join(ev["methods"]), images=photos, model=opts.model, weights=opts.weights,
              device=str(device), resolutions=ev["resolutions"], metrics=ev["metrics"], fast=ev["fast"],
              params=ev["params"], batch_images=len(photos), batch_size=opts.batch_size, progress=False,
              report=False, csv=False, save_maps=0)
    if not opts.quick:  # warm-up
        faithmap.evaluate(out=os.path.join(work, "warm-up"), **{**kw, "images": photos[:1]})
    best, res = float("inf"), None
    for k in range(opts.repeats):
        synchronize(device)
        start = time.perf_counter()
        res = faithmap.evaluate(out=os.path.join(work, f"run{k}"), **kw)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return [_row("evaluate", "+".join(ev["methods"]), f"{ev['metrics']}, {ev['resolutions']}x{ev['resolutions']}, fast",
                 len(photos), best, res.model_images)]


def read_cpu_run(path: str) -> dict:
    """The JSON of an earlier run (``--device cpu``), checked to be one."""
    if not os.path.isfile(path):
        raise FaithmapError(f"--compare-cpu: {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            run = json.load(fh)
        run["settings"], run["rows"]  # noqa: B018  (both must be there)
    except (ValueError, KeyError, TypeError):
        raise FaithmapError(f"--compare-cpu: {path} is not the JSON of a `python -m bench gpu` run") from None
    return run


def compare_counts(rows: list[dict], cpu_rows: list[dict]) -> list[dict]:
    """Rows whose model images differ from the CPU run's (or that one run lacks): key, ours, cpu."""
    key = lambda r: (r["section"], r["method"], r["setting"])  # noqa: E731
    cpu = {key(r): r["model_images"] for r in cpu_rows}
    ours = {key(r): r["model_images"] for r in rows}
    return [{"row": " / ".join(k), "ours": ours.get(k), "cpu": cpu.get(k)}
            for k in list(ours) + [k for k in cpu if k not in ours] if ours.get(k) != cpu.get(k)]


@bench("gpu", takes=("quick", "compare_cpu"))
def bench_gpu(opts: Options) -> int:
    """Photos/s of I-GOS, iGOS++, the CAM family and evaluate on an accelerator; model images per photo."""
    import tempfile

    if opts.params or opts.resolution or opts.iterations is not None:
        raise FaithmapError("bench gpu has fixed settings (no --param, --resolution, --iterations); --quick shrinks them")
    device = resolve_device(opts.device)
    cpu_run = read_cpu_run(opts.compare_cpu) if opts.compare_cpu else None
    out_path = opts.json or f"bench_gpu_{device.type}.json"
    model = load_model(opts)
    images = gather_images(opts, default=["photos"])
    if opts.quick:
        images = images[:QUICK_PHOTOS]
    cfg = settings(opts, model, [name for name, _ in images])
    if cpu_run is not None and cpu_run["settings"] != cfg:
        diff = sorted(k for k in set(cfg) | set(cpu_run["settings"]) if cfg.get(k) != cpu_run["settings"].get(k))
        raise FaithmapError(f"--compare-cpu: {opts.compare_cpu} was run with other settings ({', '.join(diff)}); "
                            f"rerun it with the same photos, model and --quick, on --device cpu")
    x = model.preprocess([arr for _, arr in images])
    result: dict[str, Any] = {"bench": "gpu", "machine": machine(), "device": str(device),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": cfg, "rows": []}
    start = time.perf_counter()
    result["rows"] += mask_rows(model, x, cfg, opts, device)
    result["rows"] += cam_rows(model, x, cfg, opts, device)
    with tempfile.TemporaryDirectory(prefix="faithmap-bench-gpu-") as work:
        result["rows"] += evaluate_rows(images, cfg, opts, device, work)
    result["seconds"] = time.perf_counter() - start
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(table(result["rows"], COLUMNS))
    print(f"\n{len(images)} photos on {device}, best of {opts.repeats}; {result['seconds']:.0f} s in all; "
          f"machine: {result['machine']}")
    status = 0
    if cpu_run is not None:
        diff = compare_counts(result["rows"], cpu_run["rows"])
        result["compare_cpu"] = {"file": opts.compare_cpu, "cpu_device": cpu_run.get("device"),
                                 "rows": len(result["rows"]), "differences": diff}
        if diff:
            print(f"\nmodel images that differ from the CPU run ({opts.compare_cpu}):\n")
            print(table(diff, [("row", "row", ""), ("ours", "this run", ""), ("cpu", "CPU run", "")]))
            status = 1
        else:
            print(f"\nmodel images equal the CPU run's ({opts.compare_cpu}) on all {len(result['rows'])} rows")
    dump(out_path, result)
    print(f"wrote {out_path}")
    return status
