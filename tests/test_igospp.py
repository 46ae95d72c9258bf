"""iGOS++: bilateral TV against a literal reference, the insertion advantage on a model whose
class needs two patches, the line search on iGOS++'s objective and scale, and the ablations."""

import math

import pytest
import torch
from torch import nn

import faithmap
from faithmap.core.batching import per_image_generators
from faithmap.core.perturb import make_baseline, phi, upsample
from faithmap.core.regularizers import bilateral_tv, bilateral_weights, btv, tv
from faithmap.core.scores import score_of
from faithmap.methods.igospp import ABLATIONS, igospp_optimizer, parse_ablation
from faithmap.methods.mask import ArmijoLineSearch, MaskState
from faithmap.metrics import deletion_insertion
from faithmap.models import wrap

from conftest import PatchModel, patch_image

FAST = dict(resolution=8, iterations=8, ig_steps=8)


# ----------------------------------------------------------------------------------------------
# bilateral total variation (eq. 7)
# ----------------------------------------------------------------------------------------------
def _bilinear_literal(m, size):
    """Bilinear upsampling with corner alignment, one output pixel at a time."""
    h, w = len(m), len(m[0])
    out = [[0.0] * size for _ in range(size)]
    for i in range(size):
        for j in range(size):
            y = i * (h - 1) / (size - 1)
            x = j * (w - 1) / (size - 1)
            y0, x0 = min(int(math.floor(y)), h - 1), min(int(math.floor(x)), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i][j] = ((1 - dy) * (1 - dx) * m[y0][x0] + (1 - dy) * dx * m[y0][x1]
                         + dy * (1 - dx) * m[y1][x0] + dy * dx * m[y1][x1])
    return out


def _btv_literal(img, m, beta, sigma):
    """0.5 * (TV of the mask + image-weighted TV of the upsampled mask), with explicit loops."""
    c, size = len(img), len(img[0])
    h, w = len(m), len(m[0])
    tv_v = sum(abs(m[i + 1][j] - m[i][j]) ** beta for i in range(h - 1) for j in range(w)) / ((h - 1) * w)
    tv_h = sum(abs(m[i][j + 1] - m[i][j]) ** beta for i in range(h) for j in range(w - 1)) / (h * (w - 1))
    up = _bilinear_literal(m, size)
    bv = bh = 0.0
    for i in range(size):
        for j in range(size):
            if i + 1 < size:
                d2 = sum((img[k][i + 1][j] - img[k][i][j]) ** 2 for k in range(c)) / c
                bv += math.exp(-d2 / sigma) * abs(up[i + 1][j] - up[i][j]) ** beta
            if j + 1 < size:
                d2 = sum((img[k][i][j + 1] - img[k][i][j]) ** 2 for k in range(c)) / c
                bh += math.exp(-d2 / sigma) * abs(up[i][j + 1] - up[i][j]) ** beta
    bv /= (size - 1) * size
    bh /= size * (size - 1)
    return 0.5 * (tv_v + tv_h + bv + bh)


@pytest.mark.parametrize("beta, sigma", [(2.0, 0.01), (3.0, 0.05), (1.0, 0.2)])
def test_btv_matches_literal_reference(beta, sigma):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 9, 9, generator=g, dtype=torch.float64) * 0.4
    img[:, :, :, 5:] += 0.3  # an edge, so weights vary from ~0 to ~1
    mask = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)
    got = btv(img, mask, beta, sigma)
    for b in range(2):
        want = _btv_literal(img[b].tolist(), mask[b, 0].tolist(), beta, sigma)
        assert got[b].item() == pytest.approx(want, rel=1e-10)


def test_btv_on_constant_image_is_tv():
    g = torch.Generator().manual_seed(1)
    img = torch.full((1, 3, 16, 16), 0.3)
    mask = torch.rand(1, 1, 4, 4, generator=g)
    up = upsample(mask, 16)
    # every weight is 1: the bilateral half is the (mean-normalised) TV of the upsampled mask
    assert torch.allclose(bilateral_tv(img, mask), tv(up), atol=1e-7)
    assert torch.allclose(btv(img, mask), 0.5 * (tv(mask) + tv(up)), atol=1e-7)
    # a mask at the image's resolution is not upsampled: BTV is exactly I-GOS's TV
    full = torch.rand(1, 1, 16, 16, generator=g)
    assert torch.allclose(btv(img, full), tv(full), atol=1e-7)
    assert torch.allclose(btv(img, full, beta=3.0), tv(full, 3.0), atol=1e-7)


