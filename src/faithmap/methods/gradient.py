"""The gradient engine: every gradient, path-integral and noise-average method in one batched loop.

Each method here is a weighted average of per-sample attributions ``a_ik = grad f(z_ik) * m_ik``
over ``S`` samples per image: the sample points ``z_ik`` (the image, points on a straight path,
noisy copies), the weights ``w_k`` (quadrature weights or ``1/S``) and the optional multiplier
``m_ik`` (the input, or input minus reference) are what tell the methods apart.
:func:`path_average` evaluates ``sum_k w_k a_ik`` (and ``sum_k w_k a_ik**2`` when asked) with
rows laid out image-major (image 0's samples, then image 1's, ...), packed into forward/backward
passes of at most ``batch_size`` images, so memory is bounded by ``batch_size`` whatever ``S``
and ``B``. Random draws come from one generator per image (``per_image_generators``), taken in
the order of that image's samples, so a batched run equals one-by-one runs with the same seed.

Methods (``f`` is the target's logit by default, ``score=``):

* ``saliency``: ``grad f(x)`` (Simonyan, Vedaldi & Zisserman 2014).
* ``gradxinput``: ``x * grad f(x)`` (Shrikumar et al. 2016).
* ``ig``: ``(x - b) * int_0^1 grad f(b + a (x - b)) da`` (Sundararajan, Taly & Yan 2017, eq. 1)
  by Gauss-Legendre or Riemann (left, right, middle, trapezoid) quadrature.
* ``smoothgrad`` / ``smoothgrad2`` / ``vargrad``: mean, mean of squares and variance of the
  gradient over ``x + N(0, sigma^2)`` (Smilkov et al. 2017; Adebayo et al. 2018).
* ``expectedgradients``: ``E_{x'~D, a~U(0,1)} (x - x') * grad f(x' + a (x - x'))`` (Erion et al. 2021).
* ``guidedbackprop`` / ``deconvnet``: the gradient with modified rectifier backward passes
  (Springenberg et al. 2015; Zeiler & Fergus 2014), see :func:`rectifier_rule`.

Every method returns the raw attribution ``(B, C, H, W)`` and a saliency map ``(B, H, W)`` made by
``reduce`` over channels (:data:`REDUCTIONS`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..core.batching import DEFAULT_BATCH_SIZE, chunks, model_guard, per_image_generators, resolve_batch_size, Seed
from ..explanation import Explanation
from ..core.perturb import BASELINES, make_baseline
from ..core.quadrature import QUADRATURES, check_count, quadrature_nodes
from ..core.scores import score_of
from ..errors import FaithmapError
from ..registry import register_method
from .rules import apply_rules, rectifier_cap, rectifier_composite

Rows = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""``rows(image_idx, sample_idx) -> (points, multiplier or None)`` for a chunk of rows."""


# ----------------------------------------------------------------------------------------------
# channel reduction
# ----------------------------------------------------------------------------------------------
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda a: a.sum(1),
    "abs-sum": lambda a: a.abs().sum(1),
    "abs-max": lambda a: a.abs().amax(1),
    "l2": lambda a: a.norm(dim=1),
}
"""(B, C, H, W) attribution -> (B, H, W) saliency. ``sum`` keeps the sign (positive = evidence for
the target; the per-pixel share of the completeness sum for IG, gradient x input and expected
gradients); ``abs-sum`` (the default of plain gradients) sums magnitudes; ``abs-max`` is
Simonyan et al.'s map (max over channels of ``|grad|``); ``l2`` the channel norm."""


def reduce_channels(attribution: torch.Tensor, reduce: str) -> torch.Tensor:
    """Saliency (B, H, W) from an attribution (B, C, H, W) by one of :data:`REDUCTIONS`."""
    try:
        fn = REDUCTIONS[reduce]
    except KeyError:
        raise FaithmapError(f"unknown reduce {reduce!r}; choose from: {', '.join(REDUCTIONS)}") from None
    return fn(attribution)


# ----------------------------------------------------------------------------------------------
# guided backprop / deconvnet: rectifier rules of the rules seam (faithmap.methods.rules)
# ----------------------------------------------------------------------------------------------
RULES = ("guided", "deconv")


