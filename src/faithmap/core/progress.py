"""Progress inside one explanation: the iterations of an optimiser, the batches of a sampling method.

A caller that wants to hear about progress installs a callback with :func:`reporting` (``faithmap.explain``
does it for its ``progress=`` argument); an engine announces its work with :func:`ticker` and calls
the returned function once per step. Without a callback the ticker does nothing, so engines report
unconditionally and cost nothing when nobody listens. The callback lives in a context variable, not
in the methods' signatures: it is no parameter of any method (it changes no map and no count), it
reaches nested engines (AOP's stage 2, XRAI's base method) without being passed along, and
concurrent explanations in other threads each see their own.

The callback is ``callback(done, total, unit)``: ``done`` steps of ``total`` (``unit`` names them,
``"iteration"`` or ``"batch"``); a new engine run starts again at ``done = 0``.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

Callback = Callable[[int, int, str], None]

_CALLBACK: ContextVar[Callback | None] = ContextVar("faithmap_progress", default=None)


@contextlib.contextmanager
def reporting(callback: Callback | None) -> Iterator[None]:
    """Send the progress of the engines run inside the block to ``callback`` (None: to nobody)."""
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


def _silent() -> None:
    return None


def ticker(total: int, unit: str = "iteration") -> Callable[[], None]:
    """Announce ``total`` steps; returns the function to call after each step (a no-op when nobody listens)."""
    callback = _CALLBACK.get()
    if callback is None:
        return _silent
    total = int(total)
    state = {"done": 0}
    callback(0, total, unit)

    def tick() -> None:
        state["done"] += 1
        callback(state["done"], total, unit)

    return tick


__all__ = ["Callback", "reporting", "ticker"]
