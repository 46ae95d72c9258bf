"""Sharing one computation between metrics: memoisation inside an explicit scope.

Several metrics read the same expensive computation: deletion, insertion and their difference all
come from one set of deletion/insertion curves. A function decorated with :func:`shared` computes
once per distinct input inside a :func:`sharing` scope and returns the stored result afterwards;
outside a scope it runs every time, exactly as undecorated. Inputs are keyed by identity (tensors
by ``id``, storage pointer, version counter, shape, dtype and device; modules by ``id``), so an
in-place change of a tensor makes a new key. The scope keeps the inputs alive, so ids are not
reused while it is open. ``batch_size`` never enters the key: it bounds memory, not the result.

The evaluation runner opens one scope per (image, method, resolution) and attributes the model
images of the one real call to the metric that made it (later calls cost nothing).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from typing import Any, Callable, Iterator

import torch

_SCOPE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("faithmap_shared_scope", default=None)
_IGNORED = frozenset({"batch_size"})
_MISSING = object()


@contextlib.contextmanager
def sharing() -> Iterator[dict]:
    """Open a scope in which :func:`shared` functions compute once per distinct input."""
    store: dict = {}
    token = _SCOPE.set(store)
    try:
        yield store
    finally:
        _SCOPE.reset(token)
        store.clear()


def _key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), value.data_ptr(), value._version, tuple(value.shape), str(value.dtype),
                str(value.device))
    if isinstance(value, torch.nn.Module):
        return ("module", id(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _key(v)) for k, v in value.items())))
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def shared(fn: Callable) -> Callable:
    """Decorator: inside a :func:`sharing` scope, compute ``fn`` once per distinct input.

    Arguments are bound to ``fn``'s signature with defaults applied, so ``f(a, step=None)`` and
    ``f(a)`` share one result. ``wrapper.peek(*args, **kwargs)`` returns the stored result or
    ``None`` without computing anything.
    """
    sig = inspect.signature(fn)

    def make_key(args, kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        items = tuple((k, _key(v)) for k, v in bound.arguments.items() if k not in _IGNORED)
        return (fn.__module__, fn.__qualname__, items)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        store = _SCOPE.get()
        if store is None:
            return fn(*args, **kwargs)
        key = make_key(args, kwargs)
        hit = store.get(key, _MISSING)
        if hit is not _MISSING:
            return hit[0]
        out = fn(*args, **kwargs)
        store[key] = (out, args, kwargs)  # keep the inputs alive so their ids stay unique
        return out

    def peek(*args, **kwargs):
        store = _SCOPE.get()
        if store is None:
            return None
        hit = store.get(make_key(args, kwargs), _MISSING)
        return None if hit is _MISSING else hit[0]

    wrapper.peek = peek  # type: ignore[attr-defined]
    return wrapper
