"""Deletion/insertion against analytic cases and a slow literal reference."""

import pytest
import torch
from torch import nn

from faithmap.core.perturb import phi, upsample
from faithmap.errors import FaithmapError
from faithmap.metrics import deletion_insertion, ranking
from faithmap.models import wrap


class ConstantModel(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.zeros(x.shape[0], self.k, device=x.device) + 0 * x.sum()


class MeanModel(nn.Module):
    """logit_0 = mean of the image (so the 'logit' score is the kept fraction when image=1, base=0)."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([m, -m], 1)


def test_constant_model_auc_equals_constant():
    model = wrap(ConstantModel(4), mean=(0, 0, 0), std=(1, 1, 1), input_size=16)
    x = torch.rand(3, 3, 16, 16)
    sal = torch.rand(3, 7, 7)
    c = deletion_insertion(model, x, sal, torch.tensor([0, 1, 2]))
    assert torch.allclose(c.deletion_auc, torch.full((3,), 0.25, dtype=torch.float64))
    assert torch.allclose(c.insertion_auc, torch.full((3,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("step", [1, 3, 5, 7])
def test_kept_fraction_model_exact_auc(step):
    # image of ones, baseline of zeros, map at input resolution: score = fraction of kept pixels
    model = wrap(MeanModel(), mean=(0, 0, 0), std=(1, 1, 1), input_size=8)
    x = torch.ones(2, 3, 8, 8)
    sal = torch.rand(2, 8, 8)
    c = deletion_insertion(model, x, sal, torch.zeros(2, dtype=torch.long), baseline=torch.zeros(1, 3, 8, 8),
                           score="logit", step=step)
    assert torch.allclose(c.deletion, 1 - c.fractions.expand(2, -1), atol=1e-6)
    assert torch.allclose(c.insertion, c.fractions.expand(2, -1), atol=1e-6)
    assert torch.allclose(c.deletion_auc, torch.full((2,), 0.5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(c.insertion_auc, torch.full((2,), 0.5, dtype=torch.float64), atol=1e-6)
    assert c.fractions[0] == 0 and c.fractions[-1] == 1
    n_steps = len(c.fractions) - 1
    assert n_steps == -(-64 // step)
    assert c.images == 2 * 2 * n_steps


def _slow_reference(model, x, sal, target, step, base):
    """Literal loop: one image at a time, one step at a time, trapezoid by hand."""
    h, w = sal.shape[-2:]
    cells = h * w
    order = sorted(range(cells), key=lambda i: (-float(sal.flatten()[i]), i))
    dels, inss, fr = [], [], []
    n = 0
    while True:
        removed = torch.zeros(cells)
        removed[order[:n]] = 1
        up = upsample(removed.view(1, 1, h, w), x.shape[-2:])
        with torch.no_grad():
            d = torch.softmax(model(phi(x, base, 1 - up)), 1)[0, target]
            i = torch.softmax(model(phi(x, base, up)), 1)[0, target]
        dels.append(float(d)), inss.append(float(i)), fr.append(n / cells)
        if n == cells:
            break
        n = min(cells, n + step)
    auc = lambda ys: sum((fr[k + 1] - fr[k]) * (ys[k] + ys[k + 1]) / 2 for k in range(len(fr) - 1))
    return dels, inss, auc(dels), auc(inss)


def test_against_slow_reference(patch_model, patch_input):
    from faithmap.core import blur_baseline

    sal = torch.rand(1, 7, 7, generator=torch.Generator().manual_seed(3))
    c = deletion_insertion(patch_model, patch_input, sal, torch.tensor([0]), step=4, batch_size=5)
    d, i, da, ia = _slow_reference(patch_model, patch_input, sal[0], 0, 4, blur_baseline(patch_input))
    assert torch.allclose(c.deletion[0].float(), torch.tensor(d), atol=1e-5)
    assert torch.allclose(c.insertion[0].float(), torch.tensor(i), atol=1e-5)
    assert abs(float(c.deletion_auc[0]) - da) < 1e-5 and abs(float(c.insertion_auc[0]) - ia) < 1e-5


def test_ranking_ties_by_index():
    assert ranking(torch.tensor([[[1.0, 2.0], [2.0, 0.0]]])).tolist() == [[1, 2, 0, 3]]


def test_model_image_count_is_two_per_step(patch_model, patch_input):
    patch_model.counter.images = 0
    c = deletion_insertion(patch_model, patch_input, torch.rand(1, 28, 28), torch.tensor([0]))
    steps = len(c.fractions) - 1
    assert steps == 53 and patch_model.counter.images == 2 * steps


def test_bad_maps(patch_model, patch_input):
    with pytest.raises(FaithmapError):
        deletion_insertion(patch_model, patch_input, torch.rand(2, 7, 7), torch.tensor([0]))
    with pytest.raises(FaithmapError):
        deletion_insertion(patch_model, patch_input, torch.full((1, 7, 7), float("nan")), torch.tensor([0]))
