"""Markdown tables of the registries, kept in README.md between markers (a test checks they match)."""

from __future__ import annotations

import re

from .registry import METHODS, METRICS

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
