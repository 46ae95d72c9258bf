"""GAD (Mazini Rodrigues, Boutry & Najman, 2024): distanced targets, support models (cache, resume), GAD maps, hull metrics, CLI."""

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import faithmap
from faithmap.cli import main
from faithmap.errors import FaithmapError
from faithmap.gad import TensorImages, distanced_targets, load_supports, support_models, train_support
from faithmap.metrics.regions import (convex_hull_mask, hull_area, hull_masks, important_pixels, region_complexity,
                                      region_sensitivity_of_masks, supplementary_mask)
from faithmap.methods.gad import gad_maps
from faithmap.models import wrap

from conftest import assert_state_equal, model_state


# ----------------------------------------------------------------------------------------------
# tiny models and data
# ----------------------------------------------------------------------------------------------
class TinyCNN(nn.Module):
    def __init__(self, classes=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(6 * 6 * 6, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def tiny(seed=0, classes=2):
    return wrap(TinyCNN(classes, seed).eval(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=12,
                class_names=[f"c{i}" for i in range(classes)], cam_layer="features.0", name=f"tiny{seed}")


def tiny_data(n=16, seed=0, classes=(0, 1)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 12, 12, generator=g)
    y = torch.tensor([classes[i % 2] for i in range(n)])
    return TensorImages(x, y)


# ----------------------------------------------------------------------------------------------
# sec. 4.1: distanced targets
# ----------------------------------------------------------------------------------------------
def test_distanced_targets_literal():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    labels = torch.tensor([0, 2, 0])
    out = distanced_targets(logits, labels, (0, 2), 2.0)
    # images of class 0 lose alpha on logit 2, images of class 2 lose alpha on logit 0; nothing else moves
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 1.0], [2.0, 5.0, 6.0], [7.0, 8.0, 7.0]]))
    pair = distanced_targets(logits, labels, (0, 2), (1.0, 3.0))
    assert torch.equal(pair, torch.tensor([[1.0, 2.0, 2.0], [1.0, 5.0, 6.0], [7.0, 8.0, 8.0]]))
    assert torch.equal(logits, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]))  # input kept
    with pytest.raises(FaithmapError, match="class 0 or 2"):
        distanced_targets(logits, torch.tensor([0, 1, 2]), (0, 2), 1.0)
    with pytest.raises(FaithmapError, match="differ"):
        distanced_targets(logits, labels, (0, 0), 1.0)


# ----------------------------------------------------------------------------------------------
# sec. 4.2: support models
# ----------------------------------------------------------------------------------------------
def test_alpha_zero_reproduces_original_and_alpha_distances():
    model, data = tiny(), tiny_data()
    before = model_state(model)
    sup = support_models(model, data, (0, 1), [0.0, 2.0], epochs=8, lr=3e-3, batch_size=16, use_cache=False,
                         progress=False)
    assert_state_equal(before, model_state(model))  # the user's model is untouched
    with torch.no_grad():
        z = model(data.x)
        z0 = sup.models[0](data.x)
        z2 = sup.models[1](data.x)
    assert sup.fit_mse[0] < 1e-10 and torch.allclose(z0, z, atol=1e-6)
    # alpha = 2 on 2 logits: the original outputs are off by alpha on one logit of each row
    initial = 2.0 ** 2 / 2
    assert sup.fit_mse[1] < 0.5 * initial
    own, other = data.labels, 1 - data.labels
    margin = lambda o: o.gather(1, own.view(-1, 1)) - o.gather(1, other.view(-1, 1))  # noqa: E731
    gained = (margin(z2) - margin(z)).mean()
    assert 0.5 < float(gained) < 3.0


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    model, data = tiny(), tiny_data()
    targets = distanced_targets(model(data.x).detach(), data.labels, (0, 1), 3.0)
    full = train_support(model, data, targets, epochs=4, lr=1e-2, batch_size=8, seed=1, progress=False)
    ckpt = str(tmp_path / "run.ckpt")

    def stop_after_two(epoch, loss):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_support(model, data, targets, epochs=4, lr=1e-2, batch_size=8, seed=1, checkpoint=ckpt,
                      callback=stop_after_two, progress=False)
    assert os.path.isfile(ckpt)
    resumed = train_support(model, data, targets, epochs=4, lr=1e-2, batch_size=8, seed=1, checkpoint=ckpt,
                            progress=False)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 2
    assert resumed.losses == pytest.approx(full.losses)
    for p, q in zip(full.net.parameters(), resumed.net.parameters()):
        assert torch.equal(p, q)


