"""One task's work: explain a batch of images with one method at one resolution, score every map.

:class:`Worker` is what every engine runs: the local engine holds one in the process, the Ray
engine one per actor. It loads the model once (or receives it), and runs each :class:`Job` in five
steps over one :class:`Rows` (one row per (image, target)): :meth:`~Worker.predict` decodes the
batch's photos and predicts them (one forward pass per image: targets, their probabilities,
top-5); :meth:`~Worker.rows` makes the rows (targets, regions, each row's own seed);
:meth:`~Worker.explain` explains all rows in one call to :func:`faithmap.api.explain`;
:meth:`~Worker.score` scores the maps with every metric inside one
:func:`faithmap.core.memo.sharing` scope (deletion, insertion and overall share one
``deletion_insertion`` call, and return its curves); :meth:`~Worker.output` lays the rows out in
the store's columns (:data:`.store.COLUMNS`). Each metric is called by its spec
(:meth:`faithmap.registry.MetricSpec.call`): set-level metrics and metrics that re-explain
perturbed copies (:attr:`~faithmap.registry.MetricSpec.one_at_a_time`) one image at a time, so no
row depends on its batch. Workers write nothing: the :class:`Output` goes back to the driver, the
only writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..api import explain as explain_map
from ..core.batching import chunks, model_guard
from ..core.device import resolve_device
from ..core.memo import sharing
from ..core.scores import resolve_targets
from ..data import ImageRecord
from ..data.annotations import Region, annotated_targets, box_mask, map_to_input, regions_for_target
from ..errors import FaithmapError
from ..metrics.deletion import Curves
from ..registry import METHODS, METRICS
from .presets import base_method
from .store import COLUMN_NAMES
from .tasks import NATIVE, ModelSpec, Task, image_seed, photo_digest, photo_hw, record_stat, task_key


@dataclass
class Context:
    """What every worker needs once: the model (or how to load it), the specs, what the plan resolved,
    the run's settings (derived from the plan: :meth:`faithmap.evaluation.plan.Plan.context`) and which
    class handles the jobs (engines call :meth:`make_worker`, so they run any run's jobs unchanged)."""

    model: Any  # a Classifier, or a ModelSpec that the worker loads itself
    methods: dict  # name -> MethodSpec of the methods of the run (registered in workers that lack them)
    metrics: dict  # name -> MetricSpec of the metrics of the run, in the run's order
    params: dict[str, dict]  # run name -> the method's parameters
    metric_options: dict[str, dict]
    batch_size: int  # resolved once by the plan
    target: Any  # "top1", a class index or name, "annotated", "label"
    annotations: dict  # image name -> ImageAnnotation (photo pixels), for the images that have one
    config: Any  # the run's RunConfig without its inputs (RunConfig.for_workers): seed, fast, convert, ...
    worker_class: Any = None  # the job handler engines make (None: :class:`Worker`); the audit names its own

    @property
    def seed(self) -> int:
        return self.config.seed

    def make_worker(self, device: str | None = None) -> "Worker":
        """The handler of this run's jobs, as every engine makes it: ``worker_class(self, device)``."""
        return (self.worker_class or Worker)(self, device)


@dataclass
class Job:
    task: Task
    images: list[ImageRecord]
    save: list[bool]  # keep this image's maps and thumbnail


@dataclass
class Output:
    """A finished job: its rows as columns, and what the driver writes beside them."""

    task: Task
    keys: list[str]
    columns: dict[str, list]
    images: dict[str, dict]  # name -> digest, hw, stat (and, for saved images, top-5, targets, regions)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    thumbnails: dict[str, np.ndarray] = field(default_factory=dict)
    model_images: int = 0  # everything this job sent through the model (prediction included)
    seconds: float = 0.0


@dataclass
class Rows:
    """A job's rows, one per (image, target), and what each step adds to them."""

    job: Job
    x_img: torch.Tensor  # the job's images, preprocessed, on the model's device
    info: dict[str, dict]  # image name -> digest, hw, stat
    logits: torch.Tensor
    probs: torch.Tensor  # float64 softmax of the logits
    # filled by the steps
    regions: list[list[Region]] = field(init=False, default_factory=list)  # per image
    targets: list[list[int]] = field(init=False, default_factory=list)  # per image
    image: list[int] = field(init=False, default_factory=list)  # per row: its image's index in the job
    target: list[int] = field(init=False, default_factory=list)  # per row
    seeds: list[int] = field(init=False, default_factory=list)  # per row: its image's seed
    x: torch.Tensor | None = field(init=False, default=None)  # per row: its image
    saliency: torch.Tensor | None = field(init=False, default=None)  # (rows, h, w) after explain
    explained: Any = field(init=False, default=None)  # the Explanation (seconds, counts)
    values: dict[str, list[float]] = field(init=False, default_factory=dict)  # metric -> value per row
    cost: dict[str, tuple[float, int]] = field(init=False, default_factory=dict)  # metric -> (seconds, images)
    curves: dict[int, tuple] = field(init=False, default_factory=dict)  # row -> (fractions, deletion, insertion)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def target_tensor(self) -> torch.Tensor:
        return torch.tensor(self.target, dtype=torch.long, device=self.x_img.device)

    @property
    def names(self) -> list[str]:
        return [self.job.images[i].name for i in self.image]


def _register(specs: dict, registry) -> None:
    for name, spec in specs.items():
        if name not in registry:
            registry.add(name, spec, tuple(getattr(spec, "aliases", ())))


def load_photos(records, transform, convert: bool = False) -> dict:
    """A job's photos decoded and preprocessed (``x``, on the CPU) with each one's fingerprint, size and
    file stat (``info``): what :class:`Worker` runs on. Picklable inputs, so DataLoader workers can run it."""
    xs, info = [], {}
    for rec in records:
        photo = rec.load(convert)
        xs.append(transform(photo))
        info[rec.name] = {"digest": photo_digest(photo), "hw": list(photo_hw(photo)), "stat": record_stat(rec)}
    return {"x": torch.stack(xs), "info": info}


def _region_mask(regions: list[Region], size) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.bool)
    for r in regions:
        m |= r.mask.cpu() if r.mask is not None else box_mask(r.box, size)
    return m


