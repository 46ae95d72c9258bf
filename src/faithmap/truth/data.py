"""Image generators of the ground-truth tiers: planted patterns (tier 1) and an object against a
watermark shortcut (tier 2), drawn from a seed, no download.

An image is a textured background (a crop of one of the photos bundled with scikit-image,
scikit-learn and matplotlib, :data:`faithmap.data.PHOTOS`, or procedural value noise) with a few
*things* painted on it: stencils of one flat colour each (a tag is a plate with a glyph on it).
A :class:`Scene` keeps the backgrounds and the things apart, so that an intervention (a thing
removed, its shape swapped, a watermark made to disagree) redraws the same image with that one
change: everything else stays pixel for pixel the same.

* :func:`planted` (tier 1): one class-defining pattern (``plus``, ``cross``, ``ring``, ``bars``) at
  a random place and scale, and distractors (``dot``, ``corner``, ``dash``, ``slash``) of the same
  contrast and scale range, drawn independently of the label: without them an edge detector finds
  the pattern trivially (Zhou, Booth, Ribeiro & Shah, AAAI 2022, plant a single salient cue).
* :func:`watermarked` (tier 2): an object (a filled ``disc`` or ``square``: the class) and a corner
  tag with a letter (``O`` or ``X``) that names the label with probability ``rho``; with two classes
  ``rho = 0.5`` makes the tag independent of the label.

Determinism: every call draws from its own :class:`numpy.random.Generator` seeded from
``(seed, stream)``; backgrounds are resized with Pillow and painted with integer arithmetic on
uint8 arrays, so the images do not depend on the number of threads (no BLAS, no torch kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..data import load_sample
from ..errors import FaithmapError

PATTERNS = ("plus", "cross", "ring", "bars")
"""Tier 1's class-defining patterns (class k draws ``PATTERNS[k]``)."""
DISTRACTORS = ("dot", "corner", "dash", "slash")
"""Tier 1's distractor shapes: never a class pattern, drawn regardless of the label."""
OBJECTS = ("disc", "square")
"""Tier 2's object classes."""
GLYPHS = ("O", "X")
"""Tier 2's watermark letters: glyph k names class k."""
BACKGROUND_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "china", "flower", "motorcycle_left",
                     "motorcycle_right", "hubble_deep_field", "retina", "immunohistochemistry", "grace_hopper")
"""The bundled photos whose crops serve as backgrounds (the twelve distinct ones of PHOTOS)."""
CUES = ("pattern", "background", "none")

_STREAMS = {"planted": 1, "watermarked": 2, "swap": 3}
_LOW, _HIGH = 48, 208  # background grey levels are squeezed into [_LOW, _HIGH]; inks lie outside
_TINTS = np.array([[230, 60, 60], [60, 200, 60], [60, 90, 230], [220, 200, 40]], dtype=np.int32)

_FONT = {  # 5 x 7 letters, '#' = ink
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
}


