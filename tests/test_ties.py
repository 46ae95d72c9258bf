"""The tie rule of the ranking metrics (``ties="interpolate"``, metrics/_common.py): analytic cases,
invariance to the order of tied pixels, and equality with the index rule when there are no ties."""

import pytest
import torch
from torch import nn

from faithmap.errors import FaithmapError
from faithmap.metrics import _common, deletion_insertion
from faithmap.metrics import deletion as D
from faithmap.metrics import faithfulness as F
from faithmap.metrics import localisation as L
from faithmap.metrics._common import curve_plans, topk_weights
from faithmap.models import wrap
from test_quality_metrics import SIZE, blocky, inputs, small_model


class BottomRowModel(nn.Module):
    """logit_0 = mean of the bottom row of a 4 x 4 image (one channel's worth), logit_1 = 0."""

    def forward(self, x):
        m = x[:, :, -1, :].mean((1, 2))
        return torch.stack([m, torch.zeros_like(m)], 1)


def _bottom():
    return wrap(BottomRowModel(), mean=(0, 0, 0), std=(1, 1, 1), input_size=4)


def _shuffled_ranking(seed):
    """A ranking that breaks ties in a random order instead of by index (values still decide)."""
    g = torch.Generator().manual_seed(seed)

    def ranking(saliency):
        flat = saliency.flatten(1)
        perm = torch.stack([torch.randperm(flat.shape[1], generator=g) for _ in range(flat.shape[0])])
        order = torch.sort(-flat.gather(1, perm), dim=1, stable=True).indices
        return perm.gather(1, order)

    return ranking


def _shuffled_pixel_rank(seed):
    base = _shuffled_ranking(seed)

    def pixel_rank(a):
        order = base(a)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
        return rank.view_as(a)

    return pixel_rank


# ----------------------------------------------------------------------------------------------
# the plan itself
# ----------------------------------------------------------------------------------------------
def test_curve_plan_by_hand():
    # values ranked: 5 | 3 3 3 3 | 1 1 | 0  -> blocks [1, 5) and [5, 7); grid 0, 3, 6, 8
    v = torch.tensor([[3.0, 1.0, 5.0, 3.0, 0.0, 3.0, 1.0, 3.0]])
    p = curve_plans(v, [0, 3, 6, 8])[0]
    # 3 lies in [1, 5), as near 1 as 5: it moves to 1; 6 lies in [5, 7): to 5
    assert p.nodes.tolist() == [0, 1, 5, 8]
    vals = torch.tensor([10.0, 9.0, 5.0, 0.0])
    # 3 is half-way from node 1 to node 5: 7; 6 is a third of the way from node 5 to node 8: 5 - 5/3
    assert torch.allclose(p.curve(vals), torch.tensor([10.0, 7.0, 5 - 5 / 3, 0.0], dtype=torch.float64))
    # a grid point nearer a block's far end moves there: 4 in [1, 5) goes to 5
    assert curve_plans(v, [0, 4, 8])[0].nodes.tolist() == [0, 5, 8]
    # the first grid point moving up keeps its block's start too (pixel flipping's grid starts at k)
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5]])
    assert curve_plans(w, [3, 5])[0].nodes.tolist() == [0, 4, 5]
    q = curve_plans(v, [0, 3, 6, 8], "index")[0]
    assert q.nodes.tolist() == [0, 3, 6, 8] and torch.equal(q.curve(torch.arange(4.0)), torch.arange(4.0).double())


def test_topk_weights_by_hand():
    v = torch.tensor([[3.0, 1.0, 5.0, 3.0, 0.0, 3.0, 1.0, 3.0]])
    w = topk_weights(v, 3)  # 5 and two of the four 3s: each 3 counts (3 - 1) / 4
    assert torch.allclose(w, torch.tensor([[0.5, 0, 1, 0.5, 0, 0.5, 0, 0.5]], dtype=torch.float64))
    assert topk_weights(v, 3, "index").tolist() == [[1, 0, 1, 1, 0, 0, 0, 0]]
    assert topk_weights(v, 5).tolist() == [[1, 0, 1, 1, 0, 1, 0, 1]]  # the block ends at 5: no tie split


