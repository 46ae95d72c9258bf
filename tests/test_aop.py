"""AOP and SIGCAM (Zhang, Rao & Yang, AAAI 2021): the eq. 5 transform against a literal reference, the
start-up blur, a perfect base map on a hand-built model, every base x refine pair of the registry,
and SIGCAM on the real model."""

from __future__ import annotations

import math

import pytest
import torch

import faithmap
from faithmap.core.perturb import gaussian_blur
from faithmap.errors import FaithmapError
from faithmap.methods.aop import SIGCAM_PRESETS, base_mask_transform, base_methods, refine_methods
from faithmap.methods.mask import warmup_schedule
from faithmap.metrics.deletion import deletion_insertion
from faithmap.models import wrap

from conftest import PatchModel, patch_image
from test_invariants import tiny_inputs, tiny_model


# ----------------------------------------------------------------------------------------------
# eq. 4-5 against a literal, loop-by-loop reference
# ----------------------------------------------------------------------------------------------
def slow_transform(base: torch.Tensor, theta: float, lam: float, h: int, w: int) -> torch.Tensor:
    """Min-max, threshold, scale, bilinear (pixel-centre) upsampling and 1 - M, one cell at a time."""
    out = torch.zeros(base.shape[0], h, w, dtype=torch.float64)
    for b in range(base.shape[0]):
        m = base[b].double()
        lo, hi = float(m.min()), float(m.max())
        h0, w0 = m.shape
        f = [[0.0] * w0 for _ in range(h0)]
        for i in range(h0):
            for j in range(w0):
                v = (float(m[i, j]) - lo) / (hi - lo) if hi > lo else 0.0
                f[i][j] = 0.0 if v < theta else lam * v
        for r in range(h):
            sr = max((r + 0.5) * h0 / h - 0.5, 0.0)
            r0 = min(int(math.floor(sr)), h0 - 1)
            r1, fr = min(r0 + 1, h0 - 1), sr - r0
            for c in range(w):
                sc = max((c + 0.5) * w0 / w - 0.5, 0.0)
                c0 = min(int(math.floor(sc)), w0 - 1)
                c1, fc = min(c0 + 1, w0 - 1), sc - c0
                v = ((1 - fr) * (1 - fc) * f[r0][c0] + (1 - fr) * fc * f[r0][c1]
                     + fr * (1 - fc) * f[r1][c0] + fr * fc * f[r1][c1])
                out[b, r, c] = 1.0 - v
    return out


@pytest.mark.parametrize("shape, res, theta, lam", [((7, 7), 28, 0.7, 0.15), ((5, 6), (12, 9), 0.6, 0.25),
                                                    ((4, 4), 4, 0.3, 1.0)])
def test_base_mask_transform_matches_literal_reference(shape, res, theta, lam):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, *shape, generator=g) * 5 - 1  # not in [0, 1]: min-max must fix it
    h, w = (res, res) if isinstance(res, int) else res
    ours = base_mask_transform(base, theta, lam, res)
    ref = slow_transform(base, theta, lam, h, w)
    assert ours.shape == (2, h, w)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    # the largest base cell is 1 after min-max, so the start mask reaches 1 - lam there (no upsampling case)
    if (h, w) == shape:
        assert torch.isclose(ours.min(), torch.tensor(1 - lam))
    assert ours.max() == 1.0  # cells below theta keep the image


def test_base_mask_transform_constant_map_and_bad_values():
    assert torch.equal(base_mask_transform(torch.full((1, 7, 7), 3.0), 0.7, 0.15, 28), torch.ones(1, 28, 28))
    with pytest.raises(FaithmapError, match="theta"):
        base_mask_transform(torch.rand(1, 7, 7), 1.5, 0.15, 28)
    with pytest.raises(FaithmapError, match="lam"):
        base_mask_transform(torch.rand(1, 7, 7), 0.7, -1, 28)


