"""The registries as text: Markdown tables kept between markers in README.md and the pages of
docs/ (``faithmap docs``; a test checks they match), and the reference page of one method or metric
(``faithmap methods NAME``, ``faithmap metrics NAME``).

A generated table sits between ``<!-- KEY:start -->`` and ``<!-- KEY:end -->``; the keys are
``methods`` (every method), ``methods:FAMILY`` (one family's), ``metrics``, ``picker`` (the
method picker: the registry joined with the measured costs of ``bench/costs.py``, the notes of
``docs/data/picker.json`` and the ground-truth leaderboard of ``faithmap truth``,
``docs/data/truth_leaderboard.json``) and ``truth_leaderboard`` (``docs/data/truth_leaderboard.md``
as written by ``faithmap truth``). Where the leaderboard files are absent, the ground truth reads
:data:`PENDING`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import FaithmapError
from .params import Param, describe
from .registry import METHODS, METRICS, MethodSpec, MetricSpec

MARKER = re.compile(r"<!-- (?P<key>[a-z0-9:_+-]+):start -->.*?<!-- (?P=key):end -->", re.S)

FAMILY_PAGES = {"mask": "mask.md", "aop": "aop.md", "cam": "cam.md", "gradient": "gradient.md", "rule": "rules.md",
                "perturbation": "perturbation.md", "region": "xrai.md", "gad": "gad.md", "baseline": "baselines.md"}
"""The page of docs/methods/ that describes each method family (a family without one is not linked)."""

PENDING = "pending (faithmap truth)"
"""The ground-truth entry until ``faithmap truth`` has written its leaderboard into docs/data/."""

DATA_DIR = os.path.join("docs", "data")
"""Where ``faithmap docs`` reads the picker's data, relative to the repository root."""


@dataclass(frozen=True)
class PickerData:
    """What the method picker adds to the registry: per method the measured cost per photo
    (``costs``: ``{"seconds", "images"}``, from ``python -m bench costs``), what it is good for and
    (``notes``: ``{"good_for"}``), how the costs were measured, and the ground-truth leaderboard
    (``truth``: per method its tier-1/tier-2 result as text; ``leaderboard``: the Markdown table;
    both None while ``faithmap truth`` has not written them)."""

    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured: str = ""
    truth: dict[str, str] | None = None
    leaderboard: str | None = None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FaithmapError(f"cannot read {path}: {exc}") from None


def load_picker_data(data_dir: str = DATA_DIR) -> PickerData:
    """The picker's data from ``data_dir`` (``method_costs.json`` and ``picker.json``; missing files: empty)."""
    costs = _read_json(os.path.join(data_dir, "method_costs.json"))
    notes = _read_json(os.path.join(data_dir, "picker.json"))
    how = ""
    if costs:
        how = (f"{costs.get('model', '')} on {', '.join(costs.get('photos', []))}, "
               f"{costs.get('machine', '')}, load average {costs.get('load_average', '?')}, {costs.get('measured', '')}")
    board = _read_json(os.path.join(data_dir, "truth_leaderboard.json"))
    md_path = os.path.join(data_dir, "truth_leaderboard.md")
    md = None
    if os.path.isfile(md_path):
        with open(md_path, encoding="utf-8") as fh:
            md = fh.read().strip()
    return PickerData(costs.get("methods", {}), notes.get("methods", {}), how,
                      truth_results(board) if board else None, md)


def _interval(entry: Any) -> str:
    """``0.62 [0.55, 0.70]`` from a tier's entry: a number, or an object with ``mean`` and a 95 %
    interval as ``ci95``/``ci`` (a pair) or ``low``/``high``."""
    if isinstance(entry, (int, float)):
        return f"{entry:.2f}"
    if not isinstance(entry, dict) or not isinstance(entry.get("mean"), (int, float)):
        return "-"
    pair = entry.get("ci95", entry.get("ci"))
    if pair is None and "low" in entry and "high" in entry:
        pair = (entry["low"], entry["high"])
    text = f"{entry['mean']:.2f}"
    if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair):
        text += f" [{pair[0]:.2f}, {pair[1]:.2f}]"
    return text


HEADLINE = "mass"
"""The truth score the picker shows when a tier's entry holds several (``faithmap truth`` writes
pointing, mass and auroc): the share of the map's mass in the evidence."""

TIER_KEYS = {1: ("tier1", "tier_1", "tier-1"), 2: ("tier2", "tier_2", "tier-2")}
"""How a leaderboard entry may name its tiers."""


