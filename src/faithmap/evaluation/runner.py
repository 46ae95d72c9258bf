"""``faithmap.evaluate``: run many methods on many images and score every map with many metrics.

The run: the settings are one :class:`~.config.RunConfig`; :func:`.plan.build` checks what they need
and cuts the work into tasks (method, resolution, a batch of images); the output directory is
locked (:class:`.store.OutputLock`); finished tasks are read from the parts' footers and skipped; an
engine (:mod:`.engines`, from its registry) runs the rest, and the driver writes each finished task
as one Parquet part (:mod:`.store`). Then the report (:mod:`.report`) is computed from the parts.
Re-running the same command resumes; ``shard=(i, n)`` keeps every n-th task, and
:func:`faithmap.evaluation.merge` joins the directories.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm import tqdm

from .._version import __version__
from ..core.io import atomic_open, os_error, save_npy, write_atomic
from ..data import safe_name
from ..errors import FaithmapError
from ..registry import METRICS
from . import config as _config
from . import stats
from .config import RunConfig
from .engines import Engine, make_engine
from .legacy import is_legacy, open_results
from .plan import NATIVE, Plan, build, photo_digest, record_stat, settings_diff
from .report import write_report
from .store import (CURVE_COLUMNS, ROW_COLUMNS, STORE_FORMAT, Scan, Store, comparable, export_csv, load_images_info,
                    load_run, order_table, run_locked)
from .worker import Job, Output

__all__ = ["EvalResult", "comparable", "evaluate"]
CSV_AUTO_ROWS = 100_000
"""Without ``csv=``, a finished run also writes ``results.csv`` when it has at most this many rows."""


@dataclass
class EvalResult:
    """What :func:`evaluate` (or :func:`faithmap.evaluation.merge`) did and where it wrote it.

    ``rows`` and ``curves`` read every row into Python (fine for small runs); for large ones use
    :meth:`table` (an Arrow table, columns of your choice) or the parts in ``out/parts`` directly.
    """

    out: str
    run: dict
    files: dict[str, str] = field(default_factory=dict)
    skipped_methods: list[str] = field(default_factory=list)
    tasks_total: int = 0  # (image, method, resolution) items of this run or shard
    tasks_done_before: int = 0
    tasks_run: int = 0
    rows_dropped: int = 0  # unreadable parts removed on opening
    markdown: str = ""
    model_images: int = 0  # images this call sent through the model (every job's prediction pass included)

    @property
    def complete(self) -> bool:
        return self.tasks_done_before + self.tasks_run >= self.tasks_total

    def _source(self):
        return open_results(self.out)[1]

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows as an Arrow table in run order (``columns``: a subset, default all but the curves)."""
        cols = list(columns or ROW_COLUMNS)
        need = list(dict.fromkeys(cols + ["image", "method", "resolution", "task_row"]))
        return order_table(self._source().table(need), self.run).select(cols)

    @property
    def rows(self) -> list[dict]:
        return self.table().to_pylist()

    @property
    def curves(self) -> list[dict]:
        """One record per (image, target, method, resolution): ``key, image, method, resolution, grid,
        target, fractions, deletion, insertion``, in run order."""
        cols = ["key", "image", "method", "resolution", "grid", "target", "task_row", *CURVE_COLUMNS]
        t = order_table(self._source().table(cols, filter=pc.field("fractions").is_valid()), self.run)
        return [{"key": r["key"], "image": r["image"], "method": r["method"], "resolution": r["resolution"],
                 "grid": r["grid"], "target": r["target"], "fractions": r["fractions"],
                 "deletion": r["deletion_curve"], "insertion": r["insertion_curve"]} for r in t.to_pylist()]

    def summaries(self) -> list[stats.MetricSummary]:
        """One :class:`~.stats.MetricSummary` (mean, t-interval, categories) per (method, resolution, metric)."""
        cats = [m for m in METRICS.names() if METRICS.get(m).aggregate == "category_mean"]
        agg = stats.aggregate(self._source().batches(stats.COLUMNS), categories=cats)
        metrics = self.run.get("settings", {}).get("metrics", [])
        return agg.summaries(self.run["methods"], list(self.run["resolutions"]) + [NATIVE], metrics,
                             {m: METRICS.get(m).aggregate if m in METRICS else "mean" for m in metrics})

    def summary(self) -> pa.Table:
        """The summary as an Arrow table, one row per (method, resolution, metric): the columns of
        ``summary.csv`` (:data:`~.stats.SUMMARY_COLUMNS`); ``.to_pylist()`` gives one dict per row."""
        return stats.summaries_table(self.summaries())


# ----------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------
def evaluate(config: RunConfig | None = None, /, *positional: Any, **overrides: Any) -> EvalResult:
    if positional:  # evaluate(methods, images, ...) of earlier versions: RunConfig.make says what to write
        config = (config, *positional)
    plan = build(RunConfig.make(config, **overrides))
    eng = make_engine(plan.config.engine)
    _refuse_legacy(plan.config.out, plan.config.overwrite)
    return run_locked(plan.config.out, lambda: _run(plan, eng))


