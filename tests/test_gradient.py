
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import faithmap
from faithmap.core.batching import per_image_generators
from faithmap.methods.gradient import baselines_for, quadrature_nodes
from faithmap.models import wrap

from conftest import assert_state_equal, model_state


warnings.filterwarnings("ignore", message=".*backward hooks.*")
warnings.filterwarnings("ignore", message="Setting backward hooks.*")


# ----------------------------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------------------------
class Net(nn.Module):
    """Conv - act - pool - conv - act - global pool - linear (5 classes), random weights."""

    def __init__(self, act=nn.ReLU, seed: int = 0, scale: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), act(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 12, 3, padding=1), act())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class Clip(nn.Module):
    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, x):
        return x.clamp(max=self.cap)


def split_relu6(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every ReLU6 replaced by ReLU then clamp(max=6) (same forward)."""
    net = copy.deepcopy(net)
    for mod in list(net.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(mod, name, nn.Sequential(nn.ReLU(), Clip(6.0)))
    return net


def clf(net):
    return wrap(net.eval(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32, name="tiny")


def inputs(n=3, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


TARGET = torch.tensor([0, 3, 4])


def relu6_net():
    # larger weights so that a good share of ReLU6 inputs exceed 6 and the cap matters
    return Net(nn.ReLU6, seed=2, scale=1.5)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------------------------
# plain gradients
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# integrated gradients
# ----------------------------------------------------------------------------------------------


def test_quadrature_rules_integrate_polynomials():
    f = lambda a: 3 * a**2 + 2 * a  # noqa: E731  integral over [0, 1] = 2
    for kind, steps, tol in [("gausslegendre", 2, 1e-12), ("middle", 400, 1e-5), ("trapezoid", 400, 1e-5),
                             ("left", 4000, 1e-3), ("right", 4000, 1e-3)]:
        a, w = quadrature_nodes(steps, kind)
        assert abs(float((w * f(a)).sum()) - 2.0) < tol, kind


class SmoothNet(nn.Module):
    """A smooth tiny network (softplus, average pooling) with 3 classes."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)

    def forward(self, x):
        h = nn.functional.softplus(self.c2(nn.functional.softplus(self.c1(x))))
        return 10 * self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("baseline,rule", [("black", "gausslegendre"), ("blur", "trapezoid"), ("uniform", "middle")])
def test_ig_completeness_smooth_tiny_net(baseline, rule):
    net = SmoothNet().eval()
    model, x = clf(net), inputs()
    t = torch.tensor([0, 1, 2])
    e = faithmap.explain(model, x, "ig", t, steps=200, quadrature=rule, baseline=baseline, seed=4)
    base = baselines_for(model, x, baseline, per_image_generators(4, 3, "cpu"))
    with torch.no_grad():
        delta = (net(x) - net(base)).gather(1, t[:, None])[:, 0]
    total = e.attribution.flatten(1).sum(1)
    assert delta.abs().min() > 0.2
    assert ((total - delta).abs() <= 0.01 * delta.abs()).all(), (total, delta)
    # signed map keeps the completeness sum
    assert torch.allclose(e.saliency.flatten(1).sum(1), total, rtol=1e-5, atol=1e-6)


def test_ig_counts_and_memory_bound():
    net = Net()
    model, x = clf(net), inputs()
    seen = []
    h = net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        e = faithmap.explain(model, x, "ig", TARGET, steps=10, batch_size=4)
    finally:
        h.remove()
    assert e.counts["grad_images"] == 30 and max(seen[1:]) <= 4  # seen[0]: target selection


# ----------------------------------------------------------------------------------------------
# SmoothGrad family: the same noise given to captum's NoiseTunnel
# ----------------------------------------------------------------------------------------------


def test_smoothgrad_noise_scale_and_limits():
    net = Net()
    model, x = clf(net), inputs()
    x = x * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1)  # different ranges per image
    e = faithmap.explain(model, x, "smoothgrad", TARGET, samples=2, noise_level=0.1)
    span = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    assert torch.allclose(e.extras["sigma"], 0.1 * span)
    # zero noise: SmoothGrad is the gradient, VarGrad zero, SmoothGrad^2 the squared gradient
    plain = faithmap.explain(model, x, "saliency", TARGET).attribution
    z = faithmap.explain(model, x, "smoothgrad", TARGET, samples=3, sigma=0.0).attribution
    assert rel_err(z, plain) < 1e-6
    v = faithmap.explain(model, x, "vargrad", TARGET, samples=3, sigma=0.0).attribution
    assert v.abs().max() <= 1e-6 * plain.pow(2).max()
    s2 = faithmap.explain(model, x, "smoothgrad2", TARGET, samples=3, sigma=0.0).attribution
    assert rel_err(s2, plain.pow(2)) < 1e-5


