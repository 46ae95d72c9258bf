"""Tier 1: planted evidence. A model is trained to name the pattern planted in each image among
distractors (:func:`faithmap.truth.data.planted`), and reliance gates check on the trained model that
the pattern is what it uses, before any map is scored.

The gates, measured on a held-out gate set of images with three distractors each:

* ``accuracy``: test accuracy >= 0.98;
* ``evidence removed -> chance``: with the pattern painted over by its background, accuracy
  <= chance + 0.10 (chance = 1/4);
* ``distractors removed -> unchanged``: with every distractor painted over, accuracy changes by
  <= 0.02 (either way);
* ``evidence swapped -> follows``: with the pattern redrawn (same place, scale and ink) as another
  class's pattern, the prediction names the new class on >= 0.90 of the images.

A failing gate ends the scenario: it is returned with ``passed == False`` and the scorer reports it
without scores. ``uses`` gives the measured reliance on the pattern and on the distractors (see
:func:`reliance`). The training images have 0 to 3 distractors (so that their absence is not
out of distribution, and a model cannot learn to count them); the gate and test images have 3.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ..errors import FaithmapError
from .data import CUES, PATTERNS, planted, planted_regions, rng_for
from .scenario import Gate, Scenario
from .train import Recipe, model, predict

ACCURACY = 0.98
CHANCE_MARGIN = 0.10
DISTRACTOR_CHANGE = 0.02
SWAP_FOLLOW = 0.90
USED = 0.10
"""A cue counts as used when its reliance (:func:`reliance`) reaches this value."""
DISTRACTORS = 3
TRAIN_DISTRACTORS = (0, 3)

RECIPES = {
    "cnn": Recipe("cnn", 32, 8000, 8, lr=3e-3),
    "vit": Recipe("vit", 32, 16000, 5, lr=2e-3, weight_decay=0.05),
    "resnet18": Recipe("resnet18", 112, 12000, 8, lr=2e-3),
}
"""Default training per architecture (size, images, epochs, ...)."""
QUICK = {
    "cnn": dict(n_train=4000, epochs=6),
    "vit": dict(n_train=12000, epochs=4),
    "resnet18": dict(size=64, n_train=1500, epochs=3),
}
"""What ``quick=True`` changes (the CI-sized run)."""
GATE_IMAGES = {False: 2000, True: 600}
TEST_IMAGES = {False: 64, True: 16}


def recipe(arch: str, tables: tuple[dict, dict], *, size: int | None, n_train: int | None, epochs: int | None,
           quick: bool) -> Recipe:
    """The recipe of ``arch`` from ``tables`` = (defaults, quick changes), with the caller's overrides."""
    defaults, quick_changes = tables
    if arch not in defaults:
        raise FaithmapError(f"arch must be one of {', '.join(defaults)}, got {arch!r}")
    r = defaults[arch]
    if quick:
        r = replace(r, **quick_changes.get(arch, {}))
    changes = {k: v for k, v in dict(size=size, n_train=n_train, epochs=epochs).items() if v is not None}
    for k, v in changes.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise FaithmapError(f"{k} must be a positive integer, got {v!r}")
    return replace(r, **changes)


def image_counts(n_test, n_gate, tests: dict, gates: dict, quick: bool) -> tuple[int, int]:
    """(images to explain, gate images): the caller's, else the defaults (quick or not)."""
    out = []
    for name, v, table in (("n_test", n_test, tests), ("n_gate", n_gate, gates)):
        v = table[bool(quick)] if v is None else v
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise FaithmapError(f"{name} must be a positive integer, got {v!r}")
        out.append(int(v))
    return out[0], out[1]


def accuracy(probs: torch.Tensor, labels) -> float:
    return float((probs.argmax(1) == torch.as_tensor(np.asarray(labels))).float().mean())


