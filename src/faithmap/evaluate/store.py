"""Crash-safe, append-only storage of evaluation results.

``results.csv`` holds one row per image x target x method x resolution x metric. The rows of one
*task* (one image, method and resolution: every target and metric of it) are appended with a single
``write`` on a file opened with ``O_APPEND`` and made durable with ``fsync`` before the next task
starts. Every row carries its task's ``key`` and ``task_rows``, the number of rows the task wrote,
so a reader can tell a whole task from a torn one: a task counts as done only when all its rows are
present and every line ends with a newline. Opening a store drops torn lines and incomplete tasks
(rewriting the file atomically: temporary file, ``fsync``, ``os.replace``), so a process killed at
any instant, even in the middle of a write, loses at most the task it was working on.

``curves.jsonl`` holds the deletion/insertion curves of each task, one JSON line per target,
written (and fsynced) *before* the task's rows; lines of tasks that are not done are dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Iterable, Sequence

from ..core.io import write_atomic
from ..errors import FaithmapError

COLUMNS = ("image", "target", "target_name", "target_prob", "category", "method", "resolution", "grid", "metric",
           "value", "higher_is_better", "seed", "fast", "explain_seconds", "explain_images", "explain_grad_images",
           "metric_seconds", "metric_images", "key", "task_rows")
"""Columns of ``results.csv``, in order."""

TIME_COLUMNS = ("explain_seconds", "metric_seconds")
"""Columns that change from run to run (wall-clock time); everything else is reproducible."""


def task_key(image: str, method: str, resolution: str | int) -> str:
    """The key of a task: ``image|method|resolution``."""
    return f"{image}|{method}|{resolution}"


def format_value(v) -> str:
    """Exact, round-trippable text for a cell (floats by ``repr``; NaN as ``nan``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if v is None:
        return ""
    return str(v).replace("\r", " ").replace("\n", " ")


def _csv_line(values: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def append_durable(path: str, data: bytes) -> None:
    """Append ``data`` to ``path`` with O_APPEND and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_lines(raw: bytes) -> tuple[list[bytes], bool]:
    """Lines that end with a newline, and whether a torn tail was dropped."""
    parts = raw.split(b"\n")
    return parts[:-1], parts[-1] != b""


def read_rows(path: str) -> tuple[list[dict[str, str]], bool]:
    """Rows of whole tasks from a results file, and whether anything torn or incomplete was dropped."""
    with open(path, "rb") as fh:
        raw = fh.read()
    lines, dirty = _complete_lines(raw)
    if not lines:
        return [], dirty or bool(raw)
    try:
        head = next(csv.reader([lines[0].decode("utf-8")]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        head = []
    if tuple(head) != COLUMNS:
        raise FaithmapError(f"{path} is not a faithmap results file (its header differs); use another --out")
    groups: dict[str, list[dict[str, str]]] = {}
    order: list[str] = []
    for line in lines[1:]:
        try:
            vals = next(csv.reader([line.decode("utf-8")]))
        except (UnicodeDecodeError, StopIteration, csv.Error):
            dirty = True
            continue
        if len(vals) != len(COLUMNS):
            dirty = True
            continue
        row = dict(zip(COLUMNS, vals))
        if row["key"] not in groups:
            groups[row["key"]] = []
            order.append(row["key"])
        groups[row["key"]].append(row)
    rows: list[dict[str, str]] = []
    for key in order:
        g = groups[key]
        try:
            n = int(g[0]["task_rows"])
        except ValueError:
            dirty = True
            continue
        if n <= 0 or len(g) < n or any(r["task_rows"] != g[0]["task_rows"] for r in g):
            dirty = True
            continue
        if len(g) > n:  # the same task twice (should not happen): keep the first copy
            dirty = True
            g = g[:n]
        rows.extend(g)
    return rows, dirty


def read_curves(path: str, done: set[str]) -> tuple[list[dict], bool]:
    """Curve records of done tasks (the last record per key and target), and whether any line was dropped."""
    if not os.path.exists(path):
        return [], False
    with open(path, "rb") as fh:
        raw = fh.read()
    lines, dirty = _complete_lines(raw)
    recs: dict[tuple[str, int], dict] = {}
    for line in lines:
        try:
            rec = json.loads(line.decode("utf-8"))
            k = (rec["key"], int(rec["target"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            dirty = True
            continue
        if rec["key"] not in done:
            dirty = True
            continue
        if k in recs:
            dirty = True
        recs[k] = rec
    return list(recs.values()), dirty


def rows_bytes(rows: Iterable[dict[str, str]], header: bool = False) -> bytes:
    out = [_csv_line(COLUMNS)] if header else []
    out += [_csv_line([r[c] for c in COLUMNS]) for r in rows]
    return b"".join(out)


def curves_bytes(recs: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode("utf-8") + b"\n" for r in recs)


class ResultStore:
    """The results and curves files of one run (or one shard of it)."""

    def __init__(self, out: str, suffix: str = ""):
        self.out = out
        self.results_path = os.path.join(out, f"results{suffix}.csv")
        self.curves_path = os.path.join(out, f"curves{suffix}.jsonl")
        self.rows: list[dict[str, str]] = []
        self.curves: list[dict] = []

    @property
    def done(self) -> set[str]:
        return {r["key"] for r in self.rows}

    def open(self) -> int:
        """Load what earlier runs finished, repairing torn writes; returns the number of rows dropped."""
        dropped = 0
        if os.path.exists(self.results_path):
            rows, dirty = read_rows(self.results_path)
            if dirty:
                with open(self.results_path, "rb") as fh:
                    before = max(0, fh.read().count(b"\n") - 1)
                dropped = max(0, before - len(rows))
                write_atomic(self.results_path, rows_bytes(rows, header=True))
            self.rows = rows
        else:
            write_atomic(self.results_path, rows_bytes([], header=True))
            self.rows = []
        curves, dirty = read_curves(self.curves_path, self.done)
        if dirty or not os.path.exists(self.curves_path):
            write_atomic(self.curves_path, curves_bytes(curves))
        self.curves = curves
        return dropped

    def append_task(self, rows: list[dict], curves: list[dict]) -> None:
        """Write one task: its curves first, then all its rows in one durable append."""
        n = len(rows)
        if n == 0:
            raise ValueError("a task must write at least one row")
        text = []
        for r in rows:
            r["task_rows"] = str(n)
            text.append({c: format_value(r.get(c)) for c in COLUMNS})
        if curves:
            append_durable(self.curves_path, curves_bytes(curves))
        append_durable(self.results_path, rows_bytes(text))
        self.rows.extend(text)
        self.curves.extend(curves)

    def rewrite(self, rows: list[dict[str, str]], curves: list[dict]) -> None:
        """Replace both files atomically (used to put a finished run in canonical order)."""
        write_atomic(self.curves_path, curves_bytes(curves))
        write_atomic(self.results_path, rows_bytes(rows, header=True))
        self.rows, self.curves = list(rows), list(curves)
