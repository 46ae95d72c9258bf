"""Extremal Perturbation (``methods/extremal.py``): the smooth masks against their literal definition,
the blur pyramid's levels, the area loss and its ties, the area constraint at the end of a run, the
preservation mask on a planted patch, batched against one-by-one, the model left unchanged, and
one-line errors."""

import math

import pytest
import torch

import faithmap
from faithmap.core.perturb import gaussian_blur
from faithmap.errors import FaithmapError
from faithmap.methods.extremal import AreaLoss, Perturbed, SmoothMask, kernel
from faithmap.models import wrap

from conftest import PatchModel, assert_state_equal, model_state, patch_image
from test_invariants import tiny_inputs, tiny_model

CENTRED = (12, 20, 12, 20)  # a patch the left-right jitter maps onto itself


def literal_smooth_mask(p: torch.Tensor, size, sigma: float, temperature: float) -> torch.Tensor:
    """The definition in the docstrings, with loops: along each axis, pixel u pools the (virtual) grid
    points i within 2 sigma (or the nearest one), at c_i = (i + 0.5) * n / g - 0.5, valued
    p[clamp(i)], as smax(kernel(u - c_i) q_i); columns first, then rows."""
    gh, gw = p.shape

    def smax(zs):
        e = [math.exp(z / temperature) for z in zs]
        return sum(z * w for z, w in zip(zs, e)) / sum(e)

    def along(values, n_out):  # values: list of g numbers -> list of n_out numbers
        g = len(values)
        cell = n_out / g
        out = []
        for u in range(n_out):
            near = min(g - 1, int(math.floor((u + 0.5) * g / n_out)))
            zs = []
            for i in range(-60, g + 60):
                d = u - ((i + 0.5) * cell - 0.5)
                if abs(d) <= 2 * sigma or i == near:
                    zs.append(float(kernel(torch.tensor(d, dtype=torch.float64), sigma)) * values[min(max(i, 0), g - 1)])
            out.append(smax(zs))
        return out

    hgt, wid = size
    cols = [along([float(v) for v in p[r]], wid) for r in range(gh)]  # gh x W
    m = [[0.0] * wid for _ in range(hgt)]
    for v in range(wid):
        col = along([cols[r][v] for r in range(gh)], hgt)
        for u in range(hgt):
            m[u][v] = col[u]
    return torch.tensor(m, dtype=torch.float64).clamp(0, 1)


def test_smooth_mask_is_its_definition_and_tends_to_the_max_convolution():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 3, generator=g, dtype=torch.float64)
    sm = SmoothMask((4, 3), (13, 10), 2.5, 0.1, dtype=torch.float64)
    got = sm(p.view(1, 1, 4, 3))[0, 0]
    assert torch.allclose(got, literal_smooth_mask(p, (13, 10), 2.5, 0.1), atol=1e-10)
    # temperature -> 0: the hard max-convolution max_ij kernel(dy) kernel(dx) p_ij (the kernel separates)
    cold = SmoothMask((4, 3), (13, 10), 2.5, 1e-4, dtype=torch.float64)(p.view(1, 1, 4, 3))[0, 0]
    cy = (torch.arange(4, dtype=torch.float64) + 0.5) * 13 / 4 - 0.5
    cx = (torch.arange(3, dtype=torch.float64) + 0.5) * 10 / 3 - 0.5
    u, v = torch.arange(13, dtype=torch.float64), torch.arange(10, dtype=torch.float64)
    ky, kx = kernel(u[:, None] - cy[None, :], 2.5), kernel(v[:, None] - cx[None, :], 2.5)  # (13, 4), (10, 3)
    hard = (ky[:, None, :, None] * kx[None, :, None, :] * p[None, None]).flatten(2).amax(-1)
    assert (cold - hard).abs().max() < 5e-3
    # a block of ones gives a plateau (the flat top covers half a cell; the smooth max at temperature 1/20
    # mixes in the neighbours at 0.95 of the kernel, so it sits 1-2 % below 1); zeros stay zero far away
    block = torch.zeros(1, 1, 32, 32)
    block[..., 10:20, 10:20] = 1
    m = SmoothMask((32, 32), (224, 224), 21.0, 0.05)(block)[0, 0]
    assert m[80:130, 80:130].min() > 0.97 and m[:20, :20].max() == 0 and m[:, :20].max() < 0.02


