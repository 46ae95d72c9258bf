"""Input images as records: listing files, folders and class-folder trees, and unique file-safe names.

Listing never decodes a photo (``os.scandir`` only, one ``isfile``/``isdir`` per argument); a
record loads its photo when asked (:meth:`ImageRecord.load`).

Names. Every record has a display ``name`` (the file's stem, the sample's name, or the name given
with an in-memory photo) that is unique *after* :func:`safe_name`, compared case-insensitively, so
that per-image files ``<safe_name(name)>...`` never overwrite each other, on any file system.
Names from files that collide are replaced, all of them (so no name depends on which file is
listed first), by the first of these that is free: the path relative to the folder it was found in
(``a.jpg``, ``a.png``; ``cat/1.jpg``), then ``<stem>-<8 hex>`` and ``<stem>-<16 hex>`` of the
SHA-1 of that relative path (so names do not depend on where the folder is mounted), then the same
of the path as given. "Free" means that no other input's own name and no name chosen before has
the same :func:`safe_name` (see :func:`unique_names`). Names given by the caller (``(name, photo)``
pairs or a dict) are kept as they are, and refused with one line if two of them collide.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import FaithmapError
from .images import load_image
from .samples import load_sample, photo_names, sample_names

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")
"""File name endings (case-insensitive) that folders are listed for."""

SAMPLE_PREFIX = "sample:"
MAX_NAME = 120
"""Longest :func:`safe_name` (longer names keep their start and get a hash of the whole)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=-]")
_SAFE = re.compile(r"^(?!\.)[A-Za-z0-9._+@=-]+(?<!\.)$")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def safe_name(name: str) -> str:
    """The file-name form of an image name: the one sanitiser for every per-image file.

    Accents are dropped (``café`` -> ``cafe``), every character other than ASCII letters, digits
    and ``._+@=-`` becomes ``_`` (so ``$x^2$`` -> ``_x_2_``, ``cat 1`` -> ``cat_1``), a leading or
    trailing dot becomes ``_`` (no hidden files, never ``.`` or ``..``), Windows device names get a
    ``_`` in front, and names longer than :data:`MAX_NAME` keep their start plus ``-`` and 8 hex
    digits of the SHA-1 of the whole name. Never empty.
    """
    name = str(name)
    if len(name) <= MAX_NAME and _SAFE.match(name) and name.split(".")[0].upper() not in _RESERVED:
        return name  # the common case, fast: already a safe file name
    text = name if name.isascii() else "".join(
        c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    out = _UNSAFE.sub("_", text)
    if out.startswith("."):
        out = "_" + out[1:]
    if out.endswith("."):
        out = out[:-1] + "_"
    out = out or "_"
    if out.split(".")[0].upper() in _RESERVED:
        out = "_" + out
    if len(out) > MAX_NAME:
        out = out[:MAX_NAME - 9] + "-" + _hex(str(name), 8)
    return out


def name_key(name: str) -> str:
    """What two names must not share: their :func:`safe_name`, case-folded (for case-insensitive file systems)."""
    return safe_name(name).lower()


def _hex(text: str, n: int) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def unique_names(candidates: Sequence[Sequence[str]]) -> list[str]:
    """One name per item, unique under :func:`name_key`; ``candidates[i]`` = item i's names, preferred first.

    An item whose first name no other item's first name collides with keeps it. The others try
    their later candidates level by level: at each level a candidate is taken when no other
    pending item proposes the same key at that level and its key is not already taken (every
    item's first name counts as taken). The result does not depend on the order of the items
    (except for the last-resort ``<name>-<position>`` form, reached only when all candidates
    collide). Linear in the number of items.
    """
    firsts = [c[0] for c in candidates]
    keys = [name_key(n) for n in firsts]
    counts = Counter(keys)
    taken = set(keys)
    out: list[str | None] = [n if counts[k] == 1 else None for n, k in zip(firsts, keys)]
    pending = [i for i, n in enumerate(out) if n is None]
    level = 1
    while pending:
        proposal = {}
        for i in pending:
            cands = candidates[i]
            proposal[i] = cands[level] if level < len(cands) else \
                f"{firsts[i]}-{i}" + (f".{level - len(cands)}" if level > len(cands) else "")
        pkeys = {i: name_key(p) for i, p in proposal.items()}
        pcount = Counter(pkeys.values())
        rest = []
        for i in pending:
            k = pkeys[i]
            if pcount[k] == 1 and k not in taken:
                out[i] = proposal[i]
                taken.add(k)
            else:
                rest.append(i)
        pending = rest
        level += 1
    return [str(n) for n in out]


class _Candidates(Sequence):
    """The names of a listed file, preferred first; the hashed ones computed only when a name collides."""

    __slots__ = ("src", "base", "rel")

    def __init__(self, src: str, base: str, rel: str):
        self.src, self.base, self.rel = src, base, rel

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(6))]
        if i < 0:
            i += 6
        if i == 0:
            return self.base
        if i == 1:
            return self.rel
        if i >= 6:
            raise IndexError(i)
        text, n = ((self.rel, 8), (self.rel, 16), (self.src, 8), (self.src, 40))[i - 2]
        return f"{self.base}-{_hex(text, n)}"


