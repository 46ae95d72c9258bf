"""Quadrature rules of path integrals over [0, 1] (Integrated Gradients' path, I-GOS' mask path)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import FaithmapError


def check_count(name: str, value: int, low: int = 1) -> int:
    """``value`` as an int, refused in one line unless it is a whole number of at least ``low``."""
    try:
        ok = int(value) == value and int(value) >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FaithmapError(f"{name} must be an integer of at least {low}, got {value}")
    return int(value)


QUADRATURES = ("gausslegendre", "left", "right", "middle", "trapezoid")


def quadrature_nodes(steps: int, kind: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (float64) with ``sum_k w_k g(a_k) ~ int_0^1 g``.

    ``left``/``right``/``middle``: ``a_k = k/S``, ``(k+1)/S``, ``(k+1/2)/S``, ``w_k = 1/S`` (as
    captum). ``trapezoid``: ``a_k = k/(S-1)``, ``w = 1/(S-1)`` halved at both ends: the composite
    trapezoid rule (captum's ``riemann_trapezoid`` uses ``1/S`` there, so its weights sum to
    ``1 - 1/S``; ours sum to 1). ``gausslegendre``: the S-point Gauss-Legendre rule mapped to [0, 1].
    ``riemann_left`` etc. are accepted as names.
    """
    kind = str(kind).lower().replace("riemann_", "").replace("-", "").replace("_", "")
    if kind not in QUADRATURES:
        raise FaithmapError(f"unknown quadrature {kind!r}; choose from: {', '.join(QUADRATURES)}")
    s = check_count("steps", steps, 2 if kind == "trapezoid" else 1)
    k = torch.arange(s, dtype=torch.float64)
    if kind == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(s)  # constants only: no tensor data goes through numpy
        return 0.5 * (1 + torch.tensor(nodes, dtype=torch.float64)), 0.5 * torch.tensor(w, dtype=torch.float64)
    if kind == "trapezoid":
        w = torch.full((s,), 1.0 / (s - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (s - 1)
        return k / (s - 1), w
    offset = {"left": 0.0, "right": 1.0, "middle": 0.5}[kind]
    return (k + offset) / s, torch.full((s,), 1.0 / s, dtype=torch.float64)
