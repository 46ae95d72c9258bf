"""``truth.html``: one self-contained page (images inline as base64 PNG) with the leaderboards, the
proxy-truth agreement and, per scenario, its gates and example images with the evidence outlined
beside every method's map.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (no ``matplotlib.use``, no pyplot
state), so drawing never changes the user's process.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..core.io import write_text
from ..evaluation.report import CSS, html_table
from ..registry import METHODS
from .proxies import PROXIES, higher_is_better
from .scores import HIGHER_IS_BETTER, SCORES, TIER0_SCORES, UPSAMPLING

REGION_STYLE = {"evidence": ("#39ff14", "solid"), "distractors": ("#ff9f1a", "dashed"), "watermark": ("#00e5ff", "dashed"),
                "object": ("#ff4df0", "dotted"), "pattern": ("#ffffff", "dotted")}
COLUMNS_PER_ROW = 8


def fmt(entry: dict | None, digits: int = 3) -> str:
    """``mean [low, high]`` of a summary entry ('-' when missing or NaN)."""
    if not entry or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "-"
    lo, hi = entry.get("low", math.nan), entry.get("high", math.nan)
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{entry['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{entry['mean']:.{digits}f}"


def truth_metrics(tier: int) -> list[str]:
    return list(TIER0_SCORES + ("pointing", "auroc")) if tier == 0 else list(SCORES)


def order(board: dict, tier: int) -> list[str]:
    """Methods best first: tier 0 by outside mass (ascending), tiers 1-2 by evidence mass (descending); NaN last."""
    key = "outside" if tier == 0 else "mass"
    sign = -1 if HIGHER_IS_BETTER[key] else 1

    def rank(m):
        v = board[m].get(key, {}).get("mean", math.nan)
        return (0, sign * v) if v is not None and math.isfinite(v) else (1, 0.0)

    return sorted(board, key=rank)


def leaderboard_rows(board: dict, tier: int) -> list[list[str]]:
    """The leaderboard of one tier or scenario as table rows (header first)."""
    metrics = truth_metrics(tier)
    arrow = lambda m: "↑" if HIGHER_IS_BETTER[m] else "↓"  # noqa: E731
    rows = [["method", "family", *[f"{m} {arrow(m)}" for m in metrics], "empty maps", "seconds / image",
             "model images / image"]]
    for m in order(board, tier):
        e = board[m]
        fam = METHODS.get(m).family if m in METHODS else "?"
        empty = e.get("mass", {}).get("empty", 0)
        sec = e.get("seconds", {}).get("mean", math.nan)
        imgs = e.get("model_images", {}).get("mean", math.nan)
        rows.append([m, fam, *[fmt(e.get(x)) for x in metrics], str(empty),
                     f"{sec:.3f}" if math.isfinite(sec) else "-", f"{imgs:.0f}" if math.isfinite(imgs) else "-"])
    return rows


def agreement_rows(items: list[dict], tier: int) -> list[list[str]]:
    """Proxy x truth agreement (Spearman across methods, signed: > 0 agrees) with intervals."""
    truths = truth_metrics(tier)
    rows = [["proxy", *truths]]
    by = {(a["proxy"], a["truth"]): a for a in items}
    for p in PROXIES:
        cells = []
        for t in truths:
            a = by.get((p, t))
            cells.append(fmt({"mean": a["agreement"], "low": a["agreement_low"], "high": a["agreement_high"]}, 2)
                         if a else "-")
        rows.append([f"{p} {'↑' if higher_is_better(p) else '↓'}", *cells])
    return rows


def gate_rows(records) -> list[list[str]]:
    rows = [["model seed", "gate", "value", "needs", "passed", "what was done"]]
    for r in records:
        for g in r.gates:
            rows.append([str(r.model_seed), g.name, f"{g.value:.4g}", f"{g.op} {g.threshold:g}",
                         "yes" if g.passed else "NO", g.detail])
    return rows


def use_line(rec) -> str:
    """What a trained model was measured to use: ``seed 0: object 0.91, watermark 0.35 (used: ...)``."""
    uses = rec.info.get("uses", {})
    used = rec.info.get("used")
    tail = f" (used: {', '.join(used) or 'none'})" if used is not None else ""
    return f"seed {rec.model_seed}: " + ", ".join(f"{k} {float(v):.2f}" for k, v in uses.items()) + tail


# ----------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------
def _outline(ax, regions: dict, i: int) -> None:
    for name, masks in regions.items():
        m = np.asarray(masks[i], dtype=np.float64)
        if 0 < m.sum() < m.size:
            color, style = REGION_STYLE.get(name, ("#ffffff", "dotted"))
            ax.contour(m, levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)


def example_png(rec, methods: list[str], board: dict, i: int = 0) -> bytes:
    """PNG of example image ``i`` of ``rec`` (evidence outlined) beside every method's map (its
    non-negative part over its maximum, at input size, the evidence outlined on it; the title gives
    that map's score)."""
    ex = rec.examples
    maps = [m for m in methods if m in ex["maps"]]
    n = 1 + len(maps)
    cols = min(COLUMNS_PER_ROW, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.45 * cols, 1.62 * rows), dpi=90)
    img = np.clip(np.transpose(ex["pixels"][i], (1, 2, 0)), 0, 1)
    key = "outside" if rec.tier == 0 else "mass"
    cmap = colormaps["inferno"]
    for j in range(rows * cols):
        ax = fig.add_subplot(rows, cols, j + 1)
        ax.set_axis_off()
        if j >= n:
            continue
        if j == 0:
            ax.imshow(img, interpolation="nearest")
            ax.set_title("input", fontsize=7)
        else:
            s = np.maximum(ex["maps"][maps[j - 1]][i].astype(np.float64), 0)  # what the scores read
            hi = float(s.max())
            ax.imshow(cmap(s / hi if hi > 0 else s), interpolation="nearest")
            v = rec.scores[maps[j - 1]].get(key, [math.nan] * (i + 1))[i]
            ax.set_title(f"{maps[j - 1]}\n{key} {v:.2f}" if math.isfinite(v) else f"{maps[j - 1]}\n(empty map)",
                         fontsize=6.5)
        _outline(ax, ex["regions"], i)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.05, hspace=0.35)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------
