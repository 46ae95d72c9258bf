"""The CAM engine: agreement with pytorch-grad-cam, slow literal references of WGradCAM, Grad-CAM++,
Smooth Grad-CAM++, Integrated and Expected Grad-CAM, layer lookup per architecture, the ViT token
grid, hooks and model state, batching and counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import faithmap
from faithmap.core.perturb import blur_baseline
from faithmap.errors import FaithmapError
from faithmap.models import wrap

from conftest import assert_state_equal, model_state
from test_invariants import TinyNet, tiny_inputs, tiny_model


# ----------------------------------------------------------------------------------------------
# agreement with pytorch-grad-cam
# ----------------------------------------------------------------------------------------------


def test_paper_and_peer_variants_differ_only_by_their_constants():
    model, x = tiny_model(), tiny_inputs(2)
    target = torch.tensor([1, 2])
    # Score-CAM and XGrad-CAM: the peer's epsilons change nothing visible here
    for m in ("scorecam", "xgradcam"):
        a = faithmap.explain(model, x, m, target=target).saliency
        b = faithmap.explain(model, x, m, target=target, variant="pytorch-grad-cam").saliency
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # Grad-CAM++: the peer's 1e-6 in alpha's denominator is not negligible against G^2 here
    a = faithmap.explain(model, x, "gradcam++", target=target)
    b = faithmap.explain(model, x, "gradcam++", target=target, variant="pytorch-grad-cam")
    assert not torch.allclose(a.normalized(), b.normalized(), atol=1e-2)
    with pytest.raises(FaithmapError, match="unknown variant"):
        faithmap.explain(model, x, "gradcam++", target=target, variant="opencv")


# ----------------------------------------------------------------------------------------------
# slow literal references of the equations implemented
# ----------------------------------------------------------------------------------------------
def _split(net: TinyNet, layer: str):
    """TinyNet as ``head(body(x))`` around ``features.3`` or ``features.4``, in float64."""
    net = copy.deepcopy(net).double().eval()
    cut = int(layer.split(".")[1]) + 1

    def body(x):
        return net.features[:cut](x.double())

    def head(a):
        return net.fc(net.pool(net.features[cut:](a)).flatten(1))

    return body, head


def _grad_at(body, head, z: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A(z), dS_c/dA(z) and S_c for one image z (3, H, W)."""
    a = body(z.unsqueeze(0)).detach().requires_grad_(True)
    s = head(a)[0, c]
    (g,) = torch.autograd.grad(s, a)
    return a.detach()[0], g[0], s.detach()


def test_wgradcam_equals_literal_eq_2_to_4():
    model, x = tiny_model(), tiny_inputs(3)
    target = torch.tensor([0, 2, 3])
    for layer in ("features.4", "features.3"):
        e = faithmap.explain(model, x, "wgradcam", target=target, layer=layer)
        body, head = _split(model.net, layer)
        for b in range(3):
            A, G, _ = _grad_at(body, head, x[b], int(target[b]))
            K, h, w = A.shape
            M = torch.zeros(h, w, dtype=torch.float64)
            for k in range(K):
                wk = 0.0
                for i in range(h):
                    for j in range(w):
                        wk += float(G[k, i, j]) * float(A[k, i, j])  # eq. 2
                M += wk / (h * w) * A[k]  # eq. 3
            M = torch.relu(M)
            M = (M - M.min()) / (M.max() - M.min())  # eq. 4
            assert torch.allclose(e.saliency[b].double(), M, atol=1e-5), (layer, b)
        assert e.saliency.max() == 1.0 and e.saliency.min() == 0.0


def test_gradcampp_paper_variant_equals_literal_eq_19_with_exp():
    model, x = tiny_model(), tiny_inputs(2)
    target = torch.tensor([1, 3])
    e = faithmap.explain(model, x, "gradcam++", target=target, layer="features.3")
    body, head = _split(model.net, "features.3")
    for b in range(2):
        A, G, S = _grad_at(body, head, x[b], int(target[b]))
        Y = torch.exp(S)  # Y = exp(S); for a piecewise-linear head dY/dA = Y G, d2 = Y G^2, d3 = Y G^3
        d1, d2, d3 = Y * G, Y * G ** 2, Y * G ** 3
        K, h, w = A.shape
        weights = torch.zeros(K, dtype=torch.float64)
        for k in range(K):
            total = A[k].sum()
            for i in range(h):
                for j in range(w):
                    den = 2 * d2[k, i, j] + total * d3[k, i, j]
                    alpha = d2[k, i, j] / den if den != 0 else 0.0
                    weights[k] += alpha * max(float(d1[k, i, j]), 0.0)
        M = torch.relu((weights.view(K, 1, 1) * A).sum(0)) / Y  # the documented division by exp(S)
        assert torch.allclose(e.saliency[b].double(), M, rtol=1e-4, atol=1e-6 * float(M.abs().max()))


