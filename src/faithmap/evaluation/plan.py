"""The plan of an evaluation: its inputs, targets, settings and tasks, checked before anything runs.

A *task* is (method, resolution, a batch of up to ``batch_images`` images). Batches are cut from
the image list in order, the same way for every method, so a partial run already compares every
method on its first images and the batch an image falls into is a property of the plan, not of the
engine, shard or worker that runs it. Each image draws its randomness from its own seed,
:func:`image_seed` of (image name, method, resolution, ``--seed``; the registered method, so the
variants ``method:name`` of an ablation table draw the same noise), handed to the method (and, with
the metric's name mixed in, to every stochastic metric) for that image alone: an image's rows do
not depend on its batch's other images, on the shard or on the engine.

The settings arrive checked (:class:`.config.RunConfig`); what needs the registries' parameters, the
model or the images (parameters, resolutions, targets, labels, annotations) is checked here, before
the output directory is touched. The plan holds the config; the worker's :class:`~.worker.Context`
is derived from the plan (:meth:`Plan.context`), with the batch size resolved once.
"""


from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..api import as_classifier
from ..core.batching import resolve_batch_size
from ..core.device import resolve_device
from ..core.scores import resolve_targets
from ..data import ImageRecord, gather, resolve_labels, select
from ..data.annotations import Annotations, load_annotations, resolve_classes, sample_annotations
from ..errors import FaithmapError
from ..models import DEFAULT_MODEL
from ..models import load as load_named_model
from ..registry import METHODS, METRICS
from . import presets as _presets
from .config import DEFAULT_RESOLUTION, RunConfig, default_methods, default_metrics
from .tasks import NATIVE, ModelSpec, Task, model_description, image_seed, photo_digest, record_stat, task_key
from .worker import Context

__all__ = ["EvalNote", "Plan", "Task", "build", "image_seed", "photo_digest", "record_stat", "task_key"]
RUNNER_PARAMS = ("resolution", "seed", "batch_size")
"""Method parameters the runner sets itself (from --resolution, --seed, --batch-size)."""


class EvalNote(UserWarning):
    """Something a person should know about the run they started (``faithmap evaluate`` prints it as one
    ``faithmap: note:`` line)."""


def __getattr__(name: str):
    if name == "DEFAULT_METRICS":  # derived from the registry when read (metrics registered with default=True)
        return tuple(default_metrics())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
def load_model(cfg: RunConfig):
    """The Classifier of ``cfg.model`` (a name, a Classifier or a torch module) on ``cfg.device``."""
    model, device = cfg.model, cfg.device
    if isinstance(model, str) or model is None:
        clf = load_named_model(model or DEFAULT_MODEL, weights=cfg.weights, device=resolve_device(device),
                               **model_description(cfg))
    else:
        clf = as_classifier(model)
        if device not in (None, "auto"):
            clf = clf.to(resolve_device(device))
    if cfg.resize:
        clf.resize = cfg.resize
    return clf

