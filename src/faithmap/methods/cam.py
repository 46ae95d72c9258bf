"""The CAM engine: class activation maps on a layer's grid.

Every CAM method here is ``ReLU(sum_k w_k A^k)`` (or a per-position variant of it) over the
activations ``A`` (B, K, h, w) of one layer; a method is its **weighting rule** — how ``w`` comes
from the activations and the gradients ``G = d score / d A`` — plus, for Score-CAM and
Ablation-CAM, a **scoring pass** that replaces the gradients with forward passes on masked inputs
or ablated activations. The engine does the rest once for all of them:

* **layer lookup**: ``layer=`` names a module (``features.17``); by default the model's
  ``cam_layer`` or the architecture's usual layer (:func:`faithmap.models.layers.default_cam_layer`);
  vision-transformer tokens (B, N, D) are read as a grid by dropping the class token(s) and reshaping
  the patch tokens (ViT-B/16: 196 tokens -> 14 x 14), Swin's channels-last maps are permuted;
* **hooks** live only inside a context manager that removes them in ``finally``; the model runs
  under :func:`faithmap.core.batching.model_guard` (eval mode, frozen parameters, both restored);
* **gradients** are taken at the layer: its output is detached into a leaf that requires grad, so
  a backward pass runs through the layers after it only;
* **batching**: targets are per image and every forward (the gradient passes, Score-CAM's masked
  inputs, Ablation-CAM's ablated copies, the samples of Smooth Grad-CAM++, Integrated and Expected
  Grad-CAM) goes through the model in chunks of at most ``batch_size`` images; random draws come
  from one generator per image, so a batch gives the maps of its images explained one by one.

Maps stay on the layer's grid (``resolution="layer"``); ``Explanation.upsampled(size)`` gives them
at input size. ``extras["layer"]`` names the layer used, ``extras["activations"]`` holds its
activations (B, K, h, w) and ``extras["weights"]`` the channel weights (B, K) of the methods that
have them.

Where a paper and pytorch-grad-cam (1.5.7) differ, ``variant="paper"`` (the default) follows the
paper and ``variant="pytorch-grad-cam"`` reproduces the peer library; see each method.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..core.batching import DEFAULT_BATCH_SIZE, chunks, model_guard, per_image_generators, resolve_batch_size, Seed
from ..explanation import Explanation
from ..core.perturb import make_baseline, upsample
from ..core.scores import score_of
from ..errors import FaithmapError
from ..models.layers import default_cam_layer, from_grid, get_layer, layer_layout, to_grid
from ..registry import register_method

VARIANTS = ("paper", "pytorch-grad-cam")
PEER_EPS = {"gradcam++": 1e-6, "xgradcam": 1e-7, "scorecam": 1e-8}
"""The constants pytorch-grad-cam 1.5.7 adds to denominators (``variant="pytorch-grad-cam"``)."""


# ----------------------------------------------------------------------------------------------
# layer lookup and the hook
# ----------------------------------------------------------------------------------------------
@dataclass
class CamLayer:
    """The layer a CAM reads: its dotted name, the module, and the network's architecture name."""

    name: str
    module: nn.Module
    net: nn.Module
    arch: str | None = None


def resolve_layer(model, layer: str | None = None) -> CamLayer:
    """The CAM layer of ``model``: ``layer`` if given, else ``model.cam_layer``, else the default of
    the architecture (or the last module with a spatial output)."""
    net = model.net
    arch = getattr(model, "name", None)
    if layer is not None and not isinstance(layer, str):
        raise FaithmapError(f"layer must be a layer name such as 'features.17', got {type(layer).__name__}")
    name = layer or getattr(model, "cam_layer", None) or default_cam_layer(net, arch, getattr(model, "input_size", 224))
    return CamLayer(name, get_layer(net, name), net, arch)


