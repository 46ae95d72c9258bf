"""XRAI (Kapishnikov et al., ICCV 2019): the greedy selection against a literal set-by-set reference
and hand-computed cases, the bit-packed regions and their dilation against literal loops, the base
attribution (IG from black and white, or any registered method), batching and bad parameters.
Parity with the authors' package (PAIR ``saliency``) is in test_peer_saliency.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import faithmap
from faithmap.errors import FaithmapError
from faithmap.methods.xrai import (Regions, dilate_bits, felzenszwalb_labels, felzenszwalb_regions, integer_scale,
                                   rank_regions, select_regions)
from faithmap.models import wrap

from conftest import PatchModel, patch_image
from test_invariants import tiny_inputs, tiny_model


# ----------------------------------------------------------------------------------------------
# a literal reference: regions as Python sets, one region at a time
# ----------------------------------------------------------------------------------------------
def literal_xrai(attr: list[float], masks: list[set[int]], variant: str, min_diff: int = 50, area: float = 1.0):
    """Value and rank of every pixel, written from the paper's Algorithm 1 and the rules of the
    authors' package, with exact rational means (``fractions.Fraction``)."""
    from fractions import Fraction

    p = len(attr)
    covered: set[int] = set()
    value: dict[int, Fraction] = {}
    steps: list[tuple[set[int], Fraction]] = []

    def mean(pix):
        return Fraction(sum(Fraction(attr[i]) for i in pix), len(pix))

    if variant == "full":
        alive = list(range(len(masks)))
        while len(covered) / p <= area:
            alive = [m for m in alive if len(masks[m] - covered) >= min_diff]
            if not alive:
                break
            best = max(alive, key=lambda m: (mean(masks[m] - covered), -m))  # ties: lower index
            new = masks[best] - covered
            g = mean(new)
            steps.append((new, g))
            value.update({i: g for i in new})
            covered |= new
            alive.remove(best)
    else:
        full = [mean(m) if m else Fraction(-10 ** 30) for m in masks]
        for m in sorted(range(len(masks)), key=lambda m: (-full[m], m)):
            new = masks[m] - covered
            if len(new) < min_diff:
                continue
            g = mean(new)
            steps.append((new, g))
            value.update({i: g for i in new})
            covered |= new
    rest = [i for i in range(p) if i not in covered]
    if rest:
        value.update({i: mean(rest) for i in rest})
    order = sorted(range(len(steps)), key=lambda k: (-steps[k][1], k))
    rank = [len(steps) + 1] * p
    for r, k in enumerate(order):
        for i in steps[k][0]:
            rank[i] = r + 1
    return [float(value[i]) for i in range(p)], rank


