"""Invariants every registered method must meet, parametrised from the registry:
maps on the input's device with one map per image, batched equals one-by-one with the same seed,
and the user's model unchanged afterwards (modes, requires_grad, hooks, parameters), also when the
method raises."""

import pytest
import torch
from torch import nn

import faithmap
from faithmap.errors import FaithmapError
from faithmap.models import wrap

from conftest import assert_state_equal, model_state
from evalkit import TinyCNN as TinyNet  # the small random CNN of the evaluation tests

METHODS = faithmap.METHODS.names()


def tiny_model():
    torch.manual_seed(0)
    return wrap(TinyNet().eval(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32,
                cam_layer="features.4", name="tiny")


def tiny_inputs(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def fast_params(name):
    spec = faithmap.METHODS.get(name)
    params = dict(spec.fast)
    if spec.resolution == "mask":
        params["resolution"] = 8
    return params


@pytest.mark.parametrize("name", METHODS)
def test_batched_equals_one_by_one(name):
    model, x = tiny_model(), tiny_inputs()
    params = fast_params(name)
    target = torch.tensor([0, 1, 2])
    both = faithmap.explain(model, x, name, target=target, seed=3, **params)
    assert both.saliency.shape[0] == 3 and both.saliency.dim() == 3
    assert both.saliency.device == x.device and torch.isfinite(both.saliency).all()
    for i in range(3):
        one = faithmap.explain(model, x[i:i + 1], name, target=target[i:i + 1], seed=3, **params)
        scale = both.saliency[i].abs().max().clamp_min(1e-12)
        assert torch.allclose(both.saliency[i] / scale, one.saliency[0] / scale, atol=1e-4), name


@pytest.mark.parametrize("name", METHODS)
def test_model_unchanged(name):
    model, x = tiny_model(), tiny_inputs(2)
    model.net.train()
    model.net.features[0].weight.requires_grad_(False)
    before = model_state(model)
    faithmap.explain(model, x, name, seed=0, **fast_params(name))
    assert_state_equal(before, model_state(model))


@pytest.mark.parametrize("name", METHODS)
def test_model_unchanged_when_method_raises(name):
    model, x = tiny_model(), tiny_inputs(2)
    before = model_state(model)
    calls = {"n": 0}

    def boom(m, args):
        calls["n"] += 1
        if calls["n"] > 1:  # let target selection through, fail inside the method
            raise RuntimeError("boom")

    h = model.net.fc.register_forward_pre_hook(boom)
    try:
        if faithmap.METHODS.get(name).family == "baseline":
            # model-blind: nothing inside the method reaches the model, so nothing there can fail
            faithmap.explain(model, x, name, seed=0, **fast_params(name))
            assert calls["n"] == 1  # the target selection's pass only
        else:
            with pytest.raises(RuntimeError, match="boom"):
                faithmap.explain(model, x, name, seed=0, **fast_params(name))
    finally:
        h.remove()
    assert_state_equal(before, model_state(model))


def test_model_guard_sets_eval_and_freezes_then_restores_mixed_states():
    from faithmap.core.batching import model_guard
    from faithmap.models.layers import get_layer

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.Dropout()))
    net.eval()
    net[1].train()  # one module training, the rest not
    net[0].bias.requires_grad_(False)
    before = [(m.training) for m in net.modules()], [p.requires_grad for p in net.parameters()]
    with model_guard(net):
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
        net[2].train()  # the body may change modes too: still restored
    assert ([m.training for m in net.modules()], [p.requires_grad for p in net.parameters()]) == before
    # get_layer walks the dotted path and names what is missing
    assert get_layer(net, "2.1") is net[2][1]
    with pytest.raises(FaithmapError, match="no layer '2.5'"):
        get_layer(net, "2.5")