evaluate.__signature__ = _config.signature(EvalResult)  # type: ignore[attr-defined]
evaluate.__doc__ = f"""Evaluate methods on images with metrics; write Parquet results and a report to ``out``.

``evaluate(config=None, /, **options)``: a :class:`~faithmap.evaluation.RunConfig` and/or its options
as keywords (keywords override the config's; an unknown name is an error listing the valid ones).
Mask methods run at every resolution, others at their native grid; re-running with the same ``out``
resumes, ``overwrite=True`` starts afresh. Returns an :class:`~faithmap.evaluation.EvalResult`.

Options:

{_config.options_doc()}
"""


def _refuse_legacy(out: str, overwrite: bool) -> None:
    if not os.path.isdir(out) or not os.path.exists(os.path.join(out, "run.json")) or overwrite:
        return
    try:
        old = load_run(out)
    except FaithmapError:
        old = None  # a corrupt run.json: binding only when tasks finished (checked under the lock)
    if is_legacy(out, old):
        raise FaithmapError(f"{out} holds a run of faithmap's earlier CSV store (results.csv); rebuild its report "
                            f"with --report-only, carry it on with `faithmap evaluate --merge {out} --out NEW` "
                            f"(then resume NEW), or use --overwrite")


# ----------------------------------------------------------------------------------------------
# the run (the output directory locked)
# ----------------------------------------------------------------------------------------------
def now() -> str:
    """The local time to the second, as ``run.json`` records it."""
    return _dt.datetime.now().isoformat(timespec="seconds")


def _merge_run(old: dict | None, plan: Plan, bound: bool) -> dict:
    old = old if (old and bound) else {}

    def union(a, b):
        return list(dict.fromkeys(list(a or []) + list(b)))

    settings = dict(plan.settings, params={**(old.get("settings", {}).get("params") or {}), **plan.settings["params"]})
    return {
        "faithmap": __version__, "store": STORE_FORMAT,
        "created": old.get("created") or now(), "updated": now(),
        "settings": settings,
        "methods": union(old.get("methods"), plan.methods),
        "resolutions": [str(r) for r in union([int(x) for x in old.get("resolutions", [])], plan.resolutions)],
        "images": union(old.get("images"), [it.name for it in plan.images]),
        "labels": {**old.get("labels", {}), **plan.labels},
        "skipped_methods": union(old.get("skipped_methods"), plan.skipped_methods),
        "preset": plan.preset.name or old.get("preset"),
        "metrics": plan.metrics,
    }


REPORT_FILES = ("summary.md", "summary.csv", "report.html", "results.csv")


def _clear(out: str) -> None:
    for f in os.listdir(out):
        p = os.path.join(out, f)
        if f in ("maps", "images", "parts") and os.path.isdir(p):
            shutil.rmtree(p)
        elif (f in REPORT_FILES or f in ("run.json", "images.json", "curves.jsonl")
              or f.startswith(("results", "curves", "mean_curves_", "heatmap_grid_"))) and os.path.isfile(p):
            os.remove(p)


def check_resume(out: str, old_run: dict, plan, seen: dict[str, list], what: str) -> None:
    """Refuse to resume ``old_run`` (the ``run.json`` of ``out``, ``what`` it holds: "a run", "an audit")
    with other settings than ``plan``'s, or on images that changed since its parts were computed."""
    diff = settings_diff(old_run.get("settings", {}), plan.settings)
    if diff:
        raise FaithmapError(f"{out} holds {what} with other settings ({', '.join(diff)}); "
                            f"use another --out, or --overwrite to start afresh")
    check_images(plan, seen)


def check_images(plan, seen: dict[str, list]) -> None:
    """Refuse an image of ``plan.images`` that differs from the one an earlier part was computed on (cheaply: a file's size
    and time first, its pixels only when those changed)."""
    for it in plan.images:
        old = seen.get(it.name)
        if not old:
            continue
        digest, size, mtime = (list(old) + [None, None, None])[:3]
        st = record_stat(it)
        if st is not None and size is not None and (st[0], st[1]) == (size, mtime):
            continue
        if photo_digest(it.load(plan.config.convert)) != digest:
            raise FaithmapError(f"image {it.name} differs from the one this run began with; use another --out "
                                f"(or --overwrite)")


