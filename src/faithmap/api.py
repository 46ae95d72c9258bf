"""The public entry point :func:`explain`."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from .core.device import resolve_device
from .core.progress import Callback
from .explanation import Explanation, model_reference
from .errors import FaithmapError
from .models import Classifier, load, wrap
from .registry import METHODS, check_class_count, check_params  # noqa: F401  (re-exported: faithmap.api.check_params)


def as_classifier(model) -> Classifier:
    """A :class:`Classifier` from a Classifier, a model name, or any ``nn.Module`` (ImageNet statistics)."""
    if isinstance(model, Classifier):
        return model
    if isinstance(model, str):
        return load(model)
    if isinstance(model, nn.Module):
        return wrap(model)
    raise FaithmapError(f"expected a model name, a Classifier or a torch.nn.Module, got {type(model).__name__}")


def as_batch(clf: Classifier, images, device=None) -> torch.Tensor:
    """Normalised (B, 3, H, W) inputs from a tensor of model inputs, or photos to preprocess."""
    if isinstance(images, torch.Tensor):
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise FaithmapError(f"images must be a (B, C, H, W) tensor, got shape {tuple(images.shape)}")
        if not x.is_floating_point():
            raise FaithmapError(f"images must be a float tensor of model inputs, got {x.dtype}")
        if x.shape[0] == 0:
            raise FaithmapError("no images to explain")
        channels = int(clf.mean.numel())  # one statistic broadcasts over any number of channels
        if channels > 1 and x.shape[1] != channels:
            raise FaithmapError(f"images must have {channels} channels for this model, got a tensor of shape "
                                f"{tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise FaithmapError("images contain NaN or infinite values")
        return x.to(device) if device is not None else x
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise FaithmapError("no images to explain")
        x = clf.preprocess(list(images))
        if not torch.isfinite(x).all():
            raise FaithmapError("images contain NaN or infinite values")
        return x.to(device) if device is not None else x
    raise FaithmapError(f"cannot explain {type(images).__name__}; pass a tensor or photos")


DEFAULT_METHOD = "gradcam"
"""The method of :func:`explain` and ``faithmap explain`` when none is named: Grad-CAM answers in about a
second a photo on a CPU (I-GOS, the papers' method, takes minutes there: ``method="igos"``)."""


def explain(model, images, method: str = DEFAULT_METHOD, target=None, *, device: str | torch.device | None = None,
            progress: bool | Callback | None = None, **params: Any) -> Explanation:
    """Explain ``model``'s decisions on ``images`` with a registered ``method`` (default ``gradcam``).

    ``model``: a :class:`faithmap.models.Classifier`, a model name, or any ``nn.Module`` (taken to
    expect ImageNet-normalised inputs). ``images``: model inputs (B, 3, H, W) or photos (PIL
    images / uint8 arrays, preprocessed by the model). ``target``: ``None``/``"top1"``, a class
    index or name, or one per image. ``params`` go to the method (see ``faithmap methods``).
    ``progress``: ``True`` shows a tqdm bar on stderr over the iterations of iterative methods (the
    mask optimisers: igos, igos++, mask, extremal, sigcam/aop) and the batches of RISE and
    occlusion; a callable ``progress(done, total, unit)`` hears the same; default: nothing. It
    changes neither the maps nor the model images.
    Returns an :class:`Explanation` on the input's device, with the seconds and the number of
    images the method sent through the model; it keeps a reference to the inputs (to draw them:
    ``exp.show()``), not to the model's weights. A target that asks for the model's prediction costs
    one forward pass before the method (its logits land in ``extras["logits"]``); explicit targets
    of a model with known class names cost none.
    """
    spec = METHODS.get(method)
    clf = as_classifier(model)
    if device is not None:
        clf = clf.to(resolve_device(device))
    x = as_batch(clf, images, clf.device)
    params = {k: v for k, v in params.items() if v is not None}
    check_params(spec, params)
    callback = progress_callback(progress, spec.name)
    try:
        out = spec.run(clf, x, target, params, callback)
    finally:
        if hasattr(callback, "close"):
            callback.close()
    keep_for_drawing(out, clf, x)
    return out


def keep_for_drawing(exp: Explanation, clf: Classifier, x: torch.Tensor) -> None:
    """What ``exp`` keeps to draw itself: the inputs (a reference), the normalisation, the target
    names, the model's name and a weak reference to the model."""
    exp.inputs = x.detach()
    exp.mean, exp.std = clf.mean.detach(), clf.std.detach()
    exp.target_names = [clf.class_name(int(i)) for i in exp.target.flatten().tolist()]
    exp.model_name = clf.name
    exp.model_ref = model_reference(clf)


class TqdmProgress:
    """``progress=True``: one tqdm bar on stderr per engine run (``callback(done, total, unit)``)."""

    def __init__(self, desc: str, **tqdm_kwargs: Any):
        self.desc = desc
        self.kwargs = tqdm_kwargs
        self.bar = None

    def __call__(self, done: int, total: int, unit: str) -> None:
        if self.bar is None or done == 0:
            self.close()
            self.bar = tqdm(total=total, desc=self.desc, unit=unit, file=sys.stderr, **self.kwargs)
        self.bar.update(done - self.bar.n)
        if done >= total:  # the last step is always drawn, however fast the steps came (tqdm's mininterval)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_callback(progress, desc: str) -> Callback | None:
    """The callback of ``progress=``: None (off), a :class:`TqdmProgress` bar (True) or the user's callable."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return TqdmProgress(desc, leave=False)
    if callable(progress):
        return progress
    raise FaithmapError(f"progress must be True, False or a callable (done, total, unit), got {type(progress).__name__}")
