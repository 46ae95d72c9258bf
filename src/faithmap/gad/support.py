"""Support regression models of GAD (Mazini Rodrigues, Boutry & Najman, 2024 sec. 4.1-4.2).

For two classes ``a`` and ``b`` and a distance ``alpha``, the targets are the original model's
pre-softmax outputs on every training image with ``alpha`` subtracted from the *other* class's
logit: from logit ``b`` on images of ``a``, from logit ``a`` on images of ``b`` (sec. 4.1, Fig. 1a).
A support model has the same architecture, starts from the original weights, keeps linear outputs
(faithmap models return logits, so there is no softmax to remove) and is trained with MSE to those
targets, Adam, lr 4e-5, 10 epochs (sec. 6).

Training runs with the network in eval mode by default (batch norms use their running statistics,
dropout is off), so a support model regresses exactly the function that produced the targets; at
``alpha = 0`` the loss starts at zero and the weights stay put. ``train_mode=True`` trains in train
mode instead.

Every finished support model is stored in a cache directory, keyed by hashes of the original
weights, of the training images and labels and of the settings; each epoch writes a checkpoint, so
an interrupted run resumes where it stopped and gives the same weights as an uninterrupted one
(the shuffling order of epoch ``e`` depends on ``(seed, e)`` only).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..core.batching import chunks, model_guard, resolve_batch_size
from ..core.io import atomic_open, write_json
from ..errors import FaithmapError
from ..methods.gad import clone_classifier, freeze, frozen_copy, load_supports, read_state  # noqa: F401  (load_supports: faithmap.gad's)
from ..models import Classifier
from ..params import build
from .data import ImageSet, TensorImages

CACHE_VERSION = 1


def default_cache_dir() -> str:
    """``$FAITHMAP_CACHE/gad``, else ``$XDG_CACHE_HOME/faithmap/gad``, else ``~/.cache/faithmap/gad``."""
    if os.environ.get("FAITHMAP_CACHE"):
        return os.path.join(os.environ["FAITHMAP_CACHE"], "gad")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "faithmap", "gad")


# ----------------------------------------------------------------------------------------------
# sec. 4.1: distanced targets
# ----------------------------------------------------------------------------------------------
def distanced_targets(logits: torch.Tensor, labels: torch.Tensor, classes: tuple[int, int],
                      alpha: float | tuple[float, float]) -> torch.Tensor:
    """The artificially distanced outputs (N, K) of sec. 4.1.

    ``logits`` (N, K) are the original model's pre-softmax outputs, ``labels`` (N,) the true classes
    (each ``a`` or ``b`` of ``classes``). ``alpha`` is one distance for both classes or a pair
    ``(alpha_a, alpha_b)``: ``alpha_a`` is subtracted from logit ``b`` of the images of ``a``
    (cats less likely to be dogs) and ``alpha_b`` from logit ``a`` of the images of ``b``. Every
    other entry is the original logit.
    """
    a, b = (int(c) for c in classes)
    if a == b:
        raise FaithmapError(f"the two classes must differ, got {a} twice")
    if logits.dim() != 2 or not (0 <= a < logits.shape[1] and 0 <= b < logits.shape[1]):
        raise FaithmapError(f"classes {a} and {b} do not fit outputs of shape {tuple(logits.shape)}")
    alpha_a, alpha_b = (alpha, alpha) if isinstance(alpha, (int, float)) else (float(alpha[0]), float(alpha[1]))
    labels = labels.to(logits.device)
    is_a, is_b = labels == a, labels == b
    if not bool((is_a | is_b).all()):
        raise FaithmapError(f"every training image must belong to class {a} or {b}")
    out = logits.detach().clone()
    out[is_a, b] -= alpha_a
    out[is_b, a] -= alpha_b
    return out


# ----------------------------------------------------------------------------------------------
# fingerprints
# ----------------------------------------------------------------------------------------------
def weights_fingerprint(model: Classifier | nn.Module) -> str:
    """A hex digest of the network's architecture name, its state (parameters and buffers) and the
    classifier's input statistics."""
    net = model.net if isinstance(model, Classifier) else model
    h = hashlib.sha256(f"weights-v1:{type(net).__module__}.{type(net).__qualname__}".encode())
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    if isinstance(model, Classifier):
        h.update(repr((model.mean.flatten().tolist(), model.std.flatten().tolist())).encode())
    return h.hexdigest()


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def alpha_tag(alpha: float) -> str:
    """File-name tag of a distance: ``2``, ``2.5``, ``-1``."""
    return format(float(alpha), "g")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def model_outputs(model: Classifier, data: ImageSet, batch_size: int | None = None) -> torch.Tensor:
    """The model's logits (N, K) on every image of ``data``, in eval mode (float32, model's device)."""
    bs = resolve_batch_size(batch_size, model.device)
    idx = torch.arange(len(data))
    with model_guard(model), torch.no_grad():
        return torch.cat([model(data.batch(idx[s]).to(model.device)).float() for s in chunks(len(data), bs)])


