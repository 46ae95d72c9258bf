"""The image gatherer: layouts, labels, names unique after sanitising, seeded samples, streaming."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from faithmap.data import (ImageRecord, devkit_to_wnid, gather, imagenet_wnids, imagenet_words, is_imagenet,
                           iter_batches, list_images, load_image, name_key, read_meta_mat, safe_name, sample_names,
                           select, unique_names, wnid_to_index)
from faithmap.data.inputs import MAX_NAME
from faithmap.data.stream import PhotoDataset
from faithmap.errors import FaithmapError
from faithmap.models import imagenet_classes, wrap

CLASSES3 = ["cat", "dog", "kit fox"]


def photo(seed: int = 0, h: int = 40, w: int = 48) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def write(path, seed: int = 0, h: int = 40, w: int = 48) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(photo(seed, h, w)).save(path)
    return str(path)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ----------------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, safe", [
    ("$x^2$", "_x_2_"), ("cat 1", "cat_1"), ("café", "cafe"), ("Ｃａｔ", "Cat"), ("猫", "_"), ("..", "__"),
    (".hidden", "_hidden"), ("", "_"), ("CON", "_CON"), ("nul.txt", "_nul.txt"), ("a/b\\c", "a_b_c"),
    ("n01440764_10026", "n01440764_10026"), ("x+y@z=w-v.q", "x+y@z=w-v.q"),
])
def test_safe_name(name, safe):
    assert safe_name(name) == safe


def test_safe_name_of_long_names_is_bounded_and_keeps_them_apart():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(a)) == MAX_NAME and safe_name(a) != safe_name(b)
    assert safe_name(a).startswith("x" * 100)


def test_explain_collision_case_gets_three_distinct_names(tmp_path):
    for n in ("a.png", "a.jpg", "a-2.png"):
        write(tmp_path / n)
    recs = gather(str(tmp_path))
    names = {os.path.basename(r.source): r.name for r in recs}
    # a-2 keeps its own name; the two 'a' become their file names (no renamed file takes 'a-2')
    assert names == {"a-2.png": "a-2", "a.jpg": "a.jpg", "a.png": "a.png"}
    assert len({r.stem.lower() for r in recs}) == 3


def test_names_unique_after_sanitising_spaces_unicode_and_case(tmp_path):
    files = ["cat 1.jpg", "cat_1.jpg", "$x^2$.png", "café.png", "Cafe.png", "A.png", "a.jpg", "plain.png"]
    for n in files:
        write(tmp_path / n)
    recs = gather(str(tmp_path))
    assert len(recs) == len(files)
    keys = [name_key(r.name) for r in recs]
    assert len(set(keys)) == len(keys)  # unique after safe_name, also on case-insensitive file systems
    by_file = {os.path.basename(r.source): r for r in recs}
    assert by_file["$x^2$.png"].name == "$x^2$" and by_file["$x^2$.png"].stem == "_x_2_"
    assert by_file["plain.png"].name == "plain"
    # 'cat 1' and 'cat_1' share the file name cat_1 (and cat_1.jpg): both get a hash of their relative path
    assert by_file["cat 1.jpg"].stem.startswith("cat_1-") and by_file["cat_1.jpg"].stem.startswith("cat_1-")
    assert by_file["cat 1.jpg"].stem != by_file["cat_1.jpg"].stem
    # 'A.png' and 'a.jpg' differ only in case: their file names keep them apart
    assert {by_file["A.png"].name, by_file["a.jpg"].name} == {"A.png", "a.jpg"}


def test_a_renamed_image_never_takes_another_inputs_own_name(tmp_path):
    for n in ("a.jpg", "a.png", "a.jpg.png"):  # the third one's own name is 'a.jpg'
        write(tmp_path / n)
    names = {os.path.basename(r.source): r.name for r in gather(str(tmp_path))}
    assert names["a.jpg.png"] == "a.jpg"
    assert names["a.png"] == "a.png"
    assert names["a.jpg"].startswith("a-") and len(names["a.jpg"]) == 2 + 8
    assert len({name_key(n) for n in names.values()}) == 3


def test_unique_names_do_not_depend_on_the_order_of_the_inputs():
    cands = [["a", "a.jpg", "a-1111"], ["a", "a.png", "a-2222"], ["a-2", "a-2.png"], ["b", "x/b.jpg"],
             ["B", "y/B.jpg"], ["a.png", "a.png.gif"], ["c", "c.jpg"]]
    ref = dict(zip(map(tuple, cands), unique_names(cands)))
    rng = random.Random(0)
    for _ in range(20):
        perm = cands[:]
        rng.shuffle(perm)
        assert dict(zip(map(tuple, perm), unique_names(perm))) == ref
    assert len({name_key(n) for n in ref.values()}) == len(cands)
    assert ref[("a.png", "a.png.gif")] == "a.png" and ref[("a", "a.png", "a-2222")] == "a-2222"


def test_same_file_name_in_two_class_folders(tmp_path):
    write(tmp_path / "cat" / "1.jpg")
    write(tmp_path / "dog" / "1.jpg")
    write(tmp_path / "dog" / "2.jpg")
    recs = gather(str(tmp_path), class_names=["cat", "dog"])
    assert [(r.name, r.label) for r in recs] == [("cat/1.jpg", 0), ("dog/1.jpg", 1), ("2", 1)]
    assert [r.stem for r in recs] == ["cat_1.jpg", "dog_1.jpg", "2"]


def test_in_memory_names_are_kept_or_refused():
    recs = gather([("cat 1", photo()), ("dog", photo(1))])
    assert [r.name for r in recs] == ["cat 1", "dog"] and isinstance(recs[0].load(), np.ndarray)
    with pytest.raises(FaithmapError) as e:
        gather({"cat 1": photo(), "cat_1": photo(1)})
    assert "cat_1" in one_line(e) and "rename" in str(e.value)
    with pytest.raises(FaithmapError) as e:
        gather([("x", photo()), ("x", photo(1))])
    assert "given twice" in one_line(e)


def test_samples_and_files_and_listing_does_not_decode(tmp_path):
    assert [r.name for r in gather()] == sample_names() == [r.name for r in gather("samples")]
    assert [r.source for r in gather(["sample:coffee"])] == ["sample:coffee"]
    assert gather(["sample:coffee"])[0].load().shape[2] == 3
    write(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)  # listed, never decoded here
    (tmp_path / "notes.txt").write_text("not listed")
    (tmp_path / ".hidden.png").write_bytes(b"AppleDouble junk")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "inner.png")  # a flat folder's sub-folders are not listed
    recs = gather(str(tmp_path))
    assert [r.name for r in recs] == ["broken", "ok"]
    with pytest.raises(FaithmapError) as e:
        recs[0].load()
    assert "broken.jpg" in one_line(e)
    mixed = gather(["sample:coffee", str(tmp_path / "ok.png")])
    assert [r.name for r in mixed] == ["coffee", "ok"] and mixed[0].is_sample and mixed[1].path


# ----------------------------------------------------------------------------------------------
# labelled layouts
# ----------------------------------------------------------------------------------------------
def test_imagefolder_with_index_folders(tmp_path):
    for c in ("0", "2"):
        write(tmp_path / c / f"img{c}.png")
    recs = gather(str(tmp_path), num_classes=3)
    assert [(r.name, r.label, r.label_name, r.raw_label) for r in recs] == [
        ("img0", 0, "class 0", "0"), ("img2", 2, "class 2", "2")]
    recs = gather(str(tmp_path), class_names=CLASSES3)
    assert [r.label_name for r in recs] == ["cat", "kit fox"]


def test_imagefolder_with_wordnet_id_folders(tmp_path):
    for w in ("n01440764", "n02119789"):
        write(tmp_path / w / "a" / f"{w}_1.JPEG")  # found recursively inside the class folder
    recs = gather(str(tmp_path), class_names=imagenet_classes())
    assert [(r.label, r.label_name) for r in recs] == [(0, "tench"), (278, "kit fox")]
    recs = gather(str(tmp_path), num_classes=1000)  # 1000 classes without names: ImageNet order
    assert [(r.label, r.label_name) for r in recs] == [(0, "tench"), (278, "kit fox")]


def test_imagefolder_with_class_name_folders(tmp_path):
    for c in ("cat", "Dog", "kit_fox"):  # exact, case-insensitive, '_' for a space
        write(tmp_path / c / f"{c}.png")
    recs = gather(str(tmp_path), class_names=CLASSES3)
    assert [(r.raw_label, r.label) for r in recs] == [("Dog", 1), ("cat", 0), ("kit_fox", 2)]


def test_model_class_names_that_are_wordnet_ids(tmp_path):
    write(tmp_path / "n02119789" / "a.png")
    recs = gather(str(tmp_path), class_names=["n09999999", "n02119789"])  # a 2-class ImageNet subset
    assert recs[0].label == 1


def test_csv_labels(tmp_path):
    d = tmp_path / "imgs"
    for n in ("a.png", "b.jpg", "c.png", "d.png"):
        write(d / n)
    lab = tmp_path / "labels.csv"
    lab.write_text('image,label\na.png,2\nb,dog\nc.png,"kit fox"\nd,cat\n')
    recs = gather(str(d), labels=str(lab), class_names=CLASSES3)
    assert [(r.name, r.label, r.label_name, r.raw_label) for r in recs] == [
        ("a", 2, "kit fox", "2"), ("b", 1, "dog", "dog"), ("c", 2, "kit fox", "kit fox"), ("d", 0, "cat", "cat")]
    lab.write_text("a.png,0\nb.jpg,1\nc.png,n02119789\nd.png,n01440764\n")  # no header; WordNet ids
    recs = gather(str(d), labels=str(lab), class_names=imagenet_classes())
    assert [r.label for r in recs] == [0, 1, 278, 0]
    # without a model the labels stay raw
    assert [r.raw_label for r in gather(str(d), labels=str(lab))] == ["0", "1", "n02119789", "n01440764"]
    assert gather(str(d), labels={"a": 1, "b.jpg": 0, "c": 2, "d": 1}, num_classes=3)[0].label == 1


def test_labels_name_files_before_renamed_names(tmp_path):
    d = _flat(tmp_path, ("a.jpg", "a.png", "a.jpg.png"))  # the third one's name is 'a.jpg'
    (tmp_path / "l.csv").write_text("a.jpg,0\na.png,1\nsub/a.jpg.png,2\n")
    recs = gather(str(d), labels=str(tmp_path / "l.csv"), num_classes=3)
    assert {os.path.basename(r.source): r.label for r in recs} == {"a.jpg": 0, "a.png": 1, "a.jpg.png": 2}


def test_loc_val_solution(tmp_path):
    d = tmp_path / "val"
    for i in (1, 2, 3):
        write(d / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
    lab = tmp_path / "LOC_val_solution.csv"
    lab.write_text("ImageId,PredictionString\n"
                   "ILSVRC2012_val_00000002,n01440764 10 20 30 40 n01440764 1 2 3 4 \n"
                   "ILSVRC2012_val_00000001,n01751748 0 0 100 100\n"
                   "ILSVRC2012_val_00000003,n02119789 5 5 50 50\n")
    recs = gather(str(d), labels=str(lab), class_names=imagenet_classes(), require_labels=True)
    assert [(r.name, r.label, r.label_name) for r in recs] == [
        ("ILSVRC2012_val_00000001", 65, "sea snake"), ("ILSVRC2012_val_00000002", 0, "tench"),
        ("ILSVRC2012_val_00000003", 278, "kit fox")]


# The first 20 lines of the devkit's ILSVRC2012_validation_ground_truth.txt (devkit numbering), and the
# torchvision class indices of those images as public index-labelled copies of the validation set list them.
DEVKIT_FIRST20 = [490, 361, 171, 822, 297, 482, 13, 704, 599, 164, 649, 11, 73, 286, 554, 6, 648, 399, 749, 545]
INDEX_FIRST20 = [65, 970, 230, 809, 516, 57, 334, 415, 674, 332, 109, 286, 370, 757, 595, 147, 108, 23, 478, 517]


def _devkit_layout(tmp_path, n=20):
    d = tmp_path / "val"
    for i in range(1, n + 1):
        write(d / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i, h=36, w=36)
    kit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    kit.mkdir(parents=True)
    gt = kit / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{k}\n" for k in DEVKIT_FIRST20[:n]))
    return d, kit, gt


def test_devkit_ground_truth_with_the_bundled_table(tmp_path):
    d, _, gt = _devkit_layout(tmp_path)
    recs = gather(str(d), labels=str(gt), class_names=imagenet_classes())
    assert [r.label for r in recs] == INDEX_FIRST20
    assert recs[0].raw_label == "n01751748" and recs[0].label_name == "sea snake"


def _write_meta_mat(path, id_to_wnid: dict[int, str]) -> None:
    import scipy.io

    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(np.int32(k), w, "x", np.int32(0)) for k, w in sorted(id_to_wnid.items())]
    rows.append((np.int32(1001), "n00001740", "entity", np.int32(3)))  # an inner synset: not a class
    scipy.io.savemat(str(path), {"synsets": np.array(rows, dtype=dtype).reshape(-1, 1)})


def test_devkit_ground_truth_follows_meta_mat_beside_it(tmp_path):
    d, kit, gt = _devkit_layout(tmp_path, n=3)
    table = dict(devkit_to_wnid())
    assert read_meta_mat is not None
    table[490], table[361] = table[361], table[490]  # a devkit whose numbering differs from the bundled one
    _write_meta_mat(kit / "meta.mat", table)
    assert read_meta_mat(str(kit / "meta.mat")) == table
    recs = gather(str(d), labels=str(gt), class_names=imagenet_classes())
    assert [r.label for r in recs] == [970, 65, 230]  # the first two swapped, as meta.mat says
    _write_meta_mat(kit / "meta.mat", devkit_to_wnid())
    assert [r.label for r in gather(str(d), labels=str(gt), num_classes=1000)] == INDEX_FIRST20[:3]


# ----------------------------------------------------------------------------------------------
# the bundled ImageNet table
# ----------------------------------------------------------------------------------------------
def test_bundled_imagenet_table_is_consistent():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert wnids[0] == "n01440764" and wnids[999] == "n15075141"
    dev = devkit_to_wnid()
    assert sorted(dev) == list(range(1, 1001)) and set(dev.values()) == set(wnids)
    assert dev[1] == "n02119789" and dev[449] == "n01440764" and wnid_to_index()[dev[490]] == 65
    assert [wnid_to_index()[dev[k]] for k in DEVKIT_FIRST20] == INDEX_FIRST20
    words = imagenet_words()
    assert words[0] == "tench, Tinca tinca" and words[278].startswith("kit fox")
    # torchvision's class names are lemmas of the synset at the same index, except where torchvision
    # renamed a duplicate ('crane bird' 134 vs the machine 517; 'maillot tank suit' 639 vs 638)
    tv = imagenet_classes()
    off = [i for i, c in enumerate(tv) if c.lower() not in {s.strip().lower() for s in words[i].split(",")}]
    assert set(off) <= {134, 639}, [(i, tv[i], words[i]) for i in off]
    assert is_imagenet(tv, None) and is_imagenet(None, 1000)
    assert not is_imagenet(list(reversed(tv)), None) and not is_imagenet(None, 10)


# ----------------------------------------------------------------------------------------------
# bad layouts: one line each
# ----------------------------------------------------------------------------------------------
def _flat(tmp_path, names=("a.png", "b.png")):
    d = tmp_path / "imgs"
    for n in names:
        write(d / n)
    return d


def _bad_label_outside(tmp_path):
    write(tmp_path / "t" / "7" / "x.png")
    return dict(images=str(tmp_path / "t"), num_classes=3), "outside the model's classes"


def _bad_missing_label(tmp_path):
    d = _flat(tmp_path)
    (tmp_path / "l.csv").write_text("a.png,cat\n")
    return dict(images=str(d), labels=str(tmp_path / "l.csv"), class_names=CLASSES3), "b.png has no label"


def _bad_row_without_image(tmp_path):
    d = _flat(tmp_path)
    (tmp_path / "l.csv").write_text("image,label\na.png,cat\nb.png,dog\nzz.png,cat\n")
    return dict(images=str(d), labels=str(tmp_path / "l.csv")), "line 4: no input image 'zz.png'"


def _bad_duplicate_rows(tmp_path):
    d = _flat(tmp_path)
    (tmp_path / "l.csv").write_text("a.png,cat\nb.png,dog\na,dog\n")
    return dict(images=str(d), labels=str(tmp_path / "l.csv")), "line 1 and l.csv line 3 both label"


def _bad_ambiguous_row(tmp_path):
    d = _flat(tmp_path, ("a.png", "a.jpg"))
    (tmp_path / "l.csv").write_text("a,cat\n")
    return dict(images=str(d), labels=str(tmp_path / "l.csv")), "names several input images"


def _bad_duplicate_file(tmp_path):
    d = _flat(tmp_path)
    return dict(images=[str(d / "a.png"), str(d), ]), "given twice"


def _bad_empty_class_folder(tmp_path):
    write(tmp_path / "t" / "cat" / "x.png")
    (tmp_path / "t" / "dog").mkdir()
    return dict(images=str(tmp_path / "t")), "class folder"


def _bad_empty_tree(tmp_path):
    (tmp_path / "t" / "cat").mkdir(parents=True)
    (tmp_path / "t" / "cat" / "readme.txt").write_text("no images")
    return dict(images=str(tmp_path / "t")), "holds no images"


def _bad_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    return dict(images=str(tmp_path / "e")), "no images found"


def _bad_missing_file(tmp_path):
    return dict(images=str(tmp_path / "nope.png")), "no such file"


def _bad_unknown_wnid(tmp_path):
    write(tmp_path / "t" / "n99999999" / "x.png")
    return dict(images=str(tmp_path / "t"), class_names=imagenet_classes()), "unknown WordNet id n99999999"


def _bad_wnid_for_other_model(tmp_path):
    write(tmp_path / "t" / "n01440764" / "x.png")
    return dict(images=str(tmp_path / "t"), class_names=CLASSES3), "not the 1000 ImageNet classes"


def _bad_unknown_class_name(tmp_path):
    write(tmp_path / "t" / "zebrafish" / "x.png")
    return dict(images=str(tmp_path / "t"), class_names=CLASSES3), "'zebrafish' is not a class"


def _bad_ambiguous_class_name(tmp_path):
    write(tmp_path / "t" / "cardigan" / "x.png")  # 'Cardigan' (the corgi) and 'cardigan' (the sweater)
    return dict(images=str(tmp_path / "t"), class_names=imagenet_classes()), "names several classes"


def _bad_names_without_model_names(tmp_path):
    write(tmp_path / "t" / "cat" / "x.png")
    return dict(images=str(tmp_path / "t"), num_classes=3), "has no class names"


def _bad_csv_columns(tmp_path):
    d = _flat(tmp_path)
    (tmp_path / "l.csv").write_text("a.png,cat,extra\nb.png,dog\n")
    return dict(images=str(d), labels=str(tmp_path / "l.csv")), "line 1: expected two columns"


def _bad_csv_quote(tmp_path):
    d = _flat(tmp_path)
    (tmp_path / "l.csv").write_text('a.png,"cat\nb.png,dog\n')
    return dict(images=str(d), labels=str(tmp_path / "l.csv")), "not valid CSV"


def _bad_csv_empty(tmp_path):
    d = _flat(tmp_path)
    (tmp_path / "l.csv").write_text("\n\n")
    return dict(images=str(d), labels=str(tmp_path / "l.csv")), "is empty"


def _bad_csv_binary(tmp_path):
    d = _flat(tmp_path)
    (tmp_path / "l.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    return dict(images=str(d), labels=str(tmp_path / "l.csv")), "not UTF-8"


def _bad_labels_missing(tmp_path):
    d = _flat(tmp_path)
    return dict(images=str(d), labels=str(tmp_path / "nope.csv")), "labels file not found"


def _bad_devkit_id(tmp_path):
    d = _flat(tmp_path, ("ILSVRC2012_val_00000001.JPEG",))
    (tmp_path / "gt.txt").write_text("1001\n")
    return dict(images=str(d), labels=str(tmp_path / "gt.txt")), "line 1: ILSVRC2012_ID 1001"


def _bad_devkit_line(tmp_path):
    d = _flat(tmp_path, ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"))
    (tmp_path / "gt.txt").write_text("5\nfive\n")
    return dict(images=str(d), labels=str(tmp_path / "gt.txt")), "line 2: expected one ILSVRC2012_ID"


def _bad_devkit_more_rows(tmp_path):
    d = _flat(tmp_path, ("ILSVRC2012_val_00000001.JPEG",))
    (tmp_path / "gt.txt").write_text("5\n6\n")
    return dict(images=str(d), labels=str(tmp_path / "gt.txt")), "no input image 'ILSVRC2012_val_00000002'"


def _bad_devkit_other_names(tmp_path):
    d = _flat(tmp_path, ("photo.JPEG",))
    (tmp_path / "gt.txt").write_text("5\n")
    return dict(images=str(d), labels=str(tmp_path / "gt.txt")), "no input image 'ILSVRC2012_val_00000001'"


def _bad_meta_mat(tmp_path):
    d = _flat(tmp_path, ("ILSVRC2012_val_00000001.JPEG",))
    (tmp_path / "gt.txt").write_text("5\n")
    (tmp_path / "meta.mat").write_bytes(b"MATLAB 5.0 but not really")
    return dict(images=str(d), labels=str(tmp_path / "gt.txt")), "meta.mat"


def _bad_meta_mat_partial(tmp_path):
    d = _flat(tmp_path, ("ILSVRC2012_val_00000001.JPEG",))
    (tmp_path / "gt.txt").write_text("5\n")
    _write_meta_mat(tmp_path / "meta.mat", {k: w for k, w in devkit_to_wnid().items() if k <= 10})
    return dict(images=str(d), labels=str(tmp_path / "gt.txt")), "does not list the 1000 ILSVRC2012 classes"


def _bad_loc_prediction(tmp_path):
    d = _flat(tmp_path, ("ILSVRC2012_val_00000001.JPEG",))
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,12 3 4 5 6\n")
    return dict(images=str(d), labels=str(tmp_path / "LOC_val_solution.csv")), "should start with a WordNet id"


def _bad_labels_for_tree(tmp_path):
    write(tmp_path / "t" / "cat" / "x.png")
    (tmp_path / "l.csv").write_text("x.png,cat\n")
    return dict(images=str(tmp_path / "t"), labels=str(tmp_path / "l.csv")), "class-folder tree"


def _bad_no_labels_for_target(tmp_path):
    d = _flat(tmp_path)
    return dict(images=str(d), class_names=CLASSES3, require_labels=True), "true labels are needed"


def _bad_tree_plus_unlabelled_file(tmp_path):
    write(tmp_path / "t" / "cat" / "x.png")
    loose = write(tmp_path / "loose.png")
    return dict(images=[str(tmp_path / "t"), loose], class_names=CLASSES3), "loose.png has no label"


def _bad_sample_too_many(tmp_path):
    d = _flat(tmp_path)
    return dict(images=str(d), sample=3), "only 2"


def _bad_limit(tmp_path):
    d = _flat(tmp_path)
    return dict(images=str(d), limit=0), "limit must be"


BAD = [f for n, f in sorted(globals().items()) if n.startswith("_bad_")]


@pytest.mark.parametrize("case", BAD, ids=[f.__name__[5:] for f in BAD])
def test_bad_layouts_are_one_line(tmp_path, case):
    kwargs, needle = case(tmp_path)
    with pytest.raises(FaithmapError) as e:
        gather(**kwargs)
    assert needle in one_line(e)


# ----------------------------------------------------------------------------------------------
# limit and seeded samples
# ----------------------------------------------------------------------------------------------
def _many(tmp_path, n=40):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(n):
        (d / f"img{i:03d}.png").write_bytes(b"")  # listing never opens them
    return d


def test_limit_and_sample(tmp_path):
    d = _many(tmp_path)
    names = [r.name for r in gather(str(d))]
    assert names == sorted(names)
    assert [r.name for r in gather(str(d), limit=5)] == names[:5]
    assert len(gather(str(d), limit=500)) == 40
    s10 = [r.name for r in gather(str(d), sample=10, seed=3)]
    assert len(s10) == 10 and s10 == sorted(s10)  # listing order kept
    assert s10 == [r.name for r in gather(str(d), sample=10, seed=3)]  # same seed, same images
    assert s10 != [r.name for r in gather(str(d), sample=10, seed=4)]
    assert set([r.name for r in gather(str(d), sample=5, seed=3)]) < set(s10)  # a larger sample holds the smaller
    assert [r.name for r in gather(str(d), sample=10, seed=3, limit=4)] == s10[:4]


def test_sample_does_not_depend_on_listing_or_argument_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    names = [f"p{i:02d}.png" for i in range(30)]
    for n in names[:15]:
        (a / n).write_bytes(b"")
    for n in reversed(names[15:]):  # created in reverse order
        (b / n).write_bytes(b"")
    one = {r.name for r in gather([str(a), str(b)], sample=7, seed=11)}
    two = {r.name for r in gather([str(b), str(a)], sample=7, seed=11)}
    assert one == two and len(one) == 7
    recs = list_images([str(a), str(b)]).records
    for k in range(5):
        shuffled = recs[:]
        random.Random(k).shuffle(shuffled)
        assert {r.name for r in select(shuffled, sample=7, seed=11)} == one


# ----------------------------------------------------------------------------------------------
# streaming
# ----------------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # noqa: D102
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture
def tiny():
    return wrap(TinyNet().eval(), input_size=32, resize_size=36, class_names=CLASSES3)


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    sizes = [(40, 48), (64, 40), (36, 36), (50, 70), (45, 45), (80, 33), (33, 90)]
    for i, (h, w) in enumerate(sizes):
        write(d / f"p{i}.png", seed=i, h=h, w=w)
    return d


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_equals_preprocess_one_by_one(photos, tiny, workers):
    recs = gather(str(photos))
    batches = list(iter_batches(recs, tiny.transform, 3, workers=workers))
    assert [b.indices for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    for b in batches:
        assert b.images.shape == (len(b.indices), 3, 32, 32) and b.images.device.type == "cpu"
        for i, x in zip(b.indices, b.images):
            ref = tiny.preprocess(load_image(recs[i].source))[0]
            assert torch.allclose(x, ref, atol=1e-5)


def test_stream_chosen_indices_and_photos_without_transform(photos, tiny):
    recs = gather(str(photos))
    got = [b.indices for b in iter_batches(recs, tiny.transform, 2, indices=[5, 1, 3])]
    assert got == [[5, 1], [3]]
    b = next(iter_batches(recs, None, 4))
    assert isinstance(b.images, list) and all(np.array_equal(p, load_image(recs[i].source))
                                              for i, p in zip(b.indices, b.images))
    assert list(iter_batches(recs, tiny.transform, 2, indices=[])) == []
    with pytest.raises(FaithmapError):
        iter_batches(recs, tiny.transform, 0)  # checked when called, not at the first batch
    with pytest.raises(FaithmapError):
        iter_batches(recs, tiny.transform, 2, indices=[0, 7])
    gen = iter_batches(recs, tiny.transform, 2, workers=2)
    assert next(gen).indices == [0, 1]
    gen.close()  # stopping early stops the workers


def test_photo_dataset_pickles_without_the_model(photos, tiny):
    ds = PhotoDataset(gather(str(photos)), tiny.transform)
    blob = pickle.dumps(ds)
    assert b"TinyNet" not in blob and len(blob) < 20_000
    assert torch.allclose(pickle.loads(blob)[2], ds[2])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_in_a_worker_is_one_clear_line(photos, tiny, workers):
    (photos / "p3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    recs = gather(str(photos))
    seen = []
    with pytest.raises(FaithmapError) as e:
        for b in iter_batches(recs, tiny.transform, 2, workers=workers):
            seen.extend(b.indices)
    msg = one_line(e)
    assert "p3.png" in msg and "Traceback" not in msg and "worker" not in msg
    with pytest.raises(FaithmapError) as ref:
        recs[3].load()
    assert msg == str(ref.value)  # the same line as in this process
    assert seen == [0, 1]  # the batches before the bad one arrived, in order


def test_records_are_plain_data():
    r = ImageRecord("x", "sample:coffee")
    assert r.is_sample and r.path is None and r.stem == "x" and json.dumps(r.describe())


# ----------------------------------------------------------------------------------------------
# the command line uses the gatherer
# ----------------------------------------------------------------------------------------------
def test_explain_refuses_a_bad_tree_in_one_line_and_writes_nothing(tmp_path, capsys):
    from faithmap.cli import main

    write(tmp_path / "t" / "cat" / "x.png")
    (tmp_path / "t" / "dog").mkdir()
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "t"), "--out", str(out), "--fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("faithmap: error: class folder") and not out.exists()


@pytest.mark.slow
def test_explain_gives_colliding_file_names_their_own_outputs(tmp_path, capsys):
    from faithmap.cli import main

    for i, n in enumerate(("a.png", "a.jpg", "a-2.png")):
        write(tmp_path / "in" / n, seed=i, h=64, w=64)
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "in"), "--method", "gradcam", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "wrote 15 files for 3 image(s)" in stdout
    summaries = {json.loads(p.read_text())["image"]: json.loads(p.read_text()) for p in out.glob("*_summary.json")}
    assert set(summaries) == {"a.png", "a.jpg", "a-2"}
    listed = [f for s in summaries.values() for f in s["files"].values()]
    assert len(set(listed)) == 12 and all((out / f).is_file() for f in listed)
    assert len(os.listdir(out)) == 15
    maps = {n: np.load(out / s["files"]["map"]) for n, s in summaries.items()}
    assert not np.allclose(maps["a.png"], maps["a-2"])  # each file holds its own image's map
