"""How often ``faithmap audit`` finds a watermark shortcut that a model was *measured* to use.

Run from the repository root::

    python -m bench audit-tier2 --param seeds=3 --param rhos=1.0,0.9,0.75,0.5 --param cache=/tmp/faithmap-truth

For each watermark agreement rate rho and model seed: the ground truth's tier-2 scenario
(:func:`faithmap.truth.tier2.build` at its ``quick`` settings: the small CNN, 32 x 32 images, an object
class and a corner tag agreeing with the label at rate rho) is trained (or read from ``cache``), and
what the model uses is measured by intervention (``scenario.uses["watermark"] >= 0.10``). Its
``images`` (default 64) held-out images are audited with the audit's defaults and no hint (one torch
thread). A watermark counts as *found* when a finding's box overlaps the tag's box with IoU > 0.1
(``first``: the first finding does). The detection rate is the share of models measured to use the
watermark where it is found; the correct-rejection rate the share of the others where no finding
lies on it. ``--param method=NAME`` audits with another method. Prints a Markdown table per model and
the rates; ``--json FILE`` writes them.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

import faithmap
from faithmap.core.batching import torch_threads
from faithmap.errors import FaithmapError
from faithmap.truth import tier2
from faithmap.truth.tier1 import USED

from .common import Options, bench, dump


def _box(regions: torch.Tensor) -> list[float]:
    """The box, in fractions of the image, of every image's watermark pixels (the tag stands at one place)."""
    m = regions.any(0)
    rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
    h, w = m.shape
    return [cols.min().item() / w, rows.min().item() / h, (cols.max().item() + 1) / w, (rows.max().item() + 1) / h]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _one(seed: int, rho: float, images: int, cache: str | None, method: str | None) -> dict:
    t0 = time.perf_counter()
    sc = tier2.build(seed, rho=rho, quick=True, n_test=images, cache_dir=cache)
    build = time.perf_counter() - t0
    pixels = sc.model.to_pixels(sc.x).cpu()
    named = [(f"w{i:03d}", pixels[i], int(t)) for i, t in enumerate(sc.target.tolist())]
    extra = {"method": method} if method else {}
    with tempfile.TemporaryDirectory() as out, torch_threads(1):
        t0 = time.perf_counter()
        res = faithmap.audit(images=named, model=sc.model, out=out, progress=False, **extra)
        seconds = time.perf_counter() - t0
    box = _box(sc.regions["watermark"])
    ious = [_iou(res.region(c), box) for c in res.findings if res.region(c)]
    used = sc.uses["watermark"] >= USED
    return {"rho": rho, "seed": seed, "passed": sc.passed, "watermark_use": sc.uses["watermark"],
            "object_use": sc.uses["object"], "used": used, "findings": len(res.findings),
            "found": any(v > 0.1 for v in ious), "first": bool(ious) and ious[0] > 0.1,
            "build_seconds": build, "audit_seconds": seconds, "images": len(named)}


@bench("audit-tier2")
def bench_audit_tier2(opts: Options) -> int:
    """Detection rate of ``faithmap audit`` over tier-2 watermark models by rho and seed."""
    p = opts.params
    try:
        seeds = int(p.get("seeds", 3))
        rhos = [float(r) for r in str(p.get("rhos", "1.0,0.9,0.75,0.5")).split(",")]
        images = int(p.get("images", 64))
    except ValueError as exc:
        raise FaithmapError(f"audit-tier2: bad --param ({exc})") from None
    if seeds < 1 or images < 2:
        raise FaithmapError("audit-tier2: seeds must be >= 1 and images >= 2")
    cache = p.get("cache") or os.path.join(tempfile.gettempdir(), "faithmap-truth-cache")
    rows = []
    print("| rho | seed | gates | watermark use | object use | used | findings | found (first) | audit s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rho in rhos:
        for seed in range(seeds):
            r = _one(seed, rho, images, cache, p.get("method"))
            rows.append(r)
            print(f"| {rho:.2f} | {seed} | {'pass' if r['passed'] else 'FAIL'} | {r['watermark_use']:.3f} | "
                  f"{r['object_use']:.3f} | {'yes' if r['used'] else 'no'} | {r['findings']} | "
                  f"{'yes' if r['found'] else 'no'} ({'yes' if r['first'] else 'no'}) | {r['audit_seconds']:.1f} |",
                  flush=True)
    used = [r for r in rows if r["used"]]
    unused = [r for r in rows if not r["used"]]
    rates = {"detection": (sum(r["found"] for r in used), len(used)),
             "detection_first": (sum(r["first"] for r in used), len(used)),
             "correct_rejection": (sum(not r["found"] for r in unused), len(unused))}
    print()
    for k, (a, n) in rates.items():
        print(f"{k}: {a}/{n}" + (f" = {a / n:.2f}" if n else ""))
    dump(opts.json, {"rows": rows, "rates": {k: list(v) for k, v in rates.items()}, "method": p.get("method") or "default"})
    return 0
