"""Meaningful perturbation (mask), RISE and occlusion: literal references, a peer library
(captum's Occlusion, torch's Adam) and models with known answers."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import faithmap
from faithmap.core.perturb import make_baseline
from faithmap.methods.mask import AdamStep
from faithmap.methods.perturbation import SumL1TV, rise_masks, window_starts
from faithmap.metrics import deletion_insertion
from faithmap.models import wrap


class RegionModel(nn.Module):
    """logit_0 = gain * mean of the channel-mean image over a known region; logit_1 = 0."""

    def __init__(self, size=32, region=(6, 14, 18, 28), gain=1.0):
        super().__init__()
        w = torch.zeros(1, 1, size, size)
        r0, r1, c0, c1 = region
        w[..., r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
        self.register_buffer("w", w)
        self.region, self.gain = region, gain

    def region_mask(self, size=32):
        m = torch.zeros(size, size, dtype=torch.bool)
        r0, r1, c0, c1 = self.region
        m[r0:r1, c0:c1] = True
        return m

    def forward(self, x):
        z = self.gain * (x.mean(1, keepdim=True) * self.w).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], 1)


def _wrapped(net, size=32):
    return wrap(net.eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=size)


def _image(size=32, seed=0):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# meaningful perturbation
# ----------------------------------------------------------------------------------------------
def test_adam_step_is_projected_torch_adam():
    g = torch.Generator().manual_seed(0)
    c = torch.rand(2, 1, 3, 3, generator=g) * 1.4 - 0.2  # some targets outside [0, 1]: projection acts
    m0 = torch.ones(2, 1, 3, 3)
    ours = AdamStep(lr=0.1)
    ours.reset()
    p = m0.clone().requires_grad_(True)
    ref = torch.optim.Adam([p], lr=0.1)
    m = m0.clone()
    for _ in range(12):
        grad = 2 * (m - c)
        m, alpha, f = ours.step(m, grad, None, None)
        ref.zero_grad()
        p.grad = 2 * (p.detach() - c)
        ref.step()
        with torch.no_grad():
            p.clamp_(0, 1)
        assert torch.allclose(m, p.detach(), atol=1e-6)
    assert f is None and torch.equal(alpha, torch.full((2,), 0.1))


def test_sum_l1_tv_literal():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64)
    got = SumL1TV(l1=0.3, l2=0.7, beta=3.0)(None, m)
    for b in range(2):
        a = m[b, 0].tolist()
        l1 = sum(abs(1 - v) for row in a for v in row)
        tv = sum(abs(a[i + 1][j] - a[i][j]) ** 3 for i in range(3) for j in range(5))
        tv += sum(abs(a[i][j + 1] - a[i][j]) ** 3 for i in range(4) for j in range(4))
        assert got[b].item() == pytest.approx(0.3 * l1 + 0.7 * tv, rel=1e-12)


def test_mask_finds_the_patch(patch_model, patch_input):
    e = faithmap.explain(patch_model, patch_input, "mask", target=0, resolution=8, iterations=300)
    on = patch_model.net.patch_mask(8)
    sal = e.saliency[0]
    # Fong & Vedaldi's weak L1 (1e-4 a cell) deletes a region around the patch: every patch cell
    # is fully deleted, most of the image is not
    assert sal[on].min() >= sal.max() - 1e-6
    assert sal[~on].mean() < 0.9 * sal[on].mean()
    # plain gradients: one image with gradient per iteration, no line search
    assert e.counts == {"images": 300, "grad_images": 300, "nograd_images": 0}
    rnd = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = deletion_insertion(patch_model, patch_input, e.saliency, e.target)
    other = deletion_insertion(patch_model, patch_input, rnd, e.target)
    assert ours.deletion_auc[0] < other.deletion_auc[0]


# ----------------------------------------------------------------------------------------------
# RISE
# ----------------------------------------------------------------------------------------------
def _rise_literal(model, x, target, n, s, p, seed, baseline):
    """RISE one mask at a time, each cut from its upsampled grid by slicing."""
    _, _, hgt, wid = x.shape
    g = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n, s, s, generator=g) < p).float()
    ch, cw = math.ceil(hgt / s), math.ceil(wid / s)
    sy = torch.randint(0, ch, (n,), generator=g)
    sx = torch.randint(0, cw, (n,), generator=g)
    sal = torch.zeros(hgt, wid)
    for i in range(n):
        up = F.interpolate(grids[i][None, None], size=((s + 1) * ch, (s + 1) * cw), mode="bilinear",
                           align_corners=False)[0, 0]
        mask = up[int(sy[i]):int(sy[i]) + hgt, int(sx[i]):int(sx[i]) + wid]
        with torch.no_grad():
            prob = torch.softmax(model(x * mask + baseline * (1 - mask)), 1)[0, target]
        sal += prob * mask
    return sal / (n * p)


def test_rise_matches_literal_loop(patch_model, patch_input):
    base = make_baseline("blur", patch_input)
    want = _rise_literal(patch_model, patch_input, 0, 60, 5, 0.5, 4, base)
    for bs in (1, 7, 64):
        e = faithmap.explain(patch_model, patch_input, "rise", target=0, n_masks=60, cells=5, seed=4, batch_size=bs)
        assert torch.allclose(e.saliency[0], want, atol=1e-5)
    assert e.counts["images"] == 60


def test_rise_masks_shape_and_statistics():
    g = torch.Generator().manual_seed(0)
    grids = (torch.rand(400, 7, 7, generator=g) < 0.5).float()
    shifts = torch.randint(0, 5, (400, 2), generator=g)
    m = rise_masks(grids, shifts, (32, 32))
    assert m.shape == (400, 32, 32) and m.min() >= 0 and m.max() <= 1
    assert abs(m.mean().item() - 0.5) < 0.02  # E[M] = p
    # the first mask is the window of its upsampled grid at its shift
    up = F.interpolate(grids[:1, None], size=(40, 40), mode="bilinear", align_corners=False)[0, 0]
    r, c = shifts[0].tolist()
    assert torch.allclose(m[0], up[r:r + 32, c:c + 32])


def test_rise_map_correlates_with_the_region():
    net = RegionModel()
    model, x = _wrapped(net), _image()
    e = faithmap.explain(model, x, "rise", target=0, n_masks=3000, cells=6, score="logit", baseline="zero",
                         batch_size=500)
    sal = e.saliency[0].flatten()
    region = net.region_mask().flatten().float()
    r = torch.corrcoef(torch.stack([sal, region]))[0, 1]
    assert r > 0.6, float(r)
    assert sal[region.bool()].mean() > sal[~region.bool()].mean()


def test_rise_of_a_constant_score_is_one():
    class Const(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2) + torch.tensor([1.0, 0.0])

    model = _wrapped(Const())
    e = faithmap.explain(model, _image(), "rise", target=0, n_masks=2000, cells=4, score="logit", batch_size=500)
    assert abs(e.saliency.mean().item() - 1.0) < 0.03  # sum_i M_i / (N p) -> 1


def test_rise_bad_parameters(patch_model, patch_input):
    with pytest.raises(faithmap.FaithmapError, match="cells"):
        faithmap.explain(patch_model, patch_input, "rise", cells=64)
    with pytest.raises(faithmap.FaithmapError, match="p"):
        faithmap.explain(patch_model, patch_input, "rise", p=1.0)


# ----------------------------------------------------------------------------------------------
# occlusion
# ----------------------------------------------------------------------------------------------


def test_occlusion_covers_the_far_edge():
    assert window_starts(30, 8, 5) == [0, 5, 10, 15, 20, 22]
    assert window_starts(32, 8, 4) == [0, 4, 8, 12, 16, 20, 24]
    model = _wrapped(RegionModel(size=30, region=(3, 12, 20, 29), gain=8.0), 30)
    x = torch.rand(1, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    e = faithmap.explain(model, x, "occlusion", target=0, patch=8, stride=5, baseline="zero")
    # literal: every window, the score drop, averaged over the windows covering each pixel
    starts = window_starts(30, 8, 5)
    with torch.no_grad():
        full = torch.softmax(model(x), 1)[0, 0]
        total, count = torch.zeros(30, 30), torch.zeros(30, 30)
        for r in starts:
            for c in starts:
                xo = x.clone()
                xo[..., r:r + 8, c:c + 8] = 0
                total[r:r + 8, c:c + 8] += full - torch.softmax(model(xo), 1)[0, 0]
                count[r:r + 8, c:c + 8] += 1
    assert count.min() > 0
    assert torch.allclose(e.saliency[0], total / count, atol=1e-6)


def test_occlusion_finds_the_region():
    net = RegionModel()
    model, x = _wrapped(net), _image()
    e = faithmap.explain(model, x, "occlusion", target=0, patch=4, stride=2, score="logit", baseline="zero")
    sal = e.saliency[0]
    region = net.region_mask()
    near = F.max_pool2d(region[None, None].float(), 9, stride=1, padding=4)[0, 0].bool()  # within 4 px
    assert sal[region].min() > 0  # x >= 0 replaced by 0 lowers the region's mean
    assert torch.equal(sal[~near], torch.zeros_like(sal[~near]))  # windows off the region change nothing
    with pytest.raises(faithmap.FaithmapError, match="patch"):
        faithmap.explain(model, x, "occlusion", patch=40)
