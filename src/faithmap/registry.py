"""Registries: the single source of truth for methods and metrics.

The command line's choices, the README's tables and the parametrised tests all read these.
Adding a method means decorating one function with :func:`register_method`.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Generic, Iterator, TypeVar

import torch

from .core.batching import model_guard
from .core.progress import Callback, reporting
from .core.scores import needs_prediction, resolve_targets
from .errors import FaithmapError
from .params import Param, build, describe, describe_fields, field_bounds, interval
from .params import check as check_values

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> spec mapping with aliases and a helpful error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._specs: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, spec: T, aliases: tuple[str, ...] = ()) -> T:
        for key in (name, *aliases):
            if key in self._specs or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
        self._specs[name] = spec
        for alias in aliases:
            self._aliases[alias] = name
        return spec

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases (case-insensitive)."""
        if not isinstance(name, str):
            raise FaithmapError(f"a {self.kind} must be named by a string; choose from: {', '.join(self.names())}")
        key = name.strip().lower()
        if key in self._specs:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise FaithmapError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        return self._specs[self.canonical(name)]

    def __getitem__(self, name: str) -> T:
        """``METHODS["igos"]``: the spec of a name or alias (case-insensitive); an unknown name is one
        :class:`FaithmapError` line."""
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except FaithmapError:
            return False
        return True

    def names(self) -> list[str]:
        return list(self._specs)

    def __iter__(self) -> Iterator[T]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


@dataclass(frozen=True)
class MethodSpec:
    """A registered explanation method.

    ``fn(model, x, target, **params) -> Explanation`` takes a :class:`faithmap.models.Classifier`,
    normalised images ``x`` of shape (B, 3, H, W) and integer targets of shape (B,).
    ``resolution`` is ``"mask"`` when the map's grid is a parameter (``resolution=``), ``"input"``
    when maps are at input size, ``"layer"`` when they live on a layer's grid.
    ``settings`` is the frozen dataclass that declares the parameters (their types, defaults, ranges
    and help; see :mod:`faithmap.params`), or None when the function's keyword parameters do.
    """

    name: str
    fn: Callable[..., Any]
    family: str
    summary: str
    paper: str = ""
    resolution: str = "input"
    min_resolution: int = 1
    aliases: tuple[str, ...] = ()
    fast: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, Any] = field(default_factory=dict)
    settings: type | None = None
    default: bool = False  # one of the small set ``faithmap evaluate`` runs when no methods are named

    @property
    def params(self) -> dict[str, Any]:
        """Parameters and their defaults, read from the settings dataclass or the function signature."""
        if self.settings is not None:
            return {f.name: f.default for f in fields(self.settings)}
        sig = inspect.signature(self.fn)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }

    @property
    def parameters(self) -> list[Param]:
        """Every parameter as a :class:`faithmap.params.Param` (name, type, default, range, help)."""
        if self.settings is not None:
            return describe_fields(self.settings)
        return describe(self.fn, self.bounds)

    def check(self, params: dict[str, Any]) -> None:
        """Refuse values of the wrong type or out of range (:mod:`faithmap.params`), and, for settings
        dataclasses, combinations their own checks refuse."""
        if self.settings is None:
            check_values(f"method {self.name}", self.fn, params, self.bounds)
            return
        known = {f.name for f in fields(self.settings)}
        build(self.settings, f"method {self.name}", None, {k: v for k, v in params.items() if k in known})

    def run(self, clf, x: torch.Tensor, target, params: dict[str, Any], callback: Callback | None = None):
        """The method on classifier ``clf`` and its inputs ``x`` (B, C, H, W, on ``clf``'s device) with
        checked ``params`` (:func:`check_params`): ``target`` resolved (one forward pass when it names
        the prediction or the model has no class names; the logits land in ``extras["logits"]``), the
        method's progress sent to ``callback``, and the result stamped with its seconds, the model
        images it cost and the method's name. :func:`faithmap.explain` is this after its checks."""
        logits = None
        if needs_prediction(target) or clf.num_classes is None:
            with model_guard(clf), torch.no_grad():
                logits = clf(x)
            check_class_count(clf, logits)
            t = resolve_targets(logits, target, clf.class_names)
        else:  # explicit targets: checked against the class count, no model pass
            t = resolve_targets(x.new_empty((x.shape[0], clf.num_classes)), target, clf.class_names)
        snap = clf.counter.snapshot()
        start = time.perf_counter()
        with reporting(callback):
            out = self.fn(clf, x, t, **params)
        out.seconds = time.perf_counter() - start
        out.counts = clf.counter.since(snap)
        out.method = self.name
        if logits is not None:
            out.extras.setdefault("logits", logits.detach())
        return out


