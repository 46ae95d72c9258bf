"""Sample photos shipped by installed packages (no download): scikit-image, scikit-learn, matplotlib.

``SAMPLES`` are the six default photos. ``PHOTOS`` adds every other colour photo those packages
ship, plus a second square crop of the wide and tall ones, for 20 held-out inputs (the paired
comparisons of BENCHMARKS.md); ``faithmap ... photos`` names that set.
"""

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


def _skimage_pair(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.ascontiguousarray(skimage.data.stereo_motorcycle()[index][..., :3])

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data(name) as fh:
            return np.ascontiguousarray(np.asarray(Image.open(fh).convert("RGB")))

    return load


def _square(load: Callable[[], np.ndarray], where: str) -> Callable[[], np.ndarray]:
    """The square at the left (``where="left"``) or top (``"top"``) of a photo, so that the
    shorter-side resize and centre crop of the models' preprocessing yield that square."""

    def crop() -> np.ndarray:
        a = load()
        n = min(a.shape[:2])
        return np.ascontiguousarray(a[:, :n] if where == "left" else a[:n])

    return crop


SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "china": _sklearn("china"),
    "flower": _sklearn("flower"),
}
"""The bundled sample photos, name -> loader of an (H, W, 3) uint8 array."""

_MORE: dict[str, Callable[[], np.ndarray]] = {
    "motorcycle_left": _skimage_pair(0),
    "motorcycle_right": _skimage_pair(1),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
}
PHOTOS: dict[str, Callable[[], np.ndarray]] = {**SAMPLES, **_MORE}
for _name in ("coffee", "chelsea", "rocket", "china", "flower", "motorcycle_left", "motorcycle_right"):
    PHOTOS[f"{_name}-left"] = _square(PHOTOS[_name], "left")
PHOTOS["grace_hopper-top"] = _square(PHOTOS["grace_hopper"], "top")
"""Every colour photo scikit-image, scikit-learn and matplotlib ship (12; not the synthetic colour
wheel, logos, chessboard or clip art), then the left square of the seven landscape photos and the
top square of the portrait one: 20 inputs."""


def sample_names() -> list[str]:
    return list(SAMPLES)


def photo_names() -> list[str]:
    """The 20 inputs of :data:`PHOTOS` (the six samples first)."""
    return list(PHOTOS)


def load_sample(name: str) -> np.ndarray:
    """The sample photo ``name`` (any of :data:`PHOTOS`) as an (H, W, 3) uint8 array."""
    try:
        loader = PHOTOS[name]
    except KeyError:
        raise FaithmapError(f"unknown sample {name!r}; choose from: {', '.join(PHOTOS)}") from None
    return loader()
