"""Drawing: no pyplot and no backend change, the notebook figure of an explanation, signed maps."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

import faithmap
from faithmap import viz
from faithmap.explanation import Explanation
from faithmap.viz.draw import colorize, overlay, to_image

SRC = pathlib.Path(faithmap.__file__).parent


def test_the_package_never_uses_pyplot_or_switches_the_backend():
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "pyplot" in node.module:
                offenders.append(f"{path.name}: from {node.module} import")
            elif isinstance(node, ast.ImportFrom) and node.module == "matplotlib" and any(
                    a.name == "pyplot" for a in node.names):
                offenders.append(f"{path.name}: from matplotlib import pyplot")
            elif isinstance(node, ast.Import) and any("pyplot" in a.name for a in node.names):
                offenders.append(f"{path.name}: import pyplot")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"):
                offenders.append(f"{path.name}: matplotlib.use")
    assert not offenders, offenders


BACKEND_SCRIPT = textwrap.dedent("""
    import json, sys
    import matplotlib
    seen = {"start": matplotlib.get_backend()}
    import numpy as np
    import torch
    import faithmap
    seen["import"] = matplotlib.get_backend()
    from faithmap import viz
    from faithmap.viz.evaluate import save_heatmap_grid, save_mean_curves
    from faithmap.viz.sanity import save_randomisation_plot
    out = sys.argv[1]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model = faithmap.models.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), input_size=32, class_names=["a", "b", "c"])
    exp = faithmap.explain(model, torch.rand(2, 3, 32, 32), "gradxinput")
    exp.show(curves=True).savefig(out + "/show.png")
    exp._repr_png_()
    viz.save_heatmap(out + "/heatmap.png", exp.pixels[0], exp.saliency[0], "t")
    seen["draw"] = matplotlib.get_backend()
    fr = np.linspace(0, 1, 5)
    save_mean_curves(out + "/curves.png", [("m", fr, 1 - fr, fr, 2)], "report")
    save_heatmap_grid(out + "/grid.png", [("img", np.zeros((32, 32, 3)), [[1, 1, 9, 9]])], ["m"],
                      {(0, 0): np.random.rand(4, 4)}, {(0, 0): (3, 3)}, "grid")
    save_randomisation_plot(out + "/sanity.png", ["a", "b"], {k: torch.rand(2, 2) for k in
                            ("spearman", "spearman_abs", "ssim")}, "sanity", maps=[torch.rand(1, 4, 4)] * 2,
                            image=torch.rand(3, 32, 32))
    seen["report"] = matplotlib.get_backend()
    seen["pyplot"] = "matplotlib.pyplot" in sys.modules
    print(json.dumps(seen))
""")


@pytest.mark.parametrize("backend", ["svg", "pdf"])
def test_import_and_drawing_leave_the_users_backend_alone(tmp_path, backend):
    """A notebook's or GUI's backend survives importing faithmap, drawing an explanation and the
    evaluate report's pictures; the files are still written (no display here)."""
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["MPLBACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC.parent), os.environ.get("PYTHONPATH")) if p)
    script = tmp_path / "draw.py"
    script.write_text(BACKEND_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["start"] == backend
    assert seen["import"] == seen["draw"] == seen["report"] == backend
    assert seen["pyplot"] is False
    for name in ("show", "heatmap", "curves", "grid", "sanity"):
        arr = np.asarray(Image.open(tmp_path / f"{name}.png"))
        assert arr.shape[0] > 100 and arr.std() > 5, name


def _tiny_model(classes=("cat", "dog", "cow")):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, len(classes)))
    return faithmap.models.wrap(net.eval(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32,
                                class_names=list(classes))


def test_show_draws_the_photo_and_the_overlay_and_the_curves(patch_model, patch_input):
    x = patch_model.normalize(patch_input.repeat(2, 1, 1, 1))
    exp = faithmap.explain(patch_model, x, "occlusion", patch=8, stride=4, target=0)
    fig = exp.show()
    assert isinstance(fig, Figure)
    photo, over = fig.axes[0], fig.axes[1]
    shown = photo.get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), to_image(patch_input[0]), atol=1e-6)  # the photo itself
    np.testing.assert_allclose(np.asarray(over.get_images()[0].get_array()),
                               overlay(patch_input[0], exp.saliency[0]), atol=1e-6)
    assert "image 0" in photo.get_title() and "occlusion" in over.get_title()
    # two rows, each photo + overlay + colour bar
    assert len([a for a in fig.axes if a.get_images()]) == 4
    # the same through faithmap.viz.show, one image, with curves computed on request
    fig2 = viz.show(exp, 1, curves=True)
    curves = exp.curves()
    line = fig2.axes[2].get_lines()[0]  # the deletion curve of image 1 (axes: photo, overlay, curves, colour bar)
    np.testing.assert_allclose(line.get_ydata(), curves.deletion[1].numpy(), atol=1e-6)
    assert "AUC" in fig2.axes[2].get_legend().get_texts()[0].get_text()


