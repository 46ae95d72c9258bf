"""The pointing game and the annotation files, against hand computations."""

import json
import math

import numpy as np
import pytest
import torch

import faithmap
from faithmap.data.annotations import (box_mask, load_annotations, map_to_input, preprocess_geometry,
                                       rle_counts_from_string, rle_decode, sample_annotations)
from faithmap.errors import FaithmapError
from faithmap.evaluation.stats import summarize, t_interval
from faithmap.metrics.pointing import box_distance, most_salient_point, pointing_hits

SIZE = (32, 32)


def peak_map(h=4, w=4, r=1, c=2):
    s = torch.zeros(1, h, w)
    s[0, r, c] = 1.0
    return s


def test_most_salient_point_by_hand():
    # a 4x4 grid upsampled with align_corners=True puts cell i at pixel i * 31 / 3: row 1 -> 10.33,
    # column 2 -> 20.67. Pixel 10 weighs row 1 by 1 - (10.33 - 10) / 10.33 = 0.968, pixel 11 by 0.935,
    # so row 10 wins; pixel 21 weighs column 2 by 0.968, pixel 20 by 0.935, so column 21 wins.
    assert most_salient_point(peak_map(), SIZE).tolist() == [[10, 21]]
    # at full resolution the point is the cell itself; ties go to the first in row-major order
    s = torch.zeros(1, 32, 32)
    s[0, 5, 7] = s[0, 20, 3] = 2.0
    assert most_salient_point(s, SIZE).tolist() == [[5, 7]]
    assert most_salient_point(torch.ones(1, 8, 8), SIZE).tolist() == [[0, 0]]


def test_hit_and_miss_on_boxes():
    s = peak_map()  # point (row 10, col 21): centre (x 21.5, y 10.5)
    inside = torch.tensor([[20.0, 9.0, 23.0, 12.0]])
    beside = torch.tensor([[22.0, 9.0, 30.0, 12.0]])  # 0.5 px to the right of the centre
    assert pointing_hits(s, SIZE, boxes=[inside]).tolist() == [1.0]
    assert pointing_hits(s, SIZE, boxes=[beside]).tolist() == [0.0]
    assert pointing_hits(s, SIZE, boxes=[torch.cat([beside, inside])]).tolist() == [1.0]  # any box counts
    assert pointing_hits(s, SIZE, boxes=[beside], tolerance=0.5).tolist() == [1.0]
    # a box edge through the centre counts as inside
    assert pointing_hits(s, SIZE, boxes=[torch.tensor([[21.5, 0.0, 31.0, 10.5]])]).tolist() == [1.0]


def test_tolerance_is_euclidean():
    s = peak_map()
    box = torch.tensor([[24.5, 14.5, 30.0, 20.0]])  # dx = 3, dy = 4 from (21.5, 10.5): distance 5
    assert box_distance(torch.tensor([10, 21]), box).tolist() == pytest.approx([5.0])
    assert pointing_hits(s, SIZE, boxes=[box], tolerance=4.9).tolist() == [0.0]
    assert pointing_hits(s, SIZE, boxes=[box], tolerance=5.0).tolist() == [1.0]


def test_masks_and_missing_regions():
    s = peak_map().repeat(3, 1, 1)
    m = torch.zeros(3, *SIZE, dtype=torch.bool)
    m[0, 10, 21] = True  # on the point
    m[1, 14, 25] = True  # sqrt(4^2 + 4^2) = 5.657 px away
    hits = pointing_hits(s, SIZE, masks=m, tolerance=0)
    assert hits[:2].tolist() == [1.0, 0.0] and math.isnan(hits[2])  # empty mask: not counted
    assert pointing_hits(s, SIZE, masks=m, tolerance=5.6)[1] == 0.0
    assert pointing_hits(s, SIZE, masks=m, tolerance=5.7)[1] == 1.0
    assert math.isnan(pointing_hits(s[:1], SIZE, boxes=[torch.zeros(0, 4)])[0])


def test_box_mask_agrees_with_box_hits():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x0, y0 = float(torch.rand(1, generator=g) * 20), float(torch.rand(1, generator=g) * 20)
        box = (x0, y0, x0 + 1 + float(torch.rand(1, generator=g) * 10), y0 + 1 + float(torch.rand(1, generator=g) * 10))
        s = torch.rand(1, 32, 32, generator=g)
        a = pointing_hits(s, SIZE, boxes=[torch.tensor([box])])
        b = pointing_hits(s, SIZE, masks=box_mask(box, SIZE)[None])
        assert torch.equal(a, b)


