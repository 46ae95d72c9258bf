"""``faithmap evaluate``: statistics, one shared deletion/insertion pass, resume after a kill, shards,
presets and one-line errors. On a tiny model with test-only methods (registered for this module only).

Float comparisons: two runs whose tasks batch the same images in the same way, in processes with the
same thread count, compute the same numbers; runs that batch differently (shards, one-image tasks)
agree within float rounding, checked with :func:`faithmap.evaluation.store.rows_close`."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import faithmap
from faithmap.cli import main
from faithmap.errors import FaithmapError
from faithmap.evaluation import plan as plan_mod
from faithmap.evaluation import store as store_mod
from faithmap.evaluation.store import comparable, rows_close
from faithmap.evaluation.stats import t_interval
from faithmap.registry import METRICS, register_metric

import evalkit
from conftest import finished_parts, kill_when

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS_ALL = "deletion,insertion,overall,average_drop,increase_confidence,pointing"


@pytest.fixture(scope="module", autouse=True)
def test_methods():
    with evalkit.registered():
        yield


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    p = tmp_path_factory.mktemp("ann") / "boxes.json"
    evalkit.boxes_json(p, n=4)
    return str(p)


def run(out, boxes, **kw):
    args = dict(methods="test-blob,test-random,test-gradient", resolutions="4", metrics=METRICS_ALL,
                annotations=boxes, images=evalkit.photos(3))
    args.update(kw)
    return evalkit.run_eval(out, **args)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, boxes, test_methods):
    """One uninterrupted run that the resumed and merged runs must reproduce."""
    return run(tmp_path_factory.mktemp("ref") / "out", boxes, report=True)


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def test_t_interval_against_the_literal_formula():
    v = [0.2, 0.4, 0.9, 0.5, 0.3]
    mean = sum(v) / 5
    s = math.sqrt(sum((x - mean) ** 2 for x in v) / 4)
    t_975_4 = 2.7764451051977987  # Student t, 0.975 quantile, 4 degrees of freedom (tables)
    iv = t_interval(v + [float("nan")])  # NaN (not applicable) is left out
    assert iv.n == 5 and iv.mean == pytest.approx(0.46)
    assert iv.sd == pytest.approx(s) and iv.half == pytest.approx(t_975_4 * s / math.sqrt(5), rel=1e-12)
    assert (iv.low, iv.high) == pytest.approx((0.46 - iv.half, 0.46 + iv.half))
    t_975_1 = 12.706204736174698
    assert t_interval([1.0, 2.0]).half == pytest.approx(t_975_1 * math.sqrt(0.5) / math.sqrt(2))
    one = t_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.half) and t_interval([]).n == 0


def test_summary_matches_results(reference):
    rows = [r for r in reference.rows if r["method"] == "test-random" and r["metric"] == "deletion"]
    vals = [r["value"] for r in rows]
    (s,) = [x for x in reference.summaries() if x.method == "test-random" and x.metric == "deletion"]
    assert s.interval.mean == pytest.approx(sum(vals) / len(vals)) and s.n_images == 3
    with open(os.path.join(reference.out, "summary.csv")) as fh:
        text = fh.read()
    assert f"test-random,4,4x4,deletion,false,mean,3,{s.interval.mean!r}" in text


# ----------------------------------------------------------------------------------------------
# what the runner writes
# ----------------------------------------------------------------------------------------------
def test_rows_and_one_shared_deletion_insertion_pass(reference):
    rows = reference.rows
    metrics = METRICS_ALL.split(",")
    # 3 images x (test-blob@4, test-random@4, test-gradient native) x 6 metrics
    assert len(rows) == 3 * 3 * 6
    assert {(r["method"], r["resolution"], r["grid"]) for r in rows} == {
        ("test-blob", "4", "4x4"), ("test-random", "4", "4x4"), ("test-gradient", "native", "32x32")}
    for r in rows:
        assert r["seed"] == 0 and r["fast"] is False and 0 <= r["task_row"] < 6
        assert r["higher_is_better"] is METRICS.get(r["metric"]).higher_is_better
        assert r["image_seed"] == plan_mod.image_seed(0, r["image"], r["method"], r["resolution"])
    # one deletion_insertion call per map: 2 x steps model images under deletion, none under insertion/overall
    by = {(r["image"], r["method"], r["metric"]): r for r in rows}
    # the 4x4 blob has tied cells (symmetric around its centre): the tie rule scores the ends of each
    # block of equal cells only, 2 end images plus 2 per node inside (0, 16) (metrics._common.curve_plans)
    from faithmap.metrics._common import curve_plans

    nodes = curve_plans(evalkit.blob(4, 4, 0.375, 0.625).view(1, -1), range(17))[0].nodes
    blob_images = 2 + 2 * int(((nodes > 0) & (nodes < 16)).sum())
    assert blob_images < 2 * 16
    for img in ("img0", "img1", "img2"):
        assert by[(img, "test-blob", "deletion")]["metric_images"] == blob_images
        assert by[(img, "test-random", "deletion")]["metric_images"] == 2 * 16  # no ties: 1 cell a step
        # 1024 cells, 20 a step: at most 2 x 52 (the test model's |gradient| takes two values: fewer)
        assert 0 < by[(img, "test-gradient", "deletion")]["metric_images"] <= 2 * 52
        for m in ("insertion", "overall"):
            assert by[(img, "test-blob", m)]["metric_images"] == 0
        assert by[(img, "test-blob", "average_drop")]["metric_images"] == 2
        assert by[(img, "test-blob", "increase_confidence")]["metric_images"] == 0
        # the blob peaks in the patch box (rows 8-16, cols 16-24): a hit; same numbers as a direct call
        assert by[(img, "test-blob", "pointing")]["value"] == 1.0
        assert by[(img, "test-blob", "pointing")]["category"] == "patch"
        assert by[(img, "test-blob", "deletion")]["predicted"] == 0 and by[(img, "test-blob", "deletion")]["label"] is None
    model = evalkit.tiny_model()
    photo = evalkit.photos(1)[0][1]
    xx = model.preprocess(photo)
    sal = evalkit.blob(4, 4, 0.375, 0.625)[None]
    c = faithmap.metrics.deletion_insertion(model, xx, sal, torch.tensor([0]))
    r = by[("img0", "test-blob", "deletion")]
    # the run scored the three photos in one batch, the direct call one photo: float32 sums differ in rounding
    assert r["value"] == pytest.approx(float(c.deletion_auc[0]), abs=1e-6)
    assert by[("img0", "test-blob", "overall")]["value"] == pytest.approx(float(c.overall[0]), abs=1e-6)
    assert c.images == blob_images  # the tie rule's count, as in the rows
    # curves stored per task and target, equal to the direct computation
    rec = next(k for k in reference.curves if k["image"] == "img0" and k["method"] == "test-blob")
    assert rec["deletion"] == pytest.approx(c.deletion[0].tolist(), abs=1e-6) and len(reference.curves) == 9
    assert set(metrics) == {r["metric"] for r in rows}


def test_sharing_scope_computes_once_per_map():
    from faithmap.core.memo import sharing
    from faithmap.metrics import deletion_insertion

    model = evalkit.tiny_model()
    x = model.preprocess(evalkit.photos(1)[0][1])
    s, t = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0])
    n0 = model.counter.images
    deletion_insertion(model, x, s, t)
    deletion_insertion(model, x, s, t)
    assert model.counter.images - n0 == 2 * 32  # outside a scope: computed every time
    with sharing():
        a = deletion_insertion(model, x, s, t, batch_size=3)
        b = deletion_insertion(model, x, s, t, step=None)  # same call once defaults are bound
        assert a is b and deletion_insertion.peek(model, x, s, t) is a
        assert model.counter.images - n0 == 3 * 32
        s.mul_(2.0)  # an in-place change is a new input
        assert deletion_insertion.peek(model, x, s, t) is None
        deletion_insertion(model, x, s, t)
        assert model.counter.images - n0 == 4 * 32
    assert deletion_insertion.peek(model, x, s, t) is None  # the scope is gone


def test_files_written(reference):
    names = set(os.listdir(reference.out))
    assert {"results.csv", "parts", "run.json", "images.json", "summary.md", "summary.csv", "report.html",
            "mean_curves_4x4.png", "mean_curves_32x32.png", "heatmap_grid_all.png", "maps", "images"} <= names
    run = json.load(open(os.path.join(reference.out, "run.json")))
    assert run["methods"] == ["test-blob", "test-random", "test-gradient"] and run["resolutions"] == ["4"]
    assert run["settings"]["metrics"] == METRICS_ALL.split(",")
    assert run["settings"]["batch_size"] == 20 and run["settings"]["batch_images"] == 20
    assert os.path.exists(os.path.join(reference.out, "maps", "img0", "test-blob@4.npy"))
    # one part per task: 3 methods on one batch of 3 images; results.csv is the parts' rows in run order
    assert len(os.listdir(os.path.join(reference.out, "parts"))) == 3
    import pyarrow.csv as pacsv

    csv_rows = pacsv.read_csv(os.path.join(reference.out, "results.csv")).to_pylist()
    assert [(r["key"], r["metric"]) for r in csv_rows] == [(r["key"], r["metric"]) for r in reference.rows]
    assert [r["value"] for r in csv_rows if r["value"] == r["value"]] == \
        [r["value"] for r in reference.rows if r["value"] == r["value"]]


# ----------------------------------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------------------------------
def test_resume_drops_a_torn_part_and_a_stray_temporary_file(tmp_path, boxes, reference):
    """What a kill leaves at worst: a temporary file cut mid-write (atomic_open's mkstemp name) and, were a
    part ever damaged, an unreadable part. The rerun removes both, keeps the whole parts, runs the rest."""
    out = tmp_path / "out"
    full = run(out, boxes, batch_images=1)
    parts = sorted((out / "parts").iterdir())
    assert len(parts) == 9 and full.tasks_run == 9
    raw = parts[0].read_bytes()
    (out / "parts" / f".{parts[1].name}.x8k2q1.part").write_bytes(raw[: len(raw) // 2])  # a torn temporary file
    parts[1].write_bytes(raw[: len(raw) // 2])  # a torn part (a damaged disk; atomic writes never leave one)
    parts[2].unlink()  # a task that never finished
    res = run(out, boxes, batch_images=1)
    assert res.rows_dropped == 1 and res.tasks_done_before == 7 and res.tasks_run == 2
    assert not any(p.name.startswith(".") for p in (out / "parts").iterdir())
    assert rows_close(comparable(res.rows), comparable(full.rows)) is None
    keys = [r["key"] for r in res.rows]
    assert len(set(keys)) == 9 and len(keys) == 9 * 6  # every task once
    again = run(out, boxes, batch_images=1)  # a finished run resumes to nothing
    assert again.tasks_run == 0 and again.tasks_done_before == 9


KILL_SCRIPT = """
import os, sys, time, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(min(2, os.cpu_count() or 1))  # as conftest.py: the same float reductions as the test
import evalkit
from conftest import finished_parts, kill_when
import faithmap.core.io as io_mod
import faithmap.evaluation.store as store_mod
evalkit.register()
point, n = {point!r}, {n}
real = io_mod.atomic_open
written = []

if point == "mid-write":  # the n-th part: half its bytes in the temporary file, then stop there
    import contextlib

    @contextlib.contextmanager
    def slow_open(path, mode="wb", **kw):
        with real(path, mode, **kw) as fh:
            if os.path.basename(path).startswith("part-"):
                written.append(path)
                if len(written) == n:
                    class Half:
                        def __init__(self, f):
                            self.f = f
                        def write(self, b):
                            self.f.write(bytes(b)[: max(1, len(b) // 2)])
                            self.f.flush()
                            open({flag!r}, "w").close()
                            time.sleep(600)
                        def __getattr__(self, a):
                            return getattr(self.f, a)
                    yield Half(fh)
                    return
            yield fh
    store_mod.atomic_open = slow_open
evalkit.run_eval({out!r}, **{kw!r})
"""
KILL_KW = dict(methods="test-slow,test-blob", resolutions="4", metrics="deletion,insertion,overall,pointing",
               params={"delay": 0.15}, batch_images=2)


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory, boxes, test_methods):
    return evalkit.run_eval(str(tmp_path_factory.mktemp("fresh") / "out"),
                            **dict(KILL_KW, annotations=boxes, images=evalkit.photos(4))).rows


@pytest.mark.parametrize("point, n", [("mid-write", 1), ("mid-write", 3), ("computing", 2)])
def test_resume_after_sigkill(tmp_path, boxes, kill_reference, point, n):
    """SIGKILL the local engine while it computes a task, or while it writes a part (half the bytes in the
    temporary file); the same command again ends with the rows of an uninterrupted run, each task once."""
    out = str(tmp_path / "killed")
    flag = str(tmp_path / "flag")
    kw = dict(KILL_KW, annotations=boxes, images=evalkit.photos(4))
    script = KILL_SCRIPT.format(here=HERE, out=out, boxes=boxes, point=point, n=n, flag=flag,
                                kw={k: v for k, v in kw.items() if k != "images"} | {"images": "PHOTOS"})
    script = script.replace("'PHOTOS'", "evalkit.photos(4)")
    kill_when(script, lambda: os.path.exists(flag) if point == "mid-write" else finished_parts(out) >= n, 240)
    parts = os.path.join(out, "parts")
    finished = [f for f in os.listdir(parts) if f.startswith("part-")]
    assert len(finished) == n - 1 if point == "mid-write" else n <= len(finished) < 4
    if point == "mid-write":
        assert any(f.startswith(".part-") for f in os.listdir(parts))  # the torn temporary file is there
    res = evalkit.run_eval(out, **kw)
    assert res.tasks_done_before >= (n - 1) * 2 and res.tasks_done_before + res.tasks_run == 8
    assert not any(f.startswith(".") for f in os.listdir(parts))
    assert rows_close(comparable(res.rows), comparable(kill_reference)) is None
    assert len(res.rows) == 4 * 2 * 4 and len({r["key"] for r in res.rows}) == 8


def test_resume_refuses_other_settings(tmp_path, boxes, reference):
    with pytest.raises(FaithmapError, match="other settings .*seed"):
        run(reference.out, boxes, seed=1)
    with pytest.raises(FaithmapError, match="other settings .*batch_size"):
        run(reference.out, boxes, batch_size=7)
    with pytest.raises(FaithmapError, match="differs from the one this run began with"):
        imgs = evalkit.photos(3)
        imgs[1] = ("img1", imgs[2][1])
        run(reference.out, boxes, images=imgs)
    # adding a method extends the run; the old rows stay
    res = run(tmp_path / "grow", boxes, methods="test-blob")
    res = run(tmp_path / "grow", boxes, methods="test-blob,test-flat")
    assert res.tasks_done_before == 3 and res.tasks_run == 3
    assert [r["method"] for r in res.rows if r["image"] == "img0" and r["metric"] == "deletion"] == ["test-blob", "test-flat"]


# ----------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------
def test_shards_merged_equal_the_unsharded_run(tmp_path, boxes, reference, capsys):
    """One-image tasks split over two shards and merged give the rows of the reference run, whose tasks
    batched the three images together (so: within float rounding, not bit for bit)."""
    a = run(tmp_path / "a", boxes, shard="1/2", batch_images=1)
    b = run(tmp_path / "b", boxes, shard=(2, 2), batch_images=1)
    assert a.tasks_total == 5 and b.tasks_total == 4
    assert len(os.listdir(tmp_path / "a" / "parts")) == 5
    assert not os.path.exists(tmp_path / "a" / "report.html") and not os.path.exists(tmp_path / "a" / "results.csv")
    rc = main(["evaluate", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m"),
               "--no-report"])
    assert rc == 0 and "merged 9 tasks" in capsys.readouterr().out
    merged = faithmap.evaluation.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m1", report=False)
    assert rows_close(comparable(merged.rows), comparable(reference.rows)) is None
    assert [c["key"] for c in merged.curves] == [c["key"] for c in reference.curves]
    for c, r in zip(merged.curves, reference.curves):
        assert c["deletion"] == pytest.approx(r["deletion"], abs=1e-6)
    assert os.path.exists(tmp_path / "m" / "results.csv") and os.path.exists(tmp_path / "m" / "maps" / "img0")
    # two shards in one directory (one after the other) merge too; conflicting copies of a task do not
    run(tmp_path / "both", boxes, shard="1/2", batch_images=1)
    run(tmp_path / "both", boxes, shard="2/2", batch_images=1)
    both = faithmap.evaluation.merge([tmp_path / "both"], tmp_path / "m2", report=False)
    assert comparable(both.rows) == comparable(merged.rows)  # the same tasks, batched alike: the same numbers
    # a copy that differs by rounding (here 1e-9) merges; one that differs more is a conflict
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, delta in (("c", 1e-9), ("d", 0.5)):
        run(tmp_path / name, boxes, shard="1/2", batch_images=1)
        part = sorted((tmp_path / name / "parts").iterdir())[0]
        t = pq.read_table(part)
        vals = t.column("value").to_pylist()
        vals[0] += delta
        t = t.set_column(t.schema.get_field_index("value"), "value", pa.array(vals, pa.float64()))
        pq.write_table(t, part)
    assert faithmap.evaluation.merge([tmp_path / "a", tmp_path / "c"], tmp_path / "m3", report=False).tasks_total == 5
    with pytest.raises(FaithmapError, match="conflicting results"):
        faithmap.evaluation.merge([tmp_path / "a", tmp_path / "d"], tmp_path / "m4")
    with pytest.raises(FaithmapError, match="settings differ .*batch_images"):
        faithmap.evaluation.merge([tmp_path / "a", reference.out], tmp_path / "m5")


# ----------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------
def test_fast_settings_native_grids_and_explain_need(tmp_path):
    calls = []

    @register_metric("test-stability", higher_is_better=False, category="robustness", needs=("explain",),
                     summary="test: largest change of the map when explained again")
    def stability(model, x, saliency, target, *, explain, batch_size=None, seed=0):
        calls.append(x.shape[0])
        return (explain(x, target) - saliency).abs().flatten(1).amax(1)

    try:
        res = evalkit.run_eval(tmp_path / "o", methods="test-slow,test-flat", resolutions="4,8", fast=True,
                               metrics="deletion,test-stability", images=evalkit.photos(2))
    finally:
        METRICS._specs.pop("test-stability")
    run = res.run
    assert run["settings"]["params"]["test-slow"] == {"delay": 0.05}  # spec.fast
    got = {(r["method"], r["resolution"], r["grid"]) for r in res.rows}
    assert got == {("test-slow", "4", "4x4"), ("test-slow", "8", "8x8"), ("test-flat", "native", "4x4")}
    assert {r["value"] for r in res.rows if r["metric"] == "test-stability"} == {0.0}
    assert calls == [1] * 6  # a metric that re-explains is called one image at a time (its own seed)


def test_target_annotated_and_min_score(tmp_path, boxes):
    res = run(tmp_path / "o", boxes, methods="test-blob", metrics="pointing", target="annotated", min_score=0.5)
    assert {r["target"] for r in res.rows} == {0} and {r["value"] for r in res.rows} == {1.0}
    res = run(tmp_path / "p", boxes, methods="test-blob", metrics="pointing", target=1, tolerance=2)
    # the box is for class 0 only: class 1 has no region, so the pointing game skips it (NaN)
    assert all(math.isnan(r["value"]) for r in res.rows) and len(res.rows) == 3
    assert res.run["settings"]["metric_options"] == {"pointing": {"tolerance": 2}}


def test_presets_run_what_is_registered(tmp_path, monkeypatch):
    from faithmap.evaluation import presets

    p = presets.Preset("test-table", "a test table", "nowhere",
                       (presets.PresetMethod("Blob", ("Test_Blob",)), presets.PresetMethod("Missing", ("no-such",))),
                       (4,), ("deletion", "insertion"))
    monkeypatch.setitem(presets.PRESETS, "test-table", p)
    res = evalkit.run_eval(tmp_path / "o", methods=None, resolutions=None, metrics=None, preset="test-table",
                           images=evalkit.photos(2), report=True)
    assert res.skipped_methods == ["Missing"] and {r["method"] for r in res.rows} == {"test-blob"}
    assert {r["metric"] for r in res.rows} == {"deletion", "insertion"} and {r["resolution"] for r in res.rows} == {"4"}
    md = open(os.path.join(res.out, "summary.md")).read()
    assert "skipped (not registered)**: Missing" in md and "Blob (`test-blob`)" in md


def test_real_presets_are_consistent():
    from faithmap.evaluation.presets import PRESETS, resolve

    assert {"igos-table1", "igospp-table1", "sigcam-table2", "expected-gradcam-table3"} <= set(PRESETS)
    for name, p in PRESETS.items():
        assert all(m in METRICS for m in p.metrics), name
        rp = resolve(name)
        assert len(rp.methods) + len(rp.skipped_methods) == len(p.methods)
    assert resolve("igos-table1").preset.resolutions == (224, 112, 28, 14, 7)
    assert "igos" in resolve("sigcam-table2").methods


def test_expected_gradcam_table1_preset_names_every_metric_of_the_paper():
    """Table 1 (P.F., Suff., Inf., L. Est., M. Sens., A. Sens., CP., SP.) and appendix Table 2 (all
    19 evaluated metrics) of Buono et al., arXiv 2406.01274, 2024, acronym by acronym; the ten methods of Table 1."""
    from faithmap.evaluation.presets import resolve
    from faithmap.registry import METHODS

    acronyms = {"F.E": "faithfulness_estimate", "P.F": "pixel_flipping", "Ins.": "rise_insertion",
                "Del.": "rise_deletion", "Ins-Del.": "ins_del", "IROF": "irof", "Suff.": "sufficiency",
                "Inf.": "infidelity", "L. Est.": "local_lipschitz", "M. Sens.": "max_sensitivity",
                "A. Sens.": "avg_sensitivity", "RIS": "relative_input_stability", "ROS": "relative_output_stability",
                "CP.": "complexity", "SP.": "sparseness", "A.L.": "attribution_localisation",
                "T-K.I.": "top_k_intersection", "RR-A": "relevance_rank_accuracy", "RM-A": "relevance_mass_accuracy"}
    table1 = ["P.F", "Suff.", "Inf.", "L. Est.", "M. Sens.", "A. Sens.", "CP.", "SP."]
    rp = resolve("expected-gradcam-table1")
    assert rp.skipped_metrics == [] and rp.skipped_methods == []
    assert rp.metrics == list(acronyms.values())  # the appendix table's order
    assert {acronyms[a] for a in table1} <= set(rp.metrics)
    assert rp.methods == ["gradcam", "gradcam++", "smoothgradcam++", "integratedgradcam", "hirescam", "xgradcam",
                          "layercam", "scorecam", "ablationcam", "expectedgradcam"]
    assert all(METHODS.get(m).family == "cam" for m in rp.methods)
    assert rp.preset.resolutions == ()  # CAMs at their layer's grid
    # the localisation metrics need regions: evaluate provides them from the (sample) boxes
    assert {m for m in rp.metrics if set(METRICS.get(m).needs) & {"boxes", "masks"}} == set(list(acronyms.values())[-4:])


# ----------------------------------------------------------------------------------------------
# one-line errors from the command line, nothing written
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def image_dir(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for name, arr in evalkit.photos(2):
        Image.fromarray(arr).save(d / f"{name}.png")
    return d


@pytest.mark.parametrize("args, needle", [
    (["--metrics", "deletion,nosuch"], "unknown metric 'nosuch'"),
    (["--methods", "nosuch"], "unknown method 'nosuch'"),
    (["--annotations", "BAD"], "not valid JSON"),
    (["--annotations", "MISSING"], "annotation file not found"),
    (["--metrics", "pointing"], "needs ground-truth boxes"),
    (["--shard", "3/2"], "1 <= i <= n"),
    (["--resolution", "4,x"], "positive integers"),
    (["--preset", "nosuch"], "unknown preset"),
    (["--param", "nosuch=1"], "no method being evaluated has a parameter 'nosuch'"),
    (["--tolerance", "3", "--metrics", "deletion"], "applies to the pointing game"),
    (["--param", "igos.resolution=7"], "give resolution with --resolution"),
])
def test_cli_errors(tmp_path, image_dir, capsys, args, needle):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    args = [str(bad) if a == "BAD" else str(tmp_path / "missing.json") if a == "MISSING" else a for a in args]
    out = tmp_path / "out"
    rc = main(["evaluate", "--methods", "igos", "--images", str(image_dir), "--out", str(out), "--no-progress"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("faithmap: error:") and needle in err[0], err
    assert not out.exists()


def test_cli_lists_presets(capsys):
    assert main(["evaluate", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "igos-table1" in out and "I-GOS (igos)" in out


@pytest.mark.slow
def test_cli_end_to_end_on_the_default_model(tmp_path, capsys):
    """A sample photo, a cheap I-GOS at 7x7, every default metric, through the command line."""
    out = tmp_path / "o"
    rc = main(["evaluate", "--methods", "igos", "--images", "sample:coffee", "--resolution", "7", "--fast",
               "--param", "iterations=1", "--param", "ig_steps=4", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "| 7x7 | igos |" in text and "pointing ↑" in text
    import pyarrow.csv as pacsv

    rows = pacsv.read_csv(str(out / "results.csv")).to_pylist()
    assert {r["metric"] for r in rows} == set(plan_mod.DEFAULT_METRICS)
    dele = [r for r in rows if r["metric"] == "deletion"]
    # 7x7: one cell a step, 49 steps; a block of tied cells is scored at its ends only (the tie rule)
    assert all(2 < r["metric_images"] <= 2 * 49 for r in dele)
    assert {r["category"] for r in rows} == {"espresso cup"}
    assert os.path.exists(out / "report.html") and os.path.exists(out / "mean_curves_7x7.png")


def test_the_local_engine_never_imports_ray(tmp_path):
    script = (f"import sys; sys.path.insert(0, {HERE!r}); import evalkit; evalkit.register(); "
              f"evalkit.run_eval({str(tmp_path / 'o')!r}, methods='test-blob', resolutions='4', metrics='deletion'); "
              "print('ray' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(HERE), "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert p.returncode == 0 and p.stdout.decode().strip().splitlines()[-1] == "False", p.stderr.decode()[-500:]
