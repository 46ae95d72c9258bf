"""The GAD experiment of Mazini Rodrigues, Boutry & Najman, 2024 sec. 6: original vs GAD maps of gradient methods compared by
their convex-hull regions.

For every evaluation image and each of the two classes as target: the base method's map for the
original model, the GAD map (sec. 4.3), the hulls of their important pixels, RC (eq. 1) and RS
(eq. 2) for the GAD hull and for the supplementary mask (original hull minus GAD hull). Table 1
counts the images with RC < 1 (a point for GAD) and RC >= 1 (a point for the original); Table 2
gives the mean RS of the GAD and supplementary masks, times 100 as in the paper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..core.batching import chunks
from ..errors import FaithmapError
from ..metrics.regions import hull_area, hull_masks, region_sensitivity_of_masks, supplementary_mask
from ..methods.gad import gad_maps
from ..models import Classifier
from ..params import build
from ..registry import METHODS
from .data import ImageSet
from .support import SupportSet, model_outputs

PAPER_METHODS = ("saliency", "deconvnet", "gradxinput", "guidedbackprop", "ig")
"""The five methods of the paper's Tables 1-2, in its column order (S, D, GxI, GB, IG)."""
LABELS = {"saliency": "S", "deconvnet": "D", "gradxinput": "GxI", "guidedbackprop": "GB", "ig": "IG"}


@dataclass
class MethodResult:
    """Per-image results of one base method, for each target class (key: class index)."""

    method: str
    rc: dict[int, np.ndarray] = field(default_factory=dict)
    rs_gad: dict[int, np.ndarray] = field(default_factory=dict)
    rs_sup: dict[int, np.ndarray] = field(default_factory=dict)
    area_orig: dict[int, np.ndarray] = field(default_factory=dict)
    area_gad: dict[int, np.ndarray] = field(default_factory=dict)
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    figure: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0

    def summary(self, c: int) -> dict[str, Any]:
        rc = self.rc[c]
        valid = ~np.isnan(rc)
        both = ~np.isnan(self.rs_gad[c]) & ~np.isnan(self.rs_sup[c])
        return {
            "images": int(rc.size), "rc_defined": int(valid.sum()),
            "rc_below_1": int((rc[valid] < 1).sum()), "rc_at_least_1": int((rc[valid] >= 1).sum()),
            "rc_mean": float(np.nanmean(rc)) if valid.any() else float("nan"),
            "rs_gad_mean": _nanmean(self.rs_gad[c]), "rs_sup_mean": _nanmean(self.rs_sup[c]),
            "rs_gad_defined": int((~np.isnan(self.rs_gad[c])).sum()),
            "rs_sup_defined": int((~np.isnan(self.rs_sup[c])).sum()),
            "rs_gad_wins": int((self.rs_gad[c][both] > self.rs_sup[c][both]).sum()), "rs_pairs": int(both.sum()),
            "kept_fraction_mean": float(self.kept[c].mean()),
        }


def _nanmean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if (~np.isnan(a)).any() else float("nan")


def least_activated(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], k: int = 5) -> list[int]:
    """Indices of the ``k`` images of each class with the lowest logit for their own class (Fig. 6)."""
    out = []
    for c in classes:
        idx = torch.nonzero(labels.to(logits.device) == c).flatten()
        own = logits[idx, c]
        out += idx[torch.argsort(own)[:k]].tolist()
    return out


@dataclass(frozen=True)
class CompareSettings:
    """How :func:`evaluate_method` compares original and GAD maps (sec. 5-6): the base method's
    ``base_params``, the ``fraction`` of important pixels of each map (sec. 4.3), the hull of the
    pixels above ``hull_threshold`` (read as ``hull_mode``: see :func:`faithmap.metrics.regions.hull_masks`),
    RS on the ``score`` (``"logit"``: against the original logits), ``batch_size`` images a model pass,
    ``seed`` of random base methods, ``chunk`` images a step."""

    fraction: float = 0.5
    hull_threshold: float = 0.5
    hull_mode: str = "fraction"
    base_params: dict | None = None
    batch_size: int | None = None
    seed: int = 0
    score: str = "logit"
    chunk: int = 128

    @classmethod
    def make(cls, base: "CompareSettings | None" = None, /, **overrides) -> "CompareSettings":
        """``base`` (default: all defaults) with ``overrides`` (any field), types checked."""
        return build(cls, "GAD comparison", base, overrides)