def model_fingerprint(model) -> str:
    """The model's name, normalisation (``--mean``/``--std`` change every number) and weights, hashed."""
    h = hashlib.sha1(str(model.name).encode())
    for stat in (model.mean, model.std):
        h.update(torch.as_tensor(stat).detach().cpu().to(torch.float64).contiguous().numpy().tobytes())
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).to(torch.float64).numpy().tobytes() if v.is_floating_point()
                 else v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
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
        spec.check(p)  # types, ranges and the method's own checks, before anything runs
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
            if not METRICS.get(name).takes(a):
                raise FaithmapError(f"metric {name} has no parameter {a!r}")
            opts[name][a] = b
    for flag, value in (("tolerance", tolerance), ("min_score", min_score)):
        if value is None:
            continue
        takers = [m for m in metrics if METRICS.get(m).takes(flag)]
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
        METRICS.get(m).check(o)  # types and ranges, before anything runs
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
class PresetInfo:
    """What a preset adds to a run: its name, the paper's row label of each method, the methods it names
    that are not registered (skipped)."""

    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    skipped_methods: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """Everything a run needs, checked: the config, and what it resolves to (methods, metrics, parameters,
    images, targets, the model, the batch size) and the tasks of this shard."""

    config: RunConfig
    methods: list[str]  # run names: registered methods, or variants "method:name"
    resolutions: list[int]
    metrics: list[str]
    params: dict[str, dict]
    metric_options: dict[str, dict]
    images: list[ImageRecord]
    annotations: Annotations | None
    model: Any  # the loaded Classifier (the driver's copy)
    target: Any  # "top1", a class index or name, "annotated", "label"
    batch_size: int  # resolved once: what every method and metric gets
    batch_images: int
    settings: dict
    preset: PresetInfo = field(default_factory=PresetInfo)
    tasks: list[Task] = field(default_factory=list)  # this shard's tasks

    @property
    def labels(self) -> dict[str, str]:
        return self.preset.labels

    @property
    def skipped_methods(self) -> list[str]:
        return self.preset.skipped_methods

    @property
    def model_spec(self) -> ModelSpec | None:
        """How workers load the model themselves (None: the model was given as an object: ship it)."""
        return ModelSpec.of(self.config)

    def keys(self, task: Task) -> list[str]:
        return [task_key(self.images[i].name, task.method, task.resolution) for i in task.images]

    def saves(self, i: int) -> bool:
        return self.config.save_maps == -1 or i < self.config.save_maps

    def context(self, loads_model: bool) -> Context:
        """What every worker needs once; ``loads_model``: the engine's workers load a named model themselves."""
        spec = self.model_spec
        ann = self.annotations
        return Context(
            model=spec if (loads_model and spec is not None) else self.model,
            methods={_presets.base_method(m): METHODS.get(_presets.base_method(m)) for m in self.methods},
            metrics={m: METRICS.get(m) for m in self.metrics}, params=self.params,
            metric_options=self.metric_options, batch_size=self.batch_size, target=self.target,
            annotations={it.name: ann.get(it.name) for it in self.images
                         if ann is not None and ann.get(it.name) is not None},
            config=self.config.for_workers())


def resolve_target(target, clf, ann, items) -> Any:
    """The target mode of a run: "label" (every image labelled, within the model's classes), "annotated",
    "top1", or a class index or name checked against the model."""
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
    if clf.num_classes is not None and target is not None:
        resolve_targets(torch.zeros(1, clf.num_classes), target, clf.class_names)  # checks index / name
    return "top1" if target is None else (int(target) if isinstance(target, (int, np.integer)) else target)


@dataclass
class _Choice:
    """What a run evaluates before the model is known: run names, resolutions, metric names, the preset's share."""

    methods: list[str]
    resolutions: list[int]
    metrics: Any  # None (the defaults), "all" or names
    params: dict[str, dict]
    metric_params: dict[str, dict]
    preset: PresetInfo


def _choose(cfg: RunConfig) -> _Choice:
    """Methods, resolutions and metrics: those named, else the preset's, else the defaults."""
    methods, resolutions, metrics = cfg.methods, cfg.resolutions, cfg.metrics
    info, pparams, pmparams = PresetInfo(), {}, {}
    if cfg.preset:
        rp = _presets.resolve(cfg.preset)
        info = PresetInfo(rp.preset.name, dict(rp.labels), list(rp.skipped_methods))
        pparams = rp.params
        pmparams = {k: v for k, v in rp.preset.metric_params.items() if k in rp.metrics}
        if methods is None:
            if not rp.methods:
                raise FaithmapError(f"none of the methods of preset {info.name} is registered "
                                    f"({', '.join(info.skipped_methods)}); see `faithmap methods`")
            methods = rp.methods
        resolutions = resolutions or tuple(rp.preset.resolutions) or None
        metrics = rp.metrics if metrics is None else metrics
    if methods is None:
        methods = default_methods()
        warnings.warn(f"no --methods given: evaluating {', '.join(methods)} (a small default set of cheap "
                      f"methods; --methods all runs every registered method)", EvalNote, stacklevel=4)
    elif methods == "all":
        methods = METHODS.names()
    methods = list(dict.fromkeys(_presets.run_name(m) for m in methods))
    if not methods:
        raise FaithmapError("no methods to evaluate")
    return _Choice(methods, list(resolutions or [DEFAULT_RESOLUTION]), metrics, pparams, pmparams, info)