def test_blur_pyramid_levels_and_jitter():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pt = Perturbed(x, None, levels=5, max_blur=3.0, jitter=True)
    idx = torch.tensor([1])

    def at(k, it=1):
        return pt(idx, torch.full((1, 1, 16, 16), float(k)), it)

    assert torch.allclose(at(1.0), x[1:2], atol=1e-6)  # keep everything: the image itself
    assert torch.allclose(at(0.0), gaussian_blur(x[1:2], 2 * math.ceil(12) + 1, 3.0), atol=1e-6)
    lvl1 = gaussian_blur(x[1:2], 2 * math.ceil(4 * 2.25) + 1, 2.25)  # level 1 of 4: sigma 3 * (1 - 1/4)
    assert torch.allclose(at(0.25), lvl1, atol=1e-6)
    assert torch.allclose(at(0.125), 0.5 * (at(0.0) + lvl1), atol=1e-6)  # linear between levels
    assert torch.equal(at(0.6, it=0), at(0.6, it=1).flip(-1))  # even iterations are flipped left-right
    # a named baseline instead of the pyramid: phi(I, B, keep)
    b = torch.zeros_like(x)
    assert torch.allclose(Perturbed(x, b, 8, 3.0, False)(idx, torch.full((1, 1, 16, 16), 0.3), 0), 0.3 * x[1:2])


def test_area_residual_is_the_sorted_distance_and_ties_pull_alike():
    g = torch.Generator().manual_seed(2)
    m = torch.rand(2, 3, 8, 8, generator=g)
    m[0, 0, :4] = 1.0  # 32 tied values across the step of r_0.1 (the top 6 values)
    m[1, 1] = 0.25  # every value tied
    areas = [0.1, 0.3, 0.5]
    r = torch.zeros(3, 64)
    for k, ones in enumerate((6, 19, 32)):  # round(a * 64)
        r[k, 64 - ones:] = 1
    ref = (m.flatten(2).sort(-1).values - r).pow(2).mean(-1)
    mm = m.clone().requires_grad_(True)
    got = AreaLoss.residual(mm, areas)
    assert torch.allclose(got, ref, atol=1e-6)
    got.sum().backward()
    tied = mm.grad[0, 0, :4].flatten()
    assert torch.allclose(tied, tied[0].expand_as(tied)) and tied[0] > 0  # 6 of 32 ones wanted: all pulled down
    assert torch.allclose(mm.grad[1, 1], torch.full((8, 8), 2 * (0.25 - 19 / 64) / 64))  # the mean target 19/64


def best_block_residual(area: float, sigma: float = 3.0) -> float:
    """The smallest area residual of the smooth masks of a rectangle of ones on a 32 x 32 grid at 32 px:
    the smooth family cannot reach 0 (its edges fall off over sigma px)."""
    sm = SmoothMask((32, 32), (32, 32), sigma, 0.05)
    best = math.inf
    for h in range(1, 24):
        for w in (h, h + 1):
            p = torch.zeros(1, 1, 32, 32)
            p[..., 4:4 + h, 4:4 + w] = 1
            best = min(best, float(AreaLoss.residual(sm(p), [area])))
    return best