@dataclass(eq=False)
class ImageRecord:
    """One input image: a unique display ``name``, where it comes from, and its label if known.

    ``source`` is a file path, ``"sample:NAME"`` (a bundled sample photo) or, for images given in
    memory, the photo itself (uint8 (H, W, 3) array, PIL image or (3, H, W) tensor in [0, 1]).
    ``raw_label`` is the label as written in the input (class folder name, labels-file cell, or
    the WordNet id a devkit number stands for); ``label`` is the model's class index and
    ``label_name`` its class name, set by :func:`faithmap.data.resolve_labels`. ``stem`` is
    ``safe_name(name)``, unique among the records of one gathering: use it for per-image files.
    """

    name: str
    source: Any
    raw_label: Any = None
    label: int | None = None
    label_name: str | None = None
    rel: str = field(default="", repr=False)  # path relative to the folder it was listed from
    label_source: str = field(default="", repr=False)  # where raw_label was written (for messages)

    @property
    def stem(self) -> str:
        return safe_name(self.name)

    @property
    def path(self) -> str | None:
        """The file path, or None for sample photos and in-memory images."""
        if isinstance(self.source, str) and not self.source.startswith(SAMPLE_PREFIX):
            return self.source
        return None

    @property
    def is_sample(self) -> bool:
        return isinstance(self.source, str) and self.source.startswith(SAMPLE_PREFIX)

    def describe(self) -> str:
        """The source as text (for messages and tables): the path, ``sample:NAME`` or ``<memory>``."""
        return self.source if isinstance(self.source, str) else f"<{type(self.source).__name__} {self.name}>"

    def load(self, convert: bool = False):
        """The photo: a uint8 (H, W, 3) array for files (:func:`faithmap.data.load_image`) and samples;
        in-memory photos are returned as given."""
        if isinstance(self.source, str):
            if self.source.startswith(SAMPLE_PREFIX):
                return load_sample(self.source[len(SAMPLE_PREFIX):])
            return load_image(self.source, convert=convert)
        return self.source


@dataclass
class Listing:
    """What :func:`list_images` found: the records, and the layout (``samples``, ``files``,
    ``folder`` (flat), ``tree`` (one sub-folder per class, labels = folder names), ``memory``)."""

    records: list[ImageRecord]
    layouts: set[str]

    @property
    def is_tree(self) -> bool:
        return "tree" in self.layouts

    @property
    def samples_only(self) -> bool:
        return self.layouts == {"samples"}


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _scan(directory: str, follow: bool = True) -> tuple[list[str], list[str]]:
    """(image file names, sub-folder names) directly inside ``directory``; hidden entries skipped.

    ``follow=False`` does not list links to folders (no cycles when searching recursively)."""
    files, dirs = [], []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=follow):
                        dirs.append(e.name)
                    elif _is_image(e.name) and e.is_file():
                        files.append(e.name)
                except OSError:
                    continue
    except PermissionError:
        raise FaithmapError(f"cannot read directory {directory}: permission denied") from None
    except OSError as exc:
        raise FaithmapError(f"cannot read directory {directory}: {exc.strerror or exc}") from None
    return files, dirs


def _walk_images(directory: str, prefix: str = "") -> list[str]:
    """Image files under ``directory`` (recursively), as paths relative to it with ``/``."""
    files, dirs = _scan(directory, follow=not prefix)
    out = [prefix + f for f in files]
    for d in dirs:
        out.extend(_walk_images(os.path.join(directory, d), f"{prefix}{d}/"))
    return out