def _metric_names(metrics, ann: Annotations | None) -> list[str]:
    """The metrics to compute (None: the registry's defaults, "all": every one; those needing regions only
    with annotations), checked against what the annotations can provide."""
    if metrics is None or metrics == "all":
        pool = default_metrics() if metrics is None else METRICS.names()
        names = [m for m in pool if ann is not None or not METRICS.get(m).localises]
    else:
        names = list(dict.fromkeys(metrics))
    if not names:
        raise FaithmapError("no metrics to compute")
    for m in names:
        spec = METRICS.get(m)
        if spec.localises and ann is None:
            raise FaithmapError(f"metric {m} needs ground-truth {'/'.join(n for n in spec.needs if n != 'explain')}: "
                                f"pass --annotations FILE (the sample photos have bundled boxes)")
    return names


def _annotations(cfg: RunConfig, items: list[ImageRecord]) -> tuple[Annotations | None, bool]:
    """(annotations, implicit): the file's, or the bundled boxes when every image is a sample photo."""
    if isinstance(cfg.annotations, Annotations):
        return cfg.annotations, False
    if cfg.annotations:
        return load_annotations(os.fspath(cfg.annotations)), False
    if all(it.is_sample for it in items):
        return sample_annotations(), True  # ImageNet classes: dropped for other models (_fit_model)
    return None, False


def _check_resolutions(methods: list[str], resolutions: list[int], clf) -> None:
    for m in methods:
        spec = METHODS.get(_presets.base_method(m))
        if spec.resolution == "mask":
            bad = [r for r in resolutions if r < spec.min_resolution or r > clf.input_size]
            if bad:
                raise FaithmapError(f"method {m} cannot use resolution {bad[0]}: choose {spec.min_resolution} to "
                                    f"{clf.input_size}")


def _drop_sample_boxes(clf, metrics: list[str], named: bool) -> list[str]:
    """The bundled sample boxes name ImageNet classes: without them (another model), the default metrics
    leave out those that need regions; named ones are an error."""
    if named:
        loc = [m for m in metrics if METRICS.get(m).localises]
        if loc:
            raise FaithmapError(f"metric {loc[0]} needs annotations for this {clf.num_classes}-class model: the "
                                f"bundled sample boxes name ImageNet classes; pass --annotations FILE")
        return metrics
    return [m for m in metrics if not METRICS.get(m).localises]


def _matched(ann: Annotations | None, items: list[ImageRecord], clf, given: bool) -> dict:
    """Image name -> its annotation (classes resolved now; boxes are mapped when each image loads)."""
    matched = {}
    if ann is None:
        return matched
    for it in items:
        a = ann.get(it.name)
        if a is not None:
            matched[it.name] = a
            for obj in a.objects:
                resolve_classes(obj, clf.class_names, clf.num_classes, f"annotation of {a.name}: ")
    if given and not matched:
        raise FaithmapError(f"none of the {len(items)} images has annotations in {os.path.basename(ann.source)} "
                            f"(images are matched by file name without extension)")
    return matched


def _explained(target_mode, items: list[ImageRecord], matched: dict, clf) -> list[int]:
    """The images that get tasks: all, or with target 'annotated' those with an annotated class of the model."""
    if target_mode != "annotated":
        return list(range(len(items)))
    explained = [i for i, it in enumerate(items) if it.name in matched and any(
        resolve_classes(o, clf.class_names, clf.num_classes) for o in matched[it.name].objects)]
    if not explained:
        raise FaithmapError("no image has an annotated class to explain (target 'annotated' needs 'classes' or "
                            "category names that are class names of the model)")
    return explained


