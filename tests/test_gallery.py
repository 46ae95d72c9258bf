"""The documentation's pictures (``faithmap docs --gallery DIR``, :mod:`faithmap.gallery`): each tile is
the method's own map at the settings its caption names, and bad input is one line."""

import os

import numpy as np
import pytest

from faithmap import METHODS, explain, gallery
from faithmap.cli import main
from faithmap.data import load_sample
from faithmap.viz import overlay


@pytest.mark.parametrize("name", [s.name for s in METHODS])
def test_every_method_is_drawn_with_settings_it_accepts(name):
    """The gallery's settings (fast ones, then GALLERY_SETTINGS) pass the method's own parameter check:
    a misspelt or out-of-range gallery setting fails here, not halfway through the 35 tiles."""
    settings = gallery.method_settings(name)
    METHODS[name].check(settings)


def test_gallery_settings_override_the_fast_ones():
    assert gallery.method_settings("rise")["n_masks"] == gallery.GALLERY_SETTINGS["rise"]["n_masks"]
    assert gallery.method_settings("rise")["n_masks"] != METHODS["rise"].fast.get("n_masks")


def test_a_tile_is_the_methods_map_over_the_photo(lite0):
    """The tile is the overlay of exactly what explain() returns for that method and those settings."""
    (tile,) = gallery.tiles(["gradcam"], "coffee", lite0)
    x = lite0.preprocess([load_sample("coffee")])
    exp = explain(lite0, x, "gradcam", **gallery.method_settings("gradcam"))
    pixels = lite0.to_pixels(x)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    assert np.allclose(tile.image, overlay(pixels, exp.saliency[0]), atol=1e-5)
    assert tile.family == "cam" and tile.caption.startswith("gradcam\n7x7 map, 1 images")


def test_an_unknown_method_is_one_line_and_draws_nothing(tmp_path, capsys):
    out = tmp_path / "assets"
    assert main(["docs", "--gallery", str(out), "--methods", "gradcam,nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonsense" in err[0], err
    assert not os.path.exists(out)
