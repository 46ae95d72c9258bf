"""Finding layers by name, choosing the default CAM layer of common architectures (torchvision, timm,
Hugging Face transformers), and reading a layer's output as a (B, C, h, w) grid (convolutional maps,
vision-transformer tokens, channels-last maps).

A layer's *layout* says how its output holds the grid: ``nchw``; ``nhwc`` (Swin's stages in
torchvision and timm); ``tokens`` (B, N, D) with the number of tokens before the patch grid found
from the count, or ``tokens:P`` with ``P`` class/distillation/register tokens read from the model
(timm's ``num_prefix_tokens``, the ``cls_token``/``dist_token``/``reg_token`` parameters)."""

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

# Parameters holding the tokens that vision transformers put before the patch tokens, (1, n, D) each.
_PREFIX_PARAMS = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token", "register_tokens")
# The LayerNorm of a transformer block that the CAM reads (before attention mixes the tokens).
_BLOCK_NORMS = ("norm1", "layernorm_before", "ln_1", "layernorm1", "norm")

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
    found = _timm_cam_layer(net) if is_timm(net) else _hf_cam_layer(net) if is_transformers(net) else None
    if found:  # timm and transformers models: from their own structure
        return found
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


def prefix_tokens(net: nn.Module) -> int | None:
    """How many tokens a vision transformer puts before its patch tokens, read from the model: timm's
    ``num_prefix_tokens``, else the sizes of its class/distillation/register token parameters
    (torchvision ``class_token``, transformers ``cls_token`` + ``distillation_token``); None if it has none."""
    n = getattr(net, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    total, found = 0, False
    for name, p in net.named_parameters():
        if name.rsplit(".", 1)[-1] in _PREFIX_PARAMS and p.dim() == 3:
            total, found = total + int(p.shape[1]), True
    return total if found else None


def channels_last_model(net: nn.Module, arch: str | None = None) -> bool:
    """Whether ``net``'s 4-D feature maps are channels-last (B, h, w, C): timm's ``output_fmt == "NHWC"``
    (Swin), torchvision's Swin."""
    fmt = getattr(net, "output_fmt", None)
    if fmt is not None:
        return str(getattr(fmt, "value", fmt)).upper() == "NHWC"
    return architecture(net, arch) in _NHWC


def is_timm(net: nn.Module) -> bool:
    """Whether ``net`` is a timm model (its class comes from the ``timm`` package)."""
    return type(net).__module__.split(".", 1)[0] == "timm"


def is_transformers(net: nn.Module) -> bool:
    """Whether ``net`` is a Hugging Face transformers model."""
    return type(net).__module__.split(".", 1)[0] == "transformers"


def _has(net: nn.Module, name: str) -> bool:
    try:
        net.get_submodule(name)
        return True
    except AttributeError:
        return False


def _last_child(net: nn.Module, name: str) -> str | None:
    if not _has(net, name):
        return None
    children = list(net.get_submodule(name).named_children())
    return f"{name}.{children[-1][0]}" if children else None


def _block_norm(net: nn.Module, blocks: str) -> str | None:
    """The first LayerNorm of the last transformer block in ``blocks`` (``blocks.11.norm1``): its
    output reaches the logits through attention, so every patch token gets a gradient (the last
    block's output reaches them through the class token only)."""
    last = _last_child(net, blocks)
    if last is None:
        return None
    norms = [n for n, c in net.get_submodule(last).named_children()
             if isinstance(c, nn.LayerNorm) or type(c).__name__.lower().endswith("layernorm")]
    if not norms:
        return None
    preferred = [n for n in _BLOCK_NORMS if n in norms]
    return f"{last}.{(preferred or norms)[0]}"


# timm classes -> the layer whose output feeds the global pooling
_TIMM = {"ResNet": "layer4", "EfficientNet": "bn2", "RegNet": "s4", "ResNetV2": "norm", "FastVit": "final_conv",
         "DenseNet": "features"}


def _timm_cam_layer(net: nn.Module) -> str | None:
    """Default CAM layer of a timm model: known families (ResNet ``layer4``, EfficientNet ``bn2``,
    RegNet ``s4``), vision transformers (ViT, DeiT, BEiT, EVA: the last block's ``norm1``), Swin (the
    last stage, channels-last), else the last stage/block (ConvNeXt ``stages.3``, MobileNetV3)."""
    name = _TIMM.get(type(net).__name__)
    if name and _has(net, name):
        return name
    if getattr(net, "num_prefix_tokens", None) is not None and _has(net, "blocks"):
        return _block_norm(net, "blocks")
    for container in ("layers", "stages", "blocks") if channels_last_model(net) else ("stages", "blocks", "layers"):
        found = _last_child(net, container)
        if found:
            return found
    return None


def _hf_cam_layer(net: nn.Module) -> str | None:
    """Default CAM layer of a transformers image classifier: ViT-like models (a class token; ViT, DeiT,
    BEiT, DINOv2): the last encoder block's first LayerNorm; Swin: the final LayerNorm (tokens of
    the last stage); CNNs (ConvNeXt, ResNet, RegNet): the last encoder stage; else None."""
    base = getattr(net, "base_model_prefix", "") or ""
    model_type = str(getattr(getattr(net, "config", None), "model_type", "") or "")
    if "swin" in model_type and _has(net, f"{base}.layernorm"):
        return f"{base}.layernorm"
    if prefix_tokens(net) is not None:
        lists = [n for n, m in net.named_modules() if isinstance(m, nn.ModuleList) and len(m)
                 and any(isinstance(c, nn.LayerNorm) for c in m[-1].children())]
        if lists:
            return _block_norm(net, lists[-1])
    return _last_child(net, f"{base}.encoder.stages") if base else None


def layer_layout(net: nn.Module, arch: str | None, output: torch.Tensor) -> str:
    """How a layer's ``output`` holds its spatial grid: ``nchw``, ``nhwc`` (Swin) or ``tokens[:P]`` (B, N, D)."""
    if output.dim() == 3:
        prefix = prefix_tokens(net)
        return "tokens" if prefix is None else f"tokens:{prefix}"
    if output.dim() != 4:
        raise FaithmapError(f"CAM layers need a (B, C, h, w) or (B, tokens, D) output; this layer gives shape "
                            f"{tuple(output.shape)}; name another with --layer")
    return "nhwc" if channels_last_model(net, arch) else "nchw"


def token_grid(n_tokens: int, input_hw: tuple[int, int], prefix: int | None = None) -> tuple[int, int, int]:
    """(prefix, gh, gw): ``n_tokens`` = prefix tokens (class/distillation/register) + a gh x gw patch grid.

    With ``prefix`` unknown, the smallest prefix (up to 8) whose remainder forms a grid of exactly the
    input's aspect ratio is taken (ViT: 197 = 1 + 14 x 14). With ``prefix`` read from the model, the
    remaining tokens are arranged as the factor pair closest to the input's aspect ratio (inputs not
    divisible by the patch size lose their last partial patch, so the ratio need not be exact).
    """
    H, W = input_hw
    if prefix is not None:
        n = n_tokens - prefix
        if prefix < 0 or n < 1:
            raise FaithmapError(f"the layer gives {n_tokens} tokens, but the model puts {prefix} before its "
                                f"patch grid; name another layer")
        import math

        pairs = [(gh, n // gh) for gh in range(1, n + 1) if n % gh == 0]
        gh, gw = min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(H / W)))
        return prefix, gh, gw
    for guess in range(min(n_tokens, 9)):
        n = n_tokens - guess
        # gh / gw = H / W and gh * gw = n
        gh = round((n * H / W) ** 0.5)
        if gh > 0 and n % gh == 0 and (n // gh) * H == gh * W:
            return guess, gh, n // gh
    raise FaithmapError(f"cannot arrange {n_tokens} tokens as a patch grid of a {H}x{W} input; name another layer")


def _layout_prefix(layout: str) -> int | None:
    return int(layout.split(":", 1)[1]) if ":" in layout else None


def to_grid(t: torch.Tensor, layout: str, input_hw: tuple[int, int]) -> torch.Tensor:
    """A layer output (or its gradient) as a (B, C, h, w) grid."""
    if layout == "nchw":
        return t
    if layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    prefix, gh, gw = token_grid(t.shape[1], input_hw, _layout_prefix(layout))
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
