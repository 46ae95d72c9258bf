"""Step 2: candidate shortcuts, from the explained images as their parts stream by.

Two passes over the parts (:meth:`faithmap.evaluation.store.Store.batches`, a few hundred rows at a
time), so memory does not grow with the dataset:

1. :class:`Summary` accumulates, per class (the image's target: its label, or its prediction with
   ``target="top1"``) and over all classes, the sum of the normalised maps on the common grid (the
   class mean maps of the page) and the histogram of where each image's salient patch lies; and it
   keeps a seeded sample of the patch embeddings (at most :data:`FIT_IMAGES`, chosen by a hash of
   seed and image name, so the sample does not depend on the order of the parts).
2. :func:`assign` puts each image into the candidates it belongs to, keeping per candidate its
   count, its classes, a seeded sample of the images to verify and (content) the per-image boxes.

*Fixed-place* candidates (:func:`places`): in a group of images (a class, or all), the place where
the most salient patches fall, counting the patches within half a patch of it. It is a candidate
when it holds at least ``min_share`` of the group and at least twice the share a place of that size
holds when the patches fall anywhere; and, compared with where the objects are: for a class, at
least twice the share of the other classes' patches at that place (maps that follow objects go
where every class's objects are; a tag drawn for one class is that class's place), and over all
classes, not centred on the image's middle (within half a patch of it: where the objects of most
datasets are; a tag, a border or a text band of every class lies off it). Its region is where the group's mean map is hot within the
patches counted (:func:`hot_region`). Up to ``places`` places per group, each found after removing
the patches of the ones before.

*Content* candidates (:func:`fit_clusters`): the sampled embeddings (L2-normalised) clustered by
scikit-learn's k-means, as many clusters (2 to ``clusters``) as give the largest silhouette; every
image joins the cluster of its patch, with its own box.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..data import sample_key
from .maps import STAT_GRID, stat_maps

FIT_IMAGES = 4096
"""At most this many patch embeddings (a seeded sample) fit the clusters; every image is then assigned."""
SILHOUETTE_IMAGES = 1000
"""The silhouette that picks the number of clusters is measured on at most this many sampled images."""
ROWS = 256
"""Rows read at a time (the maps are the large column)."""
ALL = -1
"""The group of every image (the class index of the candidates over all classes)."""


def _key(name: str, seed: int) -> int:
    """An image's place in a seeded sample (smaller first): the first 8 bytes of :func:`faithmap.data.sample_key`."""
    return int.from_bytes(sample_key(name, seed)[:8], "big")


@dataclass
class Group:
    """One class (or all): its images with a salient patch, their summed normalised maps and where their
    patches lie (top-left cells of the windows)."""

    n: int = 0
    maps: np.ndarray = field(default_factory=lambda: np.zeros((STAT_GRID, STAT_GRID)))
    windows: np.ndarray | None = None

    def mean_map(self) -> np.ndarray:
        return self.maps / max(self.n, 1)


@dataclass
class Summary:
    """Pass 1 over the parts: per-class groups, the images without a patch, and the embedding sample."""

    cells: int  # the patch side in cells of the common grid
    seed: int
    groups: dict[int, Group] = field(default_factory=dict)
    flat: int = 0  # images whose map shows nothing
    sample: list = field(default_factory=list)  # heap of (-key, name, embedding)

    def add(self, rows: list[dict], maps: torch.Tensor, embeddings) -> None:
        """Count ``rows`` (their ``image``, ``target``, ``box``) with their maps (n, h, w) and, for the sample,
        their embeddings (an Arrow list column: an embedding is converted only when it enters the sample)."""
        stat, shows = stat_maps(maps)
        span = STAT_GRID - self.cells + 1
        for k, (r, m, ok) in enumerate(zip(rows, stat.numpy(), shows.tolist())):
            if r["box"] is None or not ok:
                self.flat += 1
                continue
            i, j = _window(r["box"])
            for g in (int(r["target"]), ALL):
                grp = self.groups.setdefault(g, Group(windows=np.zeros((span, span))))
                grp.n += 1
                grp.maps += m
                grp.windows[min(i, span - 1), min(j, span - 1)] += 1
            key = -_key(r["image"], self.seed)
            if embeddings[k].is_valid and (len(self.sample) < FIT_IMAGES or key > self.sample[0][0]):
                item = (key, r["image"], embeddings[k].values.to_numpy(zero_copy_only=False).astype(np.float32))
                (heapq.heappush if len(self.sample) < FIT_IMAGES else heapq.heapreplace)(self.sample, item)

    @property
    def classes(self) -> list[int]:
        return sorted(g for g in self.groups if g != ALL)


