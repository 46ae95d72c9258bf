"""The pictures of the documentation, made from the registry: ``faithmap docs --gallery DIR``.

Every registered method explains one sample photo on the default model at its ``fast`` settings
(plus :data:`GALLERY_SETTINGS` where the fast settings leave the map at its start), and the maps are
drawn over the photo: ``gallery.png`` (every method), ``strip.png`` (one row of the methods in
:data:`STRIP`, for the README), ``family_<family>.png`` (each family's methods, for its page),
``quickstart.png`` (the README snippet's figure: Grad-CAM with its deletion and insertion curves) and
``report.png`` (the first screen of ``faithmap evaluate``'s HTML report, rendered by headless
chromium; a matplotlib picture of the report's summary table where chromium is not installed).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .api import explain
from .core.io import atomic_open, output_dir, write_atomic
from .data import load_sample
from .errors import FaithmapError
from .evaluation import evaluate
from .explanation import Explanation
from .models import load
from .registry import METHODS
from .viz import overlay, show
from .viz.draw import new_figure, plain_text

PHOTO = "coffee"
"""The sample photo of the gallery."""

STRIP = ("gradcam", "expectedgradcam", "ig", "smoothgrad", "excitation_bp", "rise", "xrai", "igos", "igos++",
         "sigcam")
"""The methods of the README's strip: the papers' methods and one or two of each other family."""

GALLERY_SETTINGS: dict[str, dict[str, Any]] = {
    "extremal_perturbation": {"iterations": 120},  # at its fast 20 iterations the mask has not left its start
    "rise": {"n_masks": 400},  # 48 masks (fast) is noise
}
"""Settings over the ``fast`` ones for the pictures, each written under its tile."""

REPORT_METHODS = "gradcam,gradcam++,ig"
"""What the report screenshot evaluates (``faithmap evaluate``'s default set) on three sample photos."""


@dataclass
class Tile:
    """One method's map over the photo, with its caption."""

    method: str
    family: str
    image: np.ndarray
    caption: str


def method_settings(name: str) -> dict[str, Any]:
    """The settings a method is drawn with: its ``fast`` settings, then :data:`GALLERY_SETTINGS`."""
    spec = METHODS[name]
    return {**spec.fast, **GALLERY_SETTINGS.get(spec.name, {})}


def _caption(exp: Explanation, settings: dict[str, Any]) -> str:
    grid = "x".join(str(v) for v in exp.saliency.shape[-2:])
    opts = ", ".join(f"{k}={v}" for k, v in settings.items())
    warn = " (empty map)" if exp.warnings else ""
    return f"{exp.method}{warn}\n{grid} map, {exp.counts.get('images', 0)} images" + (f"\n{opts}" if opts else "")


def tiles(methods: Sequence[str], photo: str = PHOTO, model=None) -> list[Tile]:
    """Each method's map of ``photo`` over it (the model's top-1 class as the target)."""
    model = model if model is not None else load()
    img = load_sample(photo)
    x = model.preprocess([img])
    pixels = model.to_pixels(x)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    out = []
    for name in methods:
        spec = METHODS[name]
        settings = method_settings(name)
        exp = explain(model, x, spec.name, **settings)
        out.append(Tile(spec.name, spec.family, overlay(pixels, exp.saliency[0]), _caption(exp, settings)))
    return out


def draw_tiles(items: Sequence[Tile], columns: int, title: str = ""):
    """The tiles on a grid of ``columns``, each captioned; a :class:`faithmap.viz.Picture`."""
    rows = max(1, math.ceil(len(items) / columns))
    fig = new_figure((2.3 * columns, 2.75 * rows + (0.3 if title else 0)), dpi=90)
    axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False))
    for ax in axes.flat:
        ax.axis("off")
    for ax, t in zip(axes.flat, items):
        ax.imshow(t.image)
        ax.set_title(t.caption, fontsize=7.5, loc="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _save(fig, path: str) -> None:
    plain_text(fig)
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=fig.dpi, bbox_inches="tight")


def chromium() -> str | None:
    """The headless browser of the report screenshot (Debian's ``chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: str, png: str, width: int = 1200, height: int = 1500) -> bool:
    """Render ``html`` (a file) in headless chromium into ``png``; False when chromium is missing or fails."""
    exe = chromium()
    if exe is None:
        return False
    with tempfile.TemporaryDirectory() as profile:
        shot = os.path.join(profile, "shot.png")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
               f"--screenshot={shot}", "file://" + os.path.abspath(html)]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if done.returncode != 0 or not os.path.exists(shot):
            return False
        with open(shot, "rb") as fh:
            write_atomic(png, fh.read())
    return True


def summary_figure(result) -> Any:
    """The report's summary table as a matplotlib picture (where no browser renders the page)."""
    rows = result.summary().to_pylist()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["metric"]): f"{r['mean']:.3f}" for r in rows}
    fig = new_figure((1.6 + 1.3 * len(metrics), 0.5 + 0.35 * len(methods)), dpi=100)
    ax = fig.subplots()
    ax.axis("off")
    ax.table(cellText=[[cell.get((m, k), "-") for k in metrics] for m in methods], rowLabels=methods,
             colLabels=metrics, loc="center")
    ax.set_title("faithmap evaluate: summary (means over images)", fontsize=10)
    return fig


def report_picture(out: str, png: str, photos: Sequence[str] = ("coffee", "chelsea", "rocket")) -> str:
    """Evaluate :data:`REPORT_METHODS` on ``photos`` into ``out`` and picture the report; says how."""
    result = evaluate(methods=REPORT_METHODS, images=[f"sample:{p}" for p in photos], out=out, progress=False,
                      save_maps=len(photos))
    if screenshot(result.files["report"], png):
        return "headless chromium"
    _save(summary_figure(result), png)
    return "matplotlib (chromium not found)"


def write_gallery(out: str, methods: Sequence[str] | None = None, photo: str = PHOTO, report: bool = True) -> list[str]:
    """Every picture of the documentation into the folder ``out`` (see the module docstring); the
    files written. ``methods``: a subset (default: every registered method)."""
    names = [METHODS.canonical(m) for m in methods] if methods else [s.name for s in METHODS]
    if not names:
        raise FaithmapError("no methods to draw")
    with output_dir(out):
        model = load()
        made = tiles(names, photo, model)
        which = "every method" if len(names) == len(METHODS) else f"{len(names)} methods"
        files = {"gallery.png": draw_tiles(made, min(6, len(made)), f"{which} on sample:{photo} (fast settings)")}
        strip = [t for name in STRIP for t in made if t.method == name] or made
        files["strip.png"] = draw_tiles(strip, len(strip))
        for family in dict.fromkeys(t.family for t in made):
            group = [t for t in made if t.family == family]
            files[f"family_{family}.png"] = draw_tiles(group, min(6, len(group)))
        files["quickstart.png"] = show(explain(model, load_sample(photo)), curves=True)
        written = []
        for name, fig in files.items():
            _save(fig, os.path.join(out, name))
            written.append(os.path.join(out, name))
        if report:
            with tempfile.TemporaryDirectory() as tmp:
                report_picture(os.path.join(tmp, "eval"), os.path.join(out, "report.png"))
            written.append(os.path.join(out, "report.png"))
    return written
