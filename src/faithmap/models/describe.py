"""What a model says about itself: class names, normalisation, input size; checked once, at the boundary.

``faithmap.models.load(..., class_names=, mean=, std=, input_size=)``, ``wrap(...)`` with the same
keywords and the CLI's ``--classes FILE --mean A,B,C --std A,B,C --input-size N`` all go through
:func:`describe`. Class names come as a list, a dict index -> name, or a file: one name per line, or
JSON (a list, or an object whose keys are the class indices).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import torch

from ..errors import FaithmapError

MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 4096


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a file: JSON (a list of names, or an object index -> name), else one name per line."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise FaithmapError(f"class names file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FaithmapError(f"cannot read class names file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise FaithmapError(f"class names file {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        return class_name_list(data, f"class names file {path}")
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    return class_name_list(names, f"class names file {path}")


def class_name_list(value: Any, where: str = "class_names") -> list[str]:
    """Names as a list from a list, a dict index -> name (indices 0..K-1, each once) or a file path."""
    if isinstance(value, (str, os.PathLike)):
        return read_class_names(value)
    if isinstance(value, Mapping):
        try:
            items = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            raise FaithmapError(f"{where}: the keys of a dict of class names must be class indices") from None
        if sorted(items) != list(range(len(items))):
            missing = sorted(set(range(len(items))) - set(items))
            raise FaithmapError(f"{where}: the class indices must run from 0 to {len(items) - 1} without gaps "
                                f"(missing {missing[0] if missing else min(items)})")
        value = [items[i] for i in range(len(items))]
    if not isinstance(value, Sequence):
        raise FaithmapError(f"{where} must be a list of names, a dict index -> name or a file, got "
                            f"{type(value).__name__}")
    names = [str(v).strip() if isinstance(v, (str, int)) else None for v in value]
    if any(n is None for n in names):
        raise FaithmapError(f"{where}: every class name must be a string")
    if not names:
        raise FaithmapError(f"{where}: no class names")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise FaithmapError(f"{where}: class {empty[0]} has an empty name")
    return names


def check_stats(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int | None = None
                ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``mean`` and ``std`` as tuples of finite numbers (``std`` > 0), one per channel (``channels`` when given)."""
    out = []
    for name, v in (("mean", mean), ("std", std)):
        if v is None:
            out.append(None)
            continue
        seq = v.flatten().tolist() if isinstance(v, torch.Tensor) else ([v] if isinstance(v, (int, float)) else v)
        try:
            nums = tuple(float(u) for u in seq)
        except (TypeError, ValueError):
            raise FaithmapError(f"{name} must be numbers, got {v!r}") from None
        if not nums or (channels is not None and len(nums) != channels):
            raise FaithmapError(f"{name} must have {channels or 'one or more'} values (one per channel, or one for "
                                f"all), got {len(nums)}")
        if not all(math.isfinite(u) for u in nums):
            raise FaithmapError(f"{name} must be finite numbers, got {v!r}")
        if name == "std" and min(nums) <= 0:
            raise FaithmapError(f"std must be positive, got {', '.join(f'{u:g}' for u in nums)}")
        out.append(nums)
    if out[0] is not None and out[1] is not None and len(out[0]) != len(out[1]):
        raise FaithmapError(f"mean and std must have as many values, got {len(out[0])} and {len(out[1])}")
    return out[0], out[1]


def check_input_size(size: Any, low: int = MIN_INPUT_SIZE) -> int | None:
    """``size`` as an int in [``low``, 4096] (None stays None). Loaded models and the CLI take 32 px and
    more (as the photos they read); :func:`faithmap.models.wrap` takes any size from 1 (tiny test models)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        try:
            if isinstance(size, bool) or float(size) != int(float(size)):
                raise ValueError
            size = int(float(size))
        except (TypeError, ValueError):
            raise FaithmapError(f"input size must be a whole number of pixels, got {size!r}") from None
    if not low <= size <= MAX_INPUT_SIZE:
        raise FaithmapError(f"input size must be {low} to {MAX_INPUT_SIZE} pixels, got {size}")
    return int(size)


def describe(clf, *, class_names: Any = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             input_size: int | None = None, num_classes: int | None = None):
    """Give the classifier ``clf`` its class names, normalisation and input size (in place; returns it).

    ``num_classes``: the model's class count when known (else the count of the names it had); names
    of another count are refused. A new ``input_size`` scales the resize step with it (a model that
    resized to 256 for a 224 crop resizes to 8/7 of the new size).
    """
    channels = clf.mean.numel() if clf.mean.numel() > 1 else None
    mean_t, std_t = check_stats(mean, std, channels)
    size = check_input_size(input_size)
    if class_names is not None:
        names = class_name_list(class_names)
        known = num_classes if num_classes is not None else clf.num_classes
        if known is not None and len(names) != known:
            raise FaithmapError(f"{len(names)} class names for a model with {known} classes ({clf.name})")
        clf.class_names = names
    for attr, val in (("mean", mean_t), ("std", std_t)):
        if val is not None:
            buf = getattr(clf, attr)
            setattr(clf, attr, torch.tensor(val, dtype=torch.float32, device=buf.device).view(1, -1, 1, 1))
    if size is not None:
        ratio = clf.resize_size / clf.input_size
        clf.input_size, clf.resize_size = size, max(size, round(size * ratio))
    return clf


__all__ = ["check_input_size", "check_stats", "class_name_list", "describe", "read_class_names"]
