"""Benchmark many methods on many images: ``faithmap.evaluate(...)`` and ``faithmap evaluate``.

``faithmap.evaluate`` is this package and can be called like the function it exports:
``faithmap.evaluate(methods, images, out=..., ...)`` is :func:`faithmap.evaluate.runner.evaluate`.

Modules, each importing only those before it: :mod:`.plan` (inputs, targets, settings, tasks),
:mod:`.worker` (one task's work), :mod:`.engines` (``local``; :mod:`.ray_engine` for ``ray``),
:mod:`.store` (Parquet parts, the output lock), :mod:`.stats` (means, t-intervals, per-category
accuracy, costs, mean curves, pooled in bounded memory), :mod:`.report` (Markdown, CSV, pictures
and the self-contained HTML page), :mod:`.runner` (the run), :mod:`.merge` (joining shards),
:mod:`.legacy` (runs of the earlier CSV store) and :mod:`.presets` (the papers' tables as data).
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
