"""A classifier bundled with its preprocessing, class names and default CAM layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..core.batching import EvalCounter
from ..errors import FaithmapError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """Wraps any ``nn.Module`` classifier that maps normalised images (B, 3, H, W) to logits (B, K).

    ``forward`` is the network's forward plus a count of the images sent through it
    (``counter``). ``preprocess`` turns photos into normalised input tensors: the shorter side
    resized to ``resize_size``, a centre crop of ``input_size``, then ``(x - mean) / std``
    (``resize="squash"`` resizes the whole photo to ``input_size`` square instead).
    ``cam_layer`` names the default layer of CAM methods inside ``net`` (e.g. ``"features.17"``).
    ``channels_last`` (set by :func:`faithmap.models.load` for its own networks) sends inputs in
    channels-last memory format, about 1.5x faster for convolutions on CPU. A network that returns
    an output object (transformers' ``ImageClassifierOutput``) gives its ``.logits``. ``notes`` lists
    what the loader approximated or fell back to (e.g. a model folder without a preprocessor config).
    """

    def __init__(self, net: nn.Module, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_size: int = 224, resize_size: int | None = None, class_names: Sequence[str] | None = None,
                 cam_layer: str | None = None, name: str = "custom", resize: str = "crop",
                 interpolation: str = "bilinear", rounding: str = "round"):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = int(input_size)
        self.resize_size = int(resize_size or input_size)
        self.class_names = list(class_names) if class_names is not None else None
        self.cam_layer = cam_layer
        self.name = name
        self.resize = resize
        self.interpolation = interpolation
        self.rounding = rounding
        self.counter = EvalCounter()
        self.channels_last = False
        self.notes: list[str] = []

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.counter.record(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return logits_of(self.net(x))

    @property
    def device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        for b in self.net.buffers():
            return b.device
        return self.mean.device

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    # -- pixels <-> model inputs ---------------------------------------------------------------
    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB images -> model inputs."""
        return (pixels - self.mean.to(pixels)) / self.std.to(pixels)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs -> [0, 1] RGB images (clamped)."""
        return (x * self.std.to(x) + self.mean.to(x)).clamp(0, 1)

    @property
    def transform(self) -> "PhotoTransform":
        """This model's photo -> input transform as a small picklable object (for DataLoader workers)."""
        return PhotoTransform(mean=tuple(float(v) for v in self.mean.flatten()),
                              std=tuple(float(v) for v in self.std.flatten()), input_size=self.input_size,
                              resize_size=self.resize_size, resize=self.resize,
                              interpolation=self.interpolation, rounding=self.rounding)

    def preprocess(self, images) -> torch.Tensor:
        """Photos -> normalised model inputs (B, 3, input_size, input_size) on the model's device.

        Accepts a PIL image, an (H, W, 3) uint8 array, a (3, H, W) float tensor in [0, 1], or a
        list of these (see :class:`PhotoTransform`).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        tf = self.transform
        return torch.stack([tf(im) for im in images]).to(self.device)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, cam_layer={self.cam_layer!r}"


def logits_of(out) -> torch.Tensor:
    """The logits in a network's output: the tensor itself, ``.logits`` of an output object
    (transformers), or the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise FaithmapError(f"the network returned {type(out).__name__}, not logits; wrap a module that returns "
                        f"a (B, classes) tensor")


@dataclass(frozen=True)
class PhotoTransform:
    """Photo -> normalised model input (3, input_size, input_size) on the CPU; picklable.

    ``resize="crop"``: the shorter side resized to ``resize_size`` (``interpolation``: bilinear or
    bicubic, antialiased as PIL does, or nearest),
    then a centre crop of ``input_size``; ``"squash"``: the whole photo resized to ``input_size``
    square (the I-GOS authors' loader). Then ``(x - mean) / std``. Accepts a PIL RGB image, an
    (H, W, 3) uint8 array or a (3, H, W) float tensor in [0, 1].

    ``rounding`` places the pixels of ``crop``: ``"round"`` rounds the longer side and floors the
    crop offsets; ``"torchvision"`` truncates the longer side and rounds the offsets half to even
    as torchvision's ``Resize``/``CenterCrop`` (and so timm's eval transform) do; ``"transformers"``
    truncates the longer side and floors the offsets as transformers' image processors do. The
    timm and transformers loaders choose theirs, so that inputs line up with those libraries' own.
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224
    resize_size: int = 224
    resize: str = "crop"
    interpolation: str = "bilinear"
    rounding: str = "round"

    def __call__(self, im) -> torch.Tensor:
        t = to_float_pixels(im)
        if self.resize == "squash":
            t = resize_to(t, (self.input_size, self.input_size), self.interpolation)
        else:
            t = center_crop(resize_shorter(t, self.resize_size, self.interpolation, self.rounding), self.input_size,
                            self.rounding)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (t - mean) / std

    def geometry(self, photo_hw: tuple[int, int]) -> tuple[float, float, int, int, int]:
        """(scale_x, scale_y, left, top, size): photo pixel p lies at ``p * scale - offset`` in the input."""
        h, w = (int(v) for v in photo_hw)
        size = int(self.input_size)
        if self.resize == "squash":
            return size / w, size / h, 0, 0, size
        nh, nw = shorter_side_size(h, w, int(self.resize_size), self.rounding)
        top, left = crop_offsets(nh, nw, size, self.rounding)
        return nw / w, nh / h, left, top, size


ROUNDINGS = ("round", "torchvision", "transformers")


def shorter_side_size(h: int, w: int, size: int, rounding: str = "round") -> tuple[int, int]:
    """(new h, new w) with the shorter side ``size``; the longer rounded (``round``) or truncated
    (``torchvision``, ``transformers``)."""
    if min(h, w) == size:
        return h, w
    if rounding not in ROUNDINGS:
        raise FaithmapError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    side = (lambda v: max(1, round(v))) if rounding == "round" else (lambda v: max(1, int(v)))
    if h <= w:
        return size, side(size * w / h)
    return side(size * h / w), size


def crop_offsets(h: int, w: int, size: int, rounding: str = "round") -> tuple[int, int]:
    """(top, left) of the centre ``size`` x ``size`` crop of an h x w image: floored (``round``,
    ``transformers``) or rounded half to even as torchvision's ``CenterCrop`` (``torchvision``)."""
    if rounding == "torchvision":
        return max(0, int(round((h - size) / 2.0))), max(0, int(round((w - size) / 2.0)))
    return max(0, (h - size) // 2), max(0, (w - size) // 2)


def to_float_pixels(im) -> torch.Tensor:
    """A (3, H, W) float tensor in [0, 1] on the CPU from a PIL RGB image, uint8 array or float tensor."""
    if isinstance(im, Image.Image):
        if im.mode != "RGB":
            raise FaithmapError(f"expected an RGB image, got mode {im.mode}")
        im = np.asarray(im)
    if isinstance(im, np.ndarray):
        if im.ndim != 3 or im.shape[2] != 3:
            raise FaithmapError(f"expected an (H, W, 3) image array, got shape {tuple(im.shape)}")
        if im.dtype != np.uint8:
            raise FaithmapError(f"expected 8-bit pixels, got {im.dtype}")
        return torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
    if isinstance(im, torch.Tensor):
        if im.dim() != 3 or im.shape[0] != 3:
            raise FaithmapError(f"expected a (3, H, W) tensor, got shape {tuple(im.shape)}")
        return im.detach().float().cpu()
    raise FaithmapError(f"cannot use {type(im).__name__} as an image")


def resize_shorter(t: torch.Tensor, size: int, interpolation: str = "bilinear", rounding: str = "round") -> torch.Tensor:
    """Resize (C, H, W) so that the shorter side is ``size`` (bilinear, antialiased); no-op if equal."""
    h, w = t.shape[-2:]
    if min(h, w) == size:
        return t
    nh, nw = shorter_side_size(h, w, size, rounding)
    return _interpolate(t, (nh, nw), interpolation)


def resize_to(t: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize (C, H, W) to exactly ``size`` (bilinear, antialiased); no-op if equal."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return _interpolate(t, tuple(size), interpolation)


def _interpolate(t: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    if interpolation == "nearest":  # no antialiasing for nearest (PIL's NEAREST has none either)
        return F.interpolate(t.unsqueeze(0), size=size, mode="nearest-exact")[0]
    if interpolation not in ("bilinear", "bicubic"):
        raise FaithmapError(f"interpolation must be bilinear, bicubic or nearest, got {interpolation!r}")
    return F.interpolate(t.unsqueeze(0), size=size, mode=interpolation, align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def center_crop(t: torch.Tensor, size: int, rounding: str = "round") -> torch.Tensor:
    """Centre crop (C, H, W) to ``size`` x ``size`` (offsets: see :func:`crop_offsets`)."""
    h, w = t.shape[-2:]
    top, left = crop_offsets(h, w, size, rounding)
    return t[:, top:top + size, left:left + size]
