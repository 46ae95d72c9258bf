"""XRAI: region attributions by greedy selection of over-segmented regions
(Kapishnikov, Bolukbasi, Viégas & Terry, "XRAI: Better Attributions Through Regions", ICCV 2019).

Three stages, each replaceable:

1. **Base attribution** (paper sec. 3, "we use IG with black and white baselines"): any registered
   method (``base=``, default ``ig``), run once per baseline kind in ``baselines`` when it takes a
   ``baseline`` parameter (``black,white``: pixel 0 and pixel 1), the runs averaged, channels reduced
   by their maximum (as the authors' package does); a method without an input-size attribution
   contributes its saliency, upsampled to the input.
2. **Segments** (:func:`felzenszwalb_regions`): Felzenszwalb-Huttenlocher segmentation
   (``skimage.segmentation.felzenszwalb``) of the image at every scale in ``scales`` (50, 100, 150,
   250, 500, 1200; sigma 0.8, min size 150) on the photo min-max scaled to [-1, 1] and resized to
   224 x 224 (bicubic, antialiased), labels resized back (nearest); every segment of every scale,
   dilated by a disk of radius ``dilation`` (5), is one candidate region. Segmentation runs on the
   CPU in numpy; the dilation runs in torch on the input's device, on a bit-packed incidence
   (:class:`Regions`: bit ``k`` of ``bits[j, p]`` says pixel ``p`` lies in region ``8 j + k``).
3. **Greedy selection** (:func:`rank_regions`, paper Algorithm 1): ``full`` picks, again and again,
   the region whose *new* pixels have the highest mean attribution (regions adding fewer than
   ``min_pixel_diff`` = 50 new pixels are dropped, ties go to the lower region index) until the
   selected area exceeds ``area_threshold``; ``fast`` orders the regions once by the mean over all
   their pixels and takes them in that order, skipping those that add fewer than 50 new pixels.
   Every pixel's value is the mean attribution of the new pixels of the region that first covered
   it (the map the authors' ``XRAI.GetMask`` returns); pixels no region covered get the mean over
   themselves. ``extras["ranks"]`` holds the rank of each pixel's region (1 = the highest value).

Which pixels are covered is always a union of regions, so a union of the cells of the regions'
overlay (pixels that lie in exactly the same regions; :class:`Cells`, about 5,000 at 224 px): the
selection keeps per-region counts and sums of the uncovered cells and updates them from the newly
covered cells only, so a run touches the incidence about once instead of once per step. Sums are exact: attributions are rounded to integers at a power-of-two scale (2^-37 of the
largest value at 224 px) and added in float64, where integer sums are exact in any order, so ties
are decided exactly as in exact arithmetic and a batch equals its images one by one on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..core.batching import DEFAULT_BATCH_SIZE, torch_threads, Seed
from ..explanation import Explanation
from ..core.perturb import BASELINES
from ..errors import FaithmapError
from ..params import knob, record
from ..registry import METHODS, check_params, register_method
from .mask import BatchParams

SCALES = (50, 100, 150, 250, 500, 1200)
"""Felzenszwalb scales of the paper and the authors' package."""
VARIANTS = ("full", "fast")


