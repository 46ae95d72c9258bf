"""The units of an evaluation's work and what identifies them: tasks, their keys, each image's seed,
the fingerprint of each input, and how a worker loads the model itself.

Shared by the plan (which cuts the tasks) and the worker (which runs them); imports neither.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.device import resolve_device
from ..data import ImageRecord
from ..errors import FaithmapError
from ..models import DEFAULT_MODEL
from ..models import load as load_named_model

NATIVE = "native"
"""The resolution of a task whose method maps at its own grid (not a mask method)."""


@dataclass(frozen=True)
class Task:
    """One unit of work: a method at one resolution on a batch of images (indices into the plan's images)."""

    index: int  # position in the whole (unsharded) plan
    method: str
    resolution: str  # str(int) for mask methods, "native" otherwise
    images: tuple[int, ...]


def task_key(image: str, method: str, resolution: str | int) -> str:
    """The key of one image's share of a task: ``image|method|resolution``."""
    return f"{image}|{method}|{resolution}"


def image_seed(seed: int, image: str, method: str, resolution: str, salt: str = "") -> int:
    """The seed of one image's randomness: a 63-bit hash of (seed, image, method, resolution[, salt]).

    ``salt`` is a metric's name for the seed of that metric's draws (so a metric's noise is not the
    method's noise). Independent of batches, shards, workers and engines by construction.
    """
    h = hashlib.blake2b(json.dumps([int(seed), str(image), str(method), str(resolution), salt]).encode(),
                        digest_size=8)
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def model_description(config) -> dict[str, Any]:
    """The description of a named model a run's config gives (``class_names``, ``mean``, ``std``,
    ``input_size``; those it has and sets), as keywords of :func:`faithmap.models.load`."""
    names = ("class_names", "mean", "std", "input_size")
    return {n: getattr(config, n) for n in names if getattr(config, n, None) is not None}


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model itself (a name, weights, device, resize), instead of receiving it pickled."""

    name: str
    weights: str | None
    device: str | None
    resize: str | None
    description: dict = field(default_factory=dict)  # class_names, mean, std, input_size given in the run

    @classmethod
    def of(cls, config) -> "ModelSpec | None":
        """How workers load a run's model themselves (``config``: its ``model``, ``weights``, ``device`` and
        ``resize``); None when the model was given as an object (it is shipped)."""
        m = config.model
        if not (isinstance(m, str) or m is None):
            return None
        return cls(m or DEFAULT_MODEL, config.weights, config.device, config.resize, model_description(config))

    def load(self, device: str | None = None):
        clf = load_named_model(self.name, weights=self.weights, device=resolve_device(device or self.device),
                               **self.description)
        if self.resize:
            clf.resize = self.resize
        return clf


# ----------------------------------------------------------------------------------------------
# fingerprints of the inputs
# ----------------------------------------------------------------------------------------------
def record_stat(rec: ImageRecord) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file record, None for sample photos and in-memory images."""
    if rec.path is None:
        return None
    st = os.stat(rec.path)
    return int(st.st_size), int(st.st_mtime_ns)


def photo_hw(photo) -> tuple[int, int]:
    if isinstance(photo, np.ndarray):
        return int(photo.shape[0]), int(photo.shape[1])
    if isinstance(photo, torch.Tensor):
        return int(photo.shape[-2]), int(photo.shape[-1])
    if hasattr(photo, "size"):
        w, h = photo.size
        return int(h), int(w)
    raise FaithmapError(f"cannot use {type(photo).__name__} as an image")


def photo_digest(photo) -> str:
    """A fingerprint of the pixels (SHA-1 of shape, dtype and bytes), 20 hex digits."""
    arr = photo.detach().cpu().numpy() if isinstance(photo, torch.Tensor) else np.asarray(photo)
    h = hashlib.sha1(str((arr.shape, str(arr.dtype))).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]