def _list_directory(path: str) -> tuple[list[tuple[str, str, Any, str]], str]:
    """(path, rel, raw label, label source) for the images of a flat folder or a class-folder tree,
    and which of the two it is."""
    files, dirs = _scan(path)
    if files:  # a flat folder (sub-folders, e.g. an earlier --out, are not listed)
        return [(os.path.join(path, f), f, None, "") for f in sorted(files)], "folder"
    if not dirs:
        raise FaithmapError(f"no images found in directory {path}")
    out = []
    for d in sorted(dirs):
        folder = os.path.join(path, d)
        found = _walk_images(folder)
        if not found:
            raise FaithmapError(f"class folder {folder} holds no images "
                                f"({', '.join(IMAGE_EXTENSIONS)}): remove it or add its images")
        where = f"class folder {folder}"
        out.extend((os.path.join(folder, *r.split("/")), f"{d}/{r}", d, where) for r in sorted(found))
    return out, "tree"


def _is_pairs(images) -> bool:
    return isinstance(images, (list, tuple)) and bool(images) and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in images)


def list_images(images=None) -> Listing:
    """Records for the input images, none decoded.

    ``images``: None, ``"samples"`` or ``[]`` (the six bundled sample photos), ``"photos"`` (the 20
    of :data:`faithmap.data.PHOTOS`); or one or a list of
    ``"sample:NAME"``, image files, flat folders (their image files, sorted), class-folder trees
    (a folder without image files whose sub-folders hold the images of one class each, searched
    recursively; the sub-folder name is the raw label); or ``(name, photo)`` pairs or a dict
    name -> photo. Hidden files and folders (``.name``) are skipped. Names are made unique (see
    the module docstring). Refused with one line: a missing file, a folder without images, an
    empty class folder, the same file given twice, colliding names given in memory.
    """
    if images is None:
        images = "samples"
    if isinstance(images, dict) or _is_pairs(images):
        pairs = list(images.items()) if isinstance(images, dict) else list(images)
        recs = [ImageRecord(str(k), v) for k, v in pairs]
        _check_given_names([r.name for r in recs])
        if not recs:
            raise FaithmapError("no images given")
        return Listing(recs, {"memory"})
    if isinstance(images, (str, os.PathLike)):
        paths = [os.fspath(images)]
    else:
        try:
            paths = [os.fspath(p) for p in images]
        except TypeError:
            raise FaithmapError("images must be paths, 'samples', (name, photo) pairs "
                                "or a dict name -> photo") from None
    if not paths:
        paths = ["samples"]
    entries: list[tuple[str, str, str, Any, str]] = []  # (source, base name, rel, raw label, label source)
    layouts: set[str] = set()
    for p in paths:
        if p in ("samples", "photos") and not os.path.exists(p):  # a file or folder of that name wins
            names = sample_names() if p == "samples" else photo_names()
            entries.extend((f"{SAMPLE_PREFIX}{n}", n, f"{SAMPLE_PREFIX}{n}", None, "") for n in names)
            layouts.add("samples")
        elif p.startswith(SAMPLE_PREFIX):
            n = p[len(SAMPLE_PREFIX):]
            if n not in photo_names():
                raise FaithmapError(f"unknown sample {n!r}; choose from: {', '.join(photo_names())}")
            entries.append((p, n, p, None, ""))
            layouts.add("samples")
        elif os.path.isdir(p):
            found, kind = _list_directory(p)
            layouts.add(kind)
            entries.extend((src, os.path.splitext(os.path.basename(src))[0], rel, lab, where)
                           for src, rel, lab, where in found)
        elif os.path.exists(p):
            entries.append((p, os.path.splitext(os.path.basename(p))[0], os.path.basename(p), None, ""))
            layouts.add("files")
        else:
            raise FaithmapError(f"no such file: {p}")
    seen: set[str] = set()
    cwd = os.getcwd()
    for src, *_ in entries:
        key = src if src.startswith(SAMPLE_PREFIX) else os.path.normcase(os.path.normpath(os.path.join(cwd, src)))
        if key in seen:
            raise FaithmapError(f"image {src} is given twice")
        seen.add(key)
    names = unique_names([_Candidates(src, base, rel) for src, base, rel, *_ in entries])
    recs = [ImageRecord(n, src, raw_label=lab, rel=rel, label_source=where)
            for n, (src, _, rel, lab, where) in zip(names, entries)]
    return Listing(recs, layouts)


def _check_given_names(names: list[str]) -> None:
    owner: dict[str, str] = {}
    for n in names:
        k = name_key(n)
        if k in owner:
            if owner[k] == n:
                raise FaithmapError(f"image names must be unique; {n!r} is given twice")
            raise FaithmapError(f"image names {owner[k]!r} and {n!r} would share the output files "
                                f"{safe_name(n)!r}: rename one")
        owner[k] = n
