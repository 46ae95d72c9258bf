"""Models: the EfficientNet-Lite0 port against the package it comes from, preprocessing, loading."""

import numpy as np
import pytest
import torch

import faithmap
from faithmap import models
from faithmap.errors import FaithmapError


def test_port_matches_efficientnet_lite_pytorch():
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from faithmap.models.efficientnet_lite import efficientnet_lite0, weights_path

    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path()).eval()
    ours = efficientnet_lite0()
    fused = efficientnet_lite0(fuse=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = ref(x), ours(x), fused(x)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-3)
    assert (a.argmax(1) == c.argmax(1)).all()


def test_port_fast_paths_equal_the_module_paths():
    """The in-place ReLU6 (taken when no hook can see the tensor) and the no-autograd padding give
    the same outputs and input gradients as the plain modules, on inputs of odd and even sizes
    and in both memory formats; with a hook on a ReLU6 the module path is taken and the hook fires."""
    from faithmap.models.efficientnet_lite import _pad, efficientnet_lite0

    g = torch.Generator().manual_seed(0)
    for shape in [(2, 5, 9, 8), (1, 3, 7, 7)]:
        x = torch.randn(shape, generator=g)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            for pads in [(0, 1, 0, 1), (1, 2, 1, 2), (2, 0, 0, 1)]:
                assert torch.equal(_pad(xf, *pads), torch.nn.functional.pad(x, list(pads)))
    net = efficientnet_lite0(fuse=True).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    for size in (224, 97):
        x = torch.randn(2, 3, size, size, generator=g)
        z = x.clone().requires_grad_(True)
        out = net(z)
        (grad,) = torch.autograd.grad(out[:, 3].sum(), z)
        with torch.no_grad():
            fast = net(x.contiguous(memory_format=torch.channels_last))
        seen = []
        handles = [m.register_forward_hook(lambda m, i, o: seen.append(1)) for m in net.modules()
                   if isinstance(m, torch.nn.ReLU6)]
        try:
            z2 = x.clone().requires_grad_(True)
            ref = net(z2)
            (ref_grad,) = torch.autograd.grad(ref[:, 3].sum(), z2)
        finally:
            for h in handles:
                h.remove()
        assert len(seen) == len(handles) > 30
        # global hooks (forward, and full backward pre-hooks) also see every ReLU6 module run
        relus = {id(m) for m in net.modules() if isinstance(m, torch.nn.ReLU6)}
        from torch.nn.modules import module as _m

        for register in (lambda f: _m.register_module_forward_hook(lambda m, i, o: f(m)),
                         lambda f: _m.register_module_full_backward_pre_hook(lambda m, g: f(m))):
            ran = []
            handle = register(lambda m: ran.append(id(m)) if id(m) in relus else None)
            try:
                z3 = x.clone().requires_grad_(True)
                torch.autograd.grad(net(z3)[:, 3].sum(), z3)
            finally:
                handle.remove()
            assert set(ran) == relus
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(fast, ref.detach(), rtol=0, atol=1e-4)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fuse", [True, False])
def test_padded_expansion_equals_the_module_path(monkeypatch, fuse):
    """Without autograd, the stride-2 blocks pad their narrow input and expand it instead of padding
    the expanded tensor: taken in all four stride-2 blocks at even sizes, bit-identical outputs."""
    from faithmap.models.efficientnet_lite import MBConv, efficientnet_lite0

    net = efficientnet_lite0(fuse=fuse).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    real, taken = MBConv._expand_depthwise_padded, []

    def spy(self, inp):
        out = real(self, inp)
        taken.append(out is not None)
        return out

    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        monkeypatch.setattr(MBConv, "_expand_depthwise_padded", spy)
        taken.clear()
        with torch.no_grad():
            fast = net(xf)
        assert sum(taken) == 4
        taken.clear()
        net(xf.clone().requires_grad_(True))  # autograd: the module path
        assert sum(taken) == 0
        monkeypatch.setattr(MBConv, "_expand_depthwise_padded", lambda self, inp: None)
        with torch.no_grad():
            slow = net(xf)
        assert torch.equal(fast, slow)


def test_default_model(lite0):
    assert lite0.cam_layer == "features.17" and lite0.input_size == 224
    assert len(lite0.class_names) == 1000 and lite0.class_names[967] == "espresso"
    assert torch.allclose(lite0.mean, torch.full((1, 3, 1, 1), 0.5))
    # an image already 224 x 224 passes unchanged (only normalised)
    img = (np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8)
    x = lite0.preprocess(img)
    assert torch.allclose(x[0], (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)
    # shorter side to 224, centre crop
    wide = (np.random.default_rng(1).random((300, 600, 3)) * 255).astype(np.uint8)
    assert lite0.preprocess(wide).shape == (1, 3, 224, 224)


def test_default_model_classifies_samples(lite0):
    from faithmap.data import load_sample

    x = lite0.preprocess([load_sample("coffee"), load_sample("chelsea")])
    with torch.no_grad():
        top = lite0(x).argmax(1).tolist()
    assert [lite0.class_name(i) for i in top] == ["espresso", "Egyptian cat"]


def test_torchvision_model_with_weights_file(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    clf = models.load("resnet18", weights=str(path))
    assert clf.class_names == [f"class {i}" for i in range(7)] and clf.cam_layer == "layer4"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(clf(x), net.eval()(x), atol=1e-4)


def test_model_errors(tmp_path):
    with pytest.raises(FaithmapError, match="unknown model"):
        models.load("notanet")
    with pytest.raises(FaithmapError, match="needs --weights"):
        models.load("resnet18")
    bad = tmp_path / "bad.pth"
    bad.write_text("garbage")
    with pytest.raises(FaithmapError, match="cannot read"):
        models.load("resnet18", weights=str(bad))


def test_wrap_any_module_and_explain_leaves_it_alone():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    net.train()
    clf = models.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), input_size=32)
    e = faithmap.explain(clf, torch.rand(2, 3, 32, 32), "igos", resolution=4, iterations=2, ig_steps=3)
    assert e.saliency.shape == (2, 4, 4)
    assert net.training and all(p.requires_grad for p in net.parameters())


def test_docs_tables_are_current():
    import pathlib

    from faithmap.docs import render

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert render(readme) == readme, "run `faithmap docs README.md`"
    for spec in faithmap.METHODS:
        assert f"`{spec.name}`" in readme
