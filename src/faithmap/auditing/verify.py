"""Step 3: verify each candidate by intervention, never by the map alone.

For each candidate, on a seeded sample of the images where it occurs (at most ``verify_images``):
remove it (its box replaced by the blur baseline the deletion metrics use,
:func:`faithmap.core.perturb.make_baseline` ``"blur"``: Fong & Vedaldi, ICCV 2017; Qi et al., I-GOS,
AAAI 2020) and read the model's probability of the image's target and its prediction; do the same
for ``draws`` random regions of the same size in the same image (placed uniformly where they do not
touch the candidate's box when there is room; each image's draws from its own seed). Per image:

* probability drop: the target's probability on the intact image minus on the changed one;
* accuracy drop: correct on the intact image minus correct on the changed one (correct = the
  prediction is the label; without labels, the prediction is the intact image's prediction);
* changed: the prediction differs from the intact image's.

The random regions' values are averaged per image. Each mean comes with a 95% percentile bootstrap
interval over the images (Efron & Tibshirani, 1993), all quantities from the same resamples, so
the *excess* (removed minus random, paired per image) has its own interval. A candidate is a
**finding** when the interval of its excess probability drop lies above 0 (it excludes the
random-region effect) and its mean is at least ``min_effect``.

Images are decoded once for all the candidates they belong to, in plan order, batch by batch; the
changed images of a batch go through the model in chunks of ``batch_size``. Thumbnails are kept only
for each candidate's exemplars (the images whose probability dropped most).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.batching import chunks, model_guard
from ..core.perturb import make_baseline, swap
from ..evaluation.tasks import image_seed
from ..evaluation.worker import load_photos
from .candidates import Candidate, Member
from .maps import pixel_box

QUANTITIES = ("probability_drop", "accuracy_drop", "changed")
THUMB = 160
"""Longest side of an exemplar's thumbnail, pixels."""


@dataclass(frozen=True)
class Effect:
    """A mean over images with its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    def as_dict(self, digits: int = 6) -> dict:
        return {"mean": round(self.mean, digits), "ci95": [round(self.low, digits), round(self.high, digits)]}


@dataclass
class Exemplar:
    """An image where removing the candidate hurt most: its thumbnail, the removed box and the probabilities."""

    image: str
    index: int
    box: list[float]
    thumbnail: np.ndarray  # (h, w, 3) uint8
    prob: float
    removed_prob: float


@dataclass
class Verdict:
    """What removing a candidate did, against random regions of the same size (see the module docstring)."""

    images: int
    removed: dict[str, Effect]
    random: dict[str, Effect]
    excess: dict[str, Effect]
    finding: bool
    exemplars: list[Exemplar] = field(default_factory=list)

    @property
    def effect(self) -> float:
        """The mean excess probability drop: what candidates are ordered by."""
        return self.excess["probability_drop"].mean


@dataclass
class _Tally:
    """Per verified image of one candidate: the removal's and the random regions' (mean) values."""

    removed: list = field(default_factory=list)  # [probability_drop, accuracy_drop, changed]
    random: list = field(default_factory=list)
    top: list = field(default_factory=list)  # heap of (drop, -index, Exemplar)


def random_boxes(box: tuple[int, int, int, int], h: int, w: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """``n`` boxes of ``box``'s size (pixels, x0, y0, x1, y1) placed uniformly in an h x w image, each away
    from ``box`` when there is room (else where the last of 100 tries fell)."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        for _ in range(100):
            rx, ry = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            if rx >= x1 or rx + bw <= x0 or ry >= y1 or ry + bh <= y0:
                break
        out.append((rx, ry, rx + bw, ry + bh))
    return out


def _correct(pred: int, m: Member) -> float:
    return float(pred == (m.label if m.label is not None else m.predicted))


def _values(m: Member, prob: float, pred: int) -> list[float]:
    """[probability drop, accuracy drop, changed] of one changed image."""
    return [m.prob - prob, _correct(m.predicted, m) - _correct(pred, m), float(pred != m.predicted)]


