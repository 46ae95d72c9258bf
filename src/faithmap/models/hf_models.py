"""Hugging Face transformers image classifiers (``faithmap[hf]``) from a local folder written by
``save_pretrained``: ``AutoModelForImageClassification`` and ``AutoImageProcessor`` with
``local_files_only=True``, so nothing is fetched from a hub, and never ``trust_remote_code``, so no
code from a model folder runs. The logits are read from the output object (``.logits``)."""

from __future__ import annotations

import contextlib
import os
import pickle

from torch import nn

from ..errors import FaithmapError
from .classifier import IMAGENET_MEAN, IMAGENET_STD

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise FaithmapError("hf: models need the transformers package: pip install 'faithmap[hf]'") from None
    return transformers


@contextlib.contextmanager
def quiet():
    """transformers' load reports and progress bars off (they go to stderr), restored afterwards."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def check_folder(folder: str) -> str:
    """``folder`` expanded, if it looks like ``save_pretrained`` output; else one line saying what is wrong."""
    path = os.path.expanduser(os.fspath(folder or ""))
    hint = "hf:DIR takes a local folder written by save_pretrained; faithmap never downloads"
    if not path:
        raise FaithmapError(f"hf: needs a folder ({hint})")
    if not os.path.exists(path):
        raise FaithmapError(f"no such folder: {folder} ({hint})")
    if not os.path.isdir(path):
        raise FaithmapError(f"{folder} is a file, not a folder ({hint})")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FaithmapError(f"{folder} is not a saved transformers model: it has no config.json ({hint})")
    if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        raise FaithmapError(f"{folder} has a config.json but no weights (model.safetensors or pytorch_model.bin)")
    return path


def build(folder: str) -> tuple[nn.Module, object | None]:
    """The model in ``folder`` (eval mode) and its image processor (None when the folder has none)."""
    path = check_folder(folder)
    transformers = import_transformers()
    with quiet():
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable config is one clear error
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise FaithmapError(f"cannot read {folder}/config.json: {first}") from None
        if int(getattr(config, "num_labels", 1) or 0) < 1:
            raise FaithmapError(f"{folder}: the model has 0 labels (num_labels 0, no classification head); a "
                                f"classifier needs at least one class")
        try:
            net, info = transformers.AutoModelForImageClassification.from_pretrained(
                path, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise FaithmapError(f"{folder} holds a {config.model_type} model, which is not an image classifier "
                                    f"(transformers has no AutoModelForImageClassification for it)") from None
            raise FaithmapError(f"cannot load the model in {folder}: {str(exc).splitlines()[0][:160]}") from None
        except Exception as exc:  # noqa: BLE001 - damaged weights etc. are one clear error
            if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
                raise FaithmapError(f"the weights in {folder} are not a plain state dict of tensors (they pickle "
                                    f"Python objects): faithmap never unpickles code; save the model with "
                                    f"save_pretrained (model.safetensors)") from None
            raise FaithmapError(f"cannot load the model in {folder}: {str(exc).splitlines()[0][:160]}") from None
        cls = type(net).__name__
        shapes = sorted(info.get("mismatched_keys") or [], key=str)
        if shapes:
            k, ckpt, model = (list(shapes[0]) + [None, None])[:3]
            fmt = lambda s: "x".join(str(d) for d in s) if s is not None else "?"  # noqa: E731
            raise FaithmapError(f"the weights in {folder} do not fit {cls} ({len(shapes)} tensor(s) differ in shape, "
                                f"e.g. {k}: {fmt(ckpt)} in the file, {fmt(model)} in the config); are they for "
                                f"another architecture or another number of labels?")
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise FaithmapError(f"the weights in {folder} do not fit {cls}: {len(missing)} of its tensors are not in "
                                f"the folder (e.g. {missing[0]}); a model without its classification head, or "
                                f"weights for another architecture?")
        processor = None
        if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            try:
                processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
            except Exception as exc:  # noqa: BLE001
                raise FaithmapError(f"cannot read {folder}/preprocessor_config.json: "
                                    f"{str(exc).splitlines()[0][:160]}") from None
    return net.eval(), processor


def _get(obj, key):
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _resample_name(value) -> str:
    if value is None:
        return "bilinear"
    if isinstance(value, int) and not isinstance(value, bool):
        return _RESAMPLE.get(int(value), "bilinear")
    text = str(getattr(value, "name", None) or getattr(value, "value", None) or value).lower()
    for name in ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"):
        if name in text:
            return name
    try:
        return _RESAMPLE.get(int(getattr(value, "value", value)), "bilinear")
    except (TypeError, ValueError):
        return "bilinear"


def _config_size(config) -> int:
    size = _get(config, "image_size") or 224
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def default_processor(config):
    """The image processor class that transformers pairs with ``config.model_type``, with its defaults
    except the size: the config's ``image_size`` (224 when it has none), also as the crop size;
    None when there is no such class."""
    transformers = import_transformers()
    try:
        from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    except ImportError:  # pragma: no cover - older transformers
        return None
    entry = IMAGE_PROCESSOR_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if isinstance(entry, dict):
        names = [entry.get("torchvision"), entry.get("pil"), *entry.values()]
    elif isinstance(entry, (tuple, list)):
        names = list(entry)
    else:
        names = [entry]
    side = _config_size(config)
    for name in names:
        cls = getattr(transformers, name, None) if name else None
        if cls is None:
            continue
        try:
            plain = cls()
            size = ({"shortest_edge": side} if _get(_get(plain, "size"), "shortest_edge")
                    else {"height": side, "width": side})
            extra = {"crop_size": {"height": side, "width": side}} if _get(plain, "do_center_crop") else {}
            return cls(size=size, **extra)
        except Exception:  # noqa: BLE001 - a processor that needs an extra backend: try the next
            continue
    return None


def preprocessing(processor, config=None, input_size: int | None = None) -> tuple[dict, list[str]]:
    """Classifier keyword arguments (mean, std, input_size, resize_size, resize, interpolation) that
    reproduce ``processor`` (an image processor of transformers), and notes on what is approximated.

    ``size={"height", "width"}`` (ViT, Swin, BEiT): the whole photo resized (``squash``);
    ``size={"shortest_edge"}`` with ``crop_pct`` (ConvNeXt, ResNet, RegNet): shorter side to
    ``int(size / crop_pct)``, centre crop ``size`` (a warp without crop at 384 or more, as there);
    ``shortest_edge`` + ``crop_size`` (BiT, DINOv2, CLIP): shorter side, then centre crop.
    Rescaling (``rescale_factor``, ``rescale_offset``) is folded into mean and std. ``input_size``
    (another size than the processor's) keeps the processor's rule: ``int(size / crop_pct)`` for
    ConvNeXt's, else the same ratio of resize to crop.
    """
    want = int(input_size) if input_size else None
    notes: list[str] = []
    size = _get(processor, "size")
    height, width, short = _get(size, "height"), _get(size, "width"), _get(size, "shortest_edge")
    crop = _get(processor, "crop_size") if _get(processor, "do_center_crop") else None
    ch = _get(crop, "height")
    crop_pct = _get(processor, "crop_pct")
    name = type(processor).__name__
    if _get(processor, "do_resize") is False:
        notes.append(f"{name} does not resize; faithmap resizes anyway (photos of any size must fit the model)")
    if short:
        short = int(short)
        if crop_pct is not None and "ConvNext" in name:
            if short < 384:
                resize, input_size, resize_size = "crop", short, int(short / float(crop_pct))
            else:
                resize, input_size, resize_size = "squash", short, short
        elif ch:
            resize, input_size, resize_size = "crop", int(ch), short
        else:
            resize, input_size, resize_size = "crop", short, short
            notes.append(f"{name} keeps the photo's aspect ratio (shortest edge {short}); faithmap takes the centre "
                         f"{short}x{short} square")
    elif height and width:
        if int(height) != int(width):
            raise FaithmapError(f"{name} resizes to {height}x{width}; faithmap handles square inputs only")
        if ch and int(ch) < int(height):
            resize, input_size, resize_size = "crop", int(ch), int(height)
            notes.append(f"{name} squashes photos to {height}x{width} before its centre crop {ch}; faithmap resizes "
                         f"the shorter side to {height} instead (the same for square photos)")
        else:
            resize, input_size, resize_size = "squash", int(height), int(height)
    else:
        image_size = _config_size(config)
        resize, input_size, resize_size = "crop", image_size, image_size
        notes.append(f"{name} gives no usable size; faithmap resizes the shorter side to {image_size} and crops "
                     f"the centre")
    if want and want != input_size:
        if crop_pct is not None and "ConvNext" in name and short:
            resize, resize_size = ("crop", int(want / float(crop_pct))) if want < 384 else ("squash", want)
        else:
            resize_size = max(want, round(resize_size * want / input_size))
        input_size = want
    interp = _resample_name(_get(processor, "resample"))
    if interp not in ("bilinear", "bicubic", "nearest"):
        notes.append(f"{name}'s {interp} resampling is replaced by bicubic")
        interp = "bicubic"
    mean = _get(processor, "image_mean") or (0.0, 0.0, 0.0)
    std = _get(processor, "image_std") or (1.0, 1.0, 1.0)
    if _get(processor, "do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = [float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)]
    std = [float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * 3)]
    # the processor computes ((255 p) r - offset - mean) / std on pixels p in [0, 1]; as (p - m') / s'
    r = float(_get(processor, "rescale_factor") or 1 / 255) if _get(processor, "do_rescale") is not False else 1.0
    offset = 1.0 if _get(processor, "rescale_offset") else 0.0
    k = 255.0 * r
    mean = tuple((m + offset) / k for m in mean)
    std = tuple(s / k for s in std)
    return dict(mean=mean, std=std, input_size=input_size, resize_size=resize_size, resize=resize,
                interpolation=interp, rounding="transformers"), notes


def model_preprocessing(net: nn.Module, processor=None, input_size: int | None = None) -> tuple[dict, list[str]]:
    """Preprocessing of a transformers model: from ``processor`` if given, else from the processor saved
    beside the model (``config._name_or_path`` when it is a local folder), else the default processor
    of its model type at ``config.image_size`` (said in the notes)."""
    config = getattr(net, "config", None)
    notes: list[str] = []
    if processor is None:
        where = str(getattr(config, "_name_or_path", "") or "")
        if where and os.path.isfile(os.path.join(where, "preprocessor_config.json")):
            transformers = import_transformers()
            with quiet():
                try:
                    processor = transformers.AutoImageProcessor.from_pretrained(where, local_files_only=True)
                except Exception:  # noqa: BLE001 - fall back below
                    processor = None
    if processor is None:
        processor = default_processor(config)
        if processor is None:
            kind = "ImageNet preprocessing (no processor class is known for this model type)"
            size = int(input_size) if input_size else _config_size(config)
            kwargs, more = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=size, resize_size=int(size / 0.875),
                                resize="crop", interpolation="bilinear", rounding="transformers"), []
        else:
            kind = f"the default {type(processor).__name__}"
            kwargs, more = preprocessing(processor, config, input_size)
        notes.append(f"no image processor saved with the model: using {kind} at the config's image size (input "
                     f"{kwargs['input_size']} px, {kwargs['resize']}, mean "
                     f"{tuple(round(v, 4) for v in kwargs['mean'])}, std {tuple(round(v, 4) for v in kwargs['std'])}); "
                     f"pass processor= to wrap() or save the processor into the folder to be sure")
        return kwargs, notes + more
    return preprocessing(processor, config, input_size)


def class_names(net: nn.Module) -> list[str]:
    """``config.id2label`` in index order (``class i`` where a label is missing)."""
    config = getattr(net, "config", None)
    n = int(getattr(config, "num_labels", 0) or 0)
    labels = getattr(config, "id2label", None) or {}
    labels = {int(k): str(v) for k, v in labels.items()}
    return [labels.get(i, f"class {i}") for i in range(n)]


def model_name(net: nn.Module, folder: str | None = None) -> str:
    if folder:
        return f"hf:{folder}"
    config = getattr(net, "config", None)
    return f"hf:{getattr(config, '_name_or_path', '') or getattr(config, 'model_type', 'model')}"
