"""Joining the output directories of sharded (or separate, compatible) runs into one.

Every directory must hold a ``run.json`` with the same settings (model, seed, fast, parameters,
metrics, target, annotations, batch sizes). Whole tasks are taken from every directory's parts; a
task found in several directories must have the same results there, compared with a tolerance:
floats may differ at rounding level between runs that batched their images differently (a task's
predicted probability depends by ~1e-6 on its batch neighbours), so two values agree when within
1e-4 relative or 1e-6 absolute of each other; anything beyond is a conflict. Runs of the earlier
CSV store can be merged too, which carries them into the Parquet store.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core.io import atomic_open, output_dir, write_atomic
from ..errors import FaithmapError
from .legacy import is_legacy, read_legacy
from .plan import settings_diff
from .runner import EvalResult, finish
from .store import (COLUMN_NAMES, STORE_FORMAT, OutputLock, Store, load_images_info, load_run, part_meta,
                    rows_close)


def _sources(d: str, run: dict):
    """(legacy table or None, keys, parts) of one input directory."""
    if is_legacy(d, run):
        table, keys = read_legacy(d)
        return table, keys, []
    st = Store(d)
    sc = st.scan()
    return None, list(sc.keys), sc.parts


def merge(dirs: Sequence[str], out: str, *, report: bool = True) -> EvalResult:
    """Merge the results of ``dirs`` (shards of one run) into ``out`` and write its report."""
    dirs = [os.fspath(d) for d in dirs]
    if not dirs:
        raise FaithmapError("--merge needs at least one directory")
    runs = []
    for d in dirs:
        if not os.path.isdir(d):
            raise FaithmapError(f"--merge: {d} is not a directory")
        if not os.path.exists(os.path.join(d, "run.json")):
            raise FaithmapError(f"--merge: {d} holds no run.json (not a faithmap evaluate output)")
        runs.append(load_run(d))
    base = runs[0]
    for d, r in zip(dirs[1:], runs[1:]):
        diff = settings_diff(base.get("settings", {}), r.get("settings", {}))
        if diff:
            raise FaithmapError(f"cannot merge {dirs[0]} and {d}: their settings differ ({', '.join(diff)})")
    out = os.fspath(out)
    out_abs = os.path.abspath(out)
    inputs = {os.path.abspath(d) for d in dirs}
    if out_abs not in inputs and os.path.isdir(out) and (os.path.isdir(os.path.join(out, "parts"))
                                                         or os.path.exists(os.path.join(out, "results.csv"))):
        raise FaithmapError(f"{out} already holds results; merge into a new directory or list it among the inputs")
    # the output directory itself first: its parts stay where they are
    order = sorted(range(len(dirs)), key=lambda j: os.path.abspath(dirs[j]) != out_abs)

    pending = None
    with output_dir(out):
        try:
            lock = OutputLock(out).acquire()
        except FaithmapError as exc:
            pending = exc
        else:
            try:
                res = _merge(dirs, runs, order, out, out_abs, base, report)
            finally:
                lock.release()
    if pending is not None:
        raise pending
    return res


def _rows(table, key):
    return table.filter(pc.equal(table.column("key"), key)).select(list(COLUMN_NAMES)).to_pylist()


def _take_part(p: str, d: str, same: bool, target: Store, taken: dict) -> None:
    """The tasks of part ``p`` (of directory ``d``) not taken yet: copied whole, or filtered to them."""
    meta = part_meta(p)
    new = [k for k in meta["keys"] if not _dup(k, taken, lambda k=k: _rows(pq.read_table(p), k), d)]
    for k in new:
        taken[k] = (d, ("part", p))
    if same and len(new) == len(meta["keys"]):
        return  # already here
    if not new:
        if same:
            os.remove(p)
        return
    if len(new) == len(meta["keys"]):
        dest = os.path.join(target.dir, f"part-{os.urandom(16).hex()}.parquet")
        os.makedirs(target.dir, exist_ok=True)
        with open(p, "rb") as src, atomic_open(dest) as fh:
            shutil.copyfileobj(src, fh, 1 << 20)
        return
    table = pq.read_table(p)
    table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(new, pa.string())))
    images = {n: v for n, v in (meta.get("images") or {}).items() if any(k.split("|", 1)[0] == n for k in new)}
    target.write_table(table, new, images)
    if same:
        os.remove(p)


def _take(dirs, runs, order, out_abs, target: Store) -> None:
    """Every task of the directories (the output directory's first) once into ``target``."""
    taken: dict[str, tuple[str, object]] = {}  # key -> (where, table or part path)
    for j in order:
        d, r = dirs[j], runs[j]
        legacy, keys, parts = _sources(d, r)
        if legacy is not None:
            new = [k for k in keys if not _dup(k, taken, lambda k=k: _rows(legacy, k), d)]
            if new:
                t = legacy.filter(pc.is_in(legacy.column("key"), value_set=pa.array(new, pa.string())))
                target.write_table(t, new, {})
            for k in new:
                taken[k] = (d, ("table", legacy))
            continue
        for p in parts:
            _take_part(p, d, os.path.abspath(d) == out_abs, target, taken)


def _merged_run(dirs, runs, base: dict, out: str) -> tuple[dict, dict]:
    """The merged run.json and images.json (maps and thumbnails copied into ``out``)."""
    def union(key):
        out_list: list = []
        for r in runs:
            for v in r.get(key, []):
                if v not in out_list:
                    out_list.append(v)
        return out_list

    run = dict(base)
    run.update(methods=union("methods"), resolutions=union("resolutions"), images=union("images"),
               skipped_methods=union("skipped_methods"), store=STORE_FORMAT,
               labels={k: v for r in runs for k, v in r.get("labels", {}).items()}, merged_from=list(dirs))
    run.pop("shard", None)
    run.pop("image_digests", None)
    images: dict = {}
    for d in dirs:
        for k, v in load_images_info(d).items():
            images.setdefault(k, v)
        for sub in ("maps", "images"):
            src = os.path.join(d, sub)
            if os.path.isdir(src) and os.path.abspath(src) != os.path.abspath(os.path.join(out, sub)):
                try:
                    shutil.copytree(src, os.path.join(out, sub), dirs_exist_ok=True)
                except (OSError, shutil.Error) as exc:
                    raise FaithmapError(f"cannot copy {src} into {out}: {exc}") from None
    return run, images


def _merge(dirs, runs, order, out, out_abs, base, report) -> EvalResult:
    target = Store(out)
    _take(dirs, runs, order, out_abs, target)
    run, images = _merged_run(dirs, runs, base, out)
    write_atomic(os.path.join(out, "run.json"), json.dumps(run, indent=2).encode())
    if images:
        write_atomic(os.path.join(out, "images.json"), json.dumps(images, indent=1).encode())
    target.scan(repair=True)
    target.compact()
    n = len(target.scan_result.keys)
    result = EvalResult(out, run, skipped_methods=run.get("skipped_methods", []), tasks_total=n, tasks_done_before=n)
    result.files = {"run": os.path.join(out, "run.json"), "parts": target.dir}
    finish(target, run, out, result, csv=None, report=report)
    return result


def _dup(key: str, taken: dict, rows, where: str) -> bool:
    """Whether ``key`` is already taken; a copy that disagrees beyond rounding is a conflict."""
    if key not in taken:
        return False
    prev_where, (kind, obj) = taken[key]
    prev = _rows(obj if kind == "table" else pq.read_table(obj), key)
    diff = rows_close(prev, rows())
    if diff:
        raise FaithmapError(f"conflicting results for {key.replace('|', ' / ')} in {prev_where} and {where} ({diff})")
    return True