def _window(box) -> tuple[int, int]:
    """The top-left cell (row, col) of a salient patch's box."""
    return int(round(box[1] * STAT_GRID)), int(round(box[0] * STAT_GRID))


def summarise(batches, names: dict[str, int], cells: int, seed: int) -> Summary:
    """Pass 1 over ``batches`` (Arrow tables of the audit's columns), the images of the plan only."""
    s = Summary(cells, seed)
    for t in batches:
        rows = t.select(["image", "target", "box", "grid_h", "grid_w"]).to_pylist()
        by_grid: dict[tuple[int, int], list[int]] = {}
        for k, r in enumerate(rows):
            if r["image"] in names:
                by_grid.setdefault((r["grid_h"], r["grid_w"]), []).append(k)
        for (h, w), idx in by_grid.items():
            take = pa.array(idx)
            flat = pc.list_flatten(t.column("map").take(take)).to_numpy(zero_copy_only=False)
            s.add([rows[k] for k in idx], torch.from_numpy(flat.astype(np.float64)).view(len(idx), h, w),
                  t.column("embedding").take(take))
    return s


@dataclass
class Candidate:
    """A candidate shortcut: what it is (kind, classes, region or per-image boxes) and where it occurs.

    ``group``: the class whose images it is about (:data:`ALL`: every class). ``count``: images where it
    occurs; ``verify``: a seeded sample of them (a heap of (-key, image index, box)); ``classes``: the
    images' classes with their counts; ``boxes``: content candidates' per-image boxes. The verification
    (:mod:`.verify`) fills ``result``.
    """

    kind: str  # "fixed-place" or "content"
    group: int
    region: list[float] | None = None
    share: float | None = None
    expected: float | None = None
    rest_share: float | None = None
    mode: tuple[int, int] | None = None
    reach: int = 0
    cluster: int | None = None
    count: int = 0
    classes: Counter = field(default_factory=Counter)
    boxes: dict[str, list[float]] = field(default_factory=dict)
    verify: list = field(default_factory=list)
    result: Any = None

    def holds(self, box) -> bool:
        """A fixed place holds an image whose salient patch lies within ``reach`` cells of the place."""
        i, j = _window(box)
        return abs(i - self.mode[0]) <= self.reach and abs(j - self.mode[1]) <= self.reach

    def add(self, index: int, row: dict, seed: int, limit: int) -> None:
        """Count the image of plan position ``index`` (its stored ``row``) in, and keep it in the sample to
        verify if its key is among the ``limit`` smallest."""
        self.count += 1
        self.classes[row["target"]] += 1
        if self.kind == "content":
            self.boxes[row["image"]] = row["box"]
        item = (-_key(row["image"], seed), index, self.region or row["box"],
                Member(row["image"], row["target"], row["target_prob"], row["predicted"], row["label"]))
        if len(self.verify) < limit:
            heapq.heappush(self.verify, item)
        elif item[0] > self.verify[0][0]:
            heapq.heapreplace(self.verify, item)

    def typical_box(self) -> list[float] | None:
        """The region (a fixed place), or the per-coordinate median of the images' boxes (content)."""
        if self.region is not None or not self.boxes:
            return self.region
        return [round(float(v), 4) for v in np.median(np.asarray(list(self.boxes.values())), 0)]

    def members(self) -> list[tuple[int, list[float], "Member"]]:
        """The images to verify, (plan index, box to remove, the image's stored row), in plan order."""
        return sorted((i, b, m) for _, i, b, m in self.verify)


