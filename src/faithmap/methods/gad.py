"""GAD maps (Mazini Rodrigues, Boutry & Najman, 2024, sec. 4.3): the features that a gradient
method finds important for the original model *and* for every support regression model.

Any registered method can be the base. Each model's map marks its important pixels (the top
``fraction`` of the pixels, values > 0; :func:`faithmap.metrics.regions.important_pixels`); the GAD
map keeps the original map's values on the pixels marked in every map and is 0 elsewhere. It
therefore never marks a pixel that the original map does not mark (sec. 4: "it must not introduce
new crucial pixels").

The support models come from :func:`faithmap.gad.support_models` (or ``faithmap gad``). The
registered method ``gad`` takes them as ``supports``: a list of models, or the folder of a cache
entry (``--param supports=DIR`` on the command line). Without support models the GAD map is the
base map restricted to its own important pixels (the alpha = 0 model alone). Base methods with a
channel reduction use magnitude maps (:data:`MAGNITUDE`) unless told otherwise.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import torch
from torch import nn

from ..core.batching import Seed
from ..explanation import Explanation
from ..errors import FaithmapError
from ..metrics.regions import important_pixels
from ..models import Classifier
from ..registry import METHODS, check_params, register_method

MAGNITUDE = "abs-sum"
"""The channel reduction of the base maps unless ``base_params`` names one: importance is magnitude.

The paper's five methods are Captum's, whose image visualisation shows absolute values by
default; and with signed maps the "top half" of a Gradient x Input or IG map is every positive
pixel however faint (fewer than half are positive on photos with dark backgrounds), so the hulls
reach the image's edges. ``base_params={"reduce": "sum"}`` (``--param reduce=sum``) keeps signed maps.
"""


# ----------------------------------------------------------------------------------------------
# support models: a cache entry of `faithmap gad` (faithmap.gad.support trains them)
# ----------------------------------------------------------------------------------------------
def clone_classifier(model: Classifier, net: nn.Module, name: str | None = None) -> Classifier:
    """A :class:`Classifier` around ``net`` with ``model``'s preprocessing, classes and CAM layer."""
    clf = Classifier(net, mean=tuple(model.mean.flatten().tolist()), std=tuple(model.std.flatten().tolist()),
                     input_size=model.input_size, resize_size=model.resize_size, class_names=model.class_names,
                     cam_layer=model.cam_layer, name=name or model.name, resize=model.resize)
    clf.channels_last = model.channels_last
    return clf.to(model.device)


def freeze(net: nn.Module) -> nn.Module:
    """``net`` in eval mode without gradients (a finished support model)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def frozen_copy(net: nn.Module, state: dict) -> nn.Module:
    """A copy of ``net`` with the weights ``state``, frozen (:func:`freeze`)."""
    out = copy.deepcopy(net)
    out.load_state_dict(state)
    return freeze(out)


def read_state(path: str):
    """A saved support model's state dict (or checkpoint) from ``path``; None when the file cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache file is treated as missing
        return None


def load_supports(model: Classifier, directory: str) -> list[Classifier]:
    """The support models stored in a cache entry ``directory`` (``alpha-*.pt``), by increasing alpha,
    each on ``model``'s architecture."""
    directory = os.path.expanduser(directory)
    if not os.path.isdir(directory):
        raise FaithmapError(f"no such folder of support models: {directory}")
    files = [f for f in os.listdir(directory) if f.startswith("alpha-") and f.endswith(".pt")]
    if not files:
        raise FaithmapError(f"{directory} holds no support models (alpha-*.pt); train them with `faithmap gad`")
    out = []
    for f in sorted(files, key=lambda f: float(f[len("alpha-"):-3])):
        state = read_state(os.path.join(directory, f))
        if state is None or "net" not in state:
            raise FaithmapError(f"cannot read support model {f} in {directory}")
        try:
            net = frozen_copy(model.net, state["net"])
        except RuntimeError as exc:
            raise FaithmapError(f"{f} does not fit model {model.name}: {str(exc).splitlines()[0][:160]}") from None
        out.append(clone_classifier(model, net, f"{model.name}-gad{f[len('alpha-'):-3]}"))
    return out


