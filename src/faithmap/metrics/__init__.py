"""Metrics. Importing this package registers every metric in ``faithmap.METRICS`` (each module
registers its own with :func:`faithmap.registry.register_metric`).

Metrics never import methods: they take maps as tensors.
"""

from .._discover import import_submodules
from .deletion import Curves, CurveScores, default_step, deletion_insertion, images_at_fraction, ranking

MODULES = import_submodules(__name__, __path__)

__all__ = ["Curves", "CurveScores", "default_step", "deletion_insertion", "images_at_fraction", "ranking"]