def test_smoothgradcampp_equals_literal_average_of_derivatives():
    model, x = tiny_model(), tiny_inputs(2)
    target = torch.tensor([0, 1])
    n, level, seed = 5, 0.2, 7
    e = faithmap.explain(model, x, "smoothgradcam++", target=target, layer="features.3", n_samples=n,
                         noise_level=level, seed=seed)
    body, head = _split(model.net, "features.3")
    for b in range(2):
        gen = torch.Generator().manual_seed(seed)
        sigma = level * float(x[b].max() - x[b].min())
        A = body(x[b:b + 1])[0].detach()
        D = [torch.zeros_like(A) for _ in range(3)]
        for _ in range(n):
            eps = torch.randn(x.shape[1:], generator=gen)
            _, G, _ = _grad_at(body, head, x[b] + sigma * eps, int(target[b]))
            for p in range(3):
                D[p] += G ** (p + 1) / n
        K = A.shape[0]
        weights = torch.zeros(K, dtype=torch.float64)
        for k in range(K):
            den = 2 * D[1][k] + A[k].sum() * D[2][k]
            alpha = torch.where(den != 0, D[1][k] / torch.where(den != 0, den, torch.ones_like(den)), 0.0)
            weights[k] = (alpha * torch.relu(D[0][k])).sum()
        M = torch.relu((weights.view(K, 1, 1) * A).sum(0))
        assert torch.allclose(e.saliency[b].double(), M, rtol=1e-4, atol=1e-5 * float(M.abs().max()))


def _literal_expected_gradcam(model, x, target, *, layer, n, seed, refs=None, noise_ref=False, blur=False,
                              black=False, kernel="none", level=0.0, grid=False):
    """Expected Grad-CAM as read in the docstring, one sample at a time, in float64."""
    body, head = _split(model.net, layer)
    mean, std = model.mean[0], model.std[0]
    maps, weights = [], []
    for b in range(x.shape[0]):
        gen = torch.Generator().manual_seed(seed)
        xb = x[b]
        alphas = torch.arange(1, n + 1) / n if grid else torch.rand(n, generator=gen)
        idx = torch.randint(refs.shape[0], (n,), generator=gen) if refs is not None and refs.shape[0] > 1 else None
        scale = level * float(xb.max() - xb.min())
        A_x = body(xb.unsqueeze(0))[0].detach()
        w = torch.zeros(A_x.shape[0], dtype=torch.float64)
        for s in range(n):
            if noise_ref:
                base = (torch.rand(xb.shape, generator=gen) - mean) / std
            elif refs is not None:
                base = refs[int(idx[s]) if idx is not None else 0]
            elif blur:
                base = blur_baseline(xb.unsqueeze(0))[0]
            else:
                assert black
                base = (0 - mean) / std * torch.ones_like(xb)
            eta = torch.zeros_like(xb)
            if kernel == "uniform":
                eta = 2 * torch.rand(xb.shape, generator=gen) - 1
            elif kernel == "gaussian":
                eta = torch.randn(xb.shape, generator=gen)
            z = base.double() + float(alphas[s]) * (xb.double() - base.double()) + scale * eta.double()
            _, G, _ = _grad_at(body, head, z, int(target[b]))
            A_base = body(base.unsqueeze(0))[0].detach()
            K, h, wd = A_x.shape
            for k in range(K):
                w[k] += ((A_x[k] - A_base[k]) * G[k]).sum() / (h * wd) / n
        maps.append(torch.relu((w.view(-1, 1, 1) * A_x).sum(0)))
        weights.append(w)
    return torch.stack(maps), torch.stack(weights)


