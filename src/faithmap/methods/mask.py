"""The mask-optimisation engine: I-GOS, iGOS++, Fong-Vedaldi masks and AOP's refinement stage.

A method is a configuration of :class:`MaskOptimizer`:

* its **objective** is a list of :class:`PathTerm` (a deletion or insertion game played on one
  of the masks or on their product, integrated along the mask path or taken at the mask itself);
* its **regulariser** acts on the combined mask (``L1 * mean|1 - M| + L2 * TV(M)`` for I-GOS);
* its **step rule** turns the total gradient into an update (the batched revised Armijo line
  search of I-GOS eq. 9, a fixed step, or Adam for Fong-Vedaldi).

Masks live at low resolution (``resolution`` x ``resolution``), start at ones (1 keeps the image,
0 shows the baseline) and are upsampled bilinearly to the input size. The saliency map is
``1 - M``. Every model evaluation of one iteration is packed into as few batched forward passes as
``batch_size`` (the maximum number of images per forward) allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

import torch

from ..core.batching import DEFAULT_BATCH_SIZE, chunks, model_guard, resolve_batch_size, per_image_generators, Seed
from ..explanation import Explanation
from ..core.progress import ticker
from ..core.quadrature import quadrature_nodes
from ..core.perturb import blur_params, gaussian_blur, grid_size, make_baseline, phi, upsample
from ..core.regularizers import btv, l1_keep, tv
from ..core.scores import score_of
from ..errors import FaithmapError
from ..params import knob, record
from ..registry import register_method


# ----------------------------------------------------------------------------------------------
# problem state and objective terms
# ----------------------------------------------------------------------------------------------
@dataclass
class MaskState:
    """Everything an objective needs about the batch being explained."""

    model: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor  # (B, 3, H, W) normalised images
    baseline: torch.Tensor  # (B, 3, H, W)
    target: torch.Tensor  # (B,)
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batch_size: int
    generators: list[torch.Generator]
    noise_std: float
    # optional engine hooks (Extremal Perturbation, ``methods/extremal.py``); None keeps I-GOS's behaviour
    expand: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None  # masks -> input-size masks
    compose: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None  # (idx, keep, it) -> images
    iteration: int = 0  # the current iteration of :meth:`MaskOptimizer.run`

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])  # type: ignore[return-value]


@dataclass(frozen=True)
class PathTerm:
    """One score term of a mask objective.

    ``game="deletion"``: the score of ``phi(I, B, M)`` is minimised (M = 1 keeps the image).
    ``game="insertion"``: the score of ``phi(B, I, M)`` is maximised (M = 1 keeps the baseline,
    so low values reveal the image), i.e. ``-score`` is minimised (iGOS++ eq. 4-5).
    ``mask`` selects the mask the term acts on: an index into the stacked masks, or
    ``"product"`` for their product. ``integrated`` terms average the gradient over the mask path
    ``t * M``, t = 1/S .. 1 (I-GOS eq. 5); others use the gradient at ``M`` alone.
    ``noise`` adds Gaussian noise (``noise_std``, normalised space) to the images of the gradient
    pass (never to line-search evaluations, which stay deterministic).
    """

    game: str = "deletion"
    mask: int | str = 0
    integrated: bool = True
    noise: bool = True
    weight: float = 1.0

    @property
    def sign(self) -> float:
        return 1.0 if self.game == "deletion" else -1.0


def combine_masks(masks: torch.Tensor, which: int | str) -> torch.Tensor:
    """(N, k, h, w) stacked masks -> (N, 1, h, w): one of them, or their product (``"all"``: all k)."""
    if which == "all":
        return masks
    if which == "product":
        return masks.prod(dim=1, keepdim=True)
    return masks[:, int(which): int(which) + 1]


def _term_images(st: MaskState, term: PathTerm, idx: torch.Tensor, masks: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Images for entries (image index ``idx``, mask (N,1,h,w), path point ``t`` (N,)).

    ``st.expand`` (if set) replaces the bilinear upsampling; ``st.compose(idx, keep, iteration)``
    (if set) replaces ``phi``, given how much of the image each pixel keeps (``keep`` = the mask for
    a deletion term, one minus it for an insertion term).
    """
    up = (st.expand or upsample)(masks, st.size) * t.view(-1, 1, 1, 1)
    if st.compose is not None:
        return st.compose(idx, up if term.game == "deletion" else 1 - up, st.iteration)
    if term.game == "deletion":
        return phi(st.x[idx], st.baseline[idx], up)
    return phi(st.baseline[idx], st.x[idx], up)


@dataclass
class _Entry:
    image: int
    term: int
    t: float
    slot: int = 0  # candidate index for line-search evaluations


