"""The 1000 ImageNet-1k (ILSVRC2012) classes: WordNet ids, devkit ids and names, bundled (no download).

``imagenet_classes.csv`` (package data) has one row per class in the order of the class indices
of torchvision's (and timm's) ImageNet models, which is the sorted order of the WordNet ids::

    index,wnid,ilsvrc2012_id,words
    0,n01440764,449,"tench, Tinca tinca"

``ilsvrc2012_id`` is the class number of the ILSVRC2012 devkit (``data/meta.mat``, and the numbers
in ``ILSVRC2012_validation_ground_truth.txt``); it follows the devkit's own order (1 is
``n02119789`` kit fox), not the index order. ``words`` are the synset's WordNet lemmas (the names
of ``LOC_synset_mapping.txt``). The table was assembled from the public lists that ship with the
ILSVRC2012/2015 devkits (``map_clsloc.txt``) and the Kaggle ``LOC_synset_mapping.txt``; the tests
check its consistency and torchvision's class names against it.
"""

from __future__ import annotations

import csv
import io
import re
from functools import lru_cache
from importlib import resources
from typing import Sequence

from ..errors import FaithmapError

TABLE = "imagenet_classes.csv"
NUM_CLASSES = 1000
WNID = re.compile(r"^n\d{8}$")
"""The form of a WordNet noun id (``n01440764``)."""


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    text = resources.files("faithmap.data").joinpath(TABLE).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    if [int(r["index"]) for r in rows] != list(range(NUM_CLASSES)):
        raise FaithmapError(f"the bundled {TABLE} is damaged (reinstall faithmap)")
    return (tuple(r["wnid"] for r in rows), tuple(int(r["ilsvrc2012_id"]) for r in rows),
            tuple(r["words"] for r in rows))


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids in class-index order (index ``i`` of a torchvision ImageNet model)."""
    return _table()[0]


def imagenet_words() -> tuple[str, ...]:
    """The WordNet lemmas of each class in class-index order (``"tench, Tinca tinca"``)."""
    return _table()[2]


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    """WordNet id -> class index of a torchvision ImageNet model."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


@lru_cache(maxsize=1)
def devkit_to_wnid() -> dict[int, str]:
    """ILSVRC2012_ID (1..1000, the devkit's numbering) -> WordNet id, from the bundled table."""
    wnids, ids, _ = _table()
    return dict(zip(ids, wnids))


def read_meta_mat(path: str) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id from the devkit's ``data/meta.mat`` (its 1000 leaf synsets)."""
    import numpy as np
    import scipy.io

    try:
        synsets = scipy.io.loadmat(path, squeeze_me=True)["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"]).astype(np.int64)
        wnids = [str(w) for w in np.atleast_1d(synsets["WNID"])]
        children = np.atleast_1d(synsets["num_children"]).astype(np.int64)
    except (KeyError, ValueError, TypeError, IndexError, OSError, NotImplementedError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise FaithmapError(f"cannot read {path} as the ILSVRC2012 devkit's data/meta.mat ({detail})") from None
    table = {int(i): w for i, w, c in zip(ids, wnids, children) if c == 0}
    known = wnid_to_index()
    if sorted(table) != list(range(1, NUM_CLASSES + 1)) or len(set(table.values())) != NUM_CLASSES \
            or any(w not in known for w in table.values()):
        raise FaithmapError(f"{path} does not list the 1000 ILSVRC2012 classes "
                            f"(leaf synsets with ILSVRC2012_ID 1-1000)")
    return table


def is_imagenet(class_names: Sequence[str] | None, num_classes: int | None) -> bool:
    """Whether a model with these classes has the 1000 ImageNet classes in torchvision's order.

    True for 1000 classes without names, or names of which at least 900 are lemmas of the
    class at the same index (torchvision's, timm's and the default model's names all are).
    """
    k = len(class_names) if class_names is not None else num_classes
    if k != NUM_CLASSES:
        return False
    if class_names is None:
        return True
    words = imagenet_words()
    hits = sum(str(c).strip().lower() in {s.strip().lower() for s in words[i].split(",")}
               for i, c in enumerate(class_names))
    return hits >= 900
