"""Hugging Face transformers classifiers (``faithmap[hf]``): ``hf:DIR`` and ``wrap(model)``.

Every folder here is written by the test with ``save_pretrained`` from a tiny random configuration
(32 px inputs, two layers): nothing is fetched from a hub.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import assert_state_equal, model_state, run  # noqa: E402
from PIL import Image  # noqa: E402

import faithmap  # noqa: E402
from faithmap import models  # noqa: E402
from faithmap.data import load_sample, sample_names  # noqa: E402
from faithmap.errors import FaithmapError  # noqa: E402

LABELS = {i: name for i, name in enumerate(["tabby", "teapot", "rocket", "daisy", "espresso"])}


def vit_config(**kw):
    return transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, id2label=LABELS,
                                  label2id={v: k for k, v in LABELS.items()}, **kw)


def convnext_config():
    return transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32,
                                       id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


def swin_config():
    return transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                   window_size=4, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


def processors():
    return {
        "vit": transformers.ViTImageProcessor(size={"height": 32, "width": 32}),  # squash, bilinear, mean 0.5
        "convnext": transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875,
                                                        image_mean=[0.485, 0.456, 0.406],
                                                        image_std=[0.229, 0.224, 0.225]),  # 36 then crop 32, bicubic
        "swin": transformers.ViTImageProcessor(size={"height": 32, "width": 32}),
        "deit": transformers.ViTImageProcessor(size={"height": 32, "width": 32}),
        "resnet": transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),
    }


def make(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "deit":  # class and distillation tokens
        config = transformers.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, id2label=LABELS,
                                         label2id={v: k for k, v in LABELS.items()})
        return transformers.DeiTForImageClassificationWithTeacher(config).eval()
    if kind == "resnet":
        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], id2label=LABELS,
                                           label2id={v: k for k, v in LABELS.items()})
        return transformers.AutoModelForImageClassification.from_config(config).eval()
    config = {"vit": vit_config, "convnext": convnext_config, "swin": swin_config}[kind]()
    return transformers.AutoModelForImageClassification.from_config(config).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    out = {}
    procs = processors()
    for kind in ("vit", "convnext", "swin"):
        make(kind).save_pretrained(d / kind)
        procs[kind].save_pretrained(d / kind)
        out[kind] = str(d / kind)
    make("vit").save_pretrained(d / "vit_noproc")  # no preprocessor_config.json
    out["vit_noproc"] = str(d / "vit_noproc")
    transformers.ViTModel(vit_config()).save_pretrained(d / "vit_headless")  # no classification head
    out["vit_headless"] = str(d / "vit_headless")
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32)).save_pretrained(d / "bert")
    out["bert"] = str(d / "bert")
    make("vit").save_pretrained(d / "vit_relabelled")  # 5 labels in the weights, 7 in the config
    cfg = json.loads((d / "vit_relabelled" / "config.json").read_text())
    cfg["id2label"] = {str(i): f"x{i}" for i in range(7)}
    cfg["label2id"] = {f"x{i}": i for i in range(7)}
    (d / "vit_relabelled" / "config.json").write_text(json.dumps(cfg))
    (d / "config_only").mkdir()
    (d / "config_only" / "config.json").write_text((d / "vit" / "config.json").read_text())
    out["config_only"] = str(d / "config_only")
    (d / "empty").mkdir()
    out["empty"] = str(d / "empty")
    out["relabelled"] = str(d / "vit_relabelled")
    return out




# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, layer, resize, resize_size, interp", [
    ("vit", "vit.layers.1.layernorm_before", "squash", 32, "bilinear"),
    ("convnext", "convnext.encoder.stages.1", "crop", 36, "bicubic"),
    ("swin", "swin.layernorm", "squash", 32, "bilinear"),
])
def test_load_reads_folder_config_and_processor(folders, no_network, kind, layer, resize, resize_size, interp):
    clf = models.load(f"hf:{folders[kind]}")
    proc = processors()[kind]
    assert clf.name == f"hf:{folders[kind]}" and clf.class_names == list(LABELS.values())
    assert clf.input_size == 32 and clf.resize == resize and clf.resize_size == resize_size
    # (block names differ between transformers 4 and 5: vit.encoder.layer.1 / vit.layers.1)
    assert clf.cam_layer.endswith(layer.split(".", 1)[1].replace("layers.", "")) or clf.cam_layer == layer
    assert clf.rounding == "transformers" and clf.interpolation == interp
    assert torch.allclose(clf.mean.flatten(), torch.tensor(proc.image_mean, dtype=torch.float32))
    assert clf.notes == []
    ref = make(kind)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(clf(x), ref(pixel_values=x).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "convnext"])
@pytest.mark.parametrize("backend", ["default", "pil"])
def test_preprocessing_equals_the_image_processor(kind, backend):
    """The library's transform equals the image processor's ``pixel_values`` on every sample photo.

    Measured (transformers 5.24, both backends): mean absolute difference 0.24-0.27/255 in pixel
    units, the processor's rounding to 8 bits after resizing (expected 0.25/255); the largest
    single difference is below 0.8/255 with bilinear (ViT: whole photo squashed to 32 px) and up
    to 3.7/255 with bicubic (ConvNeXt: shorter side to 36, centre crop 32), where PIL and the
    torchvision backend clip the cubic overshoot in 8 bits. Bounds: mean 0.4/255, max 1.5/255
    (bilinear) and 6/255 (bicubic). faithmap's own crop rounding instead of the processor's moves
    the ConvNeXt crop by a pixel on the 300x451 and 427x640 photos: the test sees that too.
    """
    proc = processors()[kind]
    if backend == "pil":
        cls = getattr(transformers, type(proc).__name__ + "Pil", None)
        if cls is None:
            pytest.skip("this transformers has no separate PIL backend")
        keys = ["size", "image_mean", "image_std", "resample"] + (["crop_pct"] if kind == "convnext" else [])
        proc = cls(**{k: getattr(proc, k) for k in keys})
    net = make(kind)
    clf = models.wrap(net, processor=proc)
    bound = 1.5 if clf.interpolation == "bilinear" else 6.0
    worst_shifted = 0.0
    for name in sample_names():
        photo = Image.fromarray(load_sample(name))
        ref = proc(photo, return_tensors="pt")["pixel_values"][0]
        d = (clf.preprocess(photo)[0] - ref).abs() * clf.std.view(3, 1, 1)
        assert d.mean() * 255 < 0.4 and d.max() * 255 < bound, name
        if kind == "convnext":
            clf.rounding = "round"
            worst_shifted = max(worst_shifted, float(((clf.preprocess(photo)[0] - ref).abs() * clf.std.view(3, 1, 1)).mean()))
            clf.rounding = "transformers"
    if kind == "convnext":
        assert worst_shifted * 255 > 1.0


def test_a_folder_without_processor_falls_back_and_says_so(folders):
    with pytest.warns(models.ModelNote, match="no image processor saved with the model: using the default "
                                              "ViTImageProcessor at the config's image size"):
        clf = models.load(f"hf:{folders['vit_noproc']}")
    assert clf.input_size == 32 and clf.resize == "squash" and len(clf.notes) == 1
    assert torch.allclose(clf.mean.flatten(), torch.full((3,), 0.5))  # ViTImageProcessor's default


def test_cli_prints_the_fallback_as_a_note(folders, tmp_path, capsys):
    rc, out, err = run(["explain", "sample:coffee", "--model", f"hf:{folders['vit_noproc']}", "--method", "gradcam",
                        "--out", str(tmp_path / "o")], capsys)
    assert rc == 0
    notes = [line for line in err.splitlines() if line.startswith("faithmap: note: ")]
    assert len(notes) == 1 and "default ViTImageProcessor" in notes[0]
    assert "Warning" not in err


def test_wrap_takes_a_transformers_model_as_it_is(folders):
    net = transformers.AutoModelForImageClassification.from_pretrained(folders["convnext"], local_files_only=True)
    clf = models.wrap(net)  # the processor saved beside the model (config._name_or_path) is found
    assert clf.resize_size == 36 and clf.interpolation == "bicubic" and clf.notes == []
    assert clf.class_names == list(LABELS.values()) and clf.cam_layer == "convnext.encoder.stages.1"
    other = models.wrap(make("convnext"), processor=processors()["convnext"])
    assert other.resize_size == 36 and other.notes == []
    assert models.wrap(make("convnext"), processor=processors()["convnext"], input_size=64).resize_size == 73
    with pytest.warns(models.ModelNote):
        assert models.wrap(make("vit")).input_size == 32  # no processor anywhere: the type's default


# ----------------------------------------------------------------------------------------------
# Grad-CAM against a literal reference on the same layer; the model left as it was
# ----------------------------------------------------------------------------------------------
def literal_gradcam(net, layer, x, target, grid):
    kept = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    try:
        logits = net(pixel_values=x).logits
        (g,) = torch.autograd.grad(logits[:, target].sum(), kept["a"])
    finally:
        handle.remove()
    A, G = grid(kept["a"].detach()), grid(g)
    w = G.mean((2, 3))
    return torch.relu((w[:, :, None, None] * A).sum(1)), w


def tokens(prefix, gh, gw):
    return lambda t: t[:, prefix:, :].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind, layer, grid", [
    ("vit", ".1.layernorm_before", tokens(1, 4, 4)),  # [CLS] + 4 x 4 patches of 8 px
    ("convnext", "convnext.encoder.stages.1", lambda t: t),  # (B, C, h, w)
    ("swin", "swin.layernorm", tokens(0, 4, 4)),  # the last stage's 4 x 4 tokens, no class token
    ("deit", ".1.layernorm_before", tokens(2, 4, 4)),  # class and distillation tokens before the patches
    ("resnet", "resnet.encoder.stages.1", lambda t: t),
])
def test_gradcam_equals_a_literal_reference(kind, layer, grid):
    net = make(kind)
    net.train()
    clf = models.wrap(net, processor=processors()[kind])
    assert clf.cam_layer.endswith(layer)  # the last encoder block (transformers 4: encoder.layer.1, 5: layers.1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = model_state(net)
    e = faithmap.explain(clf, x, "gradcam", target=torch.tensor([4, 0]))
    assert_state_equal(before, model_state(net))
    assert net.training
    net.eval()
    refs = [literal_gradcam(net, clf.cam_layer, x[i:i + 1], t, grid) for i, t in enumerate((4, 0))]
    ref, w = torch.cat([r[0] for r in refs]), torch.cat([r[1] for r in refs])
    assert ref.max() > 0 and w.abs().min() > 0
    assert e.saliency.shape == ref.shape
    torch.testing.assert_close(e.extras["weights"], w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))
    torch.testing.assert_close(e.saliency, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_other_methods_leave_the_model_unchanged():
    net = make("vit")
    net.train()
    clf = models.wrap(net, processor=processors()["vit"])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = model_state(net)
    for method, params in (("ig", dict(steps=4)), ("igos", dict(iterations=2, ig_steps=2, resolution=4)),
                           ("ablationcam", {}), ("rise", dict(n_masks=8))):
        e = faithmap.explain(clf, x, method, **params)
        assert torch.isfinite(e.saliency).all()
        assert_state_equal(before, model_state(net))
    assert net.training


# ----------------------------------------------------------------------------------------------
# the command line, end to end
# ----------------------------------------------------------------------------------------------
METHODS = [
    ("igos", ["--fast", "--param", "iterations=2", "--param", "ig_steps=3", "--resolution", "8"], None),
    ("gradcam", [], 1),
    ("saliency", [], 1),
    ("ig", ["--fast"], 8),
    ("rise", ["--param", "n_masks=16"], 16),
]


def independent_probabilities(kind, photo):
    proc = processors()[kind]
    with torch.no_grad():
        logits = make(kind)(**proc(Image.fromarray(photo), return_tensors="pt")).logits
    return torch.softmax(logits, 1)[0]


@pytest.mark.parametrize("method, extra, images", METHODS, ids=[m[0] for m in METHODS])
@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_cli_explain(folders, tmp_path, capsys, no_network, kind, method, extra, images):
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", "sample:coffee", "--model", f"hf:{folders[kind]}", "--method", method,
                           "--device", "cpu", "--out", str(out), *extra], capsys)
    assert rc == 0, err
    assert err.strip() == "" or "faithmap: note" not in err  # the folder has a processor: nothing to say
    summary = json.loads(next(out.glob("*_summary.json")).read_text())
    sal = np.load(next(out.glob("*_map.npy")))
    assert np.isfinite(sal).all() and sal.shape == tuple(summary["map_resolution"])
    if images is not None:
        assert summary["model_images"]["images"] == images
    probs = independent_probabilities(kind, load_sample("coffee"))
    for entry in summary["top5"]:
        assert entry["name"] == LABELS[entry["class"]]
        assert abs(entry["probability"] - float(probs[entry["class"]])) < 2e-3


@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_cli_evaluate(folders, tmp_path, capsys, kind):
    photo = tmp_path / "coffee.png"
    Image.fromarray(load_sample("coffee")).save(photo)
    out = tmp_path / "eval"
    rc, stdout, err = run(["evaluate", "--methods", "gradcam", "--metrics", "deletion", "--images", str(photo),
                           "--model", f"hf:{folders[kind]}", "--fast", "--device", "cpu", "--no-progress",
                           "--out", str(out)], capsys)
    assert rc == 0, err
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    row = rows[0]
    assert len(rows) == 1 and row["method"] == "gradcam" and 0 <= float(row["value"]) <= 1
    probs = independent_probabilities(kind, load_sample("coffee"))
    assert row["target_name"] == LABELS[int(probs.argmax())]
    assert abs(float(row["target_prob"]) - float(probs.max())) < 2e-3


# ----------------------------------------------------------------------------------------------
# bad inputs: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------
BAD = [
    (lambda f, p: ["--model", f"hf:{p / 'nowhere'}"], "no such folder"),
    (lambda f, p: ["--model", f"hf:{f['empty']}"], "is not a saved transformers model: it has no config.json"),
    (lambda f, p: ["--model", f"hf:{os.path.join(f['vit'], 'config.json')}"], "is a file, not a folder"),
    (lambda f, p: ["--model", f"hf:{f['config_only']}"], "has a config.json but no weights"),
    (lambda f, p: ["--model", f"hf:{f['bert']}"], "holds a bert model, which is not an image classifier"),
    (lambda f, p: ["--model", f"hf:{f['vit_headless']}"], "are not in the folder (e.g. classifier.bias)"),
    (lambda f, p: ["--model", f"hf:{f['relabelled']}"], "differ in shape, e.g. classifier.bias: 5 in the file, 7"),
    (lambda f, p: ["--model", f"hf:{f['vit']}", "--weights", f["vit"]], "takes its weights from its folder"),
    (lambda f, p: ["--model", "hf:"], "hf: needs a folder"),
]


@pytest.mark.parametrize("args, needle", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_inputs_are_one_line(folders, tmp_path, capsys, no_network, args, needle):
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", "sample:coffee", *args(folders, tmp_path), "--method", "gradcam",
                           "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("faithmap: error: "), err
    assert needle in lines[0]
    assert not out.exists()


def test_pytorch_model_bin_folders(tmp_path):
    """A folder with pytorch_model.bin (older save_pretrained) loads; one whose .bin pickles objects is
    refused in our own words, without torch's advice to set weights_only=False."""
    net = make("vit")
    vit_config().save_pretrained(tmp_path / "bin")
    torch.save(net.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.warns(models.ModelNote):  # no processor saved: the fallback is said
        clf = models.load(f"hf:{tmp_path / 'bin'}")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(clf(x), net(pixel_values=x).logits, rtol=1e-4, atol=1e-5)
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(FaithmapError) as info:
        models.load(f"hf:{tmp_path / 'bin'}")
    assert "never unpickles code" in str(info.value) and "weights_only" not in str(info.value)


def test_zero_labels_is_one_line(tmp_path):
    transformers.ViTForImageClassification(vit_config()).save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {}, {}
    cfg["num_labels"] = 0
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FaithmapError, match="0 labels"):
        models.load(f"hf:{tmp_path / 'm'}")