@contextlib.contextmanager
def rectifier_rule(model: nn.Module, rule: str | None) -> Iterator[None]:
    """Inside the block, every rectifier module of ``model`` back-propagates by ``rule``.

    ``rule="guided"`` (guided backprop): ``dL/dx = relu(dL/dy) * [0 < x < c]``;
    ``rule="deconv"`` (deconvnet): ``dL/dx = relu(dL/dy) * [x < c]``; ``None``: nothing changes.
    Rectifiers are ``nn.ReLU`` (c = inf), ``nn.ReLU6`` (c = 6) and ``nn.Hardtanh(0, c)``; each is read
    as ``min(relu(x), c)``: the guided/deconv rule applies to its rectifying part and the clip at
    ``c`` keeps its true gradient, so for ReLU these are exactly the rules of Springenberg et al. and
    Zeiler & Fergus (and captum's). Forward values are unchanged. A thin wrapper of
    :func:`faithmap.methods.rules.apply_rules` with :func:`~faithmap.methods.rules.rectifier_composite`:
    in-place rectifiers run out of place while the block runs; hooks and ``inplace`` flags are
    restored in ``finally``. Rectifiers called functionally (``F.relu``) are not seen.
    """
    if rule is None:
        yield
        return
    if rule not in RULES:
        raise FaithmapError(f"unknown rectifier rule {rule!r}; choose from: {', '.join(RULES)}")
    with apply_rules(model, rectifier_composite(rule)):
        yield