# ----------------------------------------------------------------------------------------------
# deletion / insertion (cells)
# ----------------------------------------------------------------------------------------------
def test_deletion_insertion_analytic_tie_block():
    # 4 x 4 map: cell 15 (bottom right) = 1, all others tied at 0; image ones, baseline zeros.
    # score = mean of the bottom row: f_del(0) = 1, f_del(1) = 3/4, f_del(16) = 0 and the 15 tied
    # cells enter as one block, linear from 3/4 to 0: AUC = (1 + 3/4)/2/16 + (3/4)/2 * 15/16.
    model = _bottom()
    x, base = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    sal = torch.zeros(1, 4, 4)
    sal[0, 3, 3] = 1
    model.counter.images = 0
    c = deletion_insertion(model, x, sal, torch.tensor([0]), step=1, baseline=base, score="logit")
    assert abs(float(c.deletion_auc[0]) - (1.75 / 32 + 0.375 * 15 / 16)) < 1e-6
    # insertion: 0, then 1/4 after the top cell, then linear to 1
    assert abs(float(c.insertion_auc[0]) - (0.25 / 32 + 1.25 / 2 * 15 / 16)) < 1e-6
    assert c.images == 4 and model.counter.images == 4  # photo, baseline and count 1 for both curves
    # index order deletes the tied cells row by row: the bottom row goes last
    old = deletion_insertion(model, x, sal, torch.tensor([0]), step=1, baseline=base, score="logit", ties="index")
    assert abs(float(old.deletion_auc[0]) - float(c.deletion_auc[0])) > 0.2
    assert old.images == 32


def test_deletion_block_end_off_grid():
    # the same map with step 3: grid 0, 3, ..., 15, 16; the block [1, 16) starts off the grid
    model = _bottom()
    x, base = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    sal = torch.zeros(1, 4, 4)
    sal[0, 3, 3] = 1
    c = deletion_insertion(model, x, sal, torch.tensor([0]), step=3, baseline=base, score="logit")
    grid = torch.tensor([0, 3, 6, 9, 12, 15, 16], dtype=torch.float64)
    want = torch.where(grid == 0, torch.ones_like(grid), 0.75 * (16 - grid) / 15)
    assert torch.allclose(c.deletion[0], want, atol=1e-6)
    assert torch.allclose(c.deletion_auc, torch.trapezoid(want, grid / 16).view(1), atol=1e-6)
    assert c.images == 4


def test_deletion_invariant_to_order_of_ties(patch_model, patch_input, monkeypatch):
    g = torch.Generator().manual_seed(0)
    sal = torch.randint(0, 4, (1, 7, 7), generator=g).float()  # 4 values on 49 cells: large blocks
    t = torch.tensor([0])
    ref = deletion_insertion(patch_model, patch_input, sal, t, step=4)
    old = deletion_insertion(patch_model, patch_input, sal, t, step=4, ties="index")
    moved = []
    for seed in range(3):
        monkeypatch.setattr(D, "ranking", _shuffled_ranking(seed))
        c = deletion_insertion(patch_model, patch_input, sal, t, step=4)
        assert torch.allclose(c.deletion, ref.deletion, atol=1e-6)
        assert torch.allclose(c.insertion, ref.insertion, atol=1e-6)
        o = deletion_insertion(patch_model, patch_input, sal, t, step=4, ties="index")
        moved.append(float((o.insertion_auc - old.insertion_auc).abs() + (o.deletion_auc - old.deletion_auc).abs()))
    assert max(moved) > 1e-3  # the index rule does depend on the order (so the check above can fail)


def test_deletion_no_ties_equals_index_rule_exactly(patch_model, patch_input):
    sal = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(1))
    x = patch_input.expand(2, -1, -1, -1)
    t = torch.tensor([0, 1])
    a = deletion_insertion(patch_model, x, sal, t, step=3, batch_size=7)
    b = deletion_insertion(patch_model, x, sal, t, step=3, batch_size=7, ties="index")
    assert torch.equal(a.deletion, b.deletion) and torch.equal(a.insertion, b.insertion)
    assert a.images == b.images == 2 * 2 * (len(a.fractions) - 1)


