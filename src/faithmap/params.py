"""Parameter types and ranges, declared once and checked once at the boundary.

A method's (or metric's) keyword parameters take their *type* from the signature's annotation and
their *range* from :data:`COMMON_BOUNDS` (parameters that many methods share, by name) or from the
registration's own ``bounds=``, which wins. :func:`check` refuses a value of the wrong type or out
of range with one line naming the owner, the parameter, what it expects and what it got, before
any work starts (``faithmap.explain``, ``faithmap explain --param``, ``faithmap evaluate``).

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
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import FaithmapError

__all__ = ["COMMON_BOUNDS", "Interval", "check", "interval", "parse_params", "parse_value", "signature_types"]


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
