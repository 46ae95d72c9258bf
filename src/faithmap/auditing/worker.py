"""The audit's first step on a batch of images: explain each one, and keep what the later steps read.

:class:`AuditWorker` is the evaluation's :class:`~faithmap.evaluation.worker.Worker` with three steps
of its own: :meth:`~AuditWorker.predict` also captures the features of the embedding layer (in the
same forward pass, so they cost no model image), :meth:`~AuditWorker.score` finds each map's most
salient patch and embeds it (:mod:`.maps`), and :meth:`~AuditWorker.output` lays each image out as
one row of :data:`COLUMNS`. Decoding, targets (``label`` or ``top1``), per-image seeds and the
method call are the evaluation's. The audit's context names this class
(:attr:`Context.worker_class <faithmap.evaluation.worker.Context.worker_class>`), so the evaluation's
engines (local, Ray) run its jobs unchanged, and the driver writes each job as one Parquet part of
these columns (:class:`faithmap.evaluation.store.Store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from ..core.batching import chunks, model_guard
from ..evaluation.store import Column
from ..evaluation.tasks import task_key
from ..evaluation.worker import Output, Rows, Worker
from ..methods.cam import capture, resolve_layer, tapped
from .maps import pixel_features, pool_features, salient_windows, stat_maps, window_box, window_cells

_F64, _I64, _STR, _BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()
COLUMNS: tuple[Column, ...] = (
    Column("key", _STR), Column("image", _STR), Column("label", _I64), Column("predicted", _I64),
    Column("correct", _BOOL), Column("target", _I64), Column("target_prob", _F64), Column("method", _STR),
    Column("grid_h", pa.int32()), Column("grid_w", pa.int32()), Column("map", pa.list_(pa.float32())),
    Column("box", pa.list_(_F64)), Column("embedding", pa.list_(pa.float32())), Column("image_seed", _I64),
    Column("explain_seconds", _F64, "time"), Column("explain_images", _F64, "cost"),
)
"""One row per image: its label, prediction and target, the target's probability, the map at its native
grid (flattened, ``grid_h`` x ``grid_w``), its most salient patch (``box``, fractions of the image; null
when the map shows nothing) and that patch's embedding."""
COLUMN_NAMES = tuple(c.name for c in COLUMNS)


@dataclass
class AuditRows(Rows):
    """A job's rows with the embedding layer's features (n, K, h, w), None when patches embed pixels."""

    features: torch.Tensor | None = None
    boxes: list = field(default_factory=list)  # per row: the salient patch's box, or None
    embeddings: list = field(default_factory=list)  # per row: the patch's embedding, or None


class AuditWorker(Worker):
    """Explains a job's images and keeps, per image, the map, its salient patch and the patch's embedding."""

    def __init__(self, ctx, device: str | None = None):
        super().__init__(ctx, device)
        name = ctx.config.layer  # resolved by the plan; None: embed the patch's pixels
        self.layer = resolve_layer(self.model, name) if name else None

    def predict(self, job, loaded: dict) -> AuditRows:
        """One forward pass per image: logits, probabilities and (with a layer) the layer's features."""
        clf = self.model
        x = loaded["x"].to(clf.device)
        with model_guard(clf):
            if self.layer is None:
                with torch.no_grad():
                    logits = torch.cat([clf(x[s]) for s in chunks(x.shape[0], self.ctx.batch_size)])
                feats = None
            else:
                with tapped(self.layer, x.shape[-2:]) as tap:
                    feats, logits = capture(clf, tap, x, self.ctx.batch_size)
        rows = AuditRows(job, x, loaded["info"], logits, torch.softmax(logits.double(), 1))
        rows.features = feats
        return rows

    def score(self, rows: AuditRows) -> None:
        """No metric: each map's most salient patch (:mod:`.maps`) and its embedding."""
        stat, shows = stat_maps(rows.saliency)
        cells = window_cells(self.ctx.config.patch)
        corners = salient_windows(stat, cells).tolist()
        rows.boxes = [window_box(r, c, cells) if ok else None for (r, c), ok in zip(corners, shows.tolist())]
        use = [i for i, b in enumerate(rows.boxes) if b is not None]
        rows.embeddings = [None] * len(rows)
        if not use:
            return
        boxes = [rows.boxes[i] for i in use]
        idx = torch.tensor([rows.image[i] for i in use], dtype=torch.long)
        if rows.features is not None:
            emb = pool_features(rows.features[idx.to(rows.features.device)], boxes)
        else:
            emb = pixel_features(rows.x_img[idx.to(rows.x_img.device)], boxes)
        for i, e in zip(use, emb.cpu()):
            rows.embeddings[i] = e.tolist()

    def output(self, rows: AuditRows) -> Output:
        """One row per image in :data:`COLUMNS`."""
        job = rows.job
        keys = [task_key(rec.name, job.task.method, job.task.resolution) for rec in job.images]
        out = Output(job.task, keys, {c: [] for c in COLUMN_NAMES}, {n: dict(v) for n, v in rows.info.items()})
        for r in range(len(rows)):
            for c, v in self._row(rows, r, keys).items():
                out.columns[c].append(v)
        return out

    def _row(self, rows: AuditRows, r: int, keys: list[str]) -> dict[str, Any]:
        i, t = rows.image[r], rows.target[r]
        rec, exp, per_row = rows.job.images[i], rows.explained, 1.0 / len(rows)
        pred = int(rows.logits[i].argmax())
        sal = rows.saliency[r].float().cpu()
        return {
            "key": keys[i], "image": rec.name, "label": rec.label, "predicted": pred,
            "correct": None if rec.label is None else pred == int(rec.label), "target": t,
            "target_prob": float(rows.probs[i, t]), "method": rows.job.task.method,
            "grid_h": int(sal.shape[-2]), "grid_w": int(sal.shape[-1]), "map": sal.flatten().tolist(),
            "box": rows.boxes[r], "embedding": rows.embeddings[r], "image_seed": rows.seeds[r],
            "explain_seconds": round(exp.seconds * per_row, 6), "explain_images": exp.counts["images"] * per_row,
        }