class Worker:
    """Runs jobs; holds the model and the settings of one run."""

    def __init__(self, ctx: Context, device: str | None = None):
        _register(ctx.methods, METHODS)
        _register(ctx.metrics, METRICS)
        self.ctx = ctx
        self.model = ctx.model.load(device) if isinstance(ctx.model, ModelSpec) else ctx.model
        if device is not None and not isinstance(ctx.model, ModelSpec):
            self.model = self.model.to(resolve_device(device))

    def load(self, job: Job) -> dict:
        """Decode and preprocess the job's photos (CPU work an engine may overlap with the last job)."""
        return load_photos(job.images, self.model.transform, self.ctx.config.convert)

    def run(self, job: Job, loaded: dict | None = None) -> Output:
        """The job's five steps: predict, rows, explain, score, output."""
        start, total0 = time.perf_counter(), self.model.counter.images
        rows = self.rows(self.predict(job, loaded or self.load(job)))
        if len(rows):
            self.explain(rows)
            self.score(rows)
        out = self.output(rows)
        out.model_images = self.model.counter.images - total0
        out.seconds = time.perf_counter() - start
        return out

    # -- the steps ----------------------------------------------------------------------------
    def predict(self, job: Job, loaded: dict) -> Rows:
        """One forward pass per image (in batches of the run's batch size): logits and probabilities."""
        clf = self.model
        x_img = loaded["x"].to(clf.device)
        with model_guard(clf), torch.no_grad():
            logits = torch.cat([clf(x_img[s]) for s in chunks(x_img.shape[0], self.ctx.batch_size)])
        return Rows(job, x_img, loaded["info"], logits, torch.softmax(logits.double(), 1))

    def rows(self, rows: Rows) -> Rows:
        """Each image's regions and targets; one row per (image, target), with its image's seed."""
        ctx, clf, task = self.ctx, self.model, rows.job.task
        for i, rec in enumerate(rows.job.images):
            a = ctx.annotations.get(rec.name)
            regs = map_to_input(a, tuple(rows.info[rec.name]["hw"]), clf) if a is not None else []
            rows.regions.append(regs)
            rows.targets.append(self._targets(rows, i, rec, regs))
        rows.image = [i for i, ts in enumerate(rows.targets) for _ in ts]
        rows.target = [t for ts in rows.targets for t in ts]
        n = len(rows.image)  # the rows' images: the job's images when each has one row, in order
        same = n == rows.x_img.shape[0] and rows.image == list(range(n))
        rows.x = rows.x_img if same else rows.x_img[torch.tensor(rows.image, dtype=torch.long,
                                                                 device=rows.x_img.device)]
        # task.method may be a variant "method:name" (a row of an ablation table): the variants of one
        # method draw the same noise for an image, so their rows differ only by what the row changes
        method = base_method(task.method)
        rows.seeds = [image_seed(ctx.seed, nm, method, task.resolution) for nm in rows.names]
        return rows

    def _targets(self, rows: Rows, i: int, rec: ImageRecord, regs: list[Region]) -> list[int]:
        target = self.ctx.target
        if target == "annotated":
            return annotated_targets(regs)
        if target == "label":
            return [int(rec.label)]
        if target == "top1":
            return [int(rows.logits[i].argmax())]
        return [int(resolve_targets(rows.logits[i:i + 1], target, self.model.class_names)[0])]

    def _explainer(self, task: Task) -> Callable:
        """``explain(x, target, seeds) -> Explanation`` with the task's method, parameters and resolution."""
        method = base_method(task.method)
        spec = METHODS.get(method)
        kw = dict(self.ctx.params.get(task.method, {}))
        if "batch_size" in spec.params:
            kw["batch_size"] = self.ctx.batch_size
        if task.resolution != NATIVE:
            kw["resolution"] = int(task.resolution)

        def explain(xx, tt, seed):
            return explain_map(self.model, xx, method, target=tt, **kw, **({"seed": seed} if "seed" in spec.params
                                                                            else {}))

        return explain

    def explain(self, rows: Rows) -> None:
        """All rows' maps in one call of the method, each row with its image's seed."""
        rows.explained = self._explainer(rows.job.task)(rows.x, rows.target_tensor, rows.seeds)
        rows.saliency = rows.explained.saliency.detach()

    def score(self, rows: Rows) -> None:
        """Every metric on every map, in one sharing scope; a metric's curves (deletion, insertion,
        overall) are kept for the rows they were computed for."""
        clf, explain = self.model, self._explainer(rows.job.task)
        x, target = rows.x, rows.target_tensor
        rel = [regions_for_target(rows.regions[rows.image[r]], rows.target[r]) for r in range(len(rows))]
        with sharing():
            for m, spec in self.ctx.metrics.items():
                idx = [r for r in range(len(rows)) if rel[r]] if spec.localises else list(range(len(rows)))
                groups = [[r] for r in idx] if spec.one_at_a_time else ([idx] if idx else [])
                vals = [float("nan")] * len(rows)
                t0, snap = time.perf_counter(), clf.counter.snapshot()
                for g in groups:
                    res = self._call(m, spec, rows, x, target, g, rel, explain)
                    for j, (r, v) in enumerate(zip(g, _scores(m, res, len(g)))):
                        vals[r] = float(v)
                        if isinstance(getattr(res, "curves", None), Curves) and r not in rows.curves:
                            c = res.curves
                            rows.curves[r] = (c.fractions.cpu().tolist(), c.deletion[j].cpu().tolist(),
                                              c.insertion[j].cpu().tolist())
                rows.values[m] = vals
                rows.cost[m] = (time.perf_counter() - t0, clf.counter.since(snap)["images"])

    def _call(self, m: str, spec, rows: Rows, x, target, g: list[int], rel, explain) -> Any:
        """One metric on the rows ``g``, called by its spec with what it needs."""
        if len(g) == len(rows):
            xs, ss, ts = x, rows.saliency, target
        else:
            s = torch.tensor(g, device=x.device)
            xs, ss, ts = x[s], rows.saliency[s], target[s]
        task, names = rows.job.task, rows.names
        seeds = [image_seed(self.ctx.seed, names[r], base_method(task.method), task.resolution, m) for r in g]
        size = tuple(x.shape[-2:])
        inputs = {  # made only for a metric that needs them
            "explain": lambda: (lambda xx, tt, seed=rows.seeds[g[0]]: explain(xx, tt, seed).saliency),
            "boxes": lambda: [torch.tensor([r.box for r in rel[i]], dtype=torch.float32, device=x.device) for i in g],
            "masks": lambda: torch.stack([_region_mask(rel[i], size) for i in g]).to(x.device),
        }
        return spec.call(self.model, xs, ss, ts, options=self.ctx.metric_options.get(m, {}),
                         batch_size=self.ctx.batch_size, seeds=seeds, inputs=inputs)

    def output(self, rows: Rows) -> Output:
        """The rows in the store's columns (one per row and metric; curves on each row's first metric),
        and the kept images' maps, thumbnails, top-5, targets and regions."""
        job = rows.job
        keys = [task_key(rec.name, job.task.method, job.task.resolution) for rec in job.images]
        out = Output(job.task, keys, {c: [] for c in COLUMN_NAMES}, {n: dict(v) for n, v in rows.info.items()})
        self._keep(rows, out)
        first = next(iter(self.ctx.metrics), None)
        in_key: dict[int, int] = {}
        for r in range(len(rows)):
            for m in self.ctx.metrics:
                pos = in_key.get(rows.image[r], 0)
                in_key[rows.image[r]] = pos + 1
                row = self._row(rows, r, m, keys, pos, rows.curves.get(r) if m == first else None)
                for c in COLUMN_NAMES:
                    out.columns[c].append(row[c])
        return out

    def _row(self, rows: Rows, r: int, m: str, keys: list[str], pos: int, curves: tuple | None) -> dict:
        ctx, clf = self.ctx, self.model
        i, t = rows.image[r], rows.target[r]
        rec, exp, per_row = rows.job.images[i], rows.explained, 1.0 / len(rows)
        pred = int(rows.logits[i].argmax())
        cats = list(dict.fromkeys(g.category for g in regions_for_target(rows.regions[i], t)))
        sal = rows.saliency
        return {
            "key": keys[i], "image": rec.name, "label": rec.label, "predicted": pred,
            "correct": None if rec.label is None else pred == int(rec.label),
            "target": t, "target_name": clf.class_name(t), "target_prob": float(rows.probs[i, t]),
            "category": "+".join(cats) if cats else clf.class_name(t), "method": rows.job.task.method,
            "resolution": rows.job.task.resolution, "grid": f"{sal.shape[-2]}x{sal.shape[-1]}", "metric": m,
            "value": rows.values[m][r], "higher_is_better": bool(ctx.metrics[m].higher_is_better), "seed": ctx.seed,
            "image_seed": rows.seeds[r], "fast": ctx.config.fast, "explain_seconds": round(exp.seconds * per_row, 6),
            "explain_images": exp.counts["images"] * per_row,
            "explain_grad_images": exp.counts["grad_images"] * per_row,
            "metric_seconds": round(rows.cost[m][0] * per_row, 6), "metric_images": rows.cost[m][1] * per_row,
            "task_row": pos, "fractions": curves[0] if curves else None,
            "deletion_curve": curves[1] if curves else None, "insertion_curve": curves[2] if curves else None,
        }

    def _keep(self, rows: Rows, out: Output) -> None:
        """What the report shows of the kept images: top-5, targets, regions, the thumbnail and the maps."""
        clf = self.model
        for i, rec in enumerate(rows.job.images):
            if not rows.job.save[i]:
                continue
            p = rows.probs[i]
            v, idx = p.topk(min(5, p.numel()))
            out.images[rec.name].update({
                "top5": [{"class": int(j), "name": clf.class_name(int(j)), "probability": float(u)}
                         for u, j in zip(v, idx)],
                "targets": [{"class": int(t), "name": clf.class_name(int(t)), "probability": float(p[int(t)])}
                            for t in rows.targets[i]],
                "regions": [{"category": r.category, "classes": list(r.classes) if r.classes is not None else None,
                             "box": [round(float(b), 3) for b in r.box], "has_mask": r.mask is not None}
                            for r in rows.regions[i]]})
            out.thumbnails[rec.name] = (clf.to_pixels(rows.x_img[i:i + 1])[0].permute(1, 2, 0).detach().cpu().numpy()
                                        * 255).round().astype(np.uint8)
            mine = [r for r in range(len(rows)) if rows.image[r] == i]
            if mine and rows.saliency is not None:
                out.maps[rec.name] = rows.saliency[mine].float().cpu().numpy()


def _scores(m: str, res: Any, n: int) -> list[float]:
    """A metric's per-image scores (a tensor, or an object's ``scores``), checked to be one per map."""
    scores = res.scores if hasattr(res, "scores") else res
    scores = torch.as_tensor(scores).detach().double().cpu().reshape(-1)
    if scores.numel() != n:
        raise FaithmapError(f"metric {m} returned {scores.numel()} scores for {n} maps")
    return scores.tolist()
