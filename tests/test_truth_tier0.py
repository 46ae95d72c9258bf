"""Tier 0: models whose dependence on the input is known by construction (grid and masked models).

The construction is checked analytically (gradients are exactly zero where the model cannot look),
by intervention (the gates), and by a broken model that the gate must catch."""

import numpy as np
import pytest
import torch
from torch import nn

import faithmap
from faithmap.core.batching import torch_threads
from faithmap.truth import tier0
from faithmap.truth.scores import truth_scores


@pytest.fixture(scope="module")
def grid():
    return tier0.grid_scenario(0, "cnn", images=3)


@pytest.fixture(scope="module")
def masked():
    return tier0.masked_scenario(0, "cnn", images=3)


def test_tile_is_the_inverse_of_the_cell_split():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    cells = tier0.split_cells(x)
    assert cells.shape == (8, 3, 4, 4)
    assert torch.equal(cells[1], x[0, :, :4, 4:]) and torch.equal(cells[6], x[1, :, 4:, :4])  # row-major cells
    assert torch.equal(tier0.Tile()(cells), x)


def test_gates_pass_and_the_evidence_is_the_target_cell(grid, masked):
    for sc in (grid, masked):
        assert sc.passed, [(g.name, g.value) for g in sc.gates]
        assert sc.tier == 0 and sc.evidence.shape == (3, 64, 64) and sc.x.shape == (3, 3, 64, 64)
    cells = torch.tensor(grid.info["target_cells"])
    assert torch.equal(grid.target // tier0.CNN_CLASSES, cells)
    assert torch.equal(grid.evidence, tier0.cell_masks(64)[cells])
    assert grid.evidence.float().mean() == 0.25
    share = masked.evidence[0].float().mean()
    assert 0.14 <= share <= 0.4 and masked.info["evidence_share"] == pytest.approx(float(share))
    assert grid.model.cam_layer == "tile" and masked.model.cam_layer == "net.features.7"


@pytest.mark.parametrize("kind", ["grid", "masked"])
def test_vanilla_gradient_has_no_mass_where_the_model_cannot_look(kind, grid, masked):
    """Analytic reason. Grid: output ``k K + c`` is ``log_softmax(head(mean(trunk(cell_k))))[c]``, a
    function of cell k's pixels alone (the trunk runs on each cell separately, the pooling reads
    quadrant k of the tiled map, the log-softmax normalises within cell k), so its derivative with
    respect to any pixel of another cell is 0; backpropagation computes it as sums of products with
    an exactly-zero upstream gradient, so it is 0.0 in floating point too. Masked: the network sees
    ``x * visible``, so ``d out / d x_p = visible_p * (d out / d (x * visible))_p = 0`` where
    ``visible_p = 0``. Hence the vanilla gradient's map (summed absolute gradient) is 0 outside the
    evidence and its outside mass is 0 within float tolerance."""
    sc = grid if kind == "grid" else masked
    e = faithmap.explain(sc.model, sc.x, "saliency", target=sc.target)
    outside = e.saliency.masked_select(~sc.evidence)
    assert outside.abs().max() == 0.0
    s = truth_scores(e.saliency, sc.evidence, tier=0)
    np.testing.assert_allclose(s["outside"], 0.0, atol=1e-7)
    assert (e.saliency.masked_select(sc.evidence) > 0).float().mean() > 0.5  # and it does see the evidence


def test_cam_upsampling_leaks_and_global_weights_leak_more(grid):
    """Layer-CAM is element-wise (positive gradient times activation), and the gradient of the target's
    output on the tiled map is exactly 0 outside the target's quadrant: on its 16 x 16 grid the map is
    0 outside the cell. Upsampled block by block (nearest, 4 x 4 pixels a cell, the cell border on a
    block border) nothing leaks; the bilinear upsampling of faithmap's metrics (align_corners=True)
    spreads the border cells over the neighbouring cells: a measurable leak. Grad-CAM weights every
    channel by its gradient averaged over the whole map and applies the weights to every cell's
    activations: most of its mass lands in cells the model never reads for this target."""
    lc = faithmap.explain(grid.model, grid.x, "layercam", target=grid.target).saliency
    assert lc.shape == (3, 16, 16)
    s = truth_scores(lc, grid.evidence, tier=0)
    np.testing.assert_allclose(s["outside_nearest"], 0.0, atol=1e-7)
    assert (s["outside"] > 1e-3).all() and (s["outside_halfpixel"] > 1e-3).all()
    gc = truth_scores(faithmap.explain(grid.model, grid.x, "gradcam", target=grid.target).saliency, grid.evidence, tier=0)
    assert (gc["outside_nearest"] > 0.3).all()


def test_perturbation_windows_leak_across_cells(grid):
    """Occlusion averages the score drop of every window covering a pixel: windows that straddle the
    cell border give the neighbouring cell's pixels the drop caused by the target cell's part."""
    occ = faithmap.explain(grid.model, grid.x, "occlusion", target=grid.target, patch=12, stride=8).saliency
    assert (truth_scores(occ, grid.evidence, tier=0)["outside"] > 0.01).all()


class _LeakyGrid(tier0.GridModel):
    """A broken grid model: the head pools the whole tiled map, so every cell reaches every output."""

    def forward(self, x):  # noqa: D102
        tiled = self.tile(self.trunk(tier0.split_cells(x, self.grid)))
        z = self.head(tiled.mean((2, 3))).unsqueeze(1).expand(-1, self.grid * self.grid, -1)
        return torch.log_softmax(z, -1).flatten(1)


def test_the_gate_catches_a_model_that_reads_other_cells(grid):
    """The construction is checked by intervention, and the check can fail."""
    from faithmap.models import wrap

    inner = grid.model.net
    leaky = wrap(_LeakyGrid(inner.trunk, inner.head).eval(), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=64,
                 cam_layer="tile")
    other = tier0.grid_images(np.random.default_rng(9), 3, tier0.CELL["cnn"])
    gates = tier0._gates(leaky, grid.x, grid.target, grid.evidence, leaky.normalize(other))
    assert not gates[0].passed and gates[0].value > 1e-2
    assert all(g.passed for g in tier0._gates(grid.model, grid.x, grid.target, grid.evidence, grid.model.normalize(other)))


def test_same_seed_same_scenario_and_data_independent_of_threads():
    with torch_threads(1):
        a = tier0.masked_scenario(3, "cnn", images=2)
    with torch_threads(2):
        b = tier0.masked_scenario(3, "cnn", images=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target) and torch.equal(a.evidence, b.evidence)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    c = tier0.masked_scenario(4, "cnn", images=2)
    assert not torch.equal(a.x, c.x) and not torch.equal(a.evidence, c.evidence)


def test_build_refuses_unknown_trunks_in_one_line():
    with pytest.raises(faithmap.FaithmapError, match="unknown tier-0 trunk or kind 'vgg'"):
        tier0.build(0, trunks=("vgg",))


@pytest.mark.slow
def test_lite0_grid_is_exact_too():
    """The same construction around the embedded EfficientNet-Lite0 (64 px cells, a 4 x 4 tiled map):
    the gates pass and the vanilla gradient is exactly 0 outside the target's cell."""
    sc = tier0.grid_scenario(0, "lite0", images=2)
    assert sc.passed and sc.model.cam_layer == "tile" and sc.x.shape == (2, 3, 128, 128)
    e = faithmap.explain(sc.model, sc.x, "saliency", target=sc.target)
    assert e.saliency.masked_select(~sc.evidence).abs().max() == 0.0
    assert isinstance(sc.model.net.trunk, nn.Sequential)
