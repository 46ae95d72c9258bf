"""Parity with captum 0.9 (test-only peer): the gradient family, Guided Backprop and Deconvnet (also on the
GAD demo networks), occlusion and infidelity.

Skipped as a whole when captum is missing; the engines' own tests are in test_gradient.py, test_perturbation.py,
test_gad.py and test_quality_metrics.py. Guided backprop and deconvnet on ReLU6 networks are compared on a copy
of the network whose every ``ReLU6`` is replaced by ``ReLU`` followed by ``clamp(max=6)``: captum overrides
``nn.ReLU`` only, and that decomposition is exactly the reading of :func:`rectifier_rule`."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

import faithmap
from faithmap.core.perturb import make_baseline
from faithmap.methods.gradient import baselines_for, quadrature_nodes, rectifier_rule
from faithmap.metrics import faithfulness as F

from test_gradient import (InplaceNet, Net, TARGET, clf, hook_counts, inputs, lite0_split, rel_err,  # noqa: F401
                           relu6_net, split_relu6)
from test_quality_metrics import rel_close, setup, up  # noqa: F401  (setup is a fixture)

captum_attr = pytest.importorskip("captum.attr")
from captum.attr import (Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients,  # noqa: E402
                         NoiseTunnel, Saliency)


# ----------------------------------------------------------------------------------------------
# plain gradients
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.Softplus])
def test_saliency_and_gradxinput_match_captum(act):
    net = Net(act)
    model, x = clf(net), inputs()
    e = faithmap.explain(model, x, "saliency", TARGET)
    ref = Saliency(net).attribute(x, target=TARGET, abs=False)
    assert rel_err(e.attribution, ref) < 1e-5
    # default map: sum over channels of captum's absolute saliency
    assert rel_err(e.saliency, Saliency(net).attribute(x, target=TARGET).sum(1)) < 1e-5
    # Simonyan's map: max over channels of |grad|
    e2 = faithmap.explain(model, x, "saliency", TARGET, reduce="abs-max")
    assert rel_err(e2.saliency, ref.abs().amax(1)) < 1e-5
    g = faithmap.explain(model, x, "gradxinput", TARGET)
    ref = InputXGradient(net).attribute(x, target=TARGET)
    assert rel_err(g.attribution, ref) < 1e-5
    assert rel_err(g.saliency, ref.sum(1)) < 1e-5


def test_probability_score_is_the_softmax_gradient():
    net = Net()
    model, x = clf(net), inputs()
    e = faithmap.explain(model, x, "saliency", TARGET, score="prob")
    ref = Saliency(lambda z: torch.softmax(net(z), 1)).attribute(x, target=TARGET, abs=False)
    assert rel_err(e.attribution, ref) < 1e-5


# ----------------------------------------------------------------------------------------------
# integrated gradients
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"])
def test_ig_matches_captum(rule):
    net = Net()
    model, x = clf(net), inputs()
    base = baselines_for(model, x, "black", [])
    e = faithmap.explain(model, x, "ig", TARGET, steps=12, quadrature=rule, batch_size=7)
    ref = IntegratedGradients(net).attribute(x, baselines=base, target=TARGET, n_steps=12, method=rule)
    assert rel_err(e.attribution, ref) < 1e-5


def test_ig_trapezoid_is_the_composite_rule():
    # captum's riemann_trapezoid uses step 1/S with halved ends (weights sum to 1 - 1/S); ours 1/(S-1)
    net = Net()
    model, x = clf(net), inputs()
    base = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(5))  # a user tensor baseline
    e = faithmap.explain(model, x, "ig", TARGET, steps=10, quadrature="trapezoid", baseline=base)
    ref = IntegratedGradients(net).attribute(x, baselines=base.expand_as(x), target=TARGET, n_steps=10,
                                             method="riemann_trapezoid")
    assert rel_err(e.attribution * 9 / 10, ref) < 1e-5
    a, w = quadrature_nodes(10, "trapezoid")
    assert torch.allclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(a, torch.linspace(0, 1, 10, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# SmoothGrad family: the same noise given to captum's NoiseTunnel
# ----------------------------------------------------------------------------------------------
def documented_noise(x: torch.Tensor, samples: int, seed: int, noise_level: float) -> torch.Tensor:
    """The noise the docs promise: sigma_i * (k-th randn(C, H, W) of a generator seeded with seed),
    sigma_i = noise_level * (max - min) of image i; laid out image-major like captum's."""
    out = []
    for i in range(x.shape[0]):
        g = torch.Generator().manual_seed(seed)
        sigma = noise_level * (x[i].max() - x[i].min())
        out.extend(sigma * torch.randn(tuple(x.shape[1:]), generator=g) for _ in range(samples))
    return torch.stack(out)