def _as_supports(model, supports) -> list:
    if supports is None:
        return []
    if isinstance(supports, str):
        return load_supports(model, supports)
    if isinstance(supports, nn.Module):
        supports = [supports]
    out = []
    for s in supports:
        if isinstance(s, Classifier):
            out.append(s)
        elif isinstance(s, nn.Module):
            out.append(clone_classifier(model, s, f"{model.name}-support"))
        else:
            raise FaithmapError(f"supports must be models or a folder of support models, got {type(s).__name__}")
    return out


def gad_maps(model, supports: Sequence, x: torch.Tensor, target: torch.Tensor, base: str = "ig", *,
             fraction: float = 0.5, base_params: dict[str, Any] | None = None,
             batch_size: int | None = None, seed: Seed = 0) -> Explanation:
    """GAD map of ``base`` for the original ``model`` and its ``supports`` (sec. 4.3).

    Returns an :class:`Explanation` whose ``saliency`` is the GAD map, with ``extras``:
    ``original`` (the base map of the original model), ``keep`` (bool, the GAD pixels),
    ``important`` (bool (B, 1 + S, h, w), each model's important pixels) and ``support_maps``.
    The images the support models see are added to ``model``'s counter.
    """
    spec = METHODS.get(base)
    if spec.name == "gad":
        raise FaithmapError("gad cannot be its own base method")
    if not 0 < fraction <= 1:
        raise FaithmapError(f"fraction must be in (0, 1], got {fraction}")
    params = dict(base_params or {})
    if "reduce" in spec.params and "reduce" not in params:
        params["reduce"] = MAGNITUDE
    for key, value in (("batch_size", batch_size), ("seed", seed)):
        if key in spec.params and key not in params and value is not None:
            params[key] = value
    given = {k: v for k, v in params.items() if v is not None}  # as faithmap.explain takes them
    check_params(spec, given)
    models = [model, *supports]
    maps = []
    for m in models:
        before = m.counter.snapshot()
        e = spec.run(m, x.to(m.device), target, given)
        if m is not model:  # charge the support models' images to this explanation
            c = m.counter.since(before)
            model.counter.images += c["images"]
            model.counter.grad_images += c["grad_images"]
            model.counter.calls += 1
        maps.append(e.saliency.detach())
    shapes = {tuple(s.shape) for s in maps}
    if len(shapes) != 1:
        raise FaithmapError(f"the support models' maps differ in shape: {sorted(shapes)}")
    important = torch.stack([important_pixels(s, fraction) for s in maps], 1)
    keep = important.all(1)
    original = maps[0]
    gad = torch.where(keep, original, torch.zeros_like(original))
    return Explanation(gad, target, params={"base": spec.name, "fraction": fraction, **params},
                       extras={"original": original, "keep": keep, "important": important,
                               "support_maps": torch.stack(maps[1:], 1) if len(maps) > 1 else None,
                               "supports": len(supports), "base": spec.name})


@register_method(
    "gad", family="gad", paper="Mazini Rodrigues, Boutry & Najman, 2024",
    summary="GAD: the base method's important pixels (top half) shared by the original and every support "
            "regression model trained on distanced logits (supports=DIR from `faithmap gad`)",
    fast={"base_fast": True},
)
def gad(model, x: torch.Tensor, target: torch.Tensor, *, base: str = "ig", supports: Any = (), fraction: float = 0.5,
        base_params: dict | None = None, base_fast: bool = False, batch_size: int | None = None,
        seed: Seed = 0) -> Explanation:
    """GAD (sec. 4.3) on the registered method ``base``; ``supports``: support models or a cache folder."""
    spec = METHODS.get(base)
    params = dict(spec.fast) if base_fast else {}
    params.update(base_params or {})
    return gad_maps(model, _as_supports(model, supports), x, target, spec.name, fraction=fraction,
                    base_params=params, batch_size=batch_size, seed=seed)