@dataclass
class Tap:
    """What the forward hook on the CAM layer does and what it saw at the last forward pass.

    ``mode``: ``capture`` keeps the output (detached); ``grad`` replaces it by a leaf that requires
    grad (kept in ``value``) so that gradients can be taken at the layer; ``replace`` swaps the
    output for ``replacement(output)``.
    """

    layer: CamLayer
    input_hw: tuple[int, int]
    mode: str = "capture"
    value: torch.Tensor | None = None
    layout: str | None = None
    calls: int = 0
    replacement: Callable[[torch.Tensor], torch.Tensor] | None = None

    def hook(self, module, inputs, output):  # noqa: D102
        if not isinstance(output, torch.Tensor):
            raise FaithmapError(f"layer {self.layer.name} returns {type(output).__name__}, not a tensor; "
                                f"name another layer")
        self.calls += 1
        if self.calls > 1:
            raise FaithmapError(f"layer {self.layer.name} runs more than once per forward pass; name another layer")
        if self.layout is None:
            self.layout = layer_layout(self.layer.net, self.layer.arch, output)
        if self.mode == "grad":
            leaf = output.detach().requires_grad_(True)
            self.value = leaf
            return leaf.clone()  # in-place operations after the layer must not touch the leaf
        if self.mode == "replace":
            return self.replacement(output)
        self.value = output.detach().clone()  # in-place operations after the layer must not change it
        return None

    def forward(self, model, x: torch.Tensor, mode: str = "capture",
                replacement: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``model(x)`` with the hook in ``mode``; returns the logits."""
        self.mode, self.calls, self.value, self.replacement = mode, 0, None, replacement
        logits = model(x)
        if self.calls == 0:
            raise FaithmapError(f"layer {self.layer.name} did not run in the forward pass; name another layer")
        return logits

    def grid(self, t: torch.Tensor) -> torch.Tensor:
        """A layer-shaped tensor (output or gradient) as a (B, K, h, w) grid."""
        return to_grid(t, self.layout, self.input_hw)


@contextlib.contextmanager
def tapped(layer: CamLayer, input_hw: Sequence[int]) -> Iterator[Tap]:
    """A :class:`Tap` whose forward hook exists only inside the ``with`` block."""
    tap = Tap(layer, (int(input_hw[0]), int(input_hw[1])))
    handle = layer.module.register_forward_hook(tap.hook)
    try:
        yield tap
    finally:
        handle.remove()
        tap.value = None


# ----------------------------------------------------------------------------------------------
# passes
# ----------------------------------------------------------------------------------------------
def capture(model, tap: Tap, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (B, K, h, w) and logits of ``x``, in chunks, without gradients."""
    acts, logits = [], []
    with torch.no_grad():
        for sl in chunks(x.shape[0], batch_size):
            logits.append(tap.forward(model, x[sl], "capture"))
            acts.append(tap.grid(tap.value))
    return torch.cat(acts), torch.cat(logits)


def grad_pass(model, tap: Tap, x: torch.Tensor, target: torch.Tensor,
              score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and backward pass: activations A, gradients G = d score / d A (both (n, K, h, w))
    and the scores (n,). Per-image scores are summed: in eval mode images do not interact."""
    with torch.enable_grad():
        logits = tap.forward(model, x, "grad")
        leaf = tap.value
        s = score(logits, target)
        g = torch.autograd.grad(s.sum(), leaf, allow_unused=True)[0] if s.requires_grad else None
    model.counter.grad_images += int(x.shape[0])  # the gradient is taken at the layer, not the input
    if g is None:
        g = torch.zeros_like(leaf)
    return tap.grid(leaf.detach()), tap.grid(g), s.detach()


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise FaithmapError(f"unknown variant {variant!r}; choose from: {', '.join(VARIANTS)}")
    return variant


def _positive_int(name: str, value) -> int:
    if int(value) < 1:
        raise FaithmapError(f"{name} must be at least 1, got {value}")
    return int(value)


def combine(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k A^k``: (B, K) weights and (B, K, h, w) activations -> (B, h, w)."""
    return torch.einsum("bk,bkhw->bhw", weights, acts)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1] (AOP eq. 4); constant maps become zeros."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.view_as(maps)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


# ----------------------------------------------------------------------------------------------
# weighting rules: (A, G) -> (map before ReLU (n, h, w), channel weights (n, K) or None)
# ----------------------------------------------------------------------------------------------
Rule = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def rule_gradcam(A: torch.Tensor, G: torch.Tensor):
    """Grad-CAM (Selvaraju et al., ICCV 2017, eq. 1-2): ``w_k = mean_ij G^k_ij``."""
    w = G.mean((2, 3))
    return combine(w, A), w


def rule_wgradcam(A: torch.Tensor, G: torch.Tensor):
    """WGradCAM (Zhang, Rao & Yang, AAAI 2021, eq. 2): ``w_k = mean_ij (G^k_ij * A^k_ij)``."""
    w = (G * A).mean((2, 3))
    return combine(w, A), w


def gradcampp_alpha(A: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor, variant: str) -> torch.Tensor:
    """Grad-CAM++'s ``alpha_ij = D2_ij / (2 D2_ij + sum_ab A_ab D3_ij)`` (Chattopadhyay et al. 2018, eq. 19).

    ``paper``: a zero denominator is replaced by 1, as in the authors' code (alpha is then 0 where
    the gradient is 0). ``pytorch-grad-cam``: ``1e-6`` is added to every denominator and alpha is
    zeroed where the first derivative is 0.
    """
    sum_a = A.sum((2, 3), keepdim=True)
    den = 2 * d2 + sum_a * d3
    if variant == "paper":
        return d2 / torch.where(den != 0, den, torch.ones_like(den))
    alpha = d2 / (den + PEER_EPS["gradcam++"])
    return torch.where(d1 != 0, alpha, torch.zeros_like(alpha))


def rule_gradcampp(variant: str) -> Rule:
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, eq. 10 and 19).

    With ``Y = exp(S)`` the paper's second and third derivatives are ``exp(S) G^2`` and
    ``exp(S) G^3`` for piecewise-linear networks, so ``exp(S)`` cancels in alpha and leaves the
    positive per-image factor ``exp(S)`` on ``w_k = sum_ij alpha_ij ReLU(dY/dA_ij)``. We drop that
    factor (it overflows float32 for logits above 88 and min-max normalisation removes it):
    ``w_k = sum_ij alpha_ij ReLU(G_ij)``. pytorch-grad-cam drops ``exp(S)`` too but keeps a
    ``1e-6`` in alpha's denominator, which matters when gradients are small (``G^2`` near 1e-6,
    as at EfficientNet-Lite0's head): ``variant="pytorch-grad-cam"`` reproduces it.
    """

    def rule(A, G):
        alpha = gradcampp_alpha(A, G, G * G, G * G * G, variant)
        w = (alpha * torch.relu(G)).sum((2, 3))
        return combine(w, A), w

    return rule


def rule_xgradcam(variant: str) -> Rule:
    """XGrad-CAM (Fu et al., BMVC 2020, eq. 11): ``w_k = sum_ij (A^k_ij / sum_ab A^k_ab) G^k_ij``;
    ``paper``: 0 for channels whose activations sum to 0; ``pytorch-grad-cam``: ``1e-7`` added to the sum."""

    def rule(A, G):
        s = A.sum((2, 3))
        num = (G * A).sum((2, 3))
        w = _safe_div(num, s) if variant == "paper" else num / (s + PEER_EPS["xgradcam"])
        return combine(w, A), w

    return rule


def rule_layercam(A: torch.Tensor, G: torch.Tensor):
    """LayerCAM (Jiang et al., TIP 2021, eq. 6-7): ``sum_k ReLU(G^k_ij) A^k_ij`` per position."""
    return (torch.relu(G) * A).sum(1), None


def rule_hirescam(A: torch.Tensor, G: torch.Tensor):
    """HiResCAM (Draelos & Carin 2020): ``sum_k G^k_ij A^k_ij`` per position (element-wise Grad-CAM)."""
    return (G * A).sum(1), None


def gradient_cam(model, x: torch.Tensor, target: torch.Tensor, rule: Rule, *, layer: str | None, score: str,
                 batch_size: int | None, normalize: bool = False) -> Explanation:
    """One gradient pass per chunk of images and a weighting rule: the Grad-CAM family."""
    bs = resolve_batch_size(batch_size, x.device)
    score_fn = score_of(score)
    maps, weights, acts = [], [], []
    with model_guard(model):
        cl = resolve_layer(model, layer)
        with tapped(cl, x.shape[-2:]) as tap:
            for sl in chunks(x.shape[0], bs):
                A, G, _ = grad_pass(model, tap, x[sl], target[sl], score_fn)
                cam, w = rule(A, G)
                maps.append(cam)
                weights.append(w)
                acts.append(A)
    sal = torch.relu(torch.cat(maps))
    if normalize:
        sal = minmax(sal)
    extras = {"layer": cl.name, "activations": torch.cat(acts)}
    if weights[0] is not None:
        extras["weights"] = torch.cat(weights)
    return Explanation(saliency=sal, target=target, extras=extras)


# ----------------------------------------------------------------------------------------------
# the Grad-CAM family
# ----------------------------------------------------------------------------------------------
_LAYER_DOC = "layer: CAM layer name (default: the model's cam_layer)."


@register_method("gradcam", family="cam", resolution="layer", aliases=("grad-cam",), default=True,
                 paper="Selvaraju et al., ICCV 2017",
                 summary="Grad-CAM: activations weighted by their spatially averaged gradients")
def gradcam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
            batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Grad-CAM: ``ReLU(sum_k w_k A^k)``, ``w_k = mean_ij d y^c / d A^k_ij`` with ``y^c`` the logit
    (``score``: ``logit``, ``prob`` or ``logprob``). Deterministic; ``seed`` is unused."""
    return gradient_cam(model, x, target, rule_gradcam, layer=layer, score=score, batch_size=batch_size)


