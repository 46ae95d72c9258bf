"""Reading weight files (PyTorch state dicts and safetensors) and fitting them to a network, with one
clear line for every way a file can be wrong. Nothing here unpickles code: PyTorch files are read
with ``weights_only=True`` and safetensors files hold tensors only."""

from __future__ import annotations

import os
import pickle
import re

import torch
from torch import nn

from ..errors import FaithmapError

_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")  # training checkpoints keep the weights here


def _kind(path: str) -> str:
    """``safetensors``, ``torch`` (a zip archive or a bare pickle) or ``unknown``, from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27):
        return "safetensors"
    return "safetensors" if path.endswith(".safetensors") else "unknown"


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a PyTorch state dict (``torch.save(model.state_dict())``, also
    inside a training checkpoint under ``state_dict``/``model``) or a ``.safetensors`` file.
    A ``module.`` prefix (DataParallel) is removed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FaithmapError(f"weights file not found: {path}")
    kind = _kind(path)
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors is a dependency
            raise FaithmapError(f"{path} is a safetensors file; reading it needs the safetensors package "
                                f"(pip install safetensors)") from None
        try:
            obj = load_file(path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - a damaged file is one clear error
            raise FaithmapError(f"cannot read weights {path}: not a valid safetensors file "
                                f"({str(exc).splitlines()[0][:120]})") from None
    elif kind == "torch":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" (it stores a {found.group(1)} object)" if found else ""
            raise FaithmapError(
                f"{path} is not a plain state dict of tensors{what}: faithmap never unpickles code; save the "
                f"weights alone (torch.save(model.state_dict(), path) or a .safetensors file) and pass that") from None
        except Exception as exc:  # noqa: BLE001 - a damaged file is one clear error
            raise FaithmapError(f"cannot read weights {path}: {str(exc).splitlines()[0][:160]}") from None
    else:
        raise FaithmapError(f"cannot read weights {path}: neither a PyTorch weights file nor a safetensors file")
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = "an empty dict" if isinstance(obj, dict) and not obj else type(obj).__name__
        raise FaithmapError(f"{path} is not a plain state dict of tensors (it holds {what}); save "
                            f"model.state_dict() or a .safetensors file")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def classes_in(state: dict[str, torch.Tensor], layer: str | None, path: str, default: int = 1000) -> int:
    """The number of classes of the final layer ``layer`` (its weight's first dimension), or
    ``default`` when the file does not have that layer (the fit check then names what is missing)."""
    w = state.get(f"{layer}.weight") if layer else None
    if w is None:
        return default
    if w.dim() == 0 or w.shape[0] < 1:
        shape = "x".join(str(d) for d in w.shape) or "a scalar"
        raise FaithmapError(f"{path}: the final layer {layer} has 0 outputs (weight {shape}); a classifier "
                            f"needs at least one class")
    return int(w.shape[0])


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def mismatch(net: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``net``, in a few words, or None when it fits."""
    own = net.state_dict()
    counted = [k for k in own if not k.endswith("num_batches_tracked")]  # optional in a state dict
    missing = [k for k in counted if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) differ in shape (e.g. {k}: {_shape(state[k])} in the file, "
                     f"{_shape(own[k])} in the model)")
    if extra:
        parts.append(f"{len(extra)} of the file's {len(state)} tensors have no place in the model (e.g. {extra[0]})")
    if missing:
        parts.append(f"{len(missing)} of the model's {len(counted)} tensors are missing (e.g. {missing[0]})")
    return "; ".join(parts) or None


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], path: str, name: str) -> nn.Module:
    """Load ``state`` into ``net`` strictly; weights of another architecture are one line naming the mismatch."""
    problem = mismatch(net, state)
    if problem:
        raise FaithmapError(f"{path} does not fit {name} ({problem}); are these weights for another architecture?")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise FaithmapError(f"{path} does not fit {name}: {str(exc).splitlines()[0][:200]}") from None
    return net
