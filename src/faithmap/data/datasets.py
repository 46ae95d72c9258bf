"""The one image gatherer of every command (explain, evaluate, sanity, the benches) and the library.

:func:`gather` turns what the user gave (sample photos, files, folders, a class-folder tree,
in-memory photos, a labels file) into a list of :class:`~faithmap.data.ImageRecord`, labels
resolved to the model's classes when asked, a seeded sample or the first N when asked. Nothing is
decoded; every layout problem is one :class:`~faithmap.errors.FaithmapError` line, raised before
the caller writes anything.
"""

from __future__ import annotations

import hashlib
import heapq
import operator
import os
from typing import Any, Mapping, Sequence

from ..errors import FaithmapError
from .inputs import ImageRecord, list_images
from .labels import attach_labels, resolve_labels


def gather(images=None, labels: str | os.PathLike | Mapping[str, Any] | None = None, *,
           class_names: Sequence[str] | None = None, num_classes: int | None = None,
           require_labels: bool = False, limit: int | None = None, sample: int | None = None,
           seed: int = 0) -> list[ImageRecord]:
    """Records of the input images (see :func:`faithmap.data.list_images` for ``images``).

    ``labels``: a labels file for flat folders or files (CSV ``image,label``,
    ``LOC_val_solution.csv`` or ``ILSVRC2012_validation_ground_truth.txt``; see
    :mod:`faithmap.data.labels`) or a mapping image name -> label; a class-folder tree brings its
    own labels (the folder names). With ``class_names`` (or ``num_classes``) the labels are
    resolved to class indices (``record.label``, ``record.label_name``) and every bad one is
    refused; with ``require_labels`` (``--target label``) images without labels are refused.
    ``sample``: N images drawn with ``seed`` (:func:`select`); ``limit``: at most the first N.
    The order is the listing order (arguments in order, each folder sorted by path).
    """
    limit = _count("limit", limit)
    sample = _count("sample", sample)
    listing = list_images(images)
    records = listing.records
    if labels is not None:
        if listing.is_tree:
            raise FaithmapError("a labels file is for flat folders of images; a class-folder tree is labelled "
                                "by its folder names (give one or the other)")
        attach_labels(records, labels)
    labelled = any(r.raw_label is not None for r in records)
    if require_labels and not labelled:
        raise FaithmapError("the true labels are needed (--target label): give an ImageFolder tree "
                            "(one sub-folder per class) or a flat folder with --labels FILE")
    if class_names is not None or num_classes is not None:
        if labelled or require_labels:
            resolve_labels(records, class_names, num_classes, required=True)
    elif require_labels:
        missing = next((r for r in records if r.raw_label is None), None)
        if missing is not None:
            raise FaithmapError(f"image {missing.describe()} has no label")
    return select(records, limit=limit, sample=sample, seed=seed)


def _count(what: str, n) -> int | None:
    if n is None:
        return None
    try:
        k = operator.index(n) if not isinstance(n, bool) else None
    except TypeError:
        k = None
    if k is None or k < 1:
        raise FaithmapError(f"{what} must be a whole number of images, at least 1; got {n!r}")
    return k


def sample_key(name: str, seed: int) -> bytes:
    """The sort key of an image in a seeded sample: SHA-256 of the seed and the image name."""
    return hashlib.sha256(f"{int(seed)}\0{name}".encode("utf-8", "surrogatepass")).digest()


def select(records: Sequence[ImageRecord], limit: int | None = None, sample: int | None = None,
           seed: int = 0) -> list[ImageRecord]:
    """A seeded sample of ``sample`` records, then at most the first ``limit``; listing order kept.

    The sample is the ``sample`` records whose :func:`sample_key` (a hash of seed and name) is
    smallest: the same seed gives the same images on any machine and Python version, whatever
    order the file system lists them in; a larger sample contains the smaller one; adding images
    to the folder changes it only where a new image ranks among the chosen. Asking for more
    images than there are is refused.
    """
    limit, sample = _count("limit", limit), _count("sample", sample)
    out = list(records)
    try:
        number = operator.index(seed) if not isinstance(seed, bool) else None
    except TypeError:
        number = None
    if number is None:
        raise FaithmapError(f"seed must be a whole number, got {seed!r}")
    seed = number
    if sample is not None:
        if sample > len(out):
            raise FaithmapError(f"cannot sample {sample} images: there are only {len(out)}")
        keep = set(heapq.nsmallest(sample, range(len(out)), key=lambda i: sample_key(out[i].name, seed)))
        out = [r for i, r in enumerate(out) if i in keep]
    if limit is not None:
        out = out[:limit]
    return out
