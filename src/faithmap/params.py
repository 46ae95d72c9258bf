"""Parameter types and ranges, declared once and checked once at the boundary.

A method's parameters are declared in one of two ways:

* **a frozen dataclass** (the mask family: I-GOS, iGOS++, Mask, Extremal Perturbation, AOP): each
  field's annotation is its type, its default the default, and ``field(metadata=...)`` (made by
  :func:`knob`) carries a one-line ``help`` and, where it has its own, a ``range``;
* **keyword parameters of the function** (every other method and the metrics): the signature's
  annotation is the type and the registration's ``bounds=`` the ranges.

Either way a parameter without its own range takes the one of :data:`COMMON_BOUNDS` (parameters
that many methods share, by name). :func:`check` refuses a value of the wrong type or out of range
with one line naming the owner, the parameter, what it expects and what it got, before any work
starts (``faithmap.explain``, ``faithmap explain --param``, ``faithmap evaluate``); :func:`build`
turns keyword arguments into a dataclass instance through that check; :func:`describe` and
:func:`describe_fields` give the uniform :class:`Param` list of either kind.

Ranges are written as intervals: a tuple ``(low, high)`` is inclusive (``None`` = unbounded), or a
string in interval notation, ``"[1, 100000]"``, ``"(0, 1)"``, ``"[0, inf)"``. Floats must be
finite unless the interval reaches ``inf``; integers are never booleans.
"""

from __future__ import annotations

import ast
import collections.abc
import functools
import math
import numbers
import re
import inspect
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, Mapping, TypeVar

from .errors import FaithmapError

__all__ = ["COMMON_BOUNDS", "Interval", "Param", "build", "check", "describe", "describe_fields", "field_bounds",
           "interval", "knob", "parse_params", "parse_value", "record", "signature_types"]


@dataclass(frozen=True)
class Interval:
    """A range of numbers; ``low``/``high`` may be infinite, each end open or closed."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        if v < self.low or (self.low_open and v == self.low):
            return False
        return not (v > self.high or (self.high_open and v == self.high))

    def __str__(self) -> str:
        def num(v: float) -> str:
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return f"{int(v)}" if float(v).is_integer() and abs(v) <= 2.0 ** 64 else f"{v:g}"

        return f"{'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}{')' if self.high_open else ']'}"


_INTERVAL = re.compile(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*$")


def _number(text: str) -> float:
    text = text.strip().lower()
    if text in ("inf", "+inf"):
        return math.inf
    if text == "-inf":
        return -math.inf
    if "**" in text:
        base, exp = text.split("**", 1)
        return float(int(base) ** int(exp))
    return float(text)


def interval(spec: Interval | tuple | str) -> Interval:
    """An :class:`Interval` from a tuple ``(low, high)`` (inclusive, ``None`` open) or interval notation."""
    if isinstance(spec, Interval):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        lo, hi = spec
        return Interval(-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi),
                        lo is None, hi is None)
    if isinstance(spec, str):
        m = _INTERVAL.match(spec)
        if m:
            lo, hi = _number(m.group(2)), _number(m.group(3))
            return Interval(lo, hi, m.group(1) == "(" or math.isinf(lo), m.group(4) == ")" or math.isinf(hi))
    raise ValueError(f"not a range: {spec!r} (use (low, high) or interval notation such as '[1, 100]')")


COUNT = "[1, 1000000]"
COMMON_BOUNDS: dict[str, str] = {
    # counts and sizes
    "iterations": "[0, 100000]", "batch_size": COUNT, "ig_steps": "[1, 100000]", "steps": "[1, 100000]",
    "samples": COUNT, "n_samples": COUNT, "n_masks": COUNT, "cells": "[1, 4096]", "patch": "[1, 100000]",
    "stride": "[1, 100000]", "resolution": "[1, 16384]", "ls_points": "[1, 1000]", "ls_window": "[0, 100000]",
    "warmup": "[0, 100000]", "seed": "[0, 2**64)",
    # step sizes and line search
    "alpha_max": "(0, inf)", "alpha_min": "(0, inf)", "decay": "(0, 1)", "beta": "(0, 1)", "lr": "(0, inf)",
    "step_size": "(0, inf)",
    # regularisers, noise, thresholds
    "l1": "[0, inf)", "l2": "[0, inf)", "tv_beta": "(0, inf)", "noise_std": "[0, inf)", "noise_level": "[0, inf)",
    "sigma": "[0, inf)", "data_scale": "(0, inf)", "p": "(0, 1)", "fraction": "(0, 1]", "theta": "[0, 1]",
    "lam": "[0, 1]", "warmup_blur": "(0, 1]",
}
"""Ranges of parameters that many methods and metrics share, by name (a registration's ``bounds`` overrides)."""


@functools.lru_cache(maxsize=None)
def signature_types(fn: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated annotations of ``fn``'s parameters (empty where they cannot be resolved)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only means: no type check
        return {}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        if origin in (list, collections.abc.Sequence) and len(args) == 1:
            return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else getattr(origin, "__name__", str(origin))
    if tp in (int, float, str, bool, dict, list, tuple):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "dict": "a dict", "list": "a list", "tuple": "a tuple"}[tp.__name__]
    return getattr(tp, "__name__", str(tp))


def type_text(tp: Any) -> str:
    """An annotation in short notation: ``int | None``, ``tuple[float, ...]``, ``'btv' | 'tv'``, ``Tensor``."""
    if tp is type(None) or tp is None:
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_text(a) for a in args)}]" if args else name
    return getattr(tp, "__name__", str(tp))


