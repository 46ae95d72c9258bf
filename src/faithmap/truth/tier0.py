"""Tier 0: models whose dependence on the input is known by construction (no training).

* **Grid models** (DiFull / GridPG, Rao, Böhle & Schiele, CVPR 2022 and ICCV 2023): one shared trunk
  is applied separately to each cell of a 2 x 2 grid; the trunk's feature maps are tiled back into
  a 2 x 2 map (the module ``tile``, the CAM layer, so CAM methods run unchanged); a shared head pools
  each quadrant of that map and classifies it. Output ``k * K + c`` is class ``c`` of cell ``k``. Its
  value is the log-softmax *within* cell ``k``, so both the output and the softmax over all 4K
  outputs (``exp(log p_k(c)) / sum_k' sum_c' p_k'(c') = p_k(c) / 4``) depend on cell ``k`` alone: any
  attribution outside the target's cell is provably wrong, for methods that read logits and for
  those that read probabilities.
* **Masked models**: ``net(x * visible)``, a fixed 0/1 mask multiplied into the (normalised) input
  before the network: the model never sees the pixels where ``visible`` is 0.

Each is built around a small random CNN (random weights are enough: the dependence is structural)
and around the embedded EfficientNet-Lite0 on the bundled photos. ``regions["evidence"]`` is what
the model can see for each image's target (the target's cell; the visible region). Two gates check
the construction by intervention on the built model: replacing everything the model cannot see
leaves the target's output and probability unchanged (to float precision), and replacing what it
can see changes them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.device import resolve_device
from ..data.samples import SAMPLES, load_sample
from ..errors import FaithmapError
from ..models import Classifier, load, wrap
from .scenario import Gate, Scenario

GRID = 2
"""Cells per side of the grid models."""
TRUNKS = ("cnn", "lite0")
KINDS = ("grid", "masked")
CELL = {"cnn": 32, "lite0": 64}
"""Cell side in pixels per trunk (inputs are 2 cells wide): Lite0 at 64 px cells gives a 2 x 2 map per
cell (4 x 4 tiled), small enough for every method on two CPU cores."""
CNN_CLASSES = 10
LOGIT_SPREAD = 4.0
"""Standard deviation of the random CNN's logits over the classes (see :class:`SmallCNN`)."""
INVARIANCE_TOL = 1e-4
"""Gate: the largest change of the target's log-probability or probability (x 100, in percent points)
when everything the model cannot see is replaced."""
SENSITIVITY_MIN = 1e-3
"""Gate: the mean (over images) largest change among the outputs when what the model can see is replaced."""