@dataclass(frozen=True, order=True)
class Member:
    """What the verification needs of an image's stored row: its target, the target's probability and the
    prediction on the intact image, and its label (None without labels)."""

    image: str
    target: int
    prob: float
    predicted: int
    label: int | None


def _box_counts(h: np.ndarray, reach: int) -> np.ndarray:
    """At each window position, how many patches lie within ``reach`` cells of it (rows and columns): a box
    sum by cumulative sums (exact: counts)."""
    n, m = h.shape
    c = np.zeros((n + 1, m + 1))
    c[1:, 1:] = h.cumsum(0).cumsum(1)
    r0, r1 = np.clip(np.arange(n) - reach, 0, n), np.clip(np.arange(n) + reach + 1, 0, n)
    c0, c1 = np.clip(np.arange(m) - reach, 0, m), np.clip(np.arange(m) + reach + 1, 0, m)
    return c[r1][:, c1] - c[r0][:, c1] - c[r1][:, c0] + c[r0][:, c0]


def _component(mask: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of ``mask`` that holds ``start``."""
    out = np.zeros_like(mask)
    stack = [start]
    while stack:
        r, c = stack.pop()
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c] and not out[r, c]:
            out[r, c] = True
            stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    return out


def hot_region(mean: np.ndarray, span: tuple[int, int, int, int]) -> list[float]:
    """The box (fractions) of where the group's mean map is hot inside ``span`` (cells: row0, col0, row1,
    col1 exclusive, the windows counted at a place): the cells at half the span's largest mean or more,
    connected to it, and one cell around them. The mean over the group's images localises the place
    better than any one window."""
    r0, c0, r1, c1 = span
    sub = mean[r0:r1, c0:c1]
    top = np.unravel_index(int(np.argmax(sub)), sub.shape)
    rows, cols = np.nonzero(_component(sub >= 0.5 * sub[top], top))
    box = (c0 + cols.min() - 1, r0 + rows.min() - 1, c0 + cols.max() + 2, r0 + rows.max() + 2)  # a cell's margin
    return [round(float(np.clip(v, 0, STAT_GRID)) / STAT_GRID, 4) for v in box]


def _central(box: list[float], side: float) -> bool:
    """Whether a box's centre lies in the middle of the image: within half a patch ``side`` of its centre."""
    return abs((box[0] + box[2]) / 2 - 0.5) < side / 2 and abs((box[1] + box[3]) / 2 - 0.5) < side / 2


