"""Reading runs written by faithmap's earlier CSV store (``results.csv`` + ``curves.jsonl``).

Such a directory still gives its report (``--report-only``) and can be joined into a new
directory with ``--merge`` (which writes Parquet parts: the way to carry an old run on). Resuming
it in place is refused with one line saying so. :func:`open_results` opens the results of either store.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os

import pyarrow as pa

from ..errors import FaithmapError
from .store import COLUMN_NAMES, Column, Store, TableSource, columns_table, load_run
from .store import COLUMNS as STORE_COLUMNS

COLUMNS = ("image", "target", "target_name", "target_prob", "category", "method", "resolution", "grid", "metric",
           "value", "higher_is_better", "seed", "fast", "explain_seconds", "explain_images", "explain_grad_images",
           "metric_seconds", "metric_images", "key", "task_rows")


def is_legacy(out: str, run: dict | None) -> bool:
    """Whether ``out`` was written by the CSV store (its run.json names no store format)."""
    if run is not None and run.get("store"):
        return False
    return bool(glob.glob(os.path.join(out, "results*.csv"))) and not os.path.isdir(os.path.join(out, "parts"))


def _complete_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\n")[:-1]


def read_rows(path: str) -> list[dict[str, str]]:
    """Rows of whole tasks from a CSV results file (torn lines and incomplete tasks left out)."""
    with open(path, "rb") as fh:
        lines = _complete_lines(fh.read())
    if not lines:
        return []
    try:
        head = next(csv.reader([lines[0].decode("utf-8")]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        head = []
    if tuple(head) != COLUMNS:
        raise FaithmapError(f"{path} is not a faithmap results file (its header differs)")
    groups: dict[str, list[dict[str, str]]] = {}
    for line in lines[1:]:
        try:
            vals = next(csv.reader([line.decode("utf-8")]))
        except (UnicodeDecodeError, StopIteration, csv.Error):
            continue
        if len(vals) == len(COLUMNS):
            row = dict(zip(COLUMNS, vals))
            groups.setdefault(row["key"], []).append(row)
    rows = []
    for g in groups.values():
        try:
            n = int(g[0]["task_rows"])
        except ValueError:
            continue
        if n > 0 and len(g) >= n and all(r["task_rows"] == g[0]["task_rows"] for r in g):
            rows.extend(g[:n])
    return rows


def read_curves(path: str, done: set[str]) -> dict[tuple[str, int], dict]:
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as fh:
        lines = _complete_lines(fh.read())
    recs: dict[tuple[str, int], dict] = {}
    for line in lines:
        try:
            rec = json.loads(line.decode("utf-8"))
            k = (rec["key"], int(rec["target"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            continue
        if rec["key"] in done:
            recs[k] = rec
    return recs


def _f(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _i(v: str):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _seed(v: str):
    s = _i(v)
    return s if s is not None and 0 <= s < 2**64 else None


def _value(text: str, column: Column):
    """A CSV cell as the Parquet column's type (unreadable numbers: NaN or None)."""
    if column.type == pa.float64():
        return _f(text)
    if column.type == pa.uint64():
        return _seed(text)
    if column.type == pa.bool_():
        return text == "true"
    return _i(text) if pa.types.is_integer(column.type) else text


def _legacy_row(r: dict[str, str], task_row: int, curve: dict | None) -> dict:
    """One CSV-store row with the Parquet store's columns (those the CSV store lacked are None)."""
    row = {c.name: _value(r[c.name], c) if c.name in r else None for c in STORE_COLUMNS}
    row.update(task_row=task_row, fractions=curve["fractions"] if curve else None,
               deletion_curve=curve["deletion"] if curve else None,
               insertion_curve=curve["insertion"] if curve else None)
    return row


def read_legacy(out: str):
    """(Arrow table with the new store's columns, keys) of a CSV-store directory (its shard files too)."""
    main = os.path.join(out, "results.csv")
    paths = [main] if os.path.exists(main) else sorted(glob.glob(os.path.join(out, "results.shard-*.csv")))
    cols: dict[str, list] = {n: [] for n in COLUMN_NAMES}
    keys: list[str] = []
    for p in paths:
        rows = read_rows(p)
        base = os.path.basename(p)
        curves = read_curves(os.path.join(out, "curves" + base[len("results"):-len(".csv")] + ".jsonl"),
                             {r["key"] for r in rows})
        pos: dict[str, int] = {}
        first: set[tuple[str, int]] = set()
        for r in rows:
            if r["key"] not in pos:
                keys.append(r["key"])
            k = pos.get(r["key"], 0)
            pos[r["key"]] = k + 1
            tg = _i(r["target"])
            c = curves.get((r["key"], tg)) if (r["key"], tg) not in first else None
            first.add((r["key"], tg))
            row = _legacy_row(r, k, c)
            for n in COLUMN_NAMES:
                cols[n].append(row[n])
    return columns_table(cols), keys


def open_results(out: str):
    """(run, results) of an output directory: its Parquet parts, or the rows of an earlier CSV store."""
    run = load_run(out)
    if is_legacy(out, run):
        return run, TableSource(read_legacy(out)[0])
    st = Store(out)
    st.scan()
    return run, st
