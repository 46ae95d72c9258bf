"""``python -m bench costs``: what each registered method costs per photo at its default settings.

Every registered method explains each photo (default: ``sample:coffee`` and ``sample:chelsea``) on the
default model (EfficientNet-Lite0) one photo at a time, at its registered defaults, through
``faithmap.explain`` with the model's top-1 class as the target; the figures are the mean over the
photos of the method's wall seconds (``Explanation.seconds``) and of the images it sent through the
model (``Explanation.counts["images"]``). ``--json FILE`` writes them in the form the method-picker
table reads (``faithmap docs``: ``docs/data/method_costs.json``): per method ``seconds``, ``images``,
plus the machine and the command. ``--param methods=gradcam,igos`` measures a subset (the other
entries of an existing ``--json`` file are kept).
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import torch

import faithmap
from faithmap.core.io import write_json

from .common import Options, bench, gather_images, load_model, machine, table

DEFAULT_PHOTOS = ("sample:coffee", "sample:chelsea")


def _measure(model, x, name: str) -> tuple[float, float]:
    """(seconds, model images) of one default-settings explanation of ``x`` (one photo)."""
    exp = faithmap.explain(model, x, name)
    return float(exp.seconds), float(exp.counts.get("images", 0))


@bench("costs")
def run(opts: Options) -> int:
    """seconds and model images per photo of every registered method at its defaults (the method picker's costs)"""
    model = load_model(opts)
    photos = gather_images(opts, DEFAULT_PHOTOS)
    xs = [model.preprocess([img]).to(model.device) for _, img in photos]
    chosen = str(opts.params.get("methods", "")).split(",") if opts.params.get("methods") else None
    names = [faithmap.METHODS.canonical(n) for n in chosen] if chosen else [s.name for s in faithmap.METHODS]
    faithmap.explain(model, xs[0], "gradcam")  # warm-up: the first pass pays for allocations and kernels
    rows = []
    for name in names:
        seconds, images = zip(*(_measure(model, x, name) for x in xs))
        rows.append({"method": name, "seconds": sum(seconds) / len(xs), "images": sum(images) / len(xs)})
        print(f"{name}: {rows[-1]['seconds']:.2f} s, {rows[-1]['images']:.0f} model images", file=sys.stderr)
    print(f"{machine()}; photos: {', '.join(n for n, _ in photos)}; load average {os.getloadavg()[0]:.1f}")
    print(table(rows, [("method", "method", ""), ("seconds", "s / photo", ".2f"), ("images", "model images / photo", ".0f")]))
    if opts.json:
        _write(opts, rows, [n for n, _ in photos])
    return 0


def _write(opts: Options, rows: list[dict], photos: list[str]) -> None:
    """Merge ``rows`` into the costs file (entries of methods not measured now are kept)."""
    old = {}
    if os.path.isfile(opts.json):
        with open(opts.json, encoding="utf-8") as fh:
            old = json.load(fh).get("methods", {})
    old.update({r["method"]: {"seconds": round(r["seconds"], 3), "images": round(r["images"], 1)} for r in rows})
    doc = {"source": "python -m bench costs --json docs/data/method_costs.json",
           "measured": datetime.date.today().isoformat(), "machine": machine(),
           "threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 1),
           "model": opts.model, "photos": photos, "methods": dict(sorted(old.items()))}
    write_json(opts.json, doc)
