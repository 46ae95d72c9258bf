"""The offline GAD demo: scikit-learn's handwritten digits and two small classifiers trained here.

The papers' data (cats vs dogs, CUB birds) cannot be downloaded, so the demo uses the 8 x 8 digits
that scikit-learn ships (1797 images, about 180 per digit), upsampled to 32 x 32 (bilinear), grey
values replicated on 3 channels, pixels in [0, 1] used as model inputs as they are (mean 0, std 1:
the zero input is the blank image). Each class is split 70/30 into training and test images with a
fixed seed.

Like the paper's cats-vs-dogs and warbler-vs-sparrow models, the demo classifier is *binary*: it is
trained on the two chosen digits only, with outputs ``[digit a, digit b]``. Two architectures stand
in for the paper's VGG16 and ResNet18: a plain CNN (``cnn``) and a residual CNN (``resnet``), both
with ReLU modules and no batch norm. Training is seeded and deterministic (cross-entropy, Adam,
lr 2e-3, batch 16, 20 epochs) and takes about 15-25 s per model on a busy 2-core CPU; the trained
weights are cached. It always runs in one torch thread: a CPU's sums, hence the trained weights,
depend on the thread count (1 vs 2 threads: weights apart by 0.05 after 5 epochs), and the demo
classifiers should be the same whatever ``--threads`` the run uses (about 5 s each in one thread).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import model_guard, torch_threads
from ..core.io import atomic_open
from ..errors import FaithmapError
from ..models import Classifier, wrap
from .support import default_cache_dir

DIGITS_SIZE = 32


@dataclass
class Digits:
    """Train/test split of two digits as model inputs (N, 3, S, S) with binary labels (0 = ``digits[0]``)."""

    digits: tuple[int, int]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def class_names(self) -> list[str]:
        return [str(d) for d in self.digits]


def check_digits(classes) -> tuple[int, int]:
    """Two different digits 0-9 from ints or strings; one clear error otherwise."""
    if len(classes) != 2:
        raise FaithmapError(f"give exactly two classes, got {len(classes)}")
    out = []
    for c in classes:
        s = str(c).strip()
        if not s.isdigit() or not 0 <= int(s) <= 9:
            raise FaithmapError(f"unknown class {c!r} for the digits demo; choose two digits 0-9")
        out.append(int(s))
    if out[0] == out[1]:
        raise FaithmapError(f"the two classes must differ, got {out[0]} twice")
    return out[0], out[1]


def load_digits(classes=(3, 8), size: int = DIGITS_SIZE, test_fraction: float = 0.3, seed: int = 0) -> Digits:
    """The images of two digits from ``sklearn.datasets.load_digits``, upsampled to ``size``."""
    from sklearn.datasets import load_digits as sk_digits

    a, b = check_digits(classes)
    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    target = torch.tensor(bunch.target)
    g = torch.Generator().manual_seed(seed)
    parts = {"xtr": [], "ytr": [], "xte": [], "yte": []}
    for label, digit in enumerate((a, b)):
        idx = torch.nonzero(target == digit).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(test_fraction * len(idx)))
        for key, sel in (("te", idx[:n_test]), ("tr", idx[n_test:])):
            x = F.interpolate(images[sel].unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
            parts["x" + key].append(x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous())
            parts["y" + key].append(torch.full((len(sel),), label, dtype=torch.long))
    return Digits((a, b), torch.cat(parts["xtr"]), torch.cat(parts["ytr"]), torch.cat(parts["xte"]),
                  torch.cat(parts["yte"]))


class DigitsCNN(nn.Module):
    """A small VGG-like CNN: two conv-conv-pool stages and a two-layer head."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):  # noqa: D102
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """conv-ReLU-conv plus the identity (or a strided 1x1 projection), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, stride=stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x):  # noqa: D102
        return self.relu2(self.conv2(self.relu1(self.conv1(x))) + self.skip(x))


class DigitsResNet(nn.Module):
    """A small residual CNN: a stem and three basic blocks (32, 16, 8 px), global pooling, a linear head."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 32, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):  # noqa: D102
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))).flatten(1))


ARCHS = {"cnn": (DigitsCNN, "features.8"), "resnet": (DigitsResNet, "layer3")}


def build(arch: str, class_names, seed: int = 0) -> Classifier:
    """An untrained demo classifier, initialised from ``seed``."""
    if arch not in ARCHS:
        raise FaithmapError(f"unknown demo architecture {arch!r}; choose from: {', '.join(ARCHS)}")
    cls, cam = ARCHS[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = cls(len(class_names))
    return wrap(net.eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=DIGITS_SIZE,
                class_names=list(class_names), cam_layer=cam, name=f"digits-{arch}")


def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    with model_guard(model), torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


TRAIN = {"epochs": 20, "lr": 2e-3, "batch_size": 16}


def train_classifier(arch: str, data: Digits, seed: int = 0, **overrides) -> Classifier:
    """Train a demo classifier with cross-entropy (Adam; :data:`TRAIN` settings), deterministically
    (seeded, in one torch thread)."""
    cfg = {**TRAIN, **overrides}
    model = build(arch, data.class_names, seed)
    net = model.net
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    n = len(data.y_train)
    with torch.random.fork_rng(devices=[]), torch_threads(1):  # the same weights whatever the caller's threads
        torch.manual_seed(seed)
        for epoch in range(cfg["epochs"]):
            net.train()
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            for s in range(0, n, cfg["batch_size"]):
                idx = order[s:s + cfg["batch_size"]]
                loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    net.eval()
    return model


def demo_classifier(arch: str, data: Digits, *, seed: int = 0, cache_dir: str | None = None,
                    use_cache: bool = True, epochs: int | None = None) -> tuple[Classifier, dict]:
    """The trained demo classifier of ``arch`` for ``data``'s two digits, from ``cache_dir/demo`` when there.

    ``epochs`` overrides :data:`TRAIN`'s (quick tests). Returns the model and a record: test
    accuracy, training seconds, whether it came from the cache.
    """
    cfg = {**TRAIN, **({"epochs": int(epochs)} if epochs is not None else {})}
    key = hashlib.sha256(repr((arch, data.digits, seed, sorted(cfg.items()), DIGITS_SIZE, len(data.y_train),
                               2)).encode()).hexdigest()[:12]  # 2: trained in one thread
    path = os.path.join(cache_dir or default_cache_dir(), "demo", f"digits-{arch}-{data.digits[0]}{data.digits[1]}-{key}.pt")
    start, cpu = time.perf_counter(), time.process_time()
    model = None
    cached = False
    if use_cache and os.path.isfile(path):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = build(arch, data.class_names, seed)
            model.net.load_state_dict(state)
            cached = True
        except Exception:  # noqa: BLE001 - a broken cache file is retrained
            model = None
    if model is None:
        model = train_classifier(arch, data, seed, **cfg)
        if use_cache:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_open(path) as fh:
                torch.save(model.net.state_dict(), fh)
    for p in model.net.parameters():
        p.requires_grad_(False)
    record = {"arch": arch, "test_accuracy": accuracy(model, data.x_test, data.y_test),
              "train_accuracy": accuracy(model, data.x_train, data.y_train),
              "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "cached": cached, "path": path if use_cache else None}
    return model, record
