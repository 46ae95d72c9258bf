"""Ground-truth labels: labels files, and labels resolved to the model's class indices.

Labels files (the format is recognised from the content):

* CSV ``image,label`` (a header row ``image,label`` is optional): ``image`` is a file name (with or
  without its extension) of an input image, ``label`` a class index, a WordNet id or a class name;
* ILSVRC2012 ``LOC_val_solution.csv`` (Kaggle): ``ImageId,PredictionString``, the label is the
  first token of ``PredictionString`` (a WordNet id);
* the devkit's ``ILSVRC2012_validation_ground_truth.txt``: one ILSVRC2012_ID (1-1000) per line,
  line ``i`` for ``ILSVRC2012_val_<i as 8 digits>.JPEG``. The ids follow the devkit's numbering,
  not the class indices: they are turned into WordNet ids with the ``meta.mat`` that lies beside
  the file (the devkit's ``data/`` folder) when there is one, else with the bundled table
  (:mod:`faithmap.data.imagenet`).

A raw label (folder name, labels-file cell) becomes a class index by :func:`resolve_labels`:
a number is the index; a WordNet id is a class name of the model, or the index of that synset
for a model with the 1000 ImageNet classes; anything else is a class name of the model (ignoring
case, then also reading ``_`` as a space), refused when it names no class or several (``cardigan``
names the corgi ``Cardigan`` and the sweater: give its index or WordNet id).
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from typing import Any, Mapping, Sequence

from ..errors import FaithmapError
from .imagenet import WNID, devkit_to_wnid, imagenet_words, is_imagenet, read_meta_mat, wnid_to_index
from .inputs import IMAGE_EXTENSIONS, ImageRecord

DEVKIT_NAME = "ILSVRC2012_val_{:08d}"


def _is_number(text: str) -> bool:
    t = text.strip()
    return t.isascii() and t.isdigit()


class LabelRow:
    """One row of a labels file: the image it names, its raw label, and where it was written."""

    __slots__ = ("image", "label", "where")

    def __init__(self, image: str, label: Any, where: str):
        self.image, self.label, self.where = image, label, where


def read_labels(path: str | os.PathLike) -> tuple[list[LabelRow], str]:
    """The rows of a labels file and its format (``csv``, ``loc`` or ``devkit``); one line if malformed."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FaithmapError(f"labels file not found: {path}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise FaithmapError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FaithmapError(f"labels file {name} is not UTF-8 text") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise FaithmapError(f"labels file {name} is empty")
    if _is_number(lines[0]):
        return _read_devkit(path, lines), "devkit"
    try:
        table = list(csv.reader(io.StringIO("\n".join(lines)), strict=True))
    except csv.Error as exc:
        raise FaithmapError(f"labels file {name} is not valid CSV: {exc}") from None
    head = [c.strip().lower() for c in table[0]]
    if head[:2] == ["imageid", "predictionstring"]:
        return _read_loc(name, table), "loc"
    return _read_csv(name, table), "csv"


def _read_devkit(path: str, lines: list[str]) -> list[LabelRow]:
    name = os.path.basename(path)
    meta = os.path.join(os.path.dirname(path), "meta.mat")
    table = read_meta_mat(meta) if os.path.isfile(meta) else devkit_to_wnid()
    rows = []
    for i, line in enumerate(lines, 1):
        if not _is_number(line):
            raise FaithmapError(f"{name} line {i}: expected one ILSVRC2012_ID (1-1000), got {line.strip()[:40]!r}")
        k = int(line)
        if k not in table:
            raise FaithmapError(f"{name} line {i}: ILSVRC2012_ID {k} is not between 1 and 1000")
        rows.append(LabelRow(DEVKIT_NAME.format(i), table[k], f"{name} line {i}"))
    return rows


def _read_loc(name: str, table: list[list[str]]) -> list[LabelRow]:
    rows = []
    for i, row in enumerate(table[1:], 2):
        if len(row) != 2 or not row[0].strip() or not row[1].split():
            raise FaithmapError(f"{name} line {i}: expected ImageId,PredictionString")
        wnid = row[1].split()[0]
        if not WNID.match(wnid):
            raise FaithmapError(f"{name} line {i}: PredictionString should start with a WordNet id, got {wnid[:40]!r}")
        rows.append(LabelRow(row[0].strip(), wnid, f"{name} line {i}"))
    return rows


def _read_csv(name: str, table: list[list[str]]) -> list[LabelRow]:
    start = 1 if [c.strip().lower() for c in table[0]] == ["image", "label"] else 0
    rows = []
    for i, row in enumerate(table[start:], start + 1):
        if len(row) != 2:
            raise FaithmapError(f"{name} line {i}: expected two columns image,label, got {len(row)}")
        image, label = row[0].strip(), row[1].strip()
        if not image or not label:
            raise FaithmapError(f"{name} line {i}: empty {'image' if not image else 'label'}")
        rows.append(LabelRow(image, label, f"{name} line {i}"))
    if not rows:
        raise FaithmapError(f"labels file {name} has no rows")
    return rows


