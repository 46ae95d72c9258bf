"""Sample photos shipped by installed packages (no download): scikit-image and scikit-learn."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import FaithmapError


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.ascontiguousarray(load_sample_image(f"{name}.jpg"))

    return load


SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "china": _sklearn("china"),
    "flower": _sklearn("flower"),
}
"""The bundled sample photos, name -> loader of an (H, W, 3) uint8 array."""


def sample_names() -> list[str]:
    return list(SAMPLES)


def load_sample(name: str) -> np.ndarray:
    """The sample photo ``name`` as an (H, W, 3) uint8 array."""
    try:
        return SAMPLES[name]()
    except KeyError:
        raise FaithmapError(f"unknown sample {name!r}; choose from: {', '.join(SAMPLES)}") from None
