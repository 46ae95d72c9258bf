"""The plan of an evaluation: its inputs, targets, settings and tasks, checked before anything runs.

A *task* is (method, resolution, a batch of up to ``batch_images`` images). Batches are cut from
the image list in order, the same way for every method, so a partial run already compares every
method on its first images and the batch an image falls into is a property of the plan, not of the
engine, shard or worker that runs it. Each image draws its randomness from its own seed,
:func:`image_seed` of (image name, method, resolution, ``--seed``; the registered method, so the
variants ``method:name`` of an ablation table draw the same noise), handed to the method (and, with
the metric's name mixed in, to every stochastic metric) for that image alone: an image's rows do
not depend on its batch's other images, on the shard or on the engine.

Everything a user can get wrong (names, parameters, resolutions, targets, annotations, seeds) is
checked here, before the output directory is touched.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..core.batching import resolve_batch_size
from ..core.device import resolve_device
from ..data import ImageRecord, gather, resolve_labels, select
from ..data.annotations import Annotations, load_annotations, resolve_classes, sample_annotations
from ..errors import FaithmapError
from ..registry import METHODS, METRICS
from . import presets as _presets

KNOWN_NEEDS = ("explain", "boxes", "masks")
DEFAULT_METRICS = ("deletion", "insertion", "overall", "average_drop", "increase_confidence", "pointing")
"""Metrics scored when none are named (those registered; localisation ones only with annotations)."""
NATIVE = "native"
RUNNER_PARAMS = ("resolution", "seed", "batch_size")
"""Method parameters the runner sets itself (from --resolution, --seed, --batch-size)."""
SET_LEVEL_METRICS = frozenset({"sufficiency"})
"""Metrics whose score of one image depends on the other images of its call (scored one image at a time)."""
MAX_SEED = 2**64 - 1


# ----------------------------------------------------------------------------------------------
# small parsers
# ----------------------------------------------------------------------------------------------
def split_names(value) -> list[str]:
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
    for v in split_names(value):
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


def parse_seed(seed) -> int:
    """``--seed``: an integer from 0 to 2**64 - 1 (what a torch generator takes)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise FaithmapError(f"seed must be an integer from 0 to 2**64-1, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise FaithmapError(f"seed must be an integer from 0 to 2**64-1 (64 bits), got {int(seed)}")
    return int(seed)


def parse_count(value, what: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise FaithmapError(f"{what} must be a whole number of at least 1, got {value!r}")
    return int(value)


def image_seed(seed: int, image: str, method: str, resolution: str, salt: str = "") -> int:
    """The seed of one image's randomness: a 63-bit hash of (seed, image, method, resolution[, salt]).

    ``salt`` is a metric's name for the seed of that metric's draws (so a metric's noise is not the
    method's noise). Independent of batches, shards, workers and engines by construction.
    """
    h = hashlib.blake2b(json.dumps([int(seed), str(image), str(method), str(resolution), salt]).encode(),
                        digest_size=8)
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


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


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def record_stat(rec: ImageRecord) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file record, None for sample photos and in-memory images."""
    if rec.path is None:
        return None
    st = os.stat(rec.path)
    return int(st.st_size), int(st.st_mtime_ns)


def photo_hw(photo) -> tuple[int, int]:
    if isinstance(photo, np.ndarray):
        return int(photo.shape[0]), int(photo.shape[1])
    if isinstance(photo, torch.Tensor):
        return int(photo.shape[-2]), int(photo.shape[-1])
    if hasattr(photo, "size"):
        w, h = photo.size
        return int(h), int(w)
    raise FaithmapError(f"cannot use {type(photo).__name__} as an image")


def photo_digest(photo) -> str:
    """A fingerprint of the pixels (SHA-1 of shape, dtype and bytes), 20 hex digits."""
    arr = photo.detach().cpu().numpy() if isinstance(photo, torch.Tensor) else np.asarray(photo)
    h = hashlib.sha1(str((arr.shape, str(arr.dtype))).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


def gather_inputs(images, labels=None, *, require_labels: bool = False) -> list[ImageRecord]:
    """The evaluation's images, listed by the one gatherer (:func:`faithmap.data.gather`): files,
    folders, class-folder trees, a labels file, sample photos, ``(name, photo)`` pairs,
    ``(name, photo, label)`` triples or a dict. Nothing is decoded; the labels are resolved to the
    model's classes, and the sample drawn, by :func:`select_inputs` once the model is loaded."""
    if (isinstance(images, (list, tuple)) and images
            and all(isinstance(p, tuple) and len(p) == 3 for p in images)):
        if labels is not None:
            raise FaithmapError("give labels in the (name, photo, label) triples or as labels=, not both")
        labels = {str(p[0]): p[2] for p in images if p[2] is not None} or None
        images = [(p[0], p[1]) for p in images]
    return gather(images, labels, require_labels=require_labels)


def select_inputs(records: list[ImageRecord], clf, *, limit=None, sample=None, seed: int = 0) -> list[ImageRecord]:
    """Labels resolved to ``clf``'s classes (every bad one refused, also outside the sample), then the
    seeded ``sample`` and the first ``limit`` (:func:`faithmap.data.select`)."""
    if any(r.raw_label is not None for r in records):
        resolve_labels(records, clf.class_names, clf.num_classes, required=True)
    return select(records, limit=limit, sample=sample, seed=seed)


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model itself (a name, weights, device, resize), instead of receiving it pickled."""

    name: str
    weights: str | None
    device: str | None
    resize: str | None

    def load(self, device: str | None = None):
        from .. import models

        clf = models.load(self.name, weights=self.weights, device=resolve_device(device or self.device))
        if self.resize:
            clf.resize = self.resize
        return clf


def load_model(model, weights, device, resize):
    from .. import models
    from ..api import as_classifier

    if resize and resize not in ("crop", "squash"):
        raise FaithmapError(f"resize must be crop or squash, got {resize!r}")
    if isinstance(model, str) or model is None:
        clf = models.load(model or models.DEFAULT_MODEL, weights=weights, device=resolve_device(device))
    else:
        clf = as_classifier(model)
        if device not in (None, "auto"):
            clf = clf.to(resolve_device(device))
    if resize:
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
def accepts(fn, name: str) -> bool:
    sig = inspect.signature(fn)
    return name in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def names_param(fn, name: str) -> bool:
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
            if not names_param(METRICS.get(name).fn, a):
                raise FaithmapError(f"metric {name} has no parameter {a!r}")
            opts[name][a] = b
    for flag, value in (("tolerance", tolerance), ("min_score", min_score)):
        if value is None:
            continue
        takers = [m for m in metrics if names_param(METRICS.get(m).fn, flag)]
        if not takers:
            raise FaithmapError(f"--{flag.replace('_', '-')} applies to the pointing game; no selected metric takes it")
        for m in takers:
            opts[m].setdefault(flag, value)
    for m, o in opts.items():
        if "tolerance" in o and (isinstance(o["tolerance"], bool) or not isinstance(o["tolerance"], (int, float))
                                 or not math.isfinite(o["tolerance"]) or o["tolerance"] < 0):
            raise FaithmapError(f"tolerance must be a number of pixels >= 0, got {o['tolerance']!r}")
        if "min_score" in o and o["min_score"] is not None and not 0 <= float(o["min_score"]) < 1:
            raise FaithmapError(f"min_score must be a probability in [0, 1), got {o['min_score']!r}")
    return opts


def settings_diff(a: dict, b: dict, *, ignore: Sequence[str] = ()) -> list[str]:
    """Names of the settings that differ; method parameters are compared for the methods both runs have."""
    def same(x, y):
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)

    diff = [k for k in sorted(set(a) | set(b)) if k != "params" and k not in ignore and not same(a.get(k), b.get(k))]
    pa, pb = a.get("params") or {}, b.get("params") or {}
    diff += [f"params of {m}" for m in sorted(set(pa) & set(pb)) if not same(pa[m], pb[m])]
    return diff


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One unit of work: a method at one resolution on a batch of images (indices into the plan's images)."""

    index: int  # position in the whole (unsharded) plan
    method: str
    resolution: str  # str(int) for mask methods, "native" otherwise
    images: tuple[int, ...]


def task_key(image: str, method: str, resolution: str | int) -> str:
    """The key of one image's share of a task: ``image|method|resolution``."""
    return f"{image}|{method}|{resolution}"


@dataclass
class Plan:
    """Everything a run needs, checked: what to run on what, with which settings."""

    methods: list[str]
    resolutions: list[int]
    metrics: list[str]
    params: dict[str, dict]
    metric_options: dict[str, dict]
    images: list[ImageRecord]
    annotations: Annotations | None
    model: Any  # the loaded Classifier (the driver's copy)
    model_spec: ModelSpec | None  # how workers load it themselves (None: ship the Classifier)
    target: Any
    seed: int
    batch_size: int
    batch_images: int
    fast: bool
    shard: tuple[int, int] | None
    save_maps: int
    settings: dict
    skipped_methods: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # method -> paper label (presets)
    preset: str | None = None
    tasks: list[Task] = field(default_factory=list)  # this shard's tasks
    convert: bool = False  # grayscale, RGBA and 16-bit files converted to 8-bit RGB when decoded

    def keys(self, task: Task) -> list[str]:
        return [task_key(self.images[i].name, task.method, task.resolution) for i in task.images]

    def saves(self, i: int) -> bool:
        return self.save_maps == -1 or i < self.save_maps


def _resolve_target(target, clf, ann, items) -> Any:
    from ..core.scores import resolve_targets

    if isinstance(target, str) and target.strip().lower() in ("annotated", "label"):
        mode = target.strip().lower()
        if mode == "label":
            missing = [it.name for it in items if it.label is None]
            if missing:
                raise FaithmapError(f"--target label needs a label for every image; {missing[0]} has none "
                                    f"(give labelled images: an ImageFolder tree or --labels FILE)")
            k = clf.num_classes
            bad = [it for it in items if k is not None and not 0 <= it.label < k]
            if bad:
                raise FaithmapError(f"image {bad[0].name} has label {bad[0].label}, outside the model's {k} classes")
        return mode
    if isinstance(target, bool) or (not isinstance(target, (str, int, np.integer)) and target is not None):
        raise FaithmapError(f"target must be top1, a class index or name, 'annotated' or 'label', got {target!r}")
    if clf.num_classes is not None and target is not None:
        resolve_targets(torch.zeros(1, clf.num_classes), target, clf.class_names)  # checks index / name
    return "top1" if target is None else (int(target) if isinstance(target, (int, np.integer)) else target)


def build(methods: str | Sequence[str] | None = None, images: Any = "samples", *, model: Any = "efficientnet_lite0",
          weights: str | None = None, device: str | None = "auto", resize: str | None = None, resolutions: Any = None,
          metrics: str | Sequence[str] | None = None, preset: str | None = None, fast: bool = False,
          params: dict | None = None, metric_params: dict | None = None, seed: int = 0,
          batch_size: int | None = None, batch_images: int | None = None, target: Any = "top1",
          annotations: str | Annotations | None = None, tolerance: float | None = None,
          min_score: float | None = None, shard: Any = None, save_maps: int = 12, convert: bool = False,
          labels: Any = None, limit: int | None = None, sample: int | None = None) -> Plan:
    """Check every argument of :func:`faithmap.evaluate` and make the plan (see the module docstring)."""
    skipped: list[str] = []
    paper_labels: dict[str, str] = {}  # method -> its row label in the preset's table
    preset_params: dict[str, dict] = {}
    preset_metric_params: dict[str, dict] = {}
    preset_name = None
    if preset:
        rp = _presets.resolve(preset)
        preset_name = rp.preset.name
        skipped = list(rp.skipped_methods)
        paper_labels = dict(rp.labels)
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
    method_names = [_presets.run_name(m) for m in (split_names(methods) if methods is not None else METHODS.names())]
    method_names = list(dict.fromkeys(method_names))
    if not method_names:
        raise FaithmapError("no methods to evaluate")
    res_list = parse_resolutions(resolutions) or [28]
    shard_t = parse_shard(shard)
    seed = parse_seed(seed)
    if isinstance(save_maps, bool) or not isinstance(save_maps, (int, np.integer)) or save_maps < -1:
        raise FaithmapError("save_maps must be -1 (all), 0 (none) or a number of images")

    # -- metrics and annotation file (checked before any image is read) ----------------------------
    ann: Annotations | None
    if isinstance(annotations, Annotations):
        ann = annotations
    elif annotations:
        ann = load_annotations(os.fspath(annotations))
    else:
        ann = None
    wants_label = isinstance(target, str) and target.strip().lower() == "label"
    items = gather_inputs(images, labels, require_labels=wants_label)
    implicit = ann is None and all(it.is_sample for it in items) and not annotations
    if implicit:
        ann = sample_annotations()  # the bundled boxes (ImageNet classes), dropped below for other models
    if metrics is None:
        metric_names = [m for m in DEFAULT_METRICS if m in METRICS
                        and (ann is not None or not set(METRICS.get(m).needs) & {"boxes", "masks"})]
    elif isinstance(metrics, str) and metrics.strip().lower() == "all":
        metric_names = [s.name for s in METRICS if ann is not None or not set(s.needs) & {"boxes", "masks"}]
    else:
        metric_names = list(dict.fromkeys(METRICS.canonical(m) for m in split_names(metrics)))
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
    mparams = method_params(method_names, params, fast, preset_params)

    # -- the model ------------------------------------------------------------------------------
    clf = load_model(model, weights, device, resize)
    spec_model = (ModelSpec(model or "efficientnet_lite0", weights, device, resize)
                  if isinstance(model, str) or model is None else None)
    bs = resolve_batch_size(batch_size, clf.device)
    bi = parse_count(batch_images, "batch_images", bs)
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
    items = select_inputs(items, clf, limit=limit, sample=sample, seed=seed)
    target_mode = _resolve_target(target, clf, ann, items)

    # -- annotations: matched by name, classes resolved now (boxes are mapped when each image loads) -----
    matched = {}
    if ann is not None:
        for it in items:
            a = ann.get(it.name)
            if a is not None:
                matched[it.name] = a
                for obj in a.objects:
                    resolve_classes(obj, clf.class_names, clf.num_classes, f"annotation of {a.name}: ")
        if annotations and not matched:
            raise FaithmapError(f"none of the {len(items)} images has annotations in {os.path.basename(ann.source)} "
                                f"(images are matched by file name without extension)")
    explained = list(range(len(items)))
    if target_mode == "annotated":
        explained = [i for i, it in enumerate(items) if it.name in matched and any(
            resolve_classes(o, clf.class_names, clf.num_classes) for o in matched[it.name].objects)]
        if not explained:
            raise FaithmapError("no image has an annotated class to explain (target 'annotated' needs 'classes' or "
                                "category names that are class names of the model)")

    settings = {
        "model": clf.name, "model_fingerprint": model_fingerprint(clf), "weights": weights,
        "input_size": clf.input_size, "resize": getattr(clf, "resize", "crop"), "seed": seed, "fast": bool(fast),
        "params": _jsonable(mparams), "metrics": metric_names, "metric_options": _jsonable(mopts),
        "target": str(target_mode), "batch_size": bs, "batch_images": bi,
        "annotations": None if ann is None else {"source": os.path.basename(ann.source), "format": ann.format,
                                                 "sha1": ann.digest},
    }
    plan = Plan(method_names, res_list, metric_names, mparams, mopts, items, ann, clf, spec_model, target_mode, seed,
                bs, bi, bool(fast), shard_t, int(save_maps), settings, skipped, paper_labels, preset_name,
                convert=bool(convert))
    grids = {m: METHODS.get(_presets.base_method(m)).resolution for m in method_names}
    all_tasks = []
    for start in range(0, len(explained), bi):
        batch = tuple(explained[start:start + bi])
        for m in method_names:
            for r in (res_list if grids[m] == "mask" else [NATIVE]):
                all_tasks.append(Task(len(all_tasks), m, str(r), batch))
    plan.tasks = [t for t in all_tasks if shard_t is None or t.index % shard_t[1] == shard_t[0] - 1]
    return plan