@register_method("wgradcam", family="cam", resolution="layer", aliases=("weighted-gradcam",),
                 paper="Zhang, Rao & Yang, AAAI 2021",
                 summary="WGradCAM (AOP): weights are the mean of gradient x activation; min-max normalised")
def wgradcam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
             batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """WGradCAM (Zhang, Rao & Yang, AAAI 2021, eq. 2-4).

    ``w_k = 1/Z sum_ij (dF_c/dA^k_ij * A^k_ij)`` (eq. 2), ``M = ReLU(sum_k w_k A^k)`` (eq. 3),
    ``M = (M - min M) / (max M - min M)`` (eq. 4; an all-zero map stays zero). ``F_c`` is the
    class score before the softmax, as in Grad-CAM's eq. 1 which eq. 2 modifies (``score``).
    """
    return gradient_cam(model, x, target, rule_wgradcam, layer=layer, score=score, batch_size=batch_size,
                        normalize=True)


@register_method("gradcam++", family="cam", resolution="layer", aliases=("gradcampp", "grad-cam++"),
                 default=True, paper="Chattopadhyay et al., WACV 2018",
                 summary="Grad-CAM++: positive gradients weighted by the closed-form second/third-order alphas")
def gradcampp(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
              variant: str = "paper", batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Grad-CAM++: ``w_k = sum_ij alpha^k_ij ReLU(G^k_ij)``, ``alpha = G^2 / (2 G^2 + sum_ab A_ab G^3)``.

    ``variant="paper"`` follows eq. 19 exactly (no epsilon; see :func:`rule_gradcampp`);
    ``variant="pytorch-grad-cam"`` adds pytorch-grad-cam's ``1e-6`` to the denominator.
    """
    return gradient_cam(model, x, target, rule_gradcampp(_check_variant(variant)), layer=layer, score=score,
                        batch_size=batch_size)


@register_method("xgradcam", family="cam", resolution="layer", aliases=("xgrad-cam",),
                 paper="Fu et al., BMVC 2020",
                 summary="XGrad-CAM: gradients weighted by the normalised activations")
def xgradcam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
             variant: str = "paper", batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """XGrad-CAM: ``w_k = sum_ij A^k_ij G^k_ij / sum_ab A^k_ab`` (see :func:`rule_xgradcam`)."""
    return gradient_cam(model, x, target, rule_xgradcam(_check_variant(variant)), layer=layer, score=score,
                        batch_size=batch_size)


@register_method("layercam", family="cam", resolution="layer", aliases=("layer-cam",),
                 paper="Jiang et al., IEEE TIP 2021",
                 summary="LayerCAM: activations weighted position by position by their positive gradients")
def layercam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
             batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """LayerCAM: ``ReLU(sum_k ReLU(G^k) * A^k)``."""
    return gradient_cam(model, x, target, rule_layercam, layer=layer, score=score, batch_size=batch_size)


@register_method("hirescam", family="cam", resolution="layer", aliases=("hires-cam",),
                 paper="Draelos & Carin, arXiv 2011.08891, 2020",
                 summary="HiResCAM: element-wise gradient x activation summed over channels")
def hirescam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
             batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """HiResCAM: ``ReLU(sum_k G^k * A^k)``."""
    return gradient_cam(model, x, target, rule_hirescam, layer=layer, score=score, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# sampled gradients: Smooth Grad-CAM++, Integrated Grad-CAM, Expected Grad-CAM
# ----------------------------------------------------------------------------------------------
def _spread(x: torch.Tensor, level: float) -> torch.Tensor:
    """Per-image noise scale ``level * (max - min)`` of the input (SmoothGrad's convention), (B,)."""
    flat = x.flatten(1)
    return float(level) * (flat.max(1).values - flat.min(1).values)


@register_method("smoothgradcam++", family="cam", resolution="layer", aliases=("smoothgradcampp", "smooth-gradcam++"),
                 paper="Omeiza et al., arXiv 1908.01224, 2019",
                 summary="Smooth Grad-CAM++: Grad-CAM++ with derivatives averaged over noisy copies of the image",
                 fast={"n_samples": 4})
def smoothgradcampp(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, n_samples: int = 25,
                    noise_level: float = 0.15, score: str = "logit", variant: str = "paper",
                    batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Smooth Grad-CAM++ (Omeiza, Speakman, Cintas & Weldemariam 2019).

    ``D^p = 1/n sum_m (dS/dA(x + eps_m))^p`` for p = 1, 2, 3 with ``eps_m ~ N(0, sigma^2)``,
    ``sigma = noise_level * (max x - min x)``; then Grad-CAM++'s ``alpha = D2 / (2 D2 + sum_ab A_ab D3)``
    and ``w_k = sum_ij alpha_ij ReLU(D1_ij)`` on the activations ``A`` of the clean image. Noise is
    drawn per image from its own generator (``seed``), sample after sample. ``variant`` chooses
    alpha's denominator as for ``gradcam++``.
    """
    variant = _check_variant(variant)
    n = _positive_int("n_samples", n_samples)
    bs = resolve_batch_size(batch_size, x.device)
    score_fn = score_of(score)
    B = x.shape[0]
    sigma = _spread(x, noise_level)
    gens = per_image_generators(seed, B, x.device)
    owner = torch.arange(B, device=x.device).repeat_interleave(n)
    with model_guard(model):
        cl = resolve_layer(model, layer)
        with tapped(cl, x.shape[-2:]) as tap:
            A, _ = capture(model, tap, x, bs)
            d1, d2, d3 = (torch.zeros_like(A) for _ in range(3))
            for sl in chunks(B * n, bs):
                idx = owner[sl]
                eps = torch.stack([torch.randn(x.shape[1:], generator=gens[int(i)], device=x.device, dtype=x.dtype)
                                   for i in idx.tolist()])
                _, G, _ = grad_pass(model, tap, x[idx] + sigma[idx].view(-1, 1, 1, 1) * eps, target[idx], score_fn)
                d1.index_add_(0, idx, G)
                d2.index_add_(0, idx, G * G)
                d3.index_add_(0, idx, G * G * G)
    d1, d2, d3 = d1 / n, d2 / n, d3 / n
    alpha = gradcampp_alpha(A, d1, d2, d3, variant)
    w = (alpha * torch.relu(d1)).sum((2, 3))
    return Explanation(saliency=torch.relu(combine(w, A)), target=target,
                       extras={"layer": cl.name, "weights": w, "activations": A})


KERNELS = ("uniform", "gaussian", "none")


@dataclass
class PathPlan:
    """The samples of a path-integrated CAM for one batch (see :func:`path_weights`)."""

    alphas: torch.Tensor  # (B, S) interpolation points
    ref_index: torch.Tensor | None  # (B, S) index into a reference set, or None
    kernel: str = "none"
    kernel_scale: torch.Tensor | None = None  # (B,)
    noise_baseline: bool = False  # a fresh uniform-noise baseline per sample


def draw_plan(gens: list[torch.Generator], n: int, *, alphas: str, n_refs: int, kernel: str,
              kernel_scale: torch.Tensor | None, noise_baseline: bool, device) -> PathPlan:
    """Per image, in this order from its generator: ``n`` alphas ~ U(0, 1) (unless on the grid
    ``m / n``, m = 1..n), then ``n`` indices into the reference set (when it holds more than one
    image); the per-sample noise (baseline, then kernel) is drawn later, sample by sample."""
    B = len(gens)
    if alphas == "uniform":
        a = torch.stack([torch.rand(n, generator=g, device=device) for g in gens])
    else:
        a = (torch.arange(1, n + 1, device=device, dtype=torch.float32) / n).expand(B, n).clone()
    ref = None
    if n_refs > 1:
        ref = torch.stack([torch.randint(n_refs, (n,), generator=g, device=device) for g in gens])
    elif n_refs == 1:
        ref = torch.zeros(B, n, dtype=torch.long, device=device)
    return PathPlan(a, ref, kernel, kernel_scale, noise_baseline)


def path_weights(model, tap: Tap, x: torch.Tensor, target: torch.Tensor, acts: torch.Tensor, plan: PathPlan,
                 gens: list[torch.Generator], *, baselines: torch.Tensor | None, base_acts: torch.Tensor | None,
                 score: Callable, batch_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Channel weights ``w_k = 1/S sum_s mean_ij [(A(x) - A(x'_s)) * dS(z_s)/dA]_kij`` (B, K),
    ``z_s = x'_s + alpha_s (x - x'_s) + eta_s``.

    ``baselines``/``base_acts``: the reference images and their activations, indexed by
    ``plan.ref_index`` (per image when ``ref_index`` is None); with ``plan.noise_baseline`` each
    sample draws a uniform-noise image as its baseline (and its activations are computed).
    """
    B, S = plan.alphas.shape
    owner = torch.arange(B, device=x.device).repeat_interleave(S)
    step = torch.arange(S, device=x.device).repeat(B)
    wsum = torch.zeros(acts.shape[:2], device=x.device, dtype=acts.dtype)
    shape = x.shape[1:]
    for sl in chunks(B * S, batch_size):
        idx, st = owner[sl], step[sl]
        if plan.noise_baseline:
            base_list, eta_list = [], []
            for i in idx.tolist():
                u = torch.rand(shape, generator=gens[i], device=x.device, dtype=x.dtype)
                base_list.append((u - mean[0]) / std[0])
                if plan.kernel != "none":
                    eta_list.append(_kernel_noise(plan.kernel, gens[i], shape, x))
            base = torch.stack(base_list)
            with torch.no_grad():
                base_a = tap.grid(_capture_one(model, tap, base))
        else:
            ref = plan.ref_index[idx, st] if plan.ref_index is not None else idx
            base, base_a = baselines[ref], base_acts[ref]
            eta_list = ([_kernel_noise(plan.kernel, gens[i], shape, x) for i in idx.tolist()]
                        if plan.kernel != "none" else [])
        a = plan.alphas[idx, st].view(-1, 1, 1, 1).to(x.dtype)
        z = base + a * (x[idx] - base)
        if eta_list:
            z = z + plan.kernel_scale[idx].view(-1, 1, 1, 1) * torch.stack(eta_list)
        _, G, _ = grad_pass(model, tap, z, target[idx], score)
        wsum.index_add_(0, idx, ((acts[idx] - base_a) * G).mean((2, 3)))
    return wsum / S


def _kernel_noise(kernel: str, gen: torch.Generator, shape, x: torch.Tensor) -> torch.Tensor:
    """Unit-scale smoothing noise: uniform on [-1, 1] or standard normal."""
    if kernel == "uniform":
        return 2 * torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype) - 1
    return torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype)


def _capture_one(model, tap: Tap, x: torch.Tensor) -> torch.Tensor:
    tap.forward(model, x, "capture")
    return tap.value


def _reference_set(model, x: torch.Tensor, reference, as_set: bool = True) -> tuple[str, torch.Tensor | None]:
    """(kind, images): ``set`` with (N, C, H, W) reference images, ``noise`` (drawn per sample), or
    ``fixed`` with one baseline per image (``blur``, ``black``, ``zero``, ..., or a tensor broadcast
    to the batch when ``as_set`` is false)."""
    if isinstance(reference, torch.Tensor) and not as_set:
        try:
            base = make_baseline(reference, x)
        except RuntimeError:
            raise FaithmapError(f"baseline of shape {tuple(reference.shape)} does not fit images of shape "
                                f"{tuple(x.shape)}") from None
        if not torch.isfinite(base).all():
            raise FaithmapError("baseline contains NaN or infinite values")
        return "fixed", base
    if isinstance(reference, torch.Tensor):
        ref = reference.to(device=x.device, dtype=x.dtype)
        if ref.dim() == 3:
            ref = ref.unsqueeze(0)
        if ref.dim() != 4 or ref.shape[1:] != x.shape[1:]:
            raise FaithmapError(f"reference images must be (N, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}) model inputs, "
                                f"got shape {tuple(reference.shape)}")
        if not torch.isfinite(ref).all():
            raise FaithmapError("reference images contain NaN or infinite values")
        return "set", ref
    if reference in ("noise", "uniform"):
        return "noise", None
    if not isinstance(reference, str):
        raise FaithmapError(f"reference must be a baseline name or a tensor of images, got {type(reference).__name__}")
    return "fixed", make_baseline(reference, x, model.mean.to(x), model.std.to(x))


def path_cam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None, n: int, alphas: str,
             reference, kernel: str, noise_level: float, score: str, batch_size: int | None,
             seed: Seed, reference_is_set: bool = True) -> Explanation:
    """Integrated and Expected Grad-CAM: ``ReLU(sum_k w_k A^k(x))`` with :func:`path_weights`."""
    if kernel not in KERNELS:
        raise FaithmapError(f"unknown kernel {kernel!r}; choose from: {', '.join(KERNELS)}")
    n = _positive_int("the number of samples", n)
    bs = resolve_batch_size(batch_size, x.device)
    score_fn = score_of(score)
    B = x.shape[0]
    kind, refs = _reference_set(model, x, reference, reference_is_set)
    gens = per_image_generators(seed, B, x.device)
    n_refs = refs.shape[0] if kind == "set" else 0
    plan = draw_plan(gens, n, alphas=alphas, n_refs=n_refs, kernel=kernel,
                     kernel_scale=_spread(x, noise_level) if kernel != "none" else None,
                     noise_baseline=kind == "noise", device=x.device)
    with model_guard(model):
        cl = resolve_layer(model, layer)
        with tapped(cl, x.shape[-2:]) as tap:
            acts, _ = capture(model, tap, x, bs)
            base_acts = capture(model, tap, refs, bs)[0] if refs is not None else None
            w = path_weights(model, tap, x, target, acts, plan, gens, baselines=refs, base_acts=base_acts,
                             score=score_fn, batch_size=bs, mean=model.mean.to(x), std=model.std.to(x))
    return Explanation(saliency=torch.relu(combine(w, acts)), target=target,
                       extras={"layer": cl.name, "weights": w, "activations": acts, "alphas": plan.alphas})