def truth_results(board: Any) -> dict[str, str]:
    """Per method the picker's text of ``faithmap truth``'s leaderboard (``truth_leaderboard.json``):
    ``{"methods": {NAME: {"family", "tier1": {"mean", "ci95": [lo, hi]}, "tier2": {...}, "command",
    "date"}}}``; the methods may also be a list of such objects with a ``method`` key."""
    methods = board.get("methods", board) if isinstance(board, dict) else board
    if isinstance(methods, list):
        methods = {m.get("method"): m for m in methods if isinstance(m, dict) and m.get("method")}
    if not isinstance(methods, dict):
        raise FaithmapError("truth_leaderboard.json: expected {\"methods\": {NAME: {...}}} or a list of methods")
    out = {}
    for name, entry in methods.items():
        if not isinstance(entry, dict):
            continue
        parts = []
        for tier, keys in TIER_KEYS.items():
            value = next((entry[k] for k in keys if k in entry), None)
            if isinstance(value, dict) and "mean" not in value and HEADLINE in value:
                parts.append(f"tier {tier} {HEADLINE}: {_interval(value[HEADLINE])}")  # per-score entries
            elif value is not None:
                parts.append(f"tier {tier}: {_interval(value)}")
        out[METHODS.canonical(name) if name in METHODS else name] = "; ".join(parts) or "-"
    return out


def _link(family: str, page_dir: str | None) -> str:
    page = FAMILY_PAGES.get(family)
    if page is None or page_dir is None:
        return family
    target = os.path.relpath(os.path.join("docs", "methods", page), page_dir).replace(os.sep, "/")
    return f"[{family}]({target})"


def methods_table(family: str | None = None) -> str:
    """One row per registered method (of ``family``, or all): name, family, grid, paper, description."""
    rows = ["| method | family | map grid | source | what it does |", "|---|---|---|---|---|"]
    for s in METHODS:
        if family is not None and s.family != family:
            continue
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


def _cost(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def picker_table(data: PickerData, page_dir: str | None = None) -> str:
    """The method picker: per registered method its family (linked to its page from ``page_dir``,
    the folder of the file the table is written into, relative to the repository root), the
    measured seconds and model images per photo at its defaults, what it is good for, and its
    ground-truth result (tier-1 and tier-2 truth score means with their 95 % intervals, from
    ``faithmap truth``'s leaderboard; :data:`PENDING` while it is absent)."""
    rows = ["| method | family | s / photo | model images / photo | good for | ground truth |",
            "|---|---|--:|--:|---|---|"]
    for s in METHODS:
        cost = data.costs.get(s.name, {})
        note = data.notes.get(s.name, {})
        truth = PENDING if data.truth is None else data.truth.get(s.name, "-")
        secs = cost.get("seconds")
        rows.append(f"| `{s.name}` | {_link(s.family, page_dir)} | {_cost(secs, '.2f' if secs is not None and secs < 10 else '.0f')} "
                    f"| {_cost(cost.get('images'), '.0f')} | {note.get('good_for', '-')} | {truth} |")
    if data.measured:
        rows += ["", f"Costs at each method's defaults: {data.measured} (`python -m bench costs`)."]
    return "\n".join(rows)


def leaderboard_text(data: PickerData) -> str:
    """``faithmap truth``'s leaderboard table (``truth_leaderboard.md``), or :data:`PENDING`."""
    return data.leaderboard if data.leaderboard else f"Ground-truth leaderboard: {PENDING}."


def table(key: str, data: PickerData | None = None, page_dir: str | None = None) -> str:
    """The generated table of a marker ``key`` (see the module docstring)."""
    if key == "methods":
        return methods_table()
    if key.startswith("methods:"):
        return methods_table(key.split(":", 1)[1])
    if key == "metrics":
        return metrics_table()
    if key == "picker":
        return picker_table(data if data is not None else load_picker_data(), page_dir)
    if key == "truth_leaderboard":
        return leaderboard_text(data if data is not None else load_picker_data())
    raise FaithmapError(f"unknown table marker <!-- {key}:start -->; "
                        "known: methods, methods:FAMILY, metrics, picker, truth_leaderboard")


def render(text: str, data: PickerData | None = None, page_dir: str | None = None) -> str:
    """``text`` with every table between markers regenerated; ``page_dir``: the folder of the file
    (relative to the repository root) for the picker's links."""
    return MARKER.sub(lambda m: f"<!-- {m['key']}:start -->\n{table(m['key'], data, page_dir)}\n<!-- {m['key']}:end -->",
                      text)


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