def test_registered_metric_and_min_score():
    from evalkit import tiny_model

    model = tiny_model()
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, 8:16, 16:24] = 1.0  # class 0 probability 1 / (1 + exp(-8.4)) > 0.99
    x[1] *= 0.0  # class 0 logit -3.6: probability 0.027
    s = torch.zeros(2, 32, 32)
    s[:, 12, 20] = 1.0
    boxes = [torch.tensor([[16.0, 8.0, 24.0, 16.0]])] * 2
    t = torch.tensor([0, 0])
    spec = faithmap.METRICS.get("pointing")
    assert spec.needs == ("boxes",) and spec.higher_is_better and spec.aggregate == "category_mean"
    assert spec.fn(model, x, s, t, boxes=boxes).tolist() == [1.0, 1.0]
    kept = spec.fn(model, x, s, t, boxes=boxes, min_score=0.5)
    assert kept[0] == 1.0 and math.isnan(kept[1])
    masks = torch.stack([box_mask((16, 8, 24, 16), SIZE)] * 2)
    assert faithmap.METRICS.get("pointing_mask").fn(model, x, s, t, masks=masks).tolist() == [1.0, 1.0]


def test_per_category_mean_by_hand():
    def row(cat, v):
        return {"method": "m", "resolution": "native", "grid": "7x7", "metric": "pointing", "value": repr(v),
                "higher_is_better": "true", "category": cat}

    rows = [row("A", 1.0), row("A", 1.0), row("A", 0.0), row("B", 0.0), row("C", 1.0), row("C", 1.0),
            row("C", float("nan"))]
    (s,) = summarize(rows, ["m"], ["native"], ["pointing"], {"pointing": "category_mean"})
    accs = {c.category: (c.hits, c.total, c.accuracy) for c in s.categories}
    assert accs == {"A": (2.0, 3, pytest.approx(2 / 3)), "B": (0.0, 1, 0.0), "C": (2.0, 2, 1.0)}
    assert s.interval.mean == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert s.interval.n == 3 and s.n_images == 6
    assert s.interval.half == pytest.approx(t_interval([2 / 3, 0.0, 1.0]).half)


# ----------------------------------------------------------------------------------------------
# annotation files
# ----------------------------------------------------------------------------------------------
class Geo:
    def __init__(self, input_size=224, resize_size=224, resize="crop"):
        self.input_size, self.resize_size, self.resize = input_size, resize_size, resize
        self.class_names = ["cup", "espresso", "cat"]
        self.num_classes = 3


def test_boxes_map_through_the_preprocessing_by_hand():
    # coffee: 600 x 400 -> shorter side 224: scale 0.56, 336 x 224, centre crop from x = 56
    assert preprocess_geometry((400, 600), Geo()) == (336 / 600, 224 / 400, 56, 0, 224)
    ann = sample_annotations().get("coffee")
    geo = Geo()
    geo.class_names, geo.num_classes = None, 1000
    (r,) = map_to_input(ann, (400, 600), geo)
    assert r.box == pytest.approx((172 * 0.56 - 56, 17 * 0.56, 410 * 0.56 - 56, 305 * 0.56))
    assert r.classes == (967, 968, 504)
    # squash keeps the whole photo: x scaled by 224/600, y by 224/400
    geo.resize = "squash"
    (r,) = map_to_input(ann, (400, 600), geo)
    assert r.box == pytest.approx((172 * 224 / 600, 17 * 224 / 400, 410 * 224 / 600, 305 * 224 / 400))


@pytest.mark.slow
def test_sample_boxes_cover_every_sample_and_its_top1(lite0):
    from faithmap.data import load_sample, sample_names

    ann = sample_annotations()
    assert sorted(ann.images) == sorted(sample_names())
    x = lite0.preprocess([load_sample(n) for n in sample_names()])
    with torch.no_grad():
        top1 = lite0(x).argmax(1).tolist()
    for name, t in zip(sample_names(), top1):
        regions = map_to_input(ann.get(name), load_sample(name).shape[:2], lite0)
        assert any(r.counts_for(t) for r in regions), f"no box of {name} stands for its top-1 class {t}"