def test_area_constraint_holds_and_the_preservation_mask_covers_the_patch():
    """PatchModel's class 0 rests on an 8 x 8 patch (64 of 1024 pixels). Preservation at area 0.12 (123
    pixels: the smooth mask needs room for its fall-off around the patch), 300 iterations with the area
    weight growing by 1.0094 an iteration, which reaches the paper's final weight (300 * 1.0035^800 =
    300 * 16.4; 1.0094^300 = 16.5) in fewer steps."""
    model = wrap(PatchModel(patch=CENTRED).eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)
    x = patch_image(patch=CENTRED)
    a = 0.12
    e = faithmap.explain(model, x, "extremal_perturbation", target=0, area=a, iterations=300, area_growth=1.0094,
                         resolution=32)  # the input size: the smooth mask itself
    m = e.saliency[0]
    assert m.shape == (32, 32) and e.counts["images"] == 300  # one image per iteration and area
    # the area constraint: the sorted mask values against r_a, as close as the best rectangle of the family
    residual = float(e.extras["area_residual"][0, 0])
    assert residual <= 1.1 * best_block_residual(a)
    assert abs(float(m.mean()) - a) < 0.01  # 10 pixels of 1024
    # the mask covers the patch: every patch pixel among the round(a N) highest, and nearly fully kept
    on = model.net.patch_mask(32)
    top = torch.zeros(1024, dtype=torch.bool)
    top[m.flatten().topk(round(a * 1024)).indices] = True
    assert top[on.flatten()].all()
    assert m[on].min() > 0.8 and m[~on].mean() < 0.1


def test_batched_equals_one_by_one_and_the_model_is_unchanged():
    model, x = tiny_model(), tiny_inputs(3)
    model.net.train()
    model.net.features[0].weight.requires_grad_(False)
    before = model_state(model)
    target = torch.tensor([0, 1, 2])
    kw = dict(areas=(0.1, 0.3), game="dual", iterations=8, resolution=8)
    both = faithmap.explain(model, x, "ep", target=target, **kw)
    assert_state_equal(before, model_state(model))
    assert both.extras["smooth_masks"].shape == (3, 2, 32, 32) and both.saliency.shape == (3, 8, 8)
    assert torch.allclose(both.saliency, both.extras["smooth_masks"].mean(1).view(3, 8, 4, 8, 4).mean((2, 4)),
                          atol=1e-6)  # the areas' mean, area-averaged onto the 8 x 8 cells
    for i in range(3):
        one = faithmap.explain(model, x[i:i + 1], "ep", target=target[i:i + 1], **kw)
        assert torch.allclose(both.extras["smooth_masks"][i], one.extras["smooth_masks"][0], atol=1e-5)


@pytest.mark.parametrize("params, needle", [
    ({"area": 0.0}, "in (0, 1)"),
    ({"area": 1.5}, "in (0, 1)"),
    ({"areas": (0.1, 2.0)}, "in (0, 1)"),
    ({"area": 0.1, "areas": (0.2,)}, "not both"),
    ({"game": "keep"}, "unknown game"),
    ({"levels": 1}, "levels must be in [2, inf)"),
    ({"lr": 0.0}, "lr must be in (0, inf)"),
    ({"step": 0}, "step must be in [1, 32]"),
    ({"baseline": "sepia"}, "baseline must be None"),
    ({"resolution": 0}, "resolution must be in"),
])
def test_bad_parameters_are_one_line(params, needle):
    model, x = tiny_model(), tiny_inputs(1)
    with pytest.raises(FaithmapError, match=None) as err:
        faithmap.explain(model, x, "extremal", target=0, iterations=1, **params)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_aop_does_not_refine_with_it():
    """AOP's stage 2 starts from a given mask; Extremal Perturbation (a ``mask`` method) takes none."""
    from faithmap.methods.aop import refine_methods

    assert "extremal_perturbation" not in refine_methods() and {"igos", "igos++", "mask"} <= set(refine_methods())
    with pytest.raises(FaithmapError, match="extremal_perturbation takes no start mask"):
        faithmap.explain(tiny_model(), tiny_inputs(1), "aop", target=0, refine="ep", resolution=4)
