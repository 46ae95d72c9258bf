"""Pooling per-image results: means with t confidence intervals, per-category accuracy, costs, mean curves.

Computation only (the report module presents these numbers). :func:`aggregate` reads the results
as a stream of Arrow tables (a few tens of thousands of rows each, see
:meth:`faithmap.evaluation.store.Store.batches`) and keeps only per-group running sums: count, mean and
the sum of squared deviations merged chunk by chunk (Chan, Golub and LeVeque's pairwise update), so
memory does not grow with the number of rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CI_LEVEL = 0.95
CI_NOTE = ("95% confidence intervals are Student-t intervals over images: mean ± t(0.975, n−1)·s/√n, "
           "s the sample standard deviation (n − 1 in its denominator); none when n < 2. For metrics pooled "
           "per category (the pointing game) n counts categories and the interval is over category accuracies.")
GROUP = ("method", "resolution", "grid", "metric")
COLUMNS = ("method", "resolution", "grid", "metric", "value", "higher_is_better", "category", "correct", "image",
           "explain_seconds", "explain_images", "explain_grad_images", "metric_seconds", "metric_images",
           "fractions", "deletion_curve", "insertion_curve")
"""The columns :func:`aggregate` reads."""


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
    from scipy.stats import t  # lazy: importing scipy.stats costs ~1 s, which every `import faithmap` would pay

    return float(t.ppf(p, dof))


def interval(n: int, mean: float, m2: float, level: float = CI_LEVEL) -> Interval:
    """The t-interval of ``n`` values with this ``mean`` and sum of squared deviations ``m2``."""
    if n == 0:
        return Interval(float("nan"), float("nan"), 0, float("nan"))
    if n < 2:
        return Interval(float(mean), float("nan"), 1, float("nan"))
    sd = math.sqrt(max(m2, 0.0) / (n - 1))
    return Interval(float(mean), t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n), int(n), sd)


def t_interval(values: Iterable[float], level: float = CI_LEVEL) -> Interval:
    """Mean and t-interval of the finite ``values`` (NaNs are left out)."""
    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    if v.size == 0:
        return interval(0, 0.0, 0.0, level)
    return interval(int(v.size), float(v.mean()), float(((v - v.mean()) ** 2).sum()), level)


@dataclass
class Running:
    """Count, mean and sum of squared deviations, merged chunk by chunk."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def merge(self, n: int, mean: float, m2: float) -> None:
        if n <= 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total


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


SUMMARY_COLUMNS = ("method", "resolution", "grid", "metric", "higher_is_better", "aggregate", "n", "mean", "sd",
                   "ci95_low", "ci95_high", "ci95_half_width")
"""The columns of a summary (``summary.csv``, :meth:`faithmap.evaluation.EvalResult.summary`)."""
SUMMARY_SCHEMA = pa.schema([(c, pa.string()) for c in SUMMARY_COLUMNS[:4]] + [
    ("higher_is_better", pa.bool_()), ("aggregate", pa.string()), ("n", pa.int64())]
    + [(c, pa.float64()) for c in SUMMARY_COLUMNS[7:]])


def summary_records(summaries: Sequence[MetricSummary]) -> list[dict]:
    """One dict of :data:`SUMMARY_COLUMNS` per summary (``n``: the interval's count, images or categories)."""
    return [dict(zip(SUMMARY_COLUMNS, (s.method, s.resolution, s.grid, s.metric, bool(s.higher_is_better),
                                       s.aggregate, s.interval.n, s.interval.mean, s.interval.sd, s.interval.low,
                                       s.interval.high, s.interval.half))) for s in summaries]


def summaries_table(summaries: Sequence[MetricSummary]) -> pa.Table:
    """The summaries as an Arrow table of :data:`SUMMARY_COLUMNS` (``.to_pylist()``: one dict per row)."""
    return pa.Table.from_pylist(summary_records(summaries), schema=SUMMARY_SCHEMA)


def grid_cells(grid: str) -> int:
    try:
        h, w = grid.lower().split("x")
        return int(h) * int(w)
    except ValueError:
        return 0


