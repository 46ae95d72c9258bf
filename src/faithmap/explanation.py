"""The result type every method returns, and what it needs to draw itself.

:class:`Explanation` lives above :mod:`faithmap.viz` (and the metrics, for its curves) and below the
methods, so that :meth:`Explanation.show` needs no upward import (it imports the drawing code when it
draws, so that ``import faithmap`` does not import matplotlib).

What it keeps to draw: :func:`faithmap.explain` stores a reference to the model inputs it explained
(``inputs``, not a copy) and the model's normalisation (``mean``, ``std``: two small tensors), from
which :attr:`Explanation.pixels` recovers the photos; the target class names; the model's name; and a
*weak* reference to the model, so that ``exp.show(curves=True)`` can compute the deletion and
insertion curves while the model is alive, without keeping its weights alive.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .core.perturb import upsample
from .errors import FaithmapError
from .metrics.deletion import Curves, deletion_insertion

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def map_problems(saliency: torch.Tensor) -> list[str | None]:
    """Per map of ``saliency`` (B, h, w): None, or one line saying why it shows nothing: NaN or infinite
    cells, or every cell equal (e.g. an I-GOS mask that never moved: all zeros)."""
    s = saliency.detach().flatten(1).float()
    bad = (~torch.isfinite(s)).sum(1).tolist()
    lo, hi = s.nan_to_num(0.0).amin(1).tolist(), s.nan_to_num(0.0).amax(1).tolist()
    cells = s.shape[1]
    out: list[str | None] = []
    for k, a, b in zip(bad, lo, hi):
        if k:
            out.append(f"map with NaN: {k} of its {cells} cells are NaN or infinite; it cannot rank the pixels")
        elif a == b:
            out.append(f"constant map: every cell is {a:.4g}, so it ranks no pixel above another (the method found "
                       f"no evidence here; its deletion/insertion scores mean nothing)")
        else:
            out.append(None)
    return out


@dataclass(repr=False)
class Explanation:
    """Saliency maps for a batch of images, on the input's device.

    ``saliency`` is (B, h, w) at the method's native resolution, larger = more important (signed
    methods: positive = evidence for the target). ``attribution`` optionally keeps the raw
    per-channel attribution (B, C, H, W) of gradient methods. ``history`` holds per-iteration
    records of optimisation methods (tensors with a leading batch dimension or per-iteration
    lists). ``counts`` holds the images sent through the model (``images``, ``grad_images``,
    ``nograd_images``) and ``seconds`` the wall time.

    Set by :func:`faithmap.explain` (None for an explanation a method made directly): ``inputs``
    (the model inputs, a reference), ``mean``/``std`` (the model's normalisation), ``target_names``,
    ``model_name``. :meth:`show` draws it; :attr:`warnings` lists maps that show nothing.
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
    inputs: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    target_names: list[str] | None = None
    model_name: str = ""
    model_ref: Any = field(default=None, compare=False)
    """A :func:`weakref.ref` to the model (not pickled), for :meth:`curves`."""

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

    # -- what it shows ---------------------------------------------------------------------------
    @property
    def pixels(self) -> torch.Tensor | None:
        """The explained images as [0, 1] RGB (B, 3, H, W), recovered from ``inputs`` (None if not kept)."""
        if self.inputs is None:
            return None
        x = self.inputs.detach()
        if self.mean is None or self.std is None:
            return x.clamp(0, 1)
        std, mean = self.std.to(x).reshape(-1, 1, 1), self.mean.to(x).reshape(-1, 1, 1)  # (B, C, H, W) or (C, H, W)
        return (x * std + mean).clamp(0, 1)

    def problems(self) -> list[str | None]:
        """Per image: None, or why its map shows nothing (:func:`map_problems`)."""
        return map_problems(self.saliency)

    @property
    def warnings(self) -> list[str]:
        """One line per image whose map is constant (e.g. all zeros) or has NaN: ``image 2: constant map: ...``."""
        return [f"image {i}: {p}" for i, p in enumerate(self.problems()) if p]

    def curves(self, model=None, **kwargs) -> Curves:
        """Deletion and insertion curves of these maps (:func:`faithmap.metrics.deletion_insertion`), with
        ``model`` or the model the explanation came from while it is still alive."""
        model = model if model is not None else (self.model_ref() if self.model_ref is not None else None)
        if model is None:
            raise FaithmapError("the curves need the model: pass model= (this explanation keeps no strong "
                                "reference to its model)")
        if self.inputs is None:
            raise FaithmapError("the curves need the explained images: this explanation did not keep them "
                                "(use faithmap.explain)")
        return deletion_insertion(model, self.inputs, self.saliency, self.target, **kwargs)

    def show(self, index: int | Sequence[int] | None = None, *, curves: Any = None, model=None, alpha: float = 0.5,
             cmap: str | None = None, title: str | None = None) -> "Figure":
        """A :class:`matplotlib.figure.Figure`: per image the photo, the map over it and, with
        ``curves=True`` (or a ``Curves`` object), the deletion/insertion curves. A notebook displays
        it; ``fig.savefig("x.png")`` writes it. See :func:`faithmap.viz.show`."""
        # matplotlib is imported when something is drawn, as the CLI and the evaluate report do: `import
        # faithmap` neither pays for it nor builds its font cache (a read-only or size-limited home)
        from .viz.show import show as draw

        return draw(self, index, curves=curves, model=model, alpha=alpha, cmap=cmap, title=title)

    def _repr_png_(self) -> bytes:
        from .viz.draw import png_bytes  # lazy: see show()

        return png_bytes(self.show(range(min(len(self), 4))))

    def __repr__(self) -> str:
        grid = "x".join(str(v) for v in self.resolution)
        n = len(self)
        head = (f"Explanation({self.method or 'saliency'}{' on ' + self.model_name if self.model_name else ''}: "
                f"{n} image{'s' if n != 1 else ''}, {grid} map{'s' if n != 1 else ''}, {self.seconds:.2f} s, "
                f"{self.counts.get('images', 0)} model images)")
        targets = [int(t) for t in self.target.flatten()[:4].tolist()]
        names = self.target_names or []
        shown = [f"{t} '{names[i]}'" if i < len(names) else str(t) for i, t in enumerate(targets)]
        lines = [head, "  targets: " + ", ".join(shown) + (f", ... ({n} in all)" if n > len(shown) else "")]
        warn = self.warnings
        if warn:
            lines.append(f"  warning: {warn[0]}" + (f" (and {len(warn) - 1} more: .warnings)" if len(warn) > 1 else ""))
        return "\n".join(lines)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["model_ref"] = None  # a weak reference cannot be pickled (and the model may not travel)
        return state

    def select(self, index) -> "Explanation":
        """The explanation of a subset of the batch (tensors with a batch dimension are sliced)."""
        n = len(self)

        def cut(v):
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                return v[index]
            if isinstance(v, dict):
                return {k: cut(u) for k, u in v.items()}
            return v

        names = self.target_names
        if names is not None:
            names = [names[i] for i in torch.arange(n)[index].flatten().tolist()]
        return dataclasses.replace(
            self, saliency=cut(self.saliency), target=cut(self.target), params=dict(self.params),
            attribution=cut(self.attribution), history=cut(self.history), extras=cut(self.extras),
            counts=dict(self.counts), inputs=cut(self.inputs), target_names=names)


def model_reference(model) -> Any:
    """A weak reference to ``model`` (None when it cannot have one)."""
    try:
        return weakref.ref(model)
    except TypeError:
        return None