def _evaluate(st: MaskState, terms: Sequence[PathTerm], masks: torch.Tensor, entries: list[_Entry],
              weights: torch.Tensor, *, noise: bool, grad_of: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted scores of all ``entries``, packed into forwards of at most ``batch_size`` images.

    ``masks`` is (B, K, k, h, w) (K candidates per image). Returns the per-entry scores (N,).
    With ``grad_of`` (a leaf tensor), ``sum(weights * scores)`` is back-propagated chunk by chunk
    into ``grad_of.grad``.
    """
    n = len(entries)
    out = torch.empty(n, device=st.x.device, dtype=st.x.dtype)
    img = torch.tensor([e.image for e in entries], device=st.x.device)
    slot = torch.tensor([e.slot for e in entries], device=st.x.device)
    ts = torch.tensor([e.t for e in entries], device=st.x.device, dtype=st.x.dtype)
    term_ids = [e.term for e in entries]
    for sl in chunks(n, st.batch_size):
        ids = range(sl.start, sl.stop)
        parts = []
        # group consecutive entries of the same term so masks are combined once per group
        start = sl.start
        while start < sl.stop:
            stop = start
            while stop < sl.stop and term_ids[stop] == term_ids[start]:
                stop += 1
            term = terms[term_ids[start]]
            m = combine_masks(masks[img[start:stop], slot[start:stop]], term.mask)
            parts.append(_term_images(st, term, img[start:stop], m, ts[start:stop]))
            start = stop
        images = torch.cat(parts) if len(parts) > 1 else parts[0]
        if noise:
            noisy = [i for i in ids if terms[term_ids[i]].noise]
            if noisy:
                eps = torch.stack([
                    torch.randn(images.shape[1:], generator=st.generators[entries[i].image], device=images.device,
                                dtype=images.dtype) if terms[term_ids[i]].noise else torch.zeros(images.shape[1:],
                                                                                                 device=images.device)
                    for i in ids])
                images = images + st.noise_std * eps
        scores = st.score(st.model(images), st.target[img[sl]])
        if grad_of is not None:
            (scores * weights[sl]).sum().backward()
        out[sl] = scores.detach()
    return out


# ----------------------------------------------------------------------------------------------
# step rules
# ----------------------------------------------------------------------------------------------
@dataclass
class ArmijoLineSearch:
    """Backtracking line search with the revised Armijo condition of I-GOS (Qi, Khorram & Li, AAAI 2020, eq. 9).

    Steps come from the grid ``alpha_max * decay^j`` (down to the first below ``alpha_min``). A step
    is accepted when ``F(P(M - a*TG)) - F(M) <= -a * beta * TG.TG`` (P clips to [0, 1]) and the next
    larger grid step was tested and failed (or ``a = alpha_max``). When no step passes, the smallest
    grid step is used (paper, step 3). By default every iteration scans from ``alpha_max`` down,
    so the accepted step is exactly the one of the paper's sequential backtracking.

    * Candidates are tested ``window`` at a time for all images in one batched pass. ``window=None``
      picks by device: 1 on CPU (no wasted trials: batching gains little there, and the images of
      the batch already fill a pass), 3 on an accelerator (fewer, larger passes). ``window=0``
      tests the whole grid in one pass.
    * ``warm_start=True`` (an option, off by default) starts each iteration one grid step above the
      step accepted in the previous one and moves up while the top candidate passes. It is cheaper
      but only certifies the step above, so it can miss a larger passing step further up; on
      ``chelsea`` it ended at deletion 0.306 / insertion 0.214 against 0.232 / 0.284 from the top
      (BENCHMARKS.md).
    """

    alpha_max: float = 1000.0
    decay: float = 0.2
    beta: float = 1e-4
    alpha_min: float = 1e-5
    window: int | None = None
    warm_start: bool = False
    _prev: list[int] | None = field(default=None, init=False, repr=False)

    def grid(self) -> list[float]:
        alphas, a = [], self.alpha_max
        while True:
            alphas.append(a)
            if a < self.alpha_min:
                break
            a *= self.decay
        return alphas

    def reset(self) -> None:
        self._prev = None

    def step(self, masks, direction, evaluate, f_cur, lower_bound=None):
        """One step per image. ``lower_bound(cand, idx)``, when given, bounds ``F`` from below
        without the model; a trial whose bound already fails the condition is rejected unevaluated."""
        grid = self.grid()
        g_n = len(grid)
        b = masks.shape[0]
        dev = masks.device
        gg = direction.flatten(1).pow(2).sum(1)
        if self.window is None:
            window = 1 if dev.type == "cpu" else 3
        else:
            window = g_n if self.window == 0 else self.window
        if self.warm_start and self._prev is not None and len(self._prev) == b:
            todo = {i: list(range(max(0, self._prev[i] - 1), min(g_n, max(0, self._prev[i] - 1) + window)))
                    for i in range(b)}
        else:
            todo = {i: list(range(min(g_n, window))) for i in range(b)}
        tested: list[dict[int, tuple[bool, float]]] = [dict() for _ in range(b)]
        chosen: dict[int, int] = {}
        while todo:
            pairs = [(i, j) for i, js in todo.items() for j in js]
            idx = torch.tensor([i for i, _ in pairs], device=dev)
            a = torch.tensor([grid[j] for _, j in pairs], device=dev, dtype=masks.dtype)
            cand = (masks[idx] - a.view(-1, 1, 1, 1) * direction[idx]).clamp(0, 1).unsqueeze(1)
            need = -a * self.beta * gg[idx]
            values = torch.full_like(a, float("nan"))
            live = torch.ones_like(a, dtype=torch.bool)
            if lower_bound is not None:  # certain failures need no model evaluation
                live = lower_bound(cand, idx)[:, 0] - f_cur[idx] <= need
            if live.any():
                values[live] = evaluate(cand[live], idx[live])[:, 0]
            ok = live & (values - f_cur[idx] <= need)
            for n, (i, j) in enumerate(pairs):
                tested[i][j] = (bool(ok[n]), float(values[n]))
            todo = {}
            for i in {i for i, _ in pairs}:
                res = tested[i]
                passing = sorted(j for j, (o, _) in res.items() if o)
                accept = [j for j in passing if j == 0 or (j - 1 in res and not res[j - 1][0])]
                if accept:
                    chosen[i] = accept[0]
                elif passing:  # passes, but the larger step above is untested: move up
                    top = passing[0]
                    todo[i] = list(range(max(0, top - window), top))
                elif max(res) == g_n - 1:  # nothing passes down to the bottom: smallest step
                    chosen[i] = g_n - 1
                else:
                    lo = max(res) + 1
                    todo[i] = list(range(lo, min(g_n, lo + window)))
        self._prev = [chosen[i] for i in range(b)]
        alpha = torch.tensor([grid[chosen[i]] for i in range(b)], device=dev, dtype=masks.dtype)
        f_new = torch.tensor([tested[i][chosen[i]][1] for i in range(b)], device=dev, dtype=masks.dtype)
        new = (masks - alpha.view(-1, 1, 1, 1) * direction).clamp(0, 1)
        missing = torch.isnan(f_new)  # the fallback smallest step was rejected by its bound alone
        if missing.any():
            f_new[missing] = evaluate(new[missing].unsqueeze(1), torch.nonzero(missing)[:, 0])[:, 0]
        return new, alpha, f_new


@dataclass
class FixedStep:
    """A fixed step ``M <- P(M - alpha * TG)`` (the "fixed step size" ablation of I-GOS Table 3)."""

    alpha: float = 1.0

    def step(self, masks, direction, evaluate, f_cur):
        alpha = torch.full((masks.shape[0],), float(self.alpha), device=masks.device)
        new = (masks - self.alpha * direction).clamp(0, 1)
        return new, alpha, None


@dataclass
class AdamStep:
    """Projected Adam, ``M <- P(M - lr * m_hat / (sqrt(v_hat) + eps))`` per mask element.

    The step rule of Fong & Vedaldi's meaningful perturbation (``mask`` method): plain gradients,
    hundreds of iterations, no line search. The moments are per element, so batched runs equal
    one-by-one runs.
    """

    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    _m: torch.Tensor | None = field(default=None, init=False, repr=False)
    _v: torch.Tensor | None = field(default=None, init=False, repr=False)
    _t: int = field(default=0, init=False, repr=False)

    def reset(self) -> None:
        self._m, self._v, self._t = None, None, 0

    def step(self, masks, direction, evaluate, f_cur):
        if self._m is None or self._m.shape != masks.shape:
            self._m, self._v, self._t = torch.zeros_like(masks), torch.zeros_like(masks), 0
        self._t += 1
        self._m.mul_(self.beta1).add_(direction, alpha=1 - self.beta1)
        self._v.mul_(self.beta2).addcmul_(direction, direction, value=1 - self.beta2)
        m_hat = self._m / (1 - self.beta1 ** self._t)
        v_hat = self._v / (1 - self.beta2 ** self._t)
        new = (masks - self.lr * m_hat / (v_hat.sqrt() + self.eps)).clamp(0, 1)
        alpha = torch.full((masks.shape[0],), float(self.lr), device=masks.device, dtype=masks.dtype)
        return new, alpha, None


@dataclass
class MomentumStep:
    """Projected SGD with momentum, ``v <- momentum * v + (1 - dampening) * TG``, ``M <- P(M - lr * v)``.

    The update of ``torch.optim.SGD`` (the first step takes ``v = TG``), then the projection to
    [0, 1]: the step rule of Extremal Perturbation (lr 0.01, momentum and dampening 0.9). The
    velocity is per element, so batched runs equal one-by-one runs.
    """

    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9
    _v: torch.Tensor | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        self._v = None

    def step(self, masks, direction, evaluate, f_cur):
        if self._v is None or self._v.shape != masks.shape:
            self._v = direction.clone()
        else:
            self._v.mul_(self.momentum).add_(direction, alpha=1 - self.dampening)
        new = (masks - self.lr * self._v).clamp(0, 1)
        alpha = torch.full((masks.shape[0],), float(self.lr), device=masks.device, dtype=masks.dtype)
        return new, alpha, None


# ----------------------------------------------------------------------------------------------
# regularisers
# ----------------------------------------------------------------------------------------------
@dataclass
class L1TV:
    """``l1 * mean|1 - M| + l2 * TV(M)`` on the combined mask (I-GOS eq. 2 with eq. 10's TV)."""

    l1: float = 1.0
    l2: float = 20.0
    beta: float = 2.0

    def __call__(self, st: MaskState, m: torch.Tensor) -> torch.Tensor:
        return self.l1 * l1_keep(m) + self.l2 * tv(m, self.beta)


@dataclass
class L1BTV:
    """``l1 * mean|1 - M| + l2 * BTV(I, M)`` on the combined mask (iGOS++ eq. 4 and 7).

    ``smooth="btv"``: the bilateral TV of :func:`faithmap.core.regularizers.btv`, guided by the
    normalised image being explained (``beta``, ``sigma``); ``smooth="tv"``: I-GOS's plain TV of
    the low-resolution mask instead (the comparison of iGOS++ Fig. 10).
    """

    l1: float = 1.0
    l2: float = 20.0
    beta: float = 2.0
    sigma: float = 0.01
    smooth: str = "btv"

    def __call__(self, st: MaskState, m: torch.Tensor) -> torch.Tensor:
        reg = self.l1 * l1_keep(m)
        if self.l2 == 0:
            return reg
        if self.smooth == "tv":
            return reg + self.l2 * tv(m, self.beta)
        return reg + self.l2 * btv(st.x, m, self.beta, self.sigma)


# ----------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------
@dataclass
class MaskOptimizer:
    """The mask-optimisation loop shared by every mask method (see the module docstring).

    ``quadrature``: the rule of the gradient's path integral over ``ig_steps`` points (``riemann``,
    the paper's right sum; ``gl``, Gauss-Legendre). ``ls_noise``: the line-search objective is
    evaluated on noisy path images, drawn afresh every iteration (the paper's), instead of
    noise-free. ``tol`` > 0: an image whose accepted step lowered its objective by less than
    ``tol`` stops there (its mask is final; later passes leave it out), the loop ends when all
    have stopped.
    """

    terms: Sequence[PathTerm]
    regularizer: Callable[[MaskState, torch.Tensor], torch.Tensor]
    step_rule: object = field(default_factory=ArmijoLineSearch)
    n_masks: int = 1
    final: int | str = 0
    reg_on: int | str = 0
    iterations: int = 15
    ig_steps: int = 20
    ls_points: int = 1
    ls_rule: str = "right"
    noise_std: float = 0.2
    direction_scale: float = 1.0
    quadrature: str = "riemann"
    ls_noise: bool = False
    tol: float = 0.0
    parametrization: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None
    """Masks (N, k, h, w) -> masks at the input size; None: bilinear upsampling (:func:`upsample`)."""
    perturbation: Callable[[MaskState], Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] | None = None
    """Builds ``compose(idx, keep, iteration)`` for a run's state; None: ``phi`` with the baseline."""

    def path_points(self, n: int) -> list[float]:
        return [s / n for s in range(1, n + 1)]

    def path_rule(self, n: int, rule: str) -> tuple[list[float], list[float]]:
        """Points ``t`` on the mask path ``t * M`` and their weights (summing to 1).

        ``right``: the paper's ``t = 1/n .. 1``, weights ``1/n`` (I-GOS eq. 5, the authors' code);
        ``mid``: ``t = (s - 1/2)/n``; ``gl``: the ``n`` Gauss-Legendre nodes and weights of [0, 1],
        exact for path integrands that are polynomials of degree up to ``2n - 1``.
        """
        if rule == "gl":
            t, w = quadrature_nodes(n, "gausslegendre")
            return t.tolist(), w.tolist()
        if rule == "mid":
            return [(s - 0.5) / n for s in range(1, n + 1)], [1.0 / n] * n
        return self.path_points(n), [1.0 / n] * n

    def objective(self, st: MaskState, cand: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Line-search objective ``F`` of candidate masks (n, K, k, h, w) of images ``idx``: (n, K).

        The data terms are averaged over ``ls_points`` points of the mask path (1 = the mask
        itself, the objective of I-GOS eq. 2 and 9) by the rule ``ls_rule``, without noise unless
        ``ls_noise`` (the paper's and the authors' objective: the noisy path average); the
        regulariser is added.
        """
        n, k = cand.shape[:2]
        ts, tw = self.path_rule(self.ls_points, self.ls_rule)
        entries, weights = [], []
        for row in range(n):
            for j in range(k):
                for ti, term in enumerate(self.terms):
                    pts, pw = (ts, tw) if term.integrated else ([1.0], [1.0])
                    for t, wt in zip(pts, pw):
                        entries.append(_Entry(row, ti, t, j))
                        weights.append(term.sign * term.weight * wt)
        sub = _Substate(st, idx)
        w = torch.tensor(weights, device=cand.device, dtype=cand.dtype)
        scores = _evaluate(sub, self.terms, cand, entries, w, noise=self.ls_noise)
        data = torch.zeros(n * k, device=cand.device, dtype=cand.dtype)
        owner = torch.tensor([e.image * k + e.slot for e in entries], device=cand.device)
        data.index_add_(0, owner, scores * w)
        return (data + self._regularise(st, cand, idx)).view(n, k)

    def _regularise(self, st: MaskState, cand: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The regulariser of candidate masks (n, K, k, h, w) of images ``idx``, flattened to (n * K,)."""
        sub_rep = _Substate(st, idx.repeat_interleave(cand.shape[1]))
        return self.regularizer(sub_rep, combine_masks(cand.flatten(0, 1), self.reg_on))

    def objective_lower_bound(self, st: MaskState, cand: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """A lower bound of :meth:`objective` that needs no model: the regulariser plus the smallest
        value the data terms can take with probability scores in [0, 1] (0 for a deletion term,
        ``-weight`` for an insertion term). (n, K, k, h, w) -> (n, K)."""
        n, k = cand.shape[:2]
        floor = sum(-t.weight for t in self.terms if t.sign < 0)
        return (self._regularise(st, cand, idx) + floor).view(n, k)

    def direction(self, st: MaskState, masks: torch.Tensor) -> torch.Tensor:
        """Total gradient TG = (integrated) gradient of the data terms + gradient of the regulariser.

        The path integral uses ``ig_steps`` points of the rule ``quadrature`` (:meth:`path_rule`:
        ``riemann`` = the paper's right sum, ``gl`` = Gauss-Legendre)."""
        b = masks.shape[0]
        leaf = masks.detach().clone().requires_grad_(True)
        ts, tw = self.path_rule(self.ig_steps, "gl" if self.quadrature == "gl" else "right")
        entries, weights = [], []
        for i in range(b):
            for ti, term in enumerate(self.terms):
                pts, pw = (ts, tw) if term.integrated else ([1.0], [1.0])
                for t, wt in zip(pts, pw):
                    entries.append(_Entry(i, ti, t))
                    weights.append(term.sign * term.weight * wt)
        w = torch.tensor(weights, device=masks.device, dtype=masks.dtype)
        with torch.enable_grad():
            _evaluate(st, self.terms, leaf.unsqueeze(1), entries, w, noise=True, grad_of=leaf)
            data_grad = leaf.grad.detach().clone() if leaf.grad is not None else torch.zeros_like(masks)
            leaf.grad = None
            reg = self.regularizer(st, combine_masks(leaf, self.reg_on)).sum()
            (reg_grad,) = torch.autograd.grad(reg, leaf)
        return self.direction_scale * data_grad + reg_grad

    def run(self, model, x: torch.Tensor, target: torch.Tensor, *, resolution: int | tuple[int, int] = 28,
            baseline: str | torch.Tensor = "blur", score: str = "prob", batch_size: int | None = DEFAULT_BATCH_SIZE,
            seed: Seed = 0, init: torch.Tensor | None = None,
            baseline_schedule: Callable[[int], torch.Tensor | None] | None = None) -> tuple[torch.Tensor, dict]:
        """Optimise masks for images ``x`` and targets; returns masks (B, k, h, w) and the history.

        ``init`` overrides the all-ones start (AOP starts from ``1 - up(base map)``);
        ``baseline_schedule(iteration)`` may return another baseline for that iteration (AOP's
        warm-up with a weaker blur) or None to keep ``baseline``.
        """
        b = x.shape[0]
        st, masks = self._start(model, x, target, resolution, baseline, score, batch_size, seed, init)
        base = st.baseline
        hist = {"loss": [], "alpha": [], "seconds": [], "images": []}
        counter = getattr(model, "counter", None)
        start_images = counter.images if counter is not None else 0
        if hasattr(self.step_rule, "reset"):
            self.step_rule.reset()
        f_cur = None
        needs_f = isinstance(self.step_rule, ArmijoLineSearch)
        active = torch.ones(b, dtype=torch.bool, device=x.device)  # images still optimised (tol)
        t0 = time.perf_counter()
        tick = ticker(self.iterations, "iteration")  # progress inside the image, for who asked (faithmap.explain)
        for it in range(self.iterations):
            st.iteration = it
            if baseline_schedule is not None:
                alt = baseline_schedule(it)
                new_base = base if alt is None else alt.to(x)
                if new_base is not st.baseline:
                    st.baseline, f_cur = new_base, None  # the objective changed: re-evaluate F(M)
            idx = torch.nonzero(active).flatten()
            full = len(idx) == b
            sst = st if full else _Substate(st, idx)
            m_a = masks if full else masks[idx]
            f_a = None if f_cur is None else (f_cur if full else f_cur[idx])
            if needs_f and (f_a is None or self.ls_noise):  # a noisy objective is drawn afresh (the paper)
                with torch.no_grad():
                    f_a = self.objective(sst, m_a.unsqueeze(1), torch.arange(len(idx), device=x.device)).squeeze(1)
            direction = self.direction(sst, m_a)
            with torch.no_grad():
                extra = {"lower_bound": lambda cand, i: self.objective_lower_bound(sst, cand, i)} \
                    if needs_f and score == "prob" else {}
                new, alpha_a, f_new = self.step_rule.step(
                    m_a, direction, lambda cand, i: self.objective(sst, cand, i), f_a, **extra)
            if full:
                masks, alpha = new, alpha_a
                f_cur = f_new if f_new is not None else f_a
            else:
                masks, alpha, f_cur = _scatter(masks, f_cur, idx, new, alpha_a, f_new if f_new is not None else f_a)
            if self.tol > 0 and f_new is not None and f_a is not None:
                active[idx] = (f_a - f_new) >= self.tol  # converged: this image's mask stays as it is
            hist["loss"].append(f_cur.clone() if f_cur is not None else torch.full((b,), float("nan"), device=x.device))
            hist["alpha"].append(alpha.clone())
            hist["seconds"].append(time.perf_counter() - t0)
            if counter is not None:  # cumulative images through the model (whole batch) after this iteration
                hist["images"].append(counter.images - start_images)
            tick()
            if not active.any():
                break
        return masks, _history(hist, b)

    def _start(self, model, x: torch.Tensor, target: torch.Tensor, resolution, baseline, score: str,
               batch_size: int | None, seed: Seed, init: torch.Tensor | None) -> tuple["MaskState", torch.Tensor]:
        """The optimisation's state (model, inputs, baseline, score, per-image generators, the mask
        parametrisation and perturbation) and its starting masks (B, k, h, w): all ones, or ``init``."""
        h, w = grid_size(resolution)
        b = x.shape[0]
        batch_size = resolve_batch_size(batch_size, x.device)
        mean = getattr(model, "mean", None)
        std = getattr(model, "std", None)
        base = make_baseline(baseline, x, mean, std)
        st = MaskState(model, x, base, target, score_of(score), batch_size,
                       per_image_generators(seed, b, x.device), self.noise_std)
        st.expand = self.parametrization
        if self.perturbation is not None:
            st.compose = self.perturbation(st)
        if init is None:
            masks = torch.ones(b, self.n_masks, h, w, device=x.device, dtype=x.dtype)
        else:
            masks = init.to(x).expand(b, self.n_masks, h, w).clone()
        return st, masks


def _history(hist: dict, b: int) -> dict:
    """The per-iteration record as (B, iterations) tensors of loss and step size, seconds and images."""
    return {"loss": torch.stack(hist["loss"], 1) if hist["loss"] else torch.empty(b, 0),
            "alpha": torch.stack(hist["alpha"], 1) if hist["alpha"] else torch.empty(b, 0),
            "seconds": hist["seconds"], "images": hist["images"]}


def _scatter(masks: torch.Tensor, f_cur: torch.Tensor | None, idx: torch.Tensor, new: torch.Tensor,
             alpha_a: torch.Tensor, f_a: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A step of the still-active images ``idx`` written into the whole batch: (masks, step sizes (0 for
    converged images), objective values (``f_a`` at ``idx``; None while nothing is known))."""
    b = masks.shape[0]
    masks = masks.clone()
    masks[idx] = new
    alpha = torch.zeros(b, device=masks.device, dtype=alpha_a.dtype)
    alpha[idx] = alpha_a
    if f_cur is not None and f_a is not None:
        f_cur = f_cur.clone()
        f_cur[idx] = f_a
    return masks, alpha, f_cur


class _Substate(MaskState):
    """A view of a :class:`MaskState` restricted to the images ``idx``."""

    def __init__(self, st: MaskState, idx: torch.Tensor):  # noqa: D107
        super().__init__(st.model, st.x[idx], st.baseline[idx], st.target[idx], st.score, st.batch_size,
                         [st.generators[i] for i in idx.tolist()], st.noise_std, st.expand, None, st.iteration)
        if st.compose is not None:  # the hook indexes the whole batch: map this view's indices back
            self.compose = lambda i, keep, it, _c=st.compose, _idx=idx: _c(_idx[i], keep, it)


# ----------------------------------------------------------------------------------------------
# settings shared by the mask family (faithmap.params: each field's type, default, range and help)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BatchParams:
    """What every method with a settings dataclass takes: the batching and the seed."""

    batch_size: int | None = knob(DEFAULT_BATCH_SIZE, "most images per forward pass (None: chosen by device)")
    seed: Seed = knob(0, "seed of each image's random generator (one, one per image, or None)")


@dataclass(frozen=True, kw_only=True)
class EngineParams(BatchParams):
    """What every method of the mask family takes: the map's grid, the batching and the seed."""

    resolution: int | tuple[int, int] = knob(28, "mask cells per side, or (rows, columns)")


@dataclass(frozen=True, kw_only=True)
class WarmupParams:
    """AOP's start-up: a weaker blur baseline for the first iterations (:func:`warmup_schedule`)."""

    warmup: int = knob(0, "first iterations on a weaker blur baseline (AOP's start-up)")
    warmup_blur: float = knob(0.5, "scale of that weaker blur's kernel and sigma")


@dataclass(frozen=True, kw_only=True)
class MaskRunParams(EngineParams):
    """One run of :class:`MaskOptimizer`: its iterations, what deleted pixels show, which score."""

    iterations: int = knob(15, "optimisation steps")
    baseline: str | torch.Tensor = knob("blur", "what deleted pixels show: blur, zero, ... or a tensor")
    score: str = knob("prob", "the target's score the masks play on: prob or logit")


@dataclass(frozen=True, kw_only=True)
class MaskStartParams(WarmupParams, MaskRunParams):
    """A mask run that AOP's refinement stage can start from a given mask."""

    init: torch.Tensor | None = knob(None, "start mask (B, h, w) in [0, 1] instead of ones (AOP)")


@dataclass(frozen=True, kw_only=True)
class IGOSParams(MaskStartParams):
    """I-GOS's settings (Qi, Khorram & Li, AAAI 2020); :func:`igos` gives the equations."""

    ig_steps: int = knob(20, "points of the integrated gradient's mask path (eq. 5)")
    quadrature: str = knob("riemann", "path rule: riemann (the paper), gl, or glN Gauss-Legendre nodes")
    l1: float | None = knob(None, "weight of mean|1 - M| (None: 1, or 10 at 224 x 224)")
    l2: float = knob(20.0, "weight of the total variation of M")
    noise_std: float = knob(0.2, "Gaussian noise on the gradient's path images (normalised space)")
    alpha_max: float = knob(1000.0, "largest line-search step")
    decay: float = knob(0.2, "factor between consecutive line-search steps")
    beta: float = knob(1e-4, "sufficient-decrease constant of the revised Armijo condition (eq. 9)")
    alpha_min: float = knob(1e-5, "the line search stops at the first step below this")
    ls_points: int = knob(3, "path points averaged in the line-search objective (1: the mask itself)")
    ls_noise: bool = knob(False, "line-search objective on noisy path images, drawn afresh every iteration")
    ls_window: int | None = knob(None, "line-search steps tried per pass (None: by device, 0: all)")
    warm_start: bool = knob(False, "start each line search one step above the last accepted one")
    ls_rule: Literal["right", "mid", "gl"] = knob("right", "rule of the line-search objective's path points")
    tol: float = knob(0.0, "stop an image once an iteration lowers its objective by less", "[0, inf)")
    step_size: float | None = knob(None, "a fixed step instead of the line search (Table 3's fixed-step ablation)")

    def __post_init__(self) -> None:
        parse_quadrature(self.quadrature, self.ig_steps)


def line_search(p: IGOSParams) -> ArmijoLineSearch:
    """The revised Armijo line search of I-GOS and iGOS++ from their settings."""
    return ArmijoLineSearch(p.alpha_max, p.decay, p.beta, p.alpha_min, window=p.ls_window, warm_start=p.warm_start)


# ----------------------------------------------------------------------------------------------
# shared checks and the I-GOS configuration
# ----------------------------------------------------------------------------------------------
QUADRATURES = ("riemann", "gl")


def parse_quadrature(quadrature: str, ig_steps: int) -> tuple[str, int]:
    """``(rule, points)`` of the mask path integral from ``quadrature`` and ``ig_steps``.

    ``"riemann"``: the paper's ``ig_steps`` right-endpoint points ``t = 1/S .. 1`` (I-GOS eq. 5);
    ``"gl"``: ``ig_steps`` Gauss-Legendre nodes on [0, 1]; ``"glN"`` (e.g. ``"gl5"``): N of them,
    whatever ``ig_steps`` says.
    """
    q = str(quadrature).strip().lower()
    if q in QUADRATURES:
        rule, n = q, ig_steps
    elif q.startswith("gl") and q[2:].isdigit():
        rule, n = "gl", int(q[2:])
    else:
        raise FaithmapError(f"quadrature must be riemann, gl or glN (N Gauss-Legendre nodes, e.g. gl5), got {quadrature!r}")
    if n < 1:
        raise FaithmapError(f"the mask path needs at least 1 point, got {n}")
    return rule, n


def check_resolution(resolution, x: torch.Tensor, low: int = 1) -> tuple[int, int]:
    h, w = grid_size(resolution)
    if min(h, w) < low or h > x.shape[-2] or w > x.shape[-1]:
        raise FaithmapError(f"mask resolution {h}x{w} is not possible here: use {low} to {min(x.shape[-2:])} "
                            f"cells per side for {x.shape[-2]}x{x.shape[-1]} inputs")
    return h, w


def default_l1(resolution) -> float:
    """L1 = 10 at full resolution (224 x 224), 1 otherwise (iGOS++ paper, section 4)."""
    h, w = grid_size(resolution)
    return 10.0 if min(h, w) >= 224 else 1.0


def check_init(init: torch.Tensor | None, x: torch.Tensor, resolution) -> torch.Tensor | None:
    """A start mask (B, 1, h, w) from ``init`` given as (h, w), (B, h, w) or (B, 1, h, w) in [0, 1]."""
    if init is None:
        return None
    h, w = grid_size(resolution)
    if not isinstance(init, torch.Tensor):
        raise FaithmapError(f"init must be a tensor of shape (B, {h}, {w}), got {type(init).__name__}")
    m = init.detach().to(device=x.device, dtype=x.dtype)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or m.shape[1] != 1 or tuple(m.shape[-2:]) != (h, w) or m.shape[0] not in (1, x.shape[0]):
        raise FaithmapError(f"init must be a start mask of shape ({x.shape[0]}, {h}, {w}) at the mask "
                            f"resolution, got {tuple(init.shape)}")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise FaithmapError("init must hold finite mask values in [0, 1] (1 keeps the image)")
    return m.expand(x.shape[0], 1, h, w)


def warmup_schedule(x: torch.Tensor, baseline, warmup: int, warmup_blur: float
                    ) -> Callable[[int], torch.Tensor | None] | None:
    """AOP's start-up (Zhang, Rao & Yang, AAAI 2021, SIGCAM section): a weaker blur baseline for the first
    ``warmup`` iterations, then the full one.

    The paper gives no numbers for the weaker blur. We scale the full blur's kernel size and sigma
    (51 and 50 at 224 px, :func:`faithmap.core.perturb.blur_params`) by ``warmup_blur`` (0.5: the
    same kernel shape at half the spatial scale; kernel rounded to the nearest odd size).
    Only defined for the ``blur`` baseline.
    """
    if warmup <= 0:
        return None
    if not (isinstance(baseline, str) and baseline == "blur"):
        raise FaithmapError("warmup (a weaker blur for the first iterations) needs baseline='blur'")
    k, sigma = blur_params(max(x.shape[-2:]))
    kw = max(1, 2 * int(round((k * warmup_blur - 1) / 2)) + 1)
    weak = gaussian_blur(x, kw, sigma * warmup_blur)
    return lambda it: weak if it < warmup else None


def run_mask_method(optimizer: MaskOptimizer, model, x, target, p: MaskStartParams, *, name: str,
                    init: torch.Tensor | None = None) -> Explanation:
    """Run ``optimizer`` with the settings ``p`` (resolved: ``p.resolution`` a grid) under the model guard,
    and package the result as an :class:`Explanation` whose ``params`` are ``p``'s values.

    The masks start at ``init`` when given (already a checked start), else at ``p.init``
    (:func:`check_init`) or ones; ``p.warmup`` > 0 uses :func:`warmup_schedule` as the baseline
    schedule (AOP's refinement stage).
    """
    start = init if init is not None else check_init(p.init, x, p.resolution)
    schedule = warmup_schedule(x, p.baseline, int(p.warmup), p.warmup_blur) if p.warmup else None
    with model_guard(model):
        masks, history = optimizer.run(model, x, target, resolution=p.resolution, baseline=p.baseline, score=p.score,
                                       batch_size=p.batch_size, seed=p.seed, init=start, baseline_schedule=schedule)
    final = combine_masks(masks, optimizer.final)[:, 0]
    return Explanation(saliency=1.0 - final, target=target, method=name, params=record(p), history=history,
                       extras={"masks": masks})


@register_method(
    "igos", family="mask", resolution="mask", min_resolution=2, paper="Qi, Khorram & Li, AAAI 2020",
    summary="I-GOS: deletion mask optimised with integrated gradients and a revised Armijo line search",
    fast={"iterations": 5, "ig_steps": 8}, params=IGOSParams,
)
def igos(model, x: torch.Tensor, target: torch.Tensor, p: IGOSParams) -> Explanation:
    """I-GOS (Qi, Khorram & Li, AAAI 2020, section 3); settings :class:`IGOSParams`.

    Minimises ``f_c(phi(I, B, up(M))) + l1 * mean|1 - M| + l2 * TV(M)`` (eq. 2) over a
    ``resolution`` x ``resolution`` mask. The data term's gradient is replaced by the integrated
    gradient along ``t * M``, t = 1/S .. 1 (eq. 5, S = ``ig_steps``), on noisy path images
    (``noise_std`` in normalised space); the step is found by the revised Armijo backtracking
    search (eq. 9, beta = 1e-4, from ``alpha_max`` by factors ``decay`` down to ``alpha_min``), whose
    objective ``F`` is eq. 2 itself evaluated without noise (``ls_points`` > 1 averages it over
    that many path points instead). ``l1`` defaults to 1, or 10 at 224 x 224.
    ``init`` (B, h, w) replaces the all-ones start and ``warmup`` iterations use a blur weaker by
    ``warmup_blur`` (:func:`warmup_schedule`): AOP's refinement stage (``aop``, ``sigcam``).
    ``step_size`` replaces the line search by that fixed step (the "fixed step size" ablation of
    the paper's Table 3 uses 1; preset ``igos-table3``).

    ``quadrature`` (:func:`parse_quadrature`): ``riemann`` (the paper's ``ig_steps`` points) or
    ``gl5``-style Gauss-Legendre nodes on the mask path (5 nodes: a quarter of the gradient
    images). ``ls_noise=True`` draws the line-search objective with the same noise as the
    gradient, afresh every iteration (the paper's and the authors' objective, with
    ``ls_points=20``). ``tol`` > 0 stops an image's optimisation once an iteration lowered its
    objective by less than ``tol`` (:class:`MaskOptimizer`).
    Returns saliency ``1 - M`` at mask resolution; history holds ``loss``, ``alpha`` and the
    cumulative model ``images`` per iteration.
    """
    hw = check_resolution(p.resolution, x, 2)
    rule, n_path = parse_quadrature(p.quadrature, p.ig_steps)
    p = replace(p, resolution=hw, ig_steps=n_path, quadrature=rule, l1=default_l1(hw) if p.l1 is None else p.l1)
    opt = MaskOptimizer(
        terms=[PathTerm("deletion", 0, integrated=True, noise=p.noise_std > 0)],
        regularizer=L1TV(p.l1, p.l2),
        step_rule=line_search(p) if p.step_size is None else FixedStep(float(p.step_size)),
        iterations=p.iterations, ig_steps=p.ig_steps, ls_points=p.ls_points, noise_std=p.noise_std,
        ls_rule=p.ls_rule, quadrature=p.quadrature, ls_noise=p.ls_noise, tol=float(p.tol))
    return run_mask_method(opt, model, x, target, p, name="igos")
