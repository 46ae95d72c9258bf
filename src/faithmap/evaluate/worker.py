"""One task's work: explain a batch of images with one method at one resolution, score every map.

:class:`Worker` is what every engine runs: the local engine holds one in the process, the Ray
engine one per actor. It loads the model once (or receives it), and for each :class:`Job`
decodes the batch's photos, predicts them (one forward pass per image: targets, their
probabilities, top-5), explains all (image, target) rows in one call to :func:`faithmap.explain`,
giving each row its image's own seed, and scores the maps with every metric inside one
:func:`faithmap.core.memo.sharing` scope (deletion, insertion and overall share one
``deletion_insertion`` call). Metrics whose score of one image depends on the rest of the call
(:data:`.plan.SET_LEVEL_METRICS`) and metrics that re-explain perturbed copies (``needs=("explain",)``)
are called one image at a time, so no row depends on its batch. Workers write nothing: the
:class:`Output` goes back to the driver, the only writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.batching import chunks, model_guard
from ..core.memo import sharing
from ..data.annotations import Region, annotated_targets, box_mask, map_to_input, regions_for_target
from ..errors import FaithmapError
from ..data import ImageRecord
from ..registry import METHODS, METRICS
from .presets import base_method
from .plan import (NATIVE, SET_LEVEL_METRICS, ModelSpec, Task, accepts, image_seed, names_param, photo_digest, photo_hw,
                   record_stat, task_key)


@dataclass
class Context:
    """What every worker needs once: the model (or how to load it), the specs, the settings."""

    model: Any  # a Classifier, or a ModelSpec that the worker loads itself
    methods: dict  # name -> MethodSpec of the methods of the run (registered in workers that lack them)
    metrics: dict  # name -> MetricSpec
    params: dict[str, dict]
    metric_names: list[str]
    metric_options: dict[str, dict]
    seed: int
    batch_size: int
    fast: bool
    target: Any  # "top1", a class index or name, "annotated", "label"
    annotations: dict  # image name -> ImageAnnotation (photo pixels), for the images that have one
    convert: bool = False  # --convert: grayscale, RGBA and 16-bit files to 8-bit RGB


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


class Worker:
    """Runs jobs; holds the model and the settings of one run."""

    def __init__(self, ctx: Context, device: str | None = None):
        _register(ctx.methods, METHODS)
        _register(ctx.metrics, METRICS)
        self.ctx = ctx
        self.model = ctx.model.load(device) if isinstance(ctx.model, ModelSpec) else ctx.model
        if device is not None and not isinstance(ctx.model, ModelSpec):
            from ..core.device import resolve_device

            self.model = self.model.to(resolve_device(device))

    # -- loading ------------------------------------------------------------------------------
    def load(self, job: Job) -> dict:
        """Decode and preprocess the job's photos (CPU work an engine may overlap with the last job)."""
        return load_photos(job.images, self.model.transform, self.ctx.convert)

    # -- the job ------------------------------------------------------------------------------
    def run(self, job: Job, loaded: dict | None = None) -> Output:
        import faithmap

        ctx, clf, task = self.ctx, self.model, job.task
        start = time.perf_counter()
        loaded = loaded or self.load(job)
        total0 = clf.counter.images
        x_img = loaded["x"].to(clf.device)
        info = loaded["info"]
        bs = ctx.batch_size
        with model_guard(clf), torch.no_grad():
            logits = torch.cat([clf(x_img[s]) for s in chunks(x_img.shape[0], bs)])
        probs = torch.softmax(logits.double(), 1)

        # -- rows: one per (image, target) ---------------------------------------------------------
        regions: list[list[Region]] = []
        targets: list[list[int]] = []
        for i, rec in enumerate(job.images):
            a = ctx.annotations.get(rec.name)
            regs = map_to_input(a, tuple(info[rec.name]["hw"]), clf) if a is not None else []
            regions.append(regs)
            if ctx.target == "annotated":
                targets.append(annotated_targets(regs))
            elif ctx.target == "label":
                targets.append([int(rec.label)])
            elif ctx.target == "top1":
                targets.append([int(logits[i].argmax())])
            else:
                from ..core.scores import resolve_targets

                targets.append([int(resolve_targets(logits[i:i + 1], ctx.target, clf.class_names)[0])])
        row_img = [i for i, ts in enumerate(targets) for _ in ts]
        row_tgt = [t for ts in targets for t in ts]
        keys = [task_key(rec.name, task.method, task.resolution) for rec in job.images]
        out = Output(task, keys, {}, {n: dict(v) for n, v in info.items()})
        for i, rec in enumerate(job.images):
            if job.save[i]:
                p = probs[i]
                v, idx = p.topk(min(5, p.numel()))
                out.images[rec.name].update({
                    "top5": [{"class": int(j), "name": clf.class_name(int(j)), "probability": float(u)}
                             for u, j in zip(v, idx)],
                    "targets": [{"class": int(t), "name": clf.class_name(int(t)), "probability": float(p[int(t)])}
                                for t in targets[i]],
                    "regions": [{"category": r.category, "classes": list(r.classes) if r.classes is not None else None,
                                 "box": [round(float(b), 3) for b in r.box], "has_mask": r.mask is not None}
                                for r in regions[i]]})
                out.thumbnails[rec.name] = (clf.to_pixels(x_img[i:i + 1])[0].permute(1, 2, 0).detach().cpu().numpy()
                                            * 255).round().astype(np.uint8)
        if not row_img:
            out.model_images = clf.counter.images - total0
            out.seconds = time.perf_counter() - start
            return out
        n = len(row_img)
        sel = torch.tensor(row_img, device=x_img.device)
        x = x_img[sel] if n != x_img.shape[0] or row_img != list(range(n)) else x_img
        target = torch.tensor(row_tgt, dtype=torch.long, device=x.device)
        names = [job.images[i].name for i in row_img]
        # task.method may be a variant "method:name" (a row of an ablation table): the variants of one
        # method draw the same noise for an image, so their rows differ only by what the row changes
        method = base_method(task.method)
        seeds = [image_seed(ctx.seed, nm, method, task.resolution) for nm in names]

        # -- explain ----------------------------------------------------------------------------
        spec = METHODS.get(method)
        kw = dict(ctx.params.get(task.method, {}))
        if "batch_size" in spec.params:
            kw["batch_size"] = bs
        if task.resolution != NATIVE:
            kw["resolution"] = int(task.resolution)

        def explain(xx, tt, seed):
            k = dict(kw)
            if "seed" in spec.params:
                k["seed"] = seed
            return faithmap.explain(clf, xx, method, target=tt, **k)

        exp = explain(x, target, seeds)
        sal = exp.saliency.detach()
        grid = f"{sal.shape[-2]}x{sal.shape[-1]}"
        size = tuple(x.shape[-2:])
        for i, rec in enumerate(job.images):
            if job.save[i]:
                rows_i = [r for r in range(n) if row_img[r] == i]
                if rows_i:
                    out.maps[rec.name] = sal[rows_i].float().cpu().numpy()

        # -- metrics ----------------------------------------------------------------------------
        rel = [regions_for_target(regions[row_img[r]], row_tgt[r]) for r in range(n)]
        categories = []
        for r in range(n):
            cats = list(dict.fromkeys(g.category for g in rel[r]))
            categories.append("+".join(cats) if cats else clf.class_name(row_tgt[r]))
        values: dict[str, list[float]] = {}
        cost: dict[str, tuple[float, int]] = {}
        curves = None
        with sharing():
            for m in ctx.metric_names:
                mspec = METRICS.get(m)
                loc = bool(set(mspec.needs) & {"boxes", "masks"})
                idx = [r for r in range(n) if rel[r]] if loc else list(range(n))
                vals = [float("nan")] * n
                t0, snap = time.perf_counter(), clf.counter.snapshot()
                one_by_one = m in SET_LEVEL_METRICS or "explain" in mspec.needs
                groups = [[r] for r in idx] if one_by_one else ([idx] if idx else [])
                for g in groups:
                    scores = self._score(m, mspec, clf, x, sal, target, g, n, rel, size, names, seeds, task, explain)
                    for j, r in enumerate(g):
                        vals[r] = float(scores[j])
                values[m] = vals
                cost[m] = (time.perf_counter() - t0, clf.counter.since(snap)["images"])
            from ..metrics.deletion import deletion_insertion

            curves = deletion_insertion.peek(clf, x, sal, target, batch_size=bs)

        # -- columns ----------------------------------------------------------------------------
        cols: dict[str, list] = {c: [] for c in ROW_FIELDS}
        per_row = 1.0 / n
        in_key: dict[int, int] = {}
        for r in range(n):
            i = row_img[r]
            rec = job.images[i]
            pred = int(logits[i].argmax())
            for m in ctx.metric_names:
                mspec = METRICS.get(m)
                pos = in_key.get(i, 0)
                in_key[i] = pos + 1
                first = m == ctx.metric_names[0] and curves is not None
                row = {
                    "key": keys[i], "image": rec.name, "label": rec.label, "predicted": pred,
                    "correct": None if rec.label is None else pred == int(rec.label),
                    "target": row_tgt[r], "target_name": clf.class_name(row_tgt[r]),
                    "target_prob": float(probs[i, row_tgt[r]]), "category": categories[r], "method": task.method,
                    "resolution": task.resolution, "grid": grid, "metric": m, "value": values[m][r],
                    "higher_is_better": bool(mspec.higher_is_better), "seed": ctx.seed, "image_seed": seeds[r],
                    "fast": bool(ctx.fast), "explain_seconds": round(exp.seconds * per_row, 6),
                    "explain_images": exp.counts["images"] * per_row,
                    "explain_grad_images": exp.counts["grad_images"] * per_row,
                    "metric_seconds": round(cost[m][0] * per_row, 6), "metric_images": cost[m][1] * per_row,
                    "task_row": pos,
                    "fractions": curves.fractions.cpu().tolist() if first else None,
                    "deletion_curve": curves.deletion[r].cpu().tolist() if first else None,
                    "insertion_curve": curves.insertion[r].cpu().tolist() if first else None,
                }
                for c in ROW_FIELDS:
                    cols[c].append(row[c])
        out.columns = cols
        out.model_images = clf.counter.images - total0
        out.seconds = time.perf_counter() - start
        return out

    def _score(self, m, mspec, clf, x, sal, target, g, n, rel, size, names, seeds, task, explain):
        ctx = self.ctx
        if len(g) == n:
            xs, ss, ts = x, sal, target
        else:
            s = torch.tensor(g, device=x.device)
            xs, ss, ts = x[s], sal[s], target[s]
        call = dict(ctx.metric_options.get(m, {}))
        if accepts(mspec.fn, "batch_size"):
            call["batch_size"] = ctx.batch_size
        if names_param(mspec.fn, "seed"):
            call["seed"] = [image_seed(ctx.seed, names[r], base_method(task.method), task.resolution, m) for r in g]
        if "explain" in mspec.needs:
            seed = seeds[g[0]]  # one image: its perturbed copies are re-explained with its own seed
            call["explain"] = lambda xx, tt: explain(xx, tt, seed).saliency
        if "boxes" in mspec.needs:
            call["boxes"] = [torch.tensor([r.box for r in rel[i]], dtype=torch.float32, device=x.device) for i in g]
        if "masks" in mspec.needs:
            call["masks"] = torch.stack([_region_mask(rel[i], size) for i in g]).to(x.device)
        res = mspec.fn(clf, xs, ss, ts, **call)
        scores = res.scores if hasattr(res, "scores") else res
        scores = torch.as_tensor(scores).detach().double().cpu().reshape(-1)
        if scores.numel() != len(g):
            raise FaithmapError(f"metric {m} returned {scores.numel()} scores for {len(g)} maps")
        return scores.tolist()


def _region_mask(regions: list[Region], size) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.bool)
    for r in regions:
        m |= r.mask.cpu() if r.mask is not None else box_mask(r.box, size)
    return m


ROW_FIELDS = ("key", "image", "label", "predicted", "correct", "target", "target_name", "target_prob", "category",
              "method", "resolution", "grid", "metric", "value", "higher_is_better", "seed", "image_seed", "fast",
              "explain_seconds", "explain_images", "explain_grad_images", "metric_seconds", "metric_images",
              "task_row", "fractions", "deletion_curve", "insertion_curve")
"""The columns of a results part, in order (see :data:`faithmap.evaluate.store.SCHEMA`)."""
