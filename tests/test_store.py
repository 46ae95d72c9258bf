"""The Parquet store: parts written whole, keys read from footers, aggregation in chunks equal to the
literal formulas, CSV export, and runs of the earlier CSV store (report, refusal to resume, migration)."""

import json
import math
import os

import numpy as np
import pytest

import faithmap
from faithmap.cli import main
from faithmap.errors import FaithmapError
from faithmap.evaluation import stats
from faithmap.evaluation.store import ROW_COLUMNS, Store, export_csv, order_table, part_meta, schema

import evalkit


def synthetic_columns(n_images, methods=("m1", "m2"), metrics=("deletion", "insertion"), seed=0, start=0):
    """Rows as a task writes them: per image, per metric; values from a seeded generator."""
    g = np.random.default_rng(seed)
    cols = {c: [] for c in schema().names}
    for m in methods:
        for i in range(start, start + n_images):
            for j, metric in enumerate(metrics):
                row = {"key": f"im{i}|{m}|28", "image": f"im{i}", "label": None, "predicted": 3, "correct": None,
                       "target": 3, "target_name": "c3", "target_prob": 0.5, "category": f"cat{i % 3}", "method": m,
                       "resolution": "28", "grid": "28x28", "metric": metric, "value": float(g.random()),
                       "higher_is_better": metric == "insertion", "seed": 0, "image_seed": i, "fast": True,
                       "explain_seconds": 0.1, "explain_images": 10.0, "explain_grad_images": 5.0,
                       "metric_seconds": 0.2, "metric_images": 106.0 if j == 0 else 0.0, "task_row": j,
                       "fractions": [0.0, 0.5, 1.0] if j == 0 else None,
                       "deletion_curve": [1.0, float(g.random()), 0.0] if j == 0 else None,
                       "insertion_curve": [0.0, float(g.random()), 1.0] if j == 0 else None}
                for c in cols:
                    cols[c].append(row[c])
    return cols


def test_parts_footers_and_chunked_aggregation(tmp_path):
    st = Store(str(tmp_path))
    all_cols = {c: [] for c in schema().names}
    for b in range(7):  # 7 tasks of 13 images x 2 methods x 2 metrics
        cols = synthetic_columns(13, seed=b, start=13 * b)
        keys = list(dict.fromkeys(cols["key"]))
        st.write(cols, keys, {f"im{i}": ["d", None, None] for i in range(13 * b, 13 * b + 13)})
        for c in cols:
            all_cols[c] += cols[c]
    st.write({}, ["empty|m1|28"], {})  # a task whose image got no row still counts as done
    sc = Store(str(tmp_path)).scan()
    assert len(sc.parts) == 8 and len(sc.keys) == 7 * 13 * 2 + 1 and sc.rows == 7 * 13 * 2 * 2
    assert part_meta(sc.parts[0])["format"] == "parquet-1"
    # chunks of 50 rows: running sums merged across chunk boundaries equal the literal formulas
    agg = stats.aggregate(Store(str(tmp_path)).batches(stats.COLUMNS, rows=50), categories=["deletion"])
    for m in ("m1", "m2"):
        for metric in ("deletion", "insertion"):
            v = np.array([x for x, mm, me in zip(all_cols["value"], all_cols["method"], all_cols["metric"])
                          if mm == m and me == metric])
            r = agg.values[(m, "28", "28x28", metric)]
            assert r.n == v.size and r.mean == pytest.approx(v.mean(), rel=1e-12)
            assert math.sqrt(r.m2 / (r.n - 1)) == pytest.approx(v.std(ddof=1), rel=1e-10)
            iv = stats.interval(r.n, r.mean, r.m2)
            assert iv.half == pytest.approx(stats.t_interval(v).half, rel=1e-10)
    (s,) = [x for x in agg.summaries(["m1", "m2"], ["28"], ["deletion"], {"deletion": "category_mean"})
            if x.method == "m1"]
    per = {c.category: c for c in s.categories}
    v = [(x, c) for x, mm, me, c in zip(all_cols["value"], all_cols["method"], all_cols["metric"],
                                       all_cols["category"]) if mm == "m1" and me == "deletion"]
    for cat in ("cat0", "cat1", "cat2"):
        assert per[cat].accuracy == pytest.approx(np.mean([x for x, c in v if c == cat]))
    (mc,) = [c for c in agg.mean_curves(["m1"], ["28"]) if c.method == "m1"]
    dels = [d for d, mm in zip(all_cols["deletion_curve"], all_cols["method"]) if d is not None and mm == "m1"]
    assert mc.n == 91 and mc.deletion == pytest.approx(np.mean(dels, 0))
    (cost,) = [c for c in agg.cost_list(["m1"], ["28"]) if c.method == "m1"]
    assert cost.n == 91 and cost.explain_images == 10.0 and cost.metric_images == {"deletion": 106.0, "insertion": 0.0}
    # the CSV export: every row, in run order
    run = {"images": [f"im{i}" for i in range(91)], "methods": ["m2", "m1"], "resolutions": ["28"]}
    n = export_csv(Store(str(tmp_path)), run, str(tmp_path / "r.csv"))
    import pyarrow.csv as pacsv

    t = pacsv.read_csv(str(tmp_path / "r.csv"))
    assert n == t.num_rows == 364 and t.column_names == list(ROW_COLUMNS)
    assert t.column("key").to_pylist()[:4] == ["im0|m2|28", "im0|m2|28", "im0|m1|28", "im0|m1|28"]