def attach_labels(records: Sequence[ImageRecord], labels: str | os.PathLike | Mapping[str, Any]) -> str:
    """Set ``raw_label`` of every record from a labels file or a mapping image name -> label; the format.

    A row names an image by its file name (a folder part is ignored), its record name, or its file
    name without the extension (``LOC_val_solution.csv`` and the devkit do). Refused with one line: a row that names no input image, or several; two rows for one
    image; an input image that no row names.
    """
    if isinstance(labels, Mapping):
        rows, fmt = [LabelRow(str(k), v, f"label of {k!r}") for k, v in labels.items()], "mapping"
        source = "the labels given"
    else:
        rows, fmt = read_labels(labels)
        source = os.path.basename(os.fspath(labels))
    by_file: dict[str, list[int]] = {}
    by_stem: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.path is not None:
            base = r.rel.rsplit("/", 1)[-1] if r.rel else os.path.basename(r.path)
            by_file.setdefault(base, []).append(i)
            dot = base.rfind(".")
            by_stem.setdefault(base[:dot] if dot > 0 else base, []).append(i)
        by_name.setdefault(r.name, []).append(i)
    owner: dict[int, LabelRow] = {}
    for row in rows:
        key = row.image.replace("\\", "/").rsplit("/", 1)[-1]
        hits = by_file.get(key) or by_name.get(key) or by_stem.get(key)
        if not hits and key.lower().endswith(IMAGE_EXTENSIONS):
            hits = by_stem.get(os.path.splitext(key)[0])
        if not hits:
            hint = (" (line i of the devkit's ground truth is ILSVRC2012_val_<i as 8 digits>.JPEG)" if fmt == "devkit"
                    else "")
            raise FaithmapError(f"{row.where}: no input image {row.image!r}{hint}; every row needs its image "
                                f"(--limit or --sample run on part of a folder)")
        if len(hits) > 1:
            some = ", ".join(records[j].describe() for j in hits[:3])
            raise FaithmapError(f"{row.where}: {row.image!r} names several input images ({some}); "
                                f"give the file name with its extension")
        j = hits[0]
        if j in owner:
            raise FaithmapError(f"{owner[j].where} and {row.where} both label {records[j].describe()}")
        owner[j] = row
    missing = [r for i, r in enumerate(records) if i not in owner]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FaithmapError(f"image {missing[0].describe()} has no label in {source}{more}")
    for j, row in owner.items():
        records[j].raw_label = row.label
        records[j].label_source = row.where
    return fmt


class _Resolver:
    def __init__(self, class_names: Sequence[str] | None, num_classes: int | None):
        self.names = list(class_names) if class_names is not None else None
        k = len(self.names) if self.names is not None else num_classes
        if k is None:
            raise FaithmapError("cannot check labels: the model's number of classes is unknown")
        self.k = int(k)
        self.imagenet = is_imagenet(self.names, self.k)
        self.stages: list[dict[str, list[int]]] = []
        if self.names is not None:
            # names that differ only in case ('Cardigan' the corgi, 'cardigan' the sweater) are ambiguous,
            # as for --target
            for norm in (lambda s: s.lower(), lambda s: s.lower().replace("_", " ")):
                table: dict[str, list[int]] = defaultdict(list)
                for i, c in enumerate(self.names):
                    table[norm(str(c).strip())].append(i)
                self.stages.append((norm, table))  # type: ignore[arg-type]

    def text(self, idx: int) -> str:
        if self.names is not None:
            return str(self.names[idx])
        if self.imagenet:
            return imagenet_words()[idx].split(",")[0]
        return f"class {idx}"

    def __call__(self, raw: Any, where: str) -> int:
        if isinstance(raw, bool):
            raise FaithmapError(f"{where}: label {raw!r} is not a class")
        if isinstance(raw, int) or (isinstance(raw, str) and _is_number(raw)):
            idx = int(raw)
            if not 0 <= idx < self.k:
                raise FaithmapError(f"{where}: label {idx} is outside the model's classes (0-{self.k - 1})")
            return idx
        text = str(raw).strip()
        for norm, table in self.stages:  # type: ignore[misc]
            hits = table.get(norm(text))
            if hits and len(hits) == 1:
                return hits[0]
            if hits:
                some = ", ".join(f"{i} {self.names[i]!r}" for i in hits[:4])  # type: ignore[index]
                raise FaithmapError(f"{where}: label {text!r} names several classes ({some}); "
                                    f"use the class index{' or WordNet id' if self.imagenet else ''}")
        if WNID.match(text):
            if not self.imagenet:
                raise FaithmapError(f"{where}: label {text} is a WordNet id, but the model's {self.k} classes "
                                    f"are not the 1000 ImageNet classes")
            idx = wnid_to_index().get(text)
            if idx is None:
                raise FaithmapError(f"{where}: unknown WordNet id {text} (not one of the 1000 ImageNet classes)")
            return idx
        if self.names is None:
            raise FaithmapError(f"{where}: label {text!r} is not a class index, and the model has no class names")
        raise FaithmapError(f"{where}: label {text!r} is not a class of the model "
                            f"(give a class index{', WordNet id' if self.imagenet else ''} or class name)")


def resolve_labels(records: Sequence[ImageRecord], class_names: Sequence[str] | None = None,
                   num_classes: int | None = None, *, required: bool = True) -> None:
    """Set ``label`` (class index) and ``label_name`` of every record from its ``raw_label``.

    ``class_names``: the model's class names (``Classifier.class_names``), or ``num_classes``
    when it has none. With ``required``, a record without a label is refused ("image X has no
    label"); otherwise records without one are left unlabelled. Each distinct raw label is
    resolved once. One line for the first bad label.
    """
    resolve = _Resolver(class_names, num_classes)
    cache: dict[Any, int] = {}
    for r in records:
        if r.raw_label is None:
            if required:
                raise FaithmapError(f"image {r.describe()} has no label: give an ImageFolder tree "
                                    f"(one sub-folder per class) or --labels FILE")
            continue
        key = (type(r.raw_label), r.raw_label)
        if key not in cache:
            cache[key] = resolve(r.raw_label, r.label_source or f"label of {r.describe()}")
        r.label = cache[key]
        r.label_name = resolve.text(r.label)
