"""Test-only helpers for the evaluation tests: tiny registered methods, a tiny model and photos.

The methods are registered by :func:`register` and removed by :func:`unregister` (a fixture does
both), so they never leak into the registry-wide tests or the README tables.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn

import faithmap
from faithmap.core.batching import model_guard, per_image_generators
from faithmap.explanation import Explanation
from faithmap.models import wrap
from faithmap.registry import METHODS, register_method

NAMES = ("test-blob", "test-random", "test-gradient", "test-slow", "test-flat")


def blob(h: int, w: int, row: float, col: float, width: float = 0.15) -> torch.Tensor:
    """A Gaussian bump centred at (row, col) in [0, 1] coordinates of an h x w grid."""
    r = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    c = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    return torch.exp(-(((r[:, None] - row) ** 2) + ((c[None, :] - col) ** 2)) / (2 * width**2))


def _blob(model, x, target, *, resolution: int = 8, row: float = 0.375, col: float = 0.625, batch_size=None,
          seed=0) -> Explanation:
    s = blob(resolution, resolution, row, col).to(x.device).expand(x.shape[0], resolution, resolution).clone()
    return Explanation(s, target)


def _random(model, x, target, *, resolution: int = 8, batch_size=None, seed=0) -> Explanation:
    gens = per_image_generators(seed, x.shape[0], "cpu")
    s = torch.stack([torch.rand(resolution, resolution, generator=g) for g in gens]).to(x.device)
    return Explanation(s, target)


def _gradient(model, x, target, *, batch_size=None, seed=0) -> Explanation:
    with model_guard(model):
        xx = x.detach().clone().requires_grad_(True)
        out = model(xx).gather(1, target.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, xx)
    return Explanation(g.abs().amax(1).detach(), target)


def _slow(model, x, target, *, resolution: int = 8, delay: float = 0.15, batch_size=None, seed=0) -> Explanation:
    time.sleep(delay)
    return _random(model, x, target, resolution=resolution, seed=seed)


def _flat(model, x, target, *, batch_size=None, seed=0) -> Explanation:
    return Explanation(torch.ones(x.shape[0], 4, 4, device=x.device), target)


SPECS = {
    "test-blob": dict(fn=_blob, family="test", resolution="mask", summary="test: a fixed Gaussian bump"),
    "test-random": dict(fn=_random, family="test", resolution="mask", summary="test: seeded uniform noise"),
    "test-gradient": dict(fn=_gradient, family="test", resolution="input", summary="test: |gradient|, channel max"),
    "test-slow": dict(fn=_slow, family="test", resolution="mask", summary="test: seeded noise after a delay",
                      fast={"delay": 0.05}),
    "test-flat": dict(fn=_flat, family="test", resolution="layer", summary="test: a constant 4x4 map"),
}


def register() -> None:
    for name, d in SPECS.items():
        if name not in METHODS:
            d = dict(d)
            register_method(name, family=d.pop("family"), summary=d.pop("summary"), resolution=d.pop("resolution"),
                            fast=d.pop("fast", None))(d.pop("fn"))


def unregister() -> None:
    for name in SPECS:
        METHODS._specs.pop(name, None)


@contextlib.contextmanager
def registered():
    register()
    try:
        yield
    finally:
        unregister()


class PatchNet(nn.Module):
    """Two classes; class 0's logit grows with the brightness of a fixed patch (rows 8-16, cols 16-24)."""

    def __init__(self, size: int = 32, patch=(8, 16, 16, 24), gain: float = 12.0, offset: float = 0.3):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 3)
        weight = torch.zeros(1, 1, size, size)
        r0, r1, c0, c1 = patch
        weight[..., r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
        self.register_buffer("weight", weight)
        self.gain, self.offset = gain, offset

    def forward(self, x):
        s = (torch.relu(self.conv(x)) * self.weight).flatten(1).sum(1)
        z = self.gain * (s - self.offset)
        return torch.stack([z, torch.zeros_like(z)], 1)


def tiny_model():
    return wrap(PatchNet().eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32,
                class_names=["patch", "background"], name="patchnet")


def photos(n: int = 3, size: int = 32) -> list[tuple[str, np.ndarray]]:
    """``n`` dark textured uint8 photos with a bright patch (rows 8-16, cols 16-24)."""
    out = []
    for i in range(n):
        g = np.random.default_rng(i)
        img = (0.1 + 0.1 * g.random((size, size, 3))) * 255
        img[8:16, 16:24] = (0.9 + 0.1 * g.random((8, 8, 3))) * 255
        out.append((f"img{i}", img.round().astype(np.uint8)))
    return out


def boxes_json(path, n: int = 3) -> None:
    """A faithmap annotation file with the patch box for each photo of :func:`photos`."""
    import json

    data = {"images": {f"img{i}": {"size": [32, 32], "objects": [{"category": "patch", "box": [16, 8, 24, 16],
                                                                    "classes": [0]}]} for i in range(n)}}
    with open(path, "w") as fh:
        json.dump(data, fh)


def run_eval(out, **kw):
    """``faithmap.evaluate`` on the tiny model and photos, quietly."""
    args = dict(methods="test-blob,test-random,test-gradient", images=photos(), out=str(out), model=tiny_model(),
                resolutions="4,8", metrics="deletion,insertion,overall,average_drop,increase_confidence",
                progress=False, report=False)
    args.update(kw)
    return faithmap.evaluate(**args)


class TinyCNN(nn.Module):
    """A small random CNN with ReLUs, a conv layer for CAM methods and a linear head (4 classes)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def cnn_model():
    """TinyCNN wrapped for faithmap: every registered method runs on it (CAMs on ``features.4``)."""
    return wrap(TinyCNN().eval(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32, cam_layer="features.4",
                name="tinycnn", class_names=["a", "b", "c", "d"])


def any_target_boxes(path, n: int = 3) -> None:
    """Annotations with one box per photo that counts for every target (no classes, a category no class has)."""
    import json

    data = {"images": {f"img{i}": {"size": [32, 32], "objects": [{"category": "thing", "box": [6, 4, 26, 20]}]}
                       for i in range(n)}}
    with open(path, "w") as fh:
        json.dump(data, fh)
