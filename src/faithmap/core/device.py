"""Which device to run on: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``, checked once with one clear line."""

from __future__ import annotations

import torch

from ..errors import FaithmapError


def mps_available() -> bool:
    """Whether this machine has an Apple Metal (MPS) device that torch can use."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` asks for, refused with one line when this machine does not have it.

    ``auto`` (or ``None``) picks CUDA when present, else Apple MPS, else the CPU.
    """
    if isinstance(name, torch.device):
        text = str(name)
    elif name is None:
        text = "auto"
    elif isinstance(name, str):
        text = name.strip().lower()
    else:
        raise FaithmapError(f"device must be auto, cpu, cuda, cuda:N or mps, got {type(name).__name__}")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise FaithmapError(f"device {text} was asked for, but no CUDA device is available")
        index = text.partition(":")[2]
        if index:
            if not index.isdigit():
                raise FaithmapError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
            if int(index) >= torch.cuda.device_count():
                raise FaithmapError(f"device {text} was asked for, but this machine has "
                                    f"{torch.cuda.device_count()} CUDA device(s)")
        return torch.device(text)
    if text == "mps":
        if not mps_available():
            raise FaithmapError("device mps was asked for, but this machine has no Apple MPS device")
        return torch.device("mps")
    raise FaithmapError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def mps_fallback_enabled() -> bool:
    """Whether PyTorch runs operators that MPS lacks on the CPU (``PYTORCH_ENABLE_MPS_FALLBACK=1``,
    read by PyTorch when it is imported)."""
    import os

    return os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK", "0").strip() not in ("", "0")


def mps_unsupported(exc: BaseException) -> str | None:
    """One line for an error that Apple's MPS backend raises for something it cannot do, else None.

    Operators that MPS does not implement run on the CPU, one by one, when ``PYTORCH_ENABLE_MPS_FALLBACK=1``
    was set before PyTorch started (PyTorch's own per-operator fallback); without it, and for what no
    fallback covers (float64 tensors), faithmap refuses with this line instead of a traceback.
    """
    import re

    text = str(exc)
    if not re.search(r"\b(MPS|mps)\b", text):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__

    op = re.search(r"operator '([^']+)'", text)
    if op:
        tip = ("it is not covered by the CPU fallback either; use --device cpu" if mps_fallback_enabled() else
               "set PYTORCH_ENABLE_MPS_FALLBACK=1 before starting faithmap to run such operators on the CPU, "
               "or use --device cpu")
        return f"Apple MPS does not implement the operator {op.group(1)}; {tip}"
    if "float64" in text or "double" in text.lower():
        return ("Apple MPS has no float64 (double) tensors, which this computation uses; use --device cpu "
                f"({first[:160]})")
    if isinstance(exc, NotImplementedError) or "not supported" in text.lower() or "not implemented" in text.lower():
        return f"Apple MPS cannot run this: {first[:200]}; use --device cpu"
    return None
