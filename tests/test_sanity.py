"""Sanity checks (Adebayo et al. 2018): similarities against scipy / scikit-image, cascading model
randomisation on a tiny model, data randomisation on the digits CNN, and the CLI."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from faithmap.cli import main
from faithmap.data.digits import load_digits, train_digits_cnn
from faithmap.errors import FaithmapError
from faithmap.metrics import sanity
from faithmap.models import wrap

from conftest import assert_state_equal, model_state


def test_spearman_equals_scipy_with_ties():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=g).float()  # many ties
    b = torch.rand(3, 40, generator=g) + a * 0.3
    ours = sanity.spearman(a, b)
    for i in range(3):
        assert abs(float(ours[i]) - spearmanr(a[i].numpy(), b[i].numpy()).statistic) < 1e-10
    assert torch.isnan(sanity.spearman(torch.ones(1, 10), torch.rand(1, 10)))[0]


def test_ssim_equals_scikit_image():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 20, 17, generator=g)
    b = (a + 0.3 * torch.rand(2, 20, 17, generator=g)).clamp(0, 1)
    ours = sanity.ssim(a, b)
    for i in range(2):
        ref = structural_similarity(a[i].double().numpy(), b[i].double().numpy(), data_range=1.0)
        assert abs(float(ours[i]) - ref) < 1e-10
    assert torch.allclose(sanity.ssim(a, a), torch.ones(2, dtype=torch.float64))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 16, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_max_pool2d(self.features(x), 4).flatten(1))


def gradient_saliency(model, x, target):
    """|d score / d x| summed over channels: a model-dependent map."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        s = model(x).gather(1, target.view(-1, 1)).sum()
        g, = torch.autograd.grad(s, x)
    return g.abs().sum(1)


def edge_detector(model, x, target):
    """A map that ignores the model: the image's gradient magnitude."""
    gray = x.mean(1)
    gx = torch.zeros_like(gray)
    gy = torch.zeros_like(gray)
    gx[:, :, 1:] = gray[:, :, 1:] - gray[:, :, :-1]
    gy[:, 1:, :] = gray[:, 1:, :] - gray[:, :-1, :]
    return (gx ** 2 + gy ** 2).sqrt()


def test_model_randomisation_flags_a_random_models_map():
    model = wrap(Tiny().eval(), mean=(0, 0, 0), std=(1, 1, 1), input_size=16)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 2])
    model.net.train()  # the check must leave modes, flags and parameters as they were
    before = model_state(model)
    res = sanity.model_randomisation(model, x, t, gradient_saliency, seed=0)
    assert_state_equal(before, model_state(model))
    assert res.steps == ["original", "fc", "features.2", "features.0"]
    assert torch.allclose(res.spearman[:, 0], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(res.ssim[:, 0], torch.ones(3, dtype=torch.float64))
    # once the top layer is random the gradient map has changed
    assert float(res.spearman[:, 1:].mean()) < 0.6 and float(res.ssim[:, -1].mean()) < 0.6
    assert len(res.maps) == 4 and not torch.allclose(res.maps[0], res.maps[-1])
    # a map that ignores the model passes untouched: the check exposes it
    fake = sanity.model_randomisation(model, x, t, edge_detector, seed=0)
    assert torch.allclose(fake.spearman, torch.ones_like(fake.spearman))
    table = res.table()
    assert [r["step"] for r in table] == res.steps and table[0]["spearman"] == pytest.approx(1.0)


def test_model_randomisation_bad_layer():
    model = wrap(Tiny().eval(), mean=(0, 0, 0), std=(1, 1, 1), input_size=16)
    with pytest.raises(FaithmapError, match="no layer with parameters named 'nope'"):
        sanity.model_randomisation(model, torch.rand(1, 3, 16, 16), torch.tensor([0]), gradient_saliency, layers=["nope"])


@pytest.fixture(scope="module")
def digits16():
    return load_digits(16, seed=0)


def test_digits_cnn_learns_real_labels_not_random_ones(digits16):
    real = train_digits_cnn(digits16, epochs=2, size=16, seed=0)
    rand = train_digits_cnn(digits16, epochs=2, size=16, seed=0, shuffle_labels=True)
    assert real.test_accuracy > 0.85
    assert rand.test_accuracy < 0.3
    few = type(digits16)(digits16.x[:150], digits16.y[:150], 128)
    one, two = (train_digits_cnn(few, epochs=1, size=16, seed=0) for _ in range(2))
    for p, q in zip(one.net.parameters(), two.net.parameters()):
        assert torch.equal(p, q), "training is seeded"
    xt, yt = digits16.test
    x, y = xt[:6], yt[:6]
    res = sanity.data_randomisation(real, rand, x, y, gradient_saliency)
    fake = sanity.data_randomisation(real, rand, x, y, edge_detector)
    assert torch.allclose(fake.spearman, torch.ones_like(fake.spearman))
    assert float(res.spearman.mean()) < 0.9 * float(fake.spearman.mean())
    assert float(res.ssim.mean()) < float(fake.ssim.mean())


def test_cli_sanity_writes_plot_and_tables(tmp_path, capsys):
    out = tmp_path / "san"
    rc = main(["sanity", "--method", "igos", "--fast", "--param", "iterations=2", "--param", "ig_steps=2",
               "--param", "resolution=4", "--n-images", "2", "--layers", "2", "--epochs", "1", "--digits-size", "16",
               "--out", str(out)])
    assert rc == 0
    files = sorted(os.listdir(out))
    assert files == [f"sanity_{c}_igos.{e}" for c in ("data", "model") for e in ("json", "md", "png")]
    model = json.loads((out / "sanity_model_igos.json").read_text())
    assert [r["step"] for r in model["rows"]] == ["original", "fc", "features.6"]
    assert model["rows"][0]["spearman"] == pytest.approx(1.0)
    assert "| original | 1.000" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["sanity", "--method", "igos", "--check", "weights"], "--check must be"),
    (["sanity", "--method", "nope"], "unknown method"),
    (["sanity", "--method", "igos", "sample:coffee"], "photos need a photo model"),
    (["sanity", "--method", "igos", "--param", "bogus=1"], "has no parameter 'bogus'"),
])
def test_cli_sanity_bad_input(tmp_path, capsys, argv, msg):
    rc = main(argv + ["--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("faithmap: error:") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