@register_method("integratedgradcam", family="cam", resolution="layer", aliases=("integrated-gradcam", "igcam"),
                 paper="Sattarzadeh et al., ICASSP 2021",
                 summary="Integrated Grad-CAM: layer gradients integrated along the straight path from a baseline",
                 fast={"steps": 4})
def integratedgradcam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, steps: int = 50,
                      baseline: str | torch.Tensor = "black", score: str = "logit",
                      batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Integrated Grad-CAM, read as Expected Grad-CAM's remark 3.3 describes it (one constant
    baseline, linear feature scaling): ``w_k = mean_ij [(A(x) - A(x')) * 1/M sum_m dS(x_m)/dA]``,
    ``x_m = x' + (m/M)(x - x')``, m = 1..M (``steps``), then ``ReLU(sum_k w_k A^k(x))``.
    ``baseline``: ``black`` (zero pixels, the authors' notebook), ``blur``, ``zero``, ... or a tensor.
    """
    return path_cam(model, x, target, layer=layer, n=steps, alphas="grid", reference=baseline, kernel="none",
                    noise_level=0.0, score=score, batch_size=batch_size, seed=seed, reference_is_set=False)


@register_method("expectedgradcam", family="cam", resolution="layer", aliases=("expected-gradcam", "egcam"),
                 paper="Buono, Mashhadi, Rahat, Tiwari & Byttner, arXiv 2406.01274, 2024",
                 summary="Expected Grad-CAM: layer gradients at random interpolations from sampled baselines, "
                         "kernel-smoothed",
                 fast={"n_samples": 4})
def expectedgradcam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, n_samples: int = 32,
                    reference: str | torch.Tensor = "blur", kernel: str = "uniform", noise_level: float = 0.1,
                    score: str = "logit", batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Expected Grad-CAM (Buono, Mashhadi, Rahat, Tiwari & Byttner, 2024, section 3, eq. 15-22).

    Reading implemented (the extracted equations are partly garbled):

    * eq. 21-22: the weight of unit k is the expectation over baselines ``x' ~ D`` and
      ``alpha ~ U(0, 1)`` of ``k(x, alpha) * dy^c(gamma(alpha))/dA^k_ij * dgamma/dalpha``, averaged
      over the positions (i, j) (eq. 13 and 15: ``1/Z sum_ij``), estimated with ``n_samples`` Monte
      Carlo samples (the third line of eq. 21, ``1/n sum_s``);
    * ``dgamma/dalpha = x - x'`` is carried to the layer as ``A(x) - A(x')``: eq. 21 writes it
      ``f^(l)(x_ij - x'_ij)``, a function of the difference and of ``x'`` in its last line — the
      layer's difference-from-reference, which makes the sum over k of the weighted gradients obey
      the completeness of eq. 14 along the path, as in layer integrated gradients;
    * ``y^c`` is the class score before the softmax (eq. 5, ``score``) and
      ``gamma(alpha) = x' + alpha (x - x')`` (eq. 20);
    * the smoothing kernel ``k`` (eq. 16) is applied to the input ("input kernel smoothing",
      Fig. 3): the gradient is taken at ``gamma(alpha) + eta`` with ``eta`` drawn from ``kernel``:
      ``uniform`` on ``[-s, s]`` (the paper's choice, centred so that it smooths without shifting
      the image) or ``gaussian`` with std ``s`` (footnote 2: SmoothGrad), ``s = noise_level * (max x
      - min x)``; the normalisation ``(E[eta eta^T])^-1`` of eq. 16 is a positive constant for such
      isotropic kernels and is dropped; ``kernel="none"`` turns smoothing off;
    * the reference distribution ``D``: ``reference`` is a tensor of N reference images (model
      inputs; each sample picks one uniformly), ``"blur"`` (the I-GOS blur of the image, the default
      when no set is given: it stays close to the data distribution, section 3.2), ``"noise"`` (a fresh
      uniform-noise image per sample) or another baseline name (``black``, ``zero``, ...);
    * the map is ``ReLU(sum_k w_k A^k(x))`` (eq. 18).

    Draws come from each image's generator (``seed``): the n alphas, then the n reference indices
    (sets of more than one image), then per sample its noise baseline (``noise``) and its kernel noise.
    """
    return path_cam(model, x, target, layer=layer, n=n_samples, alphas="uniform", reference=reference, kernel=kernel,
                    noise_level=noise_level, score=score, batch_size=batch_size, seed=seed)


# ----------------------------------------------------------------------------------------------
# scoring passes: Score-CAM and Ablation-CAM
# ----------------------------------------------------------------------------------------------
def _scores_of_entries(model, tap: Tap, n_entries: int, batch_size: int, make_inputs: Callable,
                       targets: torch.Tensor, score: Callable, replacement_of: Callable | None = None) -> torch.Tensor:
    """Scores (n_entries,) of entries whose inputs ``make_inputs(slice)`` builds chunk by chunk."""
    out = torch.empty(n_entries, device=targets.device)
    with torch.no_grad():
        for sl in chunks(n_entries, batch_size):
            inputs = make_inputs(sl)
            if replacement_of is None:
                logits = tap.forward(model, inputs, "capture")
            else:
                logits = tap.forward(model, inputs, "replace", replacement_of(sl))
            out[sl] = score(logits, targets[sl]).to(out.dtype)
    return out


@register_method("scorecam", family="cam", resolution="layer", aliases=("score-cam",),
                 paper="Wang et al., CVPR-W 2020",
                 summary="Score-CAM: channel weights from the scores of the image masked by each upsampled activation")
def scorecam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
             variant: str = "paper", batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Score-CAM (Wang et al. 2020, Algorithm 1).

    Each channel's activation map is upsampled to the input (bilinear, corners aligned), min-max
    normalised to ``H^k`` and multiplied with the image; ``w = softmax_k(f^c(x * H^k))`` over the
    channels (the baseline score of Algorithm 1 cancels in the softmax), ``ReLU(sum_k w_k A^k)``.
    A constant map has no min-max normalisation; it is taken as ``H^k = 0`` (the image times 0).
    All channels whose mask is 0 share one forward pass per image. ``variant="pytorch-grad-cam"``
    normalises by ``max - min + 1e-8`` as that library does (a constant map then gives 0 unless
    float rounding in the upsampling makes it non-constant).
    """
    variant = _check_variant(variant)
    bs = resolve_batch_size(batch_size, x.device)
    score_fn = score_of(score)
    B = x.shape[0]
    with model_guard(model):
        cl = resolve_layer(model, layer)
        with tapped(cl, x.shape[-2:]) as tap:
            A, _ = capture(model, tap, x, bs)
            K = A.shape[1]
            flat = A.flatten(2)
            if variant == "paper":
                zero = flat.max(2).values == flat.min(2).values  # constant maps: mask 0
            else:
                zero = (flat == 0).all(2)  # exactly zero maps upsample to exactly zero masks
            live = (~zero).nonzero()  # (n, 2) image, channel
            dead_img = zero.any(1).nonzero().flatten()  # images that need the all-zero input once
            img = torch.cat([live[:, 0], dead_img])
            ch = torch.cat([live[:, 1], torch.full_like(dead_img, -1)])
            size = x.shape[-2:]

            def make_inputs(sl):
                i, k = img[sl], ch[sl]
                maps = A[i, k.clamp_min(0)].unsqueeze(1)
                up = upsample(maps, tuple(size)).flatten(1)
                lo, hi = up.min(1, keepdim=True).values, up.max(1, keepdim=True).values
                if variant == "paper":
                    mask = (up - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
                else:
                    mask = (up - lo) / (hi - lo + PEER_EPS["scorecam"])
                mask = torch.where((k >= 0).view(-1, 1), mask, torch.zeros_like(mask))
                return x[i] * mask.view(-1, 1, *size)

            s = _scores_of_entries(model, tap, img.numel(), bs, make_inputs, target[img], score_fn)
    scores = torch.empty(B, K, device=x.device, dtype=s.dtype)
    n_live = live.shape[0]
    scores[live[:, 0], live[:, 1]] = s[:n_live]
    if dead_img.numel():
        dead_scores = torch.zeros(B, device=x.device, dtype=s.dtype)
        dead_scores[dead_img] = s[n_live:]
        scores = torch.where(zero, dead_scores.view(B, 1), scores)
    w = torch.softmax(scores, dim=1)
    return Explanation(saliency=torch.relu(combine(w, A)), target=target,
                       extras={"layer": cl.name, "weights": w, "scores": scores, "activations": A})


@register_method("ablationcam", family="cam", resolution="layer", aliases=("ablation-cam",),
                 paper="Desai & Ramaswamy, WACV 2020",
                 summary="Ablation-CAM: channel weights from the score drop when each activation map is zeroed")
def ablationcam(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, score: str = "logit",
                variant: str = "paper", batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Ablation-CAM (Desai & Ramaswamy 2020, eq. 3): ``w_k = (y^c - y^c_k) / y^c`` where ``y^c_k`` is
    the score with activation map k set to 0 (the layer's output is replaced in the forward pass);
    ``ReLU(sum_k w_k A^k)``. Maps already equal to the ablation value everywhere get ``w_k = 0``
    without a forward pass. ``variant="pytorch-grad-cam"`` ablates with ``min(A) - 1e7`` instead
    of 0 when the image's activations have a minimum other than 0, as that library does.
    A score of exactly 0 is not divided by.
    """
    variant = _check_variant(variant)
    bs = resolve_batch_size(batch_size, x.device)
    score_fn = score_of(score)
    B = x.shape[0]
    with model_guard(model):
        cl = resolve_layer(model, layer)
        with tapped(cl, x.shape[-2:]) as tap:
            A, logits = capture(model, tap, x, bs)
            y = score_fn(logits, target)
            K = A.shape[1]
            value = torch.zeros(B, device=x.device, dtype=A.dtype)
            if variant == "pytorch-grad-cam":
                amin = A.flatten(1).min(1).values
                value = torch.where(amin == 0, value, amin - 1e7)
            same = (A.flatten(2) == value.view(B, 1, 1)).all(2)  # ablating changes nothing
            live = (~same).nonzero()
            img, ch = live[:, 0], live[:, 1]

            def make_inputs(sl):
                return x[img[sl]]

            def replacement_of(sl):
                i, k = img[sl], ch[sl]
                grid = A[i].clone()
                grid[torch.arange(grid.shape[0], device=grid.device), k] = value[i].view(-1, 1, 1)

                def replace(output):
                    return from_grid(grid, output, tap.layout).to(output.dtype)

                return replace

            s = _scores_of_entries(model, tap, img.numel(), bs, make_inputs, target[img], score_fn, replacement_of)
    ablated = y.view(B, 1).expand(B, K).clone()
    ablated[img, ch] = s.to(ablated.dtype)
    den = torch.where(y != 0, y, torch.ones_like(y)).view(B, 1)
    w = (y.view(B, 1) - ablated) / den
    return Explanation(saliency=torch.relu(combine(w, A)), target=target,
                       extras={"layer": cl.name, "weights": w, "scores": ablated, "activations": A})
