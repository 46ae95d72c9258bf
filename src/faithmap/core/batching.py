"""Batching, model-evaluation counting and the guard that leaves the user's model as it was."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import FaithmapError

DEFAULT_BATCH_SIZE = None
"""``batch_size=None`` picks :func:`resolve_batch_size`'s default for the device."""


def resolve_batch_size(batch_size: int | None, device) -> int:
    """The memory bound ``batch_size`` (maximum images per forward pass) as an int.

    ``None`` gives 20 on CPU (per-image cost is lowest around 16-20 images at 224 px on a 2-core
    machine; larger batches fall out of cache) and 64 on accelerators.
    """
    if batch_size is None:
        return 20 if torch.device(device).type == "cpu" else 64
    if int(batch_size) < 1:
        raise FaithmapError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


@dataclass
class EvalCounter:
    """Counts images sent through a model, with and without autograd."""

    images: int = 0
    grad_images: int = 0
    calls: int = 0

    def record(self, x: torch.Tensor) -> None:
        n = int(x.shape[0])
        self.calls += 1
        self.images += n
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_images += n

    @property
    def nograd_images(self) -> int:
        return self.images - self.grad_images

    def snapshot(self) -> tuple[int, int]:
        return self.images, self.grad_images

    def since(self, snap: tuple[int, int]) -> dict[str, int]:
        """Counts accumulated since ``snap`` (from :meth:`snapshot`)."""
        images, grad = self.images - snap[0], self.grad_images - snap[1]
        return {"images": images, "grad_images": grad, "nograd_images": images - grad}


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices that cover ``range(n)`` in pieces of at most ``size``."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def image_runs(img: torch.Tensor) -> list[tuple[int, slice]]:
    """Runs of equal consecutive image indices in a chunk of jobs: (image, positions) pairs.

    Jobs are laid out image by image, so a chunk holds a few runs; building each run's images by
    broadcasting the one photo avoids gathering a copy of it per job.
    """
    values, counts = torch.unique_consecutive(img, return_counts=True)
    out, start = [], 0
    for v, c in zip(values.tolist(), counts.tolist()):
        out.append((int(v), slice(start, start + c)))
        start += c
    return out


def forward_batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` over ``x`` in chunks of at most ``batch_size`` images, concatenated."""
    if x.shape[0] <= batch_size:
        return fn(x)
    return torch.cat([fn(x[s]) for s in chunks(x.shape[0], batch_size)])


@contextlib.contextmanager
def model_guard(model: nn.Module, *, eval_mode: bool = True, freeze: bool = True):
    """Put ``model`` in eval mode with frozen parameters, and restore both afterwards, always.

    Freezing the parameters makes backward passes compute input gradients only (about 2.5x
    cheaper on CPU for EfficientNet-Lite0). Every module's ``training`` flag and every parameter's
    ``requires_grad`` are restored in ``finally``, also when the body raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode and any(mode for _, mode in modes):  # eval() walks and sets every module: skip it when idle
            model.eval()
        if freeze:
            for p, flag in grads:
                if flag:
                    p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            if m.training != mode:
                m.training = mode
        for p, flag in grads:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the body with ``n`` torch CPU threads (``None``: unchanged); the previous count is restored."""
    before = torch.get_num_threads()
    if n is not None:
        if int(n) < 1:
            raise FaithmapError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


Seed = Union[int, Sequence[int], None]
"""A method's ``seed``: one for every image, one per image (``faithmap.evaluate`` gives each image its
own, see :func:`per_image_generators`), or None (nondeterministic)."""


def per_image_generators(seed: int | Sequence[int] | None, n: int, device: torch.device | str) -> list[torch.Generator]:
    """One random generator per image, each seeded with ``seed`` (or with ``seed[i]``: one seed per image).

    Every image draws from its own stream, so an image's noise does not depend on which other
    images share its batch: batched runs equal one-by-one runs with the same seed. A sequence of
    ``n`` seeds gives image ``i`` its own seed (``faithmap.evaluate`` derives it from the image's
    name, so an image draws the same numbers whichever batch, shard or worker explains it).
    """
    device = torch.device(device)
    if seed is None or isinstance(seed, (int, np.integer)):
        seeds = [seed] * n
    elif isinstance(seed, torch.Tensor) and seed.dim() == 0:
        seeds = [int(seed)] * n
    else:
        seeds = [int(s) for s in (seed.tolist() if isinstance(seed, torch.Tensor) else seed)]
        if len(seeds) != n:
            raise FaithmapError(f"got {len(seeds)} seeds for {n} images (give one seed, or one per image)")
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        if s is None:
            g.seed()
        else:
            g.manual_seed(int(s))
        gens.append(g)
    return gens


def randn_per_image(gens: Sequence[torch.Generator], shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """Stack of ``torch.randn(shape)`` drawn from each image's generator: (len(gens), *shape)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens])


def rand_per_image(gens: Sequence[torch.Generator], shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """Stack of ``torch.rand(shape)`` drawn from each image's generator."""
    return torch.stack([torch.rand(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens])