def _settings(cfg: RunConfig, clf, metrics, mparams, mopts, target_mode, bs: int, bi: int,
              ann) -> dict:
    """The settings a run binds once it has a finished task (a resume with others is refused)."""
    return {
        "model": clf.name, "model_fingerprint": model_fingerprint(clf), "weights": cfg.weights,
        "input_size": clf.input_size, "resize": getattr(clf, "resize", "crop"), "seed": cfg.seed,
        "fast": cfg.fast, "params": _jsonable(mparams), "metrics": metrics, "metric_options": _jsonable(mopts),
        "target": str(target_mode), "batch_size": bs, "batch_images": bi,
        "annotations": None if ann is None else {"source": os.path.basename(ann.source), "format": ann.format,
                                                 "sha1": ann.digest},
    }


def _tasks(methods: list[str], resolutions: list[int], explained: list[int], bi: int, shard) -> list[Task]:
    """Every task of the run (batches of ``bi`` images cut in order, each method at each of its
    resolutions), then this shard's."""
    grids = {m: METHODS.get(_presets.base_method(m)).resolution for m in methods}
    all_tasks = []
    for start in range(0, len(explained), bi):
        batch = tuple(explained[start:start + bi])
        for m in methods:
            for r in (resolutions if grids[m] == "mask" else [NATIVE]):
                all_tasks.append(Task(len(all_tasks), m, str(r), batch))
    return [t for t in all_tasks if shard is None or t.index % shard[1] == shard[0] - 1]


def _note_labels(cfg: RunConfig, items: list[ImageRecord]) -> None:
    if cfg.target is None and any(it.label is not None for it in items):
        warnings.warn("the images have labels, but the target explained is each image's top-1 prediction; "
                      "--target label explains the labels", EvalNote, stacklevel=4)


def build(config: RunConfig) -> Plan:
    """Check what ``config`` needs beyond itself (see the module docstring) and make the plan."""
    cfg = config
    choice = _choose(cfg)
    wants_label = isinstance(cfg.target, str) and cfg.target.strip().lower() == "label"
    items = gather_inputs(cfg.images, cfg.labels, require_labels=wants_label)
    ann, implicit = _annotations(cfg, items)
    metrics = _metric_names(choice.metrics, ann)
    mopts = metric_options(metrics, {**choice.metric_params, **(cfg.metric_params or {})}, cfg.tolerance,
                           cfg.min_score)
    mparams = method_params(choice.methods, cfg.params, cfg.fast, choice.params)
    clf = load_model(cfg)
    bs = resolve_batch_size(cfg.batch_size, clf.device)
    bi = cfg.batch_images or bs
    _check_resolutions(choice.methods, choice.resolutions, clf)
    if implicit and clf.num_classes != 1000:  # the sample boxes name ImageNet classes
        ann = None
        metrics = _drop_sample_boxes(clf, metrics, named=choice.metrics is not None)
        mopts = {m: o for m, o in mopts.items() if m in metrics}
    items = select_inputs(items, clf, limit=cfg.limit, sample=cfg.sample, seed=cfg.seed)
    target_mode = resolve_target(cfg.target, clf, ann, items)
    _note_labels(cfg, items)
    matched = _matched(ann, items, clf, given=bool(cfg.annotations))
    explained = _explained(target_mode, items, matched, clf)
    settings = _settings(cfg, clf, metrics, mparams, mopts, target_mode, bs, bi, ann)
    return Plan(cfg, choice.methods, choice.resolutions, metrics, mparams, mopts, items, ann, clf, target_mode, bs,
                bi, settings, choice.preset, _tasks(choice.methods, choice.resolutions, explained, bi, cfg.shard))