def _open(plan: Plan, out: str) -> tuple[Store, Scan, dict]:
    """The store of ``out`` scanned (and repaired), the run bound to earlier settings once a task finished,
    and ``run.json`` written: (store, scan, run)."""
    store = Store(out)
    if plan.config.overwrite:
        _clear(out)
    run_path = os.path.join(out, "run.json")
    sc = store.scan(repair=True)
    bound = bool(sc.keys)  # a run binds its settings once it has a finished task
    old_run = None
    if os.path.exists(run_path):
        try:
            old_run = load_run(out)
        except FaithmapError:
            if bound:
                raise
    if bound:
        if old_run is None:
            raise FaithmapError(f"{out} holds results without run.json; use another --out or --overwrite")
        check_resume(out, old_run, plan, sc.images, "a run")
    elif os.path.isdir(os.path.join(out, "parts")) or os.path.exists(os.path.join(out, "images.json")):
        _clear(out)  # left by a run that finished nothing: it binds nothing
        store = Store(out)
        sc = store.scan()
    elif old_run is None and any(f.startswith("results") and f.endswith(".csv") for f in os.listdir(out)):
        raise FaithmapError(f"{out} holds results without run.json; use another --out or --overwrite")
    run = _merge_run(old_run, plan, bound)
    write_atomic(run_path, json.dumps(run, indent=2).encode())
    return store, sc, run


def pending_jobs(plan, sc: Scan) -> tuple[list[Job], int, int]:
    """The jobs still to run (each task's unfinished images), the items in all and those done before: of any
    plan with ``tasks``, ``keys(task)``, ``images`` and ``saves(i)`` (an evaluation's, an audit's)."""
    jobs: list[Job] = []
    total = before = 0
    for t in plan.tasks:
        keys = plan.keys(t)
        todo = tuple(i for i, k in zip(t.images, keys) if k not in sc.keys)
        total += len(keys)
        before += len(keys) - len(todo)
        if todo:
            task = type(t)(t.index, t.method, t.resolution, todo)
            jobs.append(Job(task, [plan.images[i] for i in todo], [plan.saves(i) for i in todo]))
    return jobs, total, before


def _run(plan: Plan, eng: Engine) -> EvalResult:
    out, cfg = plan.config.out, plan.config
    store, sc, run = _open(plan, out)
    jobs, total, before = pending_jobs(plan, sc)
    images_info = load_images_info(out) if any(any(j.save) for j in jobs) else {}
    bar = tqdm(total=total, initial=before, desc="evaluate", unit="task", file=sys.stderr, disable=not cfg.progress,
               dynamic_ncols=True)
    counts = {"ran": 0, "images": 0}

    def on_output(o: Output) -> None:
        if store.holds(o.keys):  # never written twice (a late duplicate result)
            return
        _write_extras(out, o, images_info)
        store.write_output(o)
        counts["ran"] += len(o.keys)
        counts["images"] += o.model_images
        bar.update(len(o.keys))
        bar.set_postfix_str(f"{o.task.method}@{o.task.resolution}", refresh=False)

    try:
        eng.run(plan.context(eng.loads_model), jobs, on_output)
    finally:
        bar.close()
    result = EvalResult(out, run, skipped_methods=plan.skipped_methods, tasks_total=total, tasks_done_before=before,
                        tasks_run=counts["ran"], rows_dropped=sc.dropped, model_images=counts["images"])
    result.files = {"run": os.path.join(out, "run.json"), "parts": store.dir}
    store.compact()  # many small parts -> a few large ones (faster scans and reports); a no-op for small runs
    if cfg.shard is None and result.complete:
        finish(store, run, out, result, csv=cfg.csv, report=cfg.report)
    return result


def finish(store: Store, run: dict, out: str, result: EvalResult, *, csv: bool | None, report: bool) -> None:
    """A complete run's exports: ``results.csv`` (``csv``; None: when it has at most
    :data:`CSV_AUTO_ROWS` rows) and the report; their paths go into ``result.files``."""
    if csv or (csv is None and store.scan_result.rows <= CSV_AUTO_ROWS):
        export_csv(store, run, os.path.join(out, "results.csv"))
        result.files["results"] = os.path.join(out, "results.csv")
    if report:
        files, md = write_report(out)
        result.files.update(files)
        result.markdown = md


def _mkdir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise os_error("create", path, exc) from None


def _write_extras(out: str, o: Output, images_info: dict) -> None:
    """Maps, thumbnails and images.json entries of a task's kept images, before its part (so a part's
    images always have them)."""
    changed = False
    for name, arr in o.maps.items():
        _mkdir(os.path.join(out, "maps", safe_name(name)))
        save_npy(os.path.join(out, "maps", safe_name(name), f"{safe_name(o.task.method)}@{o.task.resolution}.npy"), arr)
    for name, pix in o.thumbnails.items():
        png = os.path.join(out, "images", f"{safe_name(name)}.png")
        if not os.path.exists(png):
            _mkdir(os.path.dirname(png))
            with atomic_open(png) as fh:
                Image.fromarray(pix).save(fh, format="png")
        info = dict(o.images[name])
        info.pop("stat", None)
        hw = info.pop("hw", None)
        entry = {"sha1": info.pop("digest", ""), "photo_size": [hw[1], hw[0]] if hw else None, **info,
                 "thumbnail": f"images/{safe_name(name)}.png"}
        if images_info.get(name) != entry:
            images_info[name] = entry
            changed = True
    if changed:
        write_atomic(os.path.join(out, "images.json"), json.dumps(images_info, indent=1).encode())
