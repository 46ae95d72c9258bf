"""The Explanation a newcomer gets back: its short repr, its warnings, its progress, its default method,
and models that describe themselves (class names, mean/std, input size) from Python."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

import faithmap
from faithmap import models
from faithmap.api import DEFAULT_METHOD, TqdmProgress
from faithmap.errors import FaithmapError
from faithmap.explanation import Explanation, map_problems


def tiny(classes=("cat", "dog", "cow"), zero: bool = False):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    head = nn.Linear(4, len(classes))
    if zero:  # the logits do not depend on the input: every gradient map is 0
        with torch.no_grad():
            head.weight.zero_()
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return models.wrap(net.eval(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32,
                       class_names=list(classes))


# ----------------------------------------------------------------------------------------------
# repr, pixels, pickling
# ----------------------------------------------------------------------------------------------
def test_repr_is_a_few_lines_with_names_not_tensors():
    model = tiny()
    x = torch.rand(2, 3, 32, 32)
    exp = faithmap.explain(model, x, "gradcam", target=[1, 2])
    text = repr(exp)
    lines = text.splitlines()
    assert len(lines) <= 3 and len(text) < 400, text
    assert lines[0].startswith("Explanation(gradcam on custom: 2 images, ")
    assert "model images" in lines[0] and " s, " in lines[0]
    grid = "x".join(map(str, exp.saliency.shape[-2:]))
    assert f"{grid} maps" in lines[0]
    assert "1 'dog', 2 'cow'" in lines[1]
    assert "tensor(" not in text and str(exp) == text


def test_pixels_come_back_from_the_inputs_without_a_copy_or_the_model():
    model = tiny()
    photos = torch.rand(2, 3, 32, 32)
    x = model.normalize(photos)
    exp = faithmap.explain(model, x, "saliency")
    assert exp.inputs.data_ptr() == x.data_ptr()  # a reference, not a copy
    torch.testing.assert_close(exp.pixels, photos, atol=1e-6, rtol=0)
    assert exp.model_ref() is model
    back = pickle.loads(pickle.dumps(exp))  # the weak reference does not travel
    assert back.model_ref is None and torch.equal(back.saliency, exp.saliency)
    one = exp.select(1)
    torch.testing.assert_close(one.pixels, photos[1], atol=1e-6, rtol=0)
    part = exp.select([1])
    assert part.target_names == [exp.target_names[1]] and len(part) == 1


# ----------------------------------------------------------------------------------------------
# maps that show nothing
# ----------------------------------------------------------------------------------------------
def test_map_problems_name_constant_and_nan_maps():
    s = torch.rand(4, 3, 3)
    s[1] = 0.0
    s[2, 1, 1] = float("nan")
    s[3] = 0.25
    p = map_problems(s)
    assert p[0] is None
    assert p[1].startswith("constant map: every cell is 0,")
    assert p[2].startswith("map with NaN: 1 of its 9 cells")
    assert p[3].startswith("constant map: every cell is 0.25,")
    exp = Explanation(saliency=s, target=torch.zeros(4, dtype=torch.long), method="igos")
    assert [w.split(":")[0] for w in exp.warnings] == ["image 1", "image 2", "image 3"]
    assert all("\n" not in w for w in exp.warnings)
    assert "warning: image 1: constant map" in repr(exp) and "(and 2 more" in repr(exp)


def test_explain_reports_an_all_zero_map():
    model = tiny(zero=True)
    exp = faithmap.explain(model, torch.rand(2, 3, 32, 32), "saliency")
    assert (exp.saliency == 0).all()
    assert len(exp.warnings) == 2 and "constant map: every cell is 0" in exp.warnings[0]
    ok = faithmap.explain(tiny(), torch.rand(2, 3, 32, 32), "saliency")
    assert ok.warnings == []


# ----------------------------------------------------------------------------------------------
# the default method and progress
# ----------------------------------------------------------------------------------------------
def test_default_method_is_gradcam():
    assert DEFAULT_METHOD == "gradcam"
    model = tiny()
    x = torch.rand(1, 3, 32, 32)
    exp = faithmap.explain(model, x)
    assert exp.method == "gradcam"
    torch.testing.assert_close(exp.saliency, faithmap.explain(model, x, "gradcam").saliency)


PROGRESS_CASES = [
    ("igos", dict(resolution=4, iterations=3, ig_steps=2), 3, "iteration"),
    ("igos++", dict(resolution=4, iterations=2, ig_steps=2), 2, "iteration"),
    ("mask", dict(resolution=4, iterations=4), 4, "iteration"),
    ("extremal", dict(resolution=4, iterations=3), 3, "iteration"),
    ("rise", dict(n_masks=10, batch_size=4), 5, "batch"),  # 2 images x 10 masks in batches of 4
    ("occlusion", dict(patch=16, stride=16, batch_size=3), 3, "batch"),  # 2 x 4 windows in batches of 3
]


@pytest.mark.parametrize("method, params, steps, unit", PROGRESS_CASES, ids=[c[0] for c in PROGRESS_CASES])
def test_progress_reports_steps_and_changes_nothing(patch_model, patch_input, method, params, steps, unit):
    x = patch_model.normalize(torch.cat([patch_input, patch_input.flip(-1)]))
    calls = []
    heard = faithmap.explain(patch_model, x, method, target=0, seed=3, progress=lambda *a: calls.append(a), **params)
    quiet = faithmap.explain(patch_model, x, method, target=0, seed=3, **params)
    assert calls == [(i, steps, unit) for i in range(steps + 1)]
    torch.testing.assert_close(heard.saliency, quiet.saliency, rtol=0, atol=1e-6)
    assert heard.counts == quiet.counts


def test_progress_reaches_the_mask_stage_of_sigcam(patch_model, patch_input):
    x = patch_model.normalize(patch_input)
    calls = []
    faithmap.explain(patch_model, x, "sigcam", target=0, iterations=2, refine_params={"ig_steps": 2},
                     progress=lambda *a: calls.append(a))
    assert calls[-1] == (2, 2, "iteration")


def test_progress_true_draws_a_bar_on_stderr_and_default_is_silent(patch_model, patch_input, capsys):
    x = patch_model.normalize(patch_input)
    faithmap.explain(patch_model, x, "igos", target=0, resolution=4, iterations=3, ig_steps=2)
    assert capsys.readouterr().err == ""
    faithmap.explain(patch_model, x, "igos", target=0, resolution=4, iterations=3, ig_steps=2, progress=True)
    err = capsys.readouterr().err
    assert "igos" in err and "3/3" in err and "iteration" in err
    with pytest.raises(FaithmapError, match="progress must be"):
        faithmap.explain(patch_model, x, "gradcam", target=0, progress="yes")


def test_tqdm_progress_restarts_for_a_new_engine_run(capsys):
    bar = TqdmProgress("m", disable=False)
    for done in range(3):
        bar(done, 2, "iteration")
    bar(0, 5, "batch")
    assert bar.bar.total == 5 and bar.bar.n == 0
    bar.close()
    assert bar.bar is None


# ----------------------------------------------------------------------------------------------
# models that describe themselves, from Python
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    return str(path)


def test_load_takes_class_names_mean_std_and_input_size(r18_weights, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"2": "cow", "0": "cat", "1": "dog"}))
    clf = models.load("resnet18", weights=r18_weights, class_names=str(names), mean=(0.5, 0.4, 0.3),
                      std=(0.2, 0.2, 0.2), input_size=64)
    assert clf.class_names == ["cat", "dog", "cow"] and clf.input_size == 64
    assert clf.resize_size == round(64 * 256 / 224)  # the resize step scales with the crop
    torch.testing.assert_close(clf.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    x = clf.preprocess(torch.rand(3, 100, 120))
    assert x.shape == (1, 3, 64, 64)
    exp = faithmap.explain(clf, x, "gradcam", target="cow")
    assert int(exp.target[0]) == 2 and exp.target_names == ["cow"]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(class_names=["a", "b"]), "2 class names for a model with 3 classes"),
    (dict(class_names="/no/such/names.txt"), "class names file not found"),
    (dict(mean=("a", 0, 0)), "mean must be numbers"),
    (dict(std=(0.2, 0.0, 0.2)), "std must be positive"),
    (dict(mean=(0.1, 0.2)), "mean must have 3 values"),
    (dict(input_size=16), "input size must be 32 to 4096"),
])
def test_load_refuses_bad_descriptions_in_one_line(r18_weights, kwargs, needle):
    with pytest.raises(FaithmapError) as info:
        models.load("resnet18", weights=r18_weights, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_wrap_takes_a_names_file_and_checks_the_count_at_first_use(tmp_path):
    (tmp_path / "n.txt").write_text("cat\ndog\ncow\n\n")
    net = tiny().net
    clf = models.wrap(net, class_names=tmp_path / "n.txt", input_size=32)
    assert clf.class_names == ["cat", "dog", "cow"]
    wrong = models.wrap(net, class_names=["a", "b"], input_size=32)
    with pytest.raises(FaithmapError, match="2 class names for a model with 3 classes"):
        faithmap.explain(wrong, torch.rand(1, 3, 32, 32), "saliency")
    with pytest.raises(FaithmapError, match="class indices must run from 0"):
        models.wrap(net, class_names={0: "a", 2: "c"})
    with pytest.raises(FaithmapError, match="std must be positive"):
        models.wrap(net, std=(1, -1, 1))