def captum_with_noise(attr, x, noise, samples, nt_type, **kw):
    def add_noise(inp, stdev, n):
        assert n == samples
        return inp.repeat_interleave(n, dim=0) + noise

    with mock.patch.object(NoiseTunnel, "_add_noise_to_input", staticmethod(add_noise)):
        return NoiseTunnel(attr).attribute(x, nt_type=nt_type, nt_samples=samples, stdevs=1.0, **kw)


@pytest.mark.parametrize("name,nt_type", [("smoothgrad", "smoothgrad"), ("smoothgrad2", "smoothgrad_sq"),
                                          ("vargrad", "vargrad")])
@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
def test_smoothgrad_family_matches_captum(name, nt_type, act):
    net = Net(act)
    model, x = clf(net), inputs()
    noise = documented_noise(x, 6, seed=11, noise_level=0.2)
    e = faithmap.explain(model, x, name, TARGET, samples=6, noise_level=0.2, seed=11, batch_size=5)
    ref = captum_with_noise(Saliency(net), x, noise, 6, nt_type, target=TARGET, abs=False)
    assert rel_err(e.attribution, ref) < 1e-5
    if name == "smoothgrad":
        g = faithmap.explain(model, x, name, TARGET, samples=6, noise_level=0.2, seed=11, of="gradxinput")
        ref = captum_with_noise(InputXGradient(net), x, noise, 6, nt_type, target=TARGET)
        assert rel_err(g.attribution, ref) < 1e-5


# ----------------------------------------------------------------------------------------------
# guided backprop and deconvnet
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,peer", [("guidedbackprop", GuidedBackprop), ("deconvnet", Deconvolution)])
def test_modified_relu_matches_captum_on_relu_net(name, peer):
    net = Net()
    model, x = clf(net), inputs()
    e = faithmap.explain(model, x, name, TARGET)
    ref = peer(net).attribute(x, target=TARGET)
    assert rel_err(e.attribution, ref) < 1e-5
    plain = Saliency(net).attribute(x, target=TARGET, abs=False)
    assert rel_err(e.attribution, plain) > 0.05  # the override did something


@pytest.mark.parametrize("name,peer", [("guidedbackprop", GuidedBackprop), ("deconvnet", Deconvolution)])
def test_modified_relu6_matches_captum_on_split_copy(name, peer):
    net = relu6_net()
    model, x = clf(net), inputs()
    twin = split_relu6(net).eval()
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))
        pre = net.features[:1](x)
        assert (pre > 6).float().mean() > 0.05  # the cap is active somewhere
    e = faithmap.explain(model, x, name, TARGET)
    ref = peer(twin).attribute(x, target=TARGET)
    assert rel_err(e.attribution, ref) < 1e-5
    # captum on the unsplit net leaves ReLU6 alone: that is the plain gradient, not ours
    assert rel_err(e.attribution, peer(net).attribute(x, target=TARGET)) > 0.05


