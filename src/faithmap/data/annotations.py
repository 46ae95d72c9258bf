"""Ground-truth regions for localisation metrics (the pointing game): reading and mapping.

Three file formats, all in **original photo pixels** (x to the right, y down, box corners on pixel
edges, so a box ``[0, 0, W, H]`` covers the whole photo):

* **faithmap JSON** (what ``sample_boxes.json`` uses)::

      {"images": {"coffee": {"size": [600, 400],
                             "objects": [{"category": "espresso cup", "box": [172, 17, 410, 305],
                                          "classes": [967, "cup"], "polygons": [[x, y, x, y, ...]]}]}}}

  ``size`` (width, height) is optional and checked against the photo; ``box`` is x0, y0, x1, y1;
  ``polygons`` (optional) outline the object for mask metrics; ``classes`` (optional) lists the
  model classes (indices or names) the object stands for.
* **COCO JSON** (instances files): ``images`` (id, file_name, width, height), ``annotations``
  (image_id, category_id, ``bbox`` = x, y, width, height, ``segmentation`` = polygons or RLE,
  uncompressed or compressed) and ``categories`` (id, name, and optionally ``classes`` as above).
* **CSV** with a header ``image,category,x0,y0,x1,y1`` and an optional ``classes`` column
  (indices or names separated by ``;``); one object per row.

Images are matched by name without extension (``coffee`` matches ``coffee.jpg`` and
``sample:coffee``). An object counts for a target class ``c`` when ``c`` is in its ``classes``; an
object without ``classes`` counts for the class whose name equals its category (case-insensitive)
or, when no class has that name, for every target. Regions are mapped into model-input pixels
through the model's preprocessing (shorter side resized to ``resize_size``, centre crop of
``input_size``; or the whole photo squashed); objects that fall outside the crop are dropped.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.io import parse_json
from ..errors import FaithmapError
from .inputs import IMAGE_EXTENSIONS

SAMPLE_BOXES = "sample_boxes.json"


@dataclass
class AnnotatedObject:
    """One object of one photo, in original photo pixels."""

    category: str
    box: tuple[float, float, float, float] | None = None
    polygons: list[list[float]] = field(default_factory=list)
    rle: dict | None = None
    classes: tuple[Any, ...] | None = None  # class indices or names; None = by category name
    note: str = ""


@dataclass
class ImageAnnotation:
    name: str
    size: tuple[int, int] | None  # (width, height) of the original photo, when the file gives it
    objects: list[AnnotatedObject]


@dataclass
class Region:
    """An object mapped into model-input pixels, with the model classes it counts for."""

    category: str
    classes: tuple[int, ...] | None  # None: counts for every target
    box: tuple[float, float, float, float]
    mask: torch.Tensor | None  # (H, W) bool from polygons/RLE, or None (box only)

    def counts_for(self, target: int) -> bool:
        return self.classes is None or int(target) in self.classes


class Annotations:
    """Annotations of several photos, read from one file (see the module docstring for formats)."""

    def __init__(self, images: dict[str, ImageAnnotation], source: str, fmt: str, digest: str = ""):
        self.images = images
        self.source = source
        self.format = fmt
        self.digest = digest

    def __len__(self) -> int:
        return len(self.images)

    def get(self, name: str) -> ImageAnnotation | None:
        return self.images.get(image_key(name))


def image_key(name: str) -> str:
    """Matching key of an image name: basename without extension and without ``sample:``."""
    name = str(name)
    if name.startswith("sample:"):
        name = name[len("sample:"):]
    base = os.path.basename(name)
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTENSIONS else base


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def load_annotations(path: str) -> Annotations:
    """Read an annotation file (faithmap JSON, COCO JSON or CSV); one clear error for bad files."""
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise FaithmapError(f"annotation file not found: {path}")
    if os.path.isdir(path):
        raise FaithmapError(f"annotation path {path} is a directory, not a file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise FaithmapError(f"cannot read annotation file {path}: {exc.strerror}") from None
    digest = hashlib.sha1(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FaithmapError(f"{name} is not a text file (annotations are JSON or CSV)") from None
    if path.lower().endswith(".csv"):
        images = _read_csv(text, name)
        return Annotations(images, path, "csv", digest)
    data = parse_json(text, name)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return Annotations(_read_coco(data, name), path, "coco", digest)
    if isinstance(data, dict) and isinstance(data.get("images"), dict):
        return Annotations(_read_simple(data, name), path, "faithmap", digest)
    raise FaithmapError(f"{name}: unknown annotation format: expected COCO JSON (with 'images', 'annotations', "
                        f"'categories') or faithmap JSON (with an 'images' object); see `faithmap evaluate --help`")


def sample_annotations() -> Annotations:
    """The hand-drawn boxes of the bundled sample photos (``faithmap/data/sample_boxes.json``)."""
    path = resources.files("faithmap.data").joinpath(SAMPLE_BOXES)
    with resources.as_file(path) as p:
        return load_annotations(str(p))


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise FaithmapError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def _box(v, where: str, xywh: bool = False) -> tuple[float, float, float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise FaithmapError(f"{where}: a box is 4 numbers ({'x, y, width, height' if xywh else 'x0, y0, x1, y1'}), got {v!r}")
    a, b, c, d = (_number(u, where) for u in v)
    if xywh:
        c, d = a + c, b + d
    if c <= a or d <= b:
        raise FaithmapError(f"{where}: box {list(v)} is empty (need x1 > x0 and y1 > y0)")
    if a < 0 or b < 0:
        raise FaithmapError(f"{where}: box {list(v)} has negative coordinates")
    return a, b, c, d


def _classes(v, where: str) -> tuple[Any, ...] | None:
    if v is None:
        return None
    if isinstance(v, (int, str)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in v):
        raise FaithmapError(f"{where}: classes must be a list of class indices or names, got {v!r}")
    return tuple(v)


def _polygons(v, where: str) -> list[list[float]]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(p, list) for p in v):
        raise FaithmapError(f"{where}: polygons must be a list of [x, y, x, y, ...] lists")
    out = []
    for p in v:
        if len(p) < 6 or len(p) % 2:
            raise FaithmapError(f"{where}: a polygon needs at least 3 points as x, y pairs, got {len(p)} numbers")
        out.append([_number(u, where) for u in p])
    return out


def _size(v, where: str) -> tuple[int, int] | None:
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(u, int) and u > 0 for u in v):
        raise FaithmapError(f"{where}: size must be [width, height] in pixels, got {v!r}")
    return int(v[0]), int(v[1])


def _check_inside(box, size, where: str) -> None:
    if size is not None and box is not None and (box[2] > size[0] + 0.5 or box[3] > size[1] + 0.5):
        raise FaithmapError(f"{where}: box {[round(b, 2) for b in box]} lies outside the {size[0]}x{size[1]} photo")


def _read_simple(data: dict, name: str) -> dict[str, ImageAnnotation]:
    out: dict[str, ImageAnnotation] = {}
    for key, entry in data["images"].items():
        where = f"{name}: images.{key}"
        if not isinstance(entry, dict) or not isinstance(entry.get("objects"), list):
            raise FaithmapError(f"{where}: expected an object with an 'objects' list")
        size = _size(entry.get("size"), f"{where}.size")
        objs = []
        for j, o in enumerate(entry["objects"]):
            w = f"{where}.objects[{j}]"
            if not isinstance(o, dict):
                raise FaithmapError(f"{w}: expected an object with 'category' and 'box'")
            cat = o.get("category")
            if not isinstance(cat, str) or not cat.strip():
                raise FaithmapError(f"{w}: missing 'category' (a name)")
            polys = _polygons(o.get("polygons"), f"{w}.polygons")
            if "box" in o:
                box = _box(o["box"], f"{w}.box")
            elif polys:
                box = _polygon_box(polys)
            else:
                raise FaithmapError(f"{w}: missing 'box' (x0, y0, x1, y1)")
            _check_inside(box, size, f"{w}.box")
            objs.append(AnnotatedObject(cat.strip(), box, polys, None, _classes(o.get("classes"), f"{w}.classes"),
                                        str(o.get("note", ""))))
        out[image_key(key)] = ImageAnnotation(image_key(key), size, objs)
    return out


def _polygon_box(polys: list[list[float]]) -> tuple[float, float, float, float]:
    xs = [p[i] for p in polys for i in range(0, len(p), 2)]
    ys = [p[i] for p in polys for i in range(1, len(p), 2)]
    return min(xs), min(ys), max(xs), max(ys)


def _read_coco(data: dict, name: str) -> dict[str, ImageAnnotation]:
    for k in ("images", "categories"):
        if not isinstance(data.get(k), list):
            raise FaithmapError(f"{name}: COCO annotations need an '{k}' list")
    cats: dict[Any, tuple[str, tuple | None]] = {}
    for j, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise FaithmapError(f"{name}: categories[{j}] needs an 'id' and a 'name'")
        cats[c["id"]] = (c["name"], _classes(c.get("classes"), f"{name}: categories[{j}].classes"))
    imgs: dict[Any, ImageAnnotation] = {}
    for j, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise FaithmapError(f"{name}: images[{j}] needs an 'id' and a 'file_name'")
        size = None
        if "width" in im and "height" in im:
            size = _size([im["width"], im["height"]], f"{name}: images[{j}]")
        imgs[im["id"]] = ImageAnnotation(image_key(im["file_name"]), size, [])
    for j, a in enumerate(data["annotations"]):
        w = f"{name}: annotations[{j}]"
        if not isinstance(a, dict):
            raise FaithmapError(f"{w}: expected an object")
        if a.get("image_id") not in imgs:
            raise FaithmapError(f"{w}: image_id {a.get('image_id')!r} is not among the images")
        if a.get("category_id") not in cats:
            raise FaithmapError(f"{w}: category_id {a.get('category_id')!r} is not among the categories")
        im = imgs[a["image_id"]]
        seg = a.get("segmentation")
        polys, rle = [], None
        if isinstance(seg, list):
            polys = _polygons(seg, f"{w}.segmentation") if seg else []
        elif isinstance(seg, dict):
            rle = _rle(seg, f"{w}.segmentation", im.size)
        elif seg is not None:
            raise FaithmapError(f"{w}.segmentation: expected polygons or RLE")
        if "bbox" in a:
            box = _box(a["bbox"], f"{w}.bbox", xywh=True)
        elif polys:
            box = _polygon_box(polys)
        elif rle is not None:
            box = _rle_box(rle)
        else:
            raise FaithmapError(f"{w}: needs a 'bbox' or a 'segmentation'")
        _check_inside(box, im.size, f"{w}.bbox")
        cname, ccls = cats[a["category_id"]]
        im.objects.append(AnnotatedObject(cname, box, polys, rle, ccls))
    return {im.name: im for im in imgs.values() if im.objects}


def _read_csv(text: str, name: str) -> dict[str, ImageAnnotation]:
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise FaithmapError(f"{name} is empty")
    head = [h.strip().lower() for h in rows[0]]
    need = ["image", "category", "x0", "y0", "x1", "y1"]
    missing = [h for h in need if h not in head]
    if missing:
        raise FaithmapError(f"{name}: the CSV header must name {', '.join(need)} (and optionally classes); "
                            f"missing {', '.join(missing)}")
    col = {h: head.index(h) for h in head}
    out: dict[str, ImageAnnotation] = {}
    for i, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        if len(r) < len(head):
            raise FaithmapError(f"{name}: line {i} has {len(r)} fields, the header has {len(head)}")
        where = f"{name}: line {i}"
        try:
            box = [float(r[col[k]]) for k in ("x0", "y0", "x1", "y1")]
        except ValueError:
            raise FaithmapError(f"{where}: x0, y0, x1, y1 must be numbers") from None
        box = _box(box, where)
        cls = None
        if "classes" in col and r[col["classes"]].strip():
            cls = tuple(int(c) if c.strip().lstrip("-").isdigit() else c.strip()
                        for c in r[col["classes"]].replace("|", ";").split(";") if c.strip())
        cat = r[col["category"]].strip()
        if not cat:
            raise FaithmapError(f"{where}: empty category")
        key = image_key(r[col["image"]].strip())
        out.setdefault(key, ImageAnnotation(key, None, [])).objects.append(AnnotatedObject(cat, box, [], None, cls))
    if not out:
        raise FaithmapError(f"{name} holds no annotations")
    return out


# ----------------------------------------------------------------------------------------------
# RLE (COCO run-length encoding, column-major, starting with a run of zeros)
# ----------------------------------------------------------------------------------------------
def rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (6-bit chunks from '0', counts after the third as deltas)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("truncated RLE string")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _rle(seg: dict, where: str, size) -> dict:
    if not isinstance(seg.get("size"), list) or len(seg["size"]) != 2 or "counts" not in seg:
        raise FaithmapError(f"{where}: RLE needs 'size' [height, width] and 'counts'")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1_000_000 for v in seg["size"]):
        raise FaithmapError(f"{where}: RLE size must be two positive integers [height, width], got {seg['size']!r}")
    h, w = seg["size"]
    counts = seg["counts"]
    if isinstance(counts, str):
        try:
            counts = rle_counts_from_string(counts)
        except ValueError as exc:
            raise FaithmapError(f"{where}: bad compressed RLE ({exc})") from None
    if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts):
        raise FaithmapError(f"{where}: RLE counts must be non-negative integers")
    if sum(counts) != h * w:
        raise FaithmapError(f"{where}: RLE counts cover {sum(counts)} pixels, the size {h}x{w} has {h * w}")
    if size is not None and (w, h) != tuple(size):
        raise FaithmapError(f"{where}: RLE size {h}x{w} (height x width) does not match the image {size[1]}x{size[0]}")
    return {"size": (h, w), "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """(H, W) bool mask from an RLE with integer counts (column-major runs, zeros first)."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        if val:
            flat[pos:pos + c] = True
        pos += c
        val = not val
    return flat.reshape(w, h).T


