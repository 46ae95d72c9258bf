"""I-GOS on a hand-built model with a known evidence patch; engine invariants; the line search."""

import pytest
import torch

import faithmap
from faithmap.methods.mask import ArmijoLineSearch, L1TV, PathTerm
from faithmap.metrics import deletion_insertion

from conftest import assert_state_equal, model_state, patch_image

FAST = dict(resolution=8, iterations=10, ig_steps=10)


def test_igos_finds_the_patch(patch_model, patch_input):
    e = faithmap.explain(patch_model, patch_input, "igos", target=0, **FAST)
    sal = e.saliency[0]
    assert sal.shape == (8, 8)
    on = patch_model.net.patch_mask(8)
    top = torch.topk(sal.flatten(), int(on.sum())).indices
    assert on.flatten()[top].float().mean() >= 0.75  # the top cells lie on the patch
    assert sal[on].mean() > 2 * sal[~on].mean()
    rnd = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = deletion_insertion(patch_model, patch_input, e.saliency, e.target)
    other = deletion_insertion(patch_model, patch_input, rnd, e.target)
    assert ours.deletion_auc[0] < other.deletion_auc[0]
    assert ours.insertion_auc[0] > other.insertion_auc[0]
    # history: one loss and one step per iteration, the loss never increases (Armijo)
    loss = e.history["loss"][0]
    assert loss.shape == (10,) and (loss[1:] <= loss[:-1] + 1e-6).all()
    assert e.counts["grad_images"] == 10 * 10


def test_batched_equals_one_by_one(patch_model):
    x = torch.cat([patch_image(seed=s) for s in range(3)])
    both = faithmap.explain(patch_model, x, "igos", target=0, seed=7, **FAST)
    for i in range(3):
        one = faithmap.explain(patch_model, x[i:i + 1], "igos", target=0, seed=7, **FAST)
        assert torch.allclose(both.saliency[i], one.saliency[0], atol=1e-5)


def test_memory_bound_is_respected(patch_model, patch_input):
    seen = []
    h = patch_model.net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        faithmap.explain(patch_model, patch_input.expand(2, -1, -1, -1), "igos", target=0, batch_size=6, **FAST)
    finally:
        h.remove()
    assert max(seen) <= 6


def test_model_unchanged(patch_model, patch_input):
    patch_model.train()
    patch_model.net.conv.weight.requires_grad_(True)
    before = model_state(patch_model)
    faithmap.explain(patch_model, patch_input, "igos", target=0, **FAST)
    assert_state_equal(before, model_state(patch_model))


def test_model_unchanged_when_method_raises(patch_model, patch_input):
    patch_model.train()
    before = model_state(patch_model)

    def boom(m, a):
        raise RuntimeError("boom")

    h = patch_model.net.conv.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError):
            faithmap.explain(patch_model, patch_input, "igos", target=0, **FAST)
    finally:
        h.remove()
    assert_state_equal(before, model_state(patch_model))


class _Quadratic:
    """F(M) = 0.5 * ||M - c||^2, a case where each grid step's acceptance is known."""

    def __init__(self, c):
        self.c = c

    def value(self, cand, idx):
        return 0.5 * (cand - self.c[idx, None]).flatten(2).pow(2).sum(2)


@pytest.mark.parametrize("warm", [False, True])
def test_line_search_accepts_only_when_condition_holds(warm):
    torch.manual_seed(0)
    c = torch.full((2, 1, 4, 4), 0.4)
    m = torch.ones(2, 1, 4, 4)
    q = _Quadratic(c)
    g = m - c  # exact gradient
    f = q.value(m.unsqueeze(1), torch.arange(2))[:, 0]
    ls = ArmijoLineSearch(alpha_max=1000, decay=0.2, beta=0.4, alpha_min=1e-5, window=3, warm_start=warm)
    if warm:
        ls._prev = [0, 0]
    new, alpha, f_new = ls.step(m, g, q.value, f)
    # F(M) = 2.88, ||g||^2 = 5.76; a step a gives M' = clip(1 - 0.6 a) and passes when
    # 8 (M' - 0.4)^2 - 2.88 <= -2.304 a: 1000, 200, 40, 8 and 1.6 (M' = 0.04: -1.84 > -3.69) fail,
    # 0.32 (M' = 0.808: -1.55 <= -0.74) passes, so backtracking accepts 0.32
    for b in range(2):
        a = float(alpha[b])
        fa = float(q.value(((m[b:b + 1] - a * g[b:b + 1]).clamp(0, 1)).unsqueeze(1), torch.tensor([b]))[0, 0])
        gg = float(g[b].pow(2).sum())
        assert fa - float(f[b]) <= -a * 0.4 * gg + 1e-9
        above = a / 0.2
        fa_up = float(q.value(((m[b:b + 1] - above * g[b:b + 1]).clamp(0, 1)).unsqueeze(1), torch.tensor([b]))[0, 0])
        assert fa_up - float(f[b]) > -above * 0.4 * gg
        assert a == pytest.approx(0.32)
    assert torch.allclose(f_new, q.value(new.unsqueeze(1), torch.arange(2))[:, 0])


