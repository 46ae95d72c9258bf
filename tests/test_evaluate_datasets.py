"""faithmap evaluate on labelled datasets: class-folder trees, flat folders with a labels file,
--target label, seeded samples and limits, decoding workers; bad layouts refused before writing."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from faithmap.cli import main
from faithmap.data import gather
from faithmap.errors import FaithmapError
from faithmap.evaluation.store import TIME_COLUMNS, comparable, rows_close

import evalkit


@pytest.fixture(autouse=True)
def _methods():
    with evalkit.registered():
        yield


def _dark(i: int) -> np.ndarray:
    """A photo without the bright patch: the tiny model predicts 'background' (class 1)."""
    g = np.random.default_rng(100 + i)
    return ((0.1 + 0.1 * g.random((32, 32, 3))) * 255).round().astype(np.uint8)


@pytest.fixture
def dataset(tmp_path):
    """The same 8 photos as a class-folder tree and as a flat folder with a CSV of labels. Two of the
    'background' photos carry the patch (the model gets them wrong)."""
    tree, flat = tmp_path / "tree", tmp_path / "flat"
    labels = {}
    patch = [p for _, p in evalkit.photos(5)]
    for i in range(8):
        cls = "patch" if i < 3 else "background"
        photo = patch[i] if i < 5 else _dark(i)  # im3, im4: labelled background, with the patch
        (tree / cls).mkdir(parents=True, exist_ok=True)
        flat.mkdir(exist_ok=True)
        Image.fromarray(photo).save(tree / cls / f"im{i}.png")
        Image.fromarray(photo).save(flat / f"im{i}.png")
        labels[f"im{i}"] = cls
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        for k, v in labels.items():
            w.writerow([f"{k}.png", 0 if v == "patch" else 1])  # indices in the file, names in the tree
    return tree, flat, tmp_path / "labels.csv", labels


KW = dict(methods="test-blob,test-gradient", resolutions="4", metrics="deletion,average_drop", target="label")


def test_tree_and_labels_file_give_the_same_rows_with_labels_predictions_and_agreement(tmp_path, dataset):
    tree, flat, lab, labels = dataset
    a = evalkit.run_eval(tmp_path / "a", images=str(tree), **KW)
    b = evalkit.run_eval(tmp_path / "b", images=str(flat), labels=str(lab), **KW)
    ra, rb = a.rows, b.rows
    assert len(ra) == 8 * 2 * 2
    for r in ra:
        want = 0 if labels[r["image"]] == "patch" else 1
        assert r["label"] == want and r["target"] == want  # --target label explains the true class
        assert r["correct"] == (r["predicted"] == want)
    wrong = {r["image"] for r in ra if not r["correct"]}
    assert wrong == {"im3", "im4"}  # background-labelled photos with the patch: predicted 'patch'
    key = lambda r: (r["image"], r["method"], r["metric"])  # noqa: E731
    assert rows_close(sorted(comparable(ra, TIME_COLUMNS), key=key), sorted(comparable(rb, TIME_COLUMNS), key=key)) is None


def test_report_splits_correct_from_wrong_predictions(tmp_path, dataset):
    tree, *_ = dataset
    res = evalkit.run_eval(tmp_path / "o", images=str(tree), report=True, **KW)
    md = open(os.path.join(tmp_path / "o", "summary.md")).read()
    assert "Correct and wrong predictions" in md or "correct: mean" in md
    rows = [r for r in res.rows if r["metric"] == "average_drop" and r["method"] == "test-blob"]
    right = np.mean([r["value"] for r in rows if r["correct"]])
    wrong = np.mean([r["value"] for r in rows if not r["correct"]])
    line = next(ln for ln in md.splitlines() if "test-blob" in ln and "average_drop" in ln and "±" in ln
                and ln.count("|") >= 8)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[3].split("±")[0]) == pytest.approx(right, abs=0.06)
    assert float(cells[5].split("±")[0]) == pytest.approx(wrong, abs=0.06)


def test_sample_and_limit_pick_the_gatherers_images(tmp_path, dataset):
    tree, *_ = dataset
    want = [r.name for r in gather(str(tree), sample=5, seed=7)]
    res = evalkit.run_eval(tmp_path / "s", images=str(tree), sample=5, seed=7, **KW)
    assert sorted({r["image"] for r in res.rows}) == sorted(want) and len(want) == 5
    res = evalkit.run_eval(tmp_path / "l", images=str(tree), limit=2, **KW)
    assert {r["image"] for r in res.rows} == {r.name for r in gather(str(tree))[:2]}


def test_decoding_workers_give_the_rows_of_the_background_thread(tmp_path, dataset):
    tree, *_ = dataset
    a = evalkit.run_eval(tmp_path / "a", images=str(tree), batch_images=3, **KW)
    b = evalkit.run_eval(tmp_path / "b", images=str(tree), batch_images=3, workers=2, **KW)
    assert rows_close(comparable(a.rows, TIME_COLUMNS), comparable(b.rows, TIME_COLUMNS)) is None


def test_a_decode_error_in_a_worker_is_one_line(tmp_path, dataset):
    tree, *_ = dataset
    (tree / "patch" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FaithmapError, match="broken.png") as info:
        evalkit.run_eval(tmp_path / "o", images=str(tree), workers=2, **KW)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("make, needle", [
    (lambda d: d[2].write_text("image,label\nim0.png,7\n" + "".join(f"im{i}.png,1\n" for i in range(1, 8))),
     "outside"),
    (lambda d: d[2].write_text("image,label\n" + "".join(f"im{i}.png,1\n" for i in range(1, 8))), "no label"),
    (lambda d: d[2].write_text("image,label\n" + "".join(f"im{i}.png,1\n" for i in range(9))), "im8"),
])
def test_bad_labels_are_one_line_and_write_nothing(tmp_path, dataset, make, needle):
    tree, flat, lab, _ = dataset
    make(dataset)
    out = tmp_path / "bad"
    with pytest.raises(FaithmapError, match=needle):
        evalkit.run_eval(out, images=str(flat), labels=str(lab), **KW)
    assert not out.exists()


def test_target_label_without_labels_and_labels_for_a_tree_are_refused(tmp_path, dataset, capsys):
    tree, flat, lab, _ = dataset
    for images, extra, needle in ((str(flat), [], "the true labels are needed"),
                                  (str(tree), ["--labels", str(lab)], "class-folder tree is labelled")):
        out = tmp_path / "o"
        rc = main(["evaluate", "--methods", "test-blob", "--images", images, "--target", "label", "--resolution",
                   "4", "--metrics", "average_drop", "--no-progress", "--out", str(out)] + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], err
        assert not out.exists()


def test_the_labels_cli_flags_reach_the_run(tmp_path, dataset, monkeypatch):
    """--labels, --limit, --sample, --workers are passed to faithmap.evaluate as they are."""
    seen = {}

    def fake(**kw):
        seen.update(kw)
        raise FaithmapError("stop here")

    import faithmap.evaluation.runner as runner

    monkeypatch.setattr(runner, "evaluate", fake)
    tree, flat, lab, _ = dataset
    rc = main(["evaluate", "--images", str(flat), "--labels", str(lab), "--limit", "3", "--sample", "5",
               "--workers", "2", "--target", "label", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert (seen["labels"], seen["limit"], seen["sample"], seen["workers"], seen["target"]) == (
        str(lab), 3, 5, 2, "label")