def effect(full: torch.Tensor, changed: torch.Tensor, labels) -> dict[str, float]:
    """What an intervention did: accuracy after it, and the drops in accuracy and in the mean
    probability of the label (before minus after; negative when it helped)."""
    lab = torch.as_tensor(np.asarray(labels))
    p_full = full.gather(1, lab[:, None]).mean()
    p_changed = changed.gather(1, lab[:, None]).mean()
    return {"accuracy": accuracy(changed, lab), "accuracy_drop": accuracy(full, lab) - accuracy(changed, lab),
            "probability_drop": float(p_full - p_changed)}


def reliance(removed: dict[str, float], follow: float | None = None, chance: float = 0.0) -> float:
    """How much the model relies on a cue, in [0, 1]: the largest of the accuracy drop and the
    label-probability drop when the cue alone is removed, and how often the prediction follows the
    cue when it disagrees with the rest of the image (``follow``: a swapped pattern, a conflicting
    watermark), above the rate ``chance`` that ignoring the cue gives, ``(follow - chance) / (1 -
    chance)``. A redundant cue (the image is still classified without it) is caught by the last:
    removal drops need not show it."""
    parts = [removed["accuracy_drop"], removed["probability_drop"]]
    if follow is not None:
        parts.append((follow - chance) / (1.0 - chance))
    return float(min(1.0, max(0.0, *parts)))


def explained(probs: torch.Tensor, labels, n: int) -> np.ndarray:
    """The ``n`` images to explain: the correctly classified ones first, in order (their evidence is
    what the gates checked), then the others if there are too few."""
    ok = (probs.argmax(1) == torch.as_tensor(np.asarray(labels))).numpy()
    order = np.concatenate([np.flatnonzero(ok), np.flatnonzero(~ok)])
    return order[:n]


def _measure(clf, scene, seed: int) -> tuple[list[Gate], dict[str, float], dict]:
    """The reliance gates and uses of a trained tier-1 model on the gate set ``scene``."""
    dev, net = clf.device, clf.net
    labels = scene.labels
    full = predict(net, scene.images, dev)
    no_pattern = effect(full, predict(net, scene.without("pattern").images, dev), labels)
    no_distractors = effect(full, predict(net, scene.without("distractor").images, dev), labels)
    offset = rng_for(seed, "swap").integers(1, len(PATTERNS), size=len(scene))
    drawn = np.array([PATTERNS.index(s) for s in scene.shapes("pattern")])
    swapped_to = (drawn + offset) % len(PATTERNS)
    swapped = predict(net, scene.reshaped("pattern", [PATTERNS[k] for k in swapped_to]).images, dev)
    follow = accuracy(swapped, swapped_to)
    acc = accuracy(full, labels)
    chance = 1.0 / len(PATTERNS)
    n = len(scene)
    gates = [
        Gate.check("accuracy", acc, ACCURACY, ">=", f"accuracy on {n} held-out images"),
        Gate.check("evidence removed -> chance", no_pattern["accuracy"], chance + CHANCE_MARGIN, "<=",
                   f"accuracy with the pattern painted over by its background (chance {chance:.2f})"),
        Gate.check("distractors removed -> unchanged", abs(no_distractors["accuracy_drop"]), DISTRACTOR_CHANGE,
                   "<=", f"|accuracy change| with the distractors painted over ({acc:.3f} -> "
                         f"{no_distractors['accuracy']:.3f})"),
        Gate.check("evidence swapped -> follows", follow, SWAP_FOLLOW, ">=",
                   "share of predictions naming the class of the pattern drawn in its place"),
    ]
    # a model that ignores the pattern names the swapped-in class at chance (1 of the 3 others, as often as any)
    uses = {"pattern": reliance(no_pattern, follow, chance), "distractors": reliance(no_distractors)}
    measured = {"accuracy": acc, "pattern_removed": no_pattern, "distractors_removed": no_distractors,
                "swap_follow": follow, "chance": chance, "gate_images": n}
    return gates, uses, measured


