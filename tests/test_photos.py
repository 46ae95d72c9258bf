"""The held-out photo set (faithmap.data.PHOTOS): every colour photo the installed packages ship."""

import numpy as np

from faithmap.cli import gather_images
from faithmap.data import PHOTOS, SAMPLES, load_sample, photo_names


def test_twenty_colour_photos_without_download():
    names = photo_names()
    assert len(names) == 20 and names[:6] == list(SAMPLES) and set(names) == set(PHOTOS)
    for n in names:
        a = load_sample(n)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 224, n
        chroma = np.abs(a.astype(float) - a.mean(-1, keepdims=True)).mean()
        assert chroma > 2, n  # a colour photo, not a grey image stored as RGB


def test_second_crops_are_squares_of_their_photo():
    for n in names_with_crops():
        parent, where = n.rsplit("-", 1)
        a, c = load_sample(parent), load_sample(n)
        side = min(a.shape[:2])
        assert c.shape[:2] == (side, side)
        assert np.array_equal(c, a[:, :side] if where == "left" else a[:side])


def names_with_crops():
    return [n for n in photo_names() if n.endswith(("-left", "-top"))]


def test_gather_photos_by_name():
    got = gather_images(["photos"], convert=False)
    assert [s for s, _ in got] == photo_names()
