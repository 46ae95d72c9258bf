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

    from faithmap.docs import load_picker_data, render

    root = pathlib.Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    assert render(readme, load_picker_data(str(root / "docs" / "data")), ".") == readme, "run `faithmap docs`"
    for spec in faithmap.METHODS:  # the method picker lists every method
        assert f"`{spec.name}`" in readme
    methods = (root / "docs" / "methods" / "index.md").read_text()  # the full table moved to the methods page
    for spec in faithmap.METHODS:
        assert f"`{spec.name}`" in methods and (spec.paper or "-") in methods


# ----------------------------------------------------------------------------------------------
# weights files: safetensors, and one line for every way a file can be wrong
# ----------------------------------------------------------------------------------------------
def test_safetensors_weights_for_torchvision_and_the_default(tmp_path):
    """A .safetensors file loads into a torchvision architecture and into the default Lite0 and gives
    the same logits as the network it was saved from (classes read from the file)."""
    import torchvision
    from safetensors.torch import save_file

    from faithmap.models.efficientnet_lite import efficientnet_lite0

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    save_file(net.state_dict(), tmp_path / "r18.safetensors")
    clf = models.load("resnet18", weights=str(tmp_path / "r18.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), net(x), rtol=1e-4, atol=1e-5)
    assert clf.num_classes == 4

    ref = efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():  # other weights than the shipped ones, so that loading them shows
        ref.classifier.weight.mul_(-1)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "lite0.safetensors")
    lite = models.load(weights=str(tmp_path / "lite0.safetensors"), fuse=False)
    with torch.no_grad():
        torch.testing.assert_close(lite(x), ref(x), rtol=1e-4, atol=1e-4)


def test_a_pickled_model_is_refused_in_our_own_words(tmp_path):
    """A whole pickled model (not a state dict): one line saying so and that faithmap never unpickles
    code, naming the pickled class; torch's advice to set weights_only=False is not passed on."""
    import torchvision

    path = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18(num_classes=3), path)
    with pytest.raises(FaithmapError) as info:
        models.load("resnet18", weights=str(path))
    msg = str(info.value)
    assert "not a plain state dict of tensors" in msg and "never unpickles code" in msg
    assert "torchvision.models.resnet.ResNet" in msg
    assert "weights_only" not in msg and "\n" not in msg
    # a dict that holds something else than tensors
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(FaithmapError, match="not a plain state dict of tensors"):
        models.load("resnet18", weights=str(tmp_path / "meta.pth"))
    # a damaged safetensors file
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FaithmapError, match="not a valid safetensors file"):
        models.load("resnet18", weights=str(tmp_path / "bad.safetensors"))


def test_weights_with_zero_classes_and_of_another_architecture(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    state = torchvision.models.resnet18(num_classes=3).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(0, 512), torch.zeros(0)
    save_file(state, tmp_path / "zero.safetensors")
    with pytest.raises(FaithmapError, match=r"final layer fc has 0 outputs .*at least one class"):
        models.load("resnet18", weights=str(tmp_path / "zero.safetensors"))
    # resnet34 weights for resnet18: the line names what does not fit
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(FaithmapError) as info:
        models.load("resnet18", weights=str(tmp_path / "r34.pth"))
    msg = str(info.value)
    assert "does not fit resnet18" in msg and "have no place in the model (e.g. layer1.2." in msg
    assert "another architecture" in msg and "\n" not in msg
    # vgg11 weights for the default model
    torch.save(torchvision.models.vgg11(num_classes=3).state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(FaithmapError, match="does not fit efficientnet_lite0"):
        models.load(weights=str(tmp_path / "vgg.pth"))


# ----------------------------------------------------------------------------------------------
# the photo transform's pixel arithmetic
# ----------------------------------------------------------------------------------------------
def test_rounding_conventions_of_resize_and_crop():
    """torchvision truncates the longer side and rounds crop offsets half to even; transformers
    truncates and floors; faithmap's own rounds the side and floors the offset. Checked on a photo
    whose pixels are their own column index, so the crop's first column is its offset."""
    from faithmap.models.classifier import PhotoTransform, crop_offsets, shorter_side_size

    assert shorter_side_size(427, 640, 256, "round") == (256, 384)  # 383.7 -> 384
    assert shorter_side_size(427, 640, 256, "torchvision") == (256, 383)
    assert shorter_side_size(427, 640, 256, "transformers") == (256, 383)
    assert crop_offsets(235, 235, 224, "torchvision") == (6, 6)  # round(5.5) = 6
    assert crop_offsets(233, 233, 224, "torchvision") == (4, 4)  # round(4.5) = 4 (half to even)
    assert crop_offsets(235, 235, 224, "round") == crop_offsets(235, 235, 224, "transformers") == (5, 5)
    # a 20 x 40 photo (no resize at resize_size 20), crop 9: offsets (5.5, 15.5) floored or rounded to even
    rows = torch.arange(20.0).view(1, 20, 1).expand(3, 20, 40) / 255
    cols = torch.arange(40.0).view(1, 1, 40).expand(3, 20, 40) / 255
    for rounding, top, left in (("round", 5, 15), ("torchvision", 6, 16), ("transformers", 5, 15)):
        tf = PhotoTransform(mean=(0, 0, 0), std=(1, 1, 1), input_size=9, resize_size=20, rounding=rounding)
        assert torch.allclose(tf(cols.clone())[0, 0] * 255, torch.arange(left, left + 9.0)), rounding
        assert torch.allclose(tf(rows.clone())[0, :, 0] * 255, torch.arange(top, top + 9.0)), rounding
        assert tf.geometry((20, 40)) == (1.0, 1.0, left, top, 9)


def test_nearest_interpolation_has_no_antialias():
    from faithmap.models.classifier import PhotoTransform

    im = torch.zeros(3, 8, 8)
    im[:, ::2, ::2] = 1.0  # a grid of single bright pixels: nearest keeps 0/1 values, area filters would blur
    out = PhotoTransform(mean=(0, 0, 0), std=(1, 1, 1), input_size=4, resize_size=4, interpolation="nearest")(im)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(FaithmapError, match="interpolation must be"):
        PhotoTransform(interpolation="lanczos")(im)


def test_outputs_with_logits_are_unwrapped():
    """A network that returns an output object (as transformers models do) gives its .logits."""
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return Out(self.fc(x.mean((2, 3))))

    net = Net()
    clf = models.wrap(net, input_size=8)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(clf(x), net.fc(x.mean((2, 3))))
    e = faithmap.explain(clf, x, "saliency")
    assert torch.isfinite(e.saliency).all() and e.saliency.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# transformer token grids read from the model
# ----------------------------------------------------------------------------------------------
def test_token_grid_with_the_prefix_read_from_the_model():
    """With 4 register tokens and a class token before a 2 x 2 patch grid (9 tokens), guessing from the
    count alone gives a 3 x 3 grid; the prefix read from the model gives the right one."""
    from faithmap.models.layers import layer_layout, prefix_tokens, to_grid, token_grid

    assert token_grid(9, (16, 16)) == (0, 3, 3)  # the guess, wrong here
    assert token_grid(9, (16, 16), prefix=5) == (5, 2, 2)
    assert token_grid(1 + 4 * 5, (70, 90), prefix=1) == (1, 4, 5)  # 70x90 with 16 px patches: 4 x 5, ratio not exact

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 6))
            self.reg_token = torch.nn.Parameter(torch.zeros(1, 4, 6))
            self.mask_token = torch.nn.Parameter(torch.zeros(1, 6))  # not a prefix token (2-D)

    net = Tiny()
    assert prefix_tokens(net) == 5
    t = torch.arange(2 * 9 * 6, dtype=torch.float32).view(2, 9, 6)
    layout = layer_layout(net, None, t)
    assert layout == "tokens:5"
    grid = to_grid(t, layout, (16, 16))
    assert torch.equal(grid, t[:, 5:].reshape(2, 2, 2, 6).permute(0, 3, 1, 2))


