"""Excitation Backprop (Zhang, Lin, Brandt, Shen & Sclaroff, "Top-down neural attention by excitation
backprop", ECCV 2016): marginal winning probabilities (MWP) and contrastive MWP (c-MWP) at a read-out layer.

A top-down probabilistic winner-take-all: the target output unit wins with probability 1 (a one-hot
signal on the logits) and each unit passes its winning probability to its children in proportion to
their excitatory contributions ``a_i w_ij`` (``w_ij > 0``), eq. 4 and 6 of the paper; the MWP of a
unit is the probability that it wins. The rules per layer type are those of
:func:`faithmap.methods.rules.excitation_composite`: linear and convolution layers ``x * W+^T (g /
W+ x)`` (bias excluded, batch norm folded in), average pooling and residual sums in proportion to
their inputs, ReLU, ReLU6 and max pooling as the gradient (winner-take-all among the active units).
Where these rules conserve, the MWP at every layer sums to 1 (``extras["mass"]`` reports the sum at
the read-out layer). They leak in two places: a unit that is on through its bias alone (no
excitatory input, ``W+ x = 0``) cannot pass its share down, and a ReLU6 that clips passes none (its
gradient is 0). A read-out layer inside a residual block sees only the paths that start at it: a
sum whose other addend comes from below the read-out passes the whole signal to the branch.

* ``mwp``: the MWP at the read-out layer's output, summed over channels.
* ``excitation_bp`` (c-MWP, sec. 3.3): the same minus the MWP of the target's *dual* unit, whose
  input weights are the classifier's negated, i.e. the evidence for the target against the
  evidence for everything else. The rules below the classifier are linear in the signal they
  pass down, so subtracting at the read-out layer equals subtracting at any contrast layer between
  it and the classifier (TorchRay subtracts at a higher layer, as the paper's pool5 / pool4 setups);
  we pass the difference of the two classifier-layer signals down in one backward pass. The map is
  kept signed (TorchRay clamps it at 0; a clamp only turns the negative cells into ties). This is
  the variant the seed papers' tables call "Excitation BP" (I-GOS Tables 1 and 5, where "MWP" is
  the plain one).

One forward pass per chunk of images (``batch_size``) and one backward pass that stops at the
read-out layer: the layers below it run without autograd, and model images are counted as images
with gradient. Maps are on the read-out layer's grid (``resolution="layer"``;
``Explanation.upsampled(size)`` gives them at input size, as the pointing game does);
``layer="input"`` reads the MWP of the input pixels. ``attribution`` holds the per-channel map
(B, C, h, w), ``extras["layer"]`` names the layer and ``extras["mass"]`` is the map's total per image
(1 for MWP where the rules conserve, 0 for c-MWP).

Default read-out layers: ``layer3`` of ResNets and the fourth max pooling (pool4) of VGGs, the layers
of the pointing-game setups in the literature; for other networks (EfficientNet-Lite0 included:
``features.11``, the end of its stride-16 stage, 112 x 14 x 14 at 224 px) the last sibling of the CAM
layer whose output grid is finer than the CAM layer's, i.e. the end of the stage before the last
down-sampling, the position of VGG16's pool4 and ResNet50's layer3 (stride 16).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..core.batching import DEFAULT_BATCH_SIZE, chunks, model_guard, resolve_batch_size, Seed
from ..explanation import Explanation
from ..errors import FaithmapError
from ..models.layers import architecture, default_cam_layer, get_layer
from ..registry import register_method
from .rules import ExcitationState, apply_rules, excitation_composite

INPUT = "input"
"""``layer=INPUT`` reads the MWP of the input pixels."""

_DEFAULT_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------------------------
# the read-out layer
# ----------------------------------------------------------------------------------------------
def _finer_sibling(net: nn.Module, cam: str, size: int) -> str:
    parent_name, _, _ = cam.rpartition(".")
    parent = get_layer(net, parent_name) if parent_name else net
    seen: list[tuple[str, tuple]] = []
    hooks = [child.register_forward_hook(lambda m, i, o, n=n: seen.append((n, tuple(o.shape)))
                                         if isinstance(o, torch.Tensor) and o.dim() == 4 else None)
             for n, child in parent.named_children()]
    try:
        p = next(iter(net.parameters()), None)
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                            dtype=p.dtype if p is not None else torch.float32))
    finally:
        for h in hooks:
            h.remove()
    child = cam[len(parent_name) + 1:] if parent_name else cam
    names = [n for n, _ in seen]
    if child not in names:
        return cam
    at = names.index(child)
    ch, cw = seen[at][1][-2:]
    finer = [n for n, shape in seen[:at] if shape[-2] > ch or shape[-1] > cw]
    if not finer:
        return cam
    return f"{parent_name}.{finer[-1]}" if parent_name else finer[-1]


def default_layer(model) -> str:
    """The default read-out layer of ``model`` (see the module docstring)."""
    net = model.net
    family = architecture(net, getattr(model, "name", None))
    modules = dict(net.named_modules())
    if family in ("resnet", "resnext", "wide_resnet") and "layer3" in modules:
        return "layer3"
    if family == "vgg" and isinstance(modules.get("features"), nn.Sequential):
        pools = [n for n, m in net.features.named_children() if isinstance(m, nn.MaxPool2d)]
        if len(pools) >= 4:
            return f"features.{pools[3]}"
    size = int(getattr(model, "input_size", 224))
    cam = getattr(model, "cam_layer", None) or default_cam_layer(net, getattr(model, "name", None), size)
    cache = _DEFAULT_CACHE.setdefault(net, {})
    if (cam, size) not in cache:
        cache[(cam, size)] = _finer_sibling(net, cam, size)
    return cache[(cam, size)]


class _Readout:
    """Forward hook on the read-out layer: its output becomes a leaf that requires grad, so that the
    backward pass stops there and the leaf's gradient is the MWP of the layer's units."""

    def __init__(self, name: str):
        self.name = name
        self.value: torch.Tensor | None = None
        self.calls = 0

    def hook(self, module, args, output):  # noqa: D102
        self.calls += 1
        if self.calls > 1:
            raise FaithmapError(f"layer {self.name} runs more than once per forward pass; name another layer")
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise FaithmapError(f"excitation backprop reads a layer with a (B, C, h, w) output; layer {self.name} "
                                f"gives {shape}; name another with --layer")
        leaf = output.detach().requires_grad_(True)
        self.value = leaf
        return leaf.clone()  # in-place operations after the layer must not touch the leaf


def _check_layer(layer) -> None:
    if layer is not None and not isinstance(layer, str):
        raise FaithmapError(f"layer must be a layer name such as 'features.11' (or 'input'), got {type(layer).__name__}")


# ----------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------
def excitation_backprop(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None,
                        contrastive: bool = False, eps: float = 1e-6,
                        batch_size: int | None = DEFAULT_BATCH_SIZE) -> Explanation:
    """MWP (or c-MWP with ``contrastive``) of ``target`` at ``layer``'s output: ``(B, C, h, w)`` in
    ``attribution``, its channel sum ``(B, h, w)`` in ``saliency``. ``eps`` stabilises the
    normalisers (``z + eps * sign(z)``, as zennit)."""
    _check_layer(layer)
    if not eps >= 0:
        raise FaithmapError(f"eps must be non-negative, got {eps}")
    bs = resolve_batch_size(batch_size, x.device)
    state = ExcitationState(contrastive=bool(contrastive))
    composite = excitation_composite(state, eps)
    att = []
    with model_guard(model):
        name = layer or default_layer(model)
        readout = None if name == INPUT else _Readout(name)
        module = None if readout is None else get_layer(model.net, name)
        handle = None
        try:
            with apply_rules(model, composite):
                if module is not None:  # after the rules: the leaf takes the rule's output
                    handle = module.register_forward_hook(readout.hook)
                for sl in chunks(x.shape[0], bs):
                    xs, ts = x[sl], target[sl]
                    state.top = None
                    with torch.enable_grad():
                        if readout is None:
                            leaf = xs.detach().requires_grad_(True)
                            logits = model(leaf)
                        else:
                            readout.calls, readout.value = 0, None
                            logits = model(xs)
                            if readout.calls == 0:
                                raise FaithmapError(f"layer {name} did not run in the forward pass; name another layer")
                            leaf = readout.value
                        if not logits.requires_grad:
                            raise FaithmapError(f"layer {name} does not feed the logits; name another layer")
                        if contrastive and state.top is None:
                            raise FaithmapError(f"c-MWP needs a linear or convolution layer between layer {name} "
                                                f"and the logits")
                        top = torch.zeros_like(logits).scatter_(1, ts.view(-1, 1), 1.0)
                        (g,) = torch.autograd.grad(logits, leaf, top, allow_unused=True)
                    if g is None:
                        raise FaithmapError(f"layer {name} does not feed the logits; name another layer")
                    if readout is not None:  # the gradient is taken at the layer, not the input
                        model.counter.grad_images += int(xs.shape[0])
                    att.append(g.detach())
                    state.top = None
        finally:
            if handle is not None:
                handle.remove()
    a = torch.cat(att)
    return Explanation(saliency=a.sum(1), target=target, attribution=a,
                       extras={"layer": name, "mass": a.flatten(1).sum(1)}, params=dict(layer=name, eps=eps))


_PAPER = "Zhang et al., ECCV 2016"


@register_method(
    "excitation_bp", family="rule", resolution="layer", paper=_PAPER,
    aliases=("excitationbp", "ebp", "excitation-backprop", "c-mwp", "cmwp", "contrastive-mwp"),
    summary="Excitation Backprop, contrastive (c-MWP): winning probabilities of the target minus those of its "
            "dual unit (negated classifier weights), at a read-out layer",
    bounds={"eps": (0.0, None), "batch_size": (1, None)},
)
def excitation_bp(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, eps: float = 1e-6,
                  batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Contrastive marginal winning probabilities (Zhang et al., ECCV 2016, sec. 3.3): MWP of the target
    unit minus MWP of its dual (the classifier's weights negated) at ``layer`` (default:
    :func:`default_layer`); ``layer="input"`` reads the pixels. Deterministic (``seed`` is unused)."""
    return excitation_backprop(model, x, target, layer=layer, contrastive=True, eps=eps, batch_size=batch_size)


@register_method(
    "mwp", family="rule", resolution="layer", paper=_PAPER,
    aliases=("excitation-mwp", "marginal-winning-probability"),
    summary="Excitation Backprop (MWP): marginal winning probabilities of a top-down winner-take-all, at a "
            "read-out layer",
    bounds={"eps": (0.0, None), "batch_size": (1, None)},
)
def mwp(model, x: torch.Tensor, target: torch.Tensor, *, layer: str | None = None, eps: float = 1e-6,
        batch_size: int | None = DEFAULT_BATCH_SIZE, seed: Seed = 0) -> Explanation:
    """Marginal winning probabilities (Zhang et al., ECCV 2016, sec. 3.1-3.2, eq. 4-6) of the target at
    ``layer`` (default: :func:`default_layer`); they sum to 1 where the rules conserve
    (``extras["mass"]``). Deterministic (``seed`` is unused)."""
    return excitation_backprop(model, x, target, layer=layer, contrastive=False, eps=eps, batch_size=batch_size)


__all__ = ["INPUT", "default_layer", "excitation_backprop"]
