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

from ..errors import FaithmapError

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


def read_legacy(out: str):
    """(Arrow table with the new store's columns, keys) of a CSV-store directory (its shard files too)."""
    import pyarrow as pa

    from .store import schema

    main = os.path.join(out, "results.csv")
    paths = [main] if os.path.exists(main) else sorted(glob.glob(os.path.join(out, "results.shard-*.csv")))
    cols: dict[str, list] = {n: [] for n in schema().names}
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
            vals = {"key": r["key"], "image": r["image"], "label": None, "predicted": None, "correct": None,
                    "target": tg, "target_name": r["target_name"], "target_prob": _f(r["target_prob"]),
                    "category": r["category"], "method": r["method"], "resolution": r["resolution"],
                    "grid": r["grid"], "metric": r["metric"], "value": _f(r["value"]),
                    "higher_is_better": r["higher_is_better"] == "true", "seed": _seed(r["seed"]), "image_seed": None,
                    "fast": r["fast"] == "true", "explain_seconds": _f(r["explain_seconds"]),
                    "explain_images": _f(r["explain_images"]), "explain_grad_images": _f(r["explain_grad_images"]),
                    "metric_seconds": _f(r["metric_seconds"]), "metric_images": _f(r["metric_images"]),
                    "task_row": k, "fractions": c["fractions"] if c else None,
                    "deletion_curve": c["deletion"] if c else None, "insertion_curve": c["insertion"] if c else None}
            for n, v in vals.items():
                cols[n].append(v)
    sch = schema()
    table = pa.table({n: pa.array(cols[n], type=sch.field(n).type) for n in sch.names}, schema=sch)
    return table, keys


def open_results(out: str):
    """(run, results) of an output directory: its Parquet parts, or the rows of an earlier CSV store."""
    from .store import Store, TableSource, load_run

    run = load_run(out)
    if is_legacy(out, run):
        return run, TableSource(read_legacy(out)[0])
    st = Store(out)
    st.scan()
    return run, st