def test_bad_ties(patch_model, patch_input):
    with pytest.raises(FaithmapError, match="ties"):
        deletion_insertion(patch_model, patch_input, torch.rand(1, 7, 7), torch.tensor([0]), ties="random")
    with pytest.raises(FaithmapError, match="ties"):
        F.pixel_flipping(small_model(), inputs(1), torch.rand(1, 6, 6), torch.tensor([0]), ties="first")


# ----------------------------------------------------------------------------------------------
# pixel-level metrics
# ----------------------------------------------------------------------------------------------
def _tied_maps(n=2, res=6, seed=4):
    """Maps with large tie blocks at input size: a coarse map with many exact zeros, upsampled."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, res, res, generator=g)
    return torch.where(m < 0.5, torch.zeros_like(m), m)


PIXEL_METRICS = {
    "pixel_flipping": lambda m, x, s, t, **kw: F.pixel_flipping(m, x, s, t, pixels_in_step=24, **kw).scores,
    "faithfulness_estimate": lambda m, x, s, t, **kw: F.faithfulness_estimate(m, x, s, t, pixels_in_step=24, **kw),
    "rise_deletion": lambda m, x, s, t, **kw: F.rise_deletion(m, x, s, t, **kw).scores,
    "rise_insertion": lambda m, x, s, t, **kw: F.rise_insertion(m, x, s, t, **kw).scores,
}


@pytest.mark.parametrize("name", list(PIXEL_METRICS))
def test_pixel_metrics_invariant_to_order_of_ties(name, monkeypatch):
    model, x = small_model(), inputs(2)
    t = torch.tensor([0, 1])
    sal = _tied_maps()
    fn = PIXEL_METRICS[name]
    ref, old = fn(model, x, sal, t), fn(model, x, sal, t, ties="index")
    moved = 0.0
    for seed in range(2):
        monkeypatch.setattr(F, "pixel_rank", _shuffled_pixel_rank(seed))
        assert torch.equal(fn(model, x, sal, t), ref)  # the same images: the very same numbers
        moved = max(moved, float((fn(model, x, sal, t, ties="index") - old).abs().max()))
    assert moved > 1e-5  # the index rule moves with the order


@pytest.mark.parametrize("name", list(PIXEL_METRICS))
def test_pixel_metrics_no_ties_equal_index_rule_exactly(name):
    model, x = small_model(), inputs(2)
    t = torch.tensor([0, 1])
    sal = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(5))  # input size: no ties
    fn = PIXEL_METRICS[name]
    assert torch.equal(fn(model, x, sal, t), fn(model, x, sal, t, ties="index"))


def test_pixel_flipping_analytic_and_cheaper():
    # 4 x 4 bottom-row model, baseline zeros, map: cell 15 first, the other 15 tied; 1 pixel a step.
    model = _bottom()
    x = torch.ones(1, 3, 4, 4)
    sal = torch.zeros(1, 4, 4)
    sal[0, 3, 3] = 1
    r = F.pixel_flipping(model, x, sal, torch.tensor([0]), pixels_in_step=1, baseline=0.0, score="logit",
                         normalise=False)
    steps = torch.arange(1, 17, dtype=torch.float64)
    want = 0.75 * (16 - steps) / 15  # 3/4 after the first pixel, then linear to 0
    assert torch.allclose(r.curves[0], want, atol=1e-6)
    assert r.images == 2  # counts 1 and 16 only
    old = F.pixel_flipping(model, x, sal, torch.tensor([0]), pixels_in_step=1, baseline=0.0, score="logit",
                           normalise=False, ties="index")
    assert old.images == 16 and float(old.scores[0]) > float(r.scores[0]) + 1


def test_faithfulness_estimate_tied_groups_share_the_block():
    # bottom-row model, pixels 0..14 tied, one pixel above: groups of 4 pixels; the block [1, 16)
    # spans groups 0-3 and is removed once; group g holds m_g of its 15 pixels
    model = _bottom()
    x = torch.ones(1, 3, 4, 4)
    sal = torch.zeros(1, 4, 4)
    sal[0, 3, 3] = 1
    r = F.faithfulness_estimate_scores(model, x, sal, torch.tensor([0]), pixels_in_step=4, baseline=0.0,
                                       normalise=False)
    # drop of the top pixel alone: 1/4; of the whole block: 3/4 (the other three bottom pixels)
    want = torch.tensor([0.25 + 3 / 15 * 0.75, 4 / 15 * 0.75, 4 / 15 * 0.75, 4 / 15 * 0.75], dtype=torch.float64)
    assert torch.allclose(r.curves[0], want, atol=1e-6)
    assert r.images == 3  # the top pixel, the block, the photo


def test_irof_invariant_and_equal_without_ties(monkeypatch):
    model, x = small_model(), blocky(2)
    t = torch.tensor([0, 1])
    seg = (torch.arange(SIZE).view(-1, 1) // 6 * 4 + torch.arange(SIZE).view(1, -1) // 6).expand(2, SIZE, SIZE)
    cont = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    assert torch.equal(F.irof(model, x, cont, t, segments=seg).scores,
                       F.irof(model, x, cont, t, segments=seg, ties="index").scores)
    # 16 segments; a map constant on half of them: 8 tied segment means
    sal = torch.zeros(2, SIZE, SIZE)
    sal[:, :12] = torch.rand(2, 12, SIZE, generator=torch.Generator().manual_seed(7))
    ref = F.irof(model, x, sal, t, segments=seg)
    assert ref.images < F.irof(model, x, sal, t, segments=seg, ties="index").images
    # reorder the labels of the tied segments: index order changes, the interpolated rule does not
    perm = torch.arange(16)
    perm[8:] = torch.tensor([15, 9, 13, 8, 11, 14, 10, 12])
    seg2 = perm[seg]
    assert torch.allclose(F.irof(model, x, sal, t, segments=seg2).scores, ref.scores, atol=1e-6)
    assert not torch.allclose(F.irof(model, x, sal, t, segments=seg2, ties="index").scores,
                              F.irof(model, x, sal, t, segments=seg, ties="index").scores, atol=1e-6)


def test_top_k_intersection_expectation_over_ties():
    # 24 x 24 map at input size: 100 pixels at 1, the other 476 tied at 0; k = 200 takes the 100
    # and 100 of the 476, so each tied pixel counts 100 / 476 (its chance to be taken)
    sal = torch.zeros(1, SIZE, SIZE)
    sal[0, :4, :] = 1  # rows 0-3: 96 pixels
    sal[0, 4, :4] = 1  # 100 pixels at 1
    masks = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    masks[0, 12:, :] = True  # bottom half: 288 pixels, all tied at 0
    v = L.top_k_intersection(None, torch.rand(1, 3, SIZE, SIZE), sal, torch.tensor([0]), masks=masks, k=200)
    assert abs(float(v[0]) - 288 * (100 / 476) / 200) < 1e-9
    old = L.top_k_intersection(None, torch.rand(1, 3, SIZE, SIZE), sal, torch.tensor([0]), masks=masks, k=200,
                               ties="index")
    assert float(old[0]) == 0.0  # index order takes the tied pixels from the top rows


def test_ties_reach_the_metric_registry():
    import inspect

    import faithmap

    for name in ("pixel_flipping", "faithfulness_estimate", "irof", "rise_deletion", "rise_insertion", "ins_del",
                 "top_k_intersection", "relevance_rank_accuracy"):
        p = inspect.signature(faithmap.METRICS.get(name).fn).parameters["ties"]
        assert p.default == "interpolate"
    assert _common.TIES == ("interpolate", "index")


def test_tied_share():
    from bench.ties import tied_share

    assert tied_share(torch.tensor([[1.0, 2.0], [3.0, 4.0]])) == 0.0
    assert tied_share(torch.tensor([[0.0, 0.0], [0.0, 4.0]])) == 0.75


def test_small_blocks_cost_no_more_images_than_index_order(patch_model, patch_input):
    # an occlusion-like map: 2 x 2 blocks of equal values on an 8 x 8 grid, step 3 (blocks inside a step)
    g = torch.Generator().manual_seed(8)
    sal = torch.nn.functional.interpolate(torch.rand(1, 1, 4, 4, generator=g), size=8, mode="nearest")[:, 0]
    t = torch.tensor([0])
    a = deletion_insertion(patch_model, patch_input, sal, t, step=3)
    b = deletion_insertion(patch_model, patch_input, sal, t, step=3, ties="index")
    assert a.images <= b.images
    for plan in curve_plans(sal.flatten(1), list(range(0, 64, 3)) + [64]):
        assert len(plan.nodes) <= 23
