"""Step 4's page: ``audit.html``, what a person reads: per finding, exemplar images with the region
outlined and their maps, the class mean maps and the intervention's numbers; then every candidate
(the entries of ``audit.json``) in one table.

Pictures are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no backend switch: the
caller's matplotlib state is left alone) and inlined as PNG, so the page is one file. The runner
imports this module when it writes the page, so ``import faithmap`` does not load matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..evaluation.report import CSS, html_table
from .candidates import Candidate
from .verify import QUANTITIES

DRAWN = 12
"""Findings drawn on the page (each picture costs matplotlib about half a second); all are in the table."""
_LABELS = {"probability_drop": "probability drop", "accuracy_drop": "accuracy drop", "changed": "prediction changed"}


# ----------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------
def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _heat(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map (h, w), upsampled to ``size`` and min-max normalised, through the jet colour map: (H, W, 3)."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].clamp_min(0).numpy()
    lo, hi = float(t.min()), float(t.max())
    t = (t - lo) / (hi - lo) if hi > lo else np.zeros_like(t)
    return matplotlib.colormaps["jet"](t)[..., :3]


def _outline(ax, box: Sequence[float], w: int, h: int) -> None:
    ax.add_patch(Rectangle((box[0] * w - 0.5, box[1] * h - 0.5), (box[2] - box[0]) * w, (box[3] - box[1]) * h,
                           fill=False, edgecolor="magenta", linewidth=2))


def _plain(ax, title: str) -> None:
    ax.set_title(title, fontsize=8)
    ax.title.set_parse_math(False)
    ax.axis("off")


def finding_figure(c: Candidate, maps: dict[str, np.ndarray], means: dict[int, np.ndarray], clf) -> Figure:
    """One finding's picture: its exemplars with the removed box outlined (top), their maps (middle), and
    the mean normalised maps of its classes (bottom, at most 6) with its region outlined."""
    ex = c.result.exemplars
    groups = [g for g, _ in sorted(c.classes.items(), key=lambda kv: (-kv[1], kv[0])) if g in means][:6]
    cols = max(len(ex), len(groups), 1)
    rows = 3 if ex else 1
    fig = Figure(figsize=(1.9 * cols, 2.1 * rows), dpi=90)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.45)
    for k, e in enumerate(ex):
        h, w = e.thumbnail.shape[:2]
        top, mid = fig.add_subplot(rows, cols, k + 1), fig.add_subplot(rows, cols, cols + k + 1)
        top.imshow(e.thumbnail)
        _outline(top, e.box, w, h)
        _plain(top, f"{e.image}\np {e.prob:.2f} -> {e.removed_prob:.2f}")
        img = e.thumbnail.astype(np.float32) / 255
        mid.imshow(0.5 * img + 0.5 * _heat(maps[e.image], (h, w)) if e.image in maps else img)
        _outline(mid, e.box, w, h)
        _plain(mid, "its map")
    box = c.region or c.typical_box()
    for k, g in enumerate(groups):
        ax = fig.add_subplot(rows, cols, (rows - 1) * cols + k + 1)
        ax.imshow(_heat(means[g], (128, 128)))
        if box:
            _outline(ax, box, 128, 128)
        _plain(ax, f"mean map: {clf.class_name(g)}")
    return fig


# ----------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------
def _fmt(e: dict) -> str:
    return f"{e['mean']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]"


def _where(d: dict) -> str:
    box = d.get("region") or d.get("median_box")
    return "–" if box is None else "[" + ", ".join(f"{v:.2f}" for v in box) + "]" + (
        "" if d["kind"] == "fixed-place" else " (median)")


def _classes(d: dict) -> str:
    return ", ".join(f"{c['name']} ({c['images']})" for c in d["classes"][:4]) + (" ..." if len(d["classes"]) > 4
                                                                                   else "")


def table(entries: list[dict]) -> list[list[str]]:
    rows = [["#", "kind", "classes (images)", "region", "verified", "removed: probability drop",
             "random region", "effect (removed - random)", "accuracy drop effect", "changed", "finding"]]
    for k, d in enumerate(entries, 1):
        rows.append([str(k), d["kind"], _classes(d), _where(d), str(d["verified_images"]),
                     _fmt(d["removed"]["probability_drop"]), _fmt(d["random_region"]["probability_drop"]),
                     _fmt(d["effect"]["probability_drop"]), _fmt(d["effect"]["accuracy_drop"]),
                     f"{d['removed']['changed']['mean']:.2f}", "yes" if d["finding"] else "no"])
    return rows


def _finding(k: int, d: dict, c: Candidate, maps: dict, means: dict, clf, draw: bool) -> str:
    parts = [f"<h2>Finding {k}: {html.escape(d['kind'])}, {html.escape(_classes(d))}</h2>",
             f"<p>{d['images']} images ({d['verified_images']} verified); region {html.escape(_where(d))}"
             + (f"; {d['share']:.0%} of the group's salient patches fall here (a place this size holds "
                f"{d['expected_share']:.0%} when they fall anywhere)" if d["kind"] == "fixed-place" else "") + ".</p>"]
    rows = [["", "removed", "random region", "effect"]]
    for q in QUANTITIES:
        rows.append([_LABELS[q], _fmt(d["removed"][q]), _fmt(d["random_region"][q]), _fmt(d["effect"][q])])
    parts.append(html_table(rows))
    if draw:
        parts.append(f"<img class='fig' alt='exemplars, their maps and the class mean maps' "
                     f"src='data:image/png;base64,{_png(finding_figure(c, maps, means, clf))}'>")
    return "\n".join(parts)


def page(title: str, facts: list[tuple[str, str]], entries: list[dict], cands: list[Candidate],
         maps: dict[str, np.ndarray], means: dict[int, np.ndarray], clf) -> str:
    """The self-contained HTML page of an audit (``entries`` and ``cands`` in the same order)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<table class='facts'>" + "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
                                               for a, b in facts) + "</table>",
             "<p class='note'>A candidate is where the maps concentrate (fixed-place: the same place in many images "
             "of a class; content: one kind of patch, clustered in the model's own features). It is a "
             "<b>finding</b> only when removing it (blurred, as the deletion metric does) lowers the target's "
             "probability more than removing random regions of the same size in the same images: the 95% "
             "bootstrap interval of the difference lies above 0. Values are means with 95% intervals.</p>"]
    found = [(d, c) for d, c in zip(entries, cands) if d["finding"]]
    if not found:
        parts.append("<h2>No findings</h2><p>No candidate hurt the model more than random regions of its size.</p>")
    for k, (d, c) in enumerate(found, 1):
        parts.append(_finding(k, d, c, maps, means, clf, draw=k <= DRAWN))
    if len(found) > DRAWN:
        parts.append(f"<p class='note'>Pictures are drawn for the first {DRAWN} findings.</p>")
    parts.append("<h2>Every candidate</h2><div class='scroll'>" + html_table(table(entries)) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