def _atomic_save(obj, path: str) -> None:
    with atomic_open(path) as fh:
        torch.save(obj, fh)


# ----------------------------------------------------------------------------------------------
# sec. 4.2: training one support model
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    net: nn.Module
    losses: list[float]
    fit_mse: float
    resumed_from: int = 0
    epochs_run: int = 0
    initial_mse: float | None = None


@dataclass(frozen=True)
class TrainSettings:
    """How a support model is trained (sec. 4.2 and 6): ``epochs`` of Adam at learning rate ``lr``
    over shuffled batches of ``batch_size`` images (the order of epoch ``e`` from ``(seed, e)``), in
    eval mode unless ``train_mode``. ``fit``: go on after ``epochs`` until the epoch's loss is at
    most ``fit`` times the initial loss, or ``max_epochs`` (default ``20 * epochs``) have run (see
    :func:`train_support`). ``eval_batch_size``: images a pass when the model only predicts."""

    epochs: int = 10
    lr: float = 4e-5
    batch_size: int = 32
    seed: int = 0
    train_mode: bool = False
    fit: float | None = None
    max_epochs: int | None = None
    eval_batch_size: int | None = None

    @classmethod
    def make(cls, base: "TrainSettings | None" = None, /, **overrides) -> "TrainSettings":
        """``base`` (default: all defaults) with ``overrides`` (any field), types checked."""
        return build(cls, "support training", base, overrides)


def epoch_limit(epochs: int, fit: float | None, max_epochs: int | None) -> int:
    """The most epochs :func:`train_support` runs: ``epochs`` without ``fit``; with it ``max_epochs``
    (default ``20 * epochs``), never fewer than ``epochs``."""
    if fit is None:
        return int(epochs)
    return max(int(epochs), int(max_epochs) if max_epochs is not None else 20 * int(epochs))


def train_support(model: Classifier, data: ImageSet, targets: torch.Tensor, settings: TrainSettings | None = None,
                  /, *, checkpoint: str | None = None, callback: Callable[[int, float], None] | None = None,
                  progress: bool = True, desc: str = "support", original: torch.Tensor | None = None,
                  **overrides) -> TrainResult:
    """Regress a copy of ``model.net`` onto ``targets`` (N, K) with MSE and Adam (sec. 4.2).

    The copy starts from the original weights; all its parameters are trained. ``checkpoint``: a
    file written after every epoch (network, optimiser, losses) and read back on the next call, so
    an interrupted run resumes at the last finished epoch. ``callback(epoch, loss)`` runs after each
    epoch's checkpoint (epochs count from 1). The user's model is never changed.

    ``fit``: train to a fit criterion instead of a fixed length (the paper asks for "the most
    accurate approximations to these new outputs", sec. 4.2): after the first ``epochs`` epochs, go
    on one epoch at a time until the epoch's mean training loss is at most ``fit`` times the initial
    loss (the MSE of the original model to ``targets``, ``alpha^2 / K`` for distanced targets), or
    ``max_epochs`` (default ``20 * epochs``) have run. ``original``: the model's outputs on ``data``
    when the caller has them (saves the pass that gives the initial loss). The settings are
    ``settings`` (a :class:`TrainSettings`) with ``overrides``: ``epochs=``, ``lr=``, ``batch_size=``,
    ``seed=``, ``train_mode=``, ``fit=``, ``max_epochs=``, ``eval_batch_size=``.
    """
    st = TrainSettings.make(settings, **overrides)
    epochs, lr, batch_size, fit = st.epochs, st.lr, st.batch_size, st.fit
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise FaithmapError(f"need epochs >= 0, lr > 0 and batch_size >= 1 (got {epochs}, {lr}, {batch_size})")
    if fit is not None and not 0 < fit < 1:
        raise FaithmapError(f"fit must be in (0, 1), got {fit}")
    limit = epoch_limit(epochs, fit, st.max_epochs)
    plan = [int(epochs), fit, limit]
    device = model.device
    net = copy.deepcopy(model.net)
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses, start = _resume(checkpoint, plan, net, opt)
    targets = targets.to(device).float()
    n = len(data)
    steps = math.ceil(n / batch_size)
    initial = None
    if fit is not None:
        if original is None:
            original = model_outputs(model, data, st.eval_batch_size)
        initial = float(torch.nn.functional.mse_loss(original.to(device).float(), targets))

    def done(epoch: int) -> bool:
        if epoch >= limit:
            return True
        return epoch >= epochs and (fit is None or (bool(losses) and losses[-1] <= fit * initial))

    bar = tqdm(total=max(epochs, start + 1) * steps, initial=start * steps, desc=desc, unit="batch",
               file=sys.stderr, disable=None if progress else True, leave=False)
    try:
        epoch = start
        while not done(epoch):
            if (epoch + 1) * steps > bar.total:
                bar.total = (epoch + 1) * steps
                bar.refresh()
            losses.append(_train_epoch(model, net, opt, data, targets, st, epoch, bar))
            epoch += 1
            if checkpoint:
                _atomic_save({"epoch": epoch, "epochs": epochs, "plan": plan, "net": net.state_dict(),
                              "optim": opt.state_dict(), "losses": losses}, checkpoint)
            if callback is not None:
                callback(epoch, losses[-1])
    finally:
        bar.close()
    freeze(net)
    sup = clone_classifier(model, net)
    fit_mse = float(torch.nn.functional.mse_loss(model_outputs(sup, data, st.eval_batch_size), targets))
    return TrainResult(net, losses, fit_mse, resumed_from=start, epochs_run=len(losses) - start, initial_mse=initial)