def test_order_table_keeps_each_tasks_own_order(tmp_path):
    st = Store(str(tmp_path))
    cols = synthetic_columns(3, methods=("b", "a"))
    st.write(cols, list(dict.fromkeys(cols["key"])), {})
    st.scan()
    t = order_table(st.table(), {"images": ["im2", "im0", "im1"], "methods": ["a", "b"], "resolutions": ["28"]})
    assert [(r["image"], r["method"], r["metric"]) for r in t.select(["image", "method", "metric"]).to_pylist()][:4] == [
        ("im2", "a", "deletion"), ("im2", "a", "insertion"), ("im2", "b", "deletion"), ("im2", "b", "insertion")]


# ----------------------------------------------------------------------------------------------
# runs of the earlier CSV store
# ----------------------------------------------------------------------------------------------
LEGACY_COLUMNS = ("image,target,target_name,target_prob,category,method,resolution,grid,metric,value,higher_is_better,"
                  "seed,fast,explain_seconds,explain_images,explain_grad_images,metric_seconds,metric_images,key,"
                  "task_rows")


@pytest.fixture
def legacy_run(tmp_path):
    """A directory as faithmap's CSV store wrote it: results.csv (with a torn last line), curves.jsonl, run.json."""
    d = tmp_path / "old"
    d.mkdir()
    lines = [LEGACY_COLUMNS]
    curves = []
    for i, v in enumerate((0.2, 0.4, 0.9)):
        key = f"img{i}|test-blob|4"
        lines.append(f"img{i},0,patch,0.99,patch,test-blob,4,4x4,deletion,{v!r},false,0,false,0.01,0,0,0.5,32,{key},2")
        lines.append(f"img{i},0,patch,0.99,patch,test-blob,4,4x4,insertion,{1 - v!r},true,0,false,0.01,0,0,0.0,0,{key},2")
        curves.append(json.dumps({"key": key, "image": f"img{i}", "method": "test-blob", "resolution": "4",
                                  "grid": "4x4", "target": 0, "fractions": [0, 0.5, 1], "deletion": [1, v, 0],
                                  "insertion": [0, 1 - v, 1]}))
    text = "\n".join(lines) + "\nimg3,0,patch,0.9"  # a torn last line, as a kill left it
    (d / "results.csv").write_text(text)
    (d / "curves.jsonl").write_text("\n".join(curves) + "\n")
    run = {"faithmap": "0.1.0", "created": "2026-11-23T10:00:00", "settings": {
        "model": "patchnet", "model_fingerprint": "x", "weights": None, "input_size": 32, "resize": "crop", "seed": 0,
        "fast": False, "params": {"test-blob": {}}, "metrics": ["deletion", "insertion"], "metric_options": {},
        "target": "top1", "annotations": None}, "methods": ["test-blob"], "resolutions": ["4"],
        "images": ["img0", "img1", "img2"], "image_digests": {}, "labels": {}, "skipped_methods": [],
        "metrics": ["deletion", "insertion"]}
    (d / "run.json").write_text(json.dumps(run))
    return d


