"""``faithmap.evaluate``: run many methods on many images and score every map with many metrics.

The run: :func:`.plan.build` checks everything and cuts the work into tasks (method, resolution,
a batch of images); the output directory is locked (:class:`.store.OutputLock`); finished tasks
are read from the parts' footers and skipped; an engine (:mod:`.engines`: ``local`` or ``ray``)
runs the rest, and the driver writes each finished task as one Parquet part (:mod:`.store`). Then
the report (:mod:`.report`) is computed from the parts. Re-running the same command resumes;
``shard=(i, n)`` keeps every n-th task, and :func:`faithmap.evaluate.merge` joins the directories.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import __version__
from ..core.io import atomic_open, os_error, output_dir, save_npy, write_atomic
from ..data.annotations import Annotations
from ..errors import FaithmapError
from ..registry import METHODS, METRICS
from .presets import base_method
from ..data import safe_name
from .plan import DEFAULT_METRICS, NATIVE, Plan, build, photo_digest, record_stat, settings_diff
from .store import (CURVE_COLUMNS, ROW_COLUMNS, STORE_FORMAT, TIME_COLUMNS, OutputLock, Store, comparable,
                    export_csv, load_images_info, load_run, order_table)
from .worker import Context, Job, Output

__all__ = ["DEFAULT_METRICS", "EvalResult", "comparable", "evaluate"]
CSV_AUTO_ROWS = 100_000
"""Without ``csv=``, a finished run also writes ``results.csv`` when it has at most this many rows."""


@dataclass
class EvalResult:
    """What :func:`evaluate` (or :func:`faithmap.evaluate.merge`) did and where it wrote it.

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
        from .legacy import open_results

        return open_results(self.out)[1]

    def table(self, columns: Sequence[str] | None = None):
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
        import pyarrow.compute as pc

        cols = ["key", "image", "method", "resolution", "grid", "target", "task_row", *CURVE_COLUMNS]
        t = order_table(self._source().table(cols, filter=pc.field("fractions").is_valid()), self.run)
        return [{"key": r["key"], "image": r["image"], "method": r["method"], "resolution": r["resolution"],
                 "grid": r["grid"], "target": r["target"], "fractions": r["fractions"],
                 "deletion": r["deletion_curve"], "insertion": r["insertion_curve"]} for r in t.to_pylist()]

    def summary(self):
        from . import stats

        src = self._source()
        cats = [m for m in METRICS.names() if METRICS.get(m).aggregate == "category_mean"]
        agg = stats.aggregate(src.batches(stats.COLUMNS), categories=cats)
        metrics = self.run.get("settings", {}).get("metrics", [])
        return agg.summaries(self.run["methods"], list(self.run["resolutions"]) + [NATIVE], metrics,
                             {m: METRICS.get(m).aggregate if m in METRICS else "mean" for m in metrics})


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _merge_run(old: dict | None, plan: Plan, bound: bool) -> dict:
    old = old if (old and bound) else {}

    def union(a, b):
        return list(dict.fromkeys(list(a or []) + list(b)))

    settings = dict(plan.settings, params={**(old.get("settings", {}).get("params") or {}), **plan.settings["params"]})
    return {
        "faithmap": __version__, "store": STORE_FORMAT,
        "created": old.get("created") or _now(), "updated": _now(),
        "settings": settings,
        "methods": union(old.get("methods"), plan.methods),
        "resolutions": [str(r) for r in union([int(x) for x in old.get("resolutions", [])], plan.resolutions)],
        "images": union(old.get("images"), [it.name for it in plan.images]),
        "labels": {**old.get("labels", {}), **plan.labels},
        "skipped_methods": union(old.get("skipped_methods"), plan.skipped_methods),
        "preset": plan.preset or old.get("preset"),
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


def _check_images(plan: Plan, seen: dict[str, list]) -> None:
    """Refuse an image that differs from the one an earlier part was computed on (cheaply: a file's size
    and time first, its pixels only when those changed)."""
    for it in plan.images:
        old = seen.get(it.name)
        if not old:
            continue
        digest, size, mtime = (list(old) + [None, None, None])[:3]
        st = record_stat(it)
        if st is not None and size is not None and (st[0], st[1]) == (size, mtime):
            continue
        if photo_digest(it.load(plan.convert)) != digest:
            raise FaithmapError(f"image {it.name} differs from the one this run began with; use another --out "
                                f"(or --overwrite)")


def evaluate(methods: str | Sequence[str] | None = None, images: Any = "samples", *, out: str = "faithmap_eval",
             model: Any = "efficientnet_lite0", weights: str | None = None, device: str | None = "auto",
             resize: str | None = None, resolutions: Any = None, metrics: str | Sequence[str] | None = None,
             preset: str | None = None, fast: bool = False, params: dict | None = None,
             metric_params: dict | None = None, seed: int = 0, batch_size: int | None = None,
             batch_images: int | None = None, target: Any = "top1", annotations: str | Annotations | None = None,
             tolerance: float | None = None, min_score: float | None = None, shard: Any = None,
             overwrite: bool = False, report: bool = True, progress: bool = True, save_maps: int = 12,
             convert: bool = False, engine: Any = "local", address: str | None = None, workers: int | None = None,
             gpus_per_worker: float = 0.0, csv: bool | None = None, labels: Any = None, limit: int | None = None,
             sample: int | None = None) -> EvalResult:
    """Evaluate ``methods`` on ``images`` with ``metrics``; write Parquet results and a report to ``out``.

    ``methods``: names (a list or ``"a,b"``; default: the preset's, else every registered method).
    ``images``: ``"samples"`` (the six bundled photos), a directory, image paths, ``(name, photo)``
    pairs (or ``(name, photo, label)`` triples) or a dict. ``resolutions``: mask resolutions
    (default 28) for methods whose grid is a parameter; other methods run once at their native
    grid. ``metrics``: names or ``"all"`` (default :data:`DEFAULT_METRICS` that are registered;
    localisation metrics only with annotations). ``preset``: a table of one of the papers
    (:mod:`.presets`); explicit arguments override it. ``fast``: each method's quick settings.
    ``params``: method parameters, shared (``{"iterations": 5}``) or per method
    (``{"igos": {"iterations": 5}}``). ``target``: ``top1``, a class index or name, ``annotated``
    (each annotated class of each image) or ``label`` (each image's label). ``annotations``: a file
    (faithmap JSON, COCO JSON or CSV; the bundled boxes for the sample photos by default).
    ``batch_size``: most images in one forward pass; ``batch_images``: images per task (default
    ``batch_size``); both are settings of the run (they change numbers at float precision).
    ``engine``: ``local`` or ``ray`` (with ``address``, ``workers``, ``gpus_per_worker``).
    ``shard``: ``"i/n"`` runs every n-th task. ``csv``: also write ``results.csv`` (default: when
    the finished run has at most 100,000 rows). Re-running with the same ``out`` resumes;
    ``overwrite`` starts afresh. Returns an :class:`EvalResult`.
    """
    from .engines import make_engine

    plan = build(methods, images, model=model, weights=weights, device=device, resize=resize,
                 resolutions=resolutions, metrics=metrics, preset=preset, fast=fast, params=params,
                 metric_params=metric_params, seed=seed, batch_size=batch_size, batch_images=batch_images,
                 target=target, annotations=annotations, tolerance=tolerance, min_score=min_score, shard=shard,
                 save_maps=save_maps, convert=convert, labels=labels, limit=limit, sample=sample)
    eng = make_engine(engine, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    out = os.fspath(out)
    if os.path.isdir(out) and os.path.exists(os.path.join(out, "run.json")) and not overwrite:
        from .legacy import is_legacy

        try:
            old = load_run(out)
        except FaithmapError:
            old = None  # a corrupt run.json: binding only when tasks finished (checked under the lock)
        if is_legacy(out, old):
            raise FaithmapError(f"{out} holds a run of faithmap's earlier CSV store (results.csv); rebuild its report "
                                f"with --report-only, carry it on with `faithmap evaluate --merge {out} --out NEW` "
                                f"(then resume NEW), or use --overwrite")
    pending: BaseException | None = None
    result = None
    with output_dir(out):
        try:
            lock = OutputLock(out).acquire()
        except FaithmapError as exc:  # another process owns this folder: leave it (and its folder) alone
            pending = exc
        else:
            try:
                result = _run(plan, eng, out, overwrite=overwrite, report=report, progress=progress, csv=csv)
            except BaseException as exc:
                if Store(out).scan().keys:  # finished tasks stay for the next run; the folder stays
                    pending = exc
                else:
                    raise
            finally:
                lock.release()
    if pending is not None:
        raise pending
    return result


def _run(plan: Plan, eng, out: str, *, overwrite: bool, report: bool, progress: bool, csv: bool | None) -> EvalResult:
    from tqdm import tqdm

    store = Store(out)
    if overwrite:
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
        diff = settings_diff(old_run.get("settings", {}), plan.settings)
        if diff:
            raise FaithmapError(f"{out} holds a run with other settings ({', '.join(diff)}); "
                                f"use another --out, or --overwrite to start afresh")
        _check_images(plan, sc.images)
    elif os.path.isdir(os.path.join(out, "parts")) or os.path.exists(os.path.join(out, "images.json")):
        _clear(out)  # left by a run that finished nothing: it binds nothing
        store = Store(out)
        sc = store.scan()
    elif old_run is None and any(f.startswith("results") and f.endswith(".csv") for f in os.listdir(out)):
        raise FaithmapError(f"{out} holds results without run.json; use another --out or --overwrite")
    run = _merge_run(old_run, plan, bound)
    write_atomic(run_path, json.dumps(run, indent=2).encode())

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
    images_info = load_images_info(out) if any(any(j.save) for j in jobs) else {}
    model = plan.model_spec if (eng.name == "ray" and plan.model_spec is not None) else plan.model
    ctx = Context(model, {base_method(m): METHODS.get(base_method(m)) for m in plan.methods},
                  {m: METRICS.get(m) for m in plan.metrics}, plan.params, plan.metrics, plan.metric_options, plan.seed,
                  plan.batch_size, plan.fast, plan.target,
                  {it.name: plan.annotations.get(it.name) for it in plan.images
                   if plan.annotations is not None and plan.annotations.get(it.name) is not None}, plan.convert)
    bar = tqdm(total=total, initial=before, desc="evaluate", unit="task", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    counts = {"ran": 0, "images": 0}

    def on_output(o: Output) -> None:
        if any(k in store.scan_result.keys for k in o.keys):  # never written twice (a late duplicate result)
            return
        _write_extras(out, o, images_info)
        meta = {n: [v["digest"], *(v["stat"] or [None, None])] for n, v in o.images.items()}
        store.write(o.columns, o.keys, meta, o.task.index)
        counts["ran"] += len(o.keys)
        counts["images"] += o.model_images
        bar.update(len(o.keys))
        bar.set_postfix_str(f"{o.task.method}@{o.task.resolution}", refresh=False)

    try:
        eng.run(ctx, jobs, on_output)
    finally:
        bar.close()
    result = EvalResult(out, run, skipped_methods=plan.skipped_methods, tasks_total=total, tasks_done_before=before,
                        tasks_run=counts["ran"], rows_dropped=sc.dropped, model_images=counts["images"])
    result.files = {"run": run_path, "parts": store.dir}
    store.compact()  # many small parts -> a few large ones (faster scans and reports); a no-op for small runs
    if plan.shard is None and result.complete:
        finish(store, run, out, result, csv=csv, report=report)
    return result


def finish(store: Store, run: dict, out: str, result: EvalResult, *, csv: bool | None, report: bool) -> None:
    """A complete run's exports: ``results.csv`` (``csv``; None: when it has at most
    :data:`CSV_AUTO_ROWS` rows) and the report; their paths go into ``result.files``."""
    if csv or (csv is None and store.scan_result.rows <= CSV_AUTO_ROWS):
        export_csv(store, run, os.path.join(out, "results.csv"))
        result.files["results"] = os.path.join(out, "results.csv")
    if report:
        from .report import write_report

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
    from PIL import Image

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
