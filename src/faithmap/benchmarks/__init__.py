"""``faithmap bench NAME``: benchmarks that report seconds and model images.

Each module of this package registers its benchmark with :func:`bench` (modules are imported
automatically); results go to stdout (and ``--json``).
"""

from __future__ import annotations

from typing import Callable

BENCHES: dict[str, Callable] = {}


def bench(name: str):
    """Register ``fn(args) -> int`` as ``faithmap bench NAME``."""

    def deco(fn):
        BENCHES[name] = fn
        return fn

    return deco


from .._discover import import_submodules  # noqa: E402

MODULES = import_submodules(__name__, __path__)