@pytest.mark.parametrize("case", ["set+uniform", "noise+gaussian", "blur+none", "single+uniform"])
def test_expected_gradcam_equals_literal_reading(case):
    model, x = tiny_model(), tiny_inputs(2)
    target = torch.tensor([2, 0])
    refs = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ref_kind, kernel = case.split("+")
    kw = {"refs": refs} if ref_kind == "set" else {"refs": refs[:1]} if ref_kind == "single" else \
        {"noise_ref": True} if ref_kind == "noise" else {"blur": True}
    reference = refs if ref_kind == "set" else refs[:1] if ref_kind == "single" else ref_kind
    e = faithmap.explain(model, x, "expectedgradcam", target=target, layer="features.3", n_samples=6,
                         reference=reference, kernel=kernel, noise_level=0.1, seed=11, batch_size=4)
    M, W = _literal_expected_gradcam(model, x, target, layer="features.3", n=6, seed=11, kernel=kernel,
                                     level=0.1, **kw)
    assert torch.allclose(e.extras["weights"].double(), W, rtol=1e-4, atol=1e-6 * float(W.abs().max()))
    assert torch.allclose(e.saliency.double(), M, rtol=1e-4, atol=1e-5 * float(M.abs().max()))
    assert e.counts["grad_images"] == 2 * 6


def test_integrated_gradcam_equals_literal_riemann_sum():
    model, x = tiny_model(), tiny_inputs(2)
    target = torch.tensor([1, 3])
    e = faithmap.explain(model, x, "integratedgradcam", target=target, layer="features.3", steps=5)
    M, W = _literal_expected_gradcam(model, x, target, layer="features.3", n=5, seed=0, black=True, grid=True)
    assert torch.allclose(e.saliency.double(), M, rtol=1e-4, atol=1e-5 * float(M.abs().max()))
    assert torch.allclose(e.extras["alphas"][0], torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0]))


def test_expected_gradcam_analytic_for_a_linear_head():
    """After features.4, TinyNet's logit is linear in A (pooling and a linear layer): dS_c/dA = v_c / Z
    everywhere, so w_k = v_ck / Z * mean_ij (A(x) - A(x'))_kij whatever alpha and the kernel noise draw."""
    model, x = tiny_model(), tiny_inputs(2)
    target = torch.tensor([0, 3])
    e = faithmap.explain(model, x, "expectedgradcam", target=target, n_samples=3, reference="blur", seed=1)
    net = model.net
    with torch.no_grad():
        a_x, a_b = net.features(x), net.features(blur_baseline(x))
    Z = a_x.shape[-1] * a_x.shape[-2]
    v = net.fc.weight[target]  # (2, K)
    expected = v / Z * (a_x - a_b).mean((2, 3))
    assert torch.allclose(e.extras["weights"], expected, rtol=1e-4, atol=1e-7)


def test_expected_gradcam_is_seeded_and_checks_its_inputs():
    model, x = tiny_model(), tiny_inputs(1)
    a = faithmap.explain(model, x, "expectedgradcam", n_samples=3, seed=4, layer="features.3").saliency
    b = faithmap.explain(model, x, "expectedgradcam", n_samples=3, seed=4, layer="features.3").saliency
    c = faithmap.explain(model, x, "expectedgradcam", n_samples=3, seed=5, layer="features.3").saliency
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(FaithmapError, match="reference images must be"):
        faithmap.explain(model, x, "expectedgradcam", reference=torch.zeros(2, 3, 16, 16))
    with pytest.raises(FaithmapError, match="unknown kernel"):
        faithmap.explain(model, x, "expectedgradcam", kernel="box")
    with pytest.raises(FaithmapError, match=r"n_samples must be in \[1, "):
        faithmap.explain(model, x, "expectedgradcam", n_samples=0)
    with pytest.raises(FaithmapError, match="unknown baseline"):
        faithmap.explain(model, x, "expectedgradcam", reference="sepia")