def build(seed: int, *, arch: str = "cnn", size: int | None = None, n_train: int | None = None,
          n_test: int | None = None, epochs: int | None = None, n_gate: int | None = None,
          device: str | torch.device = "cpu", cache_dir: str | None = None, quick: bool = False,
          progress: bool = False, cue: str = "pattern") -> Scenario:
    """Tier 1's scenario for model seed ``seed``: a trained ``arch`` (``cnn``, ``vit``, ``resnet18``),
    ``n_test`` held-out images with their regions (``evidence``: the pattern's box; ``pattern``,
    ``distractors``: their painted pixels), the gates and the measured uses.

    ``n_gate`` other held-out images (:data:`GATE_IMAGES`) measure the gates. ``size``, ``n_train``,
    ``epochs`` override the architecture's recipe (:data:`RECIPES`; ``quick`` applies :data:`QUICK`);
    ``cache_dir`` caches the weights by seed and settings. ``info["seconds"]`` times the parts
    (``generate``, ``train``: 0 when the weights came from the cache, ``gates``). ``cue`` is for
    the gate tests (see :func:`faithmap.truth.data.planted`): a model trained with ``cue != "pattern"``
    does not rely on the pattern, and its gates say so.
    """
    if cue not in CUES:
        raise FaithmapError(f"cue must be one of {', '.join(CUES)}, got {cue!r}")
    r = recipe(arch, (RECIPES, QUICK), size=size, n_train=n_train, epochs=epochs, quick=quick)
    n_test, n_gate = image_counts(n_test, n_gate, TEST_IMAGES, GATE_IMAGES, quick)

    clock = {"generate": 0.0}

    def data():
        t = time.perf_counter()
        sc = planted(seed, r.n_train, r.size, distractors=TRAIN_DISTRACTORS, cue=cue, stream=0)
        clock["generate"] += time.perf_counter() - t
        return sc.images, torch.from_numpy(sc.labels)

    settings = {"tier": 1, "cue": cue, "distractors": list(TRAIN_DISTRACTORS)}
    clf, report = model(arch, PATTERNS, r, seed, data, name=f"planted-{arch}", settings=settings, device=device,
                        cache_dir=cache_dir, progress=progress)
    t = time.perf_counter()
    gate_set = planted(seed, n_gate, r.size, distractors=DISTRACTORS, cue=cue, stream=1)
    pool = planted(seed, 2 * n_test + 16, r.size, distractors=DISTRACTORS, cue=cue, stream=2)
    clock["generate"] += time.perf_counter() - t
    t = time.perf_counter()
    gates, uses, measured = _measure(clf, gate_set, seed)
    clock["gates"] = time.perf_counter() - t
    pick = explained(predict(clf.net, pool.images, clf.device), pool.labels, n_test)
    test = pool.subset(pick)
    info = {"arch": arch, "size": r.size, "n_train": r.n_train, "epochs": r.epochs, "batch_size": r.batch_size,
            "lr": r.lr, "cue": cue, "classes": list(PATTERNS), "test_accuracy": measured["accuracy"],
            "parameters": sum(p.numel() for p in clf.net.parameters()), **report, "measured": measured,
            "seconds": {"generate": clock["generate"], "train": 0.0 if report["cached"] else report["train_seconds"],
                        "gates": clock["gates"]},
            "explained_correct": int(sum(predict(clf.net, test.images, clf.device).argmax(1).numpy() == test.labels)),
            "thresholds": {"accuracy": ACCURACY, "chance_margin": CHANCE_MARGIN,
                           "distractor_change": DISTRACTOR_CHANGE, "swap_follow": SWAP_FOLLOW}}
    return Scenario(tier=1, name=f"planted-{arch}", model_seed=int(seed), model=clf,
                    x=clf.normalize(test.pixels().to(clf.device)), target=torch.from_numpy(test.labels).to(clf.device),
                    regions=planted_regions(test), uses=uses, gates=gates, info=info)


__all__ = ["ACCURACY", "CHANCE_MARGIN", "DISTRACTOR_CHANGE", "QUICK", "RECIPES", "SWAP_FOLLOW", "USED", "accuracy",
           "build", "effect", "explained", "reliance", "recipe"]
