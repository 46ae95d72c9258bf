"""Training the ground-truth models in-process, reproducibly from a seed, with weights cached by seed.

:func:`fit` trains a network with AdamW and a one-cycle learning rate (Smith & Topin, 2019) on
uint8 images; the mini-batch order comes from a generator seeded by the seed, the initialisation
from :func:`faithmap.truth.nets.build`, so the same seed on the same machine gives the same weights.
:func:`trained` wraps it with a cache: the weights (and their training time) are stored as
``<cache_dir>/<name>-<key>.safetensors``, where the key hashes every setting the weights depend on;
a cached model is loaded instead of trained (the reliance gates always run on it afterwards).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.device import resolve_device
from ..core.io import write_atomic
from ..errors import FaithmapError
from ..models import Classifier, wrap
from . import nets

RECIPE = 1
"""Bumped whenever data generation or training changes what a seed's weights are (invalidates caches)."""
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: ``epochs`` over ``n_train`` images, ``batch_size``, peak ``lr``,
    ``weight_decay``, and the fraction of steps spent warming up (``warmup``)."""

    arch: str
    size: int
    n_train: int
    epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.2


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> model inputs ((x / 255 - 0.5) / 0.5)."""
    return (images.float() / 255.0 - MEAN[0]) / STD[0]


def torch_seed(seed: int, *purpose: int) -> int:
    """A 63-bit torch seed derived from ``(seed, *purpose)``."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), *purpose]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def fit(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, seed: int,
        device: torch.device, progress: bool = False) -> float:
    """Train ``net`` in place on ``images`` (uint8) / ``labels``; returns the training accuracy of the
    last epoch (on the mini-batches as they were seen)."""
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-len(labels) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch,
                                                pct_start=recipe.warmup)
    order = torch.Generator().manual_seed(torch_seed(seed, 7))
    epochs = range(recipe.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"train {recipe.arch}", unit="epoch")
    correct = 0
    for _ in epochs:
        perm = torch.randperm(len(labels), generator=order)
        correct = 0
        for i in range(0, len(labels), recipe.batch_size):
            idx = perm[i:i + recipe.batch_size]
            x, y = normalise(images[idx]).to(device), labels[idx].to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == y).sum())
    net.eval()
    return correct / len(labels)


def cache_path(cache_dir: str, name: str, settings: dict) -> str:
    """Where the weights trained with ``settings`` are cached: the key hashes the settings and :data:`RECIPE`."""
    blob = json.dumps({**settings, "recipe_version": RECIPE}, sort_keys=True, default=str).encode()
    return os.path.join(os.fspath(cache_dir), f"{name}-{hashlib.sha256(blob).hexdigest()[:16]}.safetensors")


def trained(net: nn.Module, data: Callable[[], tuple[torch.Tensor, torch.Tensor]], recipe: Recipe, seed: int, *,
            name: str, settings: dict, device: torch.device, cache_dir: str | None = None,
            progress: bool = False) -> dict:
    """Train ``net`` on ``data()`` (or load its cached weights); returns what happened:
    ``train_seconds`` and ``train_cpu_seconds`` (wall and process CPU time of the training that made
    the weights; the CPU time, summed over threads, is the steadier figure on a shared machine),
    ``train_accuracy``, ``cached``, ``cache``."""
    from safetensors.torch import load as st_load, save as st_save

    path = cache_path(cache_dir, name, {**settings, **asdict(recipe), "seed": int(seed)}) if cache_dir else None
    if path and os.path.isfile(path):
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
            net.load_state_dict(st_load(blob))
            meta = _metadata(blob)
        except (OSError, RuntimeError, ValueError) as exc:
            raise FaithmapError(f"cannot read the cached weights {path}: {exc}; delete the file to retrain") from None
        net.to(device).eval()
        return {"train_seconds": float(meta.get("train_seconds", "nan")),
                "train_cpu_seconds": float(meta.get("train_cpu_seconds", "nan")),
                "train_accuracy": float(meta.get("train_accuracy", "nan")), "cached": True, "cache": path}
    images, labels = data()
    start, cpu = time.perf_counter(), time.process_time()
    acc = fit(net, images, labels, recipe, seed, device, progress)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
        write_atomic(path, st_save(state, metadata={"train_seconds": repr(seconds), "train_cpu_seconds": repr(cpu),
                                                    "train_accuracy": repr(acc),
                                                    "settings": json.dumps(settings, default=str)}))
    return {"train_seconds": seconds, "train_cpu_seconds": cpu, "train_accuracy": acc, "cached": False, "cache": path}


def _metadata(blob: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file held in memory."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]).get("__metadata__", {}) or {}


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 500) -> torch.Tensor:
    """Softmax probabilities (N, K) of ``net`` (eval mode) on uint8 ``images``, on the CPU."""
    net.eval()
    out = [F.softmax(net(normalise(images[i:i + batch]).to(device)).float(), 1).cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)




def model(arch: str, classes: Sequence[str], recipe: Recipe, seed: int, data: Callable, *, name: str,
          settings: dict, device: str | torch.device = "cpu", cache_dir: str | None = None,
          progress: bool = False) -> tuple[Classifier, dict]:
    """A trained ``arch`` network for ``classes`` as a :class:`faithmap.models.Classifier` (mean = std =
    0.5, ``input_size`` = the recipe's size, its CAM layer named), and what training reported."""
    dev = resolve_device(device)
    net, cam = nets.build(arch, len(classes), recipe.size, torch_seed(seed, 1))
    report = trained(net, data, recipe, seed, name=name, settings=settings, device=dev, cache_dir=cache_dir,
                     progress=progress)
    clf = wrap(net, mean=MEAN, std=STD, input_size=recipe.size, class_names=list(classes), cam_layer=cam,
               name=f"{name}-seed{seed}")
    return clf.to(dev).eval(), report


__all__ = ["MEAN", "RECIPE", "Recipe", "STD", "cache_path", "fit", "model", "normalise", "predict", "torch_seed", "trained"]
