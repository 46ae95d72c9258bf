"""Parity with the XRAI authors' package, PAIR ``saliency`` 0.2 (test-only peer): the Felzenszwalb
regions equal ``_get_segments_felzenszwalb``'s masks, and given the same attributions and the same
segments the maps and ranks equal ``XRAI.GetMaskWithDetails``'s, for the ``full`` and ``fast``
variants. Skipped as a whole when the package is missing; faithmap's own XRAI tests are in
test_xrai.py.

Exactness: with integer-valued attributions both sides compute every mean exactly rounded, so
maps are compared with ``==``; with real-valued float64 attributions PAIR sums in floating point
and faithmap exactly (at 2^-37 of the largest value), so maps are compared to 1e-9 of the largest
attribution (observed: about 5e-12); ranks (the order of the regions) are always compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import faithmap
from faithmap.data import load_sample
from faithmap.methods.xrai import Regions, felzenszwalb_regions, rank_regions

from test_invariants import tiny_inputs, tiny_model

pair = pytest.importorskip("saliency.core")
from saliency.core import xrai as pair_xrai  # noqa: E402


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A sample photo resized to ``size`` (w, h), as float32 pixels in [0, 1] (H, W, 3)."""
    im = Image.fromarray(load_sample(name)).convert("RGB").resize(size, Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def pair_run(pixels: np.ndarray, attr: np.ndarray, masks, variant: str, area: float = 1.0):
    params = pair.XRAIParameters(algorithm=variant, area_threshold=area, return_xrai_segments=True)
    out = pair.XRAI().GetMaskWithDetails(pixels, None, base_attribution=attr, segments=masks, extra_parameters=params)
    return out.attribution_mask, out.segments


@pytest.fixture(scope="module")
def coffee224():
    pixels = photo("coffee", (224, 224))
    regions = felzenszwalb_regions(torch.from_numpy(pixels).permute(2, 0, 1))[0]
    return pixels, regions


@pytest.mark.parametrize("name, size", [("coffee", (224, 224)), ("chelsea", (150, 110))])
def test_felzenszwalb_regions_equal_pairs_segments(name, size):
    pixels = photo(name, size)
    ours = felzenszwalb_regions(torch.from_numpy(pixels).permute(2, 0, 1))[0]
    ref = pair_xrai._get_segments_felzenszwalb(pixels)
    assert ours.count == len(ref) > 50
    assert np.array_equal(ours.masks().numpy(), np.stack(ref))  # every mask, in PAIR's order


@pytest.mark.parametrize("variant, area", [("full", 1.0), ("full", 0.3), ("fast", 1.0)])
def test_maps_identical_to_pair_given_integer_attributions_and_segments(coffee224, variant, area):
    pixels, regions = coffee224
    g = np.random.default_rng(0)
    attr = g.integers(-1000, 1000, (224, 224, 3)).astype(np.float64)
    attr[40:150, 60:170] += 400  # a salient area, so that gains differ in a structured way
    ref_map, ref_ranks = pair_run(pixels, attr, list(regions.masks().numpy()), variant, area)
    out = rank_regions(torch.from_numpy(attr).amax(-1), regions, variant=variant, area_threshold=area)
    assert np.array_equal(out.map.numpy(), ref_map)  # exactly, to the last bit
    assert np.array_equal(out.ranks.numpy(), ref_ranks)


@pytest.mark.parametrize("variant", ["full", "fast"])
def test_maps_equal_pair_given_real_valued_attributions(coffee224, variant):
    pixels, regions = coffee224
    g = np.random.default_rng(1)
    attr = g.standard_normal((224, 224, 3))
    attr[100:200, 20:120] += 0.3
    ref_map, ref_ranks = pair_run(pixels, attr, list(regions.masks().numpy()), variant)
    out = rank_regions(torch.from_numpy(attr).amax(-1), regions, variant=variant)
    assert np.array_equal(out.ranks.numpy(), ref_ranks)
    assert np.abs(out.map.numpy() - ref_map).max() <= 1e-9 * np.abs(attr).max()


@pytest.mark.parametrize("variant", ["full", "fast"])
def test_whole_xrai_call_equals_pair_on_our_ig_attributions(variant):
    """faithmap.explain(..., "xrai") against PAIR's GetMask with faithmap's IG attribution as
    ``base_attribution`` and PAIR's own segmentation of the same pixels (a 32 x 32 input: PAIR
    resizes to 224 for the segmentation and back)."""
    model, x = tiny_model(), tiny_inputs(2)
    t = torch.tensor([1, 2])
    e = faithmap.explain(model, x, "xrai", target=t, steps=6, variant=variant)
    pixels = model.to_pixels(x).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        attr = e.attribution[i].permute(1, 2, 0).double().numpy()  # our float32 values, exactly
        params = pair.XRAIParameters(algorithm=variant, return_xrai_segments=True)
        ref = pair.XRAI().GetMaskWithDetails(pixels[i], None, base_attribution=attr, extra_parameters=params)
        assert np.array_equal(e.extras["ranks"][i].numpy(), ref.segments)
        scale = np.abs(attr).max()
        assert np.abs(e.saliency[i].double().numpy() - ref.attribution_mask).max() <= 1e-6 * scale


def test_regions_from_pair_masks_give_the_same_result(coffee224):
    pixels, regions = coffee224
    masks = pair_xrai._get_segments_felzenszwalb(pixels)
    g = np.random.default_rng(2)
    attr = g.integers(-50, 50, (224, 224)).astype(np.float64)
    ref_map, ref_ranks = pair_xrai.XRAI._xrai(attr, masks)
    out = rank_regions(torch.from_numpy(attr), Regions.from_masks(torch.from_numpy(np.stack(masks))))
    assert np.array_equal(out.map.numpy(), ref_map) and np.array_equal(out.ranks.numpy(), ref_ranks)
