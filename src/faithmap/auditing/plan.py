"""The plan of an audit: its images, labels, model, method and tasks, checked before anything is written.

The images come from the evaluation's gatherer (class-folder trees, ``--labels`` files, samples,
in-memory triples), their labels resolved to the model's classes. Bad input is one line before the
output folder exists: ``--target label`` without labels, a class with fewer than 2 images, an
unknown method, and a method that gives no map for the model (the first image is explained once
here, so a CAM method on a model without a spatial layer says so now, not after the first batch).
The tasks are the evaluation's (:class:`~faithmap.evaluation.tasks.Task`: the method on a batch of
``batch_images`` images, cut in order), so the evaluation's engines and its resume run them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import check_params, explain
from ..core.batching import model_guard, resolve_batch_size
from ..data import ImageRecord
from ..errors import FaithmapError
from ..evaluation.config import DEFAULT_RESOLUTION
from ..evaluation.plan import (EvalNote, gather_inputs, load_model, method_params, model_fingerprint,
                               resolve_target, select_inputs)
from ..evaluation.tasks import NATIVE, ModelSpec, Task, image_seed, task_key
from ..evaluation.worker import Context
from ..methods.cam import capture, resolve_layer, tapped
from ..registry import METHODS
from .config import AuditConfig
from .worker import AuditWorker


@dataclass
class AuditPlan:
    """Everything the audit needs, checked: the config (its ``layer`` resolved), the images, the model,
    the target mode, the method's parameters and resolution, the batch sizes and the tasks."""

    config: AuditConfig
    images: list[ImageRecord]
    model: Any  # the loaded Classifier (the driver's copy)
    target: str  # "label" or "top1"
    params: dict[str, Any]
    resolution: str  # NATIVE, or the mask resolution of a mask method
    batch_size: int
    batch_images: int
    settings: dict
    tasks: list[Task] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return all(r.label is not None for r in self.images)

    @property
    def model_spec(self) -> ModelSpec | None:
        """How workers load the model themselves (None: the model was given as an object: ship it)."""
        return ModelSpec.of(self.config)

    def keys(self, task: Task) -> list[str]:
        return [task_key(self.images[i].name, task.method, task.resolution) for i in task.images]

    def saves(self, i: int) -> bool:  # noqa: ARG002 - the audit keeps no thumbnails in step 1
        return False

    def context(self, loads_model: bool) -> Context:
        """What every worker needs once; its jobs are handled by :class:`~.worker.AuditWorker`."""
        spec = self.model_spec
        method = self.config.method
        return Context(model=spec if (loads_model and spec is not None) else self.model,
                       methods={method: METHODS.get(method)}, metrics={}, params={method: self.params},
                       metric_options={}, batch_size=self.batch_size, target=self.target, annotations={},
                       config=self.config.for_workers(), worker_class=AuditWorker)


def _check_classes(items: list[ImageRecord], clf) -> None:
    """Each labelled class needs at least 2 images (one image says nothing about a class's maps)."""
    counts = Counter(r.label for r in items if r.label is not None)
    few = sorted(c for c, n in counts.items() if n < 2)
    if few:
        raise FaithmapError(f"class {clf.class_name(few[0])!r} has {counts[few[0]]} image; an audit needs at least 2 "
                            f"images of each class (add images, or leave the class out)")
    if len(items) < 2:
        raise FaithmapError(f"an audit needs at least 2 images, got {len(items)}")


def _resolution(cfg: AuditConfig, spec, clf) -> str:
    if spec.resolution != "mask":
        if cfg.resolution is not None:
            raise FaithmapError(f"method {spec.name} maps at its own grid ({spec.resolution}); --resolution applies "
                                f"to mask methods only")
        return NATIVE
    res = cfg.resolution or DEFAULT_RESOLUTION
    if not spec.min_resolution <= res <= clf.input_size:
        raise FaithmapError(f"method {spec.name} cannot use resolution {res}: choose {spec.min_resolution} to "
                            f"{clf.input_size}")
    return str(res)