def test_btv_is_cheaper_along_image_edges():
    # the same mask step costs less where the image has an edge at the same place
    img_edge = torch.zeros(1, 3, 8, 8)
    img_edge[..., 4:] = 1.0
    img_flat = torch.zeros(1, 3, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 4:] = 0.0
    assert bilateral_tv(img_edge, mask) < 1e-6 < bilateral_tv(img_flat, mask)
    wv, wh = bilateral_weights(img_edge)
    assert wh[0, :, 3].max() < 1e-6 and torch.allclose(wh[0, :, :3], torch.ones(8, 3))
    # colour distance, not channel-mean difference: a red -> green edge keeps its weight low
    rg = torch.zeros(1, 3, 2, 2)
    rg[0, 0, :, 0], rg[0, 1, :, 1] = 1.0, 1.0  # same channel mean on both sides
    assert bilateral_weights(rg)[1].max() < 1e-6


# ----------------------------------------------------------------------------------------------
# iGOS++ against I-GOS on a model whose class needs two patches
# ----------------------------------------------------------------------------------------------
PATCH_A, PATCH_B = (4, 12, 4, 12), (20, 28, 18, 26)


class TwoPatchModel(nn.Module):
    """Class 0 needs BOTH patches: ``logit_0 = gain * (min(mean_A, mean_B) - offset)``, logit_1 = 0.

    Deleting either patch removes the class, so a deletion-only mask (I-GOS) needs only one of
    them; inserting needs both, which iGOS++'s insertion terms ask for.
    """

    def __init__(self, gain: float = 12.0, offset: float = 0.4):
        super().__init__()
        self.a, self.b = PatchModel(patch=PATCH_A), PatchModel(patch=PATCH_B)
        self.gain, self.offset = gain, offset

    def evidence(self, x, p):
        return (p.act(p.conv(x)) * p.weight).flatten(1).sum(1)

    def forward(self, x):
        z = self.gain * (torch.minimum(self.evidence(x, self.a), self.evidence(x, self.b)) - self.offset)
        return torch.stack([z, torch.zeros_like(z)], 1)

    def patch_cells(self, h):
        return self.a.patch_mask(h) | self.b.patch_mask(h)


def two_patch_image(seed=0):
    return torch.maximum(patch_image(patch=PATCH_A, seed=seed), patch_image(patch=PATCH_B, seed=seed + 1))


@pytest.fixture
def two_patch():
    net = TwoPatchModel().eval()
    return wrap(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32), two_patch_image()


def test_igospp_insertion_beats_igos_and_finds_both_patches(two_patch):
    model, x = two_patch
    pp = faithmap.explain(model, x, "igos++", target=0, **FAST)
    ig = faithmap.explain(model, x, "igos", target=0, **FAST)
    c_pp = deletion_insertion(model, x, pp.saliency, pp.target)
    c_ig = deletion_insertion(model, x, ig.saliency, ig.target)
    # 0.964 vs 0.952 with I-GOS's exact backtracking (0.69-0.90 with the old warm-started search)
    assert c_pp.insertion_auc[0] > c_ig.insertion_auc[0] + 0.005
    on = model.net.patch_cells(8)
    top = torch.topk(pp.saliency[0].flatten(), int(on.sum())).indices
    assert on.flatten()[top].float().mean() >= 0.85  # the top cells are on the patches
    # both patches among the top cells, whereas I-GOS's deletion mask needs only one
    a, b = model.net.a.patch_mask(8).flatten(), model.net.b.patch_mask(8).flatten()
    assert a[top].sum() >= 3 and b[top].sum() >= 3
    # the grad images: 4 terms x ig_steps x iterations, all in shared batched passes
    assert pp.counts["grad_images"] == 4 * 8 * 8
    assert pp.extras["masks"].shape == (1, 2, 8, 8)
    sal = 1 - pp.extras["masks"].prod(1)
    assert torch.allclose(pp.saliency, sal)