def test_show_saves_a_real_picture(tmp_path):
    model = _tiny_model()
    exp = faithmap.explain(model, torch.rand(1, 3, 32, 32), "saliency")
    exp.show().savefig(tmp_path / "x.png")
    arr = np.asarray(Image.open(tmp_path / "x.png"))
    assert arr.shape[1] > 300 and arr.std() > 10
    png = exp._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert exp.show()._repr_png_().startswith(b"\x89PNG")  # the figure displays itself in a notebook too


def test_curves_need_a_living_model_or_model_argument():
    model = _tiny_model()
    exp = faithmap.explain(model, torch.rand(1, 3, 32, 32), "saliency")
    ref = exp.curves()
    del model
    import gc

    gc.collect()
    with pytest.raises(faithmap.FaithmapError, match="pass model="):
        exp.curves()  # the explanation kept no strong reference: the model is gone
    again = exp.curves(_tiny_model())
    torch.testing.assert_close(again.deletion, ref.deletion)


def test_signed_maps_are_centred_at_zero_and_symmetric():
    s = torch.tensor([[-2.0, 0.0], [1.0, 2.0]])
    c = colorize(s, (2, 2))
    mid = colormaps["RdBu_r"](0.5)[:3]
    np.testing.assert_allclose(c[0, 1], mid, atol=1e-6)  # 0 is the centre colour, not the minimum's
    assert c[1, 1][0] > c[1, 1][2] and c[0, 0][2] > c[0, 0][0]  # positive red, negative blue
    mirrored = colorize(-s, (2, 2))
    np.testing.assert_allclose(mirrored[0, 0], c[1, 1], atol=1e-6)  # symmetric limits: -2 and 2 swap colours
    # an outlier does not wash out the rest (limits at the 99th percentile of |s|)
    big = torch.zeros(20, 20)
    big[0, 0] = 100.0
    big[5:10, 5:10] = 1.0
    big[12:15, 12:15] = -1.0
    assert viz.is_signed(big)
    col = colorize(big, (20, 20))
    np.testing.assert_allclose(col[7, 7], colormaps["RdBu_r"](1.0)[:3], atol=1e-6)  # full red, not near-white
    np.testing.assert_allclose(col[13, 13], colormaps["RdBu_r"](0.0)[:3], atol=1e-6)  # full blue


def test_non_negative_maps_keep_the_min_max_jet_look():
    s = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    expected = colormaps["jet"](np.array([[0.0, 0.25], [0.5, 1.0]]))[..., :3]
    np.testing.assert_allclose(colorize(s, (2, 2)), expected, atol=1e-6)
    img = np.full((2, 2, 3), 0.2)
    np.testing.assert_allclose(overlay(img, s), 0.5 * img + 0.5 * expected, atol=1e-6)


def test_signed_overlay_leaves_the_photo_where_attribution_is_zero():
    img = np.zeros((2, 2, 3))
    img[..., 1] = 1.0  # green
    s = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    out = overlay(img, s)
    grey = 0.35 + 0.55 * 0.587
    np.testing.assert_allclose(out[0, 0], [grey] * 3, atol=1e-6)  # the (grey) photo, untinted
    assert out[0, 1][0] > out[0, 1][2] and out[1, 0][2] > out[1, 0][0]


def test_signed_explanation_gets_a_symmetric_colour_bar():
    model = _tiny_model()
    exp = faithmap.explain(model, torch.rand(1, 3, 32, 32), "gradxinput")
    assert (exp.saliency < 0).any() and (exp.saliency > 0).any()
    fig = exp.show()
    bar = fig.axes[-1]
    lo, hi = bar.get_ylim()
    assert lo == pytest.approx(-hi) and hi > 0
    assert "signed" in bar.get_ylabel()


def test_constant_map_is_flagged_in_the_picture():
    exp = Explanation(saliency=torch.zeros(1, 4, 4), target=torch.tensor([0]), method="igos",
                      inputs=torch.rand(1, 3, 16, 16))
    fig = exp.show()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("constant map" in t for t in texts)