def test_fit_trains_past_epochs_until_the_loss_criterion(tmp_path):
    model, data = tiny(), tiny_data()
    z = model(data.x).detach()
    targets = distanced_targets(z, data.labels, (0, 1), 3.0)
    initial = 3.0 ** 2 / 2  # one of the two logits of every row is off by alpha
    kw = dict(lr=1e-2, batch_size=8, seed=1, progress=False)
    res = train_support(model, data, targets, epochs=2, fit=0.2, max_epochs=200, **kw)
    n = len(res.losses)
    assert res.initial_mse == pytest.approx(initial, rel=1e-6)
    assert 2 < n < 200 and res.losses[-1] <= 0.2 * initial
    assert all(lo > 0.2 * initial for lo in res.losses[1:-1])  # it stops at the first epoch that fits
    # fit only lengthens training: the same run for exactly n epochs gives the same weights
    fixed = train_support(model, data, targets, epochs=n, **kw)
    assert fixed.losses == pytest.approx(res.losses)
    assert all(torch.equal(p, q) for p, q in zip(fixed.net.parameters(), res.net.parameters()))
    # the cap holds when the criterion cannot be met
    capped = train_support(model, data, targets, epochs=2, fit=1e-9, max_epochs=4, **kw)
    assert len(capped.losses) == 4
    # an interrupted fit run resumes from its checkpoint to the same result
    ckpt = str(tmp_path / "fit.ckpt")

    def stop(epoch, loss):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_support(model, data, targets, epochs=2, fit=0.2, max_epochs=200, checkpoint=ckpt, callback=stop, **kw)
    resumed = train_support(model, data, targets, epochs=2, fit=0.2, max_epochs=200, checkpoint=ckpt, **kw)
    assert resumed.resumed_from == 3 and resumed.losses == pytest.approx(res.losses)
    with pytest.raises(FaithmapError, match="fit must be in"):
        train_support(model, data, targets, epochs=2, fit=1.5, **kw)


def test_cache_resume_and_reuse(tmp_path):
    model, data = tiny(), tiny_data()
    calls = []

    def interrupt(alpha, epoch, loss):
        calls.append((alpha, epoch))
        if alpha == 4.0 and epoch == 1:
            raise KeyboardInterrupt

    kw = dict(epochs=2, lr=1e-2, batch_size=8, cache_dir=str(tmp_path), progress=False)
    with pytest.raises(KeyboardInterrupt):
        support_models(model, data, (0, 1), [2.0, 4.0], callback=interrupt, **kw)
    (entry,) = os.listdir(tmp_path)
    files = sorted(os.listdir(tmp_path / entry))
    assert files == ["alpha-2.pt", "alpha-4.ckpt", "meta.json"]
    calls.clear()
    second = support_models(model, data, (0, 1), [2.0, 4.0], callback=interrupt, **kw)
    assert second.cached == [True, False] and calls == [(4.0, 2)]  # alpha 2 from cache; alpha 4 resumed at epoch 2
    assert sorted(os.listdir(tmp_path / entry)) == ["alpha-2.pt", "alpha-4.pt", "meta.json"]
    calls.clear()
    third = support_models(model, data, (0, 1), [4.0, 2.0], callback=interrupt, **kw)
    assert third.cached == [True, True] and calls == []
    x = data.x[:3]
    assert torch.equal(third.models[0](x), second.models[1](x))
    # the key: other data, other weights or other settings give another entry
    support_models(model, tiny_data(seed=5), (0, 1), [2.0], **kw)
    support_models(tiny(seed=3), data, (0, 1), [2.0], **kw)
    support_models(model, data, (0, 1), [2.0], **{**kw, "lr": 2e-2})
    assert len(os.listdir(tmp_path)) == 4
    fitted = support_models(model, data, (0, 1), [2.0], **{**kw, "fit": 0.5, "max_epochs": 6})
    assert len(os.listdir(tmp_path)) == 5 and fitted.meta["fit"] == 0.5 and fitted.meta["max_epochs"] == 6
    assert 3 <= len(fitted.losses[0]) <= 6
    loaded = load_supports(model, str(tmp_path / entry))
    assert [m.name for m in loaded] == ["tiny0-gad2", "tiny0-gad4"]
    assert torch.equal(loaded[1](x), second.models[1](x))


