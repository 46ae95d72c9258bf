"""Benchmark many methods on many images: ``faithmap.evaluate(...)`` and ``faithmap evaluate``.

``faithmap.evaluate`` is this package and can be called like the function it exports:
``faithmap.evaluate(methods, images, out=..., ...)`` is :func:`faithmap.evaluate.runner.evaluate`.

Modules: :mod:`.runner` (the run, resume, shards), :mod:`.store` (crash-safe results files),
:mod:`.stats` (means, t-intervals, per-category accuracy, costs, mean curves), :mod:`.report`
(Markdown, CSV, pictures and the self-contained HTML page), :mod:`.merge` (joining shards) and
:mod:`.presets` (the papers' tables as data).
"""

import sys as _sys
import types as _types

from .merge import merge
from .presets import PRESETS, Preset, PresetMethod
from .report import write_report
from .runner import DEFAULT_METRICS, EvalResult, evaluate

__all__ = ["DEFAULT_METRICS", "EvalResult", "PRESETS", "Preset", "PresetMethod", "evaluate", "merge", "write_report"]


class _CallableModule(_types.ModuleType):
    """Lets ``faithmap.evaluate(...)`` call :func:`evaluate` while ``faithmap.evaluate.runner`` stays importable."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
