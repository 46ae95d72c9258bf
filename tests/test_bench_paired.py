"""The paired comparison of `python -m bench igos` with an authors' harness file."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from bench import main
from bench.igos import load_reference, paired_summary
from faithmap.errors import FaithmapError


def _harness(tmp_path, rows, masks):
    (tmp_path / "masks" / "igos28").mkdir(parents=True)
    for photo, m in masks.items():
        np.save(tmp_path / "masks" / "igos28" / f"{photo}.npy", m)
    path = tmp_path / "authors.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_load_reference_reads_masks_and_skips_trial_rows(tmp_path):
    m = np.random.default_rng(0).random((28, 28)).astype("float32")
    path = _harness(tmp_path, [dict(config="igos28", photo="coffee", target=967, seconds=1.0, images=10),
                               dict(config="igos28", photo="coffee", tag="smoke", target=967, seconds=1.0, images=1)],
                    {"coffee": m})
    ref = load_reference(path)
    assert list(ref) == [("igos28", "coffee")] and ref[("igos28", "coffee")]["images"] == 10
    assert np.allclose(ref[("igos28", "coffee")]["saliency"], 1 - m)


def test_load_reference_errors(tmp_path):
    with pytest.raises(FaithmapError, match="does not exist"):
        load_reference(str(tmp_path / "none.jsonl"))
    path = _harness(tmp_path, [dict(config="igos28", photo="chelsea", target=1, seconds=1.0, images=1)], {})
    with pytest.raises(FaithmapError, match="mask"):
        load_reference(path)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(FaithmapError, match="line 1"):
        load_reference(str(tmp_path / "bad.jsonl"))


def test_paired_summary_t_interval():
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        rows.append(dict(image=f"p{i}", deletion=rng.random(), insertion=rng.random(), ref_deletion=rng.random(),
                         ref_insertion=rng.random(), images=100 + i, ref_images=400, seconds=2.0, ref_seconds=10.0,
                         cpu_seconds=1.0 + i, ref_cpu_seconds=20.0))
    rows.append(dict(image="no-ref", deletion=0.5, insertion=0.5, images=1, seconds=1.0))
    s = paired_summary(rows)
    assert s["photos"] == 12
    d = np.array([r["insertion"] - r["ref_insertion"] for r in rows[:12]])
    half = stats.t.ppf(0.975, 11) * d.std(ddof=1) / math.sqrt(12)
    assert math.isclose(s["insertion"]["mean"], d.mean()) and math.isclose(s["insertion"]["high"], d.mean() + half)
    assert math.isclose(s["image_ratio"]["ratio_of_means"], 400 * 12 / sum(100 + i for i in range(12)))
    assert math.isclose(s["time_ratio"]["min"], 5.0) and math.isclose(s["cpu_ratio"]["max"], 20.0)


def test_bench_refuses_a_missing_reference_file(tmp_path, capsys):
    rc = main(["igos", "sample:coffee", "--param", f"reference={tmp_path / 'none.jsonl'}"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_scores_both_codes_with_one_evaluator(tmp_path, capsys):
    m = np.ones((4, 4), dtype="float32")
    m[1:3, 1:3] = 0.2  # the authors' mask: the centre deleted
    ref = _harness(tmp_path, [dict(config="igos4", photo="coffee", target=0, seconds=9.0, cpu_seconds=9.0,
                                   images=400, grad_images=60, threads=1)], {})
    (tmp_path / "masks" / "igos4").mkdir()
    np.save(tmp_path / "masks" / "igos4" / "coffee.npy", m)
    out = tmp_path / "b.json"
    # random weights (seeded the same both times): the harness row must name the class our run explains
    import torch

    from faithmap import models
    from faithmap.data import load_sample

    torch.manual_seed(0)
    clf = models.load(weights="random")
    with torch.no_grad():
        top = int(clf(clf.preprocess(load_sample("coffee"))).argmax())
    rows = [json.loads(line) for line in open(ref)]
    rows[0]["target"] = top
    open(ref, "w").write(json.dumps(rows[0]) + "\n")
    torch.manual_seed(0)
    rc = main(["igos", "sample:coffee", "--weights", "random", "--resolution", "4", "--iterations", "1",
               "--param", "ig_steps=2", "--param", f"reference={ref}", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    row = res["rows"][0]
    assert row["ref_images"] == 400 and row["ties"] == "interpolate"
    assert res["paired"]["4"]["photos"] == 1
    assert "difference" in capsys.readouterr().out
