"""Truth scores (pointing, mass, AUROC, outside), their intervals, the proxy-truth agreement and the
model-blind baselines: each against an analytic case or a reference implementation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import faithmap
from faithmap.truth.proxies import agreement
from faithmap.truth.scores import at_input, auroc, interval, mass, pointing, truth_scores


def box_evidence(n=3, size=32, box=(8, 20, 4, 16)):
    e = torch.zeros(n, size, size, dtype=torch.bool)
    r0, r1, c0, c1 = box
    e[:, r0:r1, c0:c1] = True
    return e


def test_oracle_passes_and_its_complement_fails():
    """The check can fail: the evidence mask itself scores pointing 1, mass 1, AUROC 1; the
    complement of the evidence (a deliberately wrong map) scores 0 on all three."""
    ev = box_evidence()
    oracle = truth_scores(ev.float(), ev, tier=0)
    wrong = truth_scores((~ev).float(), ev, tier=0)
    for name in ("pointing", "mass", "auroc"):
        np.testing.assert_allclose(oracle[name], 1.0)
        np.testing.assert_allclose(wrong[name], 0.0)
    np.testing.assert_allclose(oracle["outside"], 0.0)
    np.testing.assert_allclose(wrong["outside"], 1.0)


def test_random_map_mass_is_the_evidence_area_share():
    """A map of independent uniform values puts on the evidence a share of its mass close to the
    evidence's share of the pixels (law of large numbers over 64 x 64 pixels)."""
    ev = box_evidence(4, 64, (10, 42, 5, 37))  # 32 x 32 of 64 x 64: a quarter
    g = torch.Generator().manual_seed(0)
    m = mass(torch.rand(4, 64, 64, generator=g), ev)
    np.testing.assert_allclose(m, 0.25, atol=0.02)
    np.testing.assert_allclose(auroc(torch.rand(4, 64, 64, generator=g), ev), 0.5, atol=0.05)


def test_auroc_equals_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(3)
    maps = (torch.rand(5, 16, 16, generator=g) * 4).floor()  # four levels: many ties
    ev = torch.rand(5, 16, 16, generator=g) < 0.3
    ours = auroc(maps, ev)
    ref = [roc_auc_score(ev[i].flatten().numpy(), maps[i].flatten().numpy()) for i in range(5)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert np.isnan(auroc(maps[:1], torch.zeros(1, 16, 16, dtype=torch.bool)))[0]


def test_pointing_ties_and_tolerance():
    ev = box_evidence(1, 16, (4, 8, 4, 8))
    flat = torch.ones(1, 16, 16)
    np.testing.assert_allclose(pointing(flat, ev), 16 / 256)  # a constant map: the evidence's area share
    near = torch.zeros(1, 16, 16)
    near[0, 8, 6] = 1.0  # one row below the evidence
    assert pointing(near, ev)[0] == 0.0
    assert pointing(near, ev, tolerance=1)[0] == 1.0


def test_signed_maps_count_their_positive_part_and_empty_maps_are_nan():
    ev = box_evidence(1, 16, (4, 8, 4, 8))
    signed = torch.where(ev, torch.tensor(-5.0), torch.tensor(0.1))  # strongly negative on the evidence
    s = truth_scores(signed, ev, tier=0)
    assert s["mass"][0] == 0.0 and s["outside"][0] == 1.0 and s["pointing"][0] == 0.0
    empty = truth_scores(-torch.ones(1, 16, 16), ev, tier=0)
    assert np.isnan(empty["mass"][0]) and np.isnan(empty["outside"][0])
    assert empty["auroc"][0] == 0.5  # all tied at 0


def test_maps_are_upsampled_as_faithmap_metrics_do():
    """A 4 x 4 layer map is brought to 32 x 32 by bilinear interpolation with align_corners=True
    (faithmap.core.perturb.upsample), nearest-exact for outside_nearest."""
    g = torch.Generator().manual_seed(0)
    s = torch.rand(2, 4, 4, generator=g)
    ref = F.interpolate(s.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(at_input(s, (32, 32)), ref)
    ev = box_evidence(2, 32, (0, 16, 0, 16))
    got = truth_scores(s, ev, tier=0)
    np.testing.assert_allclose(got["mass"], mass(ref, ev))
    near = F.interpolate(s.unsqueeze(1), size=(32, 32), mode="nearest-exact")[:, 0]
    np.testing.assert_allclose(got["outside_nearest"], 1 - mass(near, ev))
    # the top-left 2 x 2 cells are exactly the top-left quadrant when each cell is an 8 x 8 block
    np.testing.assert_allclose(got["outside_nearest"], 1 - s[:, :2, :2].sum((1, 2)).numpy() / s.sum((1, 2)).numpy(),
                               rtol=1e-6)


def test_interval_mean_of_seed_means_and_bootstrap():
    v = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    seeds = np.array([0, 0, 1, 1, 1, 1])
    mean, lo, hi, n = interval(v, seeds, n_boot=500)
    assert mean == 0.5 and n == 6  # each seed counts the same, whatever its number of images
    assert lo == 0.0 and hi == 1.0  # two seeds with constant values: the replicates are 0, 0.5 or 1
    assert interval(v, seeds, n_boot=500) == (mean, lo, hi, n)  # deterministic
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 300)
    m, lo, hi, _ = interval(x, None, n_boot=2000)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert lo < m < hi and abs((hi - lo) / (2 * 1.96 * se) - 1) < 0.15  # the normal interval's width
    m2, _, _, n2 = interval(np.r_[x, np.nan], None)
    assert n2 == 300 and m2 == pytest.approx(m)


def test_agreement_signs_and_interval():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(6.0)[:, None], 20, 1) + rng.normal(0, 0.1, (6, 20))
    strata = np.repeat([0, 1], 10)
    same = agreement(truth * 2, truth, strata, proxy_higher=True, truth_higher=True, n_boot=200)
    assert same["rho"] == pytest.approx(1.0) and same["agreement_low"] > 0.9
    # a lower-is-better proxy that falls as the truth rises agrees with it
    flipped = agreement(-truth, truth, strata, proxy_higher=False, truth_higher=True, n_boot=200)
    assert flipped["rho"] == pytest.approx(-1.0) and flipped["agreement"] == pytest.approx(1.0)
    noise = agreement(rng.normal(size=(6, 20)), truth, strata, proxy_higher=True, truth_higher=True, n_boot=200)
    assert noise["low"] < noise["rho"] < noise["high"]
    few = agreement(truth[:2], truth[:2], strata, proxy_higher=True, truth_higher=True)
    assert np.isnan(few["rho"]) and few["methods"] == 2


