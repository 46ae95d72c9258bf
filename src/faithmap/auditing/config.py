"""The settings of one audit: :class:`AuditConfig`, one frozen dataclass, checked once.

As for an evaluation (:mod:`faithmap.evaluation.config`), every option of ``faithmap.audit(...)`` and
of ``faithmap audit`` is a field here with its help in the field's metadata; the command line's
flags, the signature and docstring of :func:`faithmap.audit` and the valid keyword names are
generated from the fields by the evaluation's helpers (:func:`~faithmap.evaluation.config.config_options`,
:func:`~faithmap.evaluation.config.signature`, :func:`~faithmap.evaluation.config.options_doc`). The
engine is the evaluation's :class:`~faithmap.evaluation.EngineConfig`, flat as keywords and flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FaithmapError
from ..evaluation.config import (DEFAULT_RESOLUTION, ModelOptions, check_model_options, config_options, make_config,
                                 option_field, parse_count, parse_seed)
from ..evaluation.engines import Engine, EngineConfig
from ..registry import METHODS

DEFAULT_METHOD = "gradcam"
"""The method that explains every image when none is named: one gradient pass per image (cheap
enough for 50,000 images) that runs on every architecture (CNNs and transformers alike). Checked
against the ground truth (BENCHMARKS.md, the audit's detection rate over tier-2 models): with it the
audit found the watermark first on every small CNN measured to use it and on none that did not.
Excitation BP puts more of its map on planted evidence in CNNs but cannot read a transformer's tokens;
on the ground truth's small ViT (3 seeds) Grad-CAM's maps are at or below the random map (pixel
AUROC 0.19 on planted patterns, 0.13 on a watermark the model uses) while guided backprop and
Integrated Gradients find the evidence: audit a transformer with ``method="guidedbackprop"`` or
``"ig"`` until a default per architecture is measured."""
TARGETS = ("label", "top1")


def _method_help() -> str:
    return f"the method that explains every image (default {DEFAULT_METHOD}): {', '.join(METHODS.names())}"


@dataclass(frozen=True)
class AuditConfig(ModelOptions):
    """Every setting of an audit (see the module docstring). Construct it with keywords, or :meth:`make`
    from keyword overrides; values are checked (and normalised) on construction."""

    images: Any = option_field(None, "the labelled images: a class-folder tree (one sub-folder per class), folders "
                               "or files with --labels, 'photos' (20) or 'samples' (6)",
                               api="also (name, photo, label) triples, (name, photo) pairs or a dict",
                               nargs="+", metavar="DIR|FILE")
    labels: Any = option_field(None, "true labels of flat folders or files: CSV image,label (an index, WordNet id "
                               "or class name), ImageNet's LOC_val_solution.csv or the devkit's ground-truth file",
                               metavar="FILE")
    limit: int | None = option_field(None, "at most the first N images (listing order)", metavar="N")
    sample: int | None = option_field(None, "N images drawn with --seed", metavar="N")
    method: str = option_field(DEFAULT_METHOD, _method_help)
    params: dict[str, Any] | None = option_field(None, "parameter of the method (repeatable)", flag="--param",
                                                 action="append", metavar="KEY=VALUE", api="{KEY: VALUE}")
    resolution: int | None = option_field(None, f"mask resolution of a mask method (default {DEFAULT_RESOLUTION})")
    fast: bool = option_field(False, "the method's quick settings")
    target: str | None = option_field(None, "label (each image's true label; the default when the images have "
                                      "labels) or top1 (the model's prediction; the default otherwise)")
    layer: str | None = option_field(None, "the layer whose features embed each image's most salient patch (default: "
                                     "the model's CAM layer, its last spatial layer; without one, the patch's pixels)")
    out: str = option_field("faithmap_audit", "output directory (default faithmap_audit)")
    seed: int = option_field(0, "seed of the run (default 0): the image sample, the random regions, the clusters "
                             "and the bootstrap")
    batch_size: int | None = option_field(None, "maximum images per forward pass")
    batch_images: int | None = option_field(None, "images per task of the explaining step (default --batch-size)")
    engine: EngineConfig | Engine = option_field(factory=EngineConfig, help="the engine and its options")
    patch: float = option_field(0.25, "side of the salient patch, a fraction of the image side (default 0.25)")
    places: int = option_field(2, "fixed-place candidates per class at most (default 2)")
    min_share: float = option_field(0.25, "a fixed place holds the salient patch of at least this share of a class's "
                                    "images (default 0.25)")
    clusters: int = option_field(8, "content clusters of the salient patches at most (default 8)")
    min_images: int = option_field(5, "least images of a candidate (default 5)")
    draws: int = option_field(5, "random regions of the same size per image: the control (default 5)")
    verify_images: int = option_field(200, "images verified per candidate at most, a seeded sample (default 200)")
    bootstrap: int = option_field(2000, "bootstrap resamples of each interval (default 2000)")
    min_effect: float = option_field(0.02, "a finding's probability drop exceeds the random regions' by at least "
                                     "this much on average (default 0.02), its interval excluding theirs")
    exemplars: int = option_field(4, "exemplar images per finding on the page (default 4)")
    overwrite: bool = option_field(False, "discard the explained images of an earlier audit in --out")
    progress: bool = option_field(True, "no progress bars", flag="--no-progress")
    convert: bool = option_field(False, "convert grayscale, RGBA and 16-bit images to 8-bit RGB")

    def __post_init__(self) -> None:
        for name, value in _normalised(self).items():
            object.__setattr__(self, name, value)

    @classmethod
    def make(cls, base: "AuditConfig | None" = None, /, **overrides: Any) -> "AuditConfig":
        """``base`` (default: all defaults) with ``overrides`` (any name of :data:`OPTION_NAMES`, the engine's
        options flat); an unknown name is one line listing the valid ones."""
        return make_config(cls, base, overrides, OPTION_NAMES, "audit", " (images=..., model=..., out=...)")

    def for_workers(self) -> "AuditConfig":
        """This config without what a worker must not receive pickled (the inputs, a model object, an engine
        object): workers get the images in their jobs and the model from the context."""
        return dataclasses.replace(self, images=None, labels=None,
                                   model=self.model if isinstance(self.model, str) else None,
                                   engine=self.engine if isinstance(self.engine, EngineConfig) else EngineConfig())

    @property
    def bound(self) -> dict[str, Any]:
        """The settings the explained images depend on: a resume with others is refused (the thresholds of
        the later steps are not among them: changing them re-reads the same explained images)."""
        return {"method": self.method, "method_params": self.params or {}, "resolution": self.resolution,
                "fast": self.fast, "target": self.target, "layer": self.layer, "seed": self.seed,
                "patch": self.patch, "batch_size": self.batch_size, "batch_images": self.batch_images}


def _fraction(value, what: str, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) \
            or not low < float(value) <= high:
        raise FaithmapError(f"{what} must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


def _unit(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= float(value) < 1:
        raise FaithmapError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


def _count0(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise FaithmapError(f"{what} must be a whole number of at least 0, got {value!r}")
    return int(value)


def _target(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in TARGETS:
        raise FaithmapError(f"target must be {' or '.join(TARGETS)}, got {value!r}")
    return value.strip().lower()


def _normalised(c: AuditConfig) -> dict[str, Any]:
    """The checked values of ``c``, normalised (the method's registered name, numbers as numbers)."""
    if c.params is not None and not isinstance(c.params, dict):
        raise FaithmapError(f"params must be a dict, got {type(c.params).__name__}")
    check_model_options(c)
    if c.layer is not None and not isinstance(c.layer, str):
        raise FaithmapError(f"layer must be a layer name such as 'features.17', got {c.layer!r}")
    return {
        "method": METHODS.canonical(c.method), "target": _target(c.target), "seed": parse_seed(c.seed),
        "resolution": parse_count(c.resolution, "resolution"),
        "batch_size": parse_count(c.batch_size, "batch_size"),
        "batch_images": parse_count(c.batch_images, "batch_images"),
        "engine": EngineConfig(name=c.engine) if isinstance(c.engine, str) else c.engine,
        "patch": _fraction(c.patch, "patch", 0.0, 1.0), "min_share": _fraction(c.min_share, "min_share"),
        "min_effect": _unit(c.min_effect, "min_effect"),
        "places": _count0(c.places, "places"), "clusters": _count0(c.clusters, "clusters"),
        "min_images": parse_count(c.min_images, "min_images"), "draws": parse_count(c.draws, "draws"),
        "verify_images": parse_count(c.verify_images, "verify_images"),
        "bootstrap": parse_count(c.bootstrap, "bootstrap"), "exemplars": _count0(c.exemplars, "exemplars"),
        "out": os.fspath(c.out), "fast": bool(c.fast), "convert": bool(c.convert),
        "overwrite": bool(c.overwrite), "progress": bool(c.progress),
    }


OPTIONS = config_options(AuditConfig)
"""Every option, flat, in order: the keywords of :func:`faithmap.audit` and the flags of ``faithmap audit``."""
OPTION_NAMES: tuple[str, ...] = tuple(o.name for o in OPTIONS)
