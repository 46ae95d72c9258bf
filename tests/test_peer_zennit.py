"""Parity with zennit 0.5 (test-only peer): Excitation Backprop (MWP) and c-MWP against zennit's
``ExcitationBackprop`` composite on a tiny CNN, a VGG-like net with batch norms, torchvision's ResNet-18
and (slow) EfficientNet-Lite0.

Like with like: zennit's composite with ``zero_params=["bias"]`` (the paper's rule has no bias term;
zennit's default lets the positive bias into the normaliser), its canonizers merging batch norms into
the preceding convolution (``SequentialMergeBatchNorm``; ``ResNetCanonizer`` also routes the residual
``+`` through its ``Sum`` module) and, for Lite0, a canonizer of the same kind for the MBConv skip
written here. zennit's relevance at a tensor is the gradient there, read with ``retain_grad`` at the
read-out layer's output. c-MWP: zennit run twice, the second time on a copy whose classifier weights
are negated, and the maps subtracted. zennit's merged batch norm computes ``x / sqrt(1 + eps)`` instead
of the identity, so agreement is to about 1e-5 relative per batch norm on the way.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import faithmap
from faithmap.models import wrap

from test_excitation import VGGish, _randomize_bn, clf, inputs, rel_err
from test_invariants import tiny_inputs, tiny_model

pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import ExcitationBackprop  # noqa: E402
from zennit.layer import Sum  # noqa: E402


def zennit_mwp(net: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None, canonizers=(),
               classifier: str | None = None) -> torch.Tensor:
    """zennit's excitation-backprop relevance at ``layer``'s output (``None``: the input); with
    ``classifier``, the contrastive map (the run on a copy with that layer's weights negated subtracted)."""

    def run(model):
        store = {}
        handle = None
        if layer is not None:
            def keep(m, i, o):
                if o.requires_grad:
                    o.retain_grad()
                    store["o"] = o

            handle = model.get_submodule(layer).register_forward_hook(keep)
        with torch.no_grad():
            onehot = torch.eye(model(x[:1]).shape[1])[target]
        comp = ExcitationBackprop(zero_params=["bias"], canonizers=[copy.deepcopy(c) for c in canonizers])
        try:
            with Gradient(model=model, composite=comp) as attributor:
                _, relevance = attributor(x.clone(), onehot)
        finally:
            if handle is not None:
                handle.remove()
        return (store["o"].grad if layer is not None else relevance).detach()

    net = copy.deepcopy(net).eval()
    out = run(net)
    if classifier is not None:
        dual = copy.deepcopy(net)
        with torch.no_grad():
            dual.get_submodule(classifier).weight.neg_()
        out = out - run(dual)
    return out


def check(model, x, t, layer, canonizers=(), classifier=None, tol=1e-4):
    for method in ("mwp", "excitation_bp"):
        e = faithmap.explain(model, x, method, t, layer=layer or "input")
        ref = zennit_mwp(model.net, x, t, layer, canonizers, classifier if method == "excitation_bp" else None)
        assert float(ref.abs().max()) > 0
        err = rel_err(e.attribution, ref)
        assert err < tol, (method, layer, err)


@pytest.mark.parametrize("layer", [None, "features.1", "features.4"])
def test_tiny_cnn_matches_zennit(layer):
    model, x = tiny_model(), tiny_inputs()
    check(model, x, torch.tensor([0, 3, 2]), layer, classifier="fc", tol=1e-5)


@pytest.mark.parametrize("layer", [None, "features.2", "features.6", "features.10", "pool"])
def test_vgg_like_with_batch_norms_matches_zennit(layer):
    model, x = clf(VGGish()), inputs()
    check(model, x, torch.tensor([0, 4, 2]), layer, [SequentialMergeBatchNorm()], classifier="classifier.4")


@pytest.mark.parametrize("layer", [None, "layer1", "layer2", "layer3"])
def test_resnet18_matches_zennit(layer):
    torchvision = pytest.importorskip("torchvision")
    from zennit.torchvision import ResNetCanonizer

    net = torchvision.models.resnet18(num_classes=10)
    _randomize_bn(net, torch.Generator().manual_seed(0))
    model = wrap(net.eval(), input_size=64, name="resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    check(model, x, torch.tensor([1, 7]), layer, [ResNetCanonizer()], classifier="fc")
    if layer == "layer3":  # the default read-out
        assert faithmap.explain(model, x, "excitation_bp", torch.tensor([1, 7])).extras["layer"] == "layer3"


class MBConvSum(AttributeCanonizer):
    """Routes the MBConv skip of faithmap's Lite0 port through zennit's ``Sum`` (as zennit's ResNet canonizer
    does for torchvision's blocks)."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name, module):
        from faithmap.models.efficientnet_lite import MBConv

        if isinstance(module, MBConv) and module.residual:
            return {"forward": MBConvSum.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return self.canonizer_sum(torch.stack([x, y], dim=-1))


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["features.11", "features.5"])
def test_lite0_matches_zennit(lite0, coffee, layer):
    t = lite0(coffee).argmax(1)
    check(lite0, coffee, t, layer, [MBConvSum()], classifier="classifier")