# ----------------------------------------------------------------------------------------------
# the model-blind baselines
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tiny():
    from evalkit import cnn_model

    return cnn_model()


def test_edge_baseline_is_scikit_images_sobel(tiny):
    """``edge`` is the Sobel magnitude of the grey image, as scikit-image's filters.sobel, and the
    model is never evaluated."""
    from skimage.filters import sobel

    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32, generator=g)
    x = tiny.normalize(pixels)
    e = faithmap.explain(tiny, x, "edge", target=0)
    for i in range(2):
        ref = sobel(pixels[i].mean(0).double().numpy())
        np.testing.assert_allclose(e.saliency[i].double().numpy(), ref, atol=1e-6)
    assert e.counts["images"] == 0 and e.saliency.shape == (2, 32, 32)
    smooth = faithmap.explain(tiny, x, "edge", target=0, sigma=2.0)
    assert smooth.saliency.std() < e.saliency.std()  # smoothing first: weaker, broader edges


def test_random_and_centre_baselines(tiny):
    x = torch.zeros(3, 3, 32, 32)
    a = faithmap.explain(tiny, x, "random", target=0, seed=[1, 2, 1]).saliency
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])  # each image its own generator
    one = faithmap.explain(tiny, x[1:2], "random", target=0, seed=2).saliency
    assert torch.equal(one[0], a[1])
    c = faithmap.explain(tiny, x, "centre", target=0).saliency
    assert c.shape == (3, 32, 32) and c[0, 15, 15] == c[0, 16, 16] == c[0].max()
    assert torch.allclose(c[0], c[0].flip(0)) and torch.allclose(c[0], c[0].t())
    assert faithmap.METHODS.get("center").family == "baseline"


def test_a_proxy_that_refuses_gives_nan_and_its_reason(tiny, monkeypatch):
    """A proxy that refuses the maps (IROF on an image SLIC cuts into one superpixel, as seen on a
    Lite0 grid image) leaves NaN scores and its one-line reason; the other proxies still score."""
    import dataclasses

    from faithmap.registry import METRICS
    from faithmap.truth.proxies import proxy_scores

    def refuse(*a, **k):
        raise faithmap.FaithmapError("metric irof: every image needs at least 2 superpixels")

    monkeypatch.setitem(METRICS._specs, "irof", dataclasses.replace(METRICS.get("irof"), fn=refuse))
    x = torch.zeros(2, 3, 32, 32)
    sal = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
    scores, errors = proxy_scores(tiny, x, sal, torch.tensor([0, 1]), seeds=[0, 1], names=("irof", "deletion"))
    assert errors == {"irof": "metric irof: every image needs at least 2 superpixels"}
    assert np.isnan(scores["irof"]).all() and np.isfinite(scores["deletion"]).all()
