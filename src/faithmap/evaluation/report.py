"""The report of an evaluation: a Markdown summary, a CSV summary, pictures, and one self-contained HTML page.

Everything is rebuilt from the output directory alone (``run.json``, the Parquet parts, ``images.json``,
``maps/``, ``images/``), so a merged or resumed run reports the same way as an uninterrupted one.
The numbers come from one streaming pass over the parts (:func:`faithmap.evaluation.stats.aggregate`);
only the rows of the per-image table (the first images) are read as rows.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from ..core.io import write_atomic
from ..data import safe_name as _safe
from ..metrics.pointing import most_salient_point
from ..registry import METRICS
from . import stats as _stats
from .legacy import open_results
from .stats import CI_NOTE, SUMMARY_COLUMNS, Aggregates, Cost, MetricSummary, grid_cells, summary_records
from .store import load_images_info, order_table

MAX_GRID_ROWS = 12
MAX_GRID_COLUMNS = 10
MAX_HTML_ROWS = 2000


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


def _arrow(metric: str, directions: dict | None = None) -> str:
    """The metric's arrow from its :class:`MetricSpec`; for a metric no longer registered, from the results."""
    if metric in METRICS:
        return METRICS.get(metric).arrow
    if directions and metric in directions:
        return "↑" if directions[metric] else "↓"
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


def summary_table(run: dict, summaries: list[MetricSummary], metrics: list[str], markdown: bool = True,
                  directions: dict | None = None) -> list[list[str]]:
    """Rows of the summary table: grid, method, one 'mean ± ci' cell per metric, n."""
    best = _best(summaries)
    head = ["grid", "method"] + [f"{m} {_arrow(m, directions)}" for m in metrics] + ["n"]
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
        label = _md(_label(run, k[0])) if markdown else html.escape(_plain_label(run, k[0]))
        n = max(s.n_images for s in g.values())
        out.append([first.grid, label] + cells + [str(n)])
    return out


def _md(text: str) -> str:
    """Text for a Markdown table cell: pipes and line breaks cannot end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def correct_table(run: dict, pairs, metrics: list[str]) -> list[list[str]]:
    """Per method and metric: the mean over correctly and over wrongly predicted images (needs labels)."""
    out = [["grid", "method", "metric", "correct: mean ± ci", "n", "wrong: mean ± ci", "n"]]
    for ok, bad in pairs:
        out.append([ok.grid, _plain_label(run, ok.method), ok.metric, fmt_interval(ok), str(ok.n_images),
                    fmt_interval(bad), str(bad.n_images)])
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


def category_tables(run: dict, summaries: list[MetricSummary], directions: dict | None = None
                    ) -> dict[str, list[list[str]]]:
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
        rows.append([f"mean over categories {_arrow(metric, directions)}"] + [fmt_interval(s) for s in ss])
        out[metric] = rows
    return out


def md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(str(c).replace("\n", " ") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def html_table(rows: list[list[str]], cls: str = "", escape: bool = True) -> str:
    esc = html.escape if escape else (lambda s: s)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ----------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------
def _curve_figures(out: str, run: dict, mc: list) -> list[tuple[str, str]]:
    from ..viz.evaluate import save_mean_curves  # lazy: matplotlib (over a second to import), only for the report's figures

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
    from ..viz.evaluate import save_heatmap_grid  # lazy: matplotlib (over a second to import), only for the report's figures

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
def _per_image(src, run: dict, metrics: list[str]) -> tuple[list[list[str]], int]:
    """The per-image table of the first images in run order (at most MAX_HTML_ROWS rows), and the row count in all."""
    groups = max(1, len(run.get("methods", [])) * max(1, len(run.get("resolutions", []))))
    take = max(1, MAX_HTML_ROWS // groups + 1)
    names = run.get("images", [])[:take]
    cols = ["image", "target", "target_name", "method", "resolution", "grid", "metric", "value", "task_row"]
    t = src.table(cols, filter=pc.field("image").isin(pa.array(names, pa.string())) if names else None, images=names)
    t = order_table(t, run)
    seen: dict[tuple, dict] = {}
    for r in t.to_pylist():
        seen.setdefault((r["image"], r["target_name"], _plain_label(run, r["method"]), r["grid"]), {})[r["metric"]] = r["value"]
    per = [["image", "target", "method", "grid"] + metrics]
    for k, vals in list(seen.items())[:MAX_HTML_ROWS]:
        per.append(list(k) + [_fmt_value(vals.get(m)) for m in metrics])
    return per, len(seen)


def _facts(run: dict, agg: Aggregates, metrics: list[str]) -> list[tuple[str, str]]:
    """The run's settings as (name, text) lines at the top of the report."""
    s, dirs = run.get("settings", {}), agg.directions
    facts = [
        ("model", f"{s.get('model')} (input {s.get('input_size')} px, {s.get('resize')})"),
        ("images", f"{len(agg.images)} evaluated of {len(run.get('images', []))}"),
        ("methods", ", ".join(_plain_label(run, m) for m in run["methods"])),
        ("resolutions (mask methods)", ", ".join(f"{r}x{r}" for r in run["resolutions"]) or "–"),
        ("metrics", ", ".join(f"{m} {_arrow(m, dirs)}" for m in metrics)),
        ("target", s.get("target")), ("seed", s.get("seed")), ("fast settings", "yes" if s.get("fast") else "no"),
        ("batch size (images per forward pass; images per task)", f"{s.get('batch_size', '–')}; {s.get('batch_images', '–')}"),
        ("annotations", (s.get("annotations") or {}).get("source", "none")),
        ("faithmap", f"{run.get('faithmap')}; run created {run.get('created')}, last started {run.get('updated', '')}"),
    ]
    if run.get("skipped_methods"):
        facts.append(("skipped (not registered)", ", ".join(map(str, run["skipped_methods"]))))
    return facts


