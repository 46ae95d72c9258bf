"""Pooling per-image results: means with t confidence intervals, per-category accuracy, costs, mean curves.

Computation only (the report module presents these numbers).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

CI_LEVEL = 0.95
CI_NOTE = ("95% confidence intervals are Student-t intervals over images: mean ± t(0.975, n−1)·s/√n, "
           "s the sample standard deviation (n − 1 in its denominator); none when n < 2. For metrics pooled "
           "per category (the pointing game) n counts categories and the interval is over category accuracies.")


@dataclass
class Interval:
    mean: float
    half: float  # half-width of the interval (NaN when n < 2)
    n: int
    sd: float

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def t_quantile(p: float, dof: int) -> float:
    """Quantile ``p`` of Student's t distribution with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def t_interval(values: Iterable[float], level: float = CI_LEVEL) -> Interval:
    """Mean and t-interval of the finite ``values`` (NaNs are left out)."""
    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0, float("nan"))
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, float("nan"), 1, float("nan"))
    sd = float(v.std(ddof=1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, half, n, sd)


def _float(s: str) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class CategoryScore:
    category: str
    hits: float  # sum of the per-image scores (hits for the pointing game)
    total: int  # images with a finite score
    accuracy: float


@dataclass
class MetricSummary:
    method: str
    resolution: str
    grid: str
    metric: str
    higher_is_better: bool
    aggregate: str
    interval: Interval
    n_images: int  # images (x targets) with a finite score
    categories: list[CategoryScore] = field(default_factory=list)


@dataclass
class Cost:
    method: str
    resolution: str
    grid: str
    n: int  # images x targets
    explain_seconds: float
    explain_images: float
    explain_grad_images: float
    metric_seconds: dict[str, float]
    metric_images: dict[str, float]

    @property
    def total_metric_images(self) -> float:
        return sum(self.metric_images.values())

    @property
    def total_metric_seconds(self) -> float:
        return sum(self.metric_seconds.values())


def grid_cells(grid: str) -> int:
    try:
        h, w = grid.lower().split("x")
        return int(h) * int(w)
    except ValueError:
        return 0


def group_order(rows: Sequence[dict[str, str]], methods: Sequence[str], resolutions: Sequence[str]) -> list[tuple[str, str]]:
    """(method, resolution) groups present in ``rows``: finest grid first, then in run order."""
    seen: "OrderedDict[tuple[str, str], str]" = OrderedDict()
    for r in rows:
        seen.setdefault((r["method"], r["resolution"]), r["grid"])
    m_idx = {m: i for i, m in enumerate(methods)}
    r_idx = {str(x): i for i, x in enumerate(resolutions)}
    return sorted(seen, key=lambda k: (-grid_cells(seen[k]), m_idx.get(k[0], len(m_idx)), r_idx.get(k[1], len(r_idx)), k))


def summarize(rows: Sequence[dict[str, str]], methods: Sequence[str], resolutions: Sequence[str],
              metrics: Sequence[str], aggregates: dict[str, str]) -> list[MetricSummary]:
    """One :class:`MetricSummary` per (method, resolution, metric) present in ``rows``."""
    by: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault((r["method"], r["resolution"], r["metric"]), []).append(r)
    out = []
    for method, res in group_order(rows, methods, resolutions):
        for metric in metrics:
            g = by.get((method, res, metric))
            if not g:
                continue
            vals = [_float(r["value"]) for r in g]
            finite = [v for v in vals if math.isfinite(v)]
            agg = aggregates.get(metric, "mean")
            cats: list[CategoryScore] = []
            if agg == "category_mean":
                per: "OrderedDict[str, list[float]]" = OrderedDict()
                for r, v in zip(g, vals):
                    if math.isfinite(v):
                        per.setdefault(r["category"], []).append(v)
                cats = [CategoryScore(c, float(sum(v)), len(v), float(np.mean(v))) for c, v in per.items()]
                interval = t_interval([c.accuracy for c in cats])
            else:
                interval = t_interval(finite)
            out.append(MetricSummary(method, res, g[0]["grid"], metric, g[0]["higher_is_better"] == "true", agg,
                                     interval, len(finite), cats))
    return out


def costs(rows: Sequence[dict[str, str]], methods: Sequence[str], resolutions: Sequence[str]) -> list[Cost]:
    """Seconds and model images per image (per image x target), for explaining and for each metric."""
    out = []
    for method, res in group_order(rows, methods, resolutions):
        g = [r for r in rows if r["method"] == method and r["resolution"] == res]
        per_image: "OrderedDict[tuple[str, str], dict[str, str]]" = OrderedDict()
        for r in g:
            per_image.setdefault((r["image"], r["target"]), r)
        n = len(per_image)
        first = list(per_image.values())
        ms: dict[str, list[float]] = {}
        mi: dict[str, list[float]] = {}
        for r in g:
            ms.setdefault(r["metric"], []).append(_float(r["metric_seconds"]))
            mi.setdefault(r["metric"], []).append(_float(r["metric_images"]))
        out.append(Cost(method, res, g[0]["grid"], n,
                        float(np.mean([_float(r["explain_seconds"]) for r in first])),
                        float(np.mean([_float(r["explain_images"]) for r in first])),
                        float(np.mean([_float(r["explain_grad_images"]) for r in first])),
                        {k: float(np.mean(v)) for k, v in ms.items()},
                        {k: float(np.mean(v)) for k, v in mi.items()}))
    return out


@dataclass
class MeanCurves:
    method: str
    resolution: str
    grid: str
    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    n: int

    @property
    def deletion_auc(self) -> float:
        return float(np.trapezoid(self.deletion, self.fractions))

    @property
    def insertion_auc(self) -> float:
        return float(np.trapezoid(self.insertion, self.fractions))


def mean_curves(curves: Sequence[dict], methods: Sequence[str], resolutions: Sequence[str]) -> list[MeanCurves]:
    """Mean deletion and insertion curves per (method, resolution), over images.

    Curves of one group share their fractions when the maps share a grid; otherwise each is
    interpolated linearly onto the first one's fractions. The AUC of the mean curve equals the mean
    AUC in the first case (the trapezoid is linear).
    """
    groups: "OrderedDict[tuple[str, str], list[dict]]" = OrderedDict()
    for c in curves:
        groups.setdefault((c["method"], str(c["resolution"])), []).append(c)
    fake_rows = [{"method": m, "resolution": r, "grid": g[0].get("grid", "")} for (m, r), g in groups.items()]
    out = []
    for key in group_order(fake_rows, methods, resolutions):
        g = groups[key]
        fr = np.asarray(g[0]["fractions"], dtype=np.float64)
        dels, inss = [], []
        for c in g:
            f = np.asarray(c["fractions"], dtype=np.float64)
            d = np.asarray(c["deletion"], dtype=np.float64)
            i = np.asarray(c["insertion"], dtype=np.float64)
            if f.shape != fr.shape or not np.allclose(f, fr):
                d, i = np.interp(fr, f, d), np.interp(fr, f, i)
            dels.append(d)
            inss.append(i)
        out.append(MeanCurves(key[0], key[1], g[0].get("grid", ""), fr, np.mean(dels, 0), np.mean(inss, 0), len(g)))
    return out
