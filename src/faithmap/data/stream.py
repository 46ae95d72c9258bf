"""Streaming photos to a model: decoded and preprocessed in background workers, a batch at a time.

:class:`PhotoDataset` is a ``torch.utils.data.Dataset`` over image records: item ``i`` is record
``i``'s photo, read by :func:`faithmap.data.load_image` (EXIF orientation applied; ``convert``
as there) and turned into a model input by a picklable ``transform`` (``Classifier.transform``, a
:class:`faithmap.models.classifier.PhotoTransform`; the model itself never goes to the workers).
:func:`iter_batches` yields batches of up to ``batch_size`` of them, in order, from a
``DataLoader`` with ``workers`` processes (0: in this process). Only the batches in flight are in
memory (about ``2 * workers + 1``), never the dataset. A file that cannot be read raises the same
one-line :class:`~faithmap.errors.FaithmapError` from a worker as in-process.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import FaithmapError
from .inputs import ImageRecord


class PhotoDataset(Dataset):
    """``dataset[i]`` = ``transform(records[i].load(convert))`` (the photo itself without a transform).

    Picklable when ``transform`` is (``Classifier.transform`` is). Bad files raise one-line
    :class:`~faithmap.errors.FaithmapError`.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[[Any], Any] | None = None,
                 convert: bool = False):
        self.records = list(records)
        self.transform = transform
        self.convert = bool(convert)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        photo = self.records[i].load(self.convert)
        return self.transform(photo) if self.transform is not None else photo


class Batch(NamedTuple):
    """Up to ``batch_size`` images: their record ``indices`` and the transformed ``images``
    (a (B, 3, S, S) CPU tensor when the transform gives tensors, else a list)."""

    indices: list[int]
    images: Any


class _Failed(NamedTuple):
    index: int
    message: str


class _Guarded(Dataset):
    """Items ``(i, x)``; a FaithmapError becomes a value, so that it crosses from a worker intact."""

    def __init__(self, inner: PhotoDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        try:
            return i, self.inner[i]
        except FaithmapError as exc:
            return _Failed(i, str(exc))


def _collate(items: list) -> Batch | _Failed:
    for it in items:
        if isinstance(it, _Failed):
            return it
    idx = [i for i, _ in items]
    xs = [x for _, x in items]
    if all(isinstance(x, torch.Tensor) for x in xs):
        return Batch(idx, torch.stack(xs))
    return Batch(idx, xs)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the workers decode; the model's process keeps the cores for the network


def iter_batches(records: Sequence[ImageRecord], transform: Callable[[Any], Any] | None, batch_size: int, *,
                 workers: int = 0, convert: bool = False, indices: Sequence[int] | None = None,
                 pin_memory: bool = False) -> Iterator[Batch]:
    """Batches of up to ``batch_size`` images of ``records`` (or of ``records[indices]``), in order.

    ``transform``: photo -> (3, S, S) tensor, picklable (``Classifier.transform``); None yields
    the photos (uint8 arrays) in lists. ``workers``: background processes of the ``DataLoader``
    (0 = in this process); the order of the batches and their contents do not depend on it.
    ``indices``: the records to stream, in this order (e.g. only the unfinished ones); the
    batches carry these indices. ``pin_memory`` for fast copies to a GPU. The first image that
    cannot be read raises its one-line :class:`~faithmap.errors.FaithmapError` (from a worker
    too), after the batches before it were yielded.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FaithmapError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise FaithmapError(f"workers must be a whole number of at least 0, got {workers!r}")
    data = _Guarded(PhotoDataset(records, transform, convert))
    order = None
    if indices is not None:
        order = [int(i) for i in indices]
        bad = next((i for i in order if not 0 <= i < len(data)), None)
        if bad is not None:
            raise FaithmapError(f"record index {bad} is out of range (0-{len(data) - 1})")
    if (len(order) if order is not None else len(data)) == 0:
        return iter(())
    loader = DataLoader(data, batch_size=batch_size, sampler=order, shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=pin_memory,
                        worker_init_fn=_worker_init if workers else None)
    return _batches(loader)  # arguments are checked now, not at the first batch


def _batches(loader: DataLoader) -> Iterator[Batch]:
    it = iter(loader)
    try:
        for b in it:
            if isinstance(b, _Failed):
                raise FaithmapError(b.message)
            yield b
    finally:
        del it  # stops the workers now, also when the caller stops early
