"""Parity with Quantus 0.6 (test-only peer) for the quality metrics, replaying our perturbations through its
``perturb_func`` hook so the comparisons are exact.

Skipped as a whole when Quantus is missing; the metrics' own tests are in test_quality_metrics.py."""


import numpy as np
import pytest
import torch

import faithmap
from faithmap.metrics import complexity as C
from faithmap.metrics import faithfulness as F
from faithmap.metrics import robustness as R
from faithmap.metrics._common import normalise_by_max
from test_quality_metrics import (S, _masks, blocky, grad_explain, inputs, rel_close, replay, setup,  # noqa: F401
                                  small_model, up)  # (setup is a fixture)

quantus = pytest.importorskip("quantus")


def quantus_explain(explain):
    def fn(model, inputs, targets, **kw):
        x = torch.as_tensor(inputs).float()
        return up(explain(x, torch.as_tensor(targets).long())).numpy()[:, None]

    return fn


# ----------------------------------------------------------------------------------------------
# faithfulness against Quantus
# ----------------------------------------------------------------------------------------------
def test_pixel_flipping_equals_quantus(setup):
    model, x, t, sal = setup
    ours = F.pixel_flipping(model, x, sal, t, pixels_in_step=24, ties="index")  # Quantus' order
    q = quantus.PixelFlipping(features_in_step=72, disable_warnings=True)(
        model.net, x.numpy(), t.numpy(), up(sal).numpy()[:, None], device="cpu")
    q = np.array(q)
    assert ours.curves.shape == q.shape == (4, 24)
    rel_close(ours.curves, q, rtol=1e-5)
    rel_close(ours.scores, np.trapezoid(q, dx=1, axis=1), rtol=1e-5)  # Quantus' AUC (its np.trapz is gone)
    assert ours.images == 4 * 24


def test_faithfulness_estimate_equals_quantus(setup):
    model, x, t, sal = setup
    ours = F.faithfulness_estimate(model, x, sal, t, pixels_in_step=24, ties="index")
    q = quantus.FaithfulnessEstimate(features_in_step=72, disable_warnings=True)(
        model.net, x.numpy(), t.numpy(), up(sal).numpy()[:, None], device="cpu")
    rel_close(ours, q, rtol=1e-4, atol=1e-5)


def test_pixel_flipping_and_faithfulness_estimate_equal_quantus_on_lite0(lite0):
    """On EfficientNet-Lite0 with RGB photos: Quantus flattens (C, H, W) and steps by features, so
    its steps flip whole pixels only when ``features_in_step`` is a multiple of 3 that divides
    H * W. At 224 px none exists (224^2 has no factor 3) and the bench's 1,568 features split
    pixels across steps (the 1e-2 gap in BENCHMARKS.md); at 192 px, 1,152 features = 384 whole
    pixels a step, and both libraries give the same curves."""
    from faithmap.data import load_sample
    from faithmap.metrics._common import to_input_size

    x = torch.nn.functional.interpolate(lite0.preprocess([load_sample("coffee"), load_sample("rocket")]), size=192,
                                        mode="bilinear", align_corners=False)
    t = torch.tensor([967, 657])
    g = torch.Generator().manual_seed(0)
    sal = to_input_size(torch.rand(2, 7, 7, generator=g), (192, 192)) + 1e-3 * torch.rand(2, 192, 192, generator=g)
    ours = F.pixel_flipping(lite0, x, sal, t, pixels_in_step=384, ties="index")
    fe = F.faithfulness_estimate(lite0, x, sal, t, pixels_in_step=384, ties="index")
    was_training = lite0.training
    lite0.eval()  # Quantus refuses a model in training mode
    try:
        q = np.array(quantus.PixelFlipping(features_in_step=1152, disable_warnings=True)(
            lite0, x.numpy(), t.numpy(), sal.numpy()[:, None], device="cpu"))
        qfe = quantus.FaithfulnessEstimate(features_in_step=1152, disable_warnings=True)(
            lite0, x.numpy(), t.numpy(), sal.numpy()[:, None], device="cpu")
    finally:
        lite0.train(was_training)
    assert ours.curves.shape == q.shape == (2, 96)
    rel_close(ours.curves, q, rtol=1e-4, atol=1e-6)
    rel_close(fe, qfe, rtol=1e-4, atol=1e-5)


def test_sufficiency_equals_quantus():
    model = small_model()
    x = inputs(8)
    g = torch.Generator().manual_seed(5)
    patterns = torch.rand(2, 6, 6, generator=g)
    sal = patterns[torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])] + 0.05 * torch.rand(8, 6, 6, generator=g)
    with torch.no_grad():
        t = model.net(x).argmax(1)
    ours = F.sufficiency(model, x, sal, t)
    a = normalise_by_max(up(sal)).numpy()[:, None]
    q = quantus.Sufficiency(disable_warnings=True, normalise=False)(model.net, x.numpy(), t.numpy(), a, device="cpu")
    rel_close(ours, q)
    assert (ours > 0).any()  # the two clusters make some maps "apply" to others