def evaluate_method(model: Classifier, supports: Sequence[Classifier], data: ImageSet, classes: tuple[int, int],
                    method: str, settings: CompareSettings | None = None, /, *, logits: torch.Tensor,
                    figure_index: Sequence[int] = (), progress=None, **overrides) -> MethodResult:
    """RC and RS of ``method`` on every image of ``data``, with each of ``classes`` as target.

    ``logits``: the original model's outputs on ``data`` (N, K). ``figure_index``: images whose maps
    and hulls are kept for the figure. ``settings`` (a :class:`CompareSettings`) with ``overrides``
    (any of its fields: ``fraction=``, ``hull_threshold=``, ``hull_mode=``, ``base_params=``,
    ``batch_size=``, ``seed=``, ``score=``, ``chunk=``) say how the maps are made and compared.
    """
    st = CompareSettings.make(settings, **overrides)
    batch_size, score = st.batch_size, st.score
    res = MethodResult(method)
    n = len(data)
    keep_fig = set(int(i) for i in figure_index)
    start = time.perf_counter()
    snap = model.counter.snapshot()
    device = model.device
    for c in classes:
        rc, rs_g, rs_s, a_o, a_g, kept = [], [], [], [], [], []
        fig: dict[str, list] = {"index": [], "original": [], "gad": [], "hull_orig": [], "hull_gad": []}
        for s in chunks(n, st.chunk):
            idx = torch.arange(n)[s]
            x = data.batch(idx).to(device)
            t = torch.full((len(idx),), int(c), dtype=torch.long, device=device)
            exp = gad_maps(model, supports, x, t, method, fraction=st.fraction, base_params=st.base_params,
                           batch_size=batch_size, seed=st.seed)
            orig = exp.extras["original"]
            m_orig = hull_masks(orig, st.hull_threshold, st.hull_mode)
            m_gad = hull_masks(exp.saliency, st.hull_threshold, st.hull_mode)
            ao, ag = hull_area(m_orig), hull_area(m_gad)
            rc.append(torch.where(ao > 0, ag / ao.clamp_min(1), torch.full_like(ao, float("nan"))).cpu())
            a_o.append(ao.cpu())
            a_g.append(ag.cpu())
            kept.append(exp.extras["keep"].flatten(1).float().mean(1).cpu())
            up_o, up_g = _to_input(m_orig, x), _to_input(m_gad, x)
            base = logits[idx.to(logits.device), c].to(device) if score == "logit" else None
            rs_g.append(region_sensitivity_of_masks(model, x, up_g, t, score=score, batch_size=batch_size,
                                                    base_scores=base).cpu())
            rs_s.append(region_sensitivity_of_masks(model, x, supplementary_mask(up_o, up_g), t, score=score,
                                                    batch_size=batch_size, base_scores=base).cpu())
            for j, i in enumerate(idx.tolist()):
                if i in keep_fig:
                    fig["index"].append(i)
                    fig["original"].append(orig[j].detach().cpu())
                    fig["gad"].append(exp.saliency[j].detach().cpu())
                    fig["hull_orig"].append(m_orig[j].cpu())
                    fig["hull_gad"].append(m_gad[j].cpu())
            if progress is not None:
                progress.update(len(idx))
        res.rc[c] = torch.cat(rc).double().numpy()
        res.rs_gad[c] = torch.cat(rs_g).double().numpy()
        res.rs_sup[c] = torch.cat(rs_s).double().numpy()
        res.area_orig[c] = torch.cat(a_o).numpy()
        res.area_gad[c] = torch.cat(a_g).numpy()
        res.kept[c] = torch.cat(kept).numpy()
        res.figure[c] = {k: (torch.stack(v) if v and k != "index" else v) for k, v in fig.items()}
    res.seconds = time.perf_counter() - start
    res.images = model.counter.since(snap)["images"]
    return res


