"""The report of an evaluation: a Markdown summary, a CSV summary, pictures, and one self-contained HTML page.

Everything is rebuilt from the output directory alone (``run.json``, ``images.json``,
``results.csv``, ``curves.jsonl``, ``maps/``, ``images/``), so a merged or resumed run reports the
same way as an uninterrupted one.
"""

from __future__ import annotations

import base64
import csv
import glob
import html
import io
import json
import math
import os
from typing import Sequence

import numpy as np

from ..registry import METRICS
from .stats import CI_NOTE, Cost, MetricSummary, costs, grid_cells, mean_curves, summarize
from ..core.io import write_atomic
from .store import read_curves, read_rows

MAX_GRID_ROWS = 12
MAX_GRID_COLUMNS = 10
MAX_HTML_ROWS = 2000


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def load_output(out: str) -> tuple[dict, dict, list[dict[str, str]], list[dict]]:
    """(run, images, rows, curves) of an output directory (``results.csv``, else its shard files)."""
    from ..errors import FaithmapError

    run_path = os.path.join(out, "run.json")
    if not os.path.exists(run_path):
        raise FaithmapError(f"{out} holds no run.json (not a faithmap evaluate output)")
    with open(run_path) as fh:
        run = json.load(fh)
    images = {}
    if os.path.exists(os.path.join(out, "images.json")):
        with open(os.path.join(out, "images.json")) as fh:
            images = json.load(fh)
    main = os.path.join(out, "results.csv")
    paths = [main] if os.path.exists(main) else sorted(glob.glob(os.path.join(out, "results.shard-*.csv")))
    rows, curves = [], []
    for p in paths:
        r, _ = read_rows(p)
        rows += r
        base = os.path.basename(p)
        curves += read_curves(os.path.join(out, "curves" + base[len("results"):-len(".csv")] + ".jsonl"),
                              {x["key"] for x in r})[0]
    return run, images, rows, curves


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------
def _decimals(v: float) -> int:
    return 1 if math.isfinite(v) and abs(v) >= 10 else 3


def fmt_interval(s: MetricSummary) -> str:
    m, h = s.interval.mean, s.interval.half
    if not math.isfinite(m):
        return "–"
    d = _decimals(m)
    return f"{m:.{d}f} ± {h:.{d}f}" if math.isfinite(h) else f"{m:.{d}f}"


def _label(run: dict, method: str) -> str:
    lab = run.get("labels", {}).get(method)
    return f"{lab} (`{method}`)" if lab and lab.lower() != method else method


def _plain_label(run: dict, method: str) -> str:
    return run.get("labels", {}).get(method) or method


_ROW_DIRECTIONS: dict[str, bool] = {}


def _arrow(metric: str) -> str:
    """The metric's arrow from its :class:`MetricSpec`; for a metric no longer registered, from the results."""
    if metric in METRICS:
        return METRICS.get(metric).arrow
    if metric in _ROW_DIRECTIONS:
        return "↑" if _ROW_DIRECTIONS[metric] else "↓"
    return ""


def _best(summaries: Sequence[MetricSummary]) -> set[tuple[str, str, str]]:
    """(method, resolution, metric) of the best mean per grid and metric (when two or more compete)."""
    best = set()
    by: dict[tuple[str, str], list[MetricSummary]] = {}
    for s in summaries:
        by.setdefault((s.grid, s.metric), []).append(s)
    for group in by.values():
        vals = [s for s in group if math.isfinite(s.interval.mean)]
        if len(vals) < 2:
            continue
        pick = max if vals[0].higher_is_better else min
        top = pick(s.interval.mean for s in vals)
        best |= {(s.method, s.resolution, s.metric) for s in vals if s.interval.mean == top}
    return best


def summary_table(run: dict, summaries: list[MetricSummary], metrics: list[str], markdown: bool = True) -> list[list[str]]:
    """Rows of the summary table: grid, method, one 'mean ± ci' cell per metric, n."""
    best = _best(summaries)
    head = ["grid", "method"] + [f"{m} {_arrow(m)}" for m in metrics] + ["n"]
    out = [head]
    groups: dict[tuple[str, str], dict[str, MetricSummary]] = {}
    order: list[tuple[str, str]] = []
    for s in summaries:
        k = (s.method, s.resolution)
        if k not in groups:
            groups[k] = {}
            order.append(k)
        groups[k][s.metric] = s
    for k in order:
        g = groups[k]
        first = next(iter(g.values()))
        cells = []
        for m in metrics:
            s = g.get(m)
            if s is None:
                cells.append("–")
                continue
            text = fmt_interval(s)
            if (s.method, s.resolution, m) in best:
                text = f"**{text}**" if markdown else f"<b>{html.escape(text)}</b>"
            elif not markdown:
                text = html.escape(text)
            cells.append(text)
        label = _label(run, k[0]) if markdown else html.escape(_plain_label(run, k[0]))
        n = max(s.n_images for s in g.values())
        out.append([first.grid, label] + cells + [str(n)])
    return out


