"""The one interface between the ground-truth generators (tiers 0-2) and the scoring.

A generator returns a :class:`Scenario`; the scorer reads only these fields. The truth of a
scenario comes from interventions on the model it holds (the gates and ``uses``), never from how
its data was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Gate:
    """One reliance check, measured on the trained model: ``value`` compared with ``threshold``.

    ``op`` is ``">="`` or ``"<="``; ``passed`` is the comparison's outcome. ``detail`` is one line
    a person reads (what was intervened on and what happened).
    """

    name: str
    value: float
    threshold: float
    op: str
    passed: bool
    detail: str = ""

    @staticmethod
    def check(name: str, value: float, threshold: float, op: str = ">=", detail: str = "") -> "Gate":
        if op not in (">=", "<="):
            raise ValueError(f"gate op must be '>=' or '<=', got {op!r}")
        ok = bool(value >= threshold) if op == ">=" else bool(value <= threshold)
        return Gate(name, float(value), float(threshold), op, ok, detail)


@dataclass
class Scenario:
    """A model with inputs whose evidence is known, and what the model was measured to rely on.

    * ``tier``: 0, 1 or 2; ``name``: e.g. ``grid-lite0``, ``planted-cnn``, ``watermark-cnn-rho0.90``;
      ``model_seed``: the seed the model (and its training data) came from.
    * ``model``: a :class:`faithmap.models.Classifier`; ``x``: its inputs (N, 3, H, W), normalised as
      the model expects; ``target``: (N,) long, the class each map must explain.
    * ``regions``: named boolean masks (N, H, W) at input size: ``"evidence"`` always (tier 0: the
      region the model can see for the target, any map mass outside it is provably wrong; tier 1:
      the planted pattern; tier 2: the union of the cues the model was measured to use), and
      others (``"distractors"``, ``"pattern"``, ``"watermark"``, ``"object"``) where they exist.
    * ``uses``: measured reliance per cue, e.g. ``{"watermark": 0.41, "object": 0.03}``: the drop
      in accuracy when that cue alone is removed (tier 1/2).
    * ``gates``: reliance gates; a scenario whose gates do not all pass is reported, never scored.
    * ``info``: anything else worth reporting (training seconds, accuracy, rho, ...).
    """

    tier: int
    name: str
    model_seed: int
    model: Any
    x: torch.Tensor
    target: torch.Tensor
    regions: dict[str, torch.Tensor]
    uses: dict[str, float] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def evidence(self) -> torch.Tensor:
        return self.regions["evidence"]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]
