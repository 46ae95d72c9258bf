"""faithmap: saliency maps for image classifiers and the metrics that measure their faithfulness.

Public API: :func:`explain`, :func:`evaluate` (benchmarks many methods on many images; its settings
are :class:`faithmap.evaluation.RunConfig`), :func:`audit` (what a model relies on across a labelled
dataset, verified by intervention; its settings are :class:`faithmap.auditing.AuditConfig`), the
registries :data:`METHODS` and :data:`METRICS`, :mod:`faithmap.models` and :class:`Explanation`;
:func:`keep_freed_memory` makes CPU passes faster (the ``faithmap`` command calls it).
"""

from ._version import __version__

from . import methods as _methods  # noqa: F401,E402  (registers methods)
from . import metrics as _metrics  # noqa: F401,E402  (registers metrics)
from . import models  # noqa: E402
from .api import explain  # noqa: E402
from .auditing import audit  # noqa: E402  (a function; the package faithmap.auditing holds the rest)
from .explanation import Explanation  # noqa: E402
from .core.memory import keep_freed_memory  # noqa: E402
from .errors import FaithmapError  # noqa: E402
from .evaluation import evaluate  # noqa: E402  (a function; the package faithmap.evaluation holds the rest)
from .registry import METHODS, METRICS  # noqa: E402

__all__ = ["METHODS", "METRICS", "Explanation", "FaithmapError", "audit", "evaluate", "explain", "keep_freed_memory",
           "models", "__version__"]
