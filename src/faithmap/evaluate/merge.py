"""Joining the output directories of sharded (or separate, compatible) runs into one."""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Sequence

from ..errors import FaithmapError
from .runner import EvalResult, _settings_equal, canonical_order, comparable
from ..core.io import write_atomic
from .store import ResultStore, read_curves, read_rows


def _load_json(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        raise FaithmapError(f"cannot read {path}") from None


def merge(dirs: Sequence[str], out: str, *, report: bool = True) -> EvalResult:
    """Merge the results of ``dirs`` (shards of one run) into ``out`` and write its report.

    Every directory must hold a ``run.json`` with the same settings (model, seed, fast, parameters,
    metrics, target, annotations). Only whole tasks are taken; a task found in several directories
    must have the same results there (wall-clock columns aside). The merged ``results.csv`` is in
    the same order an unsharded run writes, so it equals that run's file but for the seconds.
    """
    dirs = [os.fspath(d) for d in dirs]
    if not dirs:
        raise FaithmapError("--merge needs at least one directory")
    runs = []
    for d in dirs:
        if not os.path.isdir(d):
            raise FaithmapError(f"--merge: {d} is not a directory")
        if not os.path.exists(os.path.join(d, "run.json")):
            raise FaithmapError(f"--merge: {d} holds no run.json (not a faithmap evaluate output)")
        runs.append(_load_json(os.path.join(d, "run.json")))
    base = runs[0]
    for d, r in zip(dirs[1:], runs[1:]):
        diff = _settings_equal(base.get("settings", {}), r.get("settings", {}))
        if diff:
            raise FaithmapError(f"cannot merge {dirs[0]} and {d}: their settings differ ({', '.join(diff)})")
    out_abs = os.path.abspath(out)
    if os.path.exists(os.path.join(out, "results.csv")) and out_abs not in {os.path.abspath(d) for d in dirs}:
        raise FaithmapError(f"{out} already holds results; merge into a new directory or list it among the inputs")

    # -- gather whole tasks ---------------------------------------------------------------------
    rows_by_key: dict[str, list[dict[str, str]]] = {}
    origin: dict[str, str] = {}
    curves: dict[tuple[str, int], dict] = {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "results*.csv"))):
            rows, _ = read_rows(path)
            keys: dict[str, list[dict[str, str]]] = {}
            for r in rows:
                keys.setdefault(r["key"], []).append(r)
            for k, g in keys.items():
                if k in rows_by_key:
                    if comparable(rows_by_key[k]) != comparable(g):
                        raise FaithmapError(f"conflicting results for {k.replace('|', ' / ')} in {origin[k]} and {path}")
                    continue
                rows_by_key[k] = g
                origin[k] = path
            base_name = os.path.basename(path)
            cpath = os.path.join(os.path.dirname(path), "curves" + base_name[len("results"):-len(".csv")] + ".jsonl")
            for rec in read_curves(cpath, set(keys))[0]:
                curves.setdefault((rec["key"], int(rec["target"])), rec)

    # -- the merged run ------------------------------------------------------------------------
    def union(key):
        out_list: list = []
        for r in runs:
            for v in r.get(key, []):
                if v not in out_list:
                    out_list.append(v)
        return out_list

    digests: dict[str, str] = {}
    for d, r in zip(dirs, runs):
        for name, dg in r.get("image_digests", {}).items():
            if digests.setdefault(name, dg) != dg:
                raise FaithmapError(f"cannot merge: image {name} differs between the runs ({d})")
    run = dict(base)
    run.update(methods=union("methods"), resolutions=union("resolutions"), images=union("images"),
               image_digests=digests, skipped_methods=union("skipped_methods"),
               labels={k: v for r in runs for k, v in r.get("labels", {}).items()}, merged_from=dirs)
    run.pop("shard", None)
    all_rows = [r for g in rows_by_key.values() for r in g]
    all_rows, curve_list = canonical_order(all_rows, list(curves.values()), run)

    os.makedirs(out, exist_ok=True)
    images: dict = {}
    for d in dirs:
        p = os.path.join(d, "images.json")
        if os.path.exists(p):
            for k, v in _load_json(p).items():
                images.setdefault(k, v)
        for sub in ("maps", "images"):
            src = os.path.join(d, sub)
            if os.path.isdir(src) and os.path.abspath(src) != os.path.abspath(os.path.join(out, sub)):
                shutil.copytree(src, os.path.join(out, sub), dirs_exist_ok=True)
    write_atomic(os.path.join(out, "run.json"), json.dumps(run, indent=2).encode())
    write_atomic(os.path.join(out, "images.json"), json.dumps(images, indent=1).encode())
    store = ResultStore(out)
    store.rewrite(all_rows, curve_list)
    result = EvalResult(out, store.rows, store.curves, run, skipped_methods=run.get("skipped_methods", []),
                        tasks_total=len(rows_by_key), tasks_done_before=len(rows_by_key))
    result.files = {"results": store.results_path, "curves": store.curves_path, "run": os.path.join(out, "run.json")}
    if report:
        from .report import write_report

        files, md = write_report(out)
        result.files.update(files)
        result.markdown = md
    return result