def test_line_search_floor():
    # a direction that never decreases F: every step fails and the smallest grid step is used
    c = torch.zeros(1, 1, 2, 2)
    q = _Quadratic(c)
    m = torch.full((1, 1, 2, 2), 0.5)
    g = -torch.ones_like(m)  # uphill
    f = q.value(m.unsqueeze(1), torch.arange(1))[:, 0]
    ls = ArmijoLineSearch()
    _, alpha, _ = ls.step(m, g, q.value, f)
    assert float(alpha[0]) == pytest.approx(ls.grid()[-1]) and ls.grid()[-1] < 1e-5


def test_bad_resolution(patch_model, patch_input):
    with pytest.raises(faithmap.FaithmapError, match="resolution"):
        faithmap.explain(patch_model, patch_input, "igos", resolution=64)
    with pytest.raises(faithmap.FaithmapError, match="no parameter"):
        faithmap.explain(patch_model, patch_input, "igos", colour="red")


@pytest.mark.slow
def test_igos_real_model(lite0, coffee):
    e = faithmap.explain(lite0, coffee, "igos", iterations=4, ig_steps=6)
    assert lite0.class_name(int(e.target)) == "espresso"
    c = deletion_insertion(lite0, coffee, e.saliency, e.target)
    rnd = deletion_insertion(lite0, coffee, torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0)), e.target)
    assert c.deletion_auc[0] < rnd.deletion_auc[0] and c.insertion_auc[0] > rnd.insertion_auc[0]


def test_line_search_bound_is_a_lower_bound_and_changes_nothing(patch_model, patch_input, monkeypatch):
    """Trials rejected by the model-free bound are exactly those the full evaluation would reject."""
    from faithmap.methods.mask import MaskOptimizer
    from faithmap.methods.igospp import igospp_optimizer
    from faithmap.core.batching import per_image_generators
    from faithmap.core.perturb import make_baseline
    from faithmap.core.scores import score_of
    from faithmap.methods.mask import MaskState

    x = patch_input
    base = make_baseline("blur", x, patch_model.mean.to(x), patch_model.std.to(x))
    st = MaskState(patch_model, x, base, torch.zeros(1, dtype=torch.long), score_of("prob"), 64,
                   per_image_generators(0, 1, x.device), 0.0)
    g = torch.Generator().manual_seed(0)
    for opt in (MaskOptimizer(terms=[PathTerm("deletion", 0)], regularizer=L1TV(1.0, 20.0), ls_points=3),
                igospp_optimizer((8, 8), iterations=1, ig_steps=4, l1=None, l2=20.0, smooth="btv", tv_beta=2.0,
                                 sigma=0.01, noise_std=0.0, noise_product=False, data_scale=None, alpha_max=1000.0,
                                 decay=0.2, beta=1e-4, alpha_min=1e-5, ls_points=2, ls_window=None,
                                 warm_start=False, step_size=1.0, ablation=None)):
        cand = torch.rand(1, 5, opt.n_masks, 8, 8, generator=g) ** 3
        idx = torch.zeros(1, dtype=torch.long)
        assert (opt.objective_lower_bound(st, cand, idx) <= opt.objective(st, cand, idx) + 1e-6).all()

    params = dict(resolution=8, iterations=6, ig_steps=6)
    with_bound = faithmap.explain(patch_model, x, "igos", target=0, **params)
    monkeypatch.setattr(MaskOptimizer, "objective_lower_bound",
                        lambda self, st, cand, idx: torch.full(cand.shape[:2], -float("inf")))
    without = faithmap.explain(patch_model, x, "igos", target=0, **params)
    assert torch.equal(with_bound.history["alpha"], without.history["alpha"])
    assert torch.allclose(with_bound.saliency, without.saliency)
    assert with_bound.counts["images"] < without.counts["images"]  # the bound saved model evaluations
