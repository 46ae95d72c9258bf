"""``faithmap.audit`` on models whose evidence is known (:mod:`auditkit`): a hand-set network that reads
only a corner, a tiny CNN trained on a corner tag (a shortcut) and one trained with the tag random, and
a model-blind method whose candidate the random-region control beats. Also the pieces with analytic
answers: the salient window, the random regions, the bootstrap."""

import json
import os

import numpy as np
import pytest
import torch

import faithmap
from faithmap.auditing.candidates import ALL, Group, places
from faithmap.auditing.maps import STAT_GRID, salient_windows, stat_maps, window_box
from faithmap.auditing.verify import bootstrap, random_boxes
from faithmap.core.batching import torch_threads
from faithmap.explanation import Explanation
from faithmap.registry import METHODS, register_method

import auditkit
from auditkit import MARK_BOX, TAG_BOX, iou, overlaps

QUIET = dict(progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest on a shared machine (the results do not depend on it)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("corner") / "audit"
    return faithmap.audit(images=auditkit.corner_images(40), model=auditkit.corner_model(), out=str(out), **QUIET)


def test_a_model_that_reads_a_corner_gives_a_fixed_place_finding_there(corner_run):
    res = corner_run
    assert res.findings, "no finding"
    first = res.findings[0]
    assert overlaps(res.region(first), MARK_BOX)
    fixed = [c for c in res.findings if c["kind"] == "fixed-place"]
    assert fixed and all(iou(c["region"], MARK_BOX) > 0.4 for c in fixed)
    for c in res.findings:  # removing the corner hurts; random regions elsewhere do not
        assert c["removed"]["probability_drop"]["mean"] > 0.2
        assert abs(c["random_region"]["probability_drop"]["mean"]) < 0.02
    # every candidate is in audit.json, ordered by effect, and the page shows the findings
    with open(res.files["audit"]) as fh:
        doc = json.load(fh)
    assert doc["candidates"] == res.candidates and doc["images"] == 40
    effects = [c["effect"]["probability_drop"]["mean"] for c in doc["candidates"]]
    assert effects == sorted(effects, reverse=True)
    with open(res.files["page"]) as fh:
        page = fh.read()
    assert "Finding 1" in page and page.count("data:image/png;base64,") == len(res.findings)
    # cost: one forward pass per image to predict, one gradient pass to explain; the verification's count
    assert res.model_images["explain"] == 2 * 40
    verified = sum(c["verified_images"] for c in res.candidates)
    assert res.model_images["verify"] == verified * (1 + 5)


def test_re_running_reuses_the_explained_images(corner_run):
    again = faithmap.audit(images=auditkit.corner_images(40), model=auditkit.corner_model(), out=corner_run.out,
                           min_share=0.9, **QUIET)
    assert again.explained_before == 40 and again.explained_now == 0 and again.model_images["explain"] == 0
    for other in ({"patch": 0.5}, {"params": {"score": "prob"}}):  # what the explained images depend on
        with pytest.raises(faithmap.FaithmapError, match="other settings"):
            faithmap.audit(images=auditkit.corner_images(40), model=auditkit.corner_model(), out=corner_run.out,
                           **other, **QUIET)


@pytest.fixture(scope="module")
def tag_models():
    return {c: auditkit.train_tagnet(c) for c in ("tag", "object")}


@pytest.mark.parametrize("carrier", ["tag", "object"])
def test_a_trained_shortcut_is_the_first_finding_and_absent_when_the_tag_is_random(tag_models, carrier, tmp_path):
    model = tag_models[carrier]
    images = auditkit.tag_images(120, carrier, seed=7)
    x = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for _, p, _ in images])
    with torch.no_grad():
        acc = (model(x).argmax(1) == torch.tensor([lab for *_, lab in images])).float().mean()
    assert acc > 0.95  # the model learnt its carrier
    res = faithmap.audit(images=images, model=model, out=str(tmp_path / "a"), **QUIET)
    if carrier == "tag":
        assert res.findings and overlaps(res.region(res.findings[0]), TAG_BOX)
        assert res.findings[0]["effect"]["probability_drop"]["ci95"][0] > 0.3
    else:
        at_tag = [c for c in res.findings if iou(res.region(c), TAG_BOX) > 0.1]
        assert not at_tag, at_tag


def _bottom_right(model, x, target, *, batch_size=None):
    """A model-blind map: a bump in the bottom-right corner of every image."""
    g = torch.zeros(x.shape[0], 8, 8, device=x.device)
    g[:, 6:, 6:] = 1.0
    return Explanation(g, target)


@pytest.fixture
def blind_method():
    register_method("test-bottom-right", family="test", summary="test: a fixed bump, bottom right",
                    resolution="layer")(_bottom_right)
    try:
        yield "test-bottom-right"
    finally:
        METHODS._specs.pop("test-bottom-right", None)


