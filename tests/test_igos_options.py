"""The mask engine's cost options: Gauss-Legendre nodes on the mask path, the noisy line-search
objective, early stopping (model images counted, integrals against closed forms)."""

import numpy as np
import pytest
import torch
from torch import nn

import faithmap
from faithmap.errors import FaithmapError
from faithmap.methods.mask import MaskOptimizer, MaskState, PathTerm, parse_quadrature
from faithmap.models import wrap

from conftest import patch_image

FAST = dict(resolution=8, iterations=6, ig_steps=10)


class PowerModel(nn.Module):
    """logit_0 = (mean of the image) ** k: along the mask path its gradient is a polynomial in t."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([m ** self.k, torch.zeros_like(m)], 1)


def _direction(k, rule, n, mask):
    model = wrap(PowerModel(k), mean=(0, 0, 0), std=(1, 1, 1), input_size=4)
    x = torch.full((1, 3, 4, 4), 1.0)
    base = torch.full((1, 3, 4, 4), 0.5)
    st = MaskState(model, x, base, torch.tensor([0]), lambda out, t: out.gather(1, t.view(-1, 1))[:, 0], 64,
                   [torch.Generator().manual_seed(0)], 0.0)
    opt = MaskOptimizer(terms=[PathTerm("deletion", 0, integrated=True, noise=False)],
                        regularizer=lambda s, m: 0 * m.flatten(1).sum(1), ig_steps=n, quadrature=rule, noise_std=0.0)
    return opt.direction(st, mask)


def _exact(k, mask):
    """The path integral int_0^1 d/dM f(phi(I, B, t M)) dt in closed form for PowerModel(k).

    With I = 1, B = 1/2 and the mask at input size: mean(phi) = 1/2 + t * mean(M) / 2, so
    d f / d M_j = k (1/2 + t a)^(k-1) * t / (2 * 16), a = mean(M) / 2; integrate the polynomial."""
    a = float(mask.mean()) / 2
    poly = np.polynomial.Polynomial([0.5, a]) ** (k - 1) * np.polynomial.Polynomial([0, 1])
    integral = poly.integ()(1.0) - poly.integ()(0.0)
    return k * integral / (2 * 16)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_gauss_legendre_integrates_polynomial_paths_exactly(k):
    mask = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(k))
    want = _exact(k, mask)
    # the integrand has degree k in t: n Gauss-Legendre nodes are exact up to degree 2n - 1
    n_exact = max(1, (k + 2) // 2)
    gl = _direction(k, "gl", n_exact, mask)
    assert torch.allclose(gl, torch.full_like(gl, want), rtol=1e-5)
    # the paper's right Riemann sum with 4x as many points is not exact
    riemann = _direction(k, "riemann", 4 * n_exact, mask)
    assert (riemann - want).abs().max() > 1e-3 * abs(want)


def test_gl5_sends_a_quarter_of_the_gradient_images(patch_model, patch_input):
    base = faithmap.explain(patch_model, patch_input, "igos", target=0, **FAST)
    gl = faithmap.explain(patch_model, patch_input, "igos", target=0, quadrature="gl5", **FAST)
    assert base.counts["grad_images"] == 6 * 10
    assert gl.counts["grad_images"] == 6 * 5
    assert gl.params["quadrature"] == "gl" and gl.params["ig_steps"] == 5
    pp = faithmap.explain(patch_model, patch_input, "igos++", target=0, resolution=8, iterations=3, quadrature="gl5")
    assert pp.counts["grad_images"] == 3 * 4 * 5  # four IG terms of five nodes per iteration


def test_quadrature_names():
    assert parse_quadrature("riemann", 20) == ("riemann", 20)
    assert parse_quadrature("gl", 7) == ("gl", 7)
    assert parse_quadrature("GL5", 20) == ("gl", 5)
    for bad in ("simpson", "gl0", "glx"):
        with pytest.raises(FaithmapError):
            parse_quadrature(bad, 20)


def test_noisy_line_search_objective_counts_and_noise_free_limit(patch_model, patch_input):
    kw = dict(FAST, ls_points=4, noise_std=0.0)
    plain = faithmap.explain(patch_model, patch_input, "igos", target=0, **kw)
    fresh = faithmap.explain(patch_model, patch_input, "igos", target=0, ls_noise=True, **kw)
    # without noise the objective is the same, so are the steps and the map; the objective at the
    # current mask is drawn afresh in every iteration: 4 more images in each iteration after the first
    assert torch.allclose(plain.saliency, fresh.saliency, atol=1e-6)
    assert fresh.counts["nograd_images"] - plain.counts["nograd_images"] == 4 * (6 - 1)
    noisy = faithmap.explain(patch_model, patch_input, "igos", target=0, ls_noise=True, **dict(FAST, ls_points=4))
    assert noisy.counts["nograd_images"] % 4 == 0  # every objective: 4 noisy path images


def test_tol_stops_early_per_image(patch_model):
    x = torch.cat([patch_image(seed=s) for s in range(2)])
    full = faithmap.explain(patch_model, x, "igos", target=0, **FAST)
    stop = faithmap.explain(patch_model, x, "igos", target=0, tol=1e9, **FAST)  # no step lowers F by 1e9
    assert stop.counts["grad_images"] == 2 * 10  # one iteration each, then both stop
    assert stop.history["loss"].shape[1] == 1 and full.history["loss"].shape[1] == 6
    # a moderate tol: batched equals one by one (each image stops on its own)
    dec = full.history["loss"][0, :-1] - full.history["loss"][0, 1:]  # image 0's decrease per iteration
    tol = float(dec.max())  # some later iteration lowers F by less: image 0 stops before the end
    both = faithmap.explain(patch_model, x, "igos", target=0, tol=tol, **FAST)
    imgs = 0
    for i in range(2):
        one = faithmap.explain(patch_model, x[i:i + 1], "igos", target=0, tol=tol, **FAST)
        assert torch.allclose(both.saliency[i], one.saliency[0], atol=1e-5)
        imgs += one.counts["images"]
    assert both.counts["images"] == imgs < full.counts["images"]
    with pytest.raises(FaithmapError):
        faithmap.explain(patch_model, x, "igos", target=0, tol=-1.0, **FAST)


def test_new_parameters_have_types_and_bounds():
    for name in ("igos", "igos++"):
        spec = faithmap.METHODS.get(name)
        sig = {p.name: p for p in spec.parameters}  # read from the settings dataclass
        assert sig["quadrature"].type is str and sig["quadrature"].default == "riemann"
        assert sig["ls_noise"].type is bool and sig["tol"].type is float
        for bad in ({"tol": -1.0}, {"ig_steps": 0}, {"iterations": 10**9}, {"quadrature": 5}):  # refused at the boundary
            with pytest.raises(faithmap.FaithmapError):
                spec.check(bad)
        spec.check({"tol": 0.0, "ig_steps": 5, "quadrature": "gl5", "ls_noise": True})
