"""``faithmap.truth.run``: every registered method on every ground-truth scenario that passes its gates.

For each tier, model seed and scenario: the scenario is built (tier 0 here; tiers 1 and 2 by
:mod:`faithmap.truth.tier1` / :mod:`~faithmap.truth.tier2`, reported as unavailable when this build
lacks them); its gates are read and a failed gate ends it (reported, not scored); every method
explains its first ``images_per_scenario`` images; each map gets the truth scores
(:mod:`.scores`) and the proxy metrics (:mod:`.proxies`). Everything is computed before anything is
written, so a run that fails (bad input, a named method that cannot run) writes nothing.

Outputs in ``out``: ``parts/*.parquet`` (one row per scenario, model seed, method, metric and
image), ``truth.json`` (gates, each truth score's mean and interval per method, proxy-truth
agreement, seconds) and ``truth.html`` (:mod:`.report`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..api import explain
from ..core.device import resolve_device
from ..core.io import write_json
from ..errors import FaithmapError
from ..evaluation.store import Column, Store
from ..evaluation.tasks import image_seed
from ..registry import METHODS
from . import tier0
from .proxies import PROXIES, agreement, higher_is_better, proxy_scores
from .scenario import Scenario
from .scores import HIGHER_IS_BETTER, SCORES, TIER0_SCORES, at_input, interval, truth_scores

TIERS = (0, 1, 2)
RHOS = (0.5, 0.75, 0.9, 1.0)
QUICK_RHOS = (0.5, 1.0)
ARCHS = ("cnn", "vit", "resnet18")
FULL_DEFAULTS = ("igos", "igos++", "rise", "occlusion", "extremal_perturbation")
"""Methods run at their default settings in a full run (the others at their ``fast`` settings)."""
STORE_COLUMNS: tuple[Column, ...] = (
    Column("key", pa.string()), Column("tier", pa.int8()), Column("scenario", pa.string()),
    Column("model_seed", pa.int64()), Column("method", pa.string()), Column("kind", pa.string()),
    Column("metric", pa.string()), Column("image", pa.int32()), Column("target", pa.int64()),
    Column("value", pa.float64()))
"""The columns of a Parquet part, written through the evaluation store
(:class:`faithmap.evaluation.store.Store`): ``key`` is ``t<tier>/<scenario>/s<seed>/<image>|<method>|<metric>``;
``kind`` is ``truth``, ``proxy`` or ``cost`` (``seconds`` and ``model_images`` per image)."""
COLUMNS = tuple(c.name for c in STORE_COLUMNS)


# ----------------------------------------------------------------------------------------------
# the settings
# ----------------------------------------------------------------------------------------------
def _ints(value, what: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise FaithmapError(f"{what} must be integers, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    try:
        out = tuple(int(v) for v in items if v != "")
    except (TypeError, ValueError):
        raise FaithmapError(f"{what} must be integers, got {value!r}") from None
    if not out:
        raise FaithmapError(f"{what} is empty")
    return out


def _names(value, what: str, choices) -> tuple[str, ...]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    bad = [v for v in items if v not in choices]
    if bad or not items:
        raise FaithmapError(f"unknown {what} {bad[0]!r}; choose from: {', '.join(choices)}" if bad else f"no {what} given")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class TruthConfig:
    """The settings of one ground-truth run, checked once when made (bad input: one
    :class:`~faithmap.errors.FaithmapError` line).

    ``tiers``: 0, 1, 2 (an int, ``"0,1"`` or a sequence); ``methods``: ``"all"`` or names; ``seeds``:
    a count (model seeds 0..n-1) or the seeds themselves (default 3; quick: 1); ``images_per_scenario``:
    images explained per scenario and seed (default 8; quick: 2); ``quick``: a CI-sized run (one model
    seed, tier 0 on the small CNN only, tiers 1-2 the small CNN at its quick training, tier 2 at rho
    0.5 and 1.0, the methods' fast settings, coarse proxy curves); ``fast``: None (default: fast settings,
    except :data:`FULL_DEFAULTS` at their defaults in a full run), True (all fast) or False (all at
    their defaults); ``trunks``: tier-0 trunks (default ``cnn, lite0``; quick ``cnn``); ``archs``:
    tier 1-2 architectures (default ``cnn, vit``, plus ``resnet18`` on CUDA; quick ``cnn``);
    ``rhos``: tier-2 watermark agreement rates (default 0.5, 0.75, 0.9, 1.0; quick: 0.5, 1.0); ``tolerance``: pointing-game tolerance in pixels;
    ``n_boot``: bootstrap replicates; ``proxies``: compute the proxy metrics; ``examples``: images
    per scenario drawn in the HTML page; ``out``: folder to write (None: write nothing).
    """

    tiers: Any = TIERS
    methods: Any = "all"
    seeds: Any = None
    images_per_scenario: int | None = None
    device: str = "cpu"
    out: str | None = None
    quick: bool = False
    fast: bool | None = None
    cache_dir: str | None = None
    progress: bool = False
    batch_size: int | None = None
    proxies: bool = True
    n_boot: int = 1000
    tolerance: int = 0
    trunks: Any = None
    archs: Any = None
    rhos: Any = None
    examples: int = 2

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise once, here)
        for flag in ("quick", "progress", "proxies"):
            if not isinstance(getattr(self, flag), bool):
                raise FaithmapError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.fast is not None and not isinstance(self.fast, bool):
            raise FaithmapError(f"fast must be None, True or False, got {self.fast!r}")
        tiers = _ints(self.tiers, "tiers")
        bad = [t for t in tiers if t not in TIERS]
        if bad:
            raise FaithmapError(f"unknown tier {bad[0]}; choose from: {', '.join(map(str, TIERS))}")
        set_("tiers", tuple(sorted(set(tiers))))
        set_("methods", self._methods(self.methods))
        if self.seeds is not None:
            seeds = _ints(self.seeds, "seeds")
            if len(seeds) == 1 and isinstance(self.seeds, (int, np.integer)):
                if seeds[0] < 1:
                    raise FaithmapError(f"seeds must be at least 1 (the number of model seeds), got {seeds[0]}")
                seeds = tuple(range(seeds[0]))
            if min(seeds) < 0 or len(set(seeds)) != len(seeds):
                raise FaithmapError(f"model seeds must be distinct non-negative integers, got {list(seeds)}")
            set_("seeds", seeds)
        for name, v, low in (("images_per_scenario", self.images_per_scenario, 1), ("n_boot", self.n_boot, 100),
                             ("tolerance", self.tolerance, 0), ("examples", self.examples, 0),
                             ("batch_size", self.batch_size, 1)):
            if v is None and name in ("images_per_scenario", "batch_size"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise FaithmapError(f"{name} must be an integer of at least {low}, got {v!r}")
        set_("device", str(resolve_device(self.device)))
        # None stays None (the default depends on quick and device, also after dataclasses.replace)
        if self.trunks is not None:
            set_("trunks", _names(self.trunks, "tier-0 trunk", tier0.TRUNKS))
        if self.archs is not None:
            set_("archs", _names(self.archs, "architecture", ARCHS))
        if self.rhos is not None:
            rhos = (self.rhos,) if isinstance(self.rhos, (int, float)) else (
                [r.strip() for r in self.rhos.split(",") if r.strip()] if isinstance(self.rhos, str) else tuple(self.rhos))
            try:
                ok = bool(rhos) and all(not isinstance(r, bool) and 0 <= float(r) <= 1 for r in rhos)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise FaithmapError(f"rhos must be rates in [0, 1], got {self.rhos!r}")
            set_("rhos", tuple(float(r) for r in rhos))
        if self.out is not None:
            set_("out", os.fspath(self.out))

    @staticmethod
    def _methods(value) -> tuple[str, ...] | str:
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        items = [v for v in (value.split(",") if isinstance(value, str) else value)]
        names = tuple(dict.fromkeys(METHODS.canonical(str(v)) for v in items if str(v).strip()))
        if not names:
            raise FaithmapError("no methods given; name some or use 'all'")
        return names

    @property
    def images(self) -> int:
        """Images per scenario and seed: ``images_per_scenario``, else 8 (quick: 2)."""
        return self.images_per_scenario or (2 if self.quick else 8)

    @property
    def seed_list(self) -> tuple[int, ...]:
        """Model seeds: ``seeds``, else 0, 1, 2 (quick: 0)."""
        return self.seeds or tuple(range(1 if self.quick else 3))

    @property
    def rho_list(self) -> tuple[float, ...]:
        """Tier-2 watermark agreement rates: ``rhos``, else 0.5, 0.75, 0.9, 1.0 (quick: 0.5 and 1.0)."""
        return self.rhos or (QUICK_RHOS if self.quick else RHOS)

    @property
    def trunk_names(self) -> tuple[str, ...]:
        """Tier-0 trunks: ``trunks``, else cnn and lite0 (quick: cnn)."""
        return self.trunks or (("cnn",) if self.quick else tier0.TRUNKS)

    @property
    def arch_names(self) -> tuple[str, ...]:
        """Tier 1-2 architectures: ``archs``, else cnn and vit, with resnet18 on CUDA (quick: cnn)."""
        if self.archs:
            return self.archs
        return ("cnn",) if self.quick else (("cnn", "vit", "resnet18") if self.device.startswith("cuda") else ("cnn", "vit"))

    @property
    def method_names(self) -> list[str]:
        return METHODS.names() if self.methods == "all" else list(self.methods)

    def fast_for(self, method: str) -> bool:
        if self.fast is not None:
            return self.fast
        return self.quick or method not in FULL_DEFAULTS

    def as_dict(self) -> dict:
        """The settings as run (defaults resolved), for ``truth.json``."""
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        d.update(images_per_scenario=self.images, seeds=list(self.seed_list), rhos=list(self.rho_list), trunks=list(self.trunk_names), archs=list(self.arch_names),
                 methods=self.methods if self.methods == "all" else list(self.methods))
        return d


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
@dataclass
class ScenarioRecord:
    """One scenario of one model seed: its gates, what ran, what it cost, and example maps."""

    tier: int
    name: str
    model_seed: int
    gates: list
    info: dict
    build_seconds: float
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """method -> metric -> (images,) values (truth scores, proxies, cost)."""
    targets: list[int] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    proxy_errors: dict[str, str] = field(default_factory=dict)
    """``method/proxy`` -> why that proxy refused this scenario's maps (its scores are NaN)."""
    examples: dict[str, Any] = field(default_factory=dict)
    clock: dict[str, float] = field(default_factory=dict)
    """Seconds per part: ``generate``, ``train``, ``gates`` (tiers 1-2; tier 0: ``build``), ``explain``,
    ``score`` (truth scores), ``proxies``."""

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_line(self) -> str:
        g = next(g for g in self.gates if not g.passed)
        return (f"tier {self.tier} {self.name} seed {self.model_seed}: gate '{g.name}' failed "
                f"({g.value:.4g}, needs {g.op} {g.threshold:g}); not scored")