def test_the_random_region_control_can_win(blind_method, tmp_path):
    """The maps point at a corner the model ignores: a candidate, never a finding; random regions of its
    size, which sometimes cover the corner the model reads, hurt more."""
    res = faithmap.audit(images=auditkit.corner_images(40), model=auditkit.corner_model(), method=blind_method,
                         out=str(tmp_path / "a"), **QUIET)
    bottom = [c for c in res.candidates if c["kind"] == "fixed-place" and c["region"][0] >= 0.5
              and c["region"][1] >= 0.5]
    assert bottom, res.candidates
    for c in bottom:
        assert not c["finding"]
        assert abs(c["removed"]["probability_drop"]["mean"]) < 1e-6
        assert c["random_region"]["probability_drop"]["mean"] > 0.001, c
        assert c["effect"]["probability_drop"]["ci95"][1] < 0
    assert not res.findings


def test_the_salient_window_and_its_box():
    m = torch.zeros(2, 16, 16)
    m[0, 0:4, 12:16] = 1.0  # top-right
    m[1, 7:9, 7:9] = 2.0  # centre
    stat, shows = stat_maps(m)
    assert shows.tolist() == [True, True]
    assert torch.allclose(stat.sum((1, 2)), torch.ones(2, dtype=torch.float64))
    cells = 8
    (r0, c0), (r1, c1) = salient_windows(stat, cells).tolist()
    assert window_box(r0, c0, cells) == [0.75, 0.0, 1.0, 0.25]
    b = window_box(r1, c1, cells)
    assert b[0] < 0.5 < b[2] and b[1] < 0.5 < b[3]
    _, shows = stat_maps(torch.ones(1, 7, 7))
    assert shows.tolist() == [False]  # a flat map has no salient patch


def test_places_need_a_share_well_above_chance_and_above_the_other_classes():
    span = STAT_GRID - 8 + 1
    tagged, spread = Group(windows=np.zeros((span, span))), Group(windows=np.zeros((span, span)))
    tagged.windows[0, span - 1] = 30  # every image of this class at the top-right corner,
    tagged.maps[1:6, 26:31] = 30 / 25  # where its maps put their mass
    tagged.n = 30
    rng = np.random.default_rng(0)
    for _ in range(30):  # the other class: anywhere
        spread.windows[rng.integers(0, span), rng.integers(0, span)] += 1
    spread.n = 30
    found = places(tagged, 0, spread, 8, 2, 0.25, 5)
    assert len(found) == 1 and found[0].share == 1.0
    assert found[0].region == pytest.approx([25 / 32, 0.0, 1.0, 7 / 32], abs=1e-4)  # hot cells and a margin
    assert not places(spread, 1, tagged, 8, 2, 0.25, 5)
    # the same place in every class is no class's place; over all classes it is one (off the centre)
    both = Group(60, tagged.maps * 2, tagged.windows * 2)
    assert not places(tagged, 0, Group(30, windows=tagged.windows.copy()), 8, 2, 0.25, 5)
    assert places(both, ALL, None, 8, 2, 0.25, 5)[0].region == found[0].region
    centre = Group(60, windows=np.zeros((span, span)))
    centre.windows[span // 2, span // 2] = 60
    assert not places(centre, ALL, None, 8, 2, 0.25, 5)


def test_random_regions_have_the_box_size_stay_inside_and_avoid_the_box():
    box = (0, 0, 8, 8)
    a = random_boxes(box, 32, 32, 50, seed=3)
    assert a == random_boxes(box, 32, 32, 50, seed=3) and a != random_boxes(box, 32, 32, 50, seed=4)
    for x0, y0, x1, y1 in a:
        assert (x1 - x0, y1 - y0) == (8, 8) and 0 <= x0 and x1 <= 32 and 0 <= y0 and y1 <= 32
        assert x0 >= 8 or y0 >= 8  # no overlap with the box
    big = random_boxes((0, 0, 30, 30), 32, 32, 5, seed=0)  # no room away from it: still the same size
    assert all((x1 - x0, y1 - y0) == (30, 30) for x0, y0, x1, y1 in big)


def test_the_bootstrap_interval_covers_the_mean_and_narrows_with_images():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, (25, 1)), rng.normal(1.0, 1.0, (400, 1))
    m, lo, hi = bootstrap(small, 2000, 0)
    assert lo[0] < m[0] < hi[0]
    assert abs((hi - lo)[0] - 2 * 1.96 / 5) < 0.25  # about the normal interval's width
    _, lo2, hi2 = bootstrap(large, 2000, 0)
    assert (hi2 - lo2)[0] < (hi - lo)[0] / 2
    const = bootstrap(np.full((10, 2), 0.5), 500, 1)
    assert np.allclose(const[1], 0.5) and np.allclose(const[2], 0.5)


def test_nothing_is_left_of_a_failed_first_run(tmp_path):
    out = tmp_path / "a"
    with pytest.raises(faithmap.FaithmapError):
        faithmap.audit(images=auditkit.corner_images(4), model=auditkit.corner_model(), out=str(out),
                       layer="nosuchlayer", **QUIET)
    assert not os.path.exists(out)
