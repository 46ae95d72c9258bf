"""``faithmap.audit``: find what a model relies on across a labelled dataset, and prove it by intervention.

The run: the settings are one :class:`~.config.AuditConfig`; :func:`.plan.build` checks the inputs
and cuts the tasks; the output folder is made and locked (:func:`faithmap.evaluation.store.run_locked`);
step 1 explains the images not yet explained through the evaluation's engines, the driver writing
each finished task as one Parquet part of the audit's columns (:data:`.worker.COLUMNS`; a killed run
resumes from its parts); step 2 reads the parts twice as they stream (:mod:`.candidates`); step 3
verifies each candidate by intervention (:mod:`.verify`); step 4 writes ``audit.json`` and
``audit.html`` (:mod:`.page`). Steps 2-4 are computed afresh from the parts on every run: re-running
with other thresholds re-reads the same explained images.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from .._version import __version__
from ..core.io import write_atomic, write_text
from ..errors import FaithmapError
from ..evaluation import config as _config
from ..evaluation.engines import make_engine
from ..evaluation.runner import check_resume, now, pending_jobs
from ..evaluation.store import Store, load_run, run_locked
from ..evaluation.worker import Output
from . import candidates as _cand
from .config import OPTIONS, AuditConfig
from .maps import window_cells
from .plan import AuditPlan, build
from .verify import QUANTITIES, verify
from .worker import COLUMNS

FILES = ("run.json", "audit.json", "audit.html")


@dataclass
class AuditResult:
    """What :func:`faithmap.audit` found and where it wrote it.

    ``candidates``: the entries of ``audit.json``, ordered by effect (the excess probability drop over
    random regions), each with ``finding`` true or false. ``model_images`` and ``seconds``: per step
    (``explain``: this call's share of step 1, resumed images excluded; ``candidates``, ``verify``, ``report``).
    """

    out: str
    candidates: list[dict]
    images: int
    files: dict[str, str] = field(default_factory=dict)
    explained_before: int = 0
    explained_now: int = 0
    model_images: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def findings(self) -> list[dict]:
        return [c for c in self.candidates if c["finding"]]

    @staticmethod
    def region(candidate: dict) -> list[float] | None:
        """A candidate's box in fractions of the image: a fixed place's region, a content cluster's median box."""
        return candidate.get("region") or candidate.get("median_box")


def audit(config: AuditConfig | None = None, /, **overrides: Any) -> AuditResult:
    plan = build(AuditConfig.make(config, **overrides))
    eng = make_engine(plan.config.engine)
    return run_locked(plan.config.out, lambda: _run(plan, eng), COLUMNS)


audit.__signature__ = _config.signature(AuditResult, OPTIONS, "AuditConfig")  # type: ignore[attr-defined]
audit.__doc__ = f"""Audit a classifier on a labelled dataset: what its maps concentrate on, verified by intervention.

``audit(config=None, /, **options)``: an :class:`~faithmap.auditing.AuditConfig` and/or its options as
keywords (an unknown name is an error listing the valid ones). Explains every image (resumable: the
same ``out`` continues), finds fixed-place and content candidates, removes each from the images where
it occurs against random regions of the same size, and writes ``audit.json`` and ``audit.html`` to
``out``. Returns an :class:`~faithmap.auditing.AuditResult`.

Options:

{_config.options_doc(OPTIONS)}
"""


# ----------------------------------------------------------------------------------------------
# step 1: explain (the output folder locked)
# ----------------------------------------------------------------------------------------------
def _open(plan: AuditPlan) -> tuple[Store, Any]:
    """The store of ``out`` scanned (and repaired); a run with other settings refused once an image is
    explained; ``run.json`` written."""
    out = plan.config.out
    if plan.config.overwrite:
        _clear(out)
    store = Store(out, COLUMNS)
    sc = store.scan(repair=True)
    run_path = os.path.join(out, "run.json")
    old = None
    if sc.keys:
        old = load_run(out) if os.path.exists(run_path) else None
        if old is None or old.get("kind") != "audit":
            raise FaithmapError(f"{out} holds parts of another run; use another --out, or --overwrite")
        check_resume(out, old, plan, sc.images, "an audit")
    run = {"faithmap": __version__, "kind": "audit", "created": (old or {}).get("created") or now(),
           "updated": now(), "settings": plan.settings, "images": [r.name for r in plan.images]}
    write_atomic(run_path, json.dumps(run, indent=1).encode())
    return store, sc


def _clear(out: str) -> None:
    for f in os.listdir(out):
        p = os.path.join(out, f)
        if f == "parts" and os.path.isdir(p):
            shutil.rmtree(p)
        elif f in FILES and os.path.isfile(p):
            os.remove(p)


def _explain(plan: AuditPlan, eng, store: Store, sc) -> tuple[int, int, int]:
    """Step 1: the images not yet explained, through ``eng``; returns (done before, done now, model images)."""
    jobs, total, before = pending_jobs(plan, sc)
    bar = tqdm(total=total, initial=before, desc="explain", unit="image", file=sys.stderr,
               disable=not plan.config.progress, dynamic_ncols=True)
    counts = {"ran": 0, "images": 0}

    def on_output(o: Output) -> None:
        if store.holds(o.keys):  # never written twice (a late duplicate result)
            return
        store.write_output(o)
        counts["ran"] += len(o.keys)
        counts["images"] += o.model_images
        bar.update(len(o.keys))

    try:
        eng.run(plan.context(eng.loads_model), jobs, on_output)
    finally:
        bar.close()
    return before, counts["ran"], counts["images"]


# ----------------------------------------------------------------------------------------------
# steps 2-4
# ----------------------------------------------------------------------------------------------
def entry(c: _cand.Candidate, clf, labelled: bool) -> dict[str, Any]:
    """One candidate of ``audit.json``: what it is, where, and what removing it did against random regions."""
    v = c.result
    d: dict[str, Any] = {
        "kind": c.kind, "scope": "all classes" if c.group == _cand.ALL else "class",
        "classes": [{"index": int(k), "name": clf.class_name(int(k)), "images": int(n)}
                    for k, n in sorted(c.classes.items(), key=lambda kv: (-kv[1], kv[0]))],
        "images": c.count, "verified_images": v.images,
    }
    if c.kind == "fixed-place":
        d.update(region=c.region, share=round(c.share, 4), expected_share=round(c.expected, 4),
                 other_classes_share=None if c.rest_share is None else round(c.rest_share, 4))
    else:
        d.update(cluster=c.cluster, median_box=c.typical_box(),
                 boxes={k: [round(float(u), 4) for u in b] for k, b in c.boxes.items()})
    d["removed"] = {q: v.removed[q].as_dict() for q in QUANTITIES}
    d["random_region"] = {q: v.random[q].as_dict() for q in QUANTITIES}
    d["effect"] = {q: v.excess[q].as_dict() for q in QUANTITIES}
    d["accuracy_against"] = "labels" if labelled else "the prediction on the intact image"
    d["finding"] = v.finding
    return d


def _streamed(store: Store, columns: list[str], rows: int, desc: str, progress: bool):
    """The parts' ``columns`` in tables of about ``rows`` rows, with a progress bar."""
    bar = tqdm(total=store.scan().rows, desc=desc, unit="image", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    try:
        for t in store.batches(columns, rows=rows):
            bar.update(t.num_rows)
            yield t
    finally:
        bar.close()


def _candidates(plan: AuditPlan, store: Store) -> tuple[list[_cand.Candidate], _cand.Summary]:
    """Step 2: the two streaming passes over the parts (:mod:`.candidates`)."""
    cfg = plan.config
    names = {r.name: i for i, r in enumerate(plan.images)}
    cols = ["image", "target", "box", "embedding", "grid_h", "grid_w", "map"]
    s = _cand.summarise(_streamed(store, cols, _cand.ROWS, "maps", cfg.progress), names, window_cells(cfg.patch),
                        cfg.seed)
    fixed = _cand.fixed_places(s, cfg.places, cfg.min_share, cfg.min_images)
    km = _cand.fit_clusters(s, cfg.clusters, cfg.min_images, cfg.seed)
    cols = ["image", "target", "target_prob", "predicted", "label", "box", "embedding"]
    content = _cand.assign(_streamed(store, cols, 4096, "candidates", cfg.progress), names, fixed, km, cfg.seed,
                           cfg.verify_images)
    return [c for c in fixed + content if c.count >= cfg.min_images], s


def _exemplar_maps(store: Store, cands: list[_cand.Candidate]) -> dict[str, np.ndarray]:
    names = sorted({e.image for c in cands if c.result.finding for e in c.result.exemplars})
    if not names:
        return {}
    t = store.table(["image", "map", "grid_h", "grid_w"], images=names)
    return {r["image"]: np.asarray(r["map"], np.float32).reshape(r["grid_h"], r["grid_w"])
            for r in t.to_pylist() if r["image"] in set(names)}


def _facts(plan: AuditPlan, res: AuditResult, s: _cand.Summary) -> list[tuple[str, str]]:
    cfg, clf = plan.config, plan.model
    return [("model", str(clf.name)), ("method", cfg.method + (f" at {plan.resolution}" if plan.resolution != "native"
                                                               else "")),
            ("images", f"{res.images} ({len(s.classes)} classes; {s.flat} maps showed nothing)"),
            ("target", plan.target), ("patch embedding", f"layer {cfg.layer}" if cfg.layer else "pixels"),
            ("candidates", f"{len(res.candidates)}, of which {len(res.findings)} findings"),
            ("model images", ", ".join(f"{k} {v}" for k, v in res.model_images.items())),
            ("seconds", ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))]


def _report(plan: AuditPlan, store: Store, cands, s, res: AuditResult) -> None:
    """Step 4: ``audit.json`` and ``audit.html``."""
    from .page import page  # lazy: matplotlib (``import faithmap`` does not load it: no font cache at import)

    out, clf = plan.config.out, plan.model
    doc = {"faithmap": __version__, "model": clf.name, "method": plan.config.method, "target": plan.target,
           "images": res.images, "classes": [clf.class_name(k) for k in s.classes], "settings": plan.settings,
           "thresholds": {k: getattr(plan.config, k) for k in ("patch", "places", "min_share", "clusters",
                                                               "min_images", "draws", "verify_images",
                                                               "bootstrap", "min_effect")},
           "model_images": res.model_images, "candidates": res.candidates}
    write_atomic(os.path.join(out, "audit.json"), json.dumps(doc, indent=1).encode())
    means = {g: s.groups[g].mean_map() for g in s.classes}
    html = page(f"faithmap audit: {clf.name}", _facts(plan, res, s), res.candidates, cands,
                _exemplar_maps(store, cands), means, clf)
    write_text(os.path.join(out, "audit.html"), html)
    res.files.update(audit=os.path.join(out, "audit.json"), page=os.path.join(out, "audit.html"))


def _run(plan: AuditPlan, eng) -> AuditResult:
    t0 = time.perf_counter()
    store, sc = _open(plan)
    before, now, explain_images = _explain(plan, eng, store, sc)
    t1 = time.perf_counter()
    cands, s = _candidates(plan, store)
    t2 = time.perf_counter()
    verify_images = verify(cands, plan)
    t3 = time.perf_counter()
    cands.sort(key=lambda c: -c.result.effect)
    res = AuditResult(plan.config.out, [entry(c, plan.model, plan.labelled) for c in cands], len(plan.images),
                      {"run": os.path.join(plan.config.out, "run.json"), "parts": store.dir}, before, now,
                      {"explain": explain_images, "verify": verify_images},
                      {"explain": t1 - t0, "candidates": t2 - t1, "verify": t3 - t2})
    _report(plan, store, cands, s, res)
    res.seconds["report"] = time.perf_counter() - t3
    return res


__all__ = ["AuditResult", "audit"]