def order_groups(keys: Iterable[tuple[str, str, str]], methods: Sequence[str], resolutions: Sequence[str]
                 ) -> list[tuple[str, str, str]]:
    """(method, resolution, grid) groups: finest grid first, then in run order."""
    m_idx = {m: i for i, m in enumerate(methods)}
    r_idx = {str(x): i for i, x in enumerate(resolutions)}
    return sorted(set(keys), key=lambda k: (-grid_cells(k[2]), m_idx.get(k[0], len(m_idx)),
                                            r_idx.get(k[1], len(r_idx)), k))


@dataclass
class Aggregates:
    """Everything the report shows, pooled over all rows."""

    values: dict = field(default_factory=dict)  # (method, res, grid, metric) -> Running over finite values
    directions: dict = field(default_factory=dict)  # metric -> higher_is_better (from the rows)
    by_correct: dict = field(default_factory=dict)  # (method, res, grid, metric, correct) -> Running
    categories: dict = field(default_factory=dict)  # (method, res, grid, metric) -> {category: [sum, count]}
    costs: dict = field(default_factory=dict)  # (method, res, grid, metric) -> [rows, sums of the 5 cost columns]
    curves: dict = field(default_factory=dict)  # (method, res, grid) -> [fractions, sum del, sum ins, n]
    images: set = field(default_factory=set)
    rows: int = 0

    def summaries(self, methods, resolutions, metrics, aggregates: dict[str, str]) -> list[MetricSummary]:
        out = []
        for method, res, grid in order_groups([k[:3] for k in self.values] + [k[:3] for k in self.costs],
                                              methods, resolutions):
            for metric in metrics:
                k = (method, res, grid, metric)
                if k not in self.costs:
                    continue
                run = self.values.get(k, Running())
                agg = aggregates.get(metric, "mean")
                cats: list[CategoryScore] = []
                if agg == "category_mean":
                    per = self.categories.get(k, {})
                    cats = [CategoryScore(c, float(s), int(n), float(s / n)) for c, (s, n) in sorted(per.items()) if n]
                    iv = t_interval([c.accuracy for c in cats])
                else:
                    iv = interval(run.n, run.mean, run.m2)
                out.append(MetricSummary(method, res, grid, metric, bool(self.directions.get(metric, True)), agg,
                                         iv, run.n, cats))
        return out

    def correct_split(self, methods, resolutions, metrics) -> list[tuple[MetricSummary, MetricSummary]]:
        """Per (method, resolution, metric): the summary over correctly and over wrongly predicted images."""
        out = []
        for method, res, grid in order_groups([k[:3] for k in self.by_correct], methods, resolutions):
            for metric in metrics:
                pair = []
                for ok in (True, False):
                    r = self.by_correct.get((method, res, grid, metric, ok), Running())
                    pair.append(MetricSummary(method, res, grid, metric, bool(self.directions.get(metric, True)),
                                              "mean", interval(r.n, r.mean, r.m2), r.n))
                if pair[0].n_images or pair[1].n_images:
                    out.append((pair[0], pair[1]))
        return out

    def cost_list(self, methods, resolutions) -> list[Cost]:
        out = []
        for method, res, grid in order_groups([k[:3] for k in self.costs], methods, resolutions):
            per = {k[3]: v for k, v in self.costs.items() if k[:3] == (method, res, grid)}
            rows = sum(v[0] for v in per.values())
            sums = np.sum([v[1:4] for v in per.values()], 0)
            out.append(Cost(method, res, grid, max(v[0] for v in per.values()),
                            float(sums[0] / rows), float(sums[1] / rows), float(sums[2] / rows),
                            {m: float(v[4] / v[0]) for m, v in per.items()},
                            {m: float(v[5] / v[0]) for m, v in per.items()}))
        return out

    def mean_curves(self, methods, resolutions) -> list[MeanCurves]:
        out = []
        for k in order_groups(self.curves, methods, resolutions):
            fr, d, i, n = self.curves[k]
            out.append(MeanCurves(k[0], k[1], k[2], fr, d / n, i / n, n))
        return out