def _matches(v: Any, tp: Any) -> bool:
    """Whether ``v`` is a value of the annotation ``tp`` (unknown constructs always match)."""
    if tp is Any or tp is object:
        return True
    if tp is type(None) or tp is None:
        return v is None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(v, a) for a in args)
    if origin is typing.Literal:
        return any(v == a and type(v) is type(a) for a in args)
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if origin is tuple:
        if not isinstance(v, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(u, args[0]) for u in v)
        return not args or (len(v) == len(args) and all(_matches(u, a) for u, a in zip(v, args)))
    if origin in (list, collections.abc.Sequence):
        return isinstance(v, (list, tuple)) and (not args or all(_matches(u, args[0]) for u in v))
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        return isinstance(v, Mapping)
    if isinstance(tp, type):
        return isinstance(v, tp)
    return True


def _numbers_in(v: Any) -> list[float]:
    if isinstance(v, bool):
        return []
    if isinstance(v, numbers.Real):
        return [v]
    if isinstance(v, (tuple, list)):
        return [u for item in v for u in _numbers_in(item)]
    return []


def check(owner: str, fn: Callable[..., Any], params: Mapping[str, Any],
          bounds: Mapping[str, Interval | tuple | str] | None = None) -> None:
    """Refuse, with one :class:`FaithmapError` line, any value of ``params`` whose type or range is wrong.

    ``owner`` names the method or metric in the message (``method igos: iterations must be ...``);
    types come from ``fn``'s annotations, ranges from ``bounds`` and then :data:`COMMON_BOUNDS`.
    Parameters without an annotation or range are passed through unchecked.
    """
    hints = signature_types(fn)
    own = dict(bounds or {})
    for name, value in params.items():
        tp = hints.get(name)
        if tp is not None and not _matches(value, tp):
            raise FaithmapError(f"{owner}: {name} must be {_type_name(tp)}, got {type(value).__name__} {_short(value)}")
        for v in _numbers_in(value):
            rng = own.get(name, COMMON_BOUNDS.get(name))
            r = interval(rng) if rng is not None else None
            if isinstance(v, float) and math.isnan(v):
                raise FaithmapError(f"{owner}: {name} must be a number, got nan")
            if r is None:
                if isinstance(v, float) and math.isinf(v):
                    raise FaithmapError(f"{owner}: {name} must be finite, got {v}")
                continue
            if v not in r:
                raise FaithmapError(f"{owner}: {name} must be in {r}, got {_short(v)}")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_value(text: str) -> Any:
    """A Python literal when ``text`` is one (numbers, booleans, None, tuples), else the string.

    ``true``/``false``/``none`` are read in any case; the value is typed here and checked by
    :func:`check` where it is used."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` (``--param KEY=VALUE`` of a command) -> dict with :func:`parse_value` values;
    ``-`` in a key reads as ``_``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise FaithmapError(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = parse_value(v)
    return out


# ----------------------------------------------------------------------------------------------
# parameters declared as dataclass fields, and one description of either kind
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One parameter of a method or metric: ``type`` is the annotation (None: unknown), ``range`` the
    interval its numbers must lie in (None: any finite number), ``help`` one line (may be empty)."""

    name: str
    type: Any
    default: Any
    range: Interval | None = None
    help: str = ""

    @property
    def type_name(self) -> str:
        """The type in words, as the error messages say it (``an integer or None``)."""
        return "" if self.type is None else _type_name(self.type)

    @property
    def type_text(self) -> str:
        """The type in short notation (``int | tuple[int, int]``), for reference pages."""
        return "" if self.type is None else type_text(self.type)


