"""Tier 2: an object against a shortcut. The label is the object's class (a filled disc or square);
a corner tag with a letter agrees with the label with probability ``rho``
(:func:`faithmap.truth.data.watermarked`). What the trained model uses is *measured*, never read off
``rho``: a model trained with a tag that always agreed can still use the object, and a tag may be
used beside the object (Zhou, Booth, Ribeiro & Shah, AAAI 2022, measure the same on planted
watermarks).

Measured on a held-out set of images whose tag agrees with the label:

* the accuracy and the mean probability of the label when the object alone, the tag alone, and
  both are painted over by their background;
* on *conflict* images (the same images with the tag naming the other class), the rate at which the
  prediction follows the object and the rate at which it follows the tag, counted on the images
  the model classifies right with the agreeing tag: an image it already gets wrong would "follow"
  the conflicting tag without reading it (a model that ignores the tag follows it on none of them).

A cue's reliance (``uses``) is the largest of its removal's accuracy drop, its removal's
probability drop and its conflict-follow rate (:func:`faithmap.truth.tier1.reliance`); it is used
when that reaches ``USED`` = 0.10, and ``regions["evidence"]`` is the union of the used cues'
regions. Gates: accuracy >= 0.98 where the cues agree; both cues removed -> accuracy <= chance +
0.10 (nothing else in the image carries the label); at least one cue used.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import FaithmapError
from .data import GLYPHS, OBJECTS, watermarked
from .scenario import Gate, Scenario
from .tier1 import (ACCURACY, CHANCE_MARGIN, GATE_IMAGES, TEST_IMAGES, USED, accuracy, effect, explained, image_counts,
                    recipe, reliance)
from .train import Recipe, model, predict

RHOS = (0.5, 0.75, 0.9, 1.0)
RECIPES = {
    "cnn": Recipe("cnn", 32, 6000, 6, lr=3e-3),
    "vit": Recipe("vit", 32, 10000, 5, lr=2e-3, weight_decay=0.05),
    "resnet18": Recipe("resnet18", 112, 10000, 6, lr=2e-3),
}
"""Default training per architecture."""
QUICK = {
    "cnn": dict(n_train=2500, epochs=4),
    "vit": dict(n_train=8000, epochs=4),
    "resnet18": dict(size=64, n_train=1000, epochs=3),
}
"""What ``quick=True`` changes; the gate and test image counts are tier 1's."""


def _measure(clf, scene) -> tuple[list[Gate], dict[str, float], dict]:
    """Gates, uses and the measurements of a trained tier-2 model on ``scene`` (tags agreeing)."""
    dev, net = clf.device, clf.net
    labels = scene.labels
    full = predict(net, scene.images, dev)
    removed = {cue: effect(full, predict(net, scene.without(*cues).images, dev), labels)
               for cue, cues in (("object", ("object",)), ("watermark", ("watermark",)),
                                 ("both", ("object", "watermark")))}
    ok = (full.argmax(1) == torch.as_tensor(labels)).numpy()
    right = scene.subset(np.flatnonzero(ok))  # conflict follow on the images it gets right
    conflict = predict(net, right.reshaped("watermark", [GLYPHS[1 - k] for k in right.labels]).images, dev)
    follow = ({"object": accuracy(conflict, right.labels), "watermark": accuracy(conflict, 1 - right.labels)}
              if len(right) else {"object": 0.0, "watermark": 0.0})
    uses = {cue: reliance(removed[cue], follow[cue]) for cue in ("object", "watermark")}
    acc = accuracy(full, labels)
    chance = 1.0 / len(OBJECTS)
    n = len(scene)
    gates = [
        Gate.check("accuracy", acc, ACCURACY, ">=", f"accuracy on {n} held-out images whose tag agrees"),
        Gate.check("cues removed -> chance", removed["both"]["accuracy"], chance + CHANCE_MARGIN, "<=",
                   f"accuracy with object and tag painted over (chance {chance:.2f})"),
        Gate.check("a cue is used", max(uses.values()), USED, ">=",
                   "largest measured reliance (object: {object:.3f}, watermark: {watermark:.3f})".format(**uses)),
    ]
    measured = {"accuracy": acc, "object_removed": removed["object"], "watermark_removed": removed["watermark"],
                "both_removed": removed["both"], "conflict_follow": follow, "conflict_images": len(right),
                "chance": chance, "gate_images": n}
    return gates, uses, measured