def _resume(checkpoint: str | None, plan: list, net: nn.Module, opt: torch.optim.Optimizer) -> tuple[list[float], int]:
    """(losses, epochs done) of the checkpoint of the same ``plan``, its network and optimiser states
    loaded into ``net`` and ``opt``; ``([], 0)`` without one."""
    if not (checkpoint and os.path.isfile(checkpoint)):
        return [], 0
    state = read_state(checkpoint)
    if state is None or state.get("plan", [state.get("epochs"), None, state.get("epochs")]) != plan:
        return [], 0
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["optim"])
    return list(state["losses"]), int(state["epoch"])


def _train_epoch(model: Classifier, net: nn.Module, opt: torch.optim.Optimizer, data: ImageSet, targets: torch.Tensor,
                 st: TrainSettings, epoch: int, bar) -> float:
    """One epoch of MSE regression over ``data`` in the order of ``(seed, epoch)``; its mean loss."""
    n, device = len(data), model.device
    net.train(st.train_mode)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(st.seed) * 1_000_003 + epoch))
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(st.seed) * 7919 + epoch)  # dropout etc. in train mode: resumable too
        for s in chunks(n, st.batch_size):
            idx = order[s]
            xb = data.batch(idx).to(device)
            if model.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out = net(xb).float()
            loss = torch.nn.functional.mse_loss(out, targets[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
    return total / n


# ----------------------------------------------------------------------------------------------
# the set of support models, cached
# ----------------------------------------------------------------------------------------------
def cache_settings(classes: tuple[int, int], st: TrainSettings) -> dict:
    """The settings a cache entry is keyed by (and records): classes, training settings, loss, optimiser."""
    settings = {"version": CACHE_VERSION, "classes": list(classes), "epochs": int(st.epochs), "lr": float(st.lr),
                "batch_size": int(st.batch_size), "seed": int(st.seed), "train_mode": bool(st.train_mode),
                "loss": "mse", "optimizer": "adam"}
    if st.fit is not None:  # absent otherwise: fixed-length entries keep their keys
        settings["fit"] = float(st.fit)
        settings["max_epochs"] = epoch_limit(st.epochs, st.fit, st.max_epochs)
    return settings


def _checked(model: Classifier, data: ImageSet, classes: tuple[int, int],
             alphas: Sequence[float]) -> tuple[int, int, list[float]]:
    """The two classes and the distances (floats), refused with one line: a class out of the model's
    range, no distance or a repeated one, a training image of neither class."""
    a, b = (int(c) for c in classes)
    k = model.num_classes
    for c in (a, b):
        if c < 0 or (k is not None and c >= k):
            raise FaithmapError(f"class {c} is out of range: the model has {k} classes")
    alphas = [float(al) for al in alphas]
    if not alphas:
        raise FaithmapError("give at least one distance alpha")
    if len(set(alphas)) != len(alphas):
        raise FaithmapError(f"the distances repeat: {alphas}")
    labels = data.labels
    if not bool(((labels == a) | (labels == b)).all()):
        raise FaithmapError(f"every training image must belong to class {a} or {b}")
    return a, b, alphas


def _finished(directory: str, alphas: Sequence[float]) -> dict[float, dict]:
    """The readable finished models (``alpha-<a>.pt``) of the cache entry ``directory``, by distance."""
    done = {}
    for al in alphas:
        path = os.path.join(directory, f"alpha-{alpha_tag(al)}.pt")
        if os.path.isfile(path):
            state = read_state(path)
            if state is not None and "net" in state:
                done[al] = state
    return done


@dataclass
class SupportSet:
    """Support models, one per distance, with their training record."""

    alphas: list[float]
    models: list[Classifier]
    fit_mse: list[float]
    losses: list[list[float]]
    cached: list[bool]
    directory: str | None = None
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    threads: list[int | None] = field(default_factory=list)
    """torch CPU threads each model was trained with (None: a cache entry from before this was kept)."""

    def __len__(self) -> int:
        return len(self.models)


def support_models(model: Classifier, data: ImageSet | tuple[torch.Tensor, torch.Tensor], classes: tuple[int, int],
                   alphas: Sequence[float] = (2, 4, 6, 8), settings: TrainSettings | None = None, /, *,
                   cache_dir: str | None = None, use_cache: bool = True, progress: bool = True,
                   callback: Callable[[float, int, float], None] | None = None, **overrides) -> SupportSet:
    """One support regression model per distance in ``alphas`` (sec. 4.2-4.3), from the cache when there.

    ``data``: the training images of the two ``classes`` (an :class:`ImageSet`, or a pair
    ``(inputs, labels)``), labelled with the model's class indices. The cache entry is
    ``<cache_dir>/<weights>-<data>-<settings>/`` (12 hex digits of each hash) holding
    ``alpha-<a>.pt`` per finished model, ``alpha-<a>.ckpt`` while one trains, and ``meta.json``.
    ``use_cache=False`` trains in memory without reading or writing files.
    ``callback(alpha, epoch, loss)`` runs after each epoch. ``fit``/``max_epochs``: train each model
    to a fit criterion (see :func:`train_support`); part of the cache key when given. The training
    settings are ``settings`` (a :class:`TrainSettings`) with ``overrides`` (any of its fields).
    """
    st = TrainSettings.make(settings, **overrides)
    if isinstance(data, tuple):
        data = TensorImages(*data)
    a, b, alphas = _checked(model, data, classes, alphas)
    labels = data.labels
    start = time.perf_counter()
    record = cache_settings((a, b), st)
    directory = None
    done: dict[float, dict] = {}
    if use_cache:
        w_fp, d_fp, s_fp = weights_fingerprint(model), data.fingerprint(), settings_fingerprint(record)
        directory = os.path.join(cache_dir or default_cache_dir(), f"{w_fp[:12]}-{d_fp[:12]}-{s_fp[:12]}")
        done = _finished(directory, alphas)
    todo = [al for al in alphas if al not in done]
    original = model_outputs(model, data, st.eval_batch_size) if todo else None
    if directory and todo:
        os.makedirs(directory, exist_ok=True)
        meta = {**record, "weights_sha256": w_fp, "data_sha256": d_fp, "images": len(data),
                "model": model.name, "class_names": [model.class_name(a), model.class_name(b)]}
        write_json(os.path.join(directory, "meta.json"), meta)
    models, fits, losses, cached, threads = [], [], [], [], []
    for al in alphas:
        if al in done:
            state = done[al]
            net = frozen_copy(model.net, state["net"])
            fits.append(float(state["fit_mse"]))
            losses.append(list(state["losses"]))
            cached.append(True)
            threads.append(state.get("threads"))
        else:
            targets = distanced_targets(original, labels, (a, b), al)
            ckpt = os.path.join(directory, f"alpha-{alpha_tag(al)}.ckpt") if directory else None
            cb = (lambda e, lo, _al=al: callback(_al, e, lo)) if callback else None
            res = train_support(model, data, targets, st, checkpoint=ckpt, callback=cb, progress=progress,
                                desc=f"support alpha={alpha_tag(al)}", original=original)
            net = res.net
            if directory:
                _atomic_save({"net": net.state_dict(), "alpha": al, "fit_mse": res.fit_mse, "losses": res.losses,
                              "settings": record, "threads": torch.get_num_threads()},
                             os.path.join(directory, f"alpha-{alpha_tag(al)}.pt"))
                if ckpt and os.path.exists(ckpt):
                    os.remove(ckpt)
            fits.append(res.fit_mse)
            losses.append(res.losses)
            cached.append(False)
            threads.append(torch.get_num_threads())
        models.append(clone_classifier(model, net, f"{model.name}-gad{alpha_tag(al)}"))
    return SupportSet(alphas, models, fits, losses, cached, directory, time.perf_counter() - start, record,
                      threads)