@dataclass
class TruthResult:
    """What :func:`run` measured: the records, the summary (``truth.json``) and the written paths."""

    config: TruthConfig
    records: list[ScenarioRecord]
    unavailable: dict[int, str]
    summary: dict
    seconds: float
    written: list[str] = field(default_factory=list)

    def rows(self) -> dict[str, list]:
        """Every record's rows as columns (:data:`COLUMNS`)."""
        cols: dict[str, list] = {c: [] for c in COLUMNS}
        for r in self.records:
            for c, v in _rows(r).items():
                cols[c].extend(v)
        return cols

    def leaderboard(self, tier: int, scenario: str = "all") -> dict:
        """method -> score -> {mean, low, high, n, ...} for one tier (``scenario="all"``: pooled)."""
        return self.summary["scores"].get(str(tier), {}).get(scenario, {})


# ----------------------------------------------------------------------------------------------
# building and scoring scenarios
# ----------------------------------------------------------------------------------------------
def _tier_module(tier: int):
    """The module that builds ``tier`` (tiers 1-2 may be missing from a build), or (None, reason).

    Imported lazily on purpose: a build without tiers 1-2 still runs tier 0 and says so."""
    name = f"{__package__}.tier{tier}"
    try:
        return importlib.import_module(name), None
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None, f"tier {tier} is not available in this build ({name} is missing)"