def test_igospp_on_single_patch(patch_model, patch_input):
    e = faithmap.explain(patch_model, patch_input, "igos++", target=0, **FAST)
    on = patch_model.net.patch_mask(8)
    top = torch.topk(e.saliency[0].flatten(), int(on.sum())).indices
    assert on.flatten()[top].float().mean() >= 0.75
    rnd = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = deletion_insertion(patch_model, patch_input, e.saliency, e.target)
    other = deletion_insertion(patch_model, patch_input, rnd, e.target)
    assert ours.deletion_auc[0] < other.deletion_auc[0] and ours.insertion_auc[0] > other.insertion_auc[0]
    loss = e.history["loss"][0]
    assert (loss[1:] <= loss[:-1] + 1e-6).all()  # Armijo: the line-search objective never increases


def test_igospp_forwards_are_shared(two_patch):
    """The four terms of all images go through the model together, never more than batch_size."""
    model, x = two_patch
    seen = []
    h = model.net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        faithmap.explain(model, x.expand(2, -1, -1, -1), "igos++", target=0, batch_size=16, resolution=8,
                         iterations=1, ig_steps=8, ls_points=1)
    finally:
        h.remove()
    # 1 target pass, then 2 images x 4 terms x 8 steps = 64 gradient images in 4 full passes
    # seen: the target pass (2), F at the start (2 x 4 terms = 8), then the gradient passes
    assert seen[:2] == [2, 8] and seen[2:6] == [16, 16, 16, 16] and max(seen) <= 16


# ----------------------------------------------------------------------------------------------
# objective, direction and line search on iGOS++'s scale
# ----------------------------------------------------------------------------------------------
def _state(model, x, noise_std=0.0, score="prob"):
    base = make_baseline("blur", x, model.mean.to(x), model.std.to(x))
    return MaskState(model, x, base, torch.zeros(x.shape[0], dtype=torch.long), score_of(score), 64,
                     per_image_generators(0, x.shape[0], x.device), noise_std)


def test_line_search_objective_is_eq4_with_the_direction_scale(two_patch):
    """F = 1/2 (f_del(P) - f_ins(P) + f_del(Md) - f_ins(Mi)) + l1 mean|1-P| + l2 BTV(P) at t = 1."""
    model, x = two_patch
    opt = igospp_optimizer((8, 8), ls_points=1)
    st = _state(model, x)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(1, 2, 8, 8, generator=g)
    got = opt.objective(st, masks.unsqueeze(1), torch.arange(1))[0, 0]
    md, mi = masks[:, :1], masks[:, 1:]
    p = md * mi

    def f(img):
        with torch.no_grad():
            return torch.softmax(model(img), 1)[0, 0]

    up = lambda m: upsample(m, 32)  # noqa: E731
    data = (f(phi(x, st.baseline, up(md))) - f(phi(st.baseline, x, up(mi))) + f(phi(x, st.baseline, up(p)))
            - f(phi(st.baseline, x, up(p))))
    reg = 1.0 * (1 - p).abs().mean() + 20.0 * btv(x, p)[0]
    assert got.item() == pytest.approx((0.5 * data + reg).item(), abs=1e-6)


def test_direction_is_the_gradient_of_the_line_search_objective(two_patch):
    """Without noise and with ls_points == ig_steps, TG is exactly grad F: one scale for both."""
    model, x = two_patch
    model = model.double()
    x = x.double()
    opt = igospp_optimizer((4, 4), ig_steps=5, ls_points=5, noise_std=0.0, l1=0.5)
    st = _state(model, x)
    g = torch.Generator().manual_seed(3)
    masks = (0.3 + 0.6 * torch.rand(1, 2, 4, 4, generator=g, dtype=torch.float64))
    d = opt.direction(st, masks)
    eps = 1e-6
    for k in [(0, 0, 1, 1), (0, 1, 2, 2), (0, 0, 3, 0), (0, 1, 0, 3)]:
        e = torch.zeros_like(masks)
        e[k] = eps
        fp = opt.objective(st, (masks + e).unsqueeze(1), torch.arange(1))[0, 0]
        fm = opt.objective(st, (masks - e).unsqueeze(1), torch.arange(1))[0, 0]
        assert d[k].item() == pytest.approx(((fp - fm) / (2 * eps)).item(), rel=1e-5, abs=1e-9)


