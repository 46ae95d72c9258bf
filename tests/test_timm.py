"""timm models (``faithmap[timm]``): ``timm:NAME --weights FILE`` and ``wrap(timm_model)``.

Every model here has random weights that the test saves itself (no network): timm's small test
architectures ``test_resnet``, ``test_convnext`` and ``test_vit`` (a real ResNet, ConvNeXt and
VisionTransformer at 160 px with their own pretrained configs), and tiny custom ViT/DeiT/Swin
configurations for the token grids.
"""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
import timm.data  # noqa: E402
from conftest import assert_state_equal, model_state, run  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import faithmap  # noqa: E402
from faithmap import models  # noqa: E402
from faithmap.data import load_sample, sample_names  # noqa: E402
from faithmap.errors import FaithmapError  # noqa: E402

ARCHS = ("test_resnet", "test_convnext", "test_vit")  # timm's ResNet, ConvNeXt and ViT classes
CLASSES = 5


def make_net(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=kwargs.pop("num_classes", CLASSES), **kwargs).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """arch -> a safetensors file of random weights (test_resnet also as a torch state dict)."""
    d = tmp_path_factory.mktemp("timm_weights")
    out = {}
    for arch in ARCHS:
        path = d / f"{arch}.safetensors"
        save_file(make_net(arch).state_dict(), path)
        out[arch] = str(path)
    torch.save(make_net("test_resnet").state_dict(), d / "test_resnet.pth")
    out["test_resnet.pth"] = str(d / "test_resnet.pth")
    return out




# ----------------------------------------------------------------------------------------------
# loading: config read from the model, weights from the file, nothing downloaded
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, layer", [("test_resnet", "layer4"), ("test_convnext", "stages.3"),
                                         ("test_vit", "blocks.5.norm1")])