def _layer(cfg: AuditConfig, clf, x: torch.Tensor) -> str | None:
    """The embedding layer: the one named (checked by one forward pass), else the model's CAM layer, else
    None (the patches' pixels, with a note)."""
    try:
        layer = resolve_layer(clf, cfg.layer)
        with model_guard(clf), tapped(layer, x.shape[-2:]) as tap:
            capture(clf, tap, x, 1)
        return layer.name
    except FaithmapError as exc:
        if cfg.layer is not None:
            raise
        warnings.warn(f"the model has no spatial layer to embed patches with ({exc}); the content candidates "
                      f"cluster the patches' pixels", EvalNote, stacklevel=4)
        return None


def _trial(cfg: AuditConfig, clf, first: ImageRecord, target: str, params: dict, resolution: str) -> torch.Tensor:
    """Explain the first image once: a method that gives no map for this model is refused now. Returns the
    image's model input."""
    x = clf.transform(first.load(cfg.convert)).unsqueeze(0).to(clf.device)
    spec = METHODS.get(cfg.method)
    kw = dict(params)
    if resolution != NATIVE:
        kw["resolution"] = int(resolution)
    if "seed" in spec.params:
        kw["seed"] = image_seed(cfg.seed, first.name, cfg.method, resolution)
    t = int(first.label) if target == "label" else None
    check_params(spec, kw)  # a bad parameter is said as such, not as a method that gives no map
    try:
        sal = explain(clf, x, cfg.method, target=t, **kw).saliency
    except FaithmapError as exc:
        raise FaithmapError(f"method {cfg.method} gives no map for this model: {exc}") from None
    if sal.dim() != 3 or sal.shape[0] != 1 or min(sal.shape[-2:]) < 1 or not torch.isfinite(sal).all():
        raise FaithmapError(f"method {cfg.method} gives no map for this model (a map of shape {tuple(sal.shape)}"
                            f"{'' if torch.isfinite(sal).all() else ' with NaN or infinite values'})")
    return x


def _settings(cfg: AuditConfig, clf, target: str, params: dict, resolution: str, bs: int, bi: int) -> dict:
    """What the explained images depend on: a resume with other settings is refused."""
    return {**cfg.bound, "model": clf.name, "model_fingerprint": model_fingerprint(clf), "weights": cfg.weights,
            "input_size": clf.input_size, "resize": getattr(clf, "resize", "crop"), "target": target,
            "method_params": {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                              for k, v in params.items()},
            "resolution": resolution, "batch_size": bs, "batch_images": bi}


def build(cfg: AuditConfig) -> AuditPlan:
    """Check what ``cfg`` needs beyond itself (see the module docstring) and make the plan."""
    if cfg.images is None:
        raise FaithmapError("audit needs images: --images DIR (a class-folder tree, or a folder with --labels FILE)")
    items = gather_inputs(cfg.images, cfg.labels, require_labels=cfg.target == "label")
    spec = METHODS.get(cfg.method)
    params = method_params([spec.name], cfg.params, cfg.fast)[spec.name]
    clf = load_model(cfg)
    bs = resolve_batch_size(cfg.batch_size, clf.device)
    bi = cfg.batch_images or bs
    items = select_inputs(items, clf, limit=cfg.limit, sample=cfg.sample, seed=cfg.seed)
    target = cfg.target or ("label" if items and all(r.label is not None for r in items) else "top1")
    resolve_target(target, clf, None, items)
    _check_classes(items, clf)
    resolution = _resolution(cfg, spec, clf)
    x = _trial(cfg, clf, items[0], target, params, resolution)
    cfg = dataclasses.replace(cfg, layer=_layer(cfg, clf, x), target=target)
    tasks = [Task(k, spec.name, resolution, tuple(range(s, min(s + bi, len(items)))))
             for k, s in enumerate(range(0, len(items), bi))]
    return AuditPlan(cfg, items, clf, target, params, resolution, bs, bi,
                     _settings(cfg, clf, target, params, resolution, bs, bi), tasks)
