"""Finding layers by name, choosing the default CAM layer of common architectures, and reading a
layer's output as a (B, C, h, w) grid (convolutional maps, vision-transformer tokens, NHWC maps)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FaithmapError

# Default CAM layers of torchvision families (the layer whose output feeds global pooling).
# Containers (``features``, ``encoder.layers``, ...) stand for their last child.
_KNOWN = {
    "resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "regnet": "trunk_output",
    "vgg": "features", "alexnet": "features", "densenet": "features", "mobilenet": "features",
    "efficientnet": "features", "convnext": "features", "mnasnet": "layers", "shufflenet": "conv5",
    "squeezenet": "features", "googlenet": "inception5b", "inception": "Mixed_7c", "maxvit": "blocks",
    "vit": "encoder.layers", "swin": "features",
}
_CONTAINERS = ("features", "encoder.layers", "blocks", "layers")

# torchvision class names -> family keys of _KNOWN, for networks wrapped without an architecture name.
_CLASS_FAMILY = {
    "resnet": "resnet", "vgg": "vgg", "alexnet": "alexnet", "densenet": "densenet", "mobilenetv2": "mobilenet",
    "mobilenetv3": "mobilenet", "efficientnet": "efficientnet", "efficientnetlite": "efficientnet",
    "convnext": "convnext", "mnasnet": "mnasnet", "shufflenetv2": "shufflenet", "squeezenet": "squeezenet",
    "googlenet": "googlenet", "inception3": "inception", "maxvit": "maxvit", "visiontransformer": "vit",
    "swintransformer": "swin", "regnet": "regnet",
}

# Families whose CAM layer gives channels-last maps (B, h, w, C).
_NHWC = ("swin",)

LAYOUTS = ("nchw", "nhwc", "tokens")


def get_layer(net: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``net`` called ``name`` (dotted path, e.g. ``features.17``)."""
    if name:
        try:  # a walk down the path, not a scan of every module
            return net.get_submodule(name)
        except (AttributeError, TypeError):
            pass
    modules = dict(net.named_modules())
    if name in modules and name:
        return modules[name]
    import difflib

    named = [n for n in modules if n]
    close = [n for n in named if n.endswith(name) or name in n][:3]
    close += [n for n in difflib.get_close_matches(name, named, n=3) if n not in close]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FaithmapError(f"the model has no layer {name!r}{hint}")


def architecture(net: nn.Module, arch: str | None = None) -> str | None:
    """The family key (``resnet``, ``vit``, ...) of ``arch`` or, failing that, of ``net``'s class."""
    if arch:
        key = arch.strip().lower()
        for prefix in sorted(_KNOWN, key=len, reverse=True):
            if key.startswith(prefix):
                return prefix
    return _CLASS_FAMILY.get(type(net).__name__.lower())


def _last_child_name(net: nn.Module, name: str) -> str:
    mod = get_layer(net, name)
    children = list(mod.named_children())
    if isinstance(mod, (nn.Sequential, nn.ModuleList)) and children:
        return f"{name}.{children[-1][0]}"
    return name


def default_cam_layer(net: nn.Module, arch: str | None = None, input_size: int = 224) -> str:
    """The default CAM layer: known per torchvision family, else the last module with a 4-D output.

    For containers of blocks (``features``) the last block is used. Vision transformers use the
    first LayerNorm (``ln_1``) of the last encoder block: the output of the last block reaches the
    logits through the class token only, so its patch tokens get no gradient.
    """
    family = architecture(net, arch)
    if family:
        name = _KNOWN[family]
        try:
            layer = _last_child_name(net, name) if name in _CONTAINERS else name
            get_layer(net, layer)
            if family == "vit" and f"{layer}.ln_1" in dict(net.named_modules()):
                layer = f"{layer}.ln_1"
            return layer
        except FaithmapError:
            pass
    return last_spatial_layer(net, input_size)


def layer_layout(net: nn.Module, arch: str | None, output: torch.Tensor) -> str:
    """How a layer's ``output`` holds its spatial grid: ``nchw``, ``nhwc`` (Swin) or ``tokens`` (B, N, D)."""
    if output.dim() == 3:
        return "tokens"
    if output.dim() != 4:
        raise FaithmapError(f"CAM layers need a (B, C, h, w) or (B, tokens, D) output; this layer gives shape "
                            f"{tuple(output.shape)}; name another with --layer")
    return "nhwc" if architecture(net, arch) in _NHWC else "nchw"


def token_grid(n_tokens: int, input_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(prefix, gh, gw): ``n_tokens`` = prefix tokens (class/distillation) + a gh x gw patch grid
    with the input's aspect ratio; the smallest prefix that fits is taken (ViT: 197 = 1 + 14 x 14)."""
    H, W = input_hw
    for prefix in range(0, min(n_tokens, 9)):
        n = n_tokens - prefix
        # gh / gw = H / W and gh * gw = n
        gh = round((n * H / W) ** 0.5)
        if gh > 0 and n % gh == 0 and (n // gh) * H == gh * W:
            return prefix, gh, n // gh
    raise FaithmapError(f"cannot arrange {n_tokens} tokens as a patch grid of a {H}x{W} input; name another layer")


def to_grid(t: torch.Tensor, layout: str, input_hw: tuple[int, int]) -> torch.Tensor:
    """A layer output (or its gradient) as a (B, C, h, w) grid."""
    if layout == "nchw":
        return t
    if layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    prefix, gh, gw = token_grid(t.shape[1], input_hw)
    return t[:, prefix:, :].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)


def from_grid(grid: torch.Tensor, like: torch.Tensor, layout: str) -> torch.Tensor:
    """The inverse of :func:`to_grid`: ``grid`` (n, C, h, w) in the layout of ``like``; prefix tokens
    (class token) are taken from ``like`` (broadcast over n)."""
    if layout == "nchw":
        return grid
    if layout == "nhwc":
        return grid.permute(0, 2, 3, 1)
    n, c = grid.shape[:2]
    tokens = grid.permute(0, 2, 3, 1).reshape(n, -1, c)
    prefix = like.shape[1] - tokens.shape[1]
    if prefix:
        tokens = torch.cat([like[:, :prefix, :].expand(n, prefix, c), tokens], 1)
    return tokens


def last_spatial_layer(net: nn.Module, input_size: int = 224) -> str:
    """Name of the outermost module producing the last (B, C, h, w) activation with h, w > 1."""
    found: list[tuple[str, tuple]] = []
    hooks = []
    modes = [(m, m.training) for m in net.modules()]
    try:
        for name, mod in net.named_modules():
            if not name:
                continue
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: found.append((name, tuple(o.shape)))
                if isinstance(o, torch.Tensor) and o.dim() == 4 and o.shape[-1] > 1 else None))
        dev = next((p.device for p in net.parameters()), torch.device("cpu"))
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, input_size, input_size, device=dev))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    if not found:
        raise FaithmapError("could not find a convolutional layer for CAM methods; name one with --layer")
    last_shape = found[-1][1]
    # the outermost module whose output is that last activation: shortest name among the trailing run
    trailing = []
    for n, s in reversed(found):
        if s != last_shape:
            break
        trailing.append(n)
    return min(trailing, key=lambda n: n.count("."))
