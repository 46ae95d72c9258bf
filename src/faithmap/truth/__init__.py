"""Ground truth for saliency maps: evidence a model is *known* to use, checked by intervention.

Tier 0: models whose dependence on the input is known by construction (no training).
Tier 1: planted evidence on textured backgrounds with distractors; small models trained in-process.
Tier 2: an object against a watermark shortcut that agrees with the label at a rate rho.

Every scenario is a :class:`~faithmap.truth.scenario.Scenario`: a model, its inputs, targets, the
named regions of each image, and the reliance gates measured on the trained model.
:func:`run` (``faithmap truth``) explains every scenario that passes its gates with every registered
method and scores the maps against the evidence (:mod:`.scores`) and with the proxy metrics
(:mod:`.proxies`).
"""

from .scenario import Gate, Scenario
from .run import TruthConfig, TruthResult, run  # noqa: E402  (``faithmap.truth.run(...)`` runs the benchmark)

__all__ = ["Gate", "Scenario", "TruthConfig", "TruthResult", "run"]