def test_line_search_on_two_masks_accepts_the_known_step():
    """F = 0.5 * 0.5 * (||Md - c||^2 + ||Mi - c||^2): data weight 1/2 on objective and direction.

    From Md = Mi = 1, c = 0.4 (16 cells each): F = 2.88, TG = 0.3 per cell, ||TG||^2 = 2.88; a step
    a gives M' = clip(1 - 0.3 a) and F(M') = 8 (M' - 0.4)^2. With beta = 0.4 the condition
    F(M') - F <= -1.152 a fails for 1000, 200, 40 and 8 (M' = 0: -1.6 > -9.2) and holds for 1.6
    (M' = 0.52: -2.77 <= -1.84), so backtracking accepts 1.6 (one step for both masks).
    """
    c = 0.4
    w = 0.5

    def value(cand, idx):
        return 0.5 * w * (cand - c).flatten(2).pow(2).sum(2)

    m = torch.ones(2, 2, 4, 4)
    g = w * (m - c)
    f = value(m.unsqueeze(1), torch.arange(2))[:, 0]
    assert f[0].item() == pytest.approx(2.88)
    for warm in (False, True):
        ls = ArmijoLineSearch(alpha_max=1000, decay=0.2, beta=0.4, alpha_min=1e-5, window=3, warm_start=warm)
        if warm:
            ls._prev = [0, 4]
        new, alpha, f_new = ls.step(m, g, value, f)
        assert torch.allclose(alpha, torch.full((2,), 1.6))
        assert torch.allclose(new, torch.full_like(m, 0.52))
        gg = float(g[0].pow(2).sum())
        for a, ok in [(1.6, True), (8.0, False)]:
            fa = float(value((m[:1] - a * g[:1]).clamp(0, 1).unsqueeze(1), torch.arange(1))[0, 0])
            assert (fa - float(f[0]) <= -a * 0.4 * gg) is ok
        assert torch.allclose(f_new, value(new.unsqueeze(1), torch.arange(2))[:, 0])


class _LinearModel(nn.Module):
    """logit_0 = <w, x>, logit_1 = 0: with score='logit' the data terms are linear in the mask."""

    def __init__(self, size=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(1, 3, size, size, generator=g, dtype=torch.float64) / size)

    def forward(self, x):
        z = (x * self.w).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], 1)


@pytest.mark.parametrize("warm", [False, True])
def test_igospp_steps_are_those_of_sequential_backtracking(warm):
    """Each accepted step is the first grid step, from alpha_max down, that satisfies eq. 8."""
    model = wrap(_LinearModel().eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=16)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    opt = igospp_optimizer((4, 4), iterations=4, ig_steps=3, ls_points=3, noise_std=0.0, warm_start=warm)
    ls = opt.step_rule
    st = _state(model, x, score="logit")
    masks = torch.ones(1, 2, 4, 4, dtype=torch.float64)
    got, hist = opt.run(model, x, torch.zeros(1, dtype=torch.long), resolution=(4, 4), score="logit")
    for it in range(4):  # replay: a literal sequential search over the grid
        d = opt.direction(st, masks)
        f0 = opt.objective(st, masks.unsqueeze(1), torch.arange(1))[0, 0]
        gg = float(d.pow(2).sum())
        for a in ls.grid():
            cand = (masks - a * d).clamp(0, 1)
            if float(opt.objective(st, cand.unsqueeze(1), torch.arange(1))[0, 0] - f0) <= -a * ls.beta * gg:
                break
        assert float(hist["alpha"][0, it]) == pytest.approx(a)
        masks = (masks - a * d).clamp(0, 1)
    assert torch.allclose(got, masks)


# ----------------------------------------------------------------------------------------------
# ablations (Table 3)
# ----------------------------------------------------------------------------------------------
def test_ablation_parsing():
    assert parse_ablation("no_btv") == {"no-btv"}
    assert parse_ablation("No-Noise, fixed-step") == {"no-noise", "fixed-step"}
    assert parse_ablation(None) == set() and parse_ablation("none") == set()
    with pytest.raises(faithmap.FaithmapError, match="unknown ablation"):
        parse_ablation("no-everything")
    with pytest.raises(faithmap.FaithmapError, match="exclude"):
        parse_ablation("insertion,naive")
    assert set(ABLATIONS) == {"insertion", "naive", "no-noise", "fixed-step", "no-btv"}