# ----------------------------------------------------------------------------------------------
# layer lookup, transformer grids
# ----------------------------------------------------------------------------------------------
ARCHS = [  # small inputs keep it quick: a 2 x 2 grid for the CNNs
    ("resnet18", "layer4", 64, (2, 2)),
    ("mobilenet_v3_small", "features.12", 64, (2, 2)),
    pytest.param("vgg11", "features.20", 64, (2, 2), marks=pytest.mark.slow),
    pytest.param("densenet121", "features.norm5", 64, (2, 2), marks=pytest.mark.slow),
    pytest.param("inception_v3", "Mixed_7c", 107, (2, 2), marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", "features.8", 64, (2, 2), marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", "features.18", 64, (2, 2), marks=pytest.mark.slow),
    pytest.param("convnext_tiny", "features.7", 64, (2, 2), marks=pytest.mark.slow),
    pytest.param("swin_t", "features.7", 64, (2, 2), marks=pytest.mark.slow),  # channels-last maps
    pytest.param("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", 224, (14, 14), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch, layer, size, grid", ARCHS)
def test_default_layer_per_architecture(arch, layer, size, grid):
    from faithmap import models

    clf = models.load(arch, weights="random")
    assert clf.cam_layer == layer
    if arch.startswith("vit"):  # torchvision zero-initialises ViT's head: no gradient at all
        with torch.no_grad():
            clf.net.heads.head.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    # the same layer is found for the bare network (from its class), and the map lies on its grid
    bare = wrap(clf.net, input_size=size)
    assert bare.cam_layer is None
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    e = faithmap.explain(bare, x, "gradcam", target=torch.tensor([3]))
    assert e.extras["layer"] == layer and e.saliency.shape == (1, *grid)
    assert torch.isfinite(e.saliency).all() and e.extras["weights"].abs().max() > 0


def test_default_layer_of_efficientnet_lite0():
    from faithmap.models.efficientnet_lite import EfficientNetLite

    assert faithmap.models.default_cam_layer(EfficientNetLite()) == "features.17"


def test_last_spatial_layer_for_unknown_networks_and_named_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    clf = wrap(net, mean=(0, 0, 0), std=(1, 1, 1), input_size=32)
    x = torch.rand(2, 3, 32, 32)
    e = faithmap.explain(clf, x, "gradcam")
    assert e.extras["layer"] == "3" and e.saliency.shape == (2, 16, 16)
    e = faithmap.explain(clf, x, "gradcam", layer="1")
    assert e.extras["layer"] == "1" and e.saliency.shape == (2, 32, 32)
    with pytest.raises(FaithmapError, match="no layer 'features.9'"):
        faithmap.explain(clf, x, "gradcam", layer="features.9")
    with pytest.raises(FaithmapError, match="tokens|\\(B, C, h, w\\)"):
        faithmap.explain(clf, x, "gradcam", layer="6")  # the linear layer's output is (B, 3)


def small_vit():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=5).eval()
    with torch.no_grad():  # torchvision zero-initialises the head: give it random weights
        net.heads.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
        net.heads.head.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return wrap(net, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32, name="vit_tiny")


def vit_reshape(t: torch.Tensor, h: int = 4, w: int = 4) -> torch.Tensor:
    """pytorch-grad-cam's ViT recipe: drop the class token, tokens to a grid, channels first."""
    return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)


def test_vit_ablation_keeps_the_class_token():
    """Ablating unit k on the 4 x 4 patch grid equals a literal forward with those tokens zeroed."""
    model = small_vit()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    e = faithmap.explain(model, x, "ablationcam", target=torch.tensor([2]))
    net = model.net
    block = net.encoder.layers.encoder_layer_1
    with torch.no_grad():
        h = net._process_input(x)
        h = torch.cat([net.class_token.expand(1, -1, -1), h], 1) + net.encoder.pos_embedding
        h = net.encoder.layers.encoder_layer_0(h)

        def finish(tokens_after_ln1):  # the rest of encoder_layer_1 and the head, given ln_1's output
            y = block.self_attention(tokens_after_ln1, tokens_after_ln1, tokens_after_ln1, need_weights=False)[0]
            y = y + h
            y = y + block.mlp(block.ln_2(y))
            return net.heads(net.encoder.ln(y)[:, 0])[0, 2]

        t = block.ln_1(h)
        y = finish(t)
        for k in (0, 7, 15):
            t2 = t.clone()
            t2[:, 1:, k] = 0
            assert torch.isclose(e.extras["scores"][0, k], finish(t2), rtol=1e-5, atol=1e-5)
            assert torch.isclose(e.extras["weights"][0, k], (y - finish(t2)) / y, rtol=1e-4, atol=1e-5)


def test_token_grid_arrangements():
    from faithmap.models.layers import token_grid

    assert token_grid(197, (224, 224)) == (1, 14, 14)
    assert token_grid(196, (224, 224)) == (0, 14, 14)
    assert token_grid(198, (224, 224)) == (2, 14, 14)  # class and distillation tokens
    assert token_grid(1 + 8 * 16, (128, 256)) == (1, 8, 16)
    with pytest.raises(FaithmapError, match="cannot arrange"):
        token_grid(178, (224, 224))  # 169 + 9: more than 8 extra tokens


# ----------------------------------------------------------------------------------------------
# hooks, model state, batching, counts
# ----------------------------------------------------------------------------------------------
class TwiceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "expectedgradcam"])
def test_bad_layers_raise_and_leave_no_hooks(method):
    clf = wrap(TwiceNet(), input_size=32)
    before = model_state(clf)
    with pytest.raises(FaithmapError, match="more than once"):
        faithmap.explain(clf, torch.rand(1, 3, 32, 32), method, layer="conv", n_samples=2) if method == "expectedgradcam" \
            else faithmap.explain(clf, torch.rand(1, 3, 32, 32), method, layer="conv")
    assert_state_equal(before, model_state(clf))


