"""``faithmap.evaluate``: run many methods on many images and score every map with many metrics.

The work is a list of *tasks*, one per (image, method, resolution) in that order (so a partial run
covers every method on its first images); mask methods run
at each requested resolution, the others once at their native grid (``resolution = "native"``).
Each task explains all targets of its image in one batch, scores the maps with every metric inside
one :func:`faithmap.core.memo.sharing` scope (so deletion, insertion and overall come from one
``deletion_insertion`` call), and appends its rows durably (see :mod:`.store`). Re-running the
same command resumes: finished tasks are skipped, a torn last task is redone. ``shard=(i, n)``
keeps every n-th task starting at the i-th, so n processes or machines can share a run; their
output directories are joined with :func:`faithmap.evaluate.merge`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from ..core.batching import model_guard, resolve_batch_size
from ..core.device import resolve_device
from ..core.io import atomic_open, save_npy, write_atomic
from ..core.memo import sharing
from ..data.annotations import (Annotations, Region, annotated_targets, box_mask, load_annotations, map_to_input,
                                regions_for_target, sample_annotations)
from ..errors import FaithmapError
from ..registry import METHODS, METRICS
from . import presets as _presets
from .store import ResultStore, TIME_COLUMNS, task_key

KNOWN_NEEDS = ("explain", "boxes", "masks")
DEFAULT_METRICS = ("deletion", "insertion", "overall", "average_drop", "increase_confidence", "pointing")
"""Metrics scored when none are named (those registered; localisation ones only with annotations)."""
NATIVE = "native"
RUNNER_PARAMS = ("resolution", "seed", "batch_size")
"""Method parameters the runner sets itself (from --resolution, --seed, --batch-size)."""


# ----------------------------------------------------------------------------------------------
# small parsers
# ----------------------------------------------------------------------------------------------
def _split(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def parse_resolutions(value) -> list[int]:
    """``"7,14,28"``, an int or a sequence -> list of ints (each at least 1)."""
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    out = []
    for v in _split(value):
        if not re.fullmatch(r"\d+", v) or int(v) < 1:
            raise FaithmapError(f"resolutions must be positive integers (e.g. 7,14,28,224), got {v!r}")
        if int(v) not in out:
            out.append(int(v))
    return out


def parse_shard(value) -> tuple[int, int] | None:
    """``"i/n"`` or ``(i, n)`` with 1 <= i <= n."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not m:
            raise FaithmapError(f"--shard expects i/n (e.g. 1/4), got {value!r}")
        i, n = int(m.group(1)), int(m.group(2))
    else:
        i, n = (int(v) for v in value)
    if n < 1 or not 1 <= i <= n:
        raise FaithmapError(f"--shard i/n needs 1 <= i <= n, got {i}/{n}")
    return i, n


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+@=-]", "_", name)


def _jsonable(v):
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, torch.Tensor):
        return _jsonable(v.tolist())
    return str(v)