def aggregate(chunks: Iterable, *, categories: Sequence[str] = ()) -> Aggregates:
    """Pool a stream of Arrow tables (with :data:`COLUMNS`); ``categories`` names the metrics pooled per category."""
    agg = Aggregates()
    cat_metrics = pa.array(sorted(set(categories)), pa.string())
    for t in chunks:
        if t.num_rows == 0:
            continue
        agg.rows += t.num_rows
        agg.images.update(pc.unique(t.column("image")).to_pylist())
        for r in t.group_by(["metric"]).aggregate([("higher_is_better", "min")]).to_pylist():
            agg.directions.setdefault(r["metric"], r["higher_is_better_min"])
        # costs: every row
        g = t.group_by(list(GROUP)).aggregate([([], "count_all"), ("explain_seconds", "sum"),
                                               ("explain_images", "sum"), ("explain_grad_images", "sum"),
                                               ("metric_seconds", "sum"), ("metric_images", "sum")])
        for r in g.to_pylist():
            k = tuple(r[c] for c in GROUP)
            acc = agg.costs.setdefault(k, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
            acc[0] += r["count_all"]
            for j, c in enumerate(("explain_seconds", "explain_images", "explain_grad_images", "metric_seconds",
                                   "metric_images"), start=1):
                acc[j] += r[f"{c}_sum"] or 0.0
        # values: finite ones
        fin = t.filter(pc.is_finite(t.column("value")))
        if fin.num_rows:
            opts = pc.VarianceOptions(ddof=0)
            g = fin.group_by(list(GROUP)).aggregate([("value", "count"), ("value", "mean"), ("value", "variance", opts)])
            for r in g.to_pylist():
                n = r["value_count"]
                agg.values.setdefault(tuple(r[c] for c in GROUP), Running()).merge(n, r["value_mean"],
                                                                                 r["value_variance"] * n)
            lab = fin.filter(pc.is_valid(fin.column("correct")))
            if lab.num_rows:
                g = lab.group_by(list(GROUP) + ["correct"]).aggregate(
                    [("value", "count"), ("value", "mean"), ("value", "variance", opts)])
                for r in g.to_pylist():
                    n = r["value_count"]
                    key = tuple(r[c] for c in GROUP) + (bool(r["correct"]),)
                    agg.by_correct.setdefault(key, Running()).merge(n, r["value_mean"], r["value_variance"] * n)
            if len(cat_metrics):
                cat = fin.filter(pc.is_in(fin.column("metric"), value_set=cat_metrics))
                if cat.num_rows:
                    g = cat.group_by(list(GROUP) + ["category"]).aggregate([("value", "sum"), ("value", "count")])
                    for r in g.to_pylist():
                        per = agg.categories.setdefault(tuple(r[c] for c in GROUP), {})
                        acc = per.setdefault(r["category"], [0.0, 0])
                        acc[0] += r["value_sum"]
                        acc[1] += r["value_count"]
        # curves: on each (image, target)'s first row
        cv = t.filter(pc.is_valid(t.column("fractions")))
        if cv.num_rows:
            for k in {tuple(r.values()) for r in cv.select(["method", "resolution", "grid"]).to_pylist()}:
                mask = pc.and_(pc.and_(pc.equal(cv.column("method"), k[0]), pc.equal(cv.column("resolution"), k[1])),
                               pc.equal(cv.column("grid"), k[2]))
                part = cv.filter(mask)
                _add_curves(agg.curves, k, part)
    return agg


def _add_curves(store: dict, key, part) -> None:
    """Add the curves of ``part`` (one group) to ``store[key]``; curves on other fractions are interpolated."""
    lengths = pc.list_value_length(part.column("fractions")).to_numpy(zero_copy_only=False)
    acc = store.get(key)
    if (lengths == lengths[0]).all():
        L = int(lengths[0])
        fr, d, i = (pc.list_flatten(part.column(c)).to_numpy(zero_copy_only=False).reshape(-1, L)
                    for c in ("fractions", "deletion_curve", "insertion_curve"))
        ref = acc[0] if acc is not None else fr[0]
        if ref.shape == (L,) and np.allclose(fr, ref):  # the usual case: one grid, one set of fractions
            if acc is None:
                store[key] = [ref.copy(), d.sum(0), i.sum(0), d.shape[0]]
            else:
                acc[1] += d.sum(0)
                acc[2] += i.sum(0)
                acc[3] += d.shape[0]
            return
        rows = list(zip(fr, d, i))
    else:
        rows = list(zip(*(part.column(c).to_pylist() for c in ("fractions", "deletion_curve", "insertion_curve"))))
    for f, d, i in rows:
        f, d, i = (np.asarray(v, dtype=np.float64) for v in (f, d, i))
        if acc is None:
            acc = store[key] = [f.copy(), np.zeros_like(f), np.zeros_like(f), 0]
        if f.shape != acc[0].shape or not np.allclose(f, acc[0]):
            d, i = np.interp(acc[0], f, d), np.interp(acc[0], f, i)
        acc[1] += d
        acc[2] += i
        acc[3] += 1


def mean_curves(curves: Sequence[dict], methods: Sequence[str], resolutions: Sequence[str]) -> list[MeanCurves]:
    """Mean deletion and insertion curves per (method, resolution) of curve records (dicts with
    ``method, resolution, grid, fractions, deletion, insertion``); the AUC of the mean curve equals
    the mean AUC when the maps share a grid (the trapezoid is linear)."""
    if not curves:
        return []
    t = pa.table({"method": [c["method"] for c in curves], "resolution": [str(c["resolution"]) for c in curves],
                  "grid": [c.get("grid", "") for c in curves],
                  "fractions": [list(map(float, c["fractions"])) for c in curves],
                  "deletion_curve": [list(map(float, c["deletion"])) for c in curves],
                  "insertion_curve": [list(map(float, c["insertion"])) for c in curves]})
    store: dict = {}
    for k in {(c["method"], str(c["resolution"]), c.get("grid", "")) for c in curves}:
        mask = pc.and_(pc.and_(pc.equal(t.column("method"), k[0]), pc.equal(t.column("resolution"), k[1])),
                       pc.equal(t.column("grid"), k[2]))
        _add_curves(store, k, t.filter(mask))
    return Aggregates(curves=store).mean_curves(methods, resolutions)


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def rows_table(rows: Sequence[dict]):
    """An Arrow table with :data:`COLUMNS` from row dicts (values as numbers or as their text)."""
    def flag(v):
        return v if isinstance(v, bool) or v is None else str(v).lower() == "true"

    cols = {
        "method": [str(r["method"]) for r in rows], "resolution": [str(r["resolution"]) for r in rows],
        "grid": [str(r.get("grid", "")) for r in rows], "metric": [str(r["metric"]) for r in rows],
        "value": [_num(r.get("value")) for r in rows],
        "higher_is_better": [flag(r.get("higher_is_better", True)) for r in rows],
        "category": [str(r.get("category", "")) for r in rows], "correct": [flag(r.get("correct")) for r in rows],
        "image": [str(r.get("image", "")) for r in rows],
    }
    for c in ("explain_seconds", "explain_images", "explain_grad_images", "metric_seconds", "metric_images"):
        cols[c] = [_num(r.get(c, 0.0)) for r in rows]
    for c in ("fractions", "deletion_curve", "insertion_curve"):
        cols[c] = pa.array([None] * len(rows), pa.list_(pa.float64()))
    return pa.table(cols)


def summarize(rows: Sequence[dict], methods: Sequence[str], resolutions: Sequence[str], metrics: Sequence[str],
              aggregates: dict[str, str]) -> list[MetricSummary]:
    """One :class:`MetricSummary` per (method, resolution, metric) of row dicts (small inputs; the report
    streams the parts through :func:`aggregate` instead)."""
    agg = aggregate([rows_table(rows)], categories=[m for m, a in aggregates.items() if a == "category_mean"])
    return agg.summaries(methods, resolutions, metrics, aggregates)