def cost_table(run: dict, cs: list[Cost]) -> list[list[str]]:
    head = ["grid", "method", "images", "explain s/image", "explain model images/image (with gradient)",
            "metrics s/image", "metrics model images/image", "by metric (model images/image)"]
    out = [head]
    for c in cs:
        by = ", ".join(f"{m} {v:g}" for m, v in c.metric_images.items() if v)
        out.append([c.grid, _plain_label(run, c.method), str(c.n), f"{c.explain_seconds:.2f}",
                    f"{c.explain_images:g} ({c.explain_grad_images:g})", f"{c.total_metric_seconds:.2f}",
                    f"{c.total_metric_images:g}", by or "–"])
    return out


def category_tables(run: dict, summaries: list[MetricSummary]) -> dict[str, list[list[str]]]:
    """Per metric pooled by category: categories down, methods across, cells 'hits/total'; then the mean."""
    out = {}
    for metric in dict.fromkeys(s.metric for s in summaries if s.aggregate == "category_mean"):
        ss = [s for s in summaries if s.metric == metric]
        cats = list(dict.fromkeys(c.category for s in ss for c in s.categories))
        head = ["category"] + [f"{_plain_label(run, s.method)} ({s.grid})" for s in ss]
        rows = [head]
        for cat in cats:
            row = [cat]
            for s in ss:
                c = next((c for c in s.categories if c.category == cat), None)
                row.append("–" if c is None else f"{c.hits:g}/{c.total} ({c.accuracy:.2f})")
            rows.append(row)
        rows.append([f"mean over categories {_arrow(metric)}"] + [fmt_interval(s) for s in ss])
        out[metric] = rows
    return out


def md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def html_table(rows: list[list[str]], cls: str = "", escape: bool = True) -> str:
    esc = html.escape if escape else (lambda s: s)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ----------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------
def _curve_figures(out: str, run: dict, curves: list[dict]) -> list[tuple[str, str]]:
    from ..viz.evaluate import save_mean_curves

    mc = mean_curves(curves, run["methods"], list(run["resolutions"]) + ["native"])
    by_grid: dict[str, list] = {}
    for c in mc:
        by_grid.setdefault(c.grid, []).append(c)
    files = []
    for grid, group in sorted(by_grid.items(), key=lambda kv: -grid_cells(kv[0])):
        path = os.path.join(out, f"mean_curves_{grid}.png")
        n = max(c.n for c in group)
        save_mean_curves(path, [(_plain_label(run, c.method), c.fractions, c.deletion, c.insertion, c.n) for c in group],
                         f"Mean deletion and insertion curves, {grid} maps, {n} image(s)")
        files.append((grid, path))
    return files


def _grid_figures(out: str, run: dict, images: dict, summaries: list[MetricSummary]) -> list[tuple[str, str]]:
    import torch
    from PIL import Image

    from ..metrics.pointing import most_salient_point
    from ..viz.evaluate import save_heatmap_grid
    from .runner import _safe

    cols = list(dict.fromkeys((s.method, s.resolution, s.grid) for s in summaries))
    names = [n for n in run["images"] if n in images and images[n].get("thumbnail")
             and os.path.exists(os.path.join(out, images[n]["thumbnail"]))][:MAX_GRID_ROWS]
    if not names or not cols:
        return []
    if len(cols) > MAX_GRID_COLUMNS:  # one picture per grid
        sets: dict[str, list] = {}
        for c in cols:
            sets.setdefault(c[2], []).append(c)
        parts = sorted(sets.items(), key=lambda kv: -grid_cells(kv[0]))
    else:
        parts = [("all", cols)]
    files = []
    pix = {n: np.asarray(Image.open(os.path.join(out, images[n]["thumbnail"])).convert("RGB")) for n in names}
    for tag, part in parts:
        cells, points = {}, {}
        for i, n in enumerate(names):
            for j, (m, r, _) in enumerate(part):
                p = os.path.join(out, "maps", _safe(n), f"{_safe(m)}@{r}.npy")
                if os.path.exists(p):
                    sal = np.load(p)[0]
                    cells[(i, j)] = sal
                    pt = most_salient_point(torch.from_numpy(sal)[None].float(), pix[n].shape[:2])[0]
                    points[(i, j)] = (int(pt[0]), int(pt[1]))
        rows = [(n, pix[n], [r["box"] for r in images[n].get("regions", [])]) for n in names]
        labels = [f"{_plain_label(run, m)}\n{g}" for m, _, g in part]
        path = os.path.join(out, f"heatmap_grid_{tag}.png")
        save_heatmap_grid(path, rows, labels, cells, points, cell_inches=max(1.7, min(2.8, 12.0 / (len(part) + 1))))
        files.append((tag, path))
    return files