def test_a_csv_store_run_reports_refuses_to_resume_and_merges_into_parquet(legacy_run, tmp_path, capsys):
    assert main(["evaluate", "--report-only", "--out", str(legacy_run)]) == 0
    md = open(legacy_run / "summary.md").read()
    assert f"| 4x4 | test-blob | {np.mean([0.2, 0.4, 0.9]):.3f} ± " in md and "| 3 |" in md
    assert os.path.getsize(legacy_run / "mean_curves_4x4.png") > 5000
    with evalkit.registered():
        with pytest.raises(FaithmapError, match="earlier CSV store .*--merge"):
            evalkit.run_eval(legacy_run, methods="test-blob", resolutions="4", metrics="deletion,insertion")
    capsys.readouterr()
    new = tmp_path / "new"
    assert main(["evaluate", "--merge", str(legacy_run), "--out", str(new)]) == 0
    assert "merged 3 tasks" in capsys.readouterr().out
    sc = Store(str(new)).scan()
    assert len(sc.keys) == 3 and sc.rows == 6
    res = faithmap.evaluation.merge([new], tmp_path / "again", report=True)
    assert [r["value"] for r in res.rows] == pytest.approx([0.2, 0.8, 0.4, 0.6, 0.9, 0.1])
    assert [c["deletion"] for c in res.curves] == [[1, 0.2, 0], [1, 0.4, 0], [1, 0.9, 0]]
    assert open(tmp_path / "again" / "summary.md").read().split("## Summary")[1].split("## Cost")[0] == \
        md.split("## Summary")[1].split("## Cost")[0]


def test_compaction_keeps_every_row_once_also_when_cut_short(tmp_path):
    """Small parts joined into large ones: the same rows. A compaction cut short after writing the large
    part (its small parts still there) is recognised: scans skip the replaced parts and the next repair
    removes them; streaming a large part in batches gives the same rows as reading it whole."""
    import shutil

    st = Store(str(tmp_path / "a"))
    for b in range(12):
        cols = synthetic_columns(5, seed=b, start=5 * b)
        st.write(cols, list(dict.fromkeys(cols["key"])), {})
    st.scan()
    before = order_table(st.table(), {"images": [f"im{i}" for i in range(60)], "methods": ["m1", "m2"],
                                      "resolutions": ["28"]}).to_pylist()
    keep = tmp_path / "copy"
    shutil.copytree(tmp_path / "a" / "parts", keep)
    assert st.compact(min_parts=4, target_rows=200) == 12
    sc = Store(str(tmp_path / "a")).scan()
    assert len(sc.parts) == 2 and sc.rows == 240 and len(sc.keys) == 120
    run = {"images": [f"im{i}" for i in range(60)], "methods": ["m1", "m2"], "resolutions": ["28"]}
    st2 = Store(str(tmp_path / "a"))
    st2.scan()
    assert order_table(st2.table(), run).to_pylist() == before
    chunks = list(Store(str(tmp_path / "a")).batches(["key", "value"], rows=50))
    assert sum(c.num_rows for c in chunks) == 240 and max(c.num_rows for c in chunks) <= 200
    for f in keep.iterdir():  # as if the compaction had stopped before removing its small parts
        shutil.copy(f, tmp_path / "a" / "parts" / f.name)
    sc = Store(str(tmp_path / "a")).scan()
    assert len(sc.parts) == 2 and sc.rows == 240
    Store(str(tmp_path / "a")).scan(repair=True)
    assert len(os.listdir(tmp_path / "a" / "parts")) == 2