def test_ablation_no_btv_is_l2_zero(patch_model, patch_input):
    a = faithmap.explain(patch_model, patch_input, "igos++", target=0, ablation="no-btv", **FAST)
    b = faithmap.explain(patch_model, patch_input, "igos++", target=0, l2=0.0, **FAST)
    full = faithmap.explain(patch_model, patch_input, "igos++", target=0, **FAST)
    assert torch.equal(a.saliency, b.saliency)
    assert not torch.allclose(a.saliency, full.saliency)


def test_ablation_no_noise_is_noise_zero(patch_model, patch_input):
    a = faithmap.explain(patch_model, patch_input, "igos++", target=0, ablation="no-noise", seed=1, **FAST)
    b = faithmap.explain(patch_model, patch_input, "igos++", target=0, noise_std=0.0, seed=2, **FAST)
    full1 = faithmap.explain(patch_model, patch_input, "igos++", target=0, seed=1, **FAST)
    full2 = faithmap.explain(patch_model, patch_input, "igos++", target=0, seed=2, **FAST)
    assert torch.equal(a.saliency, b.saliency)  # no randomness left: the seed does not matter
    assert not torch.allclose(full1.saliency, full2.saliency)


def test_ablation_fixed_step(patch_model, patch_input):
    a = faithmap.explain(patch_model, patch_input, "igos++", target=0, ablation="fixed-step", step_size=7.0,
                         **FAST)
    assert torch.equal(a.history["alpha"], torch.full((1, 8), 7.0))
    full = faithmap.explain(patch_model, patch_input, "igos++", target=0, **FAST)
    assert full.counts["nograd_images"] > 0 and a.counts["nograd_images"] == 0  # no line search


def test_ablation_insertion_and_naive(two_patch):
    model, x = two_patch
    ins = faithmap.explain(model, x, "igos++", target=0, ablation="insertion", **FAST)
    naive = faithmap.explain(model, x, "igos++", target=0, ablation="naive", **FAST)
    assert ins.extras["masks"].shape == naive.extras["masks"].shape == (1, 1, 8, 8)
    assert ins.counts["grad_images"] == 1 * 8 * 8 and naive.counts["grad_images"] == 2 * 8 * 8
    # insertion-only needs both patches too; its deletion mask is the insertion mask
    on = model.net.patch_cells(8)
    top = torch.topk(ins.saliency[0].flatten(), int(on.sum())).indices
    assert on.flatten()[top].float().mean() >= 0.85
    assert not torch.allclose(ins.saliency, naive.saliency)


def test_plain_tv_option(two_patch):
    model, x = two_patch
    a = faithmap.explain(model, x, "igos++", target=0, smooth="tv", **FAST)
    b = faithmap.explain(model, x, "igos++", target=0, **FAST)
    assert not torch.allclose(a.saliency, b.saliency)
    with pytest.raises(faithmap.FaithmapError, match="smooth"):
        faithmap.explain(model, x, "igos++", target=0, smooth="l2", **FAST)


def test_defaults_follow_the_paper():
    p = faithmap.METHODS["igos++"].params  # the defaults of its settings dataclass
    assert p["l2"] == 20.0 and p["ig_steps"] == 20 and p["sigma"] == 0.01
    assert p["tv_beta"] == 2.0 and p["iterations"] == 15
    assert igospp_optimizer((224, 224)).regularizer.l1 == 10.0
    assert igospp_optimizer((28, 28)).regularizer.l1 == 1.0
    noisy = [t.noise for t in igospp_optimizer((28, 28)).terms]
    assert noisy == [False, False, True, True]  # noise on the Md and Mi terms (paper, eq. 6)


@pytest.mark.slow
def test_cli_ablation(tmp_path, capsys):
    from faithmap.cli import main

    rc = main(["explain", "sample:coffee", "--method", "igos++", "--ablation", "no-btv", "--out", str(tmp_path),
               "--param", "iterations=1", "--param", "ig_steps=2"])
    assert rc == 0
    import json

    summary = json.loads((tmp_path / "coffee_igos++_summary.json").read_text())
    assert summary["params"]["ablation"] == "no-btv" and summary["params"]["l2"] == 0.0
    rc = main(["explain", "sample:coffee", "--method", "igos++", "--ablation", "bogus", "--out", str(tmp_path)])
    assert rc == 2 and "unknown ablation" in capsys.readouterr().err