def places(group: Group, g: int, rest: Group | None, cells: int, limit: int, min_share: float,
           min_images: int) -> list[Candidate]:
    """The fixed-place candidates of one group: a class (``rest``: the other classes' images) or all
    classes (``rest`` None; see the module docstring)."""
    H = group.windows.copy()
    span = H.shape[0]
    reach = max(1, cells // 2)
    expected = min(1.0, (2 * reach + 1) ** 2 / float(span * span))
    others = _box_counts(rest.windows, reach) / max(rest.n, 1) if rest is not None and rest.n else None
    out = []
    for _ in range(span * span):
        C = _box_counts(H, reach)
        i, j = np.unravel_index(int(np.argmax(C)), C.shape)
        count = int(round(C[i, j]))
        share = count / max(group.n, 1)
        if len(out) >= limit or count < min_images or share < max(min_share, 2 * expected):
            break
        near = np.zeros_like(H, dtype=bool)
        near[max(0, i - reach):i + reach + 1, max(0, j - reach):j + reach + 1] = True
        rows, cols = np.nonzero(near & (H > 0))
        region = hot_region(group.mean_map(), (rows.min(), cols.min(), rows.max() + cells, cols.max() + cells))
        rest_share = float(others[i, j]) if others is not None else None
        H[max(0, i - 2 * reach):i + 2 * reach + 1, max(0, j - 2 * reach):j + 2 * reach + 1] = 0
        if rest_share is not None and share < 2 * rest_share:
            continue  # the other classes' maps go there too: where the objects are, not this class's place
        if g == ALL and _central(region, cells / STAT_GRID):
            continue  # over all classes, the centre is where objects are in most datasets
        out.append(Candidate("fixed-place", g, region=region, share=share, expected=expected,
                             rest_share=rest_share, mode=(int(i), int(j)), reach=reach))
    return out


def fixed_places(s: Summary, limit: int, min_share: float, min_images: int) -> list[Candidate]:
    """Per class, then over all classes (when there are several), the fixed-place candidates."""
    out = []
    for g in s.classes + ([ALL] if len(s.classes) > 1 else []):
        rest = None
        if g != ALL and len(s.classes) > 1:
            a, c = s.groups[ALL], s.groups[g]
            rest = Group(a.n - c.n, a.maps - c.maps, a.windows - c.windows)
        out += places(s.groups[g], g, rest, s.cells, limit, min_share, min_images)
    return out


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def fit_clusters(s: Summary, clusters: int, min_images: int, seed: int):
    """k-means on the embedding sample (sorted by name: the same clusters whatever the parts' order), with
    the number of clusters (2 to ``clusters``, each of ``min_images`` sampled images on average) that
    gives the largest silhouette (Rousseeuw, 1987): a fitted :class:`sklearn.cluster.KMeans`, or None when
    there are too few images for two clusters."""
    from sklearn.cluster import KMeans  # lazy: importing scikit-learn costs ~2 s, which `import faithmap` would pay
    from sklearn.metrics import silhouette_score

    items = sorted(s.sample, key=lambda it: it[1])
    top = min(clusters, len(items) // max(min_images, 1))
    if top < 2:
        return None
    x = _unit(np.stack([it[2] for it in items]).astype(np.float64))
    top = min(top, len(np.unique(x.round(6), axis=0)))  # as many clusters as distinct patches at most
    rs = seed % 2**32
    best = None
    for k in range(2, top + 1):
        km = KMeans(n_clusters=k, n_init=4, random_state=rs).fit(x)
        if len(set(km.labels_.tolist())) < 2:
            continue
        try:
            score = float(silhouette_score(x, km.labels_, sample_size=min(len(x), SILHOUETTE_IMAGES),
                                           random_state=rs))
        except ValueError:  # the silhouette's sample drew one cluster only
            continue
        if best is None or score > best[0] + 1e-9:
            best = (score, km)
    return best[1] if best is not None else None


def assign(batches, names: dict[str, int], fixed: list[Candidate], km, seed: int,
           limit: int) -> list[Candidate]:
    """Pass 2: every image into its fixed places and its content cluster; returns the content candidates
    (one per cluster; the fixed ones are filled in place)."""
    content = [Candidate("content", ALL, cluster=c) for c in range(km.n_clusters)] if km is not None else []
    cols = ["image", "target", "target_prob", "predicted", "label", "box"]
    for t in batches:
        rows = t.select(cols).to_pylist()
        keep = [k for k, r in enumerate(rows) if r["image"] in names and r["box"] is not None]
        for c in fixed:
            for k in keep:
                r = rows[k]
                if c.group in (ALL, r["target"]) and c.holds(r["box"]):
                    c.add(names[r["image"]], r, seed, limit)
        if km is None:
            continue
        valid = t.column("embedding").is_valid().to_pylist()
        use = [k for k in keep if valid[k]]
        if use:
            x = pc.list_flatten(t.column("embedding").take(pa.array(use, pa.int64()))).to_numpy(zero_copy_only=False)
            lab = km.predict(_unit(x.reshape(len(use), -1).astype(np.float64)))
            for k, c in zip(use, lab.tolist()):
                content[c].add(names[rows[k]["image"]], rows[k], seed, limit)
    return content
