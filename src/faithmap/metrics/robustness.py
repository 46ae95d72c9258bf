"""Robustness metrics of the Expected Grad-CAM paper (appendix Table 2; Tables 1 and 6).

Local Lipschitz Estimate (Alvarez-Melis and Jaakkola 2018), Max- and Avg-Sensitivity (Yeh et al.
2019), Relative Input and Relative Output Stability (Agarwal et al. 2022). Each needs ``explain``,
a callable ``(x, target) -> saliency`` that re-explains perturbed inputs; the ``n_samples``
perturbed copies of every image are sent through it in batches of at most ``batch_size`` images
(by samples, so each image's generator is consumed in the same order whatever the batch).
Maps (the given ones and the re-explained ones) are upsampled to the input size before the norms
are taken (see :mod:`faithmap.metrics._common`).

Defaults follow Quantus 0.6 (what the paper used): noise, number of samples, normalisation and
which norm divides which. Where Quantus departs from the papers we follow the papers and say so in
the function's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..core.batching import chunks, model_guard, per_image_generators, resolve_batch_size, Seed
from ..errors import FaithmapError
from ..registry import register_metric
from ._common import MetricResult, as_saliency, check_inputs, check_positive_int, need, normalise_by_max, to_input_size

NOISES = ("uniform", "gaussian")


def _noise(gens, images: list[int], k: int, shape, noise: str, low: float, high: float, std: float, device,
           dtype) -> torch.Tensor:
    """The next ``k`` noise samples of each image in ``images``, sample-major: (k * len(images), *shape).

    Each image draws from its own generator, its ``k`` samples in one call when that gives the
    same numbers as drawing them one by one (always for uniform noise; for Gaussian noise when a
    sample has a multiple of 16 values, torch's block size on the CPU), so an image's stream does
    not depend on how the work is chunked.
    """
    n = 1
    for d in shape:
        n *= int(d)
    per_image = []
    for u in images:
        if noise == "uniform":
            per_image.append(torch.rand((k, *shape), generator=gens[u]))
        elif n % 16 == 0:
            per_image.append(torch.randn((k, *shape), generator=gens[u]))
        else:
            per_image.append(torch.stack([torch.randn(shape, generator=gens[u]) for _ in range(k)]))
    out = torch.stack(per_image, 1).reshape(k * len(images), *shape)
    out = out * (high - low) + low if noise == "uniform" else out * std
    return out.to(device=device, dtype=dtype)


def _chunks(b: int, n_samples: int, bs: int):
    """(first sample, samples, images) chunks of at most ``bs`` jobs, samples in increasing order."""
    per = max(1, bs // b)
    groups = [list(range(b))] if per > 1 or b <= bs else [list(range(i, min(b, i + bs))) for i in range(0, b, bs)]
    for s0 in range(0, n_samples, per):
        k = min(per, n_samples - s0)
        for g in groups:
            yield s0, k, g


def _maps(sal: torch.Tensor, size, normalise: bool, absolute: bool) -> torch.Tensor:
    a = to_input_size(sal, size)
    if normalise:
        a = normalise_by_max(a)
    return a.abs() if absolute else a


def perturbation_noise(x: torch.Tensor, n_samples: int, *, noise: str = "uniform", low: float = -0.2,
                       high: float = 0.2, std: float = 0.1, seed: Seed = 0) -> torch.Tensor:
    """All the noise a robustness metric adds, (S, B, C, H, W): for tests and peers' replays."""
    gens = per_image_generators(seed, x.shape[0], "cpu")
    n = _noise(gens, list(range(x.shape[0])), n_samples, x.shape[1:], noise, low, high, std, x.device, x.dtype)
    return n.view(n_samples, *x.shape)


@dataclass(frozen=True)
class Sampling:
    """How a robustness metric perturbs its images and compares the maps (defaults: Max-Sensitivity's).

    ``n_samples`` noisy copies of each image: ``noise`` ``"uniform"`` in ``[low, high]`` or
    ``"gaussian"`` of standard deviation ``std`` on every input value. Maps are upsampled to the input
    size, divided by their maximum with ``normalise`` and taken in magnitude with ``absolute``.
    ``exclude_changed``: a perturbation that changes the predicted class gives NaN; ``need_logits``:
    the objective sees the logits of the image and of its perturbation. At most ``batch_size``
    images a pass; each image's noise from its own generator of ``seed``.
    """

    n_samples: int = 200
    noise: str = "uniform"
    low: float = -0.2
    high: float = 0.2
    std: float = 0.0
    normalise: bool = False
    absolute: bool = False
    exclude_changed: bool = False
    need_logits: bool = False
    batch_size: int | None = None
    seed: Seed = 0


def robustness_samples(name: str, model, x, saliency, target, explain: Callable | None, objective: Callable,
                       sampling: Sampling | None = None, /, **overrides) -> torch.Tensor:
    """Objective values (B, S) over ``n_samples`` perturbations of each image (NaN where excluded).

    ``objective(e, e_p, x, x_p, h, h_p) -> (k,)`` compares, for k jobs, the image's map ``e`` with
    the re-explained map ``e_p``, the inputs, and the logits ``h``/``h_p`` (``None`` unless
    ``need_logits``). ``sampling`` (default :class:`Sampling`'s), with ``overrides`` (any of its
    fields), says how the images are perturbed. With ``exclude_changed`` a perturbation that changes
    the predicted class gives NaN (it is outside the neighbourhood the metric is defined on).
    """
    sampling = replace(sampling or Sampling(), **overrides)
    n_samples, noise, low, high, std = sampling.n_samples, sampling.noise, sampling.low, sampling.high, sampling.std
    normalise, absolute, exclude_changed = sampling.normalise, sampling.absolute, sampling.exclude_changed
    need_logits, batch_size, seed = sampling.need_logits, sampling.batch_size, sampling.seed
    explain = need(name, explain, "explain, a callable (x, target) -> saliency that re-explains perturbed inputs")
    if not callable(explain):
        raise FaithmapError(f"metric {name}: explain must be a callable (x, target) -> saliency")
    x, saliency, target = check_inputs(name, model, x, saliency, target)
    n_samples = check_positive_int(name, "n_samples", n_samples)
    if noise not in NOISES:
        raise FaithmapError(f"metric {name}: unknown noise {noise!r}; choose from: {', '.join(NOISES)}")
    b, c, h, w = x.shape
    e = _maps(saliency, (h, w), normalise, absolute)
    bs = resolve_batch_size(batch_size, x.device)
    gens = per_image_generators(seed, b, "cpu")
    logits = pred = None
    if exclude_changed or need_logits:
        with model_guard(model), torch.no_grad():
            logits = torch.cat([model(x[sl]) for sl in chunks(b, bs)])
        pred = logits.argmax(1)
    out = torch.full((b, n_samples), float("nan"), dtype=torch.float64, device=x.device)
    for s0, k, group in _chunks(b, n_samples, bs):
        s = torch.arange(s0, s0 + k, device=x.device).repeat_interleave(len(group))
        i = torch.tensor(group, device=x.device).repeat(k)
        xp = x[i] + _noise(gens, group, k, (c, h, w), noise, low, high, std, x.device, x.dtype)
        ep = as_saliency(explain(xp, target[i]))
        if not isinstance(ep, torch.Tensor) or ep.shape[0] != len(i):
            raise FaithmapError(f"metric {name}: explain returned maps of shape "
                                f"{tuple(getattr(ep, 'shape', ()))} for {len(i)} images")
        if ep.dim() == 4 and ep.shape[1] == 1:
            ep = ep[:, 0]
        ep = _maps(ep.detach().to(device=x.device, dtype=x.dtype), (h, w), normalise, absolute)
        hp = None
        if exclude_changed or need_logits:
            with model_guard(model), torch.no_grad():
                hp = model(xp)
        val = objective(e[i], ep, x[i], xp, logits[i] if logits is not None else None, hp).double()
        if exclude_changed:
            val = torch.where(hp.argmax(1) == pred[i], val, torch.full_like(val, float("nan")))
        out[i, s] = val
    return out


def nanmax(v: torch.Tensor) -> torch.Tensor:
    """Row-wise maximum ignoring NaN (NaN when a row is all NaN)."""
    m = torch.where(torch.isnan(v), torch.full_like(v, -float("inf")), v).amax(1)
    return torch.where(torch.isnan(v).all(1), torch.full_like(m, float("nan")), m)


def _l2(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm per row, in the input's precision (as Quantus' float32 numpy), as float64."""
    return v.flatten(1).norm(dim=1).double()


# ----------------------------------------------------------------------------------------------
# Max- and Avg-Sensitivity
# ----------------------------------------------------------------------------------------------


def _sensitivity(name, model, x, saliency, target, explain, *, n_samples, radius, relative, normalise, absolute,
                 exclude_changed, batch_size, seed):
    def objective(e, ep, x0, xp, h0, hp):
        num = _l2(e - ep)
        return num / _l2(e) if relative else num

    sampling = Sampling(n_samples=n_samples, noise="uniform", low=-radius, high=radius, normalise=normalise,
                        absolute=absolute, exclude_changed=exclude_changed, batch_size=batch_size, seed=seed)
    return robustness_samples(name, model, x, saliency, target, explain, objective, sampling)


@register_metric("max_sensitivity", higher_is_better=False, category="robustness", needs=("explain",),
                 paper="Yeh et al., NeurIPS 2019",
                 summary="largest relative change of the map under uniform input noise of radius 0.2")
def max_sensitivity(model, x, saliency, target, *, explain: Callable | None = None, n_samples: int = 200,
                    radius: float = 0.2, relative: bool = True, normalise: bool = False, absolute: bool = False,
                    exclude_changed: bool = False, batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Max-Sensitivity (Yeh et al. 2019, eq. 2): ``max_s ||Phi(x + n_s) - Phi(x)|| / ||Phi(x)||``.

    ``n_s`` uniform in ``[-radius, radius]`` on every input value (the L-inf ball of the paper),
    ``n_samples`` draws; Frobenius norms of the input-size maps. ``relative=True`` divides by
    ``||Phi(x)||`` as Quantus 0.6 does (the paper's definition has no denominator:
    ``relative=False``). ``exclude_changed`` leaves out perturbations that change the predicted
    class (Quantus' ``return_nan_when_prediction_changes``, off by default). Lower is better.
    """
    v = _sensitivity("max_sensitivity", model, x, saliency, target, explain, n_samples=n_samples, radius=radius,
                     relative=relative, normalise=normalise, absolute=absolute, exclude_changed=exclude_changed,
                     batch_size=batch_size, seed=seed)
    return nanmax(v)


@register_metric("avg_sensitivity", higher_is_better=False, category="robustness", needs=("explain",),
                 paper="Yeh et al., NeurIPS 2019",
                 summary="mean relative change of the map under uniform input noise of radius 0.2")
def avg_sensitivity(model, x, saliency, target, *, explain: Callable | None = None, n_samples: int = 200,
                    radius: float = 0.2, relative: bool = True, normalise: bool = False, absolute: bool = False,
                    exclude_changed: bool = False, batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Avg-Sensitivity (Yeh et al. 2019, eq. 3): the mean instead of the maximum of
    :func:`max_sensitivity`'s ratios (NaN samples ignored). Lower is better."""
    v = _sensitivity("avg_sensitivity", model, x, saliency, target, explain, n_samples=n_samples, radius=radius,
                     relative=relative, normalise=normalise, absolute=absolute, exclude_changed=exclude_changed,
                     batch_size=batch_size, seed=seed)
    return torch.nanmean(v, 1)


# ----------------------------------------------------------------------------------------------
# Local Lipschitz Estimate
# ----------------------------------------------------------------------------------------------


@register_metric("local_lipschitz", higher_is_better=False, category="robustness", needs=("explain",),
                 paper="Alvarez-Melis & Jaakkola, arXiv 1806.08049, 2018", aliases=("local_lipschitz_estimate",),
                 summary="largest ratio of map change to input change under Gaussian input noise (std 0.1)")
def local_lipschitz(model, x, saliency, target, *, explain: Callable | None = None, n_samples: int = 200,
                    std: float = 0.1, normalise: bool = True, absolute: bool = False, exclude_changed: bool = False,
                    batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Local Lipschitz Estimate (Alvarez-Melis and Jaakkola 2018, eq. 5):
    ``max_s ||Phi(x) - Phi(x')||_2 / (||x - x'||_2 + 1e-10)``, ``x' = x + N(0, std^2)``.

    The paper maximises over a ball with Bayesian optimisation; like Quantus 0.6 we take the
    maximum over ``n_samples`` Gaussian draws. Maps are normalised by their maximum (Quantus'
    default, per image here). Lower is better.
    """
    def objective(e, ep, x0, xp, h0, hp):
        return _l2(e - ep) / (_l2(x0 - xp) + 1e-10)

    sampling = Sampling(n_samples=n_samples, noise="gaussian", low=0.0, high=0.0, std=std, normalise=normalise,
                        absolute=absolute, exclude_changed=exclude_changed, batch_size=batch_size, seed=seed)
    v = robustness_samples("local_lipschitz", model, x, saliency, target, explain, objective, sampling)
    return nanmax(v)


# ----------------------------------------------------------------------------------------------
# Relative Input / Output Stability
# ----------------------------------------------------------------------------------------------


def _relative(v: torch.Tensor, ref: torch.Tensor, eps: float) -> torch.Tensor:
    """Element-wise ``v / ref`` with zeros of ``ref`` replaced by ``eps`` (Agarwal et al.)."""
    return v / (ref + (ref == 0).to(ref.dtype) * eps)


@register_metric("relative_input_stability", higher_is_better=False, category="robustness", needs=("explain",),
                 paper="Agarwal et al., arXiv 2022", aliases=("ris",),
                 summary="largest relative map change over relative input change, among perturbations keeping the class")
def relative_input_stability(model, x, saliency, target, *, explain: Callable | None = None, n_samples: int = 200,
                             low: float = 0.02, high: float = 0.2, eps_min: float = 1e-6, normalise: bool = False,
                             absolute: bool = False, exclude_changed: bool = True, batch_size: int | None = None,
                             seed: int = 0) -> torch.Tensor:
    """Relative Input Stability (Agarwal et al. 2022, eq. 2):
    ``max_{x'} ||(e_x - e_x')/e_x||_2 / max(||(x - x')/x||_2, eps_min)`` over ``x'`` with the same
    predicted class.

    ``x' = x + U(low, high)`` per value: Quantus 0.6's default noise (its ``upper_bound=0.2`` with
    the default ``lower_bound=0.02``). Zeros of a denominator are replaced by ``eps_min``.
    Differences from Quantus: a perturbation that changes the class is *left out* of the
    maximum (Quantus sets it to NaN and then takes ``np.max``, so one such perturbation makes the
    whole score NaN), and the input term is clamped at ``eps_min`` as in the paper (Quantus adds
    ``eps_min`` only when the norm is exactly 0). Lower is better.
    """
    def objective(e, ep, x0, xp, h0, hp):
        num = _l2(_relative(e - ep, e, eps_min))
        den = _l2(_relative(x0 - xp, x0, eps_min)).clamp_min(eps_min)
        return num / den

    sampling = Sampling(n_samples=n_samples, noise="uniform", low=low, high=high, normalise=normalise,
                        absolute=absolute, exclude_changed=exclude_changed, need_logits=False, batch_size=batch_size,
                        seed=seed)
    v = robustness_samples("relative_input_stability", model, x, saliency, target, explain, objective, sampling)
    return nanmax(v)


@register_metric("relative_output_stability", higher_is_better=False, category="robustness", needs=("explain",),
                 paper="Agarwal et al., arXiv 2022", aliases=("ros",),
                 summary="largest relative map change over logit change, among perturbations keeping the class")
def relative_output_stability(model, x, saliency, target, *, explain: Callable | None = None, n_samples: int = 200,
                              low: float = 0.02, high: float = 0.2, eps_min: float = 1e-6, normalise: bool = False,
                              absolute: bool = False, exclude_changed: bool = True, batch_size: int | None = None,
                              seed: int = 0) -> torch.Tensor:
    """Relative Output Stability (Agarwal et al. 2022, eq. 5):
    ``max_{x'} ||(e_x - e_x')/e_x||_2 / max(||h(x) - h(x')||_2, eps_min)`` with ``h`` the logit
    vector, over ``x'`` with the same predicted class; noise and the differences from Quantus as
    :func:`relative_input_stability`. Lower is better.
    """
    def objective(e, ep, x0, xp, h0, hp):
        num = _l2(_relative(e - ep, e, eps_min))
        den = _l2(h0 - hp).clamp_min(eps_min)
        return num / den

    sampling = Sampling(n_samples=n_samples, noise="uniform", low=low, high=high, normalise=normalise,
                        absolute=absolute, exclude_changed=exclude_changed, need_logits=True, batch_size=batch_size,
                        seed=seed)
    v = robustness_samples("relative_output_stability", model, x, saliency, target, explain, objective, sampling)
    return nanmax(v)


__all__ = ["avg_sensitivity", "local_lipschitz", "max_sensitivity", "perturbation_noise", "relative_input_stability",
           "relative_output_stability", "robustness_samples", "MetricResult", "Sampling"]