# ----------------------------------------------------------------------------------------------
# the start-up schedule
# ----------------------------------------------------------------------------------------------
def test_warmup_schedule_is_the_half_scale_blur():
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    sched = warmup_schedule(x, "blur", 5, 0.5)
    weak = gaussian_blur(x, 25, 25.0)  # 51 / 50 at 224 px, halved (kernel to the nearest odd size)
    assert all(torch.equal(sched(i), weak) for i in range(5))
    assert sched(5) is None and sched(14) is None
    assert warmup_schedule(x, "blur", 0, 0.5) is None
    with pytest.raises(FaithmapError, match="baseline='blur'"):
        warmup_schedule(x, "black", 5, 0.5)


def test_warmup_iterations_use_the_weaker_blur(patch_model, patch_input):
    """One warm-up iteration == the same iteration run with the weak blur as a fixed baseline;
    a second iteration (full blur again) differs from running both on the weak blur."""
    weak = warmup_schedule(patch_input, "blur", 1, 0.5)(0)
    kw = dict(target=0, resolution=8, ig_steps=4)
    a = faithmap.explain(patch_model, patch_input, "igos", iterations=1, warmup=1, **kw)
    b = faithmap.explain(patch_model, patch_input, "igos", iterations=1, baseline=weak, **kw)
    assert torch.allclose(a.saliency, b.saliency, atol=1e-6)
    c = faithmap.explain(patch_model, patch_input, "igos", iterations=2, warmup=1, **kw)
    d = faithmap.explain(patch_model, patch_input, "igos", iterations=2, baseline=weak, **kw)
    assert not torch.allclose(c.saliency, d.saliency, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# a perfect base map on a hand-built model
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["gradcam", "wgradcam"])
def test_perfect_base_map_stays_on_the_patch(base):
    """On :class:`PatchModel` the CAM of its ReLU layer is the bright patch: the base map is already
    perfect. AOP starts the deletion game on it and must keep the patch on top."""
    net = PatchModel().eval()
    model = wrap(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32, cam_layer="act")
    x = patch_image()
    on = net.patch_mask(8).flatten()
    k = int(on.sum())
    e = faithmap.explain(model, x, "aop", target=0, base=base, refine="igos", resolution=8, iterations=6,
                         warmup=2, refine_params={"ig_steps": 6})
    start = 1 - e.extras["init"][0].flatten()  # the transformed base map
    assert set(start.topk(k).indices.tolist()) == set(on.nonzero().flatten().tolist())
    # the base map (at the layer's 32 x 32 grid) passes theta exactly on the patch
    bm = e.extras["base_map"][0]
    kept = (bm - bm.min()) / (bm.max() - bm.min()) >= 0.7
    assert torch.equal(kept, net.patch_mask(32))
    sal = e.saliency[0].flatten()
    assert set(sal.topk(k).indices.tolist()) == set(on.nonzero().flatten().tolist())
    assert sal[on].min() > sal[~on].max()
    assert not torch.allclose(sal, start, atol=1e-3)  # the deletion game did run


# ----------------------------------------------------------------------------------------------
# every base x refine pair of the registry
# ----------------------------------------------------------------------------------------------
PAIRS = [(b, r) for b in base_methods() for r in refine_methods()]


def test_registry_pairs_cover_the_families():
    assert {"gradcam", "wgradcam", "gradcam++", "expectedgradcam"} <= set(base_methods())
    assert {"igos", "igos++", "mask"} <= set(refine_methods())
    assert "aop" not in refine_methods() and "sigcam" not in base_methods()


@pytest.mark.parametrize("base, refine", PAIRS)
def test_every_pair_runs(base, refine):
    model, x = tiny_model(), tiny_inputs(2)
    target = torch.tensor([0, 2])
    e = faithmap.explain(model, x, "aop", target=target, base=base, refine=refine, resolution=4, iterations=2,
                         warmup=1, theta=0.5, lam=0.5, fast_stages=True)
    assert e.saliency.shape == (2, 4, 4) and torch.isfinite(e.saliency).all()
    assert e.saliency.min() >= 0 and e.saliency.max() <= 1
    # stage 1 is the registered base method with its fast settings; the start mask is eq. 5 of its map
    ref = faithmap.explain(model, x, base, target=target, **faithmap.METHODS.get(base).fast)
    assert torch.allclose(e.extras["base_map"], ref.saliency, atol=1e-5)
    assert torch.allclose(e.extras["init"], base_mask_transform(ref.saliency, 0.5, 0.5, 4), atol=1e-5)
    assert e.params["base"] == base and e.params["refine"] == faithmap.METHODS.get(refine).name


