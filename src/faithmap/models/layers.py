"""Finding layers by name and choosing the default CAM layer of common architectures."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FaithmapError

# Default CAM layers of torchvision families (the layer whose output feeds global pooling).
_KNOWN = {
    "resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "regnet": "trunk_output",
    "vgg": "features", "alexnet": "features", "densenet": "features", "mobilenet": "features",
    "efficientnet": "features", "convnext": "features", "mnasnet": "layers", "shufflenet": "conv5",
    "squeezenet": "features", "googlenet": "inception5b", "inception": "Mixed_7c", "maxvit": "blocks",
    "vit": "encoder.layers", "swin": "features",
}


def get_layer(net: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``net`` called ``name`` (dotted path, e.g. ``features.17``)."""
    modules = dict(net.named_modules())
    if name in modules:
        return modules[name]
    close = [n for n in modules if n and (n.endswith(name) or name in n)][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FaithmapError(f"the model has no layer {name!r}{hint}")


def _last_child_name(net: nn.Module, name: str) -> str:
    mod = get_layer(net, name)
    children = list(mod.named_children())
    if isinstance(mod, nn.Sequential) or isinstance(mod, nn.ModuleList):
        if children:
            return f"{name}.{children[-1][0]}"
    return name


def default_cam_layer(net: nn.Module, arch: str | None = None, input_size: int = 224) -> str:
    """The default CAM layer: known per torchvision family, else the last module with a 4-D output.

    For Sequential containers of blocks (``features``), the last block is used.
    """
    if arch:
        for prefix, name in sorted(_KNOWN.items(), key=lambda kv: -len(kv[0])):
            if arch.startswith(prefix):
                try:
                    return _last_child_name(net, name) if name in ("features", "encoder.layers", "blocks", "layers") else name
                except FaithmapError:
                    break
    return last_spatial_layer(net, input_size)


def last_spatial_layer(net: nn.Module, input_size: int = 224) -> str:
    """Name of the outermost module producing the last (B, C, h, w) activation with h, w > 1."""
    found: list[tuple[str, tuple]] = []
    hooks = []
    try:
        for name, mod in net.named_modules():
            if not name:
                continue
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: found.append((name, tuple(o.shape)))
                if isinstance(o, torch.Tensor) and o.dim() == 4 and o.shape[-1] > 1 else None))
        dev = next((p.device for p in net.parameters()), torch.device("cpu"))
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                net(torch.zeros(1, 3, input_size, input_size, device=dev))
        finally:
            net.train(was)
    finally:
        for h in hooks:
            h.remove()
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