class InplaceNet(nn.Module):
    """A CAM layer followed by an in-place ReLU (as DenseNet's norm5 is)."""

    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "ablationcam", "scorecam"])
def test_inplace_operation_after_the_layer(method):
    x = tiny_inputs(2)
    a = faithmap.explain(wrap(InplaceNet(True), input_size=32), x, method, layer="conv", target=torch.tensor([0, 1]))
    b = faithmap.explain(wrap(InplaceNet(False), input_size=32), x, method, layer="conv", target=torch.tensor([0, 1]))
    assert torch.allclose(a.saliency, b.saliency, atol=1e-6) and a.saliency.max() > 0


def test_model_unchanged_when_a_cam_raises_midway():
    model = tiny_model()
    model.net.train()
    before = model_state(model)
    calls = {"n": 0}

    def boom(m, args):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom")

    h = model.net.fc.register_forward_pre_hook(boom)
    try:
        for method in ("scorecam", "smoothgradcam++"):
            calls["n"] = 0
            with pytest.raises(RuntimeError, match="boom"):
                faithmap.explain(model, tiny_inputs(2), method, batch_size=1, n_samples=3) if method != "scorecam" \
                    else faithmap.explain(model, tiny_inputs(2), method, batch_size=1)
    finally:
        h.remove()
    assert_state_equal(before, model_state(model))


@pytest.mark.parametrize("method, params", [("gradcam", {}), ("scorecam", {}), ("ablationcam", {}),
                                            ("expectedgradcam", {"n_samples": 5}),
                                            ("smoothgradcam++", {"n_samples": 3})])
def test_chunking_does_not_change_maps(method, params):
    model, x = tiny_model(), tiny_inputs(3)
    target = torch.tensor([3, 1, 0])
    a = faithmap.explain(model, x, method, target=target, batch_size=64, **params)
    b = faithmap.explain(model, x, method, target=target, batch_size=2, **params)
    scale = a.saliency.abs().max()
    assert torch.allclose(a.saliency / scale, b.saliency / scale, atol=1e-5)


def test_counts_and_device():
    model, x = tiny_model(), tiny_inputs(3)
    e = faithmap.explain(model, x, "gradcam", target=torch.tensor([0, 1, 2]))
    assert e.counts == {"images": 3, "grad_images": 3, "nograd_images": 0}
    assert e.saliency.device == x.device
    e = faithmap.explain(model, x, "expectedgradcam", n_samples=4, reference="noise")
    # activations of x, then per sample: its noise baseline (no grad) and the gradient pass
    assert e.counts == {"images": 3 + 2 * 12, "grad_images": 12, "nograd_images": 3 + 12}
    e = faithmap.explain(model, x, "scorecam", target=torch.tensor([0, 1, 2]))
    K = 16
    dead = int((e.extras["scores"] == e.extras["scores"][:, :1]).sum())  # noqa: F841 (for the message)
    assert 3 < e.counts["images"] <= 3 + 3 * K + 3
    assert e.counts["grad_images"] == 0


def test_upsampled_map_has_input_size():
    model, x = tiny_model(), tiny_inputs(2)
    e = faithmap.explain(model, x, "gradcam")
    assert e.upsampled(32).shape == (2, 32, 32)


@pytest.mark.slow
def test_cli_passes_the_layer(tmp_path, capsys):
    from faithmap.cli import main

    rc = main(["explain", "sample:coffee", "--method", "gradcam", "--layer", "features.99", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().startswith("faithmap: error: the model has no layer 'features.99'; did you mean ")
    assert len(err.strip().splitlines()) == 1


class UnusedNet(nn.Module):
    """The CAM layer runs but the logits do not depend on it."""

    def __init__(self):
        super().__init__()
        self.side = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        self.side(x)
        return self.fc(x.mean((2, 3)))


def test_layer_without_influence_gives_zero_maps():
    clf = wrap(UnusedNet(), input_size=32)
    for method in ("gradcam", "layercam", "expectedgradcam"):
        e = faithmap.explain(clf, torch.rand(2, 3, 32, 32), method, layer="side", n_samples=2) \
            if method == "expectedgradcam" else faithmap.explain(clf, torch.rand(2, 3, 32, 32), method, layer="side")
        assert e.saliency.shape == (2, 30, 30) and not e.saliency.any()