# ----------------------------------------------------------------------------------------------
# guided backprop and deconvnet
# ----------------------------------------------------------------------------------------------


class OneLayer(nn.Module):
    """logits = V relu6(W flatten(x)) (2 classes): guided/deconv gradients in closed form."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = nn.Linear(3 * 4 * 4, 10, bias=False)
        self.act = nn.ReLU6()
        self.v = nn.Linear(10, 2, bias=False)
        with torch.no_grad():
            self.w.weight.copy_(torch.randn(10, 48, generator=g))
            self.v.weight.copy_(torch.randn(2, 10, generator=g))

    def forward(self, x):
        return self.v(self.act(self.w(x.flatten(1))))


def test_relu6_rules_in_closed_form():
    net = OneLayer().eval()
    model = wrap(net, mean=(0, 0, 0), std=(1, 1, 1), input_size=4)
    x = 1.5 * torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([0, 1, 0, 1])
    pre = net.w(x.flatten(1))  # (4, 10)
    assert ((pre > 6).any() and (pre < 0).any() and ((pre > 0) & (pre < 6)).any())
    v = net.v.weight[t].clamp_min(0)  # relu of the backward signal at the rectifier
    W = net.w.weight
    guided = ((v * ((pre > 0) & (pre < 6))) @ W).view_as(x)
    deconv = ((v * (pre < 6)) @ W).view_as(x)
    plain = ((net.v.weight[t] * ((pre > 0) & (pre < 6))) @ W).view_as(x)
    assert rel_err(faithmap.explain(model, x, "guidedbackprop", t).attribution, guided) < 1e-5
    assert rel_err(faithmap.explain(model, x, "deconvnet", t).attribution, deconv) < 1e-5
    assert rel_err(faithmap.explain(model, x, "saliency", t).attribution, plain) < 1e-5


class InplaceNet(Net):
    def __init__(self):
        super().__init__(lambda: nn.ReLU(inplace=True))


def hook_counts(net):
    return [(len(m._forward_hooks), len(m._backward_hooks)) for m in net.modules()]


@pytest.mark.parametrize("name", ["guidedbackprop", "deconvnet"])
def test_modified_relu_methods_restore_model_when_raising(name):
    net = InplaceNet()
    model, x = clf(net), inputs(2)
    net.train()
    before = model_state(model)
    inplace = [m.inplace for m in net.modules() if isinstance(m, nn.ReLU)]
    calls = {"n": 0}

    def boom(m, args):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")

    h = net.fc.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            faithmap.explain(model, x, name, target=0)
    finally:
        h.remove()
    assert_state_equal(before, model_state(model))
    assert [m.inplace for m in net.modules() if isinstance(m, nn.ReLU)] == inplace


# ----------------------------------------------------------------------------------------------
# expected gradients
# ----------------------------------------------------------------------------------------------
def test_expected_gradients_literal_reference():
    net = Net(nn.ReLU6)
    model, x = clf(net), inputs()
    refs = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    e = faithmap.explain(model, x, "expectedgradients", TARGET, references=refs, samples=7, seed=2, batch_size=4)
    idx, alphas = e.extras["reference_index"], e.extras["alphas"]
    assert idx.shape == (3, 7) and ((alphas > 0) & (alphas < 1)).all() and len(idx.unique()) > 1
    want = torch.zeros_like(x)
    for i in range(3):
        for k in range(7):
            r = refs[idx[i, k]]
            z = (r + alphas[i, k] * (x[i] - r)).unsqueeze(0).requires_grad_(True)
            net(z)[0, TARGET[i]].backward()
            want[i] += (x[i] - r) * z.grad[0] / 7
    assert rel_err(e.attribution, want) < 1e-5


def test_expected_gradients_complete_on_linear_model():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))
    model, x = clf(lin), inputs()
    refs = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    e = faithmap.explain(model, x, "expectedgradients", TARGET, references=refs, samples=9, seed=1)
    with torch.no_grad():
        fx = lin(x).gather(1, TARGET[:, None])[:, 0]
        fr = lin(refs)[:, TARGET].T  # (3, 6)
    expected = fx - fr.gather(1, e.extras["reference_index"]).mean(1)
    assert torch.allclose(e.attribution.flatten(1).sum(1), expected, rtol=1e-4, atol=1e-4)


def test_expected_gradients_default_references():
    net = Net()
    model, x = clf(net), inputs()
    e = faithmap.explain(model, x, "expectedgradients", TARGET, samples=8, seed=0)
    assert set(e.extras["reference_index"].unique().tolist()) == {0, 1}  # blur and uniform both drawn
    assert e.extras["reference_kinds"] == ["blur", "uniform"]
    one = faithmap.explain(model, x[1:2], "expectedgradients", TARGET[1:2], samples=8, seed=0)
    assert torch.equal(one.extras["reference_index"][0], e.extras["reference_index"][1])
    assert rel_err(one.attribution[0], e.attribution[1]) < 1e-5


# ----------------------------------------------------------------------------------------------
# batching, seeds and errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [
    ("ig", dict(steps=5, baseline="uniform")), ("smoothgrad", dict(samples=5)), ("vargrad", dict(samples=5)),
    ("expectedgradients", dict(samples=5)), ("guidedbackprop", {}),
])
def test_batched_equals_one_by_one_across_chunk_boundaries(name, params):
    net = Net(nn.ReLU6)
    model, x = clf(net), inputs()
    both = faithmap.explain(model, x, name, TARGET, seed=5, batch_size=3, **params)
    for i in range(3):
        one = faithmap.explain(model, x[i:i + 1], name, TARGET[i:i + 1], seed=5, batch_size=4, **params)
        assert rel_err(both.attribution[i], one.attribution[0]) < 1e-5
    other = faithmap.explain(model, x, name, TARGET, seed=6, batch_size=3, **params)
    if name != "guidedbackprop":
        assert rel_err(other.attribution, both.attribution) > 1e-3  # the seed matters


@pytest.mark.parametrize("name,params,match", [
    ("ig", dict(quadrature="simpson"), "quadrature"), ("ig", dict(baseline="purple"), "baseline"),
    ("ig", dict(steps=0), "steps"), ("ig", dict(baseline=torch.zeros(2, 3, 5, 5)), "baseline"),
    ("saliency", dict(reduce="median"), "reduce"), ("smoothgrad", dict(noise_level=-1.0), "noise_level"),
    ("smoothgrad", dict(of="ig"), "of="), ("expectedgradients", dict(references="blur,nothing"), "reference"),
    ("expectedgradients", dict(references=torch.zeros(2, 3, 8, 8)), "references"),
])
def test_bad_parameters_are_one_line_errors(name, params, match):
    model, x = clf(Net()), inputs(2)
    with pytest.raises(faithmap.FaithmapError, match=match):
        faithmap.explain(model, x, name, **params)


def test_aliases():
    for alias, name in [("gradient", "saliency"), ("integrated-gradients", "ig"), ("guided-backprop", "guidedbackprop"),
                        ("inputxgradient", "gradxinput"), ("deconvolution", "deconvnet"),
                        ("smoothgrad_sq", "smoothgrad2"), ("expected-gradients", "expectedgradients")]:
        assert faithmap.METHODS.canonical(alias) == name


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_split(lite0):
    twin = split_relu6(lite0.net).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@pytest.mark.slow
def test_lite0_ig_completeness(lite0, coffee):
    t = lite0(coffee).argmax(1)
    # the defaults: black baseline, Gauss-Legendre (the logit along the path is far from smooth on
    # some photos: chelsea misses by 5 % at 200 steps, see README)
    e = faithmap.explain(lite0, coffee, "ig", t, steps=200)
    with torch.no_grad():
        base = baselines_for(lite0, coffee, "black", [])
        delta = (lite0(coffee) - lite0(base)).gather(1, t[:, None])[:, 0]
    total = e.attribution.flatten(1).sum(1)
    assert ((total - delta).abs() <= 0.01 * delta.abs()).all(), (total, delta)
