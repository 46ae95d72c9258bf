"""Batched tasks give the rows of one-image tasks, for every registered method and every registered metric.

Each image draws its randomness from its own seed (a hash of its name, the method, the resolution and
--seed), so which images share its task cannot change what it draws. What batching may change is float
rounding: a batch of three images goes through the network's float32 kernels as one tensor, one image
as another, and their sums are ordered differently (relative differences of about 1e-7 per operation).
Values are compared within 1e-4 relative / 1e-5 absolute (observed: maps and metric values equal to
the bit, predicted probabilities within 2e-12); everything that is not a float (targets, grids,
categories, seeds) must be equal. The cost columns (seconds and model images, a task's cost shared
evenly among its rows) are left out: a method that adapts its work per image (AOP and SIGCAM choose
their stages' iterations per image) costs a batch differently from its images one by one; for a
method of fixed cost (I-GOS, Grad-CAM) the counts are checked equal. Fast settings, a tiny CNN, 32 px.
"""

import pytest

import faithmap
from faithmap.evaluation.store import COST_COLUMNS, comparable, rows_close

import evalkit

REL, ABS = 1e-4, 1e-5
METHODS = [m for m in faithmap.METHODS.names() if not m.startswith("test-")]
METRICS = [m for m in faithmap.METRICS.names() if not m.startswith("test-")]
ROBUST = ("max_sensitivity", "avg_sensitivity", "local_lipschitz", "relative_input_stability",
          "relative_output_stability")


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    p = tmp_path_factory.mktemp("ann") / "boxes.json"
    evalkit.any_target_boxes(p, 2)
    return str(p)


def both(tmp_path, **kw):
    """The same two images as one task of two and as two tasks of one: (batched rows, one-image rows)."""
    args = dict(images=evalkit.photos(2), model=evalkit.cnn_model(), resolutions="8", fast=True, progress=False,
                report=False, csv=False, seed=5)
    args.update(kw)
    batched = faithmap.evaluate(out=str(tmp_path / "batched"), batch_images=2, **args)
    single = faithmap.evaluate(out=str(tmp_path / "single"), batch_images=1, **args)
    assert batched.tasks_run == single.tasks_run == 2
    assert len(batched.files) and len(set(p.name for p in (tmp_path / "batched" / "parts").iterdir())) == 1
    return batched.rows, single.rows


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_one_image_tasks_for_every_method(tmp_path, method):
    a, b = both(tmp_path, methods=method, metrics="deletion,average_drop")
    assert len(a) == 2 * 2
    assert rows_close(comparable(a, COST_COLUMNS), comparable(b, COST_COLUMNS), REL, ABS) is None, \
        rows_close(comparable(a, COST_COLUMNS), comparable(b, COST_COLUMNS), REL, ABS)
    assert len({r["image_seed"] for r in a}) == 2  # each image its own seed
    if method in ("igos", "gradcam", "smoothgrad", "rise"):  # fixed cost per image: the counts agree too
        cols = ("explain_images", "explain_grad_images", "metric_images")
        assert [[r[c] for c in cols] for r in a] == [[r[c] for c in cols] for r in b] and a[0]["metric_images"] > 0


@pytest.mark.parametrize("metric", METRICS)
def test_batched_equals_one_image_tasks_for_every_metric(tmp_path, boxes, metric):
    """With SmoothGrad (stochastic: its noise is drawn per image) as the method; the robustness metrics
    re-explain perturbed copies, each image with its own seed."""
    mp = {metric: {"n_samples": 2}} if metric in ROBUST else None
    a, b = both(tmp_path, methods="smoothgrad", metrics=metric, annotations=boxes, metric_params=mp)
    a, b = comparable(a, COST_COLUMNS), comparable(b, COST_COLUMNS)
    assert len(a) == 2
    assert rows_close(a, b, REL, ABS) is None, rows_close(a, b, REL, ABS)
    assert any(r["value"] == r["value"] for r in a), "the metric gave no value at all"