# ----------------------------------------------------------------------------------------------
# the models
# ----------------------------------------------------------------------------------------------
def split_cells(x: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(B, C, H, W) -> (B * grid * grid, C, H / grid, W / grid), cells in row-major order per image."""
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise FaithmapError(f"a {grid}x{grid} grid model needs inputs divisible by {grid}, got {h}x{w}")
    s, t = h // grid, w // grid
    return x.reshape(b, c, grid, s, grid, t).permute(0, 2, 4, 1, 3, 5).reshape(b * grid * grid, c, s, t)


def untile(t: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """The inverse of :class:`Tile`: (B, C, g*h, g*w) -> (B * g * g, C, h, w)."""
    return split_cells(t, grid)


class Tile(nn.Module):
    """Per-cell feature maps (B * g * g, C, h, w) tiled as their cells lie in the image: (B, C, g*h, g*w)."""

    def __init__(self, grid: int = GRID):
        super().__init__()
        self.grid = grid

    def forward(self, f: torch.Tensor) -> torch.Tensor:  # noqa: D102
        g = self.grid
        n, c, h, w = f.shape
        b = n // (g * g)
        return f.reshape(b, g, g, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * h, g * w)


class GridModel(nn.Module):
    """A DiFull-style grid model: ``trunk`` on each cell, features tiled (``tile``: the CAM layer),
    each quadrant average-pooled and classified by ``head``; output ``k * K + c`` = log p_k(c), the
    log-softmax of cell ``k``'s logits (see the module docstring)."""

    def __init__(self, trunk: nn.Module, head: nn.Module, grid: int = GRID):
        super().__init__()
        self.trunk, self.tile, self.head, self.grid = trunk, Tile(grid), head, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        tiled = self.tile(self.trunk(split_cells(x, self.grid)))
        pooled = untile(tiled, self.grid).mean((2, 3))  # (B * g * g, C): each quadrant alone
        z = self.head(pooled).reshape(x.shape[0], self.grid * self.grid, -1)
        return torch.log_softmax(z, -1).flatten(1)


class MaskedModel(nn.Module):
    """``net(x * visible)``: the pixels where ``visible`` is 0 never reach ``net``."""

    def __init__(self, net: nn.Module, visible: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("visible", visible.to(torch.float32).reshape(1, 1, *visible.shape[-2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x * self.visible)


class SmallCNN(nn.Module):
    """Three 3x3 convolutions with ReLUs and two max-pools (32 px -> an 8 x 8 map), global average
    pooling and a linear head; He-normal random weights drawn from ``seed`` (no global RNG), the
    first layer's filters made zero-mean (they respond to local contrast, not to flat colour).

    The head is then scaled so that its logits spread over the classes with a standard deviation of
    :data:`LOGIT_SPREAD` on 16 photo crops drawn from the seed: a softmax as confident as a trained
    model's, whose top class falls when the cell is blurred. Unscaled, the top class has about 0.2
    and blurring hardly moves it, and I-GOS returns empty maps; scaled much further, the softmax
    saturates in float32 and gradients of the log-probability vanish."""

    def __init__(self, seed: int, classes: int = CNN_CLASSES, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            first = self.features[0]
            first.weight.sub_(first.weight.mean((1, 2, 3), keepdim=True))
            rng = np.random.default_rng([int(seed), 99])
            probe = torch.stack([photo_crop(rng, CELL["cnn"]) for _ in range(16)]) * 2 - 1
            spread = self(probe).std(1).mean().clamp_min(1e-6)
            self.fc.weight.mul_(LOGIT_SPREAD / spread)
            self.fc.bias.mul_(LOGIT_SPREAD / spread)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.fc(self.pool(self.features(x)).flatten(1))


@lru_cache(maxsize=1)
def _lite0() -> Classifier:
    """The embedded EfficientNet-Lite0 (fused, CPU), loaded once; its modules are shared read-only."""
    return load()


def _trunk_and_head(trunk: str, seed: int) -> tuple[nn.Module, nn.Module, nn.Module, dict]:
    """(trunk, head, whole network, preprocessing) for ``cnn`` or ``lite0``."""
    if trunk == "cnn":
        net = SmallCNN(seed).eval()
        return net.features, net.fc, net, dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), classes=CNN_CLASSES,
                                               names=[f"class {i}" for i in range(CNN_CLASSES)], cam="features.7")
    clf = _lite0()
    return clf.net.features, clf.net.classifier, clf.net, dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                                               classes=1000, names=list(clf.class_names),
                                                               cam="features.17")


# ----------------------------------------------------------------------------------------------
# inputs: crops of the bundled photos, drawn from the seed
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The six bundled sample photos, shorter side reduced to 192 px (PIL, deterministic)."""
    out = []
    for name in SAMPLES:
        im = Image.fromarray(load_sample(name))
        scale = 192 / min(im.size)
        out.append(np.asarray(im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.BILINEAR)))
    return tuple(out)


def photo_crop(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A random square crop (40-100% of the shorter side) of a random bundled photo, resized to
    ``size`` with PIL's antialiased bilinear filter: (3, size, size) in [0, 1]. Deterministic for a
    given ``rng`` state on any machine and thread count (PIL, single-threaded)."""
    photos = _photos()
    a = photos[int(rng.integers(len(photos)))]
    h, w = a.shape[:2]
    side = int(round(min(h, w) * rng.uniform(0.4, 1.0)))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    im = Image.fromarray(np.ascontiguousarray(a[top:top + side, left:left + side])).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0


def grid_images(rng: np.random.Generator, n: int, cell: int, grid: int = GRID) -> torch.Tensor:
    """``n`` images (n, 3, grid*cell, grid*cell) in [0, 1], each cell an independent photo crop."""
    out = torch.empty(n, 3, grid * cell, grid * cell)
    for i in range(n):
        for r in range(grid):
            for c in range(grid):
                out[i, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = photo_crop(rng, cell)
    return out


def cell_masks(size: int, grid: int = GRID) -> torch.Tensor:
    """(grid * grid, size, size) bool: cell k's pixels (row-major)."""
    s = size // grid
    m = torch.zeros(grid * grid, size, size, dtype=torch.bool)
    for k in range(grid * grid):
        r, c = divmod(k, grid)
        m[k, r * s:(r + 1) * s, c * s:(c + 1) * s] = True
    return m


def visible_region(rng: np.random.Generator, size: int, step: int | None = None) -> torch.Tensor:
    """A random axis-aligned rectangle (sides 3/8 to 5/8 of the image, on a 1/16 grid): (size, size) bool."""
    step = step or max(1, size // 16)
    cells = size // step
    hh, ww = (int(rng.integers(6 * cells // 16, 10 * cells // 16 + 1)) for _ in range(2))
    top, left = int(rng.integers(cells - hh + 1)), int(rng.integers(cells - ww + 1))
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top * step:(top + hh) * step, left * step:(left + ww) * step] = True
    return m


# ----------------------------------------------------------------------------------------------
# scenarios
# ----------------------------------------------------------------------------------------------
def grid_scenario(seed: int, trunk: str = "cnn", *, images: int = 4, device="cpu") -> Scenario:
    """A grid model around ``trunk`` with ``images`` grid images; each image's target is the top class
    of one cell drawn from the seed, its evidence that cell."""
    part, head, _, pre = _trunk_and_head(trunk, seed)
    cell = CELL[trunk]
    size = GRID * cell
    names = [f"cell {k}: {n}" for k in range(GRID * GRID) for n in pre["names"]]
    model = wrap(GridModel(part, head).eval(), mean=pre["mean"], std=pre["std"], input_size=size, class_names=names,
                 cam_layer="tile", name=f"grid-{trunk}").to(resolve_device(device))
    rng = np.random.default_rng([int(seed), 0, TRUNKS.index(trunk)])
    x = model.normalize(grid_images(rng, images, cell)).to(model.device)
    cells = torch.as_tensor(rng.integers(GRID * GRID, size=images))
    with torch.no_grad():
        logits = model(x).reshape(images, GRID * GRID, -1).cpu()
    classes = logits[torch.arange(images), cells].argmax(-1)
    target = (cells * pre["classes"] + classes).to(model.device)
    evidence = cell_masks(size)[cells].to(model.device)
    other = model.normalize(grid_images(rng, images, cell)).to(model.device)
    return Scenario(0, f"grid-{trunk}", int(seed), model, x, target, {"evidence": evidence},
                    gates=_gates(model, x, target, evidence, other),
                    info={"kind": "grid", "trunk": trunk, "cell": cell, "grid": GRID, "input": size,
                          "target_cells": cells.tolist(), "evidence_share": 1 / GRID ** 2})


def masked_scenario(seed: int, trunk: str = "cnn", *, images: int = 4, device="cpu") -> Scenario:
    """A masked model around ``trunk``: a fixed visible rectangle drawn from the seed; whole-photo
    inputs; each image's target its top class, its evidence the visible rectangle."""
    _, _, net, pre = _trunk_and_head(trunk, seed)
    size = GRID * CELL[trunk]
    rng = np.random.default_rng([int(seed), 1, TRUNKS.index(trunk)])
    visible = visible_region(rng, size)
    model = wrap(MaskedModel(net, visible).eval(), mean=pre["mean"], std=pre["std"], input_size=size,
                 class_names=pre["names"], cam_layer=f"net.{pre['cam']}", name=f"masked-{trunk}"
                 ).to(resolve_device(device))
    x = model.normalize(torch.stack([photo_crop(rng, size) for _ in range(images)])).to(model.device)
    with torch.no_grad():
        target = model(x).argmax(1)
    evidence = visible.to(model.device).expand(images, size, size).clone()
    other = model.normalize(torch.stack([photo_crop(rng, size) for _ in range(images)])).to(model.device)
    return Scenario(0, f"masked-{trunk}", int(seed), model, x, target, {"evidence": evidence},
                    gates=_gates(model, x, target, evidence, other),
                    info={"kind": "masked", "trunk": trunk, "input": size,
                          "evidence_share": float(visible.float().mean())})


def _gates(model, x: torch.Tensor, target: torch.Tensor, evidence: torch.Tensor, other: torch.Tensor) -> list[Gate]:
    """The construction checked by intervention: ``other``'s pixels put where the model cannot see
    (nothing may change) and where it can (something must)."""
    e = evidence.unsqueeze(1)
    t = target.view(-1, 1)
    with torch.no_grad():
        out = model(x).double()
        out_u = model(torch.where(e, x, other)).double()
        out_s = model(torch.where(e, other, x)).double()
    d_out = (out_u.gather(1, t) - out.gather(1, t)).abs().max()
    d_prob = (torch.softmax(out_u, 1).gather(1, t) - torch.softmax(out, 1).gather(1, t)).abs().max()
    d_seen = (out_s - out).abs().amax(1).mean()
    return [
        Gate.check("unseen replaced: output unchanged", float(max(d_out, 100 * d_prob)), INVARIANCE_TOL, "<=",
                   f"largest change of the target's output {float(d_out):.2e}, of its probability "
                   f"{float(d_prob):.2e}, when every pixel outside the evidence comes from other photos"),
        Gate.check("seen replaced: outputs change", float(d_seen), SENSITIVITY_MIN, ">=",
                   "mean over images of the largest change among the outputs when the evidence comes from other photos"),
    ]


def build(seed: int, *, trunks=TRUNKS, kinds=KINDS, images: int = 4, device="cpu") -> list[Scenario]:
    """Every tier-0 scenario of ``seed``: for each trunk (``cnn``, ``lite0``) a grid and a masked model."""
    bad = [t for t in trunks if t not in TRUNKS] + [k for k in kinds if k not in KINDS]
    if bad:
        raise FaithmapError(f"unknown tier-0 trunk or kind {bad[0]!r}; trunks: {', '.join(TRUNKS)}; "
                            f"kinds: {', '.join(KINDS)}")
    if int(images) < 1:
        raise FaithmapError(f"tier 0 needs at least 1 image per scenario, got {images}")
    return [MAKERS[k](seed, t, images=int(images), device=device) for t in trunks for k in kinds]


MAKERS = {"grid": grid_scenario, "masked": masked_scenario}
"""Scenario kind -> its builder ``(seed, trunk, *, images, device) -> Scenario``."""


__all__ = ["CELL", "GRID", "GridModel", "KINDS", "MAKERS", "MaskedModel", "SmallCNN", "TRUNKS", "Tile", "build", "cell_masks",
           "grid_scenario", "masked_scenario", "split_cells", "visible_region"]