def rng_for(seed: int, generator: str, *more: int) -> np.random.Generator:
    """A generator of its own for ``(seed, generator, *more)`` (``generator``: ``planted``,
    ``watermarked``, or ``swap``, the classes a swap test draws): the same arguments, the same numbers."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAMS[generator], *(int(m) for m in more)]))


# -- stencils ---------------------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def stencil(shape: str, h: int, w: int) -> np.ndarray:
    """The (h, w) bool stencil of ``shape``, drawn with integer pixel arithmetic (exact, no rounding)."""
    i, j = np.mgrid[0:h, 0:w]
    s = min(h, w)
    dr, dc = np.abs(2 * i + 1 - h), np.abs(2 * j + 1 - w)  # distance to the centre in half pixels
    edge = np.minimum(np.minimum(i, j), np.minimum(h - 1 - i, w - 1 - j))
    band = s / 4  # half-width of a stroke, in half pixels
    thick = max(1, round(s / 6))
    if shape == "plus":
        m = (dr < band) | (dc < band)
    elif shape == "cross":
        m = (np.abs(i - j) < s / 7) | (np.abs(i + j - (s - 1)) < s / 7)
    elif shape == "ring":
        m = edge < thick
    elif shape == "bars":
        m = (np.abs(4 * i + 2 - h) <= 2 * thick) | (np.abs(4 * i + 2 - 3 * h) <= 2 * thick)
    elif shape == "dot":
        m = dr ** 2 + dc ** 2 <= (s * 0.7) ** 2
    elif shape == "corner":
        m = (j < thick + 1) | (i >= h - thick - 1)
    elif shape == "dash":
        m = dr < band
    elif shape == "slash":
        m = np.abs(i + j - (s - 1)) < s / 7
    elif shape == "disc":
        m = dr ** 2 + dc ** 2 <= s ** 2
    elif shape == "square":
        m = np.ones((h, w), bool)
    elif shape in _FONT:
        f = max(1, min(h // 9, w // 7))
        glyph = np.array([[c == "#" for c in row] for row in _FONT[shape]]).repeat(f, 0).repeat(f, 1)
        m = np.zeros((h, w), bool)
        top, left = (h - glyph.shape[0]) // 2, (w - glyph.shape[1]) // 2
        m[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph
    else:
        raise FaithmapError(f"unknown shape {shape!r}")
    m = np.ascontiguousarray(m)
    m.setflags(write=False)
    return m


@dataclass(frozen=True)
class Thing:
    """One painted thing: ``role`` (``pattern``, ``distractor``, ``object``, ``watermark``), its
    ``shape``, its box (``y``, ``x``, ``h``, ``w``), its ``ink``; a tag also has a ``plate`` colour
    that fills its whole box under the glyph."""

    role: str
    shape: str
    y: int
    x: int
    h: int
    w: int
    ink: tuple[int, int, int]
    plate: tuple[int, int, int] | None = None

    def mask(self) -> np.ndarray:
        """The pixels this thing changes, within its box."""
        return np.ones((self.h, self.w), bool) if self.plate is not None else stencil(self.shape, self.h, self.w)

    def paint(self, img: np.ndarray) -> None:
        box = img[self.y:self.y + self.h, self.x:self.x + self.w]
        if self.plate is not None:
            box[...] = self.plate
        box[stencil(self.shape, self.h, self.w)] = self.ink


@dataclass
class Scene:
    """Generated images as their parts: ``background`` (N, H, W, 3) uint8, ``labels`` (N,), and the
    things painted on each image (``things[n]``, in painting order).

    ``images`` (N, 3, H, W) uint8 is the rendering; :meth:`regions` the boolean masks of each role;
    :meth:`without` and :meth:`reshaped` are the interventions. A scene unpacks as
    ``images, labels, regions``.
    """

    background: np.ndarray
    labels: np.ndarray
    things: list[tuple[Thing, ...]]
    class_names: tuple[str, ...]
    info: dict = field(default_factory=dict)
    _images: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator:
        return iter((self.images, torch.from_numpy(self.labels), self.regions()))

    @property
    def size(self) -> int:
        return int(self.background.shape[1])

    @property
    def images(self) -> torch.Tensor:
        """The rendered images, (N, 3, H, W) uint8."""
        if self._images is None:
            out = self.background.copy()
            for img, things in zip(out, self.things):
                for t in things:
                    t.paint(img)
            self._images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return self._images

    def pixels(self) -> torch.Tensor:
        """The images as floats in [0, 1], (N, 3, H, W)."""
        return self.images.float() / 255.0

    def regions(self, boxes: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """Role -> (N, H, W) bool: the pixels each role's things changed (their whole boxes for the
        roles in ``boxes``). Pixels outside every region equal the background."""
        n, h, w = self.background.shape[:3]
        roles = sorted({t.role for things in self.things for t in things})
        out = {r: np.zeros((n, h, w), bool) for r in roles}
        for k, things in enumerate(self.things):
            for t in things:
                m = np.ones((t.h, t.w), bool) if t.role in boxes else t.mask()
                out[t.role][k, t.y:t.y + t.h, t.x:t.x + t.w] |= m
        return {r: torch.from_numpy(m) for r, m in out.items()}

    def without(self, *roles: str) -> "Scene":
        """The same scene with the things of ``roles`` removed (background in their place)."""
        things = [tuple(t for t in ts if t.role not in roles) for ts in self.things]
        return Scene(self.background, self.labels, things, self.class_names, dict(self.info))

    def reshaped(self, role: str, shapes: Sequence[str]) -> "Scene":
        """The same scene with the thing of ``role`` in image n drawn as ``shapes[n]`` (same box, same ink)."""
        if len(shapes) != len(self):
            raise FaithmapError(f"reshaped needs one shape per image ({len(self)}), got {len(shapes)}")
        things = [tuple(replace(t, shape=s) if t.role == role else t for t in ts) for ts, s in zip(self.things, shapes)]
        return Scene(self.background, self.labels, things, self.class_names, dict(self.info))

    def subset(self, index: Sequence[int]) -> "Scene":
        idx = np.asarray(index, dtype=np.int64)
        return Scene(self.background[idx], self.labels[idx], [self.things[i] for i in idx], self.class_names,
                     dict(self.info))

    def shapes(self, role: str) -> list[str]:
        """The shape of the (first) thing of ``role`` in each image."""
        return [next(t.shape for t in ts if t.role == role) for ts in self.things]


# -- backgrounds ------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _photo_pyramid(size: int) -> tuple[np.ndarray, ...]:
    """The background photos resized (Pillow, bilinear) so that their shorter side is 2, 3 and 5
    times ``size``: crops of ``size`` from them show texture at three scales."""
    out = []
    for name in BACKGROUND_PHOTOS:
        im = Image.fromarray(load_sample(name))
        for factor in (2, 3, 5):
            short = factor * size
            w, h = im.size
            scale = short / min(w, h)
            out.append(np.asarray(im.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                                            Image.BILINEAR)))
    return tuple(out)


def _squeeze(img: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 -> _LOW.._HIGH (integer arithmetic), so that inks stand out."""
    return (_LOW + (img.astype(np.int32) * (_HIGH - _LOW)) // 255).astype(np.uint8)


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = _photo_pyramid(size)
    p = photos[int(rng.integers(len(photos)))]
    y, x = int(rng.integers(p.shape[0] - size + 1)), int(rng.integers(p.shape[1] - size + 1))
    crop = p[y:y + size, x:x + size]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (align-corners) upsampling of a (g, g, 3) grid to (size, size, 3), elementwise only."""
    g = grid.shape[0]
    pos = np.arange(size) * (g - 1) / max(size - 1, 1)
    i0 = np.minimum(pos.astype(np.int64), g - 2)
    t = pos - i0
    rows = grid[i0] * (1 - t)[:, None, None] + grid[i0 + 1] * t[:, None, None]
    return rows[:, i0] * (1 - t)[None, :, None] + rows[:, i0 + 1] * t[None, :, None]


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Value noise: three octaves of bilinear random grids and a little pixel noise, a random tint."""
    acc = np.zeros((size, size, 3))
    for cells, amp in ((3, 1.0), (6, 0.5), (12, 0.25)):
        grey = rng.random((cells + 1, cells + 1, 1))
        colour = rng.random((cells + 1, cells + 1, 3))
        acc += amp * _upsample(0.7 * grey + 0.3 * colour, size)
    acc += 0.15 * rng.random((size, size, 3))
    lo, hi = acc.min(), acc.max()
    return ((acc - lo) * (255.0 / max(hi - lo, 1e-9))).astype(np.uint8)


def backgrounds(rng: np.random.Generator, n: int, size: int, photo_share: float = 0.5) -> np.ndarray:
    """``n`` textured backgrounds (N, size, size, 3) uint8 in [_LOW, _HIGH]: photo crops with
    probability ``photo_share``, else value noise."""
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        out[k] = _squeeze(_photo_crop(rng, size) if rng.random() < photo_share else _noise(rng, size))
    return out


# -- placing things ---------------------------------------------------------------------------------

def _ink(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A colour that contrasts with ``under`` (the background below): bright on dark, dark on bright."""
    dark = int(under.astype(np.int64).sum()) < 128 * under.size
    base = rng.integers(200, 256, 3) if dark else rng.integers(0, 56, 3)
    return tuple(int(v) for v in base)


def _free(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], gap: int = 1) -> bool:
    y, x, h, w = box
    return all(y + h + gap <= ty or ty + th + gap <= y or x + w + gap <= tx or tx + tw + gap <= x
               for ty, tx, th, tw in taken)


def _place(rng: np.random.Generator, size: int, side: int, taken: list, tries: int = 60) -> tuple | None:
    for _ in range(tries):
        y, x = int(rng.integers(size - side + 1)), int(rng.integers(size - side + 1))
        if _free((y, x, side, side), taken):
            return y, x, side, side
    return None


def _scale_range(size: int, lo: float, hi: float) -> tuple[int, int]:
    return max(5, round(size * lo)), max(6, round(size * hi))


def _check(seed, n, size, lo: int = 24) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise FaithmapError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise FaithmapError(f"n must be a positive integer, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < lo:
        raise FaithmapError(f"size must be an integer >= {lo}, got {size!r}")


# -- tier 1 -----------------------------------------------------------------------------------------

def planted(seed: int, n: int, size: int = 32, *, distractors: int | tuple[int, int] = 3, cue: str = "pattern",
            photo_share: float = 0.5, scale: tuple[float, float] = (0.22, 0.34), stream: int = 0) -> Scene:
    """Tier 1 images: a class pattern at a random place and scale among ``distractors`` distractors.

    Class k (of 4) is the pattern ``PATTERNS[k]``; sides are drawn from ``scale`` times ``size``;
    things never overlap (one free pixel between them; a distractor that finds no place after 60
    tries is left out). Every thing's ink contrasts with the background under it by the same rule.
    The regions are ``pattern`` and ``distractor`` (painted pixels) and ``evidence`` (the pattern's box).

    ``cue`` says what carries the label, for the gate tests: ``"pattern"`` (the benchmark),
    ``"background"`` (the pattern is drawn independently of the label and the background is tinted
    by the label: a model that reads the tint has high accuracy without using the pattern), or
    ``"none"`` (the pattern is independent of the label and nothing else carries it).
    ``stream`` picks an independent draw for the same seed (training, gate and test sets).
    """
    _check(seed, n, size)
    if cue not in CUES:
        raise FaithmapError(f"cue must be one of {', '.join(CUES)}, got {cue!r}")
    rng = rng_for(seed, "planted", stream)
    labels = rng.integers(len(PATTERNS), size=n)
    drawn = labels if cue == "pattern" else rng.integers(len(PATTERNS), size=n)
    bg = backgrounds(rng, n, size, photo_share)
    if cue == "background":
        bg = ((bg.astype(np.int32) * 3 + _TINTS[labels][:, None, None, :] * 2) // 5).astype(np.uint8)
    lo, hi = _scale_range(size, *scale)
    dmin, dmax = (distractors, distractors) if isinstance(distractors, (int, np.integer)) else distractors
    things = []
    for k in range(n):
        taken: list = []
        items = [("pattern", PATTERNS[drawn[k]])]
        count = int(rng.integers(dmin, dmax + 1))
        items += [("distractor", DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]) for _ in range(count)]
        row = []
        for role, shape in items:
            box = _place(rng, size, int(rng.integers(lo, hi + 1)), taken)
            if box is None:
                continue
            taken.append(box)
            y, x, h, w = box
            row.append(Thing(role, shape, y, x, h, w, _ink(rng, bg[k, y:y + h, x:x + w])))
        things.append(tuple(row))
    return Scene(bg, labels.astype(np.int64), things, PATTERNS,
                 {"generator": "planted", "seed": int(seed), "size": int(size), "cue": cue, "stream": int(stream)})


def planted_regions(scene: Scene) -> dict[str, torch.Tensor]:
    """Tier 1's regions: ``evidence`` = the pattern's box, ``pattern`` and ``distractors`` = their pixels."""
    painted = scene.regions()
    boxes = scene.regions(boxes=("pattern",))
    n, h, w = scene.background.shape[:3]
    empty = torch.zeros(n, h, w, dtype=torch.bool)
    return {"evidence": boxes.get("pattern", empty), "pattern": painted.get("pattern", empty),
            "distractors": painted.get("distractor", empty)}


# -- tier 2 -----------------------------------------------------------------------------------------

def tag_box(size: int) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the watermark tag: a 9 x 7 plate (times size // 32) in the bottom-right corner."""
    f = max(1, size // 32)
    h, w = 9 * f, 7 * f
    return size - h - f, size - w - f, h, w


def watermarked(seed: int, n: int, size: int = 32, rho: float = 0.9, *, agree: bool | None = None,
                photo_share: float = 0.5, scale: tuple[float, float] = (0.28, 0.45), stream: int = 0) -> Scene:
    """Tier 2 images: an object of the label's class and a corner tag whose letter agrees with the
    label with probability ``rho`` (else it names the other class).

    Class k is the filled shape ``OBJECTS[k]`` (side ``scale`` times ``size``, anywhere clear of
    the tag), and the tag (:func:`tag_box`) shows ``GLYPHS[k]`` when it agrees: a plate that
    contrasts with the background, the letter in the opposite ink. ``agree=True`` / ``False``
    forces every tag to agree / disagree (the test and conflict sets). The same seed and stream
    give the same backgrounds, objects and labels at every ``rho``. Regions: ``object`` (its
    pixels) and ``watermark`` (the tag's plate, every pixel of which is painted).
    """
    _check(seed, n, size)
    if not 0.0 <= float(rho) <= 1.0:
        raise FaithmapError(f"rho must lie in [0, 1], got {rho!r}")
    rng = rng_for(seed, "watermarked", stream)  # rho changes which tags agree, nothing else
    labels = rng.integers(len(OBJECTS), size=n)
    agrees = rng.random(n) < rho
    if agree is not None:
        agrees = np.full(n, bool(agree))
    marks = np.where(agrees, labels, 1 - labels)
    bg = backgrounds(rng, n, size, photo_share)
    lo, hi = _scale_range(size, *scale)
    ty, tx, th, tw = tag_box(size)
    things = []
    for k in range(n):
        plate = _ink(rng, bg[k, ty:ty + th, tx:tx + tw])
        dark_plate = sum(plate) < 3 * 128
        letter = tuple(int(v) for v in (rng.integers(200, 256, 3) if dark_plate else rng.integers(0, 56, 3)))
        tag = Thing("watermark", GLYPHS[marks[k]], ty, tx, th, tw, letter, plate)
        box = _place(rng, size, int(rng.integers(lo, hi + 1)), [(ty, tx, th, tw)], tries=200)
        if box is None:  # cannot happen for sizes >= 24 with the default scale; keep it explicit
            raise FaithmapError(f"no room for the object at size {size}")
        y, x, h, w = box
        obj = Thing("object", OBJECTS[labels[k]], y, x, h, w, _ink(rng, bg[k, y:y + h, x:x + w]))
        things.append((obj, tag))
    return Scene(bg, labels.astype(np.int64), things, OBJECTS,
                 {"generator": "watermarked", "seed": int(seed), "size": int(size), "rho": float(rho),
                  "stream": int(stream), "agrees": agrees})


__all__ = ["BACKGROUND_PHOTOS", "CUES", "DISTRACTORS", "GLYPHS", "OBJECTS", "PATTERNS", "Scene", "Thing",
           "backgrounds", "planted", "planted_regions", "rng_for", "stencil", "tag_box", "watermarked"]