def test_rectifier_rule_with_inplace_relus_and_cleanup():
    net = InplaceNet().eval()
    plain_net = Net().eval()  # same weights, out-of-place ReLUs
    model, x = clf(net), inputs()
    for name, peer in (("guidedbackprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        e = faithmap.explain(model, x, name, TARGET)
        assert rel_err(e.attribution, peer(plain_net).attribute(x, target=TARGET)) < 1e-5
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    before = hook_counts(net)
    with pytest.raises(RuntimeError, match="inside"):
        with rectifier_rule(net, "guided"):
            assert any(h for h, _ in hook_counts(net))
            assert not any(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
            raise RuntimeError("inside")
    assert hook_counts(net) == before
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    # after the block the backward pass is the true gradient again
    z = x.clone().requires_grad_(True)
    net(z).gather(1, TARGET[:, None]).sum().backward()
    assert rel_err(z.grad, Saliency(plain_net).attribute(x, target=TARGET, abs=False)) < 1e-5


@pytest.mark.slow
def test_lite0_matches_captum(lite0, coffee, lite0_split):
    net = lite0.net
    t = lite0(coffee).argmax(1)
    with torch.no_grad():
        assert torch.equal(lite0_split(coffee), net(coffee))
    checks = [
        (faithmap.explain(lite0, coffee, "saliency", t).attribution,
         lambda: Saliency(net).attribute(coffee, target=t, abs=False)),
        (faithmap.explain(lite0, coffee, "gradxinput", t).attribution,
         lambda: InputXGradient(net).attribute(coffee, target=t)),
        (faithmap.explain(lite0, coffee, "guidedbackprop", t).attribution,
         lambda: GuidedBackprop(lite0_split).attribute(coffee, target=t)),
        (faithmap.explain(lite0, coffee, "deconvnet", t).attribution,
         lambda: Deconvolution(lite0_split).attribute(coffee, target=t)),
        # Gauss-Legendre: both libraries use numpy's float64 nodes, so the path points are identical.
        # (captum's Riemann nodes come from float32 linspace and differ from ours by one ulp at some
        # steps, which flips ReLU6 gates on Lite0 and moves the attribution by ~0.3 %.)
        (faithmap.explain(lite0, coffee, "ig", t, steps=10).attribution,
         lambda: IntegratedGradients(net).attribute(coffee, baselines=baselines_for(lite0, coffee, "black", []),
                                                    target=t, n_steps=10, method="gausslegendre")),
    ]
    noise = documented_noise(coffee, 4, seed=0, noise_level=0.15)
    checks.append((faithmap.explain(lite0, coffee, "smoothgrad", t, samples=4).attribution,
                   lambda: captum_with_noise(Saliency(net), coffee, noise, 4, "smoothgrad", target=t, abs=False)))
    errors = [rel_err(ours, peer()) for ours, peer in checks]
    assert max(errors) < 1e-5, errors


# ----------------------------------------------------------------------------------------------
# Guided Backprop and Deconvnet on the GAD demo networks
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["cnn", "resnet"])
@pytest.mark.parametrize("name", ["guidedbackprop", "deconvnet"])
def test_demo_networks_rectifier_maps_equal_captum(arch, name):
    """Guided Backprop and Deconvnet on both demo networks (the residual one adds its skip before
    the block's last ReLU) give captum's maps, the implementation the GAD paper used."""
    import warnings

    from captum.attr import Deconvolution, GuidedBackprop

    from faithmap.gad.demo import build, load_digits

    data = load_digits()
    clf = build(arch, data.class_names, seed=0)
    x, t = data.x_test[:6], data.y_test[:6]
    ours = faithmap.explain(clf, x, name, t).attribution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {"guidedbackprop": GuidedBackprop, "deconvnet": Deconvolution}[name](clf.net).attribute(x.clone(), target=t)
    assert float((ours - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
    assert float(ref.abs().max()) > 0


# ----------------------------------------------------------------------------------------------
# occlusion
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# occlusion
# ----------------------------------------------------------------------------------------------
def test_occlusion_matches_captum(patch_model):
    from captum.attr import Occlusion

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x[:, :, 8:16, 16:24] += 0.6
    target = torch.tensor([0, 1])
    base = make_baseline("blur", x)
    e = faithmap.explain(patch_model, x, "occlusion", target=target, patch=8, stride=4, baseline="blur")

    def prob(inp):
        return torch.softmax(patch_model.net(inp), 1)

    attr = Occlusion(prob).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=base,
                                     target=target)
    assert torch.allclose(attr[:, 0], attr[:, 2])
    assert torch.allclose(e.saliency, attr[:, 0], atol=1e-6)
    assert e.counts["images"] == 2 * (1 + 7 * 7)


def test_bench_replays_infidelity_perturbations_to_captum_in_its_chunk_order():
    """captum's infidelity asks for k samples of every image per chunk (k = max_examples_per_batch
    // B); the bench's replay hands them out in that order, so small chunks agree too (the Lite0
    gap of an earlier run was the replay's order, not the metric)."""
    from bench.metrics import _captum_infidelity, _setup

    for bs in (6, 256):
        ctx = _setup("tiny", 4, batch_size=bs)
        ours = F.infidelity(ctx["model"], ctx["x"], ctx["sal"], ctx["t"], n_samples=10, batch_size=bs)
        rel_close(ours, _captum_infidelity(ctx)().double(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# infidelity against captum (Quantus 0.6's infidelity is a deterministic raster sweep)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("perturbation", ["square", "gaussian"])
@pytest.mark.parametrize("scaled", [False, True])
def test_infidelity_equals_captum(setup, perturbation, scaled):
    from captum.metrics import infidelity as captum_infidelity

    model, x, t, sal = setup
    n = 7
    ours = F.infidelity(model, x, sal, t, n_samples=n, perturbation=perturbation, patch=6, seed=3,
                        optimal_scaling=scaled)
    pert = torch.cat(list(F.infidelity_perturbations(x, n, perturbation=perturbation, patch=6, seed=3,
                                                     baseline="black", model=model)), 1)  # (B, S, C, H, W)
    flat = pert.reshape(-1, *x.shape[1:])  # image-major, as captum expands its inputs

    def perturb_func(inputs):
        return flat, inputs - flat

    attr = up(sal).unsqueeze(1).expand_as(x)
    ref = captum_infidelity(model.net, perturb_func, x, attr, target=t, n_perturb_samples=n, normalize=scaled)
    rel_close(ours, ref.double(), rtol=1e-4, atol=1e-6)
