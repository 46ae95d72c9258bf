"""scikit-learn's handwritten digits, upsampled, and a small CNN trained on them in seconds.

Used by the data-randomisation sanity check (Adebayo et al. 2018; iGOS++, Khorram, Lawson & Li, ACM CHIL 2021, sec. 4,
trains a small CNN on real and on random labels): the 1,797 8 x 8 digits of
:func:`sklearn.datasets.load_digits` (bundled with scikit-learn, nothing is downloaded) are
upsampled bilinearly to ``size`` x ``size``, repeated on three channels and normalised with mean
and std 0.5. Training is seeded (initialisation, label shuffle, mini-batch order) and runs on the
CPU in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Classifier, wrap

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
CLASS_NAMES = [str(d) for d in range(10)]


@dataclass
class Digits:
    """Normalised images (N, 3, size, size), labels (N,), and the index of the first test image."""

    x: torch.Tensor
    y: torch.Tensor
    n_train: int

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:self.n_train], self.y[:self.n_train]

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[self.n_train:], self.y[self.n_train:]


def load_digits(size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """The digits as model inputs, in a seeded random order, the last ``test_fraction`` held out."""
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    pixels = torch.from_numpy(d.images).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    x = ((pixels - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(round(len(y) * (1 - test_fraction)))
    return Digits(x[perm], y[perm], n_train)


class DigitsCNN(nn.Module):
    """Three conv blocks, a 2 x 2 max-pool and a linear head on the flattened 4 x 4 grid (at 32 px);
    ``features.7`` (the last ReLU, 8 x 8 at 32 px) is the CAM layer."""

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 32), classes: int = 10):
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveMaxPool2d(4)
        self.fc = nn.Linear(c3 * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.fc(self.pool(self.features(x)).flatten(1))


def train_digits_cnn(data: Digits | None = None, *, shuffle_labels: bool = False, epochs: int = 3,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0, size: int = 32) -> Classifier:
    """A :class:`DigitsCNN` trained with Adam on the training digits, as a :class:`Classifier`.

    ``shuffle_labels=True`` trains on a seeded random permutation of the labels (the
    data-randomisation model of Adebayo et al.); initialisation and mini-batch order are the same
    as with the real labels. ``extras``: the model's ``train_accuracy`` and ``test_accuracy`` (on
    the real labels) are set as attributes.
    """
    data = data or load_digits(size)
    g = torch.Generator().manual_seed(seed)
    net = DigitsCNN()
    with torch.no_grad():  # seeded initialisation, independent of the global RNG
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.zero_()
    x, y = data.train
    labels = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))] if shuffle_labels else y
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed + 2)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=order_gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(net(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    clf = wrap(net, mean=MEAN, std=STD, input_size=size, class_names=CLASS_NAMES, cam_layer="features.7",
               name="digits_cnn_random_labels" if shuffle_labels else "digits_cnn")
    with torch.no_grad():
        clf.train_accuracy = float((net(x).argmax(1) == labels).float().mean())
        xt, yt = data.test
        clf.test_accuracy = float((net(xt).argmax(1) == yt).float().mean())
    return clf


__all__ = ["CLASS_NAMES", "Digits", "DigitsCNN", "load_digits", "train_digits_cnn"]