# ----------------------------------------------------------------------------------------------
# sec. 5: hulls and RS
# ----------------------------------------------------------------------------------------------
def test_hull_area_of_analytic_shapes():
    from scipy.spatial import ConvexHull

    img = torch.zeros(3, 20, 20, dtype=torch.bool)
    img[0, 3:9, 5:15] = True  # filled 6 x 10 rectangle
    n = 10  # right triangle: only its three corner pixels are set
    img[1, 2, 2] = img[1, 2, 2 + n] = img[1, 2 + n, 2] = True
    img[2, 4, 1] = img[2, 4, 12] = True  # two pixels on a row: the segment between them
    hull = convex_hull_mask(img)
    area = hull_area(hull)
    assert area.tolist() == [60.0, (n + 1) * (n + 2) / 2, 12.0]  # Pick: n^2/2 + 3n/2 + 1 lattice points
    assert torch.equal(hull[0], img[0])
    segment = torch.zeros(20, 20, dtype=torch.bool)
    segment[4, 1:13] = True
    assert torch.equal(hull[2], segment)
    # the polygon through the triangle's pixel centres has area n^2 / 2, and every pixel centre on
    # or inside it is in the mask, nothing else
    pts = np.array([[2, 2], [2, 2 + n], [2 + n, 2]])
    assert ConvexHull(pts).volume == pytest.approx(n * n / 2)
    rows, cols = np.nonzero(hull[1].numpy())
    assert ((rows - 2) + (cols - 2) <= n).all() and (rows >= 2).all() and (cols >= 2).all()
    assert hull_area(convex_hull_mask(torch.zeros(1, 5, 5, dtype=torch.bool))).tolist() == [0.0]
    one = torch.zeros(1, 5, 5, dtype=torch.bool)
    one[0, 2, 3] = True
    assert torch.equal(convex_hull_mask(one), one)


def test_important_pixels_and_rc():
    s = torch.tensor([[[5.0, 4.0, 0.0, -1.0], [3.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 6.0]]])
    top = important_pixels(s, 0.25)  # 4 of 16 pixels: 6, 5, 4, 3
    assert top[0].nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [3, 3]]
    half = important_pixels(s, 0.5)  # 8 pixels requested, only 6 positive ones exist
    assert int(half.sum()) == 6 and not half[0, 0, 3] and not half[0, 0, 2]
    rel = important_pixels(s, 0.5, mode="relative")  # >= 3 = half the maximum
    assert rel[0].nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [3, 3]]
    with pytest.raises(FaithmapError, match="hull mode"):
        important_pixels(s, 0.5, mode="nope")
    orig = torch.zeros(1, 10, 10)
    orig[0, 0:4, 0:5] = 1.0
    gad = torch.zeros(1, 10, 10)
    gad[0, 1:3, 1:3] = 1.0
    # hulls of the top-50% pixels with value > 0: the 4x5 and 2x2 blocks
    assert region_complexity(orig, gad).tolist() == [pytest.approx(4 / 20)]
    m_o, m_g = hull_masks(orig), hull_masks(gad)
    assert int(supplementary_mask(m_o, m_g).sum()) == 16


