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