def knob(default: Any, help: str, range: Interval | tuple | str | None = None) -> Any:
    """A dataclass field with its one-line ``help`` and, when it has its own, its ``range`` (else the one
    of :data:`COMMON_BOUNDS` for its name applies); a malformed range fails at import."""
    meta: dict[str, Any] = {"help": help}
    if range is not None:
        interval(range)
        meta["range"] = range
    return field(default=default, metadata=meta)


def field_bounds(cls: type) -> dict[str, Any]:
    """The ranges the fields of the dataclass ``cls`` declare themselves (``knob(range=...)``)."""
    return {f.name: f.metadata["range"] for f in fields(cls) if "range" in f.metadata}


def _range_of(name: str, own: Mapping[str, Any]) -> Interval | None:
    spec = own.get(name, COMMON_BOUNDS.get(name))
    return None if spec is None else interval(spec)


def describe_fields(cls: type) -> list[Param]:
    """The :class:`Param` of every field of the dataclass ``cls``, in field order."""
    hints = signature_types(cls)
    own = field_bounds(cls)
    return [Param(f.name, hints.get(f.name), f.default if f.default is not MISSING else None,
                  _range_of(f.name, own), f.metadata.get("help", "")) for f in fields(cls)]


def describe(fn: Callable[..., Any], bounds: Mapping[str, Any] | None = None,
             skip: tuple[str, ...] = ()) -> list[Param]:
    """The :class:`Param` of every keyword-only parameter with a default of ``fn`` (not in ``skip``).

    Types come from the annotations, ranges from ``bounds`` and then :data:`COMMON_BOUNDS`; the help
    is the first sentence of the docstring that begins with the parameter's name in double back-quotes,
    when there is one (else empty)."""
    hints = signature_types(fn)
    own = dict(bounds or {})
    sentences = _sentences(inspect.getdoc(fn) or "")
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind != p.KEYWORD_ONLY or p.default is inspect.Parameter.empty or p.name in skip:
            continue
        lead = f"``{p.name}``"
        doc = next((s for s in sentences if s.startswith(lead)), "").replace("``", "")
        out.append(Param(p.name, hints.get(p.name), p.default, _range_of(p.name, own), _clip(doc)))
    return out


def _sentences(doc: str) -> list[str]:
    text = re.sub(r"\s+", " ", doc)
    return [s.strip() for s in re.split(r"(?<=[.;])\s+(?=``|[A-Z])", text) if s.strip()]


def _clip(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


D = TypeVar("D")


def build(cls: type[D], owner: str, config: D | None = None, params: Mapping[str, Any] | None = None) -> D:
    """An instance of the settings dataclass ``cls``: ``config`` (default: ``cls()``) with ``params`` set.

    The one way keyword arguments become settings: unknown names and values of the wrong type or
    out of range are refused with one :class:`FaithmapError` line naming ``owner``
    (``method igos: iterations must be in [0, 100000], got -1``); checks between fields are the
    dataclass's own (``__post_init__``).
    """
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise FaithmapError(f"{owner} takes its settings as {cls.__name__}, got {type(config).__name__}")
    params = dict(params or {})
    if not params:
        return config
    names = [f.name for f in fields(cls)]
    unknown = [k for k in params if k not in names]
    if unknown:
        raise FaithmapError(f"{owner} has no parameter {unknown[0]!r}; it takes: {', '.join(names)}")
    check(owner, cls, params, field_bounds(cls))
    return replace(config, **params)


def record(settings: Any) -> dict[str, Any]:
    """The settings as a plain dict (``dataclasses.asdict`` of the resolved values), tensors given by
    their shape (``Explanation.params`` and the CLI's summary record values, not data)."""
    if not is_dataclass(settings):
        raise TypeError(f"expected a settings dataclass, got {type(settings).__name__}")
    out = {}
    for f in fields(settings):
        v = getattr(settings, f.name)
        shape = getattr(v, "shape", None)
        out[f.name] = v if shape is None or isinstance(v, (str, bytes)) else f"tensor {'x'.join(map(str, shape))}"
    return out
