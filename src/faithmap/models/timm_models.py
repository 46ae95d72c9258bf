"""timm models (``faithmap[timm]``): built with ``pretrained=False`` from a local weights file, their
preprocessing read from the model's own ``pretrained_cfg`` through timm's data config. Nothing is
downloaded: ``timm.create_model`` is never asked for pretrained weights and hub names are refused."""

from __future__ import annotations

import math

from torch import nn

from ..errors import FaithmapError
from .weights import classes_in, load_weights, read_state_dict

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_REMOTE = ("hf-hub:", "hf_hub:", "local-dir:", "http:", "https:")


def import_timm():
    """The ``timm`` package, or one line saying how to install it."""
    try:
        import timm
        import timm.data  # noqa: F401
    except ImportError:
        raise FaithmapError("timm: models need the timm package: pip install 'faithmap[timm]'") from None
    return timm


def check_name(arch: str) -> str:
    """``arch`` if timm knows it (``resnet50``, ``convnext_tiny.fb_in1k``), else one line with close names."""
    timm = import_timm()
    arch = arch.strip()
    if not arch:
        raise FaithmapError("timm: needs an architecture name, e.g. timm:resnet50 (see timm.list_models())")
    if arch.lower().startswith(_REMOTE) or "/" in arch:
        raise FaithmapError(f"timm:{arch}: faithmap takes timm architecture names only (e.g. timm:convnext_tiny) "
                            f"with a local --weights file; it never fetches models from a hub")
    if timm.is_model(arch):
        return arch
    import difflib

    base = arch.split(".", 1)[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise FaithmapError(f"unknown timm model {arch!r}{hint}")


def _classifier_key(arch: str) -> str | None:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(arch)
    key = getattr(cfg, "classifier", None) if cfg is not None else None
    if isinstance(key, (tuple, list)):  # distilled models: (head, head_dist), both of num_classes outputs
        key = key[0] if key else None
    return key


def build(arch: str, weights: str | None) -> nn.Module:
    """``timm.create_model(arch, pretrained=False)`` with the number of classes of ``weights`` (a state
    dict or safetensors file; ``"random"`` keeps timm's random initialisation), weights loaded strictly."""
    timm = import_timm()
    arch = check_name(arch)
    if not weights:
        raise FaithmapError(f"timm:{arch} needs --weights FILE (a state dict or .safetensors file); "
                            f"faithmap never downloads weights")
    if weights == "random":
        return timm.create_model(arch, pretrained=False).eval()
    state = read_state_dict(weights)
    key = _classifier_key(arch)
    num_classes = classes_in(state, key, weights, default=1000)
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - timm's own refusal, as one line
        raise FaithmapError(f"timm could not build {arch}: {str(exc).splitlines()[0][:200]}") from None
    if key and f"{key}.weight" not in state and key not in dict(net.named_modules()):
        key = None
    if key and f"{key}.weight" not in state:
        rest = {k for k in net.state_dict() if not k.startswith(f"{key}.")}
        if rest and rest <= set(state) | {k for k in rest if k.endswith("num_batches_tracked")}:
            raise FaithmapError(f"{weights} has no final layer {key} (weights of a feature extractor built with "
                                f"num_classes=0?): a classifier needs at least one class")
    return load_weights(net, state, weights, f"timm:{arch}").eval()


def preprocessing(net: nn.Module, input_size: int | None = None) -> tuple[dict, list[str]]:
    """Classifier keyword arguments (mean, std, input_size, resize_size, resize, interpolation) from
    ``timm.data.resolve_model_data_config(net)`` (the model's ``pretrained_cfg``), as timm's eval
    transform does it: shorter side to ``floor(size / crop_pct)``, centre crop ``size``.

    The size is the model's own when it was built for another one than its pretrained config says
    (``create_model(..., img_size=64)`` of a ViT); ``input_size`` overrides both. Returns the
    arguments and notes on anything approximated.
    """
    import timm.data

    cfg = timm.data.resolve_model_data_config(net)
    notes: list[str] = []
    _, h, w = cfg["input_size"]
    pe = getattr(net, "patch_embed", None)
    built = getattr(pe, "img_size", None)
    if (built is not None and not getattr(net, "dynamic_img_size", False) and getattr(pe, "strict_img_size", True)
            and tuple(built) != (h, w)):
        h, w = (int(v) for v in built)
    if input_size:
        h = w = int(input_size)
    if h != w:
        raise FaithmapError(f"this timm model takes {h}x{w} inputs; faithmap handles square inputs only "
                            f"(wrap it with input_size=N)")
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    mode = str(cfg.get("crop_mode") or "center")
    scale = int(math.floor(h / crop_pct))
    resize = "crop"
    if mode == "squash" and scale == h:
        resize = "squash"
    elif mode != "center":
        notes.append(f"timm's crop_mode {mode!r} (crop_pct {crop_pct:g}) is approximated: shorter side resized to "
                     f"{scale}, centre crop {h}")
    interp = str(cfg.get("interpolation") or "bilinear")
    if interp not in INTERPOLATIONS:
        notes.append(f"timm's interpolation {interp!r} is replaced by bicubic")
        interp = "bicubic"
    kwargs = dict(mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]), input_size=h,
                  resize_size=scale, resize=resize, interpolation=interp, rounding="torchvision")
    return kwargs, notes


def class_names(net: nn.Module, imagenet: tuple[str, ...]) -> list[str]:
    """The model's class names: its pretrained config's, else ImageNet's for 1000 classes, else ``class i``."""
    n = int(getattr(net, "num_classes", 0) or 0)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    for key in ("label_descriptions", "label_names"):
        names = cfg.get(key) if isinstance(cfg, dict) else None
        if names and len(names) == n:
            return [str(v) for v in names]
    if n == 1000:
        return list(imagenet)
    return [f"class {i}" for i in range(n)]


def architecture_name(net: nn.Module) -> str:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"timm:{arch or type(net).__name__.lower()}"