# ----------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------
def input_gradient(model: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, target: torch.Tensor,
                   score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``d score(model(z))[target] / dz`` for a batch (each row's score depends on its own input only)."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        s = score(model(z), target)
        if not s.requires_grad:  # the score does not depend on the input
            return torch.zeros_like(z)
        (g,) = torch.autograd.grad(s.sum(), z, allow_unused=True)
    return torch.zeros_like(z) if g is None else g


def path_average(model, x: torch.Tensor, target: torch.Tensor, samples: int, rows: Rows, *,
                 weights: torch.Tensor | None = None, score: str = "logit", batch_size: int | None = DEFAULT_BATCH_SIZE,
                 squares: bool = False, rule: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``sum_k w_k a_ik`` (and ``sum_k w_k a_ik**2`` with ``squares``) for every image ``i``.

    ``a_ik = grad f(z_ik) * m_ik`` where ``rows(image_idx, sample_idx)`` gives the points ``z`` and
    multipliers ``m`` (None = 1) of a chunk of rows. Rows are image-major and go through the model
    ``batch_size`` at a time, under :func:`model_guard` (eval mode, frozen parameters: backward
    passes compute input gradients only) and :func:`rectifier_rule` ``rule``. ``weights`` (S,)
    default to ``1 / S``.
    """
    b = x.shape[0]
    n = b * samples
    bs = resolve_batch_size(batch_size, x.device)
    w = (torch.full((samples,), 1.0 / samples, device=x.device, dtype=x.dtype) if weights is None
         else weights.to(device=x.device, dtype=x.dtype))
    fn = score_of(score)
    acc = torch.zeros_like(x)
    acc_sq = torch.zeros_like(x) if squares else None
    with model_guard(model), rectifier_rule(model, rule):
        for sl in chunks(n, bs):
            r = torch.arange(sl.start, sl.stop, device=x.device)
            idx, k = torch.div(r, samples, rounding_mode="floor"), r % samples
            z, mult = rows(idx, k)
            a = input_gradient(model, z, target[idx], fn)
            if mult is not None:
                a = a * mult
            wk = w[k].view(-1, 1, 1, 1)
            acc.index_add_(0, idx, a * wk)
            if acc_sq is not None:
                acc_sq.index_add_(0, idx, a * a * wk)
    return acc, acc_sq


def _finish(name: str, attribution: torch.Tensor, target: torch.Tensor, reduce: str, params: dict,
            extras: dict | None = None) -> Explanation:
    return Explanation(saliency=reduce_channels(attribution, reduce), target=target, method=name, params=params,
                       attribution=attribution, extras=dict(extras or {}))


# ----------------------------------------------------------------------------------------------
# quadrature and baselines
# ----------------------------------------------------------------------------------------------


def baselines_for(model, x: torch.Tensor, kind: str | torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Baseline images (B, C, H, W) for ``x``: a :func:`make_baseline` kind (random kinds draw from each
    image's generator) or a tensor broadcastable to ``x``."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(kind, torch.Tensor):
        try:
            return make_baseline(kind, x).contiguous()
        except RuntimeError:
            raise FaithmapError(f"baseline of shape {tuple(kind.shape)} does not fit inputs of shape "
                                f"{tuple(x.shape)}") from None
    if not isinstance(kind, str) or kind not in BASELINES:
        raise FaithmapError(f"unknown baseline {kind!r}; choose from: {', '.join(BASELINES)} or a tensor")
    if kind in ("noise", "uniform"):
        return torch.cat([make_baseline(kind, x[i:i + 1], mean, std, generator=gens[i]) for i in range(x.shape[0])])
    return make_baseline(kind, x, mean, std)


# ----------------------------------------------------------------------------------------------
# the methods
# ----------------------------------------------------------------------------------------------
def _single(model, x, target, *, rule=None, times_input=False, score="logit", batch_size=None):
    rows = (lambda idx, k: (x[idx], x[idx])) if times_input else (lambda idx, k: (x[idx], None))
    acc, _ = path_average(model, x, target, 1, rows, score=score, batch_size=batch_size, rule=rule)
    return acc


_SIGNED = "sum"
_MAGNITUDE = "abs-sum"


@register_method(
    "saliency", family="gradient", paper="Simonyan, Vedaldi & Zisserman, ICLR Workshop 2014",
    aliases=("gradient", "vanilla-gradient"),
    summary="vanilla gradient of the target score with respect to the input pixels",
)
def saliency(model, x: torch.Tensor, target: torch.Tensor, *, score: str = "logit", reduce: str = _MAGNITUDE,
             batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Gradient ``d f_c(x) / dx`` (Simonyan et al., ICLR workshop 2014, sec. 3.1).

    ``reduce="abs-max"`` gives the paper's map (max over channels of the absolute gradient); the
    default sums absolute values over channels.
    """
    reduce_channels(x[:1, :, :1, :1], reduce)
    a = _single(model, x, target, score=score, batch_size=batch_size)
    return _finish("saliency", a, target, reduce, dict(score=score, reduce=reduce))


@register_method(
    "gradxinput", family="gradient", paper="Shrikumar et al., arXiv 1605.01713, 2016",
    aliases=("gradientxinput", "inputxgradient", "gradient-x-input", "input-x-gradient"),
    summary="gradient times input (signed channel sum)",
)
def gradxinput(model, x: torch.Tensor, target: torch.Tensor, *, score: str = "logit", reduce: str = _SIGNED,
               batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """``x * d f_c(x) / dx`` (Shrikumar et al. 2016), in the model's (normalised) input space."""
    reduce_channels(x[:1, :, :1, :1], reduce)
    a = _single(model, x, target, times_input=True, score=score, batch_size=batch_size)
    return _finish("gradxinput", a, target, reduce, dict(score=score, reduce=reduce))


@register_method(
    "guidedbackprop", family="gradient", paper="Springenberg et al., ICLR Workshop 2015",
    aliases=("guided-backprop", "guidedbp", "guided-backpropagation"), 
    summary="guided backpropagation: only positive gradients pass through active rectifiers (ReLU, ReLU6)",
)
def guidedbackprop(model, x: torch.Tensor, target: torch.Tensor, *, score: str = "logit", reduce: str = _MAGNITUDE,
                   batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Guided backpropagation (Springenberg et al., ICLR workshop 2015, sec. 3.4, fig. 1):
    at every rectifier ``dL/dx = relu(dL/dy) * [0 < x < c]`` (see :func:`rectifier_rule`)."""
    reduce_channels(x[:1, :, :1, :1], reduce)
    a = _single(model, x, target, rule="guided", score=score, batch_size=batch_size)
    return _finish("guidedbackprop", a, target, reduce, dict(score=score, reduce=reduce))


@register_method(
    "deconvnet", family="gradient", paper="Zeiler & Fergus, ECCV 2014", aliases=("deconv", "deconvolution"),
    summary="deconvnet: rectifiers pass the positive part of the backward signal, ignoring the forward gate",
)
def deconvnet(model, x: torch.Tensor, target: torch.Tensor, *, score: str = "logit", reduce: str = _MAGNITUDE,
              batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Deconvnet (Zeiler & Fergus, ECCV 2014, sec. 2.1) as a modified backward pass
    (Springenberg et al. 2015, fig. 1): at every rectifier ``dL/dx = relu(dL/dy) * [x < c]``."""
    reduce_channels(x[:1, :, :1, :1], reduce)
    a = _single(model, x, target, rule="deconv", score=score, batch_size=batch_size)
    return _finish("deconvnet", a, target, reduce, dict(score=score, reduce=reduce))


@register_method(
    "ig", family="gradient", paper="Sundararajan, Taly & Yan, ICML 2017", default=True,
    aliases=("integratedgradients", "integrated-gradients"),
    summary="Integrated Gradients from a baseline (black, blur, noise, tensor) by Gauss-Legendre or Riemann sums",
    fast={"steps": 8},
)
def integrated_gradients(model, x: torch.Tensor, target: torch.Tensor, *, baseline: str | torch.Tensor = "black",
                         steps: int = 50, quadrature: str = "gausslegendre", score: str = "logit",
                         reduce: str = _SIGNED, batch_size: int | None = DEFAULT_BATCH_SIZE,
                         seed: Seed = 0) -> Explanation:
    """Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017, eq. 1 and 3):
    ``(x - b) * sum_k w_k grad f(b + a_k (x - b))`` with the nodes and weights of
    ``quadrature`` (:func:`quadrature_nodes`: ``gausslegendre``, ``left``, ``right``, ``middle``,
    ``trapezoid``) and ``steps`` nodes. ``baseline``: ``black`` (pixel 0, the paper's), ``blur``,
    ``uniform`` (pixel noise, drawn from the image's seeded generator), ``zero`` (0 in model
    space), ``white``, ``gray``, or a tensor. Completeness: ``attribution.sum() ~ f(x) - f(b)``.
    """
    reduce_channels(x[:1, :, :1, :1], reduce)
    alphas, weights = quadrature_nodes(steps, quadrature)
    gens = per_image_generators(seed, x.shape[0], x.device)
    base = baselines_for(model, x, baseline, gens)
    diff = x - base
    al = alphas.to(device=x.device, dtype=x.dtype)

    def rows(idx, k):
        return base[idx] + al[k].view(-1, 1, 1, 1) * diff[idx], None

    acc, _ = path_average(model, x, target, len(al), rows, weights=weights, score=score, batch_size=batch_size)
    a = acc * diff
    name = baseline if isinstance(baseline, str) else "tensor"
    return _finish("ig", a, target, reduce, dict(baseline=name, steps=len(al), quadrature=quadrature,
                                                 score=score, reduce=reduce))


# -- SmoothGrad family -----------------------------------------------------------------------------
SMOOTHGRAD_VARIANTS = ("smoothgrad", "smoothgrad2", "vargrad")


def noise_sigma(x: torch.Tensor, noise_level: float, sigma: float | None = None) -> torch.Tensor:
    """Per-image noise std (B,): ``sigma`` when given, else ``noise_level * (max(x_i) - min(x_i))``
    over the image's values in model space (SmoothGrad, Smilkov et al. 2017, sec. 3.2)."""
    b = x.shape[0]
    if sigma is not None:
        if sigma < 0:
            raise FaithmapError(f"sigma must be non-negative, got {sigma}")
        return torch.full((b,), float(sigma), device=x.device, dtype=x.dtype)
    if noise_level < 0:
        raise FaithmapError(f"noise_level must be non-negative, got {noise_level}")
    flat = x.flatten(1)
    return noise_level * (flat.amax(1) - flat.amin(1))


def _smooth(name: str, model, x, target, *, samples, noise_level, sigma, of, score, reduce, batch_size, seed):
    """SmoothGrad / SmoothGrad^2 / VarGrad of the gradient (``of="gradient"``) or of gradient x input.

    Noise: ``x + sigma_i * eps``, ``eps ~ N(0, I)``, with ``sigma_i = noise_level * (max - min)`` of
    image i's values in model space (the SmoothGrad paper's relative noise level; 0.15 is in its
    recommended 10-20 %), or the absolute ``sigma`` when given. The k-th noise sample of image i
    is the k-th ``torch.randn(C, H, W)`` drawn from a generator seeded with ``seed``, so batched
    equals one-by-one. ``of="gradxinput"`` smooths ``z * grad f(z)`` at the noisy points instead.
    """
    reduce_channels(x[:1, :, :1, :1], reduce)
    s = check_count("samples", samples)
    if of not in ("gradient", "gradxinput"):
        raise FaithmapError(f"unknown of={of!r}; choose gradient or gradxinput")
    sig = noise_sigma(x, noise_level, sigma)
    gens = per_image_generators(seed, x.shape[0], x.device)
    shape = tuple(x.shape[1:])

    def rows(idx, k):
        eps = torch.stack([torch.randn(shape, generator=gens[i], device=x.device, dtype=x.dtype) for i in idx.tolist()])
        z = x[idx] + sig[idx].view(-1, 1, 1, 1) * eps
        return z, (z if of == "gradxinput" else None)

    mean, sq = path_average(model, x, target, s, rows, score=score, batch_size=batch_size,
                            squares=name != "smoothgrad")
    a = {"smoothgrad": lambda: mean, "smoothgrad2": lambda: sq, "vargrad": lambda: sq - mean * mean}[name]()
    params = dict(samples=s, noise_level=noise_level, sigma=sigma, of=of, score=score, reduce=reduce, seed=seed)
    return _finish(name, a, target, reduce, params, {"sigma": sig})


@register_method(
    "smoothgrad", family="gradient", paper="Smilkov et al., arXiv 1706.03825, 2017", fast={"samples": 4},
    summary="SmoothGrad: gradient averaged over Gaussian-noised copies of the input",
)
def smoothgrad(model, x: torch.Tensor, target: torch.Tensor, *, samples: int = 50, noise_level: float = 0.15,
               sigma: float | None = None, of: str = "gradient", score: str = "logit", reduce: str = _MAGNITUDE,
               batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017, eq. 4): ``mean_k grad f(x + noise_k)``; see :func:`_smooth`."""
    return _smooth("smoothgrad", model, x, target, samples=samples, noise_level=noise_level, sigma=sigma, of=of,
                   score=score, reduce=reduce, batch_size=batch_size, seed=seed)


@register_method(
    "smoothgrad2", family="gradient", paper="Hooker et al., NeurIPS 2019", fast={"samples": 4},
    aliases=("smoothgrad-sq", "smoothgrad_sq", "smoothgradsq"),
    summary="SmoothGrad^2: mean of the squared gradient over Gaussian-noised copies of the input",
)
def smoothgrad2(model, x: torch.Tensor, target: torch.Tensor, *, samples: int = 50, noise_level: float = 0.15,
                sigma: float | None = None, of: str = "gradient", score: str = "logit", reduce: str = _SIGNED,
                batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """SmoothGrad^2 (Hooker et al., NeurIPS 2019, sec. 3): ``mean_k (grad f(x + noise_k))**2``;
    see :func:`_smooth`."""
    return _smooth("smoothgrad2", model, x, target, samples=samples, noise_level=noise_level, sigma=sigma, of=of,
                   score=score, reduce=reduce, batch_size=batch_size, seed=seed)


@register_method(
    "vargrad", family="gradient", paper="Adebayo et al., NeurIPS 2018", fast={"samples": 4},
    summary="VarGrad: variance of the gradient over Gaussian-noised copies of the input",
)
def vargrad(model, x: torch.Tensor, target: torch.Tensor, *, samples: int = 50, noise_level: float = 0.15,
            sigma: float | None = None, of: str = "gradient", score: str = "logit", reduce: str = _SIGNED,
            batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """VarGrad (Adebayo et al., ICLR workshop 2018): ``mean_k g_k**2 - (mean_k g_k)**2`` of the
    gradients ``g_k`` at noisy copies (the population variance, as captum); see :func:`_smooth`."""
    return _smooth("vargrad", model, x, target, samples=samples, noise_level=noise_level, sigma=sigma, of=of,
                   score=score, reduce=reduce, batch_size=batch_size, seed=seed)


# -- Expected Gradients ----------------------------------------------------------------------------
@register_method(
    "expectedgradients", family="gradient", paper="Erion et al., Nature Machine Intelligence 2021", fast={"samples": 4},
    aliases=("expected-gradients",),
    summary="Expected Gradients: IG averaged over references drawn from a set and random path points",
)
def expected_gradients(model, x: torch.Tensor, target: torch.Tensor, *,
                       references: str | torch.Tensor = "blur,uniform", samples: int = 50, score: str = "logit",
                       reduce: str = _SIGNED, batch_size: int | None = DEFAULT_BATCH_SIZE,
                       seed: Seed = 0) -> Explanation:
    """Expected Gradients (Erion, Janizek, Sturmfels, Lundberg & Lee, Nature MI 2021, eq. 3-4):
    ``mean_k (x - x'_k) * grad f(x'_k + a_k (x - x'_k))`` with ``a_k ~ U(0, 1)`` and references
    ``x'_k`` drawn uniformly from ``references``: a tensor (N, C, H, W) of reference images in model
    space (the paper draws from the training set), or a comma-separated list of baseline kinds
    (``blur``, ``black``, ``uniform``, ...; see ``make_baseline``) built for each image, a kind
    picked uniformly per sample and ``uniform`` noise drawn afresh per sample. The default
    ``blur,uniform`` needs no data set: the image's own blur and pixel noise.
    Per sample the image's generator draws the reference index, then (for ``uniform``) the noise,
    then ``a``; ``extras["reference_index"]`` and ``extras["alphas"]`` (B, S) record them.
    """
    reduce_channels(x[:1, :, :1, :1], reduce)
    s = check_count("samples", samples)
    b = x.shape[0]
    gens = per_image_generators(seed, b, x.device)
    shape = tuple(x.shape[1:])
    mean_, std_ = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(references, torch.Tensor):
        refs = references.to(device=x.device, dtype=x.dtype)
        if refs.dim() == 3:
            refs = refs.unsqueeze(0)
        if refs.dim() != 4 or tuple(refs.shape[1:]) != shape or refs.shape[0] == 0:
            raise FaithmapError(f"references must be (N, {', '.join(map(str, shape))}) images, got "
                                f"{tuple(references.shape)}")
        kinds: list[str] = []
        n_refs = refs.shape[0]
        fixed: dict[str, torch.Tensor] = {}
    else:
        kinds = [k.strip().lower() for k in str(references).split(",") if k.strip()]
        bad = [k for k in kinds if k not in BASELINES]
        if not kinds or bad:
            raise FaithmapError(f"unknown reference kind {(bad or [references])[0]!r}; give a tensor of reference "
                                f"images or kinds from: {', '.join(BASELINES)}")
        n_refs = len(kinds)
        fixed = {k: make_baseline(k, x, mean_, std_) for k in kinds if k not in ("noise", "uniform")}
    ref_index = torch.zeros(b, s, dtype=torch.long, device=x.device)
    alphas = torch.zeros(b, s, device=x.device, dtype=x.dtype)

    def rows(idx, k):
        refs_rows = []
        for i, kk in zip(idx.tolist(), k.tolist()):
            g = gens[i]
            j = int(torch.randint(n_refs, (1,), generator=g, device=x.device))
            if kinds and kinds[j] in ("noise", "uniform"):
                u = torch.rand(shape, generator=g, device=x.device, dtype=x.dtype)
                mean = mean_.to(x)[0] if mean_ is not None else 0.0
                std = std_.to(x)[0] if std_ is not None else 1.0
                ref = (u - mean) / std
            elif kinds:
                ref = fixed[kinds[j]][i]
            else:
                ref = refs[j]
            alphas[i, kk] = torch.rand((), generator=g, device=x.device, dtype=x.dtype)
            ref_index[i, kk] = j
            refs_rows.append(ref)
        ref_b = torch.stack(refs_rows)
        d = x[idx] - ref_b
        return ref_b + alphas[idx, k].view(-1, 1, 1, 1) * d, d

    acc, _ = path_average(model, x, target, s, rows, score=score, batch_size=batch_size)
    params = dict(references=references if isinstance(references, str) else "tensor", samples=s, score=score,
                  reduce=reduce, seed=seed)
    return _finish("expectedgradients", acc, target, reduce, params,
                   {"reference_index": ref_index, "alphas": alphas, "reference_kinds": kinds})


__all__ = ["REDUCTIONS", "QUADRATURES", "RULES", "SMOOTHGRAD_VARIANTS", "baselines_for", "input_gradient",
           "noise_sigma", "path_average", "quadrature_nodes", "rectifier_cap", "rectifier_rule",
           "reduce_channels"]