def test_load_reads_the_models_own_config(weights, no_network, arch, layer):
    clf = models.load(f"timm:{arch}", weights=weights[arch])
    ref = make_net(arch)
    cfg = timm.data.resolve_model_data_config(ref)
    assert clf.name == f"timm:{arch}" and clf.cam_layer == layer
    assert clf.input_size == cfg["input_size"][1] == 160
    assert clf.resize_size == int(160 // cfg["crop_pct"]) == 168  # crop_pct 0.95
    assert clf.interpolation == cfg["interpolation"] and clf.rounding == "torchvision"
    assert torch.allclose(clf.mean.flatten(), torch.tensor(cfg["mean"])) and clf.class_names[4] == "class 4"
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(clf(x), ref(x), rtol=1e-4, atol=1e-5)


def test_torch_state_dict_and_safetensors_give_the_same_model(weights):
    a = models.load("timm:test_resnet", weights=weights["test_resnet"])
    b = models.load("timm:test_resnet", weights=weights["test_resnet.pth"])
    for (k, p), (_, q) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(p, q), k


@pytest.mark.parametrize("arch", ARCHS)
def test_preprocessing_equals_timms_own_transform(arch):
    """The library's transform equals timm's eval transform (``create_transform(**resolve_data_config)``)
    on every sample photo (PIL images of 300x451 to 512x512).

    Measured (timm 1.0.31, torch 2.14): the mean absolute difference is 0.25-0.31/255 in pixel units,
    the expected error of timm's rounding to 8 bits after resizing (uniform on +-0.5/255 has mean
    0.25/255); the largest single difference is below 1/255 for bilinear and up to 7.1/255 for
    bicubic, where PIL resizes in two 8-bit passes and clips the overshoot between them. Bounds:
    mean 0.4/255, max 1.5/255 (bilinear) and 10/255 (bicubic). With faithmap's own rounding of the
    crop geometry instead of torchvision's, the inputs shift by a pixel and the mean difference
    on these photos exceeds 1/255: the test can tell.
    """
    net = make_net(arch)
    clf = models.wrap(net)
    tf = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
    bound = 1.5 if clf.interpolation == "bilinear" else 10.0
    shifted = models.wrap(net)
    shifted.rounding = "round"
    worst_shifted = 0.0
    for name in sample_names():
        photo = Image.fromarray(load_sample(name))
        ref = tf(photo)
        d = (clf.preprocess(photo)[0] - ref).abs() * clf.std[0]
        assert d.mean() * 255 < 0.4 and d.max() * 255 < bound, name
        worst_shifted = max(worst_shifted, float(((shifted.preprocess(photo)[0] - ref).abs() * clf.std[0]).mean()))
    assert worst_shifted * 255 > 1.0


def test_wrap_takes_a_timm_model_as_it_is():
    """wrap() reads everything from the model: a ViT built for 64 px (its pretrained config says 224)
    gets 64 px inputs with timm's crop ratio, its mean/std, bicubic and its CAM layer."""
    net = make_net("vit_tiny_patch16_224", img_size=64, embed_dim=32, depth=2, num_heads=2)
    clf = models.wrap(net)
    assert clf.input_size == 64 and clf.resize_size == int(64 // 0.9) and clf.interpolation == "bicubic"
    assert clf.cam_layer == "blocks.1.norm1" and clf.name == "timm:vit_tiny_patch16_224"
    assert torch.allclose(clf.mean.flatten(), torch.full((3,), 0.5))
    # arguments given override the config
    assert models.wrap(make_net("test_resnet"), input_size=64).input_size == 64
    assert models.wrap(make_net("test_resnet"), input_size=64).resize_size == int(64 // 0.95)


def test_imagenet_class_names_for_1000_classes():
    clf = models.wrap(make_net("test_resnet", num_classes=1000))
    assert len(clf.class_names) == 1000 and clf.class_names[967] == "espresso"


# ----------------------------------------------------------------------------------------------
# Grad-CAM against a literal reference on the same layer
# ----------------------------------------------------------------------------------------------
def literal_gradcam(net, layer: str, x: torch.Tensor, target: int, grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM by hand: a forward hook keeps the layer's output, the gradient of the target logit
    with respect to it, ``grid`` makes both (B, K, h, w), then ReLU(sum_k mean_ij(G_k) A_k).
    Returns the map and the channel weights."""
    kept = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    try:
        logits = net(x)
        (g,) = torch.autograd.grad(logits[:, target].sum(), kept["a"])
    finally:
        handle.remove()
    A, G = grid(kept["a"].detach()), grid(g)
    w = G.mean((2, 3))
    return torch.relu((w[:, :, None, None] * A).sum(1)), w


def nhwc(t):
    return t.permute(0, 3, 1, 2)


def tokens(prefix, gh, gw):
    return lambda t: t[:, prefix:, :].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)


GRADCAM_CASES = [
    # (arch, create_model kwargs, input size, layer, grid by hand)
    ("test_resnet", {}, 160, "layer4", lambda t: t),
    ("test_convnext", {}, 160, "stages.3", lambda t: t),
    ("test_vit", {}, 160, "blocks.5.norm1", tokens(1, 10, 10)),  # a class token before 10 x 10 patches
    # 4 register tokens + the class token before a 2 x 2 grid: 9 tokens, which a guess reads as 3 x 3
    ("vit_tiny_patch16_224", dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, reg_tokens=4),
     16, "blocks.1.norm1", tokens(5, 2, 2)),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
     32, "blocks.1.norm1", tokens(2, 4, 4)),  # class + distillation token
    ("swin_tiny_patch4_window7_224", dict(img_size=64, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4),
     64, "layers.1", nhwc),  # Swin's stages are channels-last (B, h, w, C)
    ("test_efficientnet", {}, 64, "bn2", lambda t: t),  # the head convolution's activation, before pooling
    ("regnety_002", {}, 64, "s4", lambda t: t),
]


@pytest.mark.parametrize("arch, kwargs, size, layer, grid", GRADCAM_CASES, ids=[c[0] for c in GRADCAM_CASES])
def test_gradcam_equals_a_literal_reference(arch, kwargs, size, layer, grid):
    net = make_net(arch, **kwargs)
    net.train()  # the user's mode: faithmap runs in eval mode and gives the mode back
    clf = models.wrap(net, input_size=size)  # the models' own sizes for the transformers; 64 px for the CNNs
    assert clf.cam_layer == layer and clf.input_size == size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    before = model_state(net)
    e = faithmap.explain(clf, x, "gradcam", target=torch.tensor([3, 1]))
    assert_state_equal(before, model_state(net))
    net.eval()
    refs = [literal_gradcam(net, layer, x[i:i + 1], t, grid) for i, t in enumerate((3, 1))]
    ref, w = torch.cat([r[0] for r in refs]), torch.cat([r[1] for r in refs])
    assert ref.max() > 0 and w.abs().min() > 0  # not a vacuous comparison
    assert e.extras["layer"] == layer and e.saliency.shape == ref.shape
    torch.testing.assert_close(e.extras["weights"], w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))
    torch.testing.assert_close(e.saliency, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_explain_leaves_a_timm_model_unchanged():
    net = make_net("test_vit")
    net.train()
    clf = models.wrap(net)
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    before = model_state(net)
    for method, params in (("saliency", {}), ("igos", dict(iterations=2, ig_steps=2)), ("scorecam", {})):
        faithmap.explain(clf, clf.normalize(x), method, **params)
        assert_state_equal(before, model_state(net))
    assert net.training


# ----------------------------------------------------------------------------------------------
# the command line, end to end: every method family, explain and evaluate
# ----------------------------------------------------------------------------------------------
# One method per family (gradient: two), with few model evaluations. The 160 px ResNet and ConvNeXt
# run every family through one `evaluate` (one process, one model load, no figures per method) and
# Grad-CAM through `explain`; the ViT runs every family through `explain` as well.
METHODS = {  # method: (explain options, evaluate --param, model images of one map)
    "igos": (["--fast", "--param", "iterations=1", "--param", "ig_steps=2"], ["igos.iterations=1", "igos.ig_steps=2"], None),
    "gradcam": ([], [], 1),
    "saliency": ([], [], 1),
    "ig": (["--param", "steps=4"], ["ig.steps=4"], 4),
    "rise": (["--param", "n_masks=8"], ["rise.n_masks=8"], 8),
}
EXPLAIN = [("test_vit", m) for m in METHODS] + [("test_resnet", "gradcam"), ("test_convnext", "gradcam")]


def independent_probabilities(arch: str, photo) -> torch.Tensor:
    """Class probabilities of the photo through timm's own transform and the network built here."""
    net = make_net(arch)
    x = timm.data.create_transform(**timm.data.resolve_data_config(model=net))(Image.fromarray(photo))
    with torch.no_grad():
        return torch.softmax(net(x[None]), 1)[0]


@pytest.mark.parametrize("arch, method", EXPLAIN, ids=[f"{a}-{m}" for a, m in EXPLAIN])
def test_cli_explain(weights, tmp_path, capsys, no_network, arch, method):
    extra, _, images = METHODS[method]
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", "sample:coffee", "--model", f"timm:{arch}", "--weights", weights[arch],
                           "--method", method, "--device", "cpu", "--out", str(out), *extra], capsys)
    assert rc == 0, err
    summary = json.loads(next(out.glob("*_summary.json")).read_text())
    sal = np.load(next(out.glob("*_map.npy")))
    assert summary["model"] == f"timm:{arch}" and np.isfinite(sal).all() and sal.shape == tuple(summary["map_resolution"])
    assert 0 <= summary["deletion_auc"] <= 1 and 0 <= summary["insertion_auc"] <= 1
    if images is not None:
        assert summary["model_images"]["images"] == images
    # the probabilities printed are those of timm's own preprocessing and the saved weights
    probs = independent_probabilities(arch, load_sample("coffee"))
    for entry in summary["top5"]:
        assert abs(entry["probability"] - float(probs[entry["class"]])) < 2e-3


@pytest.mark.parametrize("arch, methods", [("test_resnet", list(METHODS)), ("test_convnext", list(METHODS)),
                                           ("test_vit", ["gradcam"])])
def test_cli_evaluate(weights, tmp_path, capsys, no_network, arch, methods):
    photo = tmp_path / "coffee.png"
    Image.fromarray(load_sample("coffee")).save(photo)
    out = tmp_path / "eval"
    params = [a for m in methods for p in METHODS[m][1] for a in ("--param", p)]
    rc, stdout, err = run(["evaluate", "--methods", ",".join(methods), "--metrics", "deletion", "--images", str(photo),
                           "--model", f"timm:{arch}", "--weights", weights[arch], "--fast", *params, "--device", "cpu",
                           "--no-progress", "--out", str(out)], capsys)
    assert rc == 0, err
    with open(out / "results.csv", newline="") as fh:
        body = list(csv.DictReader(fh))
    assert sorted(r["method"] for r in body) == sorted(methods)
    probs = independent_probabilities(arch, load_sample("coffee"))
    for row in body:
        assert row["metric"] == "deletion" and 0 <= float(row["value"]) <= 1
        assert abs(float(row["target_prob"]) - float(probs.max())) < 2e-3
        if METHODS[row["method"]][2] is not None:
            assert int(row["explain_images"]) == METHODS[row["method"]][2]
    assert json.loads((out / "run.json").read_text())["settings"]["model"] == f"timm:{arch}"


# ----------------------------------------------------------------------------------------------
# bad inputs: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------
def zero_class_weights(tmp_path):
    state = make_net("test_resnet").state_dict()
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][:0], state["fc.bias"][:0]
    save_file(state, tmp_path / "zero.safetensors")
    return str(tmp_path / "zero.safetensors")


def headless_weights(tmp_path):
    save_file(make_net("test_resnet", num_classes=0).state_dict(), tmp_path / "features.safetensors")
    return str(tmp_path / "features.safetensors")


def pickled_model(tmp_path):
    torch.save(make_net("test_resnet"), tmp_path / "whole.pth")
    return str(tmp_path / "whole.pth")


BAD = [
    (lambda w, p: ["timm:test_resnett", "--weights", w["test_resnet"]], "unknown timm model 'test_resnett'; did you mean test_resnet"),
    (lambda w, p: ["timm:no_such_net_at_all", "--weights", w["test_resnet"]], "unknown timm model 'no_such_net_at_all'"),
    (lambda w, p: ["timm:test_resnet", "--weights", w["test_convnext"]],
     "does not fit timm:test_resnet ("),
    (lambda w, p: ["timm:test_resnet"], "needs --weights FILE"),
    (lambda w, p: ["timm:hf-hub:timm/resnet18.a1_in1k", "--weights", w["test_resnet"]], "never fetches models from a hub"),
    (lambda w, p: ["timm:test_resnet", "--weights", zero_class_weights(p)], "final layer fc has 0 outputs"),
    (lambda w, p: ["timm:test_resnet", "--weights", headless_weights(p)], "has no final layer fc"),
    (lambda w, p: ["timm:test_resnet", "--weights", pickled_model(p)], "not a plain state dict of tensors"),
    (lambda w, p: ["timm:test_resnet", "--weights", str(p / "missing.safetensors")], "weights file not found"),
]


@pytest.mark.parametrize("args, needle", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_inputs_are_one_line(weights, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    model, *rest = args(weights, tmp_path)
    rc, stdout, err = run(["explain", "sample:coffee", "--model", model, *rest, "--method", "gradcam",
                           "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("faithmap: error: "), err
    assert needle in lines[0]
    assert "weights_only" not in lines[0] and "Traceback" not in err
    assert not out.exists()


def test_another_architecture_names_the_mismatch(weights):
    with pytest.raises(FaithmapError) as info:
        models.load("timm:test_resnet", weights=weights["test_convnext"])
    msg = str(info.value)
    assert "101 of the file's 101 tensors have no place in the model (e.g. head.fc.bias)" in msg
    assert "77 of the model's 77 tensors are missing (e.g. conv1.0.weight)" in msg
    assert "another architecture" in msg


def test_api_errors():
    with pytest.raises(FaithmapError, match="unknown timm model"):
        models.load("timm:resnet-18", weights="random")
    with pytest.raises(FaithmapError, match="processor= is for transformers models"):
        models.wrap(make_net("test_resnet"), processor=object())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a timm model read from its own config needs no notes
        assert models.wrap(make_net("test_vit")).notes == []

