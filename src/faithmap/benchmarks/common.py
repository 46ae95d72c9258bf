"""Helpers shared by the benchmarks: image sets, timing, tables."""

from __future__ import annotations

import platform
import sys
import time
from typing import Any, Sequence

import torch

from ..core.io import write_json


def machine() -> str:
    """One line describing where the benchmark ran."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {dev}, "
            f"torch {torch.__version__}, python {sys.version.split()[0]}")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table; ``columns`` = (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key, "")
            cells.append(format(v, fmt) if isinstance(v, (int, float)) and fmt else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_row(rows: Sequence[dict[str, Any]], label_key: str, label: str = "mean") -> dict[str, Any]:
    out: dict[str, Any] = {label_key: label}
    for k in rows[0]:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        if vals and len(vals) == len(rows):
            out[k] = sum(vals) / len(vals)
    return out


def dump(path: str | None, obj: Any) -> None:
    if path:
        write_json(path, obj)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