def _notes(summary: dict) -> str:
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary["notes"].items())
    ups = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in UPSAMPLING.items())
    return f"<ul class='note'>{items}{ups}</ul>"


def _tier_section(result, tier: int) -> list[str]:
    s = result.summary
    boards = s["scores"].get(str(tier), {})
    parts = [f"<h2 id='tier{tier}'>Tier {tier}</h2>",
             "<p class='note'>All scenarios of the tier pooled; mean [95% interval].</p>",
             f"<div class='scroll'>{html_table(leaderboard_rows(boards.get('all', {}), tier), 'summary')}</div>"]
    agree = s["agreement"].get(str(tier), {})
    if agree.get("all"):
        parts.append("<h3>Which proxies agree with the truth</h3><p class='note'>Spearman correlation across methods "
                     "between each proxy and each truth score, signed so that &gt; 0 means the proxy ranks the methods "
                     "as the truth does; 95% bootstrap interval over images.</p>")
        parts.append(f"<div class='scroll'>{html_table(agreement_rows(agree['all'], tier), 'summary')}</div>")
    recs = [r for r in result.records if r.tier == tier]
    for name in dict.fromkeys(r.name for r in recs):
        mine = [r for r in recs if r.name == name]
        parts.append(f"<h3 id='t{tier}-{html.escape(name)}'>{html.escape(name)}</h3>")
        parts.append(html_table(gate_rows(mine), "gates"))
        uses = [use_line(r) for r in mine if r.tier > 0 and r.info.get("uses")]
        if uses:
            parts.append("<p class='note'>measured use (reliance by intervention; used at &ge; 0.10): "
                         + "; ".join(html.escape(u) for u in uses) + "</p>")
        skipped = {m: why for r in mine for m, why in r.skipped.items()}
        if skipped:
            parts.append("<p class='note'>skipped: " + "; ".join(f"{html.escape(m)} ({html.escape(w)})"
                                                               for m, w in skipped.items()) + "</p>")
        refused = {k: why for r in mine for k, why in r.proxy_errors.items()}
        if refused:
            parts.append("<p class='note'>proxies that refused some maps (their scores are left out): " + "; ".join(
                f"{html.escape(k)} ({html.escape(w)})" for k, w in list(refused.items())[:10]) + "</p>")
        failed = [r for r in mine if not r.passed]
        for r in failed:
            parts.append(f"<p class='note'>{html.escape(r.failed_line())}</p>")
        if name in boards:
            parts.append(f"<details><summary>leaderboard of {html.escape(name)}</summary><div class='scroll'>"
                         f"{html_table(leaderboard_rows(boards[name], tier), 'summary')}</div></details>")
        ex = next((r for r in mine if r.examples and r.examples.get("maps")), None)
        if ex is not None:
            methods = order(boards.get(name, {}), tier) if name in boards else list(ex.examples["maps"])
            for i in range(len(ex.examples["pixels"])):
                b64 = base64.b64encode(example_png(ex, methods, boards.get(name, {}), i)).decode("ascii")
                parts.append(f"<p class='note'>model seed {ex.model_seed}, image {i}, target {ex.targets[i]}; "
                             f"green outline: the evidence</p><img alt='{html.escape(name)} image {i}' "
                             f"src='data:image/png;base64,{b64}'>")
    return parts


def page(result) -> str:
    """The whole HTML page of a :class:`~faithmap.truth.run.TruthResult`."""
    s = result.summary
    cfg = s["config"]
    title = "faithmap truth: do maps show what the model uses?"
    facts = [("tiers", ", ".join(map(str, cfg["tiers"]))), ("model seeds", ", ".join(map(str, cfg["seeds"]))),
             ("images per scenario", cfg["images_per_scenario"]), ("quick", cfg["quick"]),
             ("seconds", f"{s['seconds']:.1f}")]
    facts += [(f"tier {t}", why) for t, why in s["unavailable"].items()]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS} img{{max-width:100%}}</style></head><body><h1>{html.escape(title)}</h1>",
             "<table class='facts'>" + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                                                for k, v in facts) + "</table>", _notes(s)]
    for tier in cfg["tiers"]:
        if str(tier) in s["scores"] or any(r.tier == tier for r in result.records):
            parts += _tier_section(result, tier)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(result, path: str) -> str:
    write_text(path, page(result))
    return path


__all__ = ["agreement_rows", "example_png", "leaderboard_rows", "page", "write_html"]