def _thumbnail(clf, x: torch.Tensor) -> np.ndarray:
    pix = clf.to_pixels(x.unsqueeze(0).float())
    side = max(pix.shape[-2:])
    if side > THUMB:
        size = (max(1, round(pix.shape[-2] * THUMB / side)), max(1, round(pix.shape[-1] * THUMB / side)))
        pix = F.interpolate(pix, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return (pix[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def _jobs(plan, todo: dict, idx: list[int], h: int, w: int) -> list[tuple]:
    """The changed images of one batch: (image in batch, candidate, draw (-1: the removal), pixel box, member)."""
    out = []
    for k, i in enumerate(idx):
        for ci, box, m in todo[i]:
            pb = pixel_box(box, h, w)
            out.append((k, ci, -1, pb, m))
            seed = image_seed(plan.config.seed, m.image, "audit", "random-region", ",".join(map(str, pb)))
            out += [(k, ci, d, rb, m) for d, rb in enumerate(random_boxes(pb, h, w, plan.config.draws, seed))]
    return out


def _score(clf, x: torch.Tensor, base: torch.Tensor, jobs: list[tuple], batch_size: int) -> tuple[list, list]:
    """The target's probability and the prediction on each job's changed image, in chunks of ``batch_size``."""
    probs, preds = [], []
    h, w = x.shape[-2:]
    with model_guard(clf), torch.no_grad():
        for sl in chunks(len(jobs), batch_size):
            part = jobs[sl]
            rows = torch.tensor([j[0] for j in part], device=x.device)
            mask = torch.zeros(len(part), 1, h, w, device=x.device, dtype=x.dtype)
            for n, (_, _, _, (x0, y0, x1, y1), _) in enumerate(part):
                mask[n, :, y0:y1, x0:x1] = 1
            p = torch.softmax(clf(swap(x[rows], base[rows], mask)).double(), 1)
            t = torch.tensor([j[4].target for j in part], device=x.device)
            probs += p.gather(1, t[:, None])[:, 0].tolist()
            preds += p.argmax(1).tolist()
    return probs, preds


def _record(tallies: list[_Tally], jobs: list[tuple], probs: list, preds: list, x, idx, clf, keep: int) -> None:
    """Add one batch's values to each candidate's tally, each image's removal beside the mean of its random
    regions; keep the thumbnails of the top exemplars."""
    removed: dict[tuple[int, int], list] = {}
    draws: dict[tuple[int, int], list] = {}
    for (k, ci, d, pb, m), p, q in zip(jobs, probs, preds):
        vals = _values(m, p, q)
        if d >= 0:
            draws.setdefault((k, ci), []).append(vals)
            continue
        removed[k, ci] = vals
        top = tallies[ci].top
        if keep and (len(top) < keep or (vals[0], -idx[k]) > top[0][:2]):
            h, w = x.shape[-2:]
            ex = Exemplar(m.image, idx[k], [pb[0] / w, pb[1] / h, pb[2] / w, pb[3] / h], _thumbnail(clf, x[k]),
                          m.prob, p)
            (heapq.heappush if len(top) < keep else heapq.heapreplace)(top, (vals[0], -idx[k], ex))
    for (k, ci), vals in removed.items():
        tallies[ci].removed.append(vals)
        tallies[ci].random.append(np.mean(draws[k, ci], 0).tolist())


def bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of the columns of ``values`` (n, q) and their 95% percentile bootstrap intervals (the same
    resamples for every column, so paired differences keep their pairing)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    means = values.mean(0)
    if n < 2:
        return means, means.copy(), means.copy()
    boot = np.empty((resamples, values.shape[1]))
    for s in range(0, resamples, 256):  # bounded memory: 256 resamples at a time
        idx = rng.integers(0, n, size=(min(256, resamples - s), n))
        boot[s:s + idx.shape[0]] = values[idx].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    return means, low, high


def verdict(t: _Tally, cfg, seed: int) -> Verdict:
    """The effects of one candidate's tally and whether it is a finding."""
    removed, rand = np.asarray(t.removed, dtype=np.float64), np.asarray(t.random, dtype=np.float64)
    q = len(QUANTITIES)
    means, low, high = bootstrap(np.concatenate([removed, rand, removed - rand], 1), cfg.bootstrap, seed)

    def block(b: int) -> dict[str, Effect]:
        return {name: Effect(float(means[b * q + k]), float(low[b * q + k]), float(high[b * q + k]))
                for k, name in enumerate(QUANTITIES)}

    excess = block(2)
    p = excess["probability_drop"]
    finding = bool(p.low > 0 and p.mean >= cfg.min_effect)
    ex = [e for _, _, e in sorted(t.top, key=lambda it: (-it[0], -it[1]))]
    return Verdict(len(t.removed), block(0), block(1), excess, finding, ex)


def verify(cands: list[Candidate], plan) -> int:
    """Verify every candidate (its ``result`` becomes a :class:`Verdict`); returns the model images sent."""
    cfg, clf = plan.config, plan.model
    todo: dict[int, list] = {}
    for ci, c in enumerate(cands):
        for i, box, m in c.members():
            todo.setdefault(i, []).append((ci, box, m))
    order = sorted(todo)
    tallies = [_Tally() for _ in cands]
    snap = clf.counter.snapshot()
    bar = tqdm(total=len(order), desc="verify", unit="image", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for sl in chunks(len(order), plan.batch_images):
            idx = order[sl]
            x = load_photos([plan.images[i] for i in idx], clf.transform, cfg.convert)["x"].to(clf.device)
            base = make_baseline("blur", x)
            jobs = _jobs(plan, todo, idx, *x.shape[-2:])
            probs, preds = _score(clf, x, base, jobs, plan.batch_size)
            _record(tallies, jobs, probs, preds, x, idx, clf, cfg.exemplars)
            bar.update(len(idx))
    finally:
        bar.close()
    for ci, (c, t) in enumerate(zip(cands, tallies)):
        c.result = verdict(t, cfg, image_seed(cfg.seed, f"candidate-{ci}", "audit", "bootstrap"))
    return clf.counter.since(snap)["images"]
