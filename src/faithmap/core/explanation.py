"""The result type every method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .perturb import upsample


@dataclass
class Explanation:
    """Saliency maps for a batch of images, on the input's device.

    ``saliency`` is (B, h, w) at the method's native resolution, larger = more important.
    ``attribution`` optionally keeps the raw per-channel attribution (B, C, H, W) of gradient
    methods. ``history`` holds per-iteration records of optimisation methods (tensors with a
    leading batch dimension or per-iteration lists). ``counts`` holds the images sent through the
    model (``images``, ``grad_images``, ``nograd_images``) and ``seconds`` the wall time.
    """

    saliency: torch.Tensor
    target: torch.Tensor
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    attribution: torch.Tensor | None = None
    history: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.saliency.shape[0])

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.saliency.shape[-2:])  # type: ignore[return-value]

    def upsampled(self, size: int | tuple[int, int]) -> torch.Tensor:
        """Saliency bilinearly upsampled to ``size`` (B, H, W)."""
        return upsample(self.saliency.unsqueeze(1), size).squeeze(1)

    def normalized(self) -> torch.Tensor:
        """Saliency min-max normalised to [0, 1] per image (constant maps become zeros)."""
        s = self.saliency.flatten(1)
        lo, hi = s.min(1, keepdim=True).values, s.max(1, keepdim=True).values
        return ((s - lo) / (hi - lo).clamp_min(1e-12)).view_as(self.saliency)

    def select(self, index) -> "Explanation":
        """The explanation of a subset of the batch (tensors with a batch dimension are sliced)."""
        n = len(self)

        def cut(v):
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                return v[index]
            if isinstance(v, dict):
                return {k: cut(u) for k, u in v.items()}
            return v

        return Explanation(cut(self.saliency), cut(self.target), self.method, dict(self.params),
                           cut(self.attribution), cut(self.history), cut(self.extras), dict(self.counts),
                           self.seconds)