def _b64(path: str) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
def write_report(out: str) -> tuple[dict[str, str], str]:
    """Write ``summary.md``, ``summary.csv``, the PNGs and ``report.html`` into ``out``; return (files, markdown)."""
    run, images, rows, curves = load_output(out)
    metrics = [m for m in run.get("metrics", []) if any(r["metric"] == m for r in rows)]
    _ROW_DIRECTIONS.update({r["metric"]: r["higher_is_better"] == "true" for r in rows})
    res_order = list(run["resolutions"]) + ["native"]
    aggregates = {m: METRICS.get(m).aggregate if m in METRICS else "mean" for m in metrics}
    summaries = summarize(rows, run["methods"], res_order, metrics, aggregates)
    cs = costs(rows, run["methods"], res_order)
    files: dict[str, str] = {}

    curve_pngs = _curve_figures(out, run, curves) if curves else []
    grid_pngs = _grid_figures(out, run, images, summaries)
    for tag, p in curve_pngs:
        files[f"curves_{tag}"] = p
    for tag, p in grid_pngs:
        files[f"grid_{tag}"] = p

    s = run.get("settings", {})
    n_images = len({r["image"] for r in rows})
    title = f"faithmap evaluation{' — ' + run['preset'] if run.get('preset') else ''}"
    facts = [
        ("model", f"{s.get('model')} (input {s.get('input_size')} px, {s.get('resize')})"),
        ("images", f"{n_images} evaluated of {len(run.get('images', []))}"),
        ("methods", ", ".join(_plain_label(run, m) for m in run["methods"])),
        ("resolutions (mask methods)", ", ".join(f"{r}x{r}" for r in run["resolutions"]) or "–"),
        ("metrics", ", ".join(f"{m} {_arrow(m)}" for m in metrics)),
        ("target", s.get("target")), ("seed", s.get("seed")), ("fast settings", "yes" if s.get("fast") else "no"),
        ("annotations", (s.get("annotations") or {}).get("source", "none")),
        ("faithmap", f"{run.get('faithmap')}; run created {run.get('created')}, last started {run.get('updated', '')}"),
    ]
    if run.get("skipped_methods"):
        facts.append(("skipped (not registered)", ", ".join(run["skipped_methods"])))
    sm = summary_table(run, summaries, metrics)
    ct = cost_table(run, cs)
    cats = category_tables(run, summaries)

    md = [f"# {title}", ""]
    md += [f"- **{k}**: {v}" for k, v in facts] + [""]
    md += ["## Summary", "", "Mean ± half-width of the 95% confidence interval; ↑ higher is better, ↓ lower is "
           "better; bold marks the best mean among maps of the same grid.", "", md_table(sm), "", CI_NOTE, ""]
    for m, t in cats.items():
        md += [f"## {m}: accuracy per category (hits/total)", "", md_table(t), ""]
    md += ["## Cost", "", "Seconds and images sent through the model, per image; metrics that share a computation "
           "(deletion, insertion and overall) count it once, under the first of them.", "", md_table(ct), ""]
    markdown = "\n".join(md)
    write_atomic(os.path.join(out, "summary.md"), markdown.encode())
    files["summary_md"] = os.path.join(out, "summary.md")

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "resolution", "grid", "metric", "higher_is_better", "aggregate", "n", "mean", "sd",
                "ci95_low", "ci95_high", "ci95_half_width"])
    for x in summaries:
        iv = x.interval
        w.writerow([x.method, x.resolution, x.grid, x.metric, str(x.higher_is_better).lower(), x.aggregate, iv.n,
                    repr(iv.mean), repr(iv.sd), repr(iv.low), repr(iv.high), repr(iv.half)])
    write_atomic(os.path.join(out, "summary.csv"), buf.getvalue().encode())
    files["summary_csv"] = os.path.join(out, "summary.csv")

    page = _html(title, facts, run, summaries, metrics, cats, ct, curve_pngs, grid_pngs, rows)
    write_atomic(os.path.join(out, "report.html"), page.encode())
    files["report"] = os.path.join(out, "report.html")
    return files, markdown


CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#1d1d1f;padding:0 18px;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{font-size:19px;margin-top:30px;border-bottom:2px solid #e3e3e8;padding-bottom:4px}
table{border-collapse:collapse;margin:10px 0 6px;font-size:14px}
th,td{border:1px solid #d2d2d7;padding:5px 9px;text-align:right;white-space:nowrap}
th{background:#f2f2f7;text-align:center}td:first-child,td:nth-child(2){text-align:left}
tbody tr:nth-child(even){background:#fafafc}
table.facts td{text-align:left;white-space:normal;border:none;padding:2px 12px 2px 0}
table.facts td:first-child{font-weight:600;color:#555}
.note{color:#555;font-size:13px;max-width:1000px}
img.fig{max-width:100%;border:1px solid #e3e3e8;margin:8px 0}
details{margin:12px 0}summary{cursor:pointer;font-weight:600}
.scroll{overflow-x:auto}
table.cost td:last-child{white-space:normal;text-align:left;min-width:180px}
"""


def _html(title, facts, run, summaries, metrics, cats, ct, curve_pngs, grid_pngs, rows) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts.append("<table class='facts'>" + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts) + "</table>")
    parts.append("<h2 id='summary'>Summary</h2><p class='note'>Mean ± half-width of the 95% confidence interval; "
                 "↑ higher is better, ↓ lower is better; <b>bold</b> marks the best mean among maps of the same grid.</p>")
    parts.append(f"<div class='scroll'>{html_table(summary_table(run, summaries, metrics, markdown=False), 'summary', escape=False)}</div>")
    parts.append(f"<p class='note'>{html.escape(CI_NOTE)}</p>")
    for m, t in cats.items():
        parts.append(f"<h2>{html.escape(m)}: accuracy per category</h2><p class='note'>hits/total (accuracy) per "
                     f"category; the last row averages the categories.</p><div class='scroll'>{html_table(t, 'categories')}</div>")
    if curve_pngs:
        parts.append("<h2 id='curves'>Mean deletion and insertion curves</h2><p class='note'>Probability of the target as "
                     "the most salient cells are blurred (deletion) or revealed on the blurred image (insertion), "
                     "averaged over images; one panel pair per map grid.</p>")
        for grid, p in curve_pngs:
            parts.append(f"<img class='fig' alt='mean curves {html.escape(grid)}' src='data:image/png;base64,{_b64(p)}'>")
    if grid_pngs:
        parts.append("<h2 id='heatmaps'>Heatmaps</h2><p class='note'>Images down, methods across; magenta boxes are the "
                     "ground-truth regions, the cross marks each map's most salient point (the pointing game's point).</p>")
        for tag, p in grid_pngs:
            parts.append(f"<img class='fig' alt='heatmap grid {html.escape(tag)}' src='data:image/png;base64,{_b64(p)}'>")
    parts.append("<h2 id='cost'>Cost</h2><p class='note'>Seconds and images sent through the model, per image; metrics "
                 "that share a computation count it once, under the first of them.</p>")
    parts.append(f"<div class='scroll'>{html_table(ct, 'cost')}</div>")
    per = [["image", "target", "method", "grid"] + metrics]
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen.setdefault((r["image"], r["target_name"], _plain_label(run, r["method"]), r["grid"]), {})[r["metric"]] = r["value"]
    for k, vals in list(seen.items())[:MAX_HTML_ROWS]:
        per.append(list(k) + [_fmt_value(vals.get(m)) for m in metrics])
    shown = f"{len(per) - 1} rows" if len(seen) <= MAX_HTML_ROWS else f"the first {MAX_HTML_ROWS} of {len(seen)} rows; all are in results.csv"
    parts.append(f"<details><summary>Per-image results ({shown})</summary><div class='scroll'>"
                 f"{html_table(per, 'per-image')}</div></details>")
    parts.append("<script>window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);"
                 "document.body.setAttribute('data-images-loaded',i.filter(function(x){return x.complete&&x.naturalWidth>0}).length);"
                 "document.body.setAttribute('data-images-total',i.length);});</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt_value(v) -> str:
    if v is None:
        return "–"
    try:
        f = float(v)
    except ValueError:
        return str(v)
    if not math.isfinite(f):
        return "–"
    return f"{f:.{_decimals(f)}f}"
