"""Scores of the target class and target selection (top-1, class index, class name)."""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import torch

from ..errors import FaithmapError


def _prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)


def _logit(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def _log_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)


SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "prob": _prob,
    "logit": _logit,
    "logprob": _log_prob,
}
"""Score functions ``f(logits, target) -> (B,)``: softmax probability (the papers' default), logit."""


def score_of(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The score function named ``kind`` (``prob``, ``logit`` or ``logprob``)."""
    try:
        return SCORES[kind]
    except KeyError:
        raise FaithmapError(f"unknown score {kind!r}; choose from: {', '.join(SCORES)}") from None


def topk(logits: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k softmax probabilities and class indices, each (B, k)."""
    p = torch.softmax(logits, dim=1)
    k = min(k, p.shape[1])
    v, i = p.topk(k, dim=1)
    return v, i


def class_index(spec: str | int, class_names: Sequence[str] | None, num_classes: int) -> int:
    """A class index from an int, a numeric string or a class name (case-insensitive).

    A name that several classes carry exactly (ImageNet's ``cardigan``: the sweater and the corgi;
    ``crane``: the bird and the machine) is refused as ambiguous; give the index instead.
    """
    if isinstance(spec, bool) or not isinstance(spec, (numbers.Integral, str)):
        raise FaithmapError(f"a target must be 'top1', a class index or a class name, got {type(spec).__name__} {spec!r}")
    if isinstance(spec, numbers.Integral) or (isinstance(spec, str) and spec.strip().lstrip("-").isdigit()):
        idx = int(spec)
        if not 0 <= idx < num_classes:
            raise FaithmapError(f"target class {idx} is out of range: the model has {num_classes} classes (0-{num_classes - 1})")
        return idx
    name = str(spec).strip().lower()
    if class_names:
        lowered = [c.lower() for c in class_names]
        exact = [i for i, c in enumerate(lowered) if c == name]
        if len(exact) > 1:
            raise FaithmapError(f"target {spec!r} names {len(exact)} classes ({', '.join(map(str, exact))}); "
                                f"give the class index")
        if exact:
            return exact[0]
        partial = [i for i, c in enumerate(lowered) if name in c]
        if len(partial) == 1:
            return partial[0]
        if partial:
            some = ", ".join(repr(class_names[i]) for i in partial[:5])
            raise FaithmapError(f"target {spec!r} matches several classes ({some}); give the full name or the index")
    raise FaithmapError(f"unknown target class {spec!r}: give 'top1', a class index or a class name")


_PREDICTION = ("top1", "top-1", "pred")


def is_prediction(target) -> bool:
    """Whether ``target`` itself names the model's prediction (``None``, ``"top1"``, ...)."""
    return target is None or (isinstance(target, str) and target.strip().lower() in _PREDICTION)


def needs_prediction(target) -> bool:
    """Whether ``target`` or one of its per-image entries names the model's prediction, i.e.
    whether :func:`resolve_targets` needs real logits rather than their shape."""
    if isinstance(target, (list, tuple)):
        return any(needs_prediction(t) for t in target)
    return is_prediction(target)


def resolve_targets(logits: torch.Tensor, target, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Targets (B,) long on the logits' device.

    ``target`` may be ``None``/``"top1"`` (the predicted class), an int, a class name, a sequence
    with one entry per image, or a tensor of shape (B,).
    """
    b, k = logits.shape
    if is_prediction(target):
        return logits.argmax(1)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise FaithmapError(f"target tensors must hold integer class indices, got {target.dtype}")
        t = target.to(logits.device).long().view(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.numel() != b:
            raise FaithmapError(f"got {t.numel()} targets for {b} images")
        if (t < 0).any() or (t >= k).any():
            raise FaithmapError(f"target class out of range: the model has {k} classes (0-{k - 1})")
        return t.clone()
    if isinstance(target, (list, tuple)):
        if len(target) != b:
            raise FaithmapError(f"got {len(target)} targets for {b} images")
        per = [resolve_targets(logits[i:i + 1], t, class_names) for i, t in enumerate(target)]
        return torch.cat(per)
    return torch.full((b,), class_index(target, class_names, k), dtype=torch.long, device=logits.device)
