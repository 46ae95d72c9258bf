"""What ``faithmap audit`` costs on this machine: seconds and model images per image, by step.

Run from the repository root::

    python -m bench audit --param which=tiny --param images=300
    python -m bench audit --param which=lite0

``tiny``: the shortcut model of the tests (``tests/auditkit.py``: a 2-convolution CNN trained here on
32 x 32 images whose label only a corner tag carries), audited on ``--images`` fresh images of that
kind with one torch thread. ``lite0``: the default EfficientNet-Lite0 on the 20 bundled photos
(``photos``; no labels: target top1), with the default torch threads. Both with the default method
(Grad-CAM) and settings. Prints one Markdown table row per run; ``--json FILE`` also writes the
audit's cost figures (through faithmap's atomic writer).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import torch

import faithmap
from faithmap.core.batching import torch_threads
from faithmap.errors import FaithmapError

from .common import Options, bench, dump

HERE = os.path.dirname(os.path.abspath(__file__))


def _tiny(n: int, out: str):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import auditkit

    t0 = time.perf_counter()
    model = auditkit.train_tagnet("tag")
    train = time.perf_counter() - t0
    with torch_threads(1):
        res = faithmap.audit(images=auditkit.tag_images(n, "tag", seed=7), model=model, out=out, progress=False)
    return res, f"tiny shortcut CNN, {n} generated 32x32 images (trained in {train:.1f} s), 1 torch thread"


def _lite0(out: str):
    return (faithmap.audit(images="photos", out=out, progress=False),
            f"EfficientNet-Lite0, the 20 bundled photos, {torch.get_num_threads()} torch threads")


@bench("audit")
def bench_audit(opts: Options) -> int:
    """Seconds and model images per image of ``faithmap audit``, by step (tiny shortcut CNN or Lite0)."""
    which = str(opts.params.get("which", "tiny"))
    if which not in ("tiny", "lite0"):
        raise FaithmapError(f"--param which= takes tiny or lite0, got {which!r}")
    images = int(opts.params.get("images", 300))
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res, what = _tiny(images, tmp) if which == "tiny" else _lite0(tmp)
        wall = time.perf_counter() - t0
    n = res.images
    s, m = res.seconds, res.model_images
    steps = sum(s.values())
    row = {"run": what, "images": n, "seconds_per_image": steps / n,
           "model_images_per_image": (m["explain"] + m["verify"]) / n,
           "explain_model_images_per_image": m["explain"] / n, "verify_model_images_per_image": m["verify"] / n,
           "seconds": s, "explain_share": s["explain"] / steps, "verify_share": s["verify"] / steps,
           "candidates": len(res.candidates), "findings": len(res.findings), "wall_with_setup": wall}
    print("| run | images | s/image | model images/image (explain + verify) | explain : candidates : verify : "
          "page (s) | candidates (findings) |")
    print("|---|---|---|---|---|---|")
    print(f"| {what} | {n} | {row['seconds_per_image']:.3f} | {row['model_images_per_image']:.1f} "
          f"({row['explain_model_images_per_image']:.1f} + {row['verify_model_images_per_image']:.1f}) | "
          f"{s['explain']:.1f} : {s['candidates']:.1f} : {s['verify']:.1f} : {s['report']:.1f} | "
          f"{row['candidates']} ({row['findings']}) |")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    if opts.json:
        dump(opts.json, row)
    return 0
