"""Excitation backprop (MWP, c-MWP) and the rules seam: a slow literal reference in the paper's matrix
form, conservation of the winning probability layer by layer, a planted object that c-MWP finds and MWP
misses, batching, counts, default read-out layers, errors, and hooks/modes/flags removed also when
the method raises. (Parity with zennit is in test_peer_zennit.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import faithmap
from faithmap.errors import FaithmapError
from faithmap.methods.excitation import default_layer
from faithmap.methods.rules import Composite, Rule, apply_rules
from faithmap.models import wrap

from conftest import assert_state_equal, model_state


def _randomize_bn(net: nn.Module, g: torch.Generator) -> None:
    """Batch norms with random statistics and scales of both signs (so that folding matters)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


class VGGish(nn.Module):
    """conv-BN-ReLU x2, max pool, conv-BN-ReLU, max pool, adaptive average pool, a two-layer head."""

    def __init__(self, act=nn.ReLU, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
            act(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), act(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act(), nn.Dropout(), nn.Linear(32, 5))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        _randomize_bn(self, g)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity (``+=``, in place) or a strided projection (``+``), then an
    in-place ReLU: the shapes of torchvision's BasicBlock."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.down is None:
            out += x
        else:
            out = out + self.down(x)
        return self.relu(out)


class ResNetish(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = Block(8, 8)
        self.layer2 = Block(8, 16, 2)
        self.layer3 = Block(16, 16)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        _randomize_bn(self, g)

    def forward(self, x):
        return self.fc(self.avgpool(self.layer3(self.layer2(self.layer1(self.stem(x))))).flatten(1))


def clf(net, size=16, **kw):
    return wrap(net.eval(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=size, name="tiny", **kw)


def inputs(n=3, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------
# the slow literal reference: the paper's equations as dense matrices
# ----------------------------------------------------------------------------------------------
class Literal(nn.Module):
    """conv-BN-ReLU (read here) - max pool - conv-ReLU = h - h + conv(h) - ReLU - average pool - linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)
            self.conv2.bias.add_(0.5)  # keep units on after the residual sum
        _randomize_bn(self, g)
        with torch.no_grad():
            self.bn1.weight[1] = -abs(float(self.bn1.weight[1]))  # one channel with a negative scale

    def forward(self, x):
        a = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.conv2(self.pool1(a)))
        y = self.relu3(h + self.conv3(h))
        return self.fc(self.gap(y).flatten(1))


def _matrix(f, shape) -> torch.Tensor:
    """The (out, in) matrix of the linear map ``f`` on tensors of ``shape`` (flattened)."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).view(n, *shape)
    return f(eye).reshape(n, -1).T


def _excite(M: torch.Tensor, a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Zhang et al. 2016, eq. 6 in matrix form: P(a_i) = sum_j a_i w+_ij / (sum_k a_k w+_kj) P(a_j),
    with the z+ reading for signed inputs (W- on x-, one normaliser)."""
    ap, an = a.clamp(min=0), a.clamp(max=0)
    Mp, Mn = M.clamp(min=0), M.clamp(max=0)
    z = Mp @ ap + Mn @ an  # a unit without excitatory inputs (z = 0) passes nothing
    s = p / torch.where(z > 0, z, torch.ones_like(z))
    return ap * (Mp.T @ s) + an * (Mn.T @ s)


def literal_mwp(net: Literal, x: torch.Tensor, t: int, contrastive: bool, at: str) -> torch.Tensor:
    """MWP (or c-MWP) of class ``t`` for one image ``x`` (3, 6, 6) at ``at`` ("relu1" or "input")."""
    bn = net.bn1
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    pre1 = bn(net.conv1(x[None]))[0]
    a = torch.relu(pre1)
    pooled, idx = F.max_pool2d(a[None], 2, return_indices=True)
    pooled, idx = pooled[0], idx[0]
    pre2 = net.conv2(pooled[None])[0]
    h = torch.relu(pre2)
    c3 = net.conv3(h[None])[0]
    y = h + c3
    r = torch.relu(y)
    gap = r.mean((1, 2))
    W = net.fc.weight.detach()

    def down(top_weights):
        p = _excite(top_weights, gap, torch.eye(3, dtype=torch.float64)[t])  # classifier
        A = _matrix(lambda z: F.adaptive_avg_pool2d(z, 1), r.shape)  # average pooling
        p = _excite(A, r.flatten(), p)
        p = p * (y.flatten() > 0)  # ReLU: the gradient
        share_h, share_c = h.flatten() / y.flatten(), c3.flatten() / y.flatten()  # the sum
        p_h, p_c = share_h * p, share_c * p
        M3 = _matrix(lambda z: F.conv2d(z, net.conv3.weight, padding=1), h.shape)
        p_h = p_h + _excite(M3, h.flatten(), p_c)
        p = p_h * (pre2.flatten() > 0)
        M2 = _matrix(lambda z: F.conv2d(z, net.conv2.weight, padding=1), pooled.shape)
        p = _excite(M2, pooled.flatten(), p)
        winner = torch.zeros(pooled.numel(), a.numel(), dtype=torch.float64)  # max pooling: the winners
        winner[torch.arange(pooled.numel()), (idx + torch.arange(4).view(4, 1, 1) * a[0].numel()).flatten()] = 1
        p = winner.T @ p
        if at == "relu1":
            return p.view_as(a)
        p = p * (pre1.flatten() > 0)  # batch norm: identity (folded into conv1)
        M1 = s.repeat_interleave(36).view(-1, 1) * _matrix(lambda z: F.conv2d(z, net.conv1.weight, padding=1), x.shape)
        return _excite(M1, x.flatten(), p).view_as(x)

    with torch.no_grad():
        out = down(W)
        if contrastive:
            out = out - down(-W)
    return out


@pytest.mark.parametrize("method", ["mwp", "excitation_bp"])
@pytest.mark.parametrize("at", ["relu1", "input"])
def test_matches_the_literal_matrix_form(method, at):
    net = Literal().double().eval()
    model = clf(net, size=6)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0, 2])
    e = faithmap.explain(model, x, method, t, layer="input" if at == "input" else "relu1", eps=0.0)
    for i in range(2):
        want = literal_mwp(net, x[i], int(t[i]), method == "excitation_bp", at)
        assert rel_err(e.attribution[i], want) < 1e-10, (method, at)
        assert torch.allclose(e.saliency[i], want.sum(0), atol=1e-12)
        if method == "mwp":
            assert abs(float(e.extras["mass"][i]) - float(want.sum())) < 1e-10


# ----------------------------------------------------------------------------------------------
# conservation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net,layers", [
    (VGGish, ["input", "features.2", "features.6", "features.9", "features.10", "pool"]),
    (ResNetish, ["input", "stem", "layer1", "layer2", "layer2.conv1", "layer3"]),
])
def test_winning_probability_sums_to_one_at_every_layer(net, layers):
    """With a one-hot top signal the MWP of every layer sums to 1: linear, convolution (with folded
    batch norms), pooling and sum rules conserve, ReLU and max pooling pass it to the active units."""
    model, x = clf(net()), inputs()
    t = torch.tensor([0, 3, 1])
    maps = {}
    for layer in layers:
        e = faithmap.explain(model, x, "mwp", t, layer=layer)
        maps[layer] = e
        if net is VGGish:  # probabilities; a residual sum of addends of opposite sign splits with signed shares
            assert (e.attribution >= -1e-7).all(), layer
        assert torch.allclose(e.saliency.flatten(1).sum(1), torch.ones(3), atol=1e-4), (layer, e.extras["mass"])
        c = faithmap.explain(model, x, "excitation_bp", t, layer=layer)
        assert torch.allclose(c.extras["mass"], torch.zeros(3), atol=1e-4), layer  # 1 - 1
    assert maps[layers[1]].saliency.shape != maps[layers[-1]].saliency.shape  # several grids were read


def test_unit_without_excitatory_input_drops_its_share():
    """The linear rule's one leak, in closed form: a unit that is on through its bias only (W+ x = 0)
    cannot pass its winning probability down."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([5.0, 0.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0]]).view(1, 2, 1, 1)
    flat = wrap(nn.Sequential(nn.Flatten(), net).eval(), mean=(0,), std=(1,), input_size=1, name="two")
    e = faithmap.explain(flat, x, "mwp", torch.tensor([0]), layer="input", eps=0.0)
    # h = relu([-3 + 5, 3]) = [2, 3]; P(h) = [2, 3] / 5; unit 0 has no excitatory input: its 0.4 is lost;
    # unit 1 passes 0.6 to x in proportion to x * w+ = [1, 2]
    assert torch.allclose(e.attribution.flatten(), torch.tensor([0.2, 0.4]), atol=1e-7)


def test_clipping_relu6_loses_probability():
    """ReLU6 passes the signal as its gradient: units clipped at 6 keep theirs (documented loss)."""
    net = VGGish(nn.ReLU6)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.mul_(8)  # most pre-activations leave (0, 6)
    model, x = clf(net), inputs()
    e = faithmap.explain(model, x, "mwp", torch.tensor([0, 1, 2]), layer="features.6")
    assert (e.extras["mass"] < 0.99).all() and (e.extras["mass"] > 0).all()


# ----------------------------------------------------------------------------------------------
# c-MWP localises a planted object that MWP misses
# ----------------------------------------------------------------------------------------------
class Planted(nn.Module):
    """Channels: f1 = G (anything bright), f2 = R (the object's colour), f3 = 0.9 G; class 0 = f1 + f2 - f3
    after global pooling. The distractor is brighter (in G) and larger than the red object, so class 0's
    MWP peaks on the distractor; its dual unit (weights negated) draws on f3, which shares f1's layout,
    and c-MWP keeps what is specific to class 0: the object."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0.9, 0]], dtype=torch.float32)
                                          .view(3, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0, -1.0], [0.0, -1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def planted_image(size=24):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 3, size, size)
    x[:, 1] = 0.05 * torch.rand(size, size, generator=g)  # dim background
    obj = (slice(3, 7), slice(3, 7))  # 16 px: red, half bright
    dis = (slice(12, 20), slice(12, 20))  # 64 px: bright, not red
    x[0, 0][obj] = 0.5
    x[0, 1][obj] = 0.3
    x[0, 1][dis] = 1.0
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[obj] = True
    return x, mask


def test_cmwp_localises_the_planted_object_mwp_does_not():
    model = wrap(Planted().eval(), mean=(0, 0, 0), std=(1, 1, 1), input_size=24, name="planted")
    x, mask = planted_image()
    t = torch.tensor([0])
    m = faithmap.explain(model, x, "mwp", t, layer="features")
    c = faithmap.explain(model, x, "excitation_bp", t, layer="features")
    assert m.saliency.shape == (1, 24, 24)
    assert not mask.flatten()[m.saliency.flatten().argmax()]  # MWP peaks on the distractor
    assert mask.flatten()[c.saliency.flatten().argmax()]  # c-MWP on the object
    assert (c.saliency[0][mask] > 0).all()
    assert c.saliency[0][12:20, 12:20].max() < 0  # the distractor is evidence against class 0
    assert rel_err(c.saliency, m.saliency) > 0.5


# ----------------------------------------------------------------------------------------------
# batching, counts, state, errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mwp", "excitation_bp"])
def test_batched_equals_one_by_one_and_counts(method):
    model, x = clf(ResNetish()), inputs(5)
    t = torch.tensor([0, 1, 2, 3, 0])
    seen = []
    h = model.net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        both = faithmap.explain(model, x, method, t, batch_size=2, layer="layer2")
    finally:
        h.remove()
    assert seen[1:] == [2, 2, 1]  # seen[0]: the prediction (the model has no class names)
    assert both.counts == {"images": 5, "grad_images": 5, "nograd_images": 0}
    assert both.saliency.shape == (5, 8, 8) and both.attribution.shape == (5, 16, 8, 8)
    for i in range(5):
        one = faithmap.explain(model, x[i:i + 1], method, t[i:i + 1], layer="layer2")
        assert rel_err(both.attribution[i], one.attribution[0]) < 1e-5
    pix = faithmap.explain(model, x[:2], method, t[:2], layer="input")
    assert pix.counts["grad_images"] == 2 and pix.saliency.shape == (2, 16, 16)


def _buffers(net):
    return [b.clone() for b in net.buffers()]


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_model_hooks_flags_and_mode_restored_when_raising(where):
    net = ResNetish()
    model, x = clf(net), inputs(4)
    net.train()
    before, bufs = model_state(model), _buffers(net)
    inplace = [m.inplace for m in net.modules() if hasattr(m, "inplace")]
    assert any(inplace)
    calls = {"n": 0}

    def boom(*_):
        raise RuntimeError("boom")

    def pre(m, args):
        calls["n"] += args[0].requires_grad  # the method's passes (not the prediction or layer look-ups)
        if calls["n"] == 2 and args[0].requires_grad:  # inside the method, second chunk
            if where == "forward":
                boom()
            args[0].register_hook(boom)  # raised by the backward pass, inside the rules

    h = net.fc.register_forward_pre_hook(pre)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            faithmap.explain(model, x, "excitation_bp", torch.tensor([0, 1, 2, 3]), batch_size=2)
    finally:
        h.remove()
    assert_state_equal(before, model_state(model))
    assert all(torch.equal(a, b) for a, b in zip(bufs, _buffers(net)))
    assert [m.inplace for m in net.modules() if hasattr(m, "inplace")] == inplace
    assert torch._C._len_torch_function_stack() == 0  # the op-rule mode is gone
    # the backward pass is the plain gradient again
    net.eval()
    z = x.clone().requires_grad_(True)
    net(z)[:, 0].sum().backward()
    ref = x.clone().requires_grad_(True)
    with torch.no_grad():
        plain = ResNetish().eval()
    plain(ref)[:, 0].sum().backward()
    assert torch.allclose(z.grad, ref.grad, atol=1e-6)


def test_rules_seam_removes_hooks_and_passes_forward_values():
    """A custom rule (here: the ReLU gradient, doubled) changes only the backward pass, only inside the block."""

    class Double(Rule):
        def backward(self, call, x, grad):
            return 2 * grad * (x > 0)

    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    x = torch.randn(3, 4, requires_grad=True)
    with torch.no_grad():
        want = net(x)
    counts = [len(m._forward_hooks) for m in net.modules()]
    with apply_rules(net, Composite([(nn.ReLU, Double())])):
        assert not net[1].inplace
        out = net(x)
        assert torch.equal(out, want)
        (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert net[1].inplace and [len(m._forward_hooks) for m in net.modules()] == counts
    (plain,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
    assert torch.allclose(g, 2 * plain)


def test_bad_layer_and_parameters_are_one_line_errors():
    model, x = clf(ResNetish()), inputs(2)
    cases = [(dict(layer="layer9"), "no layer 'layer9'"), (dict(layer="fc"), r"\(B, C, h, w\) output"),
             (dict(layer=3), "layer must be a string or None, got int 3"),
             (dict(eps=-1.0), r"eps must be in \[0, inf\), got -1.0")]
    for params, match in cases:
        for method in ("mwp", "excitation_bp"):
            with pytest.raises(FaithmapError, match=match):
                faithmap.explain(model, x, method, **params)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.side = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        self.side(x)
        return self.fc(x.mean((2, 3)))


def test_layer_that_does_not_feed_the_logits():
    model = clf(Unused())
    with pytest.raises(FaithmapError, match="does not feed the logits"):
        faithmap.explain(model, inputs(1), "mwp", layer="side")


def test_default_layers():
    torchvision = pytest.importorskip("torchvision")
    res = wrap(torchvision.models.resnet18(num_classes=10).eval(), input_size=64, name="resnet18")
    assert default_layer(res) == "layer3"
    vgg_features = []
    for c in (4, 8, 8, 16, 16):
        vgg_features += [nn.Conv2d(vgg_features[-3].out_channels if vgg_features else 3, c, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2)]
    vgg = nn.Sequential()
    vgg.features = nn.Sequential(*vgg_features)
    assert default_layer(wrap(vgg, input_size=64, name="vgg16")) == "features.11"  # pool4
    # elsewhere: the end of the stage before the CAM layer's last down-sampling
    model = clf(VGGish(), cam_layer="features.9")
    assert default_layer(model) == "features.5"
    e = faithmap.explain(model, inputs(1), "excitation_bp")
    assert e.extras["layer"] == "features.5" and e.saliency.shape == (1, 16, 16)


def test_registry_entries():
    for alias in ("ebp", "c-mwp", "excitation-backprop", "excitationbp"):
        assert faithmap.METHODS.canonical(alias) == "excitation_bp"
    assert faithmap.METHODS.canonical("excitation-mwp") == "mwp"
    from faithmap.evaluation.presets import resolve

    assert "excitation_bp" in resolve("igos-table1").methods
    spec = faithmap.METHODS.get("excitation_bp")
    assert spec.resolution == "layer" and spec.family == "rule" and spec.bounds["eps"] == (0.0, None)


@pytest.mark.slow
def test_lite0_default_layer_and_cli_bad_layer(lite0, coffee, tmp_path, capsys):
    from faithmap.cli import main

    assert default_layer(lite0) == "features.11"
    e = faithmap.explain(lite0, coffee, "excitation_bp")
    assert e.saliency.shape == (1, 14, 14) and e.counts["images"] == 1  # the prediction pass is not counted
    out = tmp_path / "o"
    rc = main(["explain", "sample:coffee", "--method", "excitation_bp", "--layer", "features.99", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("faithmap: error: the model has no layer 'features.99'")
    assert len(err.splitlines()) == 1 and not out.exists()