@pytest.mark.parametrize("refine", refine_methods())
def test_zero_iterations_return_the_start(refine):
    """With no refinement iterations the map is ``1 - M0`` (iGOS++: its two masks start at sqrt(M0))."""
    model, x = tiny_model(), tiny_inputs(2)
    e = faithmap.explain(model, x, "aop", target=torch.tensor([1, 3]), base="gradcam", refine=refine,
                         resolution=6, iterations=0, warmup=0, theta=0.2, lam=0.8)
    assert torch.allclose(e.saliency, 1 - e.extras["init"], atol=1e-6)
    assert (e.extras["init"] < 1).any()


def test_aop_history_counts_both_stages(patch_model, patch_input):
    e = faithmap.explain(patch_model, patch_input, "aop", target=0, base="gradcam", layer="act", resolution=8,
                         iterations=3, warmup=1, refine_params={"ig_steps": 4})
    imgs = e.history["images"]
    assert len(imgs) == 3 and imgs == sorted(imgs)
    assert imgs[-1] == e.counts["images"]  # everything AOP sent through the model, base stage included
    assert e.history["base_images"] == 1


def test_bad_stages_and_presets(patch_model, patch_input):
    with pytest.raises(FaithmapError, match="'cam' method"):
        faithmap.explain(patch_model, patch_input, "aop", target=0, base="igos")
    with pytest.raises(FaithmapError, match="'mask' method"):
        faithmap.explain(patch_model, patch_input, "aop", target=0, base="gradcam", layer="act", refine="gradcam")
    with pytest.raises(FaithmapError, match="unknown method"):
        faithmap.explain(patch_model, patch_input, "aop", target=0, refine="nosuch")
    with pytest.raises(FaithmapError, match="preset"):
        faithmap.explain(patch_model, patch_input, "sigcam", target=0, preset="voc")
    with pytest.raises(FaithmapError, match="init"):
        faithmap.explain(patch_model, patch_input, "igos", target=0, resolution=8, init=torch.rand(1, 7, 7))
    with pytest.raises(FaithmapError, match=r"\[0, 1\]"):
        faithmap.explain(patch_model, patch_input, "igos", target=0, resolution=8, init=torch.full((1, 8, 8), 2.0))


def test_sigcam_is_aop_wgradcam_igos(patch_model, patch_input):
    kw = dict(target=0, layer="act", resolution=8, iterations=2, warmup=1, refine_params={"ig_steps": 4})
    s = faithmap.explain(patch_model, patch_input, "sigcam", preset="coco", **kw)
    a = faithmap.explain(patch_model, patch_input, "aop", base="wgradcam", refine="igos", theta=0.6, lam=0.25, **kw)
    assert torch.equal(s.saliency, a.saliency)
    assert (s.params["theta"], s.params["lam"]) == SIGCAM_PRESETS["coco"] == (0.6, 0.25)
    assert SIGCAM_PRESETS["imagenet"] == (0.7, 0.15)
    assert faithmap.METHODS.get("sigcam").params["warmup"] == 5
    assert faithmap.METHODS.get("sigcam").params["resolution"] == 28


# ----------------------------------------------------------------------------------------------
# the real model
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigcam_real_model(lite0, coffee):
    e = faithmap.explain(lite0, coffee, "sigcam", iterations=2, warmup=1, refine_params={"ig_steps": 4})
    assert lite0.class_name(int(e.target)) == "espresso"
    assert e.saliency.shape == (1, 28, 28) and e.extras["base_map"].shape[-2:] == (7, 7)
    assert e.params["refine.iterations"] == 2 and e.params["theta"] == 0.7
    c = deletion_insertion(lite0, coffee, e.saliency, e.target)
    rnd = deletion_insertion(lite0, coffee, torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0)), e.target)
    assert c.deletion_auc[0] < rnd.deletion_auc[0] and c.insertion_auc[0] > rnd.insertion_auc[0]
    assert c.overall[0] > rnd.overall[0] + 0.2