def random_case(seed: int, h: int = 20, w: int = 24, n: int = 14, integers: bool = True):
    g = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(n):  # random rectangles and blobs of varied sizes, some nested, some repeated
        kind = int(torch.randint(3, (1,), generator=g))
        m = torch.zeros(h, w, dtype=torch.bool)
        if kind == 0:
            r0 = int(torch.randint(0, h - 4, (1,), generator=g))
            c0 = int(torch.randint(0, w - 4, (1,), generator=g))
            r1 = r0 + int(torch.randint(3, h - r0 + 1, (1,), generator=g))
            c1 = c0 + int(torch.randint(3, w - c0 + 1, (1,), generator=g))
            m[r0:r1, c0:c1] = True
        elif kind == 1:
            m = torch.rand(h, w, generator=g) < 0.35
        elif masks:
            m = masks[int(torch.randint(len(masks), (1,), generator=g))].clone()  # an exact duplicate
        masks.append(m)
    if integers:
        attr = torch.randint(-50, 50, (h, w), generator=g).double()
        attr[: h // 2, : w // 3] += 40
    else:
        attr = torch.randn(h, w, generator=g, dtype=torch.float64)
    return attr, torch.stack(masks)


@pytest.mark.parametrize("variant", ["full", "fast"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_diff, area", [(50, 1.0), (5, 1.0), (20, 0.5), (1, 0.0)])
def test_greedy_equals_literal_reference_exactly(variant, seed, min_diff, area):
    attr, masks = random_case(seed)
    ref_v, ref_r = literal_xrai(attr.flatten().tolist(), [set(torch.nonzero(m.flatten()).flatten().tolist())
                                                         for m in masks], variant, min_diff, area)
    out = rank_regions(attr, Regions.from_masks(masks), variant=variant, min_pixel_diff=min_diff, area_threshold=area)
    assert out.map.flatten().tolist() == ref_v  # integer attributions: means are exact, so equal to the last bit
    assert out.ranks.flatten().tolist() == ref_r


@pytest.mark.parametrize("variant", ["full", "fast"])
def test_greedy_with_real_valued_attributions_matches_reference_to_1e12(variant):
    attr, masks = random_case(11, integers=False)
    ref_v, ref_r = literal_xrai(attr.flatten().tolist(), [set(torch.nonzero(m.flatten()).flatten().tolist())
                                                         for m in masks], variant, 5)
    out = rank_regions(attr.float(), Regions.from_masks(masks), variant=variant, min_pixel_diff=5)
    # float32 attributions, rounded to integers at 2^-37 of the largest: means within 1e-11 of exact
    ref32 = literal_xrai(attr.float().double().flatten().tolist(),
                         [set(torch.nonzero(m.flatten()).flatten().tolist()) for m in masks], variant, 5)
    assert out.ranks.flatten().tolist() == ref32[1]
    assert np.allclose(out.map.flatten().numpy(), ref32[0], rtol=0, atol=1e-11 * float(attr.abs().max()))


# ----------------------------------------------------------------------------------------------
# hand-computed cases
# ----------------------------------------------------------------------------------------------
def quadrant_case():
    """20 x 20 image; region 0 = left half, 1 = top half, 2 = a 10 x 10 block in the top-left quadrant.
    The attribution is 1 on the block and 0 elsewhere."""
    m = torch.zeros(3, 20, 20, dtype=torch.bool)
    m[0, :, :10] = True
    m[1, :10, :] = True
    m[2, :10, :10] = True
    attr = torch.zeros(20, 20)
    attr[:10, :10] = 1.0
    return attr, m


def test_attribution_in_one_segment_ranks_it_first_then_ties_go_to_the_lower_index():
    attr, m = quadrant_case()
    out = rank_regions(attr, Regions.from_masks(m))
    # block (mean 1) first; then left and top half both add 100 pixels of mean 0: the tie goes to index 0
    assert out.order.tolist() == [2, 0, 1] and out.gains.tolist() == [1.0, 0.0, 0.0]
    expect = torch.full((20, 20), 4)
    expect[:10, :10] = 1
    expect[10:, :10] = 2  # left half's new pixels
    expect[:10, 10:] = 3  # top half's new pixels
    assert torch.equal(out.ranks, expect)  # the bottom-right quadrant: no region covers it, last rank
    assert torch.equal(out.map, attr.double())  # block 1, everything else 0 (the uncovered mean too)
    fast = rank_regions(attr, Regions.from_masks(m), variant="fast")  # full means: 1, 0.5, 0.5
    assert fast.order.tolist() == [2, 0, 1] and torch.equal(fast.ranks, expect)


def test_min_pixel_diff_drops_small_regions_and_the_area_threshold_stops_the_selection():
    attr, m = quadrant_case()
    out = rank_regions(attr, Regions.from_masks(m), min_pixel_diff=150)
    # the block (100 pixels) is dropped; left and top half tie at 0.5 -> left; then top adds 100 < 150
    assert out.order.tolist() == [0] and out.gains.tolist() == [0.5]
    assert torch.equal(out.map[:, :10], torch.full((20, 10), 0.5, dtype=torch.float64))
    assert torch.equal(out.map[:, 10:], torch.zeros(20, 10, dtype=torch.float64))  # the uncovered right half
    assert out.ranks[:, :10].eq(1).all() and out.ranks[:, 10:].eq(2).all()
    stop = rank_regions(attr, Regions.from_masks(m), area_threshold=0.2)  # 100 / 400 > 0.2 after the block
    assert stop.order.tolist() == [2]
    assert stop.ranks[:10, :10].eq(1).all() and stop.ranks.eq(2).sum() == 300
    assert rank_regions(attr, Regions.from_masks(m), variant="fast", area_threshold=0.2).order.tolist() == [2, 0, 1]


def test_a_later_region_can_outrank_an_earlier_one():
    attr, m = quadrant_case()
    a = attr * -3.0 + 7.0  # block -> 4, rest -> 7
    out = rank_regions(a, Regions.from_masks(m), min_pixel_diff=1)
    # left and top half tie at (100 * 4 + 100 * 7) / 200 = 5.5 -> left; then the top half adds the
    # top-right quadrant (mean 7); the block adds nothing; the bottom-right quadrant stays uncovered
    assert out.order.tolist() == [0, 1] and out.gains.tolist() == [5.5, 7.0]
    assert out.ranks[:10, 10:].eq(1).all() and out.ranks[:, :10].eq(2).all() and out.ranks[10:, 10:].eq(3).all()
    assert out.map[:, :10].eq(5.5).all() and out.map[:, 10:].eq(7.0).all()


def test_integer_scale_keeps_sums_exact_and_is_a_power_of_two():
    for amax, p in [(1e-30, 50176), (1.0, 50176), (3.7e8, 1 << 20), (1000.0, 480)]:
        s = integer_scale(amax, p)
        assert math.log2(s).is_integer() and p * amax * s <= 2 ** 52 < 2 * p * amax * s
    assert integer_scale(0.0, 10) == 1.0


# ----------------------------------------------------------------------------------------------
# regions: packing, dilation, cells
# ----------------------------------------------------------------------------------------------
def literal_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixel (y, x) is in the dilated mask when some pixel of the mask lies within the disk
    ``dy^2 + dx^2 <= radius^2`` around it (skimage's ``disk``)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    for y in range(h):
        for x in range(w):
            out[y, x] = bool(np.any((ys - y) ** 2 + (xs - x) ** 2 <= radius * radius))
    return out


@pytest.mark.parametrize("radius", [0, 1, 3, 5])
def test_region_dilation_equals_literal_disk_dilation(radius):
    g = np.random.default_rng(radius)
    labels = [g.integers(0, 4, (6, 9)).repeat(2, 0).repeat(2, 1), g.integers(3, 6, (12, 18))]
    regions = Regions.from_labels([torch.from_numpy(lab) for lab in labels], dilation=radius)
    masks = [(lab == v) for lab in labels for v in range(lab.min(), lab.max() + 1)]
    assert regions.count == len(masks)
    got = regions.masks().numpy()
    for i, m in enumerate(masks):
        ref = literal_dilation(m, radius) if radius else m
        assert np.array_equal(got[i], ref), i
        assert torch.equal(regions.member(i).view(12, 18), torch.from_numpy(ref))


def test_label_values_absent_from_a_map_give_empty_regions_in_place():
    lab = torch.tensor([[2, 2, 5], [2, 5, 5]])
    r = Regions.from_labels([lab], dilation=0)
    assert r.count == 4 and r.masks().flatten(1).sum(1).tolist() == [3, 0, 0, 3]


def test_packing_round_trip_and_cells_partition_the_image():
    _, masks = random_case(3, n=19)
    r = Regions.from_masks(masks)
    assert torch.equal(r.masks(), masks)
    cells = r.cells()
    member = masks.flatten(1)  # (N, P)
    sig = member.t()  # each pixel's membership
    for c in range(cells.sizes.numel()):
        pix = (cells.of_pixel == c).nonzero().flatten()
        assert cells.sizes[c] == len(pix) > 0
        assert (sig[pix] == sig[pix[0]]).all() and torch.equal(cells.members[:, c], sig[pix[0]])
    assert len({tuple(s) for s in sig.tolist()}) == cells.sizes.numel()  # different memberships, different cells
    assert torch.equal(cells.incidence, cells.members.t())
    assert torch.equal(cells.pairs, cells.members.nonzero().t())


def test_cells_fall_back_to_exact_ids_when_hashes_collide(monkeypatch):
    import faithmap.methods.xrai as xr

    _, masks = random_case(5, n=21)
    hashed = Regions.from_masks(masks).cells().of_pixel
    monkeypatch.setattr(xr, "_MIX", 0)  # every pixel hashes to 0: the check fails, the exact way runs
    exact = Regions.from_masks(masks).cells().of_pixel
    pairs = {(int(a), int(b)) for a, b in zip(hashed, exact)}
    assert len(pairs) == int(hashed.max()) + 1 == int(exact.max()) + 1  # the same partition, renumbered


def test_felzenszwalb_labels_follow_the_authors_preprocessing():
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize

    im = patch_image(40)[0].permute(1, 2, 0).numpy()
    labels = felzenszwalb_labels(im, scales=(50, 500))
    assert len(labels) == 2 and all(lab.shape == (40, 40) for lab in labels)
    scaled = (im - im.min()) / (im.max() - im.min()) * 2.0 - 1.0
    big = resize(scaled, (224, 224), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    seg = felzenszwalb(big, scale=500, sigma=0.8, min_size=150)
    back = resize(seg, (40, 40), order=0, preserve_range=True, mode="constant", anti_aliasing=False).astype(int)
    assert np.array_equal(labels[1], back)
    assert felzenszwalb_labels(np.full((16, 16, 3), 0.3), scales=(100,))[0].max() == 0  # a constant image: one segment


# ----------------------------------------------------------------------------------------------
# the method: base attribution, segments, batching
# ----------------------------------------------------------------------------------------------
QUICK = {"segment_size": 64, "scales": (50, 250)}
"""Segmentation at 64 px and two scales: quicker, and the tests that use it are not about the segments."""


def patch_model():
    return wrap(PatchModel().eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)


def test_default_base_is_ig_from_black_and_white_averaged_and_channel_max():
    model, x = tiny_model(), tiny_inputs(2)
    t = torch.tensor([1, 3])
    e = faithmap.explain(model, x, "xrai", target=t, steps=6)
    black = faithmap.explain(model, x, "ig", target=t, steps=6, baseline="black").attribution
    white = faithmap.explain(model, x, "ig", target=t, steps=6, baseline="white").attribution
    mean = (black + white) / 2
    assert torch.allclose(e.attribution, mean, rtol=1e-5, atol=1e-7)
    assert torch.equal(e.extras["base_map"], e.attribution.amax(1))
    assert e.counts["grad_images"] == 2 * 6 * 2  # two baselines x steps x images
    regions = felzenszwalb_regions(model.to_pixels(x))
    again = select_regions(e.extras["base_map"], regions)
    for i in range(2):
        assert torch.equal(again[i].map.float(), e.saliency[i]) and torch.equal(again[i].ranks, e.extras["ranks"][i])
        assert again[i].order.tolist() == e.extras["order"][i].tolist()
    assert e.params["base"] == "ig" and e.params["baselines"] == ["black", "white"]


def test_any_registered_method_can_be_the_base():
    model, x = tiny_model(), tiny_inputs(1)
    t = torch.tensor([2])
    sal = faithmap.explain(model, x, "xrai", target=t, base="saliency", **QUICK)
    ref = faithmap.explain(model, x, "saliency", target=t)
    assert torch.equal(sal.extras["base_map"], ref.attribution.amax(1))  # no baseline parameter: one run
    assert sal.counts["grad_images"] == 1 and sal.params["baselines"] is None
    cam = faithmap.explain(model, x, "xrai", target=t, base="gradcam", **QUICK)  # a layer-grid map, upsampled
    ref = faithmap.explain(model, x, "gradcam", target=t)
    assert torch.allclose(cam.extras["base_map"], ref.upsampled(x.shape[-2:]))
    occ = faithmap.explain(model, x, "xrai", target=t, base="occlusion", baselines="blur",
                           base_params={"patch": 8, "stride": 8}, **QUICK)
    assert occ.params["baselines"] == ["blur"] and occ.params["base.patch"] == 8


def test_patch_evidence_ranks_the_patch_segment_first():
    model, x = patch_model(), patch_image()
    mask = model.net.patch_mask()
    segs = torch.zeros(4, 32, 32, dtype=torch.bool)
    segs[0, :, :16] = True  # left half
    segs[1, :16] = True  # top half, holds the patch and much more
    segs[2] = mask  # the patch
    segs[3, 16:, 16:] = True
    e = faithmap.explain(model, x, "xrai", target=0, steps=8, segments=[segs])
    base = e.extras["base_map"][0]
    assert base[~mask].abs().max() == 0 and base[mask].min() > 0  # IG lives on the patch only
    assert e.extras["order"][0].tolist()[0] == 2 and e.extras["ranks"][0][mask].eq(1).all()
    assert torch.allclose(e.saliency[0][mask], base[mask].double().mean().float().expand(int(mask.sum())))
    assert e.saliency[0][~mask].max() < e.saliency[0][mask].min()
    # with Felzenszwalb regions the first region still sits on the patch
    f = faithmap.explain(model, x, "xrai", target=0, steps=8)
    first = f.extras["ranks"][0] == 1
    assert first[mask].float().mean() > 0.5 and f.saliency[0][mask].mean() > 5 * f.saliency[0][~mask].mean()


def test_batched_equals_one_by_one_and_fast_variant():
    model, x = tiny_model(), tiny_inputs(3)
    t = torch.tensor([0, 1, 2])
    for variant in ("full", "fast"):
        both = faithmap.explain(model, x, "xrai", target=t, steps=4, variant=variant, **QUICK)
        for i in range(3):
            one = faithmap.explain(model, x[i:i + 1], "xrai", target=t[i:i + 1], steps=4, variant=variant, **QUICK)
            assert torch.equal(one.extras["ranks"][0], both.extras["ranks"][i])
            scale = both.saliency[i].abs().max()
            assert torch.allclose(one.saliency[0], both.saliency[i], rtol=0, atol=1e-5 * float(scale))
    assert both.params["variant"] == "fast"


@pytest.mark.slow
def test_xrai_on_the_real_model_puts_the_coffee_cup_first(lite0, coffee):
    e = faithmap.explain(lite0, coffee, "xrai", steps=8)
    assert e.saliency.shape == (1, 224, 224) and e.extras["regions"][0] > 100
    r = e.extras["ranks"][0]
    assert r.min() == 1 and int(e.extras["selected"][0]) >= r.max() - 1
    # values: each pixel holds the mean base attribution of its region's new pixels
    base = e.extras["base_map"][0].double()
    first = r == 1
    assert torch.allclose(e.saliency[0][first].double(), base[first].mean().expand(int(first.sum())), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# bad parameters: one line each
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    ({"variant": "medium"}, "variant must be one of 'full', 'fast', got str 'medium'"),
    ({"min_pixel_diff": 0}, r"min_pixel_diff must be in \[1, inf\), got 0"),
    ({"min_pixel_diff": 2.5}, "min_pixel_diff must be an integer"),
    ({"area_threshold": 1.5}, r"area_threshold must be in \[0, 1\], got 1.5"),
    ({"scales": ()}, "scales must be a non-empty tuple"),
    ({"scales": (50, -1)}, "every scale must be a number"),
    ({"sigma": -0.1}, r"sigma must be in \[0, inf\), got -0.1"),
    ({"min_size": 0}, r"min_size must be in \[1, inf\), got 0"),
    ({"dilation": -2}, r"dilation must be in \[0, 64\], got -2"),
    ({"segment_size": 3}, r"segment_size must be in \[8, 4096\], got 3"),
    ({"base": "xrai"}, "xrai cannot be its own base method"),
    ({"base": "nope"}, "unknown method 'nope'"),
    ({"base_params": {"bogus": 1}}, "method ig has no parameter 'bogus'"),
    ({"base_params": 3}, "base_params must be a dict"),
    ({"baselines": "black,purple"}, "unknown baseline 'purple' in baselines"),
    ({"segments": [torch.zeros(2, 5, 5, dtype=torch.bool)]}, r"segments must be \(N, 32, 32\) boolean masks"),
    ({"segments": torch.zeros(2, 3, 32, 32, dtype=torch.bool)}, "one .* per image, for 1 image"),
])
def test_bad_parameters_fail_with_one_line(params, message):
    model, x = tiny_model(), tiny_inputs(1)
    with pytest.raises(FaithmapError, match=message) as info:
        faithmap.explain(model, x, "xrai", target=0, steps=2, **params)
    assert "\n" not in str(info.value)


def test_nan_base_attribution_is_refused():
    class NanNet(torch.nn.Module):
        def forward(self, x):
            z = (x * float("nan")).flatten(1).sum(1)
            return torch.stack([z, torch.zeros_like(z)], 1)

    model = wrap(NanNet(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)
    with pytest.raises(FaithmapError, match=r"base attribution \(saliency\) has NaN or infinite values"):
        faithmap.explain(model, tiny_inputs(1), "xrai", target=0, base="saliency")
