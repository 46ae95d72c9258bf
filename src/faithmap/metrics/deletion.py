"""Deletion and insertion curves and their AUCs (Petsiuk et al. 2018, as run in Qi, Khorram & Li, AAAI 2020 sec. 4).

The cells of a saliency map, at the map's own resolution, are ordered by importance. Deletion
replaces the most important cells with the blur baseline, ``step`` cells at a time; insertion
reveals them on the blurred image. Tied cells (exactly equal values; e.g. the 33-44% of an I-GOS
map's cells left at 0) follow ``ties`` (:mod:`faithmap.metrics._common`): by default a block of
tied cells enters as one step, its two ends are scored and the curve is linear in the fraction
across it, so the AUC does not depend on the arbitrary order of tied cells (``ties="index"``: ties
by the lower cell index, the rule before). The score is the softmax probability of the
target. AUC is the trapezoid over the fraction of cells, from 0 to 1 with both ends included (no
constant added at the last step, unlike the authors' code; see ``shared/notes``).

Images are deduplicated: deletion's first and insertion's last image are the photo itself,
deletion's last and insertion's first the baseline, so one photo's two curves with T steps cost
exactly 2T model images (map without ties), all sent in batches of at most ``batch_size``; with
``ties="interpolate"`` a tie block replaces the grid points inside it by its ends, at most two
images per block and curve instead of one per grid point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.batching import DEFAULT_BATCH_SIZE, chunks, model_guard, resolve_batch_size
from ..core.memo import shared
from ..core.perturb import make_baseline, phi, upsample
from ..core.scores import score_of
from ..errors import FaithmapError
from ..registry import register_metric
from ._common import check_ties, curve_plans


@dataclass
class Curves:
    """Deletion/insertion curves (B, T+1) over ``fractions`` (T+1,), with AUCs (B,)."""

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    images: int = 0
    ties: str = "interpolate"

    @property
    def deletion_auc(self) -> torch.Tensor:
        return torch.trapezoid(self.deletion, self.fractions, dim=-1)

    @property
    def insertion_auc(self) -> torch.Tensor:
        return torch.trapezoid(self.insertion, self.fractions, dim=-1)

    @property
    def overall(self) -> torch.Tensor:
        """Insertion AUC minus deletion AUC (the over-all score of Zhang, Rao & Yang, AAAI 2021)."""
        return self.insertion_auc - self.deletion_auc


def default_step(cells: int) -> int:
    """Cells per step: ``max(1, cells // 50)`` as in the authors' code (15 at 28 x 28)."""
    return max(1, cells // 50)


def ranking(saliency: torch.Tensor) -> torch.Tensor:
    """Cell indices (B, cells) from most to least important; ties broken by the lower index."""
    flat = saliency.flatten(1)
    return torch.sort(-flat, dim=1, stable=True).indices


@shared  # deletion, insertion and overall share one computation inside a sharing() scope
def deletion_insertion(model, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor, *,
                       step: int | None = None, baseline: str | torch.Tensor = "blur", score: str = "prob",
                       ties: str = "interpolate", batch_size: int | None = DEFAULT_BATCH_SIZE) -> Curves:
    """Deletion and insertion curves of maps ``saliency`` (B, h, w) for images ``x`` (B, 3, H, W).

    ``ties``: ``"interpolate"`` (default; a tie block enters as one step, see the module
    docstring) or ``"index"`` (ties by lower cell index).
    """
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() != 3 or saliency.shape[0] != x.shape[0]:
        raise FaithmapError(f"saliency maps must be (B, h, w) with B = {x.shape[0]}, got {tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise FaithmapError("saliency maps contain NaN or infinite values")
    check_ties("deletion", ties)
    b, h, w = saliency.shape
    batch_size = resolve_batch_size(batch_size, x.device)
    cells = h * w
    step = int(step or default_step(cells))
    counts = list(range(0, cells, step)) + [cells]  # cells removed at each point, 0 .. cells
    n_steps = len(counts) - 1
    fractions = torch.tensor(counts, dtype=torch.float64, device=x.device) / cells
    sal = saliency.to(x.device)
    order = ranking(sal)
    plans = curve_plans(sal.flatten(1), counts, ties)
    base = make_baseline(baseline, x, getattr(model, "mean", None), getattr(model, "std", None))
    fn = score_of(score)
    # rank of each cell in the order (0 = most important)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(cells, device=x.device).expand(b, cells))
    # each job: (image, kind, count) with kind 0 = deletion, 1 = insertion, for every node strictly
    # inside (0, cells); the two ends of both curves are the photo and the baseline (2 images)
    jobs = [(i, k, int(c)) for i in range(b) for k in (0, 1) for c in plans[i].nodes.tolist() if 0 < c < cells]
    values = {}
    with model_guard(model), torch.no_grad():
        end_imgs = torch.cat([x, base])
        end_t = torch.cat([target, target])
        end_scores = torch.cat([fn(model(end_imgs[s]), end_t[s]) for s in chunks(2 * b, batch_size)])
        for sl in chunks(len(jobs), batch_size):
            part = jobs[sl]
            img = torch.tensor([j[0] for j in part], device=x.device)
            kind = torch.tensor([j[1] for j in part], device=x.device)
            cnt = torch.tensor([j[2] for j in part], device=x.device)
            removed = (rank[img] < cnt.view(-1, 1)).to(x.dtype)  # 1 = among the top cells
            keep = torch.where(kind.view(-1, 1) == 0, 1 - removed, removed).view(-1, 1, h, w)
            images = phi(x[img], base[img], upsample(keep, x.shape[-2:]))
            s = fn(model(images), target[img])
            for j, v in zip(part, s.tolist()):
                values[j] = v
    deletion = torch.empty(b, n_steps + 1, dtype=torch.float64, device=x.device)
    insertion = torch.empty_like(deletion)
    for i in range(b):
        photo, blur = float(end_scores[i]), float(end_scores[b + i])
        nodes = plans[i].nodes.tolist()
        dv = [photo if c == 0 else blur if c == cells else values[(i, 0, c)] for c in nodes]
        iv = [blur if c == 0 else photo if c == cells else values[(i, 1, c)] for c in nodes]
        deletion[i] = plans[i].curve(torch.tensor(dv, dtype=torch.float64, device=x.device))
        insertion[i] = plans[i].curve(torch.tensor(iv, dtype=torch.float64, device=x.device))
    return Curves(fractions, deletion, insertion, images=2 * b + len(jobs),
                  ties=ties)


@dataclass
class CurveScores:
    """What the deletion, insertion and overall metrics return: per-image ``scores`` (B,) and the
    :class:`Curves` they are read from (an evaluation stores the curves beside the scores)."""

    scores: torch.Tensor
    curves: Curves


@register_metric("deletion", higher_is_better=False, category="faithfulness", default=True, paper="Qi, Khorram & Li, AAAI 2020",
                 summary="area under the probability curve as the most salient cells are blurred")
def deletion_auc(model, x, saliency, target, **kw) -> CurveScores:
    """Deletion AUC per image (lower is better), with its curves."""
    c = deletion_insertion(model, x, saliency, target, **kw)
    return CurveScores(c.deletion_auc, c)


@register_metric("insertion", higher_is_better=True, category="faithfulness", default=True, paper="Qi, Khorram & Li, AAAI 2020",
                 summary="area under the probability curve as the most salient cells are revealed on the blur")
def insertion_auc(model, x, saliency, target, **kw) -> CurveScores:
    """Insertion AUC per image (higher is better), with its curves."""
    c = deletion_insertion(model, x, saliency, target, **kw)
    return CurveScores(c.insertion_auc, c)


@register_metric("overall", higher_is_better=True, category="faithfulness", default=True, paper="Zhang, Rao & Yang, AAAI 2021",
                 summary="insertion AUC minus deletion AUC (the over-all score of AOP/SIGCAM)")
def overall_score(model, x, saliency, target, **kw) -> CurveScores:
    """Insertion AUC minus deletion AUC per image (higher is better), with its curves."""
    c = deletion_insertion(model, x, saliency, target, **kw)
    return CurveScores(c.overall, c)


def images_at_fraction(x: torch.Tensor, saliency: torch.Tensor, fraction: float, baseline: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The deletion and insertion images after ``fraction`` of the cells (most important first)."""
    b, h, w = saliency.shape
    cells = h * w
    n = int(round(fraction * cells))
    order = ranking(saliency.to(x.device))
    removed = torch.zeros(b, cells, device=x.device, dtype=x.dtype)
    removed.scatter_(1, order[:, :n], 1.0)
    up = upsample(removed.view(b, 1, h, w), x.shape[-2:])
    return phi(x, baseline, 1 - up), phi(x, baseline, up)