def test_complexity_and_sparseness_equal_quantus(setup):
    model, x, t, sal = setup
    a = normalise_by_max(up(sal)).numpy()[:, None]
    for ours, cls in ((C.complexity, quantus.Complexity), (C.sparseness, quantus.Sparseness)):
        q = cls(disable_warnings=True, normalise=False)(model.net, x.numpy(), t.numpy(), a.copy(), device="cpu")
        rel_close(ours(model, x, sal, t), q, rtol=1e-6)


@pytest.mark.parametrize("name,cls,noise_kw", [
    ("max_sensitivity", "MaxSensitivity", dict(noise="uniform", low=-0.2, high=0.2)),
    ("avg_sensitivity", "AvgSensitivity", dict(noise="uniform", low=-0.2, high=0.2)),
])
def test_sensitivity_equals_quantus(setup, name, cls, noise_kw):
    model, x, t, _ = setup
    explain = grad_explain(model)
    sal = explain(x, t)
    ours = faithmap.METRICS.get(name).fn(model, x, sal, t, explain=explain, n_samples=S, seed=4)
    noise = R.perturbation_noise(x, S, seed=4, **noise_kw)
    q = getattr(quantus, cls)(nr_samples=S, disable_warnings=True, perturb_func=replay(noise))(
        model.net, x.numpy(), t.numpy(), up(sal).numpy()[:, None], explain_func=quantus_explain(explain), device="cpu")
    rel_close(ours, q, rtol=1e-4)


def test_local_lipschitz_equals_quantus(setup):
    model, x, t, _ = setup
    explain = grad_explain(model)
    sal = explain(x, t)
    ours = R.local_lipschitz(model, x, sal, t, explain=explain, n_samples=S, seed=4)
    noise = R.perturbation_noise(x, S, noise="gaussian", std=0.1, seed=4)
    for i in range(len(x)):  # one image at a time: Quantus normalises a batch by one maximum
        q = quantus.LocalLipschitzEstimate(nr_samples=S, disable_warnings=True, perturb_func=replay(noise[:, i:i + 1]))(
            model.net, x[i:i + 1].numpy(), t[i:i + 1].numpy(), up(sal[i:i + 1]).numpy()[:, None],
            explain_func=quantus_explain(explain), device="cpu")
        rel_close(ours[i:i + 1], q, rtol=1e-4)


@pytest.mark.parametrize("name,cls", [("relative_input_stability", "RelativeInputStability"),
                                      ("relative_output_stability", "RelativeOutputStability")])
def test_relative_stability_equals_quantus(setup, name, cls):
    model, x, t, _ = setup
    explain = grad_explain(model)
    sal = explain(x, t)
    ours = faithmap.METRICS.get(name).fn(model, x, sal, t, explain=explain, n_samples=S, seed=4,
                                         exclude_changed=False)
    noise = R.perturbation_noise(x, S, noise="uniform", low=0.02, high=0.2, seed=4)
    q = getattr(quantus, cls)(nr_samples=S, disable_warnings=True, perturb_func=replay(noise),
                              return_nan_when_prediction_changes=False)(
        model.net, x.numpy(), t.numpy(), a_batch=up(sal).numpy()[:, None], explain_func=quantus_explain(explain),
        device="cpu")
    rel_close(ours, q, rtol=1e-4)


def test_irof_equals_patched_quantus(setup):
    """Quantus 0.6 IROF, made to run on RGB (broadcasting perturb_func, np.trapz lent), on our curves."""
    from bench.metrics import _irof_quantus_form, _quantus_irof

    model, _, t, sal = setup
    x, t, sal = blocky(2), t[:2], sal[:2]
    res = F.irof(model, x, sal, t, ties="index")
    ctx = {"x": x, "t": t, "model": model.net, "a": up(sal).numpy()[:, None]}
    rel_close(_irof_quantus_form(res), _quantus_irof(ctx), rtol=1e-5)


@pytest.mark.parametrize("name,cls,kw", [
    ("attribution_localisation", "AttributionLocalisation", {}),
    ("top_k_intersection", "TopKIntersection", {"k": 50}),
    ("relevance_rank_accuracy", "RelevanceRankAccuracy", {}),
    ("relevance_mass_accuracy", "RelevanceMassAccuracy", {}),
])
def test_localisation_equals_quantus(setup, name, cls, kw):
    model, x, t, sal = setup
    m = _masks()
    ties = {"ties": "index"} if name in ("top_k_intersection", "relevance_rank_accuracy") else {}  # Quantus' order
    ours = faithmap.METRICS.get(name).fn(model, x, sal, t, masks=m, **kw, **ties)
    q = getattr(quantus, cls)(disable_warnings=True, **kw)(model.net, x.numpy(), t.numpy(), up(sal).numpy()[:, None],
                                                           s_batch=m.numpy()[:, None].astype(float), device="cpu")
    rel_close(ours, q, rtol=1e-6)