def build(seed: int, *, rho: float, arch: str = "cnn", size: int | None = None, n_train: int | None = None,
          n_test: int | None = None, epochs: int | None = None, n_gate: int | None = None,
          device: str | torch.device = "cpu", cache_dir: str | None = None, quick: bool = False,
          progress: bool = False) -> Scenario:
    """Tier 2's scenario for model seed ``seed`` and tag agreement ``rho``: a trained ``arch``,
    ``n_test`` held-out images whose tag agrees with the label, their regions (``object``,
    ``watermark``, and ``evidence``: the union of the cues measured as used), the gates and ``uses``.

    ``n_gate`` other held-out images (tags agreeing) measure the gates and uses. ``info["used"]``
    lists the used cues; ``info["measured"]`` every measurement behind them; ``info["seconds"]`` the
    time of each part (``generate``, ``train``, ``gates``).
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= float(rho) <= 1.0:
        raise FaithmapError(f"rho must be a number in [0, 1], got {rho!r}")
    rho = float(rho)
    r = recipe(arch, (RECIPES, QUICK), size=size, n_train=n_train, epochs=epochs, quick=quick)
    n_test, n_gate = image_counts(n_test, n_gate, TEST_IMAGES, GATE_IMAGES, quick)

    clock = {"generate": 0.0}

    def data():
        t = time.perf_counter()
        sc = watermarked(seed, r.n_train, r.size, rho, stream=0)
        clock["generate"] += time.perf_counter() - t
        return sc.images, torch.from_numpy(sc.labels)

    name = f"watermark-{arch}-rho{rho:.2f}"
    clf, report = model(arch, OBJECTS, r, seed, data, name=name, settings={"tier": 2, "rho": rho}, device=device,
                        cache_dir=cache_dir, progress=progress)
    t = time.perf_counter()
    gate_set = watermarked(seed, n_gate, r.size, rho, agree=True, stream=1)
    pool = watermarked(seed, 2 * n_test + 16, r.size, rho, agree=True, stream=2)
    clock["generate"] += time.perf_counter() - t
    t = time.perf_counter()
    gates, uses, measured = _measure(clf, gate_set)
    clock["gates"] = time.perf_counter() - t
    used = [cue for cue, v in uses.items() if v >= USED]
    test = pool.subset(explained(predict(clf.net, pool.images, clf.device), pool.labels, n_test))
    regions = test.regions()
    evidence = torch.zeros_like(regions["object"])
    for cue in used:
        evidence |= regions[cue]
    info = {"arch": arch, "size": r.size, "n_train": r.n_train, "epochs": r.epochs, "batch_size": r.batch_size,
            "lr": r.lr, "rho": rho, "classes": list(OBJECTS), "glyphs": list(GLYPHS),
            "test_accuracy": measured["accuracy"], "used": used, "used_threshold": USED,
            "parameters": sum(p.numel() for p in clf.net.parameters()), **report, "measured": measured,
            "seconds": {"generate": clock["generate"], "train": 0.0 if report["cached"] else report["train_seconds"],
                        "gates": clock["gates"]},
            "train_agreement": rho}
    return Scenario(tier=2, name=name, model_seed=int(seed), model=clf,
                    x=clf.normalize(test.pixels().to(clf.device)), target=torch.from_numpy(test.labels).to(clf.device),
                    regions={"evidence": evidence, "object": regions["object"], "watermark": regions["watermark"]},
                    uses=uses, gates=gates, info=info)


__all__ = ["GATE_IMAGES", "QUICK", "RECIPES", "RHOS", "build"]