def _count(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


@dataclass
class ImageItem:
    """One image of the run: its name and where to load it from (loaded on demand, not kept)."""

    name: str
    source: Any  # a path, "sample:<name>", or the photo itself (uint8 array / PIL image / (3, H, W) tensor)
    convert: bool = False
    hw: tuple[int, int] = (0, 0)
    digest: str = ""

    def photo(self):
        from ..data import load_image, load_sample

        if isinstance(self.source, str):
            if self.source.startswith("sample:"):
                return load_sample(self.source.split(":", 1)[1])
            return load_image(self.source, convert=self.convert)
        return self.source


def _photo_hw(photo) -> tuple[int, int]:
    if isinstance(photo, np.ndarray):
        return int(photo.shape[0]), int(photo.shape[1])
    if isinstance(photo, torch.Tensor):
        return int(photo.shape[-2]), int(photo.shape[-1])
    if hasattr(photo, "size"):
        w, h = photo.size
        return int(h), int(w)
    raise FaithmapError(f"cannot use {type(photo).__name__} as an image")


def _digest(photo) -> str:
    if isinstance(photo, torch.Tensor):
        arr = photo.detach().cpu().numpy()
    else:
        arr = np.asarray(photo)
    h = hashlib.sha1(str((arr.shape, str(arr.dtype))).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def gather(images, convert: bool = False) -> tuple[list[ImageItem], bool]:
    """Images from ``"samples"``, paths/directories, ``(name, photo)`` pairs or a dict; and whether they are the samples.

    Nothing is loaded here except to check that files exist; :func:`evaluate` reads each image once
    to predict and fingerprint it, and again when its tasks run.
    """
    from ..data import sample_names

    if images is None:
        images = "samples"
    samples = False
    if isinstance(images, dict):
        items = [ImageItem(str(k), v) for k, v in images.items()]
    elif isinstance(images, (list, tuple)) and images and all(isinstance(p, tuple) and len(p) == 2 for p in images):
        items = [ImageItem(str(k), v) for k, v in images]
    else:
        paths = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(p) for p in images]
        if paths in ([], ["samples"]):
            paths = [f"sample:{n}" for n in sample_names()]
        samples = all(p.startswith("sample:") for p in paths)
        files: list[str] = []
        for p in paths:
            if p.startswith("sample:"):
                files.append(p)
            elif os.path.isdir(p):
                found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS))
                if not found:
                    raise FaithmapError(f"no images found in directory {p}")
                files.extend(found)
            elif not os.path.exists(p):
                raise FaithmapError(f"no such file: {p}")
            else:
                files.append(p)
        seen: dict[str, int] = {}
        items = []
        for f in files:
            stem = f.split(":", 1)[1] if f.startswith("sample:") else os.path.splitext(os.path.basename(f))[0]
            seen[stem] = seen.get(stem, 0) + 1
            items.append(ImageItem(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}", f, convert))
    if not items:
        raise FaithmapError("no images to evaluate")
    names = [it.name for it in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FaithmapError(f"image names must be unique; repeated: {', '.join(dup[:5])}")
    return items, samples


def _load_model(model, weights, device, resize):
    from .. import models
    from ..api import as_classifier

    if isinstance(model, str) or model is None:
        clf = models.load(model or models.DEFAULT_MODEL, weights=weights, device=resolve_device(device))
    else:
        clf = as_classifier(model)
        if device not in (None, "auto"):
            clf = clf.to(resolve_device(device))
    if resize:
        if resize not in ("crop", "squash"):
            raise FaithmapError(f"resize must be crop or squash, got {resize!r}")
        clf.resize = resize
    return clf


def model_fingerprint(model) -> str:
    h = hashlib.sha1(str(model.name).encode())
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).to(torch.float64).numpy().tobytes() if v.is_floating_point()
                 else v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
def _accepts(fn, name: str) -> bool:
    sig = inspect.signature(fn)
    return name in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _names(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def method_params(methods: Sequence[str], params: dict | None, fast: bool, extra: dict[str, dict] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Per-method keyword arguments: ``fast`` settings, then shared params, then per-method ones.

    ``params`` maps a parameter to a value (given to every method that takes it) or a method name
    to a dict of its parameters. A parameter that none of the methods takes is an error.
    """
    shared_p, per = {}, {}
    for k, v in (params or {}).items():
        if isinstance(v, dict) and _presets.is_run_name(k):  # a method or a variant "method:name"
            per.setdefault(_presets.run_name(k), {}).update(v)
        else:
            shared_p[k] = v
    for k, v in (extra or {}).items():
        per.setdefault(k, {}).update({a: b for a, b in v.items() if a not in per.get(k, {})})
    for m in per:
        if m not in methods:
            raise FaithmapError(f"parameters were given for method {m}, which is not being evaluated")
    for k in shared_p:
        if not any(k in METHODS.get(_presets.base_method(m)).params for m in methods):
            raise FaithmapError(f"no method being evaluated has a parameter {k!r}")
    out = {}
    for m in methods:
        spec = METHODS.get(_presets.base_method(m))
        known = spec.params
        # the runner sets the resolution of mask methods (and seed, batch size) itself
        p = {k: v for k, v in spec.fast.items() if k in known and k not in RUNNER_PARAMS} if fast else {}
        given = {k: v for k, v in shared_p.items() if k in known}
        for k, v in per.get(m, {}).items():
            if k not in known:
                raise FaithmapError(f"method {m} has no parameter {k!r}; it takes: {', '.join(known) or 'none'}")
            given[k] = v
        taken = [k for k in given if k in RUNNER_PARAMS]
        if taken:
            raise FaithmapError(f"give {taken[0]} with --{taken[0].replace('_', '-')}, not as a method parameter")
        p.update(given)
        out[m] = p
    return out


def metric_options(metrics: Sequence[str], metric_params: dict | None, tolerance, min_score) -> dict[str, dict]:
    """Per-metric keyword options, checked against each metric's signature."""
    opts: dict[str, dict] = {m: {} for m in metrics}
    for k, v in (metric_params or {}).items():
        name = METRICS.canonical(k)
        if name not in opts:
            raise FaithmapError(f"options were given for metric {name}, which is not being computed")
        if not isinstance(v, dict):
            raise FaithmapError(f"metric options for {name} must be a dict of parameter -> value")
        for a, b in v.items():
            if not _names(METRICS.get(name).fn, a):
                raise FaithmapError(f"metric {name} has no parameter {a!r}")
            opts[name][a] = b
    for flag, value in (("tolerance", tolerance), ("min_score", min_score)):
        if value is None:
            continue
        takers = [m for m in metrics if _names(METRICS.get(m).fn, flag)]
        if not takers:
            raise FaithmapError(f"--{flag.replace('_', '-')} applies to the pointing game; no selected metric takes it")
        for m in takers:
            opts[m].setdefault(flag, value)
    for m, o in opts.items():
        if "tolerance" in o and (not isinstance(o["tolerance"], (int, float)) or o["tolerance"] < 0):
            raise FaithmapError(f"tolerance must be a number of pixels >= 0, got {o['tolerance']!r}")
        if "min_score" in o and o["min_score"] is not None and not 0 <= float(o["min_score"]) < 1:
            raise FaithmapError(f"min_score must be a probability in [0, 1), got {o['min_score']!r}")
    return opts


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
@dataclass
class Task:
    method: str
    resolution: str  # str(int) for mask methods, "native" otherwise
    image: int  # index into the image list

    def key(self, images: Sequence[ImageItem]) -> str:
        return task_key(images[self.image].name, self.method, self.resolution)


@dataclass
class EvalResult:
    """What :func:`evaluate` did and where it wrote it."""

    out: str
    rows: list[dict[str, str]]
    curves: list[dict]
    run: dict
    files: dict[str, str] = field(default_factory=dict)
    skipped_methods: list[str] = field(default_factory=list)
    tasks_total: int = 0
    tasks_done_before: int = 0
    tasks_run: int = 0
    rows_dropped: int = 0
    markdown: str = ""

    @property
    def complete(self) -> bool:
        return self.tasks_done_before + self.tasks_run >= self.tasks_total

    def summary(self):
        from .stats import summarize

        return summarize(self.rows, self.run["methods"], self.run["resolutions"] + [NATIVE], self.run["metrics"],
                         {m: METRICS.get(m).aggregate if m in METRICS else "mean" for m in self.run["metrics"]})


def _settings_equal(a: dict, b: dict) -> list[str]:
    """Names of the settings that differ; method parameters are compared for the methods both runs have."""
    def same(x, y):
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)

    diff = [k for k in sorted(set(a) | set(b)) if k != "params" and not same(a.get(k), b.get(k))]
    pa, pb = a.get("params") or {}, b.get("params") or {}
    diff += [f"params of {m}" for m in sorted(set(pa) & set(pb)) if not same(pa[m], pb[m])]
    return diff


def evaluate(methods: str | Sequence[str] | None = None, images: Any = "samples", *, out: str = "faithmap_eval",
             model: Any = "efficientnet_lite0", weights: str | None = None, device: str | None = "auto",
             resize: str | None = None, resolutions: Any = None, metrics: str | Sequence[str] | None = None,
             preset: str | None = None, fast: bool = False, params: dict | None = None,
             metric_params: dict | None = None, seed: int = 0, batch_size: int | None = None, target: Any = "top1",
             annotations: str | Annotations | None = None, tolerance: float | None = None,
             min_score: float | None = None, shard: Any = None, overwrite: bool = False, report: bool = True,
             progress: bool = True, save_maps: int = 12, convert: bool = False) -> EvalResult:
    """Evaluate ``methods`` on ``images`` with ``metrics``; write ``results.csv`` and a report to ``out``.

    ``methods``: names (a list or ``"a,b"``; default: the preset's, else every registered method).
    ``images``: ``"samples"`` (the six bundled photos), a directory, image paths, ``(name, photo)``
    pairs or a dict. ``resolutions``: mask resolutions (default 28) for methods whose grid is a
    parameter; other methods run once at their native grid. ``metrics``: names or ``"all"``
    (default :data:`DEFAULT_METRICS` that are registered; localisation metrics only with
    annotations). ``preset``: a table of one of the papers (:mod:`.presets`); explicit arguments
    override it. ``fast``: each method's quick settings. ``params``: method parameters, shared
    (``{"iterations": 5}``) or per method (``{"igos": {"iterations": 5}}``). ``target``: ``top1``,
    a class index or name, or ``annotated`` (each annotated class of each image). ``annotations``:
    a file (faithmap JSON, COCO JSON or CSV; the bundled boxes for the sample photos by default).
    ``tolerance``/``min_score``: pointing-game options. ``shard``: ``"i/n"`` runs every n-th task.
    Re-running with the same ``out`` resumes; ``overwrite`` starts afresh.
    Returns an :class:`EvalResult` (rows, curves, files written).
    """
    from tqdm import tqdm

    import faithmap

    # -- what to run ------------------------------------------------------------------------
    skipped: list[str] = []
    labels: dict[str, str] = {}
    preset_params: dict[str, dict] = {}
    preset_metric_params: dict[str, dict] = {}
    preset_name = None
    if preset:
        rp = _presets.resolve(preset)
        preset_name = rp.preset.name
        skipped = list(rp.skipped_methods)
        labels = dict(rp.labels)
        preset_params = rp.params
        preset_metric_params = {k: v for k, v in rp.preset.metric_params.items() if k in rp.metrics}
        if methods is None:
            if not rp.methods:
                raise FaithmapError(f"none of the methods of preset {preset_name} is registered "
                                    f"({', '.join(skipped)}); see `faithmap methods`")
            methods = rp.methods
        if resolutions is None:
            resolutions = list(rp.preset.resolutions) or None
        if metrics is None:
            metrics = rp.metrics
    # run names: registered methods, or variants "method:name" with their own parameters (ablation rows)
    method_names = [_presets.run_name(m) for m in (_split(methods) if methods is not None else METHODS.names())]
    method_names = list(dict.fromkeys(method_names))
    if not method_names:
        raise FaithmapError("no methods to evaluate")
    res_list = parse_resolutions(resolutions) or [28]
    shard_t = parse_shard(shard)
    if save_maps < -1:
        raise FaithmapError("save_maps must be -1 (all), 0 (none) or a number of images")

    if isinstance(target, str) and target.strip().lower() == "annotated":
        target_mode: Any = "annotated"
    else:
        target_mode = target

    # -- metrics and annotation file (checked before any image is read) ----------------------------
    ann: Annotations | None
    if isinstance(annotations, Annotations):
        ann = annotations
    elif annotations:
        ann = load_annotations(os.fspath(annotations))
    else:
        ann = None  # the bundled sample boxes are added below when the images are the samples
    items, are_samples = gather(images, convert)
    implicit = ann is None and are_samples and not annotations
    if implicit:
        ann = sample_annotations()  # the bundled boxes (ImageNet classes), dropped below for other models
    if metrics is None:
        metric_names = [m for m in DEFAULT_METRICS if m in METRICS
                        and (ann is not None or not set(METRICS.get(m).needs) & {"boxes", "masks"})]
    elif isinstance(metrics, str) and metrics.strip().lower() == "all":
        metric_names = [s.name for s in METRICS if ann is not None or not set(s.needs) & {"boxes", "masks"}]
    else:
        metric_names = list(dict.fromkeys(METRICS.canonical(m) for m in _split(metrics)))
    if not metric_names:
        raise FaithmapError("no metrics to compute")
    for m in metric_names:
        spec = METRICS.get(m)
        unknown = [n for n in spec.needs if n not in KNOWN_NEEDS]
        if unknown:
            raise FaithmapError(f"metric {m} needs {unknown[0]!r}, which evaluate cannot provide")
        if set(spec.needs) & {"boxes", "masks"} and ann is None:
            raise FaithmapError(f"metric {m} needs ground-truth {'/'.join(n for n in spec.needs if n != 'explain')}: "
                                f"pass --annotations FILE (the sample photos have bundled boxes)")
    mopts = metric_options(metric_names, {**preset_metric_params, **(metric_params or {})}, tolerance, min_score)

    # -- model and methods ----------------------------------------------------------------------
    mparams = method_params(method_names, params, fast, preset_params)
    clf = _load_model(model, weights, device, resize)
    bs = resolve_batch_size(batch_size, clf.device)
    for m in method_names:
        spec = METHODS.get(_presets.base_method(m))
        if spec.resolution == "mask":
            bad = [r for r in res_list if r < spec.min_resolution or r > clf.input_size]
            if bad:
                raise FaithmapError(f"method {m} cannot use resolution {bad[0]}: choose {spec.min_resolution} to "
                                    f"{clf.input_size}")
    if implicit and clf.num_classes != 1000:  # the sample boxes name ImageNet classes
        ann = None
        if metrics is None:
            metric_names = [m for m in metric_names if not set(METRICS.get(m).needs) & {"boxes", "masks"}]
            mopts = {m: o for m, o in mopts.items() if m in metric_names}
        loc = [m for m in metric_names if set(METRICS.get(m).needs) & {"boxes", "masks"}]
        if loc:
            raise FaithmapError(f"metric {loc[0]} needs annotations for this {clf.num_classes}-class model: the bundled "
                                f"sample boxes name ImageNet classes; pass --annotations FILE")

    # -- read every image once: size, fingerprint, prediction; map the annotations -----------------
    logit_parts: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []

    def flush():
        if pending:
            with model_guard(clf), torch.no_grad():
                logit_parts.append(clf(torch.cat(pending)).detach())
            pending.clear()

    for it in items:
        photo = it.photo()
        it.hw, it.digest = _photo_hw(photo), _digest(photo)
        pending.append(clf.preprocess(photo))
        if len(pending) >= bs:
            flush()
    flush()
    logits_t = torch.cat(logit_parts)
    probs = torch.softmax(logits_t.double(), 1)

    regions: dict[str, list[Region]] = {}
    if ann is not None:
        for it in items:
            a = ann.get(it.name)
            if a is not None:
                regions[it.name] = map_to_input(a, it.hw, clf)
        if annotations and not regions:
            raise FaithmapError(f"none of the {len(items)} images has annotations in {os.path.basename(ann.source)} "
                                f"(images are matched by file name without extension)")

    from ..core.scores import resolve_targets

    targets: list[list[int]] = []
    for i, it in enumerate(items):
        if target_mode == "annotated":
            targets.append(annotated_targets(regions.get(it.name, [])))
        else:
            targets.append([int(resolve_targets(logits_t[i:i + 1], target_mode, clf.class_names)[0])])
    if not any(targets):
        raise FaithmapError("no image has an annotated class to explain (target 'annotated' needs 'classes' or "
                            "category names that are class names of the model)")

    # -- the plan -----------------------------------------------------------------------------
    grids = {m: METHODS.get(_presets.base_method(m)).resolution for m in method_names}
    all_tasks = [Task(m, str(r) if grids[m] == "mask" else NATIVE, i)
                 for i in range(len(items)) if targets[i]
                 for m in method_names
                 for r in (res_list if grids[m] == "mask" else [NATIVE])]
    tasks = [t for j, t in enumerate(all_tasks) if shard_t is None or j % shard_t[1] == shard_t[0] - 1]

    settings = {
        "model": clf.name, "model_fingerprint": model_fingerprint(clf), "weights": weights,
        "input_size": clf.input_size, "resize": getattr(clf, "resize", "crop"), "seed": seed, "fast": bool(fast),
        "params": _jsonable(mparams), "metrics": metric_names, "metric_options": _jsonable(mopts),
        "target": str(target_mode),
        "annotations": None if ann is None else {"source": os.path.basename(ann.source), "format": ann.format,
                                                 "sha1": ann.digest},
    }

    # -- output directory: check before writing ---------------------------------------------------
    run_path = os.path.join(out, "run.json")
    old_run = None
    if os.path.exists(run_path) and not overwrite:
        try:
            with open(run_path) as fh:
                old_run = json.load(fh)
        except (OSError, ValueError):
            raise FaithmapError(f"{run_path} is unreadable; use another --out or --overwrite") from None
        diff = _settings_equal(old_run.get("settings", {}), settings)
        if diff:
            raise FaithmapError(f"{out} holds a run with other settings ({', '.join(diff)}); "
                                f"use another --out, or --overwrite to start afresh")
        old_images = old_run.get("image_digests", {})
        changed = [it.name for it in items if it.name in old_images and old_images[it.name] != it.digest]
        if changed:
            raise FaithmapError(f"image {changed[0]} differs from the one this run began with; use another --out")
    elif os.path.exists(out) and not os.path.isdir(out):
        raise FaithmapError(f"--out {out} exists and is not a directory")
    elif not overwrite and os.path.isdir(out) and any(f.startswith("results") and f.endswith(".csv") for f in os.listdir(out)):
        raise FaithmapError(f"{out} holds results without run.json; use another --out or --overwrite")

    # -- from here on we write ----------------------------------------------------------------
    os.makedirs(out, exist_ok=True)
    if overwrite:
        _clear(out)
    suffix = f".shard-{shard_t[0]}-of-{shard_t[1]}" if shard_t else ""
    run = _merge_run(old_run, settings, method_names, res_list, items, labels, skipped, preset_name, __version__)
    write_atomic(run_path, json.dumps(run, indent=2).encode())
    _write_images_json(out, items, probs, targets, regions, clf, save_maps)

    store = ResultStore(out, suffix)
    dropped = store.open()
    done = store.done
    todo = [t for t in tasks if t.key(items) not in done]
    before = len(tasks) - len(todo)

    bar = tqdm(total=len(tasks), initial=before, desc="evaluate", unit="task", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    ran = 0
    cached: tuple[int, torch.Tensor] | None = None
    try:
        for t in todo:
            it = items[t.image]
            bar.set_postfix_str(f"{it.name} {t.method}@{t.resolution}", refresh=False)
            if cached is None or cached[0] != t.image:
                cached = (t.image, clf.preprocess(it.photo()))
            rows, curves = _run_task(faithmap, clf, t, it, cached[1], targets[t.image], probs[t.image],
                                     regions.get(it.name), mparams[t.method], metric_names, mopts, seed, bs, fast,
                                     out, save_maps)
            store.append_task(rows, curves)
            ran += 1
            bar.update(1)
    finally:
        bar.close()

    result = EvalResult(out, store.rows, store.curves, run, skipped_methods=skipped, tasks_total=len(tasks),
                        tasks_done_before=before, tasks_run=ran, rows_dropped=dropped)
    result.files = {"results": store.results_path, "curves": store.curves_path, "run": run_path}
    if shard_t is None and result.complete:
        rows, curves = canonical_order(store.rows, store.curves, run)
        if rows != store.rows or curves != store.curves:
            store.rewrite(rows, curves)
        result.rows, result.curves = store.rows, store.curves
    if report and shard_t is None:
        from .report import write_report

        files, md = write_report(out)
        result.files.update(files)
        result.markdown = md
    return result


def _clear(out: str) -> None:
    import shutil

    for f in os.listdir(out):
        p = os.path.join(out, f)
        if f in ("maps", "images") and os.path.isdir(p):
            shutil.rmtree(p)
        elif (f.startswith(("results", "curves", "summary", "report", "mean_curves", "heatmap_grid"))
              or f in ("run.json", "images.json")) and os.path.isfile(p):
            os.remove(p)


def _merge_run(old: dict | None, settings: dict, methods, resolutions, items, labels, skipped, preset, version) -> dict:
    old = old or {}

    def union(a, b):
        return list(dict.fromkeys(list(a or []) + list(b)))

    settings = dict(settings, params={**(old.get("settings", {}).get("params") or {}), **settings["params"]})
    digests = dict(old.get("image_digests", {}))
    digests.update({it.name: it.digest for it in items})
    return {
        "faithmap": version,
        "created": old.get("created") or _dt.datetime.now().isoformat(timespec="seconds"),
        "updated": _dt.datetime.now().isoformat(timespec="seconds"),
        "settings": settings,
        "methods": union(old.get("methods"), methods),
        "resolutions": [str(r) for r in union([int(x) for x in old.get("resolutions", [])], resolutions)],
        "images": union(old.get("images"), [it.name for it in items]),
        "image_digests": digests,
        "labels": {**old.get("labels", {}), **labels},
        "skipped_methods": union(old.get("skipped_methods"), skipped),
        "preset": preset or old.get("preset"),
        "metrics": settings["metrics"],
    }


def _write_images_json(out, items, probs, targets, regions, clf, save_maps) -> None:
    from PIL import Image

    path = os.path.join(out, "images.json")
    info = {}
    if os.path.exists(path):
        try:
            with open(path) as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            info = {}
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    for i, it in enumerate(items):
        p = probs[i]
        v, idx = p.topk(min(5, p.numel()))
        info[it.name] = {
            "sha1": it.digest, "photo_size": [it.hw[1], it.hw[0]],
            "top5": [{"class": int(j), "name": clf.class_name(int(j)), "probability": float(u)} for u, j in zip(v, idx)],
            "targets": [{"class": int(t), "name": clf.class_name(int(t)), "probability": float(p[int(t)])} for t in targets[i]],
            "regions": [{"category": r.category, "classes": list(r.classes) if r.classes is not None else None,
                         "box": [round(float(b), 3) for b in r.box], "has_mask": r.mask is not None}
                        for r in regions.get(it.name, [])],
        }
        if save_maps == -1 or i < save_maps:
            png = os.path.join(out, "images", f"{_safe(it.name)}.png")
            if not os.path.exists(png):
                pix = (clf.to_pixels(clf.preprocess(it.photo()))[0].permute(1, 2, 0).detach().cpu().numpy() * 255).round().astype(np.uint8)
                with atomic_open(png) as fh:
                    Image.fromarray(pix).save(fh, format="png")
            info[it.name]["thumbnail"] = f"images/{_safe(it.name)}.png"
    write_atomic(path, json.dumps(info, indent=1).encode())


def _run_task(faithmap, clf, t: Task, it: ImageItem, x1: torch.Tensor, tgts: list[int], prob: torch.Tensor,
              regions: list[Region] | None, params: dict, metric_names, mopts, seed, bs, fast, out, save_maps):
    """Explain one image (all its targets) with one method at one resolution; score with every metric."""
    from ..metrics.deletion import deletion_insertion

    b = len(tgts)
    x = x1.expand(b, *x1.shape[1:]).contiguous()
    target = torch.tensor(tgts, dtype=torch.long, device=x.device)
    kw = dict(params)
    kw["seed"] = seed
    kw["batch_size"] = bs
    if t.resolution != NATIVE:
        kw["resolution"] = int(t.resolution)
    method = _presets.base_method(t.method)  # t.method may be a variant "method:name"
    exp = faithmap.explain(clf, x, method, target=target, **kw)
    sal = exp.saliency.detach()
    grid = f"{sal.shape[-2]}x{sal.shape[-1]}"
    size = tuple(x.shape[-2:])

    if save_maps == -1 or t.image < save_maps:
        d = os.path.join(out, "maps", _safe(it.name))
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{_safe(t.method)}@{t.resolution}.npy")
        save_npy(path, sal.float().cpu().numpy())

    rel = [regions_for_target(regions or [], tg) for tg in tgts]
    has_region = [bool(r) for r in rel]
    categories = []
    for tg, r in zip(tgts, rel):
        cats = list(dict.fromkeys(g.category for g in r))
        categories.append("+".join(cats) if cats else clf.class_name(tg))

    def explain_fn(xx, tt):
        return faithmap.explain(clf, xx, method, target=tt, **kw).saliency

    values: dict[str, list[float]] = {}
    cost: dict[str, tuple[float, int]] = {}
    with sharing():
        for m in metric_names:
            spec = METRICS.get(m)
            loc = bool(set(spec.needs) & {"boxes", "masks"})
            idx = [i for i in range(b) if has_region[i]] if loc else list(range(b))
            vals = [float("nan")] * b
            start, snap = time.perf_counter(), clf.counter.snapshot()
            if idx:
                sel = torch.tensor(idx, device=x.device)
                xs, ss, ts = (x, sal, target) if len(idx) == b else (x[sel], sal[sel], target[sel])
                call = dict(mopts.get(m, {}))
                if _accepts(spec.fn, "batch_size"):
                    call["batch_size"] = bs
                if _names(spec.fn, "seed"):
                    call["seed"] = seed
                if "explain" in spec.needs:
                    call["explain"] = explain_fn
                if "boxes" in spec.needs:
                    call["boxes"] = [torch.tensor([g.box for g in rel[i]], dtype=torch.float32, device=x.device)
                                     for i in idx]
                if "masks" in spec.needs:
                    call["masks"] = torch.stack([_region_mask(rel[i], size) for i in idx]).to(x.device)
                res = spec.fn(clf, xs, ss, ts, **call)
                scores = res.scores if hasattr(res, "scores") else res
                scores = torch.as_tensor(scores).detach().double().cpu().reshape(-1)
                if scores.numel() != len(idx):
                    raise FaithmapError(f"metric {m} returned {scores.numel()} scores for {len(idx)} maps")
                for j, i in enumerate(idx):
                    vals[i] = float(scores[j])
            secs = time.perf_counter() - start
            values[m] = vals
            cost[m] = (secs, clf.counter.since(snap)["images"])
        curves_obj = deletion_insertion.peek(clf, x, sal, target, batch_size=bs)

    rows, recs = [], []
    key = task_key(it.name, t.method, t.resolution)
    for i, tg in enumerate(tgts):
        for m in metric_names:
            spec = METRICS.get(m)
            rows.append({
                "image": it.name, "target": tg, "target_name": clf.class_name(tg), "target_prob": float(prob[tg]),
                "category": categories[i], "method": t.method, "resolution": t.resolution, "grid": grid, "metric": m,
                "value": values[m][i], "higher_is_better": spec.higher_is_better, "seed": seed, "fast": bool(fast),
                "explain_seconds": round(exp.seconds / b, 4), "explain_images": _count(exp.counts["images"] / b),
                "explain_grad_images": _count(exp.counts["grad_images"] / b),
                "metric_seconds": round(cost[m][0] / b, 4), "metric_images": _count(cost[m][1] / b), "key": key,
            })
        if curves_obj is not None:
            recs.append({"key": key, "image": it.name, "method": t.method, "resolution": t.resolution, "grid": grid,
                         "target": tg, "fractions": curves_obj.fractions.cpu().tolist(),
                         "deletion": curves_obj.deletion[i].cpu().tolist(),
                         "insertion": curves_obj.insertion[i].cpu().tolist()})
    return rows, recs


def _region_mask(regions: list[Region], size) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.bool)
    for r in regions:
        m |= r.mask.cpu() if r.mask is not None else box_mask(r.box, size)
    return m


def canonical_order(rows: list[dict[str, str]], curves: list[dict], run: dict) -> tuple[list[dict], list[dict]]:
    """Rows and curves sorted by (image, method, resolution) in run order; a task's own order kept."""
    m_idx = {m: i for i, m in enumerate(run["methods"])}
    r_idx = {r: i for i, r in enumerate(list(run["resolutions"]) + [NATIVE])}
    i_idx = {n: i for i, n in enumerate(run["images"])}

    def k(d):
        return (i_idx.get(d["image"], len(i_idx)), m_idx.get(d["method"], len(m_idx)),
                r_idx.get(str(d["resolution"]), len(r_idx)))

    return sorted(rows, key=k), sorted(curves, key=k)


def comparable(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Rows without their wall-clock columns (what must match between runs)."""
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]