def check_params(spec: MethodSpec, params: dict[str, Any]) -> None:
    """Refuse parameters that ``spec`` does not take, values of the wrong type or range, and
    resolutions it cannot do."""
    known = spec.params
    unknown = [k for k in params if k not in known]
    if unknown:
        raise FaithmapError(f"method {spec.name} has no parameter {unknown[0]!r}; it takes: {', '.join(known) or 'none'}")
    spec.check(params)
    if "resolution" in params and params["resolution"] is not None and spec.resolution != "mask":
        raise FaithmapError(f"method {spec.name} has a fixed resolution ({spec.resolution} grid); "
                            f"--resolution applies to mask methods only")


def check_class_count(clf, logits: torch.Tensor) -> None:
    """Refuse class names of another count than the model's logits (names given to :func:`faithmap.models.wrap`)."""
    if clf.class_names is not None and logits.dim() == 2 and logits.shape[1] != len(clf.class_names):
        raise FaithmapError(f"{len(clf.class_names)} class names for a model with {logits.shape[1]} classes "
                            f"({clf.name})")


METRIC_NEEDS = ("explain", "boxes", "masks")
"""The extra inputs a metric may need (``MetricSpec.needs``); the evaluation provides each of them."""


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its direction, category, the inputs it needs and how it is called, as data.

    Call contract: ``fn(model, x, saliency, target, *, batch_size=None, seed=0, **needs)`` with a
    :class:`faithmap.models.Classifier`, normalised images ``x`` (B, 3, H, W), maps ``saliency``
    (B, h, w) at their native resolution (larger = more important) and targets (B,); it returns the
    per-image scores as a tensor (B,) (or an object with a ``scores`` tensor (B,) and its ``curves``).
    :meth:`call` applies this contract, so a caller never branches on a metric's name.
    ``higher_is_better`` drives the arrows in reports; ``needs`` names the extra keyword inputs,
    from :data:`METRIC_NEEDS`: ``explain`` (a callable ``(x, target) -> saliency`` that re-explains
    perturbed inputs, for robustness metrics), ``masks`` (ground-truth regions (B, H, W) bool),
    ``boxes`` (per image a (k, 4) tensor of x0, y0, x1, y1 in input pixels).
    ``aggregate`` says how reports pool the per-image scores: ``"mean"`` (the default) or
    ``"category_mean"`` (per category first, then the mean over categories, as the pointing game).
    ``set_level``: an image's score depends on the other images of the call (sufficiency compares
    each map with the others'), so an evaluation scores such a metric one image at a time.
    ``default``: ``faithmap evaluate`` computes it when no metrics are named.
    """

    name: str
    fn: Callable[..., Any]
    higher_is_better: bool
    category: str
    summary: str
    paper: str = ""
    needs: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    aggregate: str = "mean"
    bounds: dict[str, Any] = field(default_factory=dict)
    set_level: bool = False
    default: bool = False

    def check(self, params: dict[str, Any]) -> None:
        """Refuse option values of the wrong type or out of range (:mod:`faithmap.params`)."""
        check_values(f"metric {self.name}", self.fn, params, self.bounds)

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def localises(self) -> bool:
        """Whether it needs ground-truth regions (boxes or masks): scored only where an image has some."""
        return bool(set(self.needs) & {"boxes", "masks"})

    @property
    def one_at_a_time(self) -> bool:
        """Whether a caller that wants per-image scores independent of the batch must call it per image:
        set-level metrics, and metrics that re-explain (each image with its own seed)."""
        return self.set_level or "explain" in self.needs

    def takes(self, name: str) -> bool:
        """Whether ``fn`` names the keyword ``name``."""
        return name in inspect.signature(self.fn).parameters

    def call(self, model, x, saliency, target, *, options: dict | None = None, batch_size: int | None = None,
             seeds: list[int] | None = None, inputs: dict[str, Callable[[], Any]] | None = None) -> Any:
        """``fn`` called by its contract: ``options``; ``batch_size`` when ``fn`` takes it (by name or
        ``**kwargs``); the per-image ``seeds`` when it names ``seed``; and each of :attr:`needs` from
        ``inputs`` (need -> a function that makes it, called only for the needs this metric has)."""
        kw = dict(options or {})
        params = inspect.signature(self.fn).parameters
        if batch_size is not None and ("batch_size" in params
                                       or any(p.kind == p.VAR_KEYWORD for p in params.values())):
            kw["batch_size"] = batch_size
        if seeds is not None and "seed" in params:
            kw["seed"] = seeds
        for need in self.needs:
            if inputs is None or need not in inputs:
                raise FaithmapError(f"metric {self.name} needs {need!r}, which was not provided")
            kw[need] = inputs[need]()
        return self.fn(model, x, saliency, target, **kw)


METHODS: Registry[MethodSpec] = Registry("method")
METRICS: Registry[MetricSpec] = Registry("metric")


def register_method(name: str, *, family: str, summary: str, paper: str = "", resolution: str = "input",
                    min_resolution: int = 1, aliases: tuple[str, ...] = (), fast: dict | None = None,
                    bounds: dict[str, Any] | None = None, params: type | None = None, default: bool = False):
    """Decorator that registers an explanation method (see :class:`MethodSpec`).

    ``fast`` holds parameter overrides for quick runs (tests, demos, ``--fast`` evaluations).
    Parameters are declared one of two ways (:mod:`faithmap.params`):

    * ``params``, a frozen dataclass: the decorated function is ``fn(model, x, target, settings)``;
      what is registered (and returned) is ``method(model, x, target, config=None, **params)``,
      which builds the settings from ``config`` and the keyword arguments (:func:`faithmap.params.build`);
    * otherwise the function's keyword parameters, their types the annotations; ``bounds`` gives
      numeric parameters their range, ``(low, high)`` inclusive (``None``: open) or interval notation
      (``"(0, 1)"``), over :data:`faithmap.params.COMMON_BOUNDS`.

    Both are checked once, at the boundary (:meth:`MethodSpec.check`).
    ``default``: one of the small, cheap set ``faithmap evaluate`` runs when no methods are named.
    """
    for spec in (bounds or {}).values():
        interval(spec)  # a malformed range fails at import, not at the first call
    if params is not None and bounds:
        raise ValueError(f"method {name!r}: give ranges in the fields of {params.__name__}, not bounds=")

    def deco(fn):
        if params is not None:
            field_bounds(params)  # a settings class that is not a dataclass fails at import
            fn = _taking_settings(fn, params, f"method {name}")
        METHODS.add(name, MethodSpec(name, fn, family, summary, paper, resolution, min_resolution,
                                     aliases, dict(fast or {}), dict(bounds or {}), params, bool(default)), aliases)
        return fn

    return deco


def _taking_settings(impl: Callable[..., Any], cls: type, owner: str) -> Callable[..., Any]:
    """``method(model, x, target, config=None, **params)`` around ``impl(model, x, target, settings)``."""

    @functools.wraps(impl, assigned=("__module__", "__name__", "__qualname__", "__doc__"), updated=())
    def method(model, x, target, config=None, /, **params: Any):
        return impl(model, x, target, build(cls, owner, config, params))

    del method.__wrapped__  # its signature is its own: (model, x, target, config=None, /, **params)
    method.settings = cls  # type: ignore[attr-defined]
    return method


def register_metric(name: str, *, higher_is_better: bool, category: str, summary: str, paper: str = "",
                    needs: tuple[str, ...] = (), aliases: tuple[str, ...] = (), aggregate: str = "mean",
                    bounds: dict[str, Any] | None = None, set_level: bool = False, default: bool = False):
    """Decorator that registers a metric (see :class:`MetricSpec`; ``bounds`` as in :func:`register_method`)."""
    if aggregate not in ("mean", "category_mean"):
        raise ValueError(f"metric {name!r}: aggregate must be 'mean' or 'category_mean', got {aggregate!r}")
    unknown = [n for n in needs if n not in METRIC_NEEDS]
    if unknown:  # a need nobody provides fails at import, not in the middle of an evaluation
        raise ValueError(f"metric {name!r} needs {unknown[0]!r}; a metric may need: {', '.join(METRIC_NEEDS)}")

    def deco(fn):
        METRICS.add(name, MetricSpec(name, fn, higher_is_better, category, summary, paper, tuple(needs), aliases,
                                     aggregate, dict(bounds or {}), bool(set_level), bool(default)), aliases)
        return fn

    return deco
