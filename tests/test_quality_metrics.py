"""Explanation-quality metrics (Expected Grad-CAM paper, Table 2) against Quantus 0.6, captum,
literal references and analytic cases.

Quantus receives the same input-size maps and, for the sampling metrics, replays the very
perturbations our metrics drew (through its ``perturb_func`` hook), so the comparisons are exact.
Quantus normalises a whole batch by one maximum; ours normalises each map by its own, so maps
are given to Quantus already normalised (``normalise=False``) or one image at a time.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import faithmap
from faithmap.errors import FaithmapError
from faithmap.metrics import complexity as C
from faithmap.metrics import faithfulness as F
from faithmap.metrics import localisation as L
from faithmap.metrics import robustness as R
from faithmap.metrics._common import normalise_by_max, to_input_size
from faithmap.models import wrap

warnings.filterwarnings("ignore")

SIZE = 24  # 24 * 24 = 576 is divisible by Quantus' features_in_step = 3 * 8


class SmallNet(nn.Module):
    """A small random CNN with moderate logits (4 classes)."""

    def __init__(self, seed=0, scale=0.3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3))) * 4


def small_model(seed=0):
    return wrap(SmallNet(seed).eval(), mean=(0, 0, 0), std=(1, 1, 1), input_size=SIZE, name="small")


def inputs(n=4, size=SIZE, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def blocky(n=4, size=SIZE, seed=3):
    """Images of coloured 6 x 6 blocks with mild noise (SLIC finds superpixels in them)."""
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="nearest")
    return x + 0.05 * torch.rand(n, 3, size, size, generator=g)


def maps(n=4, res=6, seed=2):
    return torch.rand(n, res, res, generator=torch.Generator().manual_seed(seed))


def up(sal, size=SIZE):
    return to_input_size(sal, (size, size))


def grad_explain(model):
    """Gradient x input, channel-summed and average-pooled to 6 x 6 (a native map below input size)."""

    def explain(x, target):
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model.net(x).gather(1, target.view(-1, 1)).sum()
            g, = torch.autograd.grad(out, x)
        return nn.functional.adaptive_avg_pool2d((g * x).sum(1, keepdim=True), 6)[:, 0].detach()

    return explain


def replay(noise):
    """A Quantus perturb_func that adds our noise, step after step."""
    state = {"i": 0}

    def fn(arr, indices=None, **kw):
        n = noise[state["i"]].reshape(arr.shape).numpy()
        state["i"] += 1
        return arr + n

    return fn


def rel_close(a, b, rtol=1e-4, atol=1e-7):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True), (a, b)


@pytest.fixture(scope="module")
def setup():
    model = small_model()
    x = inputs()
    with torch.no_grad():
        t = model.net(x).argmax(1)
    return model, x, t, maps()


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
EXPECTED = {
    "faithfulness_estimate": (True, "faithfulness", ()), "pixel_flipping": (False, "faithfulness", ()),
    "irof": (True, "faithfulness", ()), "sufficiency": (True, "faithfulness", ()),
    "infidelity": (False, "faithfulness", ()), "rise_deletion": (False, "faithfulness", ()),
    "rise_insertion": (True, "faithfulness", ()), "ins_del": (True, "faithfulness", ()),
    "local_lipschitz": (False, "robustness", ("explain",)), "max_sensitivity": (False, "robustness", ("explain",)),
    "avg_sensitivity": (False, "robustness", ("explain",)),
    "relative_input_stability": (False, "robustness", ("explain",)),
    "relative_output_stability": (False, "robustness", ("explain",)),
    "complexity": (False, "complexity", ()), "sparseness": (True, "complexity", ()),
    "attribution_localisation": (True, "localisation", ("masks",)),
    "top_k_intersection": (True, "localisation", ("masks",)),
    "relevance_rank_accuracy": (True, "localisation", ("masks",)),
    "relevance_mass_accuracy": (True, "localisation", ("masks",)),
}


def test_registered_with_direction_category_needs():
    for name, (hib, cat, needs) in EXPECTED.items():
        spec = faithmap.METRICS.get(name)
        assert (spec.higher_is_better, spec.category, spec.needs) == (hib, cat, needs), name


# ----------------------------------------------------------------------------------------------
# faithfulness against Quantus
# ----------------------------------------------------------------------------------------------


def _masks(n=4, size=SIZE):
    m = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        m[i, 2 + i:12 + i, 4:16 - i] = True
    return m


# ----------------------------------------------------------------------------------------------
# robustness against Quantus, on the same perturbations
# ----------------------------------------------------------------------------------------------
S = 6


def test_relative_stability_leaves_out_class_changes():
    """A perturbation that changes the class is dropped from the maximum, not made NaN."""
    model = small_model()
    x = inputs(2)
    t = torch.zeros(2, dtype=torch.long)
    explain = grad_explain(model)
    sal = explain(x, t)
    noise = R.perturbation_noise(x, S, noise="uniform", low=-3.0, high=3.0, seed=1)
    kw = dict(explain=explain, n_samples=S, seed=1, low=-3.0, high=3.0)
    all_samples = R.relative_input_stability(model, x, sal, t, exclude_changed=False, **kw)
    kept = R.relative_input_stability(model, x, sal, t, **kw)
    with torch.no_grad():
        moved = (x.unsqueeze(0) + noise).reshape(-1, *x.shape[1:])
        same = model.net(moved).argmax(1).view(S, 2) == model.net(x).argmax(1)  # (S, B)
    assert (~same).any() and same.any(0).all(), "the noise should change some, not all, predictions"
    # literal: the objective of every kept sample, maximum by hand
    ex = up(sal)
    for i in range(2):
        vals = []
        for s in range(S):
            xp = x[i] + noise[s, i]
            ep = up(explain(xp[None], t[i:i + 1]))[0]
            num = ((ex[i] - ep) / (ex[i] + (ex[i] == 0) * 1e-6)).double().norm()
            den = ((x[i] - xp) / (x[i] + (x[i] == 0) * 1e-6)).double().norm().clamp_min(1e-6)
            vals.append(float(num / den) if same[s, i] else -math.inf)
        assert math.isclose(float(kept[i]), max(vals), rel_tol=1e-4)
        assert float(all_samples[i]) >= float(kept[i])


# ----------------------------------------------------------------------------------------------
# infidelity against captum (Quantus 0.6's infidelity is a deterministic raster sweep)
# ----------------------------------------------------------------------------------------------


def test_infidelity_zero_for_a_linear_model_with_its_weights():
    """f(x) = sum w * x, Phi = w: the map predicts every score change exactly (def. 2.1 gives 0)."""
    w = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    class Linear(nn.Module):
        def forward(self, x):
            z = (x * w).flatten(1).sum(1)
            return torch.stack([z, -z], 1)

    model = wrap(Linear(), mean=(0, 0, 0), std=(1, 1, 1), input_size=SIZE)
    x = inputs(2)
    t = torch.zeros(2, dtype=torch.long)
    for pert in ("square", "gaussian"):
        v = F.infidelity(model, x, w.expand(2, -1, -1), t, n_samples=5, perturbation=pert)
        assert float(v.abs().max()) < 1e-6 * float((w.sum() * 3) ** 2)
        assert float(F.infidelity(model, x, 2 * w.expand(2, -1, -1), t, n_samples=5, perturbation=pert).min()) > 1e-3
        assert float(F.infidelity(model, x, 2 * w.expand(2, -1, -1), t, n_samples=5, perturbation=pert,
                                  optimal_scaling=True).abs().max()) < 1e-6 * float((w.sum() * 3) ** 2)


# ----------------------------------------------------------------------------------------------
# IROF and RISE insertion/deletion against literal references
# ----------------------------------------------------------------------------------------------
def test_irof_equals_literal_reference(setup):
    model, _, t, sal = setup
    x = blocky()
    res = F.irof(model, x, sal, t, n_segments=12)
    from skimage.segmentation import slic

    a = normalise_by_max(up(sal))
    for i in range(len(x)):
        img = x[i].permute(1, 2, 0).double().numpy()
        seg = slic(img, n_segments=12, start_label=0, channel_axis=-1)
        labels = np.unique(seg)
        means = np.array([a[i].numpy()[seg == s].mean() for s in labels])
        order = labels[np.argsort(-means, kind="stable")]
        xi = x[i].clone()
        fill = float(x[i].mean())
        with torch.no_grad():
            p0 = torch.softmax(model.net(x[i:i + 1]), 1)[0, t[i]].item()
            curve = [1.0]
            for s in order:
                xi[:, torch.from_numpy(seg == s)] = fill
                curve.append(torch.softmax(model.net(xi[None]), 1)[0, t[i]].item() / p0)
        n = len(order)
        assert int(res.extras["segments"][i]) == n
        assert math.isclose(float(res.scores[i]), 1 - np.trapezoid(curve, dx=1 / n), rel_tol=1e-5)
        assert math.isclose(float(res.extras["quantus_aoc"][i]), n - np.trapezoid(curve[1:], dx=1), rel_tol=1e-5)


def test_rise_kernel_equals_scipy():
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    assert np.allclose(F.rise_kernel(11, 5.0, dtype=torch.float64).numpy(), gaussian_filter(delta, 5), atol=1e-12)


def test_ins_del_equals_rise_reference(setup):
    """The RISE authors' loop (evaluation.py, single_run), written out one image at a time."""
    model, x, t, sal = setup
    step = 40
    res = F.ins_del(model, x, sal, t, step=step)
    a = up(sal)
    hw = SIZE * SIZE
    n = (hw + step - 1) // step
    blur = F.rise_blur(x)
    for i in range(len(x)):
        order = torch.from_numpy(np.argsort(-a[i].flatten().numpy(), kind="stable"))
        curves = {}
        for mode, start, finish in (("del", x[i].clone(), torch.zeros_like(x[i])), ("ins", blur[i].clone(), x[i].clone())):
            scores = []
            for k in range(n + 1):
                with torch.no_grad():
                    scores.append(torch.softmax(model.net(start[None]), 1)[0, t[i]].item())
                if k < n:
                    coords = order[step * k:step * (k + 1)]
                    start.view(3, -1)[:, coords] = finish.view(3, -1)[:, coords]
            arr = np.array(scores)
            curves[mode] = (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (len(arr) - 1)
        assert math.isclose(float(res.extras["deletion_auc"][i]), curves["del"], rel_tol=1e-5)
        assert math.isclose(float(res.extras["insertion_auc"][i]), curves["ins"], rel_tol=1e-5)
        assert math.isclose(float(res.scores[i]), curves["ins"] - curves["del"], rel_tol=1e-4, abs_tol=1e-7)
    assert res.images == len(x) * (2 * n + 1)
    assert torch.equal(F.rise_deletion(model, x, sal, t, step=step).scores, res.extras["deletion_auc"])


# ----------------------------------------------------------------------------------------------
# analytic cases
# ----------------------------------------------------------------------------------------------
def test_one_hot_and_flat_maps_complexity_and_gini():
    x = inputs(2, 16)
    one_hot = torch.zeros(2, 16, 16)
    one_hot[0, 3, 5] = 1
    one_hot[1, 10, 1] = 2
    flat = torch.ones(2, 16, 16)
    n = 256
    assert torch.allclose(C.complexity(None, x, one_hot, None), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(C.complexity(None, x, flat, None), torch.full((2,), math.log(n), dtype=torch.float64))
    # (n - 1) / n, less the effect of the 1e-7 Quantus adds to every value
    assert torch.allclose(C.sparseness(None, x, one_hot, None), torch.full((2,), 1 - 1 / n, dtype=torch.float64),
                          atol=1e-4)
    assert torch.allclose(C.sparseness(None, x, flat, None), torch.zeros(2, dtype=torch.float64), atol=1e-9)


def test_map_inside_the_mask_localises_perfectly():
    x = inputs(2, 16)
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    m[:, 4:12, 2:10] = True
    sal = torch.rand(2, 16, 16) * m  # all the mass inside the mask
    assert torch.allclose(L.relevance_mass_accuracy(None, x, sal, None, masks=m), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(L.attribution_localisation(None, x, sal, None, masks=m), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(L.relevance_rank_accuracy(None, x, sal, None, masks=m), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(L.top_k_intersection(None, x, sal, None, masks=m, k=30), torch.ones(2, dtype=torch.float64))
    outside = torch.rand(2, 16, 16) * ~m
    assert torch.allclose(L.relevance_mass_accuracy(None, x, outside, None, masks=m), torch.zeros(2, dtype=torch.float64))


def test_boxes_equal_their_masks():
    x = inputs(2, 16)
    boxes = [torch.tensor([[2, 4, 10, 12]]), torch.tensor([[0, 0, 3, 3], [8, 8, 16, 12]])]
    m = L.boxes_to_masks(boxes, (16, 16))
    assert int(m[0].sum()) == 8 * 8 and bool(m[0, 4, 2]) and not bool(m[0, 12, 2])
    assert int(m[1].sum()) == 9 + 8 * 4
    sal = torch.rand(2, 8, 8)
    assert torch.equal(L.relevance_mass_accuracy(None, x, sal, None, boxes=boxes),
                       L.relevance_mass_accuracy(None, x, sal, None, masks=m))


def test_weighted_attribution_localisation_follows_the_paper():
    x = inputs(1, 16)
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, :8, :8] = True  # a quarter of the image
    sal = torch.rand(1, 16, 16)
    mu = L.attribution_localisation(None, x, sal, None, masks=m)
    assert torch.allclose(L.attribution_localisation(None, x, sal, None, masks=m, weighted=True), mu * 4)


def test_constant_explanations_are_perfectly_robust(setup):
    model, x, t, sal = setup

    def constant(xp, tp):
        return sal[:1].expand(len(xp), -1, -1)

    s = sal[:1].expand(len(x), -1, -1)
    for name in ("max_sensitivity", "avg_sensitivity", "local_lipschitz", "relative_input_stability",
                 "relative_output_stability"):
        v = faithmap.METRICS.get(name).fn(model, x, s, t, explain=constant, n_samples=3, exclude_changed=False)
        assert torch.allclose(v, torch.zeros_like(v)), name


def test_sensitivity_of_a_scaled_explanation():
    """explain(x') = (1 + c) * e: the relative change is exactly c whatever the noise."""
    model = small_model()
    x = inputs(3)
    t = torch.zeros(3, dtype=torch.long)
    sal = maps(3)

    def scaled(xp, tp):
        return 1.25 * sal[:1].expand(len(xp), -1, -1)

    s = sal[:1].expand(3, -1, -1)
    assert torch.allclose(R.max_sensitivity(model, x, s, t, explain=scaled, n_samples=4),
                          torch.full((3,), 0.25, dtype=torch.float64))
    assert torch.allclose(R.max_sensitivity(model, x, s, t, explain=scaled, n_samples=4, relative=False),
                          0.25 * up(s).flatten(1).double().norm(dim=1))


# ----------------------------------------------------------------------------------------------
# batching and seeds
# ----------------------------------------------------------------------------------------------
def _call(name, model, x, sal, t, **kw):
    out = faithmap.METRICS.get(name).fn(model, x, sal, t, **kw)
    return out.scores if hasattr(out, "scores") else out


@pytest.mark.parametrize("name,kw", [
    ("pixel_flipping", {"pixels_in_step": 16}), ("faithfulness_estimate", {"pixels_in_step": 16}),
    ("irof", {"n_segments": 10}), ("infidelity", {"n_samples": 5}), ("infidelity", {"n_samples": 5, "perturbation": "gaussian"}),
    ("ins_del", {"step": 48}), ("max_sensitivity", {"n_samples": 3}), ("local_lipschitz", {"n_samples": 3}),
    ("relative_output_stability", {"n_samples": 3}),
])
def test_batched_equals_one_by_one(setup, name, kw):
    model, x, t, _ = setup
    if faithmap.METRICS.get(name).needs:
        kw = dict(kw, explain=grad_explain(model))
        sal = grad_explain(model)(x, t)
    else:
        sal = maps()
    if name == "irof":
        x = blocky()
    both = _call(name, model, x, sal, t, seed=7, batch_size=5, **kw)
    for i in range(len(x)):
        one = _call(name, model, x[i:i + 1], sal[i:i + 1], t[i:i + 1], seed=7, batch_size=3, **kw)
        assert torch.allclose(both[i:i + 1], one, rtol=1e-5, atol=1e-8, equal_nan=True), name


def test_seed_changes_the_draws(setup):
    model, x, t, sal = setup
    a = F.infidelity(model, x, sal, t, n_samples=4, seed=0)
    assert torch.equal(a, F.infidelity(model, x, sal, t, n_samples=4, seed=0))
    assert not torch.equal(a, F.infidelity(model, x, sal, t, n_samples=4, seed=1))


def test_model_unchanged_by_metrics(setup):
    from conftest import assert_state_equal, model_state

    model, x, t, sal = setup
    model.net.train()
    before = model_state(model)
    F.pixel_flipping(model, x, sal, t, pixels_in_step=64)
    R.max_sensitivity(model, x, sal, t, explain=grad_explain(model), n_samples=2)
    assert_state_equal(before, model_state(model))
    model.net.eval()


# ----------------------------------------------------------------------------------------------
# bad input: one clear FaithmapError
# ----------------------------------------------------------------------------------------------
def test_missing_inputs_raise_one_clear_error(setup):
    model, x, t, sal = setup
    with pytest.raises(FaithmapError, match="needs masks"):
        L.top_k_intersection(model, x, sal, t)
    with pytest.raises(FaithmapError, match="needs explain"):
        R.max_sensitivity(model, x, sal, t)
    with pytest.raises(FaithmapError, match=r"masks must be \(B, H, W\)"):
        L.relevance_mass_accuracy(model, x, sal, t, masks=torch.ones(4, 5, 5, dtype=torch.bool))
    with pytest.raises(FaithmapError, match="saliency maps must be"):
        F.pixel_flipping(model, x, sal[:2], t)
    with pytest.raises(FaithmapError, match="NaN"):
        C.complexity(model, x, sal * float("nan"), t)
    with pytest.raises(FaithmapError, match="k must be between"):
        L.top_k_intersection(model, x, sal, t, masks=_masks(), k=10 ** 6)
    with pytest.raises(FaithmapError, match="pixels_in_step"):
        F.pixel_flipping(model, x, sal, t, pixels_in_step=0)
    with pytest.raises(FaithmapError, match="unknown baseline"):
        F.pixel_flipping(model, x, sal, t, baseline="purple")
    with pytest.raises(FaithmapError, match="unknown perturbation"):
        F.infidelity(model, x, sal, t, perturbation="rotate")
    with pytest.raises(FaithmapError, match="explain returned"):
        R.avg_sensitivity(model, x, sal, t, explain=lambda xp, tp: sal[:1], n_samples=1)


# ----------------------------------------------------------------------------------------------
# superpixel relabelling and compositing helpers
# ----------------------------------------------------------------------------------------------
def test_relabel_equals_unique_per_image():
    g = torch.Generator().manual_seed(0)
    dense = torch.randint(0, 6, (3, 5, 7), generator=g) * 3 - 4  # gaps and negative labels
    sparse = dense.clone()
    sparse[1] = sparse[1] * 10 ** 9  # wider than the image has pixels: the per-image fallback
    for seg in (dense, sparse):
        out, counts = F._relabel(seg)
        for i in range(len(seg)):
            uniq, inv = torch.unique(seg[i], return_inverse=True)
            assert torch.equal(out[i], inv)
            assert int(counts[i]) == len(uniq)


def test_irof_does_not_depend_on_how_segments_are_numbered(setup):
    model, _, t, sal = setup
    x = blocky()
    seg = F.slic_segments(x, 12)
    a = F.irof(model, x, sal, t, segments=seg)
    b = F.irof(model, x, sal, t, segments=seg * 7 + 1000)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.extras["segments"], b.extras["segments"])


def test_float_ranks_keep_counts_exact():
    rank = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    assert F._float_ranks(rank, torch.float32).dtype == torch.float32
    assert F._float_ranks(rank, torch.float16).dtype == torch.float64  # 4,096 > 2**11


@pytest.mark.parametrize("metric", ["pixel_flipping", "faithfulness_estimate", "irof"])
def test_non_finite_baseline_is_one_clear_error(setup, metric):
    model, x, t, sal = setup
    with pytest.raises(FaithmapError, match="baseline contains NaN or infinite values"):
        getattr(F, metric)(model, x, sal, t, baseline=float("nan"))


@pytest.mark.parametrize("metric,kw", [("pixel_flipping", {}), ("irof", {}), ("irof", {"segments": "slic"})])
def test_nan_images_are_one_clear_error(setup, metric, kw):
    """IROF checks its images in numpy when it segments them itself, torch otherwise: one message."""
    model, _, t, sal = setup
    x = blocky()
    if kw.get("segments") == "slic":
        kw = {"segments": F.slic_segments(x, 12)}
    x[1, 0, 2, 3] = float("nan")
    with pytest.raises(FaithmapError, match=f"metric {metric}: images contain NaN or infinite values"):
        getattr(F, metric)(model, x, sal, t, **kw)


def test_irof_bad_n_segments_names_the_metric_once(setup):
    model, x, t, sal = setup
    with pytest.raises(FaithmapError, match=r"^metric irof: n_segments must be an integer of at least 2, got 1$"):
        F.irof(model, x, sal, t, n_segments=1)