def _to_input(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if tuple(mask.shape[-2:]) == tuple(x.shape[-2:]):
        return mask
    up = torch.nn.functional.interpolate(mask[:, None].float(), size=x.shape[-2:], mode="nearest")[:, 0]
    return up > 0.5


# ----------------------------------------------------------------------------------------------
# distancing achieved by the support models
# ----------------------------------------------------------------------------------------------
def distancing_record(model: Classifier, supports: SupportSet, data: ImageSet, classes: tuple[int, int],
                      batch_size: int | None = None) -> list[dict[str, Any]]:
    """Per support model: alpha, training loss, fit MSE and the achieved distancing on ``data``.

    The distancing is the mean change, relative to the original model, of ``logit_own - logit_other``
    over the images of both classes; a perfect fit to the targets gives ``alpha``.
    """
    a, b = classes
    labels = data.labels.to(model.device)
    other = torch.where(labels == a, torch.full_like(labels, b), torch.full_like(labels, a))

    def margin(logits):
        return logits.gather(1, labels.view(-1, 1)).squeeze(1) - logits.gather(1, other.view(-1, 1)).squeeze(1)

    base = margin(model_outputs(model, data, batch_size))
    rows = []
    threads = supports.threads or [None] * len(supports.alphas)
    for al, sup, fit, losses, cached, th in zip(supports.alphas, supports.models, supports.fit_mse, supports.losses,
                                                supports.cached, threads):
        gap = margin(model_outputs(sup, data, batch_size)) - base
        rows.append({"alpha": al, "epochs": len(losses), "first_epoch_loss": losses[0] if losses else float("nan"),
                     "last_epoch_loss": losses[-1] if losses else float("nan"), "fit_mse": fit,
                     "distancing": float(gap.mean()), "cached": cached, "threads": th})
    return rows


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def _label(method: str) -> str:
    return LABELS.get(method, method)


def table_rc(results: Sequence[MethodResult], classes: Sequence[int], names: Sequence[str]) -> str:
    """Table 1: per class, the number of images with RC >= 1 (Orig.) and RC < 1 (GAD)."""
    head = "| | " + " | ".join(_label(r.method) for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for c, name in zip(classes, names):
        sums = [r.summary(c) for r in results]
        lines.append(f"| Orig. {name} (RC >= 1) | " + " | ".join(str(s["rc_at_least_1"]) for s in sums) + " |")
        lines.append(f"| GAD {name} (RC < 1) | " + " | ".join(
            f"{s['rc_below_1']} ({100 * s['rc_below_1'] / max(1, s['rc_defined']):.0f}%)" for s in sums) + " |")
        if any(s["rc_defined"] < s["images"] for s in sums):  # original maps without any positive pixel
            lines.append(f"| RC defined, {name} | " + " | ".join(f"{s['rc_defined']}/{s['images']}" for s in sums) + " |")
    return "\n".join(lines)


def table_rs(results: Sequence[MethodResult], classes: Sequence[int], names: Sequence[str]) -> str:
    """Table 2: per class, the mean RS (x 10^2) of the supplementary and GAD masks, and how often GAD's is larger."""
    head = "| | " + " | ".join(_label(r.method) for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for c, name in zip(classes, names):
        sums = [r.summary(c) for r in results]
        lines.append(f"| Sup. {name} | " + " | ".join(f"{100 * s['rs_sup_mean']:.4f}" for s in sums) + " |")
        lines.append(f"| GAD {name} | " + " | ".join(f"{100 * s['rs_gad_mean']:.4f}" for s in sums) + " |")
        lines.append(f"| RS(GAD) > RS(Sup.), images {name} | " + " | ".join(
            f"{s['rs_gad_wins']}/{s['rs_pairs']}" for s in sums) + " |")
    return "\n".join(lines)


def table_cost(results: Sequence[MethodResult]) -> str:
    lines = ["| method | seconds | model images (original + supports + RS) |", "|---|---|---|"]
    for r in results:
        lines.append(f"| {r.method} | {r.seconds:.1f} | {r.images} |")
    return "\n".join(lines)


def table_supports(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| alpha | epochs | loss, epoch 1 | loss, last epoch | fit MSE | distancing achieved (target = alpha) "
             "| from cache | trained in threads |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        th = r.get("threads")
        lines.append(f"| {r['alpha']:g} | {r['epochs']} | {r['first_epoch_loss']:.4g} | {r['last_epoch_loss']:.4g} | {r['fit_mse']:.4g} "
                     f"| {r['distancing']:.3f} | {'yes' if r['cached'] else 'no'} | {th if th is not None else '-'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# figure (Fig. 6 of the paper, with the maps)
# ----------------------------------------------------------------------------------------------
def save_figure(path: str, model: Classifier, data: ImageSet, result: MethodResult, classes: Sequence[int],
                names: Sequence[str], title: str = "") -> None:
    """Rows: the original map with its hull (red), the GAD map with its hull (green), the image with
    both hulls; columns: the least-activated images of each class, each explained for its own class."""
    from ..viz.draw import _save, subplots, to_image  # lazy: matplotlib, only when a figure is drawn

    cols = []
    for c, name in zip(classes, names):
        fig = result.figure[c]
        for j, i in enumerate(fig["index"]):
            if int(data.labels[i]) == c:
                cols.append((c, name, i, j))
    if not cols:
        return
    fig_, axes = subplots(3, len(cols), figsize=(1.6 * len(cols), 5.2), squeeze=False)
    for k, (c, name, i, j) in enumerate(cols):
        f = result.figure[c]
        img = to_image(model.to_pixels(data.batch(torch.tensor([i])).to(model.device))[0])
        panels = [(f["original"][j], [(f["hull_orig"][j], "red")]),
                  (f["gad"][j], [(f["hull_gad"][j], "lime")]),
                  (None, [(f["hull_orig"][j], "red"), (f["hull_gad"][j], "lime")])]
        for row, (sal, hulls) in enumerate(panels):
            ax = axes[row, k]
            if sal is None:
                ax.imshow(img)
            else:
                s = sal.float().numpy()
                hi = float(np.abs(s).max()) or 1.0
                ax.imshow(np.clip(s, 0, None) / hi, cmap="gray_r", vmin=0, vmax=1)
            for hull, color in hulls:
                m = hull.float().numpy()
                if tuple(m.shape) != tuple(img.shape[:2]) and sal is None:
                    m = _to_input(hull[None], torch.zeros(1, 1, *img.shape[:2]))[0].float().numpy()
                if m.any():  # pad so that a hull touching the border is drawn closed
                    h, w = m.shape
                    ax.contour(np.arange(-1, w + 1), np.arange(-1, h + 1), np.pad(m, 1), levels=[0.5],
                               colors=color, linewidths=1.2)
            ax.set_xlim(-0.5, img.shape[1] - 0.5)
            ax.set_ylim(img.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, k].set_title(f"{name} #{i}\nRC {result.rc[c][i]:.2f}", fontsize=7)
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("GAD", fontsize=8)
    axes[2, 0].set_ylabel("hulls", fontsize=8)
    if title:
        fig_.suptitle(title, fontsize=9)
    _save(fig_, path)


def check_methods(names: Sequence[str]) -> list[str]:
    """Canonical method names; ``all`` is the paper's five; ``gad`` cannot be a base."""
    out: list[str] = []
    for n in names:
        for part in str(n).split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() == "all":
                out += [m for m in PAPER_METHODS if m not in out]
                continue
            canon = METHODS.canonical(part)
            if canon == "gad":
                raise FaithmapError("gad cannot be its own base method; give a gradient method such as ig")
            if canon not in out:
                out.append(canon)
    if not out:
        raise FaithmapError("give at least one method")
    return out


__all__ = ["CompareSettings", "LABELS", "MethodResult", "PAPER_METHODS", "check_methods", "distancing_record", "evaluate_method",
           "least_activated", "save_figure", "table_cost", "table_rc", "table_rs", "table_supports"]
