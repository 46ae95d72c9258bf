"""The contracts of the evaluation's application layer: the command line's options are the fields of
RunConfig, ``faithmap.evaluate`` is a plain function whose keywords are those fields, engines come from
one registry, a metric is called by its MetricSpec (set-level metrics one image at a time, default
metrics without being named), the deletion metric returns the curves the store keeps, and the small
default method set announces itself. On the tiny test models and methods of :mod:`evalkit`."""

import argparse
import inspect
import os
import warnings

import numpy as np
import pytest
import torch

import faithmap
from faithmap.cli import build_parser
from faithmap.core.memo import sharing
from faithmap.errors import FaithmapError
from faithmap.evaluation import ENGINES, OPTION_NAMES, EvalNote, RunConfig, register_engine
from faithmap.evaluation.config import OPTIONS
from faithmap.evaluation.engines import LocalEngine
from faithmap.evaluation.stats import SUMMARY_COLUMNS
from faithmap.metrics import deletion_insertion
from faithmap.registry import METHODS, METRICS, register_metric

import evalkit
from conftest import run as cli

ACTIONS = {"list_presets", "merge", "report_only", "help"}


@pytest.fixture(scope="module", autouse=True)
def test_methods():
    with evalkit.registered():
        yield


def _evaluate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["evaluate"]


# ----------------------------------------------------------------------------------------------
# RunConfig <-> command line <-> faithmap.evaluate
# ----------------------------------------------------------------------------------------------
def test_the_cli_options_are_the_config_fields():
    """Every option of `faithmap evaluate` is an option of RunConfig with the field's flag, and back."""
    p = _evaluate_parser()
    flags = {a.dest: a.option_strings for a in p._actions if a.dest not in ACTIONS}
    assert set(flags) == set(OPTION_NAMES)
    for o in OPTIONS:
        assert o.flag in flags[o.name], (o.name, flags[o.name])
    # the flags that existed before the options were generated, with their destinations
    old = {"--methods": "methods", "--images": "images", "--labels": "labels", "--limit": "limit",
           "--sample": "sample", "--preset": "preset", "--model": "model", "--weights": "weights",
           "--device": "device", "--resize": "resize", "--resolution": "resolutions", "--metrics": "metrics",
           "--out": "out", "--fast": "fast", "--param": "params", "--metric-param": "metric_params",
           "--seed": "seed", "--batch-size": "batch_size", "--batch-images": "batch_images", "--engine": "engine",
           "--address": "address", "--workers": "workers", "--gpus-per-worker": "gpus_per_worker", "--csv": "csv",
           "--no-csv": "csv", "--target": "target", "--annotations": "annotations", "--tolerance": "tolerance",
           "--min-score": "min_score", "--shard": "shard", "--overwrite": "overwrite", "--no-report": "report",
           "--no-progress": "progress", "--save-maps": "save_maps", "--convert": "convert"}
    by_flag = {s: a.dest for a in p._actions for s in a.option_strings}
    assert {f: by_flag.get(f) for f in old} == old
    ns = p.parse_args(["--seed", "3", "--no-report", "--param", "igos.iterations=2", "--csv"])
    assert (ns.seed, ns.report, ns.csv) == (3, False, True) and not hasattr(ns, "batch_size")  # unset: the default


def test_evaluate_is_a_function_whose_keywords_are_the_options():
    sig = inspect.signature(faithmap.evaluate)
    params = list(sig.parameters.values())
    assert params[0].name == "config" and params[0].kind is inspect.Parameter.POSITIONAL_ONLY
    assert [p.name for p in params[1:]] == list(OPTION_NAMES)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    assert sig.parameters["out"].default == "faithmap_eval" and sig.parameters["save_maps"].default == 12
    assert sig.parameters["engine"].default == "local" and sig.parameters["workers"].default is None
    doc = faithmap.evaluate.__doc__
    assert all(f"``{n}``" in doc for n in OPTION_NAMES) and "keep maps and thumbnails" in doc
    assert type(faithmap.evaluate).__name__ == "function"