def _markdown(title: str, facts, sm, cats: dict, cor, ct) -> str:
    md = [f"# {title}", ""]
    md += [f"- **{k}**: {_md(v)}" for k, v in facts] + [""]
    md += ["## Summary", "", "Mean ± half-width of the 95% confidence interval; ↑ higher is better, ↓ lower is "
           "better; bold marks the best mean among maps of the same grid.", "", md_table(sm), "", CI_NOTE, ""]
    for m, t in cats.items():
        md += [f"## {m}: accuracy per category (hits/total)", "", md_table([[_md(c) for c in r] for r in t]), ""]
    if cor:
        md += ["## Correct and wrong predictions", "", "The same means over the images the model classifies "
               "correctly (prediction = label) and over those it gets wrong.", "", md_table(cor), ""]
    md += ["## Cost", "", "Seconds and images sent through the model, per image; metrics that share a computation "
           "(deletion, insertion and overall) count it once, under the first of them.", "", md_table(ct), ""]
    return "\n".join(md)


def _csv_cell(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


def _summary_csv(summaries: list[MetricSummary]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for rec in summary_records(summaries):
        w.writerow([_csv_cell(rec[c]) for c in SUMMARY_COLUMNS])
    return buf.getvalue().encode()


def write_report(out: str) -> tuple[dict[str, str], str]:
    """Write ``summary.md``, ``summary.csv``, the PNGs and ``report.html`` into ``out``; return (files, markdown)."""
    run, src = open_results(out)
    res_order = list(run["resolutions"]) + ["native"]
    cat_metrics = [m for m in METRICS.names() if METRICS.get(m).aggregate == "category_mean"]
    agg = _stats.aggregate(src.batches(_stats.COLUMNS), categories=cat_metrics)
    present = {k[3] for k in agg.costs}
    metrics = [m for m in run.get("settings", {}).get("metrics", run.get("metrics", [])) if m in present]
    metrics += sorted(present - set(metrics))
    aggregates = {m: METRICS.get(m).aggregate if m in METRICS else "mean" for m in metrics}
    summaries = agg.summaries(run["methods"], res_order, metrics, aggregates)
    pairs = agg.correct_split(run["methods"], res_order, metrics)
    mc = agg.mean_curves(run["methods"], res_order)
    curve_pngs = _curve_figures(out, run, mc) if mc else []
    grid_pngs = _grid_figures(out, run, load_images_info(out), summaries)
    files = {f"curves_{tag}": p for tag, p in curve_pngs} | {f"grid_{tag}": p for tag, p in grid_pngs}

    dirs = agg.directions
    title = f"faithmap evaluation{' — ' + str(run['preset']) if run.get('preset') else ''}"
    facts = _facts(run, agg, metrics)
    ct = cost_table(run, agg.cost_list(run["methods"], res_order))
    cats = category_tables(run, summaries, dirs)
    cor = correct_table(run, pairs, metrics) if pairs else None
    markdown = _markdown(title, facts, summary_table(run, summaries, metrics, directions=dirs), cats, cor, ct)
    write_atomic(os.path.join(out, "summary.md"), markdown.encode())
    files["summary_md"] = os.path.join(out, "summary.md")
    write_atomic(os.path.join(out, "summary.csv"), _summary_csv(summaries))
    files["summary_csv"] = os.path.join(out, "summary.csv")

    per, n_rows = _per_image(src, run, metrics)
    n_rows = max(n_rows, agg.rows // max(1, len(metrics)))
    page = _html(title, facts, run, summaries, metrics, cats, ct, curve_pngs, grid_pngs, per, n_rows, cor, dirs)
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


def _html(title, facts, run, summaries, metrics, cats, ct, curve_pngs, grid_pngs, per, n_rows, cor, dirs) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts.append("<table class='facts'>" + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts) + "</table>")
    parts.append("<h2 id='summary'>Summary</h2><p class='note'>Mean ± half-width of the 95% confidence interval; "
                 "↑ higher is better, ↓ lower is better; <b>bold</b> marks the best mean among maps of the same grid.</p>")
    parts.append(f"<div class='scroll'>{html_table(summary_table(run, summaries, metrics, markdown=False, directions=dirs), 'summary', escape=False)}</div>")
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
    if cor:
        parts.append("<h2 id='correct'>Correct and wrong predictions</h2><p class='note'>The same means over the "
                     "images the model classifies correctly (prediction = label) and over those it gets wrong.</p>"
                     f"<div class='scroll'>{html_table(cor, 'correct')}</div>")
    parts.append("<h2 id='cost'>Cost</h2><p class='note'>Seconds and images sent through the model, per image; metrics "
                 "that share a computation count it once, under the first of them.</p>")
    parts.append(f"<div class='scroll'>{html_table(ct, 'cost')}</div>")
    shown = (f"{len(per) - 1} rows" if n_rows <= MAX_HTML_ROWS
             else f"the first {len(per) - 1} rows; all are in the Parquet parts (and results.csv with --csv)")
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
