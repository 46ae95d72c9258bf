"""The registries as text: Markdown tables kept in README.md between markers (a test checks they
match), and the reference page of one method or metric (``faithmap methods NAME``,
``faithmap metrics NAME``)."""

from __future__ import annotations

import inspect
import re
from typing import Any, Sequence

from .params import Param, describe
from .registry import METHODS, METRICS, MethodSpec, MetricSpec

MARKERS = {"methods": ("<!-- methods:start -->", "<!-- methods:end -->"),
           "metrics": ("<!-- metrics:start -->", "<!-- metrics:end -->")}


def methods_table() -> str:
    """One row per registered method: name, family, grid, paper, description."""
    rows = ["| method | family | map grid | source | what it does |", "|---|---|---|---|---|"]
    for s in METHODS:
        names = ", ".join(f"`{n}`" for n in (s.name, *s.aliases))
        rows.append(f"| {names} | {s.family} | {s.resolution} | {s.paper or '-'} | {s.summary} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """One row per registered metric: name, direction, category, needs, description."""
    rows = ["| metric | better | category | needs | what it measures |", "|---|---|---|---|---|"]
    for s in METRICS:
        needs = ", ".join(s.needs) or "-"
        better = "higher ↑" if s.higher_is_better else "lower ↓"
        rows.append(f"| `{s.name}` | {better} | {s.category} | {needs} | {s.summary} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with the tables between the markers regenerated."""
    for key, table in (("methods", methods_table()), ("metrics", metrics_table())):
        start, end = MARKERS[key]
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda m: f"{start}\n{table}\n{end}", text)
    return text


# ----------------------------------------------------------------------------------------------
# the page of one method or metric
# ----------------------------------------------------------------------------------------------
GRIDS = {"mask": "a mask grid of resolution x resolution cells (resolution=)",
         "input": "the input's pixels", "layer": "the grid of a layer's activations (layer=)"}
NEEDS = {"explain": "re-explains perturbed inputs with the method being scored",
         "masks": "ground-truth region masks per image", "boxes": "ground-truth boxes per image"}


def _value(v: Any) -> str:
    return "None" if v is None else repr(v) if isinstance(v, str) else str(v)


def param_table(params: Sequence[Param], indent: str = "  ") -> list[str]:
    """One aligned line per parameter: name, type, range, default, help."""
    rows = [(p.name, p.type_text or "-", str(p.range) if p.range is not None else "-", _value(p.default), p.help)
            for p in params]
    if not rows:
        return [f"{indent}(none)"]
    head = ("name", "type", "range", "default", "")
    widths = [max(len(r[i]) for r in (*rows, head)) for i in range(4)]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]).rstrip()
            for r in (head, *rows)]


def _example(spec: MethodSpec) -> str:
    cmd = f"faithmap explain sample:coffee --method {spec.name}"
    if spec.fast:
        key, value = next(iter(spec.fast.items()))
        return f"{cmd} --param {key}={_value(value)}"
    return cmd


def method_page(spec: MethodSpec) -> str:
    """``faithmap methods NAME``: summary, family, map grid, paper, every parameter, fast settings, example."""
    also = f"  (also: {', '.join(spec.aliases)})" if spec.aliases else ""
    grid = GRIDS.get(spec.resolution, spec.resolution)
    if spec.resolution == "mask":
        grid += f", at least {spec.min_resolution} per side"
    fast = ", ".join(f"{k}={_value(v)}" for k, v in spec.fast.items()) or "none"
    lines = [f"{spec.name}{also}", spec.summary, "",
             f"family:    {spec.family}", f"map grid:  {grid}", f"paper:     {spec.paper or '-'}", "",
             "parameters (--param NAME=VALUE; faithmap.explain(..., NAME=VALUE)):", *param_table(spec.parameters), "",
             f"fast settings (--fast): {fast}", "", "example:", f"  {_example(spec)}"]
    return "\n".join(lines)


def metric_options(spec: MetricSpec) -> list[Param]:
    """The keyword options of a metric (what it ``needs`` is given by the runner, not an option)."""
    return describe(spec.fn, spec.bounds, skip=tuple(spec.needs))


def _takes_more(fn) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def metric_page(spec: MetricSpec) -> str:
    """``faithmap metrics NAME``: summary, direction, category, needs, paper, options, example."""
    also = f"  (also: {', '.join(spec.aliases)})" if spec.aliases else ""
    better = "higher is better ↑" if spec.higher_is_better else "lower is better ↓"
    needs = "; ".join(f"{n} ({NEEDS.get(n, '')})" for n in spec.needs) or "-"
    lines = [f"{spec.name}{also}", spec.summary, "",
             f"direction: {better}", f"category:  {spec.category}", f"needs:     {needs}",
             f"pooled:    {spec.aggregate} over images", f"paper:     {spec.paper or '-'}", "",
             f"options (--metric-param {spec.name}.NAME=VALUE):", *param_table(metric_options(spec)),
             *(["  (further keyword options go on to the function it calls)"] if _takes_more(spec.fn) else []), "",
             "example:", f"  faithmap evaluate --images samples --methods gradcam --metrics {spec.name}"]
    return "\n".join(lines)
