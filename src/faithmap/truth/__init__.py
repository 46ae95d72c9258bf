"""Ground truth for saliency maps: evidence a model is *known* to use, checked by intervention.

Tier 0: models whose dependence on the input is known by construction (no training).
Tier 1: planted evidence on textured backgrounds with distractors; small models trained in-process.
Tier 2: an object against a watermark shortcut that agrees with the label at a rate rho.

Every scenario is a :class:`~faithmap.truth.scenario.Scenario`: a model, its inputs, targets, the
named regions of each image, and the reliance gates measured on the trained model.
"""

from .scenario import Gate, Scenario

__all__ = ["Gate", "Scenario"]