# ----------------------------------------------------------------------------------------------
# regions: a bit-packed segment-pixel incidence
# ----------------------------------------------------------------------------------------------
@dataclass
class Regions:
    """The candidate regions of one image: ``count`` boolean masks of ``shape``, bit-packed.

    Bit ``k`` of ``bits[j, p]`` (uint8, ``(ceil(count / 8), H * W)``) is 1 when pixel ``p``
    (row-major) lies in region ``8 j + k``: eight regions share a byte, so dilating all regions at
    once is a few byte-wise ORs (:func:`dilate_bits`). :meth:`cells` splits the image into the
    cells of the regions' overlay (pixels that lie in exactly the same regions), on which the
    greedy selection runs.
    """

    bits: torch.Tensor
    count: int
    shape: tuple[int, int]

    def __post_init__(self):
        self._cells: Cells | None = None

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> "Regions":
        """Pack boolean masks (N, H, W)."""
        n, h, w = masks.shape
        nb = max(1, -(-n // 8))
        m = masks.reshape(n, h * w)
        m = m.view(torch.uint8) if m.dtype == torch.bool and m.is_contiguous() else m.to(torch.uint8)
        bits = torch.zeros(nb, h * w, dtype=torch.uint8, device=masks.device)
        with torch_threads(1 if masks.device.type == "cpu" else None):
            for k in range(min(8, n)):
                rows = m[k::8]  # regions k, k + 8, ...: bit k of bytes 0, 1, ...
                bits[: rows.shape[0]] |= rows << k if k else rows
        return cls(bits, int(n), (int(h), int(w)))

    @classmethod
    def from_labels(cls, labels: Sequence[torch.Tensor] | torch.Tensor, dilation: int = 5) -> "Regions":
        """One region per label value of each label map (H, W), from its smallest label to its largest
        (as the authors' package unpacks them; absent values give empty regions), in map order, each
        dilated by a disk of radius ``dilation`` (:func:`dilate_bits`)."""
        maps = [torch.as_tensor(lab) for lab in labels]
        if not maps:
            raise FaithmapError("no label maps to make regions from")
        h, w = maps[0].shape
        p = h * w
        device = maps[0].device
        rel, offset = [], 0
        for lab in maps:
            lab = lab.to(device=device, dtype=torch.long).reshape(-1)
            lo, hi = int(lab.min()), int(lab.max())
            rel.append(lab - lo + offset)
            offset += hi - lo + 1
        n = offset
        nb = max(1, -(-n // 8))
        g = torch.cat(rel)  # global region id of every (map, pixel)
        pix = torch.arange(p, device=device).repeat(len(maps))
        acc = torch.zeros(nb * p, dtype=torch.int32, device=device)
        # regions of one map are disjoint and bits of different maps differ, so the sum is an OR
        acc.scatter_add_(0, (g >> 3) * p + pix, (1 << (g & 7)).to(torch.int32))
        bits = acc.to(torch.uint8).view(nb, h, w)
        if dilation:
            bits = dilate_bits(bits, dilation)
        return cls(bits.reshape(nb, p), n, (int(h), int(w)))

    def masks(self) -> torch.Tensor:
        """The regions as boolean masks (N, H, W)."""
        return _unpack(self.bits, self.count).view(self.count, *self.shape)

    def member(self, index: int) -> torch.Tensor:
        """Region ``index`` as a boolean vector over the pixels (H * W,)."""
        return ((self.bits[index >> 3] >> (index & 7)) & 1).bool()

    def cells(self) -> "Cells":
        """The overlay's cells (computed once): pixels with the same membership bytes share a cell."""
        if self._cells is None:
            self._cells = Cells.of(self)
        return self._cells

    def to(self, device) -> "Regions":
        out = Regions(self.bits.to(device), self.count, self.shape)
        if self._cells is not None:
            out._cells = self._cells.to(device)
        return out


def _unpack(bits: torch.Tensor, count: int) -> torch.Tensor:
    """(nb, M) packed bytes -> (count, M) bool."""
    nb, m = bits.shape
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8).view(1, 8, 1)
    return ((bits.unsqueeze(1) >> shifts) & 1).reshape(nb * 8, m)[:count].bool()


_MIX = -7046029254386353131  # 0x9E3779B97F4A7C15 (2^64 / golden ratio) as a signed 64-bit integer


def _cell_ids(bits: torch.Tensor) -> torch.Tensor:
    """Cell id (P,) of every pixel, ids 0..C-1: equal iff the pixels' membership bytes are equal.

    Each pixel's bytes as a few 64-bit words; one ``unique`` over a multiply-xor hash of the words,
    checked word for word against a representative of each cell; should two memberships ever share
    a hash, the exact way runs instead (``unique`` word by word, combining ranks).
    """
    nb, p = bits.shape
    n_words = -(-nb // 8)
    sig = torch.zeros(p, n_words * 8, dtype=torch.uint8, device=bits.device)
    sig[:, :nb] = bits.t()
    words = sig.view(torch.long)  # (P, W)
    h = torch.zeros(p, dtype=torch.long, device=bits.device)
    for w in words.unbind(1):
        h = (h ^ w) * _MIX  # wraps modulo 2^64
        h = h ^ (h >> 31)
    key = torch.unique(h, return_inverse=True)[1]
    rep = torch.empty(int(key.max()) + 1, dtype=torch.long, device=bits.device).scatter_(
        0, key, torch.arange(p, device=bits.device))
    if torch.equal(words[rep[key]], words):
        return key
    key = torch.zeros(p, dtype=torch.long, device=bits.device)
    for w in words.unbind(1):
        rank = torch.unique(w, return_inverse=True)[1]  # below P
        key = torch.unique(key * p + rank, return_inverse=True)[1]
    return key


@dataclass
class Cells:
    """The overlay of a :class:`Regions`: ``of_pixel`` (P,) the cell of every pixel, ``sizes`` (C,)
    float64 pixel counts, ``incidence`` (C, N) bool (cell c lies in region n), ``members`` (N, C)
    bool (its transpose, for row access) and ``pairs`` (2, nnz) the (region, cell) index pairs.

    Which pixels the greedy selection has covered is always a union of regions, so a union of
    cells: it can run on the C cells (a few thousand at 224 px) instead of the H * W pixels.
    """

    of_pixel: torch.Tensor
    sizes: torch.Tensor
    incidence: torch.Tensor
    members: torch.Tensor
    pairs: torch.Tensor

    @classmethod
    def of(cls, regions: Regions) -> "Cells":
        bits = regions.bits
        nb, p = bits.shape
        dev = bits.device
        with torch_threads(1 if dev.type == "cpu" else None):
            key = _cell_ids(bits)
            c = int(key.max()) + 1 if p else 0
            rep = torch.empty(c, dtype=torch.long, device=dev).scatter_(0, key, torch.arange(p, device=dev))
            members = _unpack(bits.index_select(1, rep), regions.count)  # (N, C)
            sizes = torch.bincount(key, minlength=c).to(torch.float64)
            pairs = members.nonzero().t().contiguous()
        return cls(key, sizes, members.t().contiguous(), members, pairs)

    def to(self, device) -> "Cells":
        return Cells(self.of_pixel.to(device), self.sizes.to(device), self.incidence.to(device),
                     self.members.to(device), self.pairs.to(device))


def disk_rows(radius: int) -> list[tuple[int, int]]:
    """``(dy, half width)`` of every row of ``skimage.morphology.disk(radius)``."""
    from skimage.morphology import disk

    fp = disk(int(radius)).astype(bool)
    r = int(radius)
    rows = []
    for i in range(fp.shape[0]):
        xs = np.flatnonzero(fp[i]) - r
        if len(xs):
            # a disk row is a symmetric run of columns
            assert xs[0] == -xs[-1] and len(xs) == xs[-1] - xs[0] + 1
            rows.append((i - r, int(xs[-1])))
    return rows


def dilate_bits(bits: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of every bit plane of ``bits`` (nb, H, W) by a disk of ``radius``.

    The result at ``(y, x)`` is the OR of the inputs at ``(y + dy, x + dx)`` over the disk's offsets
    that fall inside the image. A disk is a union of horizontal runs, so this is a horizontal OR
    over each run's half width followed by one vertical OR per row: ``2 r + (2 r + 1)`` byte-wise
    ORs. For a disk this equals ``skimage.morphology.dilation`` with its default reflecting border:
    the mirror image of an offset that leaves the image is a nearer pixel that the disk already holds.
    """
    rows = disk_rows(radius)
    need = {w for _, w in rows}
    h, w_ = bits.shape[-2:]
    cur = bits.clone()
    horiz = {0: bits}
    for k in range(1, max(need) + 1):
        if k < w_:
            cur[..., : w_ - k] |= bits[..., k:]
            cur[..., k:] |= bits[..., : w_ - k]
        if k in need:
            horiz[k] = cur.clone()
    out = torch.zeros_like(bits)
    for dy, half in rows:
        src = horiz[half]
        if dy >= 0 and dy < h:
            out[..., : h - dy, :] |= src[..., dy:, :]
        elif dy < 0 and -dy < h:
            out[..., -dy:, :] |= src[..., : h + dy, :]
    return out


# ----------------------------------------------------------------------------------------------
# segmentation (CPU, numpy)
# ----------------------------------------------------------------------------------------------
def felzenszwalb_labels(image: np.ndarray, *, scales: Sequence[float] = SCALES, sigma: float = 0.8,
                        min_size: int = 150, size: int | None = 224,
                        value_range: tuple[float, float] = (-1.0, 1.0)) -> list[np.ndarray]:
    """Felzenszwalb label maps (H, W) of one image (H, W, C) at each scale, computed as the XRAI
    authors' package does: values min-max scaled to ``value_range`` over the whole image, the image
    resized to ``size`` x ``size`` (bicubic, antialiased; ``None``: not resized), segmented
    (``skimage.segmentation.felzenszwalb``), labels resized back to H x W (nearest).
    A constant image becomes ``value_range[0]`` everywhere."""
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize

    im = np.asarray(image)
    h, w = im.shape[:2]
    lo, hi = np.min(im), np.max(im)
    im = (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)
    im = im * (value_range[1] - value_range[0]) + value_range[0]
    if size:
        im = resize(im, (size, size), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    out = []
    for scale in scales:
        seg = felzenszwalb(im, scale=scale, sigma=sigma, min_size=min_size)
        if size:
            seg = resize(seg, (h, w), order=0, preserve_range=True, mode="constant", anti_aliasing=False).astype(int)
        out.append(seg)
    return out


def felzenszwalb_regions(pixels: torch.Tensor, *, scales: Sequence[float] = SCALES, sigma: float = 0.8,
                         min_size: int = 150, size: int | None = 224, dilation: int = 5) -> list[Regions]:
    """XRAI's candidate regions of each image of ``pixels`` (B, C, H, W), in [0, 1] or any range
    (only the image's own min and max matter): :func:`felzenszwalb_labels` on the CPU, then
    :meth:`Regions.from_labels` (dilation) and :meth:`Regions.cells` on the images' device."""
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(0)
    arr = pixels.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
    out = []
    for im in arr:
        labels = felzenszwalb_labels(im, scales=scales, sigma=sigma, min_size=min_size, size=size)
        with torch_threads(1 if pixels.device.type == "cpu" else None):
            r = Regions.from_labels([torch.from_numpy(lab.astype(np.int64)).to(pixels.device) for lab in labels],
                                    dilation)
        r.cells()
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# greedy selection (torch, the input's device)
# ----------------------------------------------------------------------------------------------
@dataclass
class Ranking:
    """One image's XRAI result: ``map`` (H, W) float64 (the value of each pixel's region), ``ranks``
    (H, W) (1 = the highest value; pixels no region covered share the last rank), ``order`` (T,) the
    region indices in the order they were selected, ``gains`` (T,) their values."""

    map: torch.Tensor
    ranks: torch.Tensor
    order: torch.Tensor
    gains: torch.Tensor


def exact_device(device) -> torch.device:
    """Where the selection runs: the given device, except MPS (no float64), where it is the CPU."""
    d = torch.device(device)
    return torch.device("cpu") if d.type == "mps" else d


def integer_scale(amax: float, pixels: int) -> float:
    """A power of two ``s`` with ``pixels * amax * s <= 2**52``: ``round(a * s)`` keeps every sum of
    up to ``pixels`` values an integer below 2^53, exact in float64."""
    if not amax > 0:
        return 1.0
    e = math.floor(math.log2(2.0 ** 52 / (pixels * amax)))
    while pixels * amax * 2.0 ** e > 2.0 ** 52:
        e -= 1
    return 2.0 ** e


def rank_regions(attribution: torch.Tensor, regions: Regions, *, variant: str = "full", min_pixel_diff: int = 50,
                 area_threshold: float = 1.0) -> Ranking:
    """XRAI's greedy region selection (paper Algorithm 1) for one attribution map (H, W).

    ``full``: while the covered fraction of the image is at most ``area_threshold``, drop the regions
    that would add fewer than ``min_pixel_diff`` uncovered pixels and select the one whose uncovered
    pixels have the highest mean attribution (ties: the lower index); its uncovered pixels take that
    mean. ``fast``: regions ordered once by the mean over all their pixels (ties: the lower index),
    taken in that order unless they add fewer than ``min_pixel_diff`` uncovered pixels (the area
    threshold does not apply, as in the authors' package). Both then give the still-uncovered pixels
    the mean over themselves. Equal to the authors' ``XRAI._xrai`` / ``_xrai_fast``.
    """
    if variant not in VARIANTS:
        raise FaithmapError(f"unknown XRAI variant {variant!r}; choose from: {', '.join(VARIANTS)}")
    h, w = regions.shape
    if tuple(attribution.shape) != (h, w):
        raise FaithmapError(f"attribution of shape {tuple(attribution.shape)} does not fit regions of shape {(h, w)}")
    dev = exact_device(regions.bits.device)
    reg = regions if regions.bits.device == dev else regions.to(dev)
    # the selection is a few hundred steps of small tensor operations: on the CPU one thread is fastest
    # (several threads wait on each other at every step, worst on a busy machine)
    with torch.inference_mode(), torch_threads(1 if dev.type == "cpu" else None):
        return _select(attribution.detach().to(dev, torch.float64).reshape(-1), reg, variant, int(min_pixel_diff),
                       float(area_threshold))


def _select(a: torch.Tensor, reg: Regions, variant: str, min_pixel_diff: int, area_threshold: float) -> Ranking:
    p = a.numel()
    n = reg.count
    dev = a.device
    cells = reg.cells()
    scale = integer_scale(float(a.abs().max()), p)
    q = torch.round(a * scale)
    # per cell: pixel count and (integer) attribution sum; per region: the same over its uncovered cells
    per_cell = torch.stack([cells.sizes, torch.bincount(cells.of_pixel, weights=q, minlength=cells.sizes.numel())], 1)
    tally = torch.zeros(2, n, dtype=torch.float64, device=dev).index_add_(  # (2, N): counts, sums
        1, cells.pairs[0], per_cell[cells.pairs[1]].t())
    counts, sums = tally[0], tally[1]
    neg = torch.tensor(-math.inf, dtype=torch.float64, device=dev)
    fast = variant == "fast"
    if fast:
        first = torch.where(counts > 0, sums / counts, neg)
        position = torch.empty(n, dtype=torch.float64, device=dev)
        position[torch.sort(first, descending=True, stable=True).indices] = torch.arange(
            n, device=dev, dtype=torch.float64)
        last = torch.tensor(float(n), dtype=torch.float64, device=dev)
    n_cells = cells.sizes.numel()
    uncovered = torch.ones(n_cells, dtype=torch.bool, device=dev)
    step = torch.full((n_cells,), -1, dtype=torch.long, device=dev)  # the selection step that covered a cell
    chosen: list[int] = []
    gains: list[float] = []
    n_covered = 0
    while fast or n_covered / p <= area_threshold:
        ok = counts >= min_pixel_diff
        if fast:
            key, b = torch.where(ok, position, last).min(0)
            found = key < n
        else:
            best, b = torch.where(ok, sums / counts, neg).max(0)
            found = best > -math.inf
        f, b, cnt, tot = torch.stack([found.to(torch.float64), b.to(torch.float64), counts[b], sums[b]]).tolist()
        if not f:
            break
        b = int(b)
        new = (cells.members[b] & uncovered).nonzero().squeeze(1)
        step[new] = len(chosen)
        uncovered[new] = False
        chosen.append(b)
        gains.append(tot / cnt / scale)  # the mean attribution of the new pixels (exact sum / count)
        n_covered += int(cnt)
        tally -= per_cell[new].t() @ cells.incidence[new].to(torch.float64)
    t = len(chosen)
    g_all = torch.tensor(gains, dtype=torch.float64, device=dev)
    rest = 0.0
    if n_covered < p:  # pixels no selected region covered: the mean over themselves
        left = per_cell[uncovered].sum(0)
        rest = float(left[1]) / float(left[0]) / scale
    value = torch.cat([g_all, g_all.new_tensor([rest])])[torch.where(step >= 0, step, t)]
    rank_of = torch.empty(t + 1, dtype=torch.long, device=dev)
    if t:
        rank_of[torch.sort(g_all, descending=True, stable=True).indices] = torch.arange(1, t + 1, device=dev)
    rank_of[t] = t + 1
    ranks = rank_of[torch.where(step >= 0, step, t)]
    shape = reg.shape
    return Ranking(value[cells.of_pixel].view(shape), ranks[cells.of_pixel].view(shape),
                   torch.tensor(chosen, dtype=torch.long, device=dev), g_all)


def select_regions(attribution: torch.Tensor, regions: Sequence[Regions], *, variant: str = "full",
                   min_pixel_diff: int = 50, area_threshold: float = 1.0) -> list[Ranking]:
    """:func:`rank_regions` for each image of a batch of attribution maps (B, H, W)."""
    if attribution.dim() != 3 or attribution.shape[0] != len(regions):
        raise FaithmapError(f"attribution maps must be (B, H, W) with B = {len(regions)} (one Regions per image), "
                            f"got {tuple(attribution.shape)}")
    return [rank_regions(attribution[i], regions[i], variant=variant, min_pixel_diff=min_pixel_diff,
                         area_threshold=area_threshold) for i in range(len(regions))]


# ----------------------------------------------------------------------------------------------
# base attribution
# ----------------------------------------------------------------------------------------------
def _baseline_kinds(baselines: str) -> list[str]:
    kinds = [k.strip().lower() for k in str(baselines).split(",") if k.strip()]
    bad = [k for k in kinds if k not in BASELINES]
    if not kinds or bad:
        raise FaithmapError(f"unknown baseline {(bad or [baselines])[0]!r} in baselines; choose from: "
                            f"{', '.join(BASELINES)} (comma-separated)")
    return kinds


def base_attribution(model, x: torch.Tensor, target: torch.Tensor, *, base: str = "ig",
                     base_params: dict | None = None, baselines: str = "black,white", steps: int | None = None,
                     fast_base: bool = False, batch_size: int | None = DEFAULT_BATCH_SIZE,
                     seed: Seed = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """XRAI's attribution (B, C, H, W) (C = 1 for a method without an input-size attribution) and what ran.

    ``base``'s parameters: its ``fast`` settings when ``fast_base``, then ``base_params``, then
    ``steps``, ``batch_size`` and ``seed`` where it takes them and ``base_params`` does not set them.
    A base with a ``baseline`` parameter runs once per kind in ``baselines`` (unless ``base_params``
    names one) and the attributions are averaged.
    """
    spec = METHODS.get(base)
    if spec.name == "xrai":
        raise FaithmapError("xrai cannot be its own base method")
    if base_params is not None and not isinstance(base_params, dict):
        raise FaithmapError(f"base_params must be a dict of {spec.name}'s parameters, got {type(base_params).__name__}")
    given = dict(base_params or {})
    params = dict(spec.fast) if fast_base else {}
    params.update(given)
    for k, v in {"steps": steps, "batch_size": batch_size, "seed": seed}.items():
        if v is not None and k in spec.params and k not in given:
            params[k] = v
    check_params(spec, params)
    kinds: list[str | None] = [None]
    if "baseline" in spec.params and "baseline" not in given:
        kinds = list(_baseline_kinds(baselines))
    size = tuple(x.shape[-2:])
    runs, used = [], None
    for kind in kinds:
        p = dict(params)
        if kind is not None:
            p["baseline"] = kind
        e = spec.fn(model, x, target, **p)
        used = e.params
        if e.attribution is not None and tuple(e.attribution.shape[-2:]) == size and e.attribution.dim() == 4:
            runs.append(e.attribution.detach())
        else:
            runs.append(e.upsampled(size).detach().unsqueeze(1))
    attr = runs[0] if len(runs) == 1 else torch.stack(runs).mean(0)
    info = {"base": spec.name, "baselines": [k for k in kinds if k is not None] or None,
            **{f"base.{k}": v for k, v in (used or {}).items() if not (k == "baseline" and len(kinds) > 1)}}
    return attr, info


# ----------------------------------------------------------------------------------------------
# the method
# ----------------------------------------------------------------------------------------------
def _as_regions(segments, x: torch.Tensor) -> list[Regions]:
    b, _, h, w = x.shape
    items = list(segments) if isinstance(segments, (list, tuple)) else (
        list(segments) if isinstance(segments, torch.Tensor) and segments.dim() == 4 else None)
    if items is None or len(items) != b:
        raise FaithmapError(f"segments must be one (N, {h}, {w}) boolean mask tensor (or Regions) per image, "
                            f"for {b} image(s)")
    out = []
    for s in items:
        if isinstance(s, Regions):
            r = s.to(x.device)
        else:
            s = torch.as_tensor(s)
            if s.dim() != 3 or tuple(s.shape[1:]) != (h, w) or s.shape[0] == 0:
                raise FaithmapError(f"segments must be (N, {h}, {w}) boolean masks per image, got {tuple(s.shape)}")
            r = Regions.from_masks(s.to(x.device).bool())
        if r.shape != (h, w):
            raise FaithmapError(f"segments of shape {r.shape} do not fit images of {(h, w)}")
        out.append(r)
    return out


@dataclass(frozen=True, kw_only=True)
class XRAIParams(BatchParams):
    """XRAI's settings: the base attribution, the Felzenszwalb regions and the greedy selection
    (:func:`xrai`)."""

    base: str = knob("ig", "the base attribution: a registered method")
    base_params: dict | None = knob(None, "more parameters of the base method")
    baselines: str = knob("black,white", "the base's baselines, comma-separated (attributions averaged)")
    steps: int | None = knob(None, "the base's steps (None: its default)", "[1, inf)")
    fast_base: bool = knob(False, "the base method's fast settings")
    variant: Literal["full", "fast"] = knob("full", "greedy selection: full (gain per new pixel) or fast")
    scales: tuple[float, ...] = knob(SCALES, "Felzenszwalb scales")
    sigma: float = knob(0.8, "Felzenszwalb's smoothing sigma", "[0, inf)")
    min_size: int = knob(150, "Felzenszwalb's smallest region (pixels, at segment_size)", "[1, inf)")
    segment_size: int | None = knob(224, "side the image is resized to for segmentation (None: as is)", "[8, 4096]")
    dilation: int = knob(5, "pixels each region is dilated by", "[0, 64]")
    min_pixel_diff: int = knob(50, "fewest new pixels a selected region must add", "[1, inf)")
    area_threshold: float = knob(1.0, "fraction of the image selected before stopping", "[0, 1]")
    segments: list | torch.Tensor | None = knob(None, "given regions: one (N, H, W) boolean tensor per image")

    def __post_init__(self) -> None:
        if not self.scales:
            raise FaithmapError(f"xrai: scales must be a non-empty tuple of positive numbers, got {self.scales!r}")
        for s in self.scales:
            if not s > 0:
                raise FaithmapError(f"xrai: every scale must be a number above 0, got {s!r}")


@register_method(
    "xrai", family="region", paper="Kapishnikov et al., ICCV 2019",
    summary="XRAI: Felzenszwalb regions (6 scales, dilated) selected greedily by the mean IG attribution "
            "(black and white baselines) of their new pixels; variants full and fast",
    fast={"fast_base": True}, params=XRAIParams,
)
def xrai(model, x: torch.Tensor, target: torch.Tensor, p: XRAIParams) -> Explanation:
    """XRAI (Kapishnikov et al., ICCV 2019, sec. 3 and Algorithm 1); see the module docstring; settings
    :class:`XRAIParams`.

    ``base`` / ``base_params`` / ``baselines`` / ``steps`` / ``fast_base``: the base attribution
    (default: Integrated Gradients, registered ``ig`` with its 50 Gauss-Legendre steps, from a black
    and a white baseline, averaged; channels reduced by their maximum). ``scales``, ``sigma``,
    ``min_size``, ``segment_size``, ``dilation``: the Felzenszwalb regions; ``segments`` replaces
    them with one (N, H, W) boolean mask tensor per image. ``variant``, ``min_pixel_diff``,
    ``area_threshold``: the greedy selection (:func:`rank_regions`).
    Returns the map of region values (B, H, W); ``attribution`` is the averaged base attribution,
    ``extras``: ``ranks`` (B, H, W), ``base_map`` (B, H, W), ``regions`` and ``selected`` (B,)
    (candidate and selected region counts), ``order`` (per image, the selected region indices).
    """
    regions = None if p.segments is None else _as_regions(p.segments, x)
    attr, info = base_attribution(model, x, target, base=p.base, base_params=p.base_params, baselines=p.baselines,
                                  steps=p.steps, fast_base=p.fast_base, batch_size=p.batch_size, seed=p.seed)
    base_map = attr.amax(1)
    if not torch.isfinite(base_map).all():
        raise FaithmapError(f"xrai: the base attribution ({info['base']}) has NaN or infinite values")
    if regions is None:
        pixels = model.to_pixels(x) if hasattr(model, "to_pixels") else x
        regions = felzenszwalb_regions(pixels, scales=tuple(p.scales), sigma=float(p.sigma), min_size=p.min_size,
                                       size=p.segment_size or None, dilation=p.dilation)
    results = select_regions(base_map, regions, variant=p.variant, min_pixel_diff=p.min_pixel_diff,
                             area_threshold=float(p.area_threshold))
    dev = x.device
    sal = torch.stack([r.map for r in results]).to(dev, x.dtype)
    extras = {"ranks": torch.stack([r.ranks for r in results]).to(dev), "base_map": base_map,
              "regions": torch.tensor([r.count for r in regions], device=dev),
              "selected": torch.tensor([len(r.order) for r in results], device=dev),
              "order": [r.order.to(dev) for r in results]}
    params = {**record(p), "segments": "given" if p.segments is not None else "felzenszwalb", **info}
    return Explanation(saliency=sal, target=target, method="xrai", params=params, attribution=attr, extras=extras)


__all__ = ["Ranking", "Regions", "SCALES", "VARIANTS", "base_attribution", "dilate_bits", "disk_rows",
           "felzenszwalb_labels", "felzenszwalb_regions", "integer_scale", "rank_regions", "select_regions"]