class Linear2(nn.Module):
    """logit_0 = sum over pixels of W * channel-mean(x); logit_1 = 0."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        z = (x.mean(1) * self.w).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_rs_against_hand_computation():
    w = torch.arange(36, dtype=torch.float32).view(6, 6) / 10
    # inputs in pixel space: occluding sets pixels to 0
    plain = wrap(Linear2(w), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=6)
    x = torch.ones(1, 3, 6, 6)
    m = torch.zeros(1, 6, 6, dtype=torch.bool)
    m[0, 1:3, 2:5] = True  # 6 pixels
    hand = float(w[1:3, 2:5].sum()) / 6
    rs = region_sensitivity_of_masks(plain, x, m, torch.tensor([0]))
    assert rs.item() == pytest.approx(hand)
    # normalised inputs: pixel 1 is input 1, black (pixel 0) is input -1, so the logit drops by 2 * sum W
    norm = wrap(Linear2(w), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=6)
    assert region_sensitivity_of_masks(norm, x, m, torch.tensor([0])).item() == pytest.approx(2 * hand)
    assert region_sensitivity_of_masks(norm, x, m, torch.tensor([1])).item() == 0.0
    assert torch.isnan(region_sensitivity_of_masks(plain, x, torch.zeros_like(m), torch.tensor([0]))).all()
    # the registered metric on a map whose top half is the same block (hull = block)
    spec = faithmap.METRICS.get("region_sensitivity")
    sal = torch.zeros(1, 6, 6)
    sal[0, 1:3, 2:5] = 1.0
    assert spec.fn(plain, x, sal, torch.tensor([0])).item() == pytest.approx(hand)
    assert spec.fn(plain, x, torch.zeros(1, 6, 6), torch.tensor([0])).item() == 0.0
    area = faithmap.METRICS.get("hull_area").fn(plain, x, sal, torch.tensor([0]))
    assert area.item() == pytest.approx(6 / 36)


# ----------------------------------------------------------------------------------------------
# sec. 4.3: GAD maps
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["saliency", "ig"])
@pytest.mark.parametrize("fraction", [0.3, 0.8])
def test_gad_never_marks_a_pixel_the_original_does_not(method, fraction):
    model = tiny(0)
    supports = [tiny(1), tiny(2)]  # unrelated random models: the intersection is far from trivial
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 0, 1])
    params = {"steps": 8} if method == "ig" else {}
    e = gad_maps(model, supports, x, t, method, fraction=fraction, base_params=params)
    orig = e.extras["original"]
    keep = e.extras["keep"]
    marked = important_pixels(orig, fraction)
    assert not (keep & ~marked).any()
    assert not (important_pixels(e.saliency, fraction) & ~marked).any()
    assert torch.equal(e.saliency[keep], orig[keep]) and (e.saliency[~keep] == 0).all()
    assert keep.sum() < marked.sum()  # the supports removed something
    assert (hull_masks(e.saliency, fraction) <= hull_masks(orig, fraction)).all()
    # the original map is the base method's own magnitude map (GAD's default channel reduction)
    ref = faithmap.explain(model, x, method, target=t, **{**params, "reduce": "abs-sum"}).saliency
    assert torch.equal(orig, ref)
    # the model itself as its only support: GAD = the original's important pixels
    same = gad_maps(model, [model], x, t, method, fraction=fraction, base_params=params)
    assert torch.equal(same.extras["keep"], marked)


def test_registered_gad_with_a_cache_folder(tmp_path):
    model, data = tiny(), tiny_data()
    sup = support_models(model, data, (0, 1), [2.0, 4.0], epochs=1, lr=1e-2, batch_size=8, cache_dir=str(tmp_path),
                         progress=False)
    x, t = data.x[:3], torch.tensor([0, 1, 1])
    before = model_state(model)
    e = faithmap.explain(model, x, "gad", target=t, base="saliency", supports=sup.directory)
    assert_state_equal(before, model_state(model))
    ref = gad_maps(model, sup.models, x, t, "saliency")
    assert torch.equal(e.saliency, ref.saliency) and e.extras["supports"] == 2
    assert e.counts["images"] >= 3 * 3  # the original and the two supports
    with pytest.raises(FaithmapError, match="no support models"):
        faithmap.explain(model, x, "gad", target=t, supports=str(tmp_path))
    with pytest.raises(FaithmapError, match="own base"):
        faithmap.explain(model, x, "gad", target=t, base="gad")


# ----------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------
def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_demo_end_to_end(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["gad", "--demo", "--arch", "cnn", "--demo-epochs", "1", "--epochs", "1", "--fit", "none", "--alphas", "2",
            "--images", "3", "--method", "saliency,ig", "--fast", "--figure-images", "2", "--cache-dir", str(cache),
            "--out", str(out), "--quiet", "--seed", "0", "--threads", "1"]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    names = sorted(os.listdir(out))
    assert names == ["gad_cnn_ig.png", "gad_cnn_saliency.png", "gad_results.json", "gad_tables.md"]
    res = json.loads((out / "gad_results.json").read_text())
    exp = res["experiments"][0]
    assert res["fit"] is None and [r["epochs"] for r in exp["supports"]] == [1]
    assert exp["eval_images"] == 6 and exp["class_names"] == ["3", "8"] and res["alphas"] == [0.0, 2.0]
    for m in ("saliency", "ig"):
        for cls in ("3", "8"):
            s = exp["methods"][m]["summary"][cls]
            assert s["rc_below_1"] + s["rc_at_least_1"] == s["rc_defined"] <= 6
            rc_vals = [v for v in exp["methods"][m]["per_image"][cls]["rc"] if v is not None]
            assert all(0 < v <= 1 for v in rc_vals)  # the GAD hull lies inside the original's
    table = (out / "gad_tables.md").read_text()
    assert "| GAD 3 (RC < 1) |" in table and "| Sup. 8 |" in table and "Table 2" in stdout
    # a second run trains nothing and gives the same numbers
    out2 = tmp_path / "out2"
    threads = torch.get_num_threads()
    rc, stdout2, err = run(argv[:-7] + ["--out", str(out2), "--quiet", "--seed", "0", "--threads", "2"], capsys)
    assert torch.get_num_threads() == threads  # --threads is restored
    assert rc == 0, err
    res2 = json.loads((out2 / "gad_results.json").read_text())
    assert res["threads"] == 1 and res2["threads"] == 2
    assert [r["threads"] for r in res2["experiments"][0]["supports"]] == [1]  # cached: trained in one thread
    assert "| yes | 1 |" in (out2 / "gad_tables.md").read_text()
    assert all(r["cached"] for r in res2["experiments"][0]["supports"])
    # Same cached models, another thread count: float sums change order, so each logit moves by a few
    # float32 ulps. RS is a logit change per occluded pixel (measured gaps: at most 3.6e-8 on values of
    # 2e-4 and up); RC is a ratio of pixel counts and only moves if two map values tie within an ulp.
    for m in ("saliency", "ig"):
        a, b = exp["methods"][m]["per_image"], res2["experiments"][0]["methods"][m]["per_image"]
        assert a.keys() == b.keys()
        for cls in a:
            assert a[cls].keys() == b[cls].keys()
            for k in a[cls]:
                assert len(a[cls][k]) == len(b[cls][k])
                for u, v in zip(a[cls][k], b[cls][k]):
                    assert (u is None) == (v is None), (m, cls, k)
                    assert u is None or math.isclose(u, v, rel_tol=1e-3, abs_tol=1e-6), (m, cls, k, u, v)


@pytest.mark.parametrize("extra, needle", [
    (["--demo", "--classes", "3", "x"], "unknown class 'x'"),
    (["--demo", "--classes", "3", "3"], "must differ"),
    (["--demo", "--method", "nosuch"], "unknown method 'nosuch'"),
    (["--demo", "--method", "gad"], "own base method"),
    (["--demo", "--alphas", "0"], "non-zero distance"),
    (["--demo", "--fraction", "1.5"], "--fraction"),
    (["--demo", "--arch", "vgg"], "unknown demo architecture"),
    (["--demo", "--fit", "2"], "--fit must be in (0, 1)"),
    (["--demo", "--fit", "tight"], "--fit must be a number"),
    (["--demo", "--epochs", "5", "--max-epochs", "3"], "--max-epochs must be at least"),
    (["--demo", "--threads", "0"], "--threads must be at least 1"),
    (["--classes", "a", "b"], "--data"),
    (["--demo", "--param", "steps=4", "--method", "saliency"], "parameter 'steps'"),
])
def test_bad_inputs_one_line(tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    rc, stdout, err = run(["gad", *extra, "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--quiet"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faithmap: error:") and needle in lines[0], err
    assert not out.exists()


def test_folder_without_class_subfolders(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    out = tmp_path / "out"
    rc, _, err = run(["gad", "--data", str(data), "--classes", "0", "1", "--model", "resnet18", "--weights", "random",
                      "--device", "cpu", "--out", str(out), "--quiet"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no sub-folder for class '0'" in lines[0] and "cats" in lines[0], err
    assert not out.exists()
    rc, _, err = run(["gad", "--data", str(tmp_path / "missing"), "--classes", "0", "1", "--out", str(out)], capsys)
    assert rc == 2 and "no such folder" in err


def test_demo_classifier_weights_do_not_depend_on_the_thread_count():
    """Training sums depend on the thread count; the demo trains in one thread whatever the caller set."""
    from faithmap.gad import demo

    data = demo.load_digits((3, 8))
    threads = torch.get_num_threads()
    weights = []
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            net = demo.train_classifier("resnet", data, 0, epochs=1).net
            assert torch.get_num_threads() == n
            weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(weights[0], weights[1])


@pytest.mark.slow
def test_demo_classifiers_reach_97_percent(tmp_path):
    from faithmap.gad import demo

    data = demo.load_digits((3, 8))
    for arch in demo.ARCHS:  # trained in one thread (see the test above)
        _, record = demo.demo_classifier(arch, data, use_cache=False)
        assert record["test_accuracy"] >= 0.97, (arch, record)


def test_folder_images_feed_support_training(tmp_path):
    from PIL import Image

    from faithmap.gad import FolderImages

    rng = np.random.default_rng(0)
    for name in ("c0", "c1"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    model = tiny()
    data = FolderImages.from_folder(model, str(tmp_path), [(["c0"], 0), (["C1"], 1)])  # names match case-insensitively
    assert len(data) == 6 and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x = data.batch(torch.tensor([0, 4]))
    assert x.shape == (2, 3, 12, 12)
    fp = data.fingerprint()
    sup = support_models(model, data, (0, 1), [2.0], epochs=1, lr=1e-3, batch_size=4, cache_dir=str(tmp_path / "cache"),
                         progress=False)
    assert sup.cached == [False]
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "c1" / "2.png")  # new content, new key
    assert FolderImages.from_folder(model, str(tmp_path), [(["c0"], 0), (["c1"], 1)]).fingerprint() != fp
    with pytest.raises(FaithmapError, match="no sub-folder for class 'dog'"):
        FolderImages.from_folder(model, str(tmp_path), [(["dog"], 0)])