def _scenarios(tier: int, seed: int, cfg: TruthConfig, module):
    """The scenarios of one tier and model seed (a generator: each is built when it is scored)."""
    common = dict(device=cfg.device)
    if tier == 0:
        for trunk in cfg.trunk_names:
            for kind in tier0.KINDS:
                yield tier0.MAKERS[kind](seed, trunk, images=cfg.images, **common)
        return
    common.update(cache_dir=cfg.cache_dir, quick=cfg.quick, progress=cfg.progress)
    for arch in cfg.arch_names:
        if tier == 1:
            yield module.build(seed, arch=arch, **common)
        else:
            for rho in cfg.rho_list:
                yield module.build(seed, rho=rho, arch=arch, **common)


def method_params(name: str, cfg: TruthConfig, size: int) -> dict:
    """A method's settings in a run: ``fast`` or defaults (:meth:`TruthConfig.fast_for`); mask methods at
    a grid of a quarter of the input side (at most 28, the papers' grid at 224 px)."""
    spec = METHODS.get(name)
    params = dict(spec.fast) if cfg.fast_for(name) else {}
    if spec.resolution == "mask":
        params["resolution"] = max(spec.min_resolution, min(28, size // 4))
    if cfg.batch_size is not None and "batch_size" in spec.params:
        params["batch_size"] = cfg.batch_size
    return params


def _explain(sc: Scenario, x, target, name: str, cfg: TruthConfig):
    """One method's explanation of a scenario's images, or the reason it cannot run on this model."""
    spec = METHODS.get(name)
    params = method_params(name, cfg, int(x.shape[-1]))
    if "seed" in spec.params:
        params["seed"] = [image_seed(sc.model_seed, f"{sc.name}/{i}", name, "truth") for i in range(x.shape[0])]
    try:
        return explain(sc.model, x, name, target=target, **params), None
    except FaithmapError as exc:
        if cfg.methods != "all":
            raise FaithmapError(f"method {name} cannot run on scenario {sc.name} (model {getattr(sc.model, 'name', '?')})"
                                f": {exc}") from None
        return None, str(exc)


def score_scenario(sc: Scenario, cfg: TruthConfig, build_seconds: float = 0.0) -> ScenarioRecord:
    """Explain, score and time every method on one scenario (nothing if a gate failed)."""
    rec = ScenarioRecord(sc.tier, sc.name, int(sc.model_seed), list(sc.gates), dict(sc.info), build_seconds)
    rec.info["uses"] = dict(sc.uses)
    parts = sc.info.get("seconds")
    rec.clock = dict(parts) if isinstance(parts, dict) else {"build": build_seconds}
    rec.clock.update(explain=0.0, score=0.0, proxies=0.0)
    if not rec.passed:
        return rec
    n = min(cfg.images, int(sc.x.shape[0]))
    x, target, evidence = sc.x[:n], sc.target[:n], sc.evidence[:n]
    rec.targets = [int(t) for t in target.tolist()]
    k = min(cfg.examples, n)
    if k:
        rec.examples = {"pixels": sc.model.to_pixels(x[:k]).detach().cpu().numpy(),
                        "regions": {r: m[:k].detach().cpu().numpy() for r, m in sc.regions.items()}, "maps": {}}
    for name in cfg.method_names:
        start = time.perf_counter()
        e, reason = _explain(sc, x, target, name, cfg)
        if e is None:
            rec.skipped[name] = reason
            continue
        rec.clock["explain"] += time.perf_counter() - start
        t = time.perf_counter()
        sal = e.saliency.detach()
        vals = dict(truth_scores(sal, evidence, tier=sc.tier, tolerance=cfg.tolerance))
        rec.clock["score"] += time.perf_counter() - t
        t = time.perf_counter()
        if cfg.proxies:
            seeds = [image_seed(sc.model_seed, f"{sc.name}/{i}", name, "proxy") for i in range(n)]
            proxies, errors = proxy_scores(sc.model, x, sal, target, seeds=seeds, batch_size=cfg.batch_size,
                                           quick=cfg.quick)
            vals.update(proxies)
            for p, why in errors.items():
                rec.proxy_errors[f"{name}/{p}"] = why
        rec.clock["proxies"] += time.perf_counter() - t
        vals["seconds"] = np.full(n, e.seconds / n)
        vals["model_images"] = np.full(n, e.counts.get("images", 0) / n)
        rec.scores[name] = vals
        if k:
            rec.examples["maps"][name] = at_input(sal[:k], tuple(x.shape[-2:])).cpu().numpy()
        if cfg.progress:
            print(f"truth: tier {sc.tier} {sc.name} seed {sc.model_seed}: {name} {time.perf_counter() - start:.1f}s",
                  file=sys.stderr)
    return rec


def _kind(metric: str) -> str:
    return "cost" if metric in ("seconds", "model_images") else "proxy" if metric in PROXIES else "truth"


def _rows(rec: ScenarioRecord) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for method, vals in rec.scores.items():
        for metric, v in vals.items():
            for i, value in enumerate(np.asarray(v, dtype=np.float64).tolist()):
                key = f"t{rec.tier}/{rec.name}/s{rec.model_seed}/{i}|{method}|{metric}"
                for c, x in zip(COLUMNS, (key, rec.tier, rec.name, rec.model_seed, method, _kind(metric), metric, i,
                                          rec.targets[i], value)):
                    cols[c].append(x)
    return cols


# ----------------------------------------------------------------------------------------------
# summaries
# ----------------------------------------------------------------------------------------------
def _stack(records: list[ScenarioRecord], methods: list[str], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(methods, units) values of ``metric`` over the records' images (NaN where a method did not run),
    and each unit's stratum (its record)."""
    cols, strata = [], []
    for j, r in enumerate(records):
        n = len(r.targets)
        block = np.full((len(methods), n), np.nan)
        for i, m in enumerate(methods):
            if m in r.scores and metric in r.scores[m]:
                block[i] = r.scores[m][metric]
        cols.append(block)
        strata += [j] * n
    return (np.concatenate(cols, 1) if cols else np.zeros((len(methods), 0))), np.asarray(strata)


def _leaderboard(records: list[ScenarioRecord], methods: list[str], metrics: list[str], cfg: TruthConfig) -> dict:
    out: dict = {}
    seeds = np.concatenate([[r.model_seed] * len(r.targets) for r in records]) if records else np.zeros(0)
    ran = ~np.isnan(_stack(records, methods, "pointing")[0])  # pointing is defined for every map that exists
    for metric in metrics:
        table, _ = _stack(records, methods, metric)
        for i, m in enumerate(methods):
            mean, lo, hi, n = interval(table[i], seeds, n_boot=cfg.n_boot)
            entry = {"mean": mean, "low": lo, "high": hi, "n": n}
            if metric in ("mass", "outside"):
                entry["empty"] = int((ran[i] & np.isnan(table[i])).sum())
            out.setdefault(m, {})[metric] = entry
    return out


def _agreements(records: list[ScenarioRecord], methods: list[str], truths: list[str], cfg: TruthConfig) -> list[dict]:
    out = []
    for p in PROXIES:
        ptable, strata = _stack(records, methods, p)
        for t in truths:
            ttable, _ = _stack(records, methods, t)
            a = agreement(ptable, ttable, strata, proxy_higher=higher_is_better(p), truth_higher=HIGHER_IS_BETTER[t],
                          n_boot=cfg.n_boot)
            out.append({"proxy": p, "truth": t, **a})
    return out


def summarise(records: list[ScenarioRecord], unavailable: dict[int, str], cfg: TruthConfig, seconds: float) -> dict:
    """What ``truth.json`` holds (see the module docstring)."""
    scored = [r for r in records if r.passed and r.scores]
    summary: dict = {"config": cfg.as_dict(), "seconds": seconds, "unavailable": {str(k): v for k, v in unavailable.items()},
                     "notes": NOTES, "scenarios": [], "scores": {}, "agreement": {}}
    for r in records:
        summary["scenarios"].append({
            "tier": r.tier, "scenario": r.name, "model_seed": r.model_seed, "passed": r.passed,
            "build_seconds": r.build_seconds, "seconds": r.clock, "images": len(r.targets),
            "gates": [dataclasses.asdict(g) for g in r.gates], "info": _jsonable(r.info), "skipped": r.skipped,
            "proxy_errors": r.proxy_errors})
    parts: dict[str, float] = {}
    for r in records:
        for k, v in r.clock.items():
            parts[k] = parts.get(k, 0.0) + float(v)
    summary["seconds_by_part"] = parts
    for tier in sorted({r.tier for r in scored}):
        recs = [r for r in scored if r.tier == tier]
        methods = [m for m in cfg.method_names if any(m in r.scores for r in recs)]
        truths = list(SCORES + (TIER0_SCORES if tier == 0 else ()))
        metrics = truths + (list(PROXIES) if cfg.proxies else []) + ["seconds", "model_images"]
        groups = {"all": recs, **{n: [r for r in recs if r.name == n] for n in dict.fromkeys(r.name for r in recs)}}
        summary["scores"][str(tier)] = {g: _leaderboard(rs, methods, metrics, cfg) for g, rs in groups.items()}
        if cfg.proxies:
            summary["agreement"][str(tier)] = {g: _agreements(rs, methods, truths, cfg) for g, rs in groups.items()}
    return summary


NOTES = {
    "upsampling": "maps are brought to input size as faithmap's metrics do (faithmap.core.perturb.upsample: bilinear, "
                  "align_corners=True); outside_nearest / outside_halfpixel use nearest-exact / bilinear with "
                  "align_corners=False instead",
    "signed": "every score reads each map's non-negative part (negative values count as 0); a map with no positive "
              "value is 'empty': its mass and outside are NaN, left out of means and counted",
    "pointing": "the share of the map's maximal pixels inside the evidence dilated by `tolerance` pixels (default 0)",
    "interval": "mean of the per-model-seed means; 95% percentile bootstrap resampling model seeds, then images within "
                "each drawn seed",
    "agreement": "Spearman correlation across methods of the per-method means of a proxy and a truth score, signed so "
                 "that > 0 means agreement; 95% bootstrap interval resampling images within each scenario and seed",
}


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def _write_rows(store: Store, rec: ScenarioRecord) -> str:
    """One scenario's rows (:data:`STORE_COLUMNS`) as one part of the evaluation store: the one place
    truth rows are written (atomically, as every store part)."""
    return store.write(_rows(rec), keys=[f"t{rec.tier}/{rec.name}/s{rec.model_seed}"], images={})


def write(result: TruthResult, out: str) -> list[str]:
    """The parts, ``truth.json`` and ``truth.html`` of ``result`` in ``out``."""
    from .report import write_html  # lazy: the page draws with matplotlib (over a second to import)

    store = Store(out, STORE_COLUMNS)
    old = dict(store.scan(repair=True).keys)  # a rerun into the same folder replaces its scenarios' parts
    written = [_write_rows(store, r) for r in result.records if r.scores]
    stale = {old[k] for r in result.records if r.scores for k in [f"t{r.tier}/{r.name}/s{r.model_seed}"] if k in old}
    for path in stale:
        os.remove(path)
    write_json(os.path.join(out, "truth.json"), result.summary)
    written.append(os.path.join(out, "truth.json"))
    written.append(write_html(result, os.path.join(out, "truth.html")))
    return written


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def run(config: TruthConfig | None = None, **overrides) -> TruthResult:
    """Run the ground-truth benchmark (``faithmap truth``); ``overrides`` replace fields of ``config``.

    Returns a :class:`TruthResult`; writes ``out`` (when set) only after everything was measured.
    """
    base = config if config is not None else TruthConfig()
    if not isinstance(base, TruthConfig):
        raise FaithmapError(f"config must be a TruthConfig, got {type(base).__name__}")
    unknown = [k for k in overrides if k not in {f.name for f in dataclasses.fields(TruthConfig)}]
    if unknown:
        raise FaithmapError(f"unknown truth setting {unknown[0]!r}; settings: "
                            f"{', '.join(f.name for f in dataclasses.fields(TruthConfig))}")
    cfg = dataclasses.replace(base, **overrides) if overrides else base
    start = time.perf_counter()
    records: list[ScenarioRecord] = []
    unavailable: dict[int, str] = {}
    for tier in cfg.tiers:
        module, reason = _tier_module(tier)
        if module is None:
            unavailable[tier] = reason
            continue
        for seed in cfg.seed_list:
            t0 = time.perf_counter()
            for sc in _scenarios(tier, seed, cfg, module):
                built = time.perf_counter() - t0
                records.append(score_scenario(sc, cfg, built))
                t0 = time.perf_counter()
    seconds = time.perf_counter() - start
    result = TruthResult(cfg, records, unavailable, summarise(records, unavailable, cfg, seconds), seconds)
    if cfg.out is not None:
        result.written = write(result, cfg.out)
    return result


__all__ = ["COLUMNS", "STORE_COLUMNS", "FULL_DEFAULTS", "ScenarioRecord", "TruthConfig", "TruthResult", "method_params", "run",
           "score_scenario", "summarise", "write"]