def _rle_box(rle: dict) -> tuple[float, float, float, float]:
    m = rle_decode(rle)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        raise FaithmapError("an RLE segmentation is empty and has no bbox")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


# ----------------------------------------------------------------------------------------------
# mapping into model inputs
# ----------------------------------------------------------------------------------------------
def preprocess_geometry(photo_hw: tuple[int, int], model) -> tuple[float, float, int, int, int]:
    """(scale_x, scale_y, left, top, size): photo pixel p maps to ``p * scale - offset`` in inputs.

    Mirrors :meth:`faithmap.models.Classifier.preprocess`: ``crop`` resizes the shorter side to
    ``resize_size`` (rounding the other) and crops ``input_size`` at the centre; ``squash``
    resizes the whole photo to ``input_size`` square.
    """
    transform = getattr(model, "transform", None)
    if hasattr(transform, "geometry"):  # a Classifier: its own transform's arithmetic (rounding included)
        return transform.geometry(photo_hw)
    h, w = photo_hw
    size = int(model.input_size)
    if getattr(model, "resize", "crop") == "squash":
        return size / w, size / h, 0, 0, size
    r = int(model.resize_size)
    if h <= w:
        nh, nw = r, max(1, round(w * r / h))
    else:
        nh, nw = max(1, round(h * r / w)), r
    if min(h, w) == r:
        nh, nw = h, w
    top, left = max(0, (nh - size) // 2), max(0, (nw - size) // 2)
    return nw / w, nh / h, left, top, size


def _rasterise(polys: list[list[float]], rle: dict | None, photo_hw) -> np.ndarray | None:
    if rle is not None:
        m = rle_decode(rle)
        if m.shape != tuple(photo_hw):
            raise FaithmapError(f"an RLE mask is {m.shape[0]}x{m.shape[1]} but the photo is {photo_hw[0]}x{photo_hw[1]}")
        return m
    if not polys:
        return None
    from matplotlib.path import Path

    h, w = photo_hw
    m = np.zeros((h, w), dtype=bool)
    for p in polys:
        xy = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        # pixels whose centre lies inside the polygon (the rule boxes follow), searched within its bounding box
        c0, c1 = max(0, int(np.floor(xy[:, 0].min()))), min(w, int(np.ceil(xy[:, 0].max())) + 1)
        r0, r1 = max(0, int(np.floor(xy[:, 1].min()))), min(h, int(np.ceil(xy[:, 1].max())) + 1)
        if c1 <= c0 or r1 <= r0:
            continue
        cy, cx = np.mgrid[r0:r1, c0:c1]
        pts = np.stack([cx.ravel() + 0.5, cy.ravel() + 0.5], 1)
        m[r0:r1, c0:c1] |= Path(xy).contains_points(pts).reshape(r1 - r0, c1 - c0)
    return m


def resolve_classes(obj: AnnotatedObject, class_names: Sequence[str] | None, num_classes: int | None,
                    where: str = "") -> tuple[int, ...] | None:
    """Model class indices an object counts for, or None (every target); see the module docstring."""
    lowered = [c.lower() for c in class_names] if class_names else []
    if obj.classes is None:
        cat = obj.category.strip().lower()
        return (lowered.index(cat),) if cat in lowered else None
    out = []
    for c in obj.classes:
        if isinstance(c, int):
            if num_classes is not None and not 0 <= c < num_classes:
                raise FaithmapError(f"{where}class {c} of '{obj.category}' is out of range: the model has {num_classes} classes")
            out.append(c)
        else:
            name = c.strip().lower()
            if name not in lowered:
                raise FaithmapError(f"{where}class {c!r} of '{obj.category}' is not a class name of the model")
            out.append(lowered.index(name))
    return tuple(out)


def map_to_input(ann: ImageAnnotation, photo_hw: tuple[int, int], model) -> list[Region]:
    """The objects of ``ann`` as :class:`Region` s in model-input pixels (objects outside the crop dropped)."""
    h, w = photo_hw
    where = f"annotation of {ann.name}: "
    if ann.size is not None and tuple(ann.size) != (w, h):
        raise FaithmapError(f"{where}the file says the photo is {ann.size[0]}x{ann.size[1]}, but it is {w}x{h}")
    sx, sy, left, top, size = preprocess_geometry(photo_hw, model)
    out = []
    for obj in ann.objects:
        if obj.box is not None and (obj.box[2] > w + 0.5 or obj.box[3] > h + 0.5):
            raise FaithmapError(f"{where}box {list(obj.box)} lies outside the {w}x{h} photo")
        classes = resolve_classes(obj, getattr(model, "class_names", None), getattr(model, "num_classes", None), where)
        x0, y0, x1, y1 = obj.box
        box = (min(max(x0 * sx - left, 0.0), size), min(max(y0 * sy - top, 0.0), size),
               min(max(x1 * sx - left, 0.0), size), min(max(y1 * sy - top, 0.0), size))
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            continue  # outside the centre crop
        mask = None
        m = _rasterise(obj.polygons, obj.rle, photo_hw)
        if m is not None:
            t = torch.from_numpy(m.astype(np.float32))[None, None]
            nh, nw = round(h * sy), round(w * sx)
            t = F.interpolate(t, size=(nh, nw), mode="nearest")[0, 0]
            mask = t[top:top + size, left:left + size] > 0.5
            if not mask.any():
                mask = None
        out.append(Region(obj.category, classes, box, mask))
    return out


def box_mask(box: Sequence[float], size: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool: pixels whose centre lies in the box (the pointing game's rule)."""
    h, w = size
    cy = torch.arange(h, dtype=torch.float64) + 0.5
    cx = torch.arange(w, dtype=torch.float64) + 0.5
    x0, y0, x1, y1 = box
    return ((cy >= y0) & (cy <= y1))[:, None] & ((cx >= x0) & (cx <= x1))[None, :]


def regions_for_target(regions: Sequence[Region], target: int) -> list[Region]:
    """The regions that count for ``target``."""
    return [r for r in regions if r.counts_for(target)]


def annotated_targets(regions: Sequence[Region]) -> list[int]:
    """One target per annotated category (its first class), in order of appearance."""
    seen: list[int] = []
    for r in regions:
        if r.classes and r.classes[0] not in seen:
            seen.append(r.classes[0])
    return seen
