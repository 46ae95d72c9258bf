"""Test-only helpers for the audit tests: small models whose evidence is known, and their images.

* :class:`CornerNet`: hand-set; reads only the top-left corner, where a class mark is drawn (red for
  class 0, green for class 1) on otherwise random textured images.
* :func:`train_tagnet`: a tiny CNN trained in the test (seconds) on images with a coloured square at a
  random place and a tag in the top-right corner; with ``carrier="tag"`` only the tag carries the
  label (a shortcut), with ``carrier="object"`` only the square does (the tag is random).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from faithmap.core.batching import torch_threads
from faithmap.models import wrap

SIZE = 32
MARK = (1, 7, 1, 7)  # rows, cols of CornerNet's mark: top-left
TAG = (1, 7, 25, 31)  # rows, cols of the tag: top-right
TAG_BOX = [TAG[2] / SIZE, TAG[0] / SIZE, TAG[3] / SIZE, TAG[1] / SIZE]
MARK_BOX = [MARK[2] / SIZE, MARK[0] / SIZE, MARK[3] / SIZE, MARK[1] / SIZE]
RED, GREEN, BLUE, BLACK = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)


def texture(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A grey textured background in [0.3, 0.7], (size, size, 3) float."""
    return 0.3 + 0.4 * rng.random((size, size, 3))


def paint(img: np.ndarray, where: tuple[int, int, int, int], colour) -> None:
    r0, r1, c0, c1 = where
    img[r0:r1, c0:c1] = colour


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


class Gate(nn.Module):
    """Multiplies its input by a fixed spatial mask (the CAM layer of :class:`CornerNet`)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


class CornerNet(nn.Module):
    """Two classes read from the top-left 8 x 8 corner only: red minus green (class 0) and green minus red
    (class 1), pooled over the corner."""

    def __init__(self, gain: float = 12.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]).view(2, 3, 1, 1))
        self.act = nn.ReLU()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., :8, :8] = 1
        self.gate = Gate(mask)
        self.gain = gain

    def forward(self, x):
        a = self.gate(self.act(self.conv(x)))
        return self.gain * a.sum((2, 3)) / 64.0


def corner_model():
    return wrap(CornerNet().eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=SIZE,
                class_names=["red", "green"], cam_layer="gate", name="cornernet")


def corner_images(n: int, seed: int = 0) -> list[tuple[str, np.ndarray, int]]:
    """``n`` (name, photo, label) triples: textured images with the class mark in the top-left corner."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        img = texture(rng)
        paint(img, MARK, RED if label == 0 else GREEN)
        out.append((f"c{i:03d}", to_uint8(img), label))
    return out


def tag_images(n: int, carrier: str, seed: int = 0) -> list[tuple[str, np.ndarray, int]]:
    """``n`` (name, photo, label) triples with a red or green 8 x 8 square at a random place (away from the
    tag) and a blue or black tag in the top-right corner; ``carrier`` ("tag" or "object") carries the label,
    the other is random."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        other = int(rng.integers(0, 2))
        tag, obj = (label, other) if carrier == "tag" else (other, label)
        img = texture(rng)
        r, c = int(rng.integers(10, SIZE - 8)), int(rng.integers(0, SIZE - 8))
        paint(img, (r, r + 8, c, c + 8), RED if obj == 0 else GREEN)
        paint(img, TAG, BLUE if tag == 0 else BLACK)
        out.append((f"t{i:03d}", to_uint8(img), label))
    return out


class TagNet(nn.Module):
    """A tiny CNN: two 3 x 3 convolutions (the second, stride 2, is the CAM layer), global pooling, linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, padding=1),
                                      nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.features(x).amax((2, 3)))


def train_tagnet(carrier: str, n: int = 240, epochs: int = 20, seed: int = 0):
    """A :class:`TagNet` trained on :func:`tag_images` (``carrier``); returns the wrapped model."""
    data = tag_images(n, carrier, seed=1000 + seed)
    x = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for _, p, _ in data])
    y = torch.tensor([lab for _, _, lab in data])
    with torch.random.fork_rng(), torch_threads(1):  # a tiny net: one thread is fastest (and reproducible)
        torch.manual_seed(seed)
        net = TagNet()
        opt = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(epochs):
            perm = torch.randperm(n)
            for s in range(0, n, 40):
                idx = perm[s:s + 40]
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
    net.eval()
    return wrap(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=SIZE, class_names=["zero", "one"],
                cam_layer="features.3", name=f"tagnet-{carrier}")


def overlaps(a, b) -> bool:
    """Whether boxes ``[x0, y0, x1, y1]`` share some area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _slow_gradcam(model, x, target, *, delay: float = 0.3, batch_size=None):
    """Grad-CAM after a delay: a run slow enough to be killed between its parts."""
    import time

    from faithmap.methods.cam import gradcam

    time.sleep(delay)
    return gradcam(model, x, target, batch_size=batch_size)


def register_slow() -> str:
    from faithmap.registry import METHODS, register_method

    if "test-audit-slow" not in METHODS:
        register_method("test-audit-slow", family="test", summary="test: Grad-CAM after a delay",
                        resolution="layer")(_slow_gradcam)
    return "test-audit-slow"


def unregister_slow() -> None:
    from faithmap.registry import METHODS

    METHODS._specs.pop("test-audit-slow", None)


def close(a, b, tol: float = 1e-6) -> bool:
    """Whether two JSON values are equal, numbers within ``tol``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(u, v, tol) for u, v in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    return a == b
