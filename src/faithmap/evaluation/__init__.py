"""Benchmark many methods on many images: :func:`faithmap.evaluate` and ``faithmap evaluate``.

:func:`evaluate` (re-exported as ``faithmap.evaluate``) takes a :class:`RunConfig` and/or its options
as keywords: ``faithmap.evaluate(methods="gradcam,ig", images="samples", out="eval")``.

Modules, each importing only those before it: :mod:`.store` (the row schema, Parquet parts, the
output lock), :mod:`.stats` (means, t-intervals, per-category accuracy, costs, mean curves, pooled in
bounded memory), :mod:`.legacy` (runs of the earlier CSV store), :mod:`.report` (Markdown, CSV,
pictures and the self-contained HTML page), :mod:`.presets` (the papers' tables as data),
:mod:`.tasks` (tasks, keys, seeds, fingerprints), :mod:`.worker` (one task's work, in steps),
:mod:`.engines` (the engine protocol and registry; ``local``; :mod:`.ray_engine` for ``ray``),
:mod:`.config` (:class:`RunConfig`: every setting), :mod:`.plan` (inputs, targets, settings, tasks),
:mod:`.runner` (the run) and :mod:`.merge` (joining shards).
"""

from .config import OPTION_NAMES, RunConfig, default_methods, default_metrics
from .engines import ENGINES, Engine, EngineConfig, register_engine
from .merge import merge
from .plan import EvalNote
from .presets import PRESETS, Preset, PresetMethod
from .report import write_report
from .runner import EvalResult, evaluate

__all__ = ["ENGINES", "Engine", "EngineConfig", "EvalNote", "EvalResult", "OPTION_NAMES", "PRESETS", "Preset",
           "PresetMethod", "RunConfig", "default_methods", "default_metrics", "evaluate", "merge", "register_engine",
           "write_report"]