@pytest.mark.parametrize("call, needle", [
    (lambda: faithmap.evaluate(methodz="test-blob"), "evaluate has no option 'methodz'; the options are: methods, "),
    (lambda: faithmap.evaluate(["test-blob"], "samples"), "takes a RunConfig or keywords only (methods=..., images=..., out=...), not settings by position"),
    (lambda: RunConfig.make(workers=2, engine=LocalEngine()), "apply to an engine named by engine="),
    (lambda: RunConfig(seed=-1), "0 to 2**64-1"),
    (lambda: RunConfig(engine="nosuch"), "unknown engine 'nosuch'; choose from: local, ray"),
    (lambda: RunConfig.make(engine="local", gpus_per_worker=1), "--gpus-per-worker apply to --engine ray"),
])
def test_bad_options_are_one_line(call, needle):
    with pytest.raises(FaithmapError) as e:
        call()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_and_keywords_are_one_run(tmp_path):
    """A RunConfig, the same settings as keywords, and keywords overriding a config give the same rows;
    the config keeps what it was given, checked and normalised."""
    cfg = RunConfig(methods="test-blob, test-random", images=evalkit.photos(2), model=evalkit.tiny_model(),
                    resolutions="4", metrics="deletion,average_drop", progress=False, report=False,
                    out=str(tmp_path / "a"), shard="1/1", engine="local")
    assert cfg.methods == ("test-blob", "test-random") and cfg.resolutions == (4,) and cfg.shard == (1, 1)
    assert cfg.engine.name == "local" and RunConfig.make(cfg, workers=2).engine.workers == 2
    a = faithmap.evaluate(cfg)
    b = faithmap.evaluate(cfg, out=str(tmp_path / "b"))
    assert a.rows and a.tasks_run == b.tasks_run == 4
    drop = ("key", "explain_seconds", "metric_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a.rows] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b.rows]


def test_summary_is_an_arrow_table_of_the_summaries(tmp_path):
    res = evalkit.run_eval(tmp_path / "o", methods="test-blob", resolutions="4", metrics="deletion,insertion")
    t = res.summary()
    assert tuple(t.column_names) == SUMMARY_COLUMNS and t.num_rows == 2
    for rec, s in zip(t.to_pylist(), res.summaries()):
        assert (rec["method"], rec["metric"], rec["n"]) == (s.method, s.metric, s.interval.n)
        assert rec["mean"] == s.interval.mean and rec["higher_is_better"] is s.higher_is_better
    vals = [r["value"] for r in res.rows if r["metric"] == "deletion"]
    assert t.to_pylist()[0]["mean"] == pytest.approx(np.mean(vals))


# ----------------------------------------------------------------------------------------------
# engines
# ----------------------------------------------------------------------------------------------
class _Recorder(LocalEngine):
    """A local engine that records what it ran (registered for one test as 'test-recorder')."""

    name = "test-recorder"
    ran: list = []

    def run(self, ctx, jobs, on_output):
        def record(o):
            _Recorder.ran.append(o.task.method)
            on_output(o)

        super().run(ctx, jobs, record)


@pytest.fixture
def recorder_engine():
    register_engine("test-recorder", lambda cfg: _Recorder(workers=cfg.workers or 0), "test: records its jobs")
    _Recorder.ran = []
    try:
        yield
    finally:
        ENGINES.pop("test-recorder")


def test_a_registered_engine_is_a_cli_choice_and_runs(tmp_path, recorder_engine, capsys):
    from PIL import Image

    choices = next(a for a in _evaluate_parser()._actions if a.dest == "engine").choices
    assert list(choices) == list(ENGINES) and "test-recorder" in choices
    res = evalkit.run_eval(tmp_path / "api", engine="test-recorder", methods="test-blob", resolutions="4",
                           metrics="deletion")
    local = evalkit.run_eval(tmp_path / "local", methods="test-blob", resolutions="4", metrics="deletion")
    assert _Recorder.ran == ["test-blob"] and res.rows[0]["value"] == local.rows[0]["value"]
    d = tmp_path / "imgs"
    d.mkdir()
    for name, arr in evalkit.photos(1, size=64):
        Image.fromarray(arr).save(d / f"{name}.png")
    rc, out, err = cli(["evaluate", "--engine", "test-recorder", "--methods", "test-blob", "--images", str(d),
                        "--resolution", "4", "--metrics", "average_drop", "--no-progress", "--no-report",
                        "--out", str(tmp_path / "cli")], capsys)
    assert rc == 0 and _Recorder.ran == ["test-blob", "test-blob"], err
    rc, _, err = cli(["evaluate", "--engine", "nosuch", "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "test-recorder" in err


# ----------------------------------------------------------------------------------------------
# the MetricSpec contract
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def extra_metrics():
    calls: dict[str, list] = {"set": [], "plain": []}

    @register_metric("test-set-level", higher_is_better=True, category="test", set_level=True,
                     summary="test: an image's score is the mean target probability of its call")
    def set_level(model, x, saliency, target, *, batch_size=None):
        calls["set"].append(x.shape[0])
        p = torch.softmax(model(x).double(), 1).gather(1, target.view(-1, 1))[:, 0]
        return p.mean().expand(x.shape[0])

    @register_metric("test-default", higher_is_better=False, category="test", default=True,
                     summary="test: the map's largest value, computed when no metric is named")
    def default(model, x, saliency, target, *, seed=0):
        calls["plain"].append(list(seed))
        return saliency.flatten(1).amax(1)

    try:
        yield calls
    finally:
        METRICS._specs.pop("test-set-level")
        METRICS._specs.pop("test-default")


def test_set_level_and_default_metrics_by_their_spec(tmp_path, extra_metrics):
    res = evalkit.run_eval(tmp_path / "o", methods="test-random", resolutions="4", metrics=None,
                           images=evalkit.photos(3))
    metrics = {r["metric"] for r in res.rows}
    assert "test-default" in metrics and {"deletion", "insertion", "overall", "average_drop"} <= metrics
    assert "test-set-level" not in metrics and "pointing" not in metrics  # not a default; no annotations
    assert extra_metrics["plain"] and len(extra_metrics["plain"][0]) == 3  # one call, a seed per image
    res = evalkit.run_eval(tmp_path / "p", methods="test-random", resolutions="4", metrics="test-set-level",
                           images=evalkit.photos(3))
    assert extra_metrics["set"] == [1, 1, 1]  # one image at a time
    model = evalkit.tiny_model()
    for r in res.rows:  # each image's score is its own probability, not its batch's mean
        x = model.preprocess(dict(evalkit.photos(3))[r["image"]])
        with torch.no_grad():
            p = torch.softmax(model(x).double(), 1)[0, r["target"]]
        assert r["value"] == pytest.approx(float(p), abs=1e-6)
    assert len({round(r["value"], 6) for r in res.rows}) == 3


def test_metric_spec_call_gives_only_what_the_metric_takes():
    got = {}

    def fn(model, x, saliency, target, *, boxes, batch_size=None):
        got.update(boxes=boxes, batch_size=batch_size)
        return torch.zeros(x.shape[0])

    spec = type(METRICS.get("pointing"))("t", fn, True, "test", "t", needs=("boxes",))
    made = []
    inputs = {"boxes": lambda: made.append("boxes") or ["B"], "masks": lambda: made.append("masks") or ["M"],
              "explain": lambda: made.append("explain")}
    spec.call(None, torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.long),
              batch_size=7, seeds=[1, 2], inputs=inputs)
    assert got == {"boxes": ["B"], "batch_size": 7} and made == ["boxes"]  # no seed: fn does not name it
    with pytest.raises(FaithmapError, match="needs 'boxes'"):
        spec.call(None, torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="a metric may need: explain, boxes, masks"):
        register_metric("test-bad", higher_is_better=True, category="t", summary="t", needs=("depth",))


def test_deletion_returns_the_curves_the_store_keeps(tmp_path):
    """The deletion metric's result carries its curves; the run stores exactly those (first row of each
    image), and deletion + insertion + overall cost one deletion_insertion pass."""
    res = evalkit.run_eval(tmp_path / "o", methods="test-random", resolutions="4",
                           metrics="average_drop,deletion,insertion,overall", images=evalkit.photos(2))
    model = evalkit.tiny_model()
    stored = {c["image"]: c for c in res.curves}
    assert len(stored) == 2
    for name, photo in evalkit.photos(2):
        x = model.preprocess(photo)
        sal = torch.from_numpy(np.load(os.path.join(res.out, "maps", name, "test-random@4.npy")))
        t = torch.tensor([stored[name]["target"]])
        got = METRICS.get("deletion").fn(model, x, sal, t)
        assert got.curves.deletion[0].tolist() == pytest.approx(stored[name]["deletion"], abs=1e-6)
        assert got.curves.insertion[0].tolist() == pytest.approx(stored[name]["insertion"], abs=1e-6)
        assert got.curves.fractions.tolist() == pytest.approx(stored[name]["fractions"])
        row = next(r for r in res.rows if r["image"] == name and r["metric"] == "deletion")
        assert float(got.scores[0]) == pytest.approx(row["value"], abs=1e-6)
        first = next(r for r in res.rows if r["image"] == name)
        assert first["metric"] == "average_drop"  # the curves ride on each image's first row
        n0 = model.counter.images
        one = deletion_insertion(model, x, sal, t).images
        n1 = model.counter.images
        with sharing():
            for m in ("deletion", "insertion", "overall"):
                METRICS.get(m).call(model, x, sal, t)
        assert model.counter.images - n1 == n1 - n0 == one  # three metrics, one pass


# ----------------------------------------------------------------------------------------------
# small defaults a newcomer survives
# ----------------------------------------------------------------------------------------------
def test_the_default_methods_are_a_small_stated_set(tmp_path, capsys):
    from faithmap.cli_evaluate import _evaluate

    assert [s.name for s in METHODS if s.default] == ["gradcam", "gradcam++", "ig"]
    assert len({METHODS.get(m).family for m in ("gradcam", "gradcam++", "ig")}) == 2
    res = _evaluate(dict(images=evalkit.photos(1), model=evalkit.cnn_model(), metrics="average_drop",
                         out=str(tmp_path / "o"), progress=False, report=False))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["faithmap: note: no --methods given: evaluating gradcam, gradcam++, ig (a small default set of "
                   "cheap methods; --methods all runs every registered method)"]
    assert res.run["methods"] == ["gradcam", "gradcam++", "ig"]
    with pytest.warns(EvalNote, match="the images have labels, but the target explained is each image's top-1 "
                                      "prediction; --target label explains the labels"):
        lab = evalkit.run_eval(tmp_path / "l", methods="test-blob", resolutions="4", metrics="average_drop",
                               images=[(n, p, 1) for n, p in evalkit.photos(2)])
    assert {r["target"] for r in lab.rows} == {0} and {r["label"] for r in lab.rows} == {1}  # top-1, not the label
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvalNote)  # an explicit target: no note
        evalkit.run_eval(tmp_path / "m", methods="test-blob", resolutions="4", metrics="average_drop",
                         images=[(n, p, 1) for n, p in evalkit.photos(2)], target="label")