def test_regions_outside_the_crop_are_dropped_and_classes_by_name(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"images": {"wide": {"size": [600, 400], "objects": [
        {"category": "cup", "box": [0, 0, 50, 50]},  # left of the crop (x < 56 / 0.56 = 100)
        {"category": "cat", "box": [200, 100, 300, 200]},
        {"category": "saucer", "box": [200, 100, 300, 200]}]}}}))
    regions = map_to_input(load_annotations(str(p)).get("wide.jpg"), (400, 600), Geo())
    assert [(r.category, r.classes) for r in regions] == [("cat", (2,)), ("saucer", None)]
    assert regions[1].counts_for(0) and regions[1].counts_for(2) and not regions[0].counts_for(0)


def test_csv_and_coco_formats(tmp_path):
    c = tmp_path / "boxes.csv"
    c.write_text("image,category,x0,y0,x1,y1,classes\nimg0.png,patch,16,8,24,16,0;patch\nimg0,dot,1,1,2,2,\n")
    a = load_annotations(str(c))
    objs = a.get("img0").objects
    assert [(o.category, o.box, o.classes) for o in objs] == [("patch", (16, 8, 24, 16), (0, "patch")),
                                                               ("dot", (1, 1, 2, 2), None)]
    coco = {"images": [{"id": 7, "file_name": "val/img0.jpg", "width": 32, "height": 32}],
            "categories": [{"id": 1, "name": "patch"}],
            "annotations": [{"image_id": 7, "category_id": 1, "bbox": [16, 8, 8, 8],
                             "segmentation": [[16, 8, 24, 8, 24, 16, 16, 16]]}]}
    j = tmp_path / "coco.json"
    j.write_text(json.dumps(coco))
    a = load_annotations(str(j))
    assert a.format == "coco"
    geo = Geo(32, 32)
    geo.class_names = ["patch", "background"]
    (r,) = map_to_input(a.get("img0"), (32, 32), geo)
    assert r.box == (16, 8, 24, 16) and r.classes == (0,)
    assert torch.equal(r.mask, box_mask((16, 8, 24, 16), (32, 32)))  # the square polygon fills the box


def _rle_encode(counts):
    """COCO's string encoding written from its description: deltas after the third count, 5-bit chunks."""
    s = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            s.append(chr(ch + 48))
    return "".join(s)


def test_rle_decoding():
    m = np.zeros((5, 4), dtype=bool)  # column-major runs: 6 zeros, 3 ones, 11 zeros
    flat = m.reshape(-1, order="F")
    flat[6:9] = True
    m = flat.reshape(5, 4, order="F")
    assert np.array_equal(rle_decode({"size": (5, 4), "counts": [6, 3, 11]}), m)
    counts = [6, 3, 11, 40, 2, 1000, 37, 0, 5]
    assert rle_counts_from_string(_rle_encode(counts)) == counts


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    (json.dumps({"foo": 1}), "unknown annotation format"),
    (json.dumps({"images": {"a": {"objects": [{"category": "x"}]}}}), "missing 'box'"),
    (json.dumps({"images": {"a": {"objects": [{"category": "x", "box": [5, 5, 5, 9]}]}}}), "empty"),
    (json.dumps({"images": {"a": {"objects": [{"category": "x", "box": [1, 2, 3]}]}}}), "4 numbers"),
    (json.dumps({"images": {"a": {"objects": [{"box": [1, 2, 3, 4]}]}}}), "category"),
    (json.dumps({"images": {"a": {"size": [10, 10], "objects": [{"category": "x", "box": [1, 2, 30, 4]}]}}}), "outside"),
    (json.dumps({"images": [], "categories": [], "annotations": [{"image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1]}]}),
     "not among the images"),
])
def test_bad_annotation_files(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(FaithmapError) as exc:
        load_annotations(str(p))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_bad_csv_and_missing_file(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("image,x0,y0\nimg0,1,2\n")
    with pytest.raises(FaithmapError, match="missing category"):
        load_annotations(str(p))
    with pytest.raises(FaithmapError, match="not found"):
        load_annotations(str(tmp_path / "nope.json"))