# ----------------------------------------------------------------------------------------------
# devices: Apple MPS selection and refusals (no MPS here: the backend is mocked)
# ----------------------------------------------------------------------------------------------
def test_auto_picks_cuda_then_mps_then_cpu():
    from unittest import mock

    from faithmap.core.device import resolve_device

    with mock.patch("torch.cuda.is_available", return_value=False), \
            mock.patch("torch.backends.mps.is_available", return_value=True):
        assert resolve_device("auto") == torch.device("mps")
        assert resolve_device(None) == torch.device("mps")
        assert resolve_device("mps") == torch.device("mps")
        assert resolve_device("cpu") == torch.device("cpu")
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.backends.mps.is_available", return_value=True):
        assert resolve_device("auto") == torch.device("cuda")
    with mock.patch("torch.cuda.is_available", return_value=False), \
            mock.patch("torch.backends.mps.is_available", return_value=False):
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(FaithmapError, match="no Apple MPS device"):
            resolve_device("mps")
        with pytest.raises(FaithmapError, match="no Apple MPS device"):
            models.load(weights="random", device="mps")


def test_cli_device_mps_without_mps_is_one_line(capsys, tmp_path):
    from unittest import mock

    from faithmap.cli import main

    with mock.patch("torch.backends.mps.is_available", return_value=False):
        rc = main(["explain", "sample:coffee", "--device", "mps", "--fast", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["faithmap: error: device mps was asked for, but this machine has no Apple MPS device"]
    assert not (tmp_path / "o").exists()


def test_operations_mps_lacks_are_refused_in_one_line(capsys, tmp_path, monkeypatch):
    """PyTorch's errors for what MPS cannot do become one line that says how to fall back per operator
    (PYTORCH_ENABLE_MPS_FALLBACK=1) or to use the CPU; other errors are not swallowed."""
    from faithmap import api
    from faithmap.cli import main
    from faithmap.core.device import mps_unsupported

    op = NotImplementedError("The operator 'aten::_upsample_bicubic2d_aa.out' is not currently implemented for the "
                             "MPS device. If you want this op to be added in priority during the prototype phase ...")
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)
    line = mps_unsupported(op)
    assert line.startswith("Apple MPS does not implement the operator aten::_upsample_bicubic2d_aa.out")
    assert "PYTORCH_ENABLE_MPS_FALLBACK=1" in line and "--device cpu" in line
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    assert "not covered by the CPU fallback" in mps_unsupported(op)
    f64 = TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64.")
    assert "no float64" in mps_unsupported(f64)
    assert mps_unsupported(RuntimeError("shapes cannot be multiplied (timestamps)")) is None
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK")

    def boom(*a, **k):
        raise op

    monkeypatch.setattr(api, "explain", boom)
    rc = main(["explain", "sample:coffee", "--method", "saliency", "--device", "cpu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("faithmap: error: Apple MPS does not implement")

    def other(*a, **k):
        raise RuntimeError("something else entirely")

    monkeypatch.setattr(api, "explain", other)
    with pytest.raises(RuntimeError, match="something else"):
        main(["explain", "sample:coffee", "--method", "saliency", "--device", "cpu", "--out", str(tmp_path / "p")])


def test_models_command_lists_the_ecosystem(capsys):
    from faithmap.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "resnet50" in out and "timm:NAME" in out and "hf:DIR" in out
    assert ".safetensors" in out
