"""Import every module of a package, so that registering a method, metric, benchmark or command
touches only the module that defines it."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package: str, path, prefix: str = "") -> list[str]:
    """Import ``package.<name>`` for every module in ``path`` (skipping private ``_`` modules)."""
    names = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_") or not info.name.startswith(prefix):
            continue
        importlib.import_module(f"{package}.{info.name}")
        names.append(info.name)
    return names
