"""Method parameters declared once: the settings dataclasses of the mask family (and XRAI) give every
parameter its type, default, range and help; the registry, the boundary checks, ``Explanation.params``
and ``faithmap methods NAME`` all read them."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch

import faithmap
from faithmap.cli import main
from faithmap.errors import FaithmapError
from faithmap.methods.igospp import IGOSPPParams
from faithmap.methods.mask import IGOSParams, igos
from faithmap.params import COMMON_BOUNDS, interval

from conftest import patch_image

SETTINGS = [s for s in faithmap.METHODS if s.settings is not None]


def run_cli(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(rc, err, needle):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("faithmap: error: "), err
    assert needle in lines[0], (needle, lines[0])


def declared_range(f: dataclasses.Field):
    """A field's range as the dataclass declares it: its own, else COMMON_BOUNDS by name (None: no range)."""
    spec = f.metadata.get("range", COMMON_BOUNDS.get(f.name))
    return None if spec is None else interval(spec)


def _numeric_kind(tp) -> type | None:
    """int or float: the kind of number a field's annotation admits (None: no number)."""
    text = str(tp)
    if "float" in text:
        return float
    return int if "int" in text else None


def out_of_range_cases():
    """(method, field, value just outside the field's range, range) for every bounded numeric field."""
    cases = []
    for spec in SETTINGS:
        hints = dataclasses.fields(spec.settings)
        types = {p.name: p.type for p in spec.parameters}
        for f in hints:
            r, kind = declared_range(f), _numeric_kind(types[f.name])
            if r is None or kind is None:
                continue
            if r.low != float("-inf"):
                low = kind(r.low) if r.low_open else (int(r.low) - 1 if kind is int else r.low - 0.5)
                cases.append((spec.name, f.name, low, str(r)))
            if r.high != float("inf"):
                high = (int(r.high) if kind is int else r.high) if r.high_open else \
                    (int(r.high) + 1 if kind is int else r.high + 0.5)
                cases.append((spec.name, f.name, high, str(r)))
    return cases


CASES = out_of_range_cases()


def test_the_cases_cover_every_settings_method_and_inherited_fields():
    methods = {m for m, *_ in CASES}
    assert methods == {s.name for s in SETTINGS} >= {"igos", "igos++", "mask", "extremal_perturbation", "aop", "sigcam"}
    inherited = {"ig_steps", "tol", "alpha_max", "warmup_blur", "seed"}  # declared in IGOSParams or its bases
    assert inherited <= {f for m, f, *_ in CASES if m == "igos++"}
    assert not inherited & set(IGOSPPParams.__annotations__)  # really inherited, not written again


@pytest.mark.parametrize("method, name, value, rng", CASES, ids=[f"{m}-{n}-{v}" for m, n, v, _ in CASES])
def test_every_field_range_is_enforced_at_the_api(patch_model, method, name, value, rng):
    with pytest.raises(FaithmapError) as info:
        faithmap.explain(patch_model, patch_image(), method, target=0, **{name: value})
    msg = str(info.value)
    assert msg == f"method {faithmap.METHODS[method].name}: {name} must be in {rng}, got {value!r}"


@pytest.mark.parametrize("method, name, value, rng", CASES, ids=[f"{m}-{n}-{v}" for m, n, v, _ in CASES])
def test_every_field_range_is_enforced_at_the_cli(tmp_path, capsys, method, name, value, rng):
    out = tmp_path / "out"
    rc, _, err = run_cli(["explain", "sample:coffee", "--method", method, "--param", f"{name}={value!r}",
                          "--out", str(out)], capsys)
    one_line(rc, err, f"method {method}: {name} must be in {rng}, got {value!r}")
    assert not out.exists()


@pytest.mark.parametrize("method, params, needle", [
    ("igos", {"iterations": 5.0}, "method igos: iterations must be an integer, got float 5.0"),
    ("igos++", {"ig_steps": "8"}, "method igos++: ig_steps must be an integer, got str '8'"),  # inherited
    ("igos++", {"ls_noise": 1}, "method igos++: ls_noise must be true or false, got int 1"),
    ("igos", {"ls_rule": "left"}, "method igos: ls_rule must be one of 'right', 'mid', 'gl', got str 'left'"),
    ("mask", {"lr": "0.1"}, "method mask: lr must be a number, got str '0.1'"),
    ("ep", {"areas": "0.1"}, "method extremal_perturbation: areas must be"),
])
def test_in_range_but_wrong_type_fails(patch_model, method, params, needle):
    with pytest.raises(FaithmapError) as info:
        faithmap.explain(patch_model, patch_image(), method, target=0, **params)
    assert str(info.value).startswith(needle) and "\n" not in str(info.value)


def test_in_range_but_wrong_type_fails_at_the_cli(tmp_path, capsys):
    rc, _, err = run_cli(["explain", "sample:coffee", "--method", "igos", "--param", "iterations=5.0", "--out", str(tmp_path / "o")], capsys)
    one_line(rc, err, "method igos: iterations must be an integer, got float 5.0")


def test_every_field_has_a_one_line_help_and_a_valid_default():
    for spec in SETTINGS:
        for f in dataclasses.fields(spec.settings):
            help_ = f.metadata.get("help", "")
            assert help_ and "\n" not in help_, (spec.name, f.name)
        spec.check(spec.params)  # the defaults pass their own check


def test_registries_are_indexable_by_name():
    assert faithmap.METHODS["IGOS"] is faithmap.METHODS.get("igos")
    assert faithmap.METHODS["igospp"].name == "igos++" and faithmap.METHODS[" EP "].name == "extremal_perturbation"
    assert faithmap.METRICS["Deletion"].name == "deletion"
    for reg, kind in ((faithmap.METHODS, "method"), (faithmap.METRICS, "metric")):
        with pytest.raises(FaithmapError) as info:
            reg["nosuch"]
        assert str(info.value).startswith(f"unknown {kind} 'nosuch'; choose from: ") and "\n" not in str(info.value)


def test_params_and_parameters_read_the_dataclass():
    spec = faithmap.METHODS["igos++"]
    fields = dataclasses.fields(IGOSPPParams)
    assert spec.params == {f.name: f.default for f in fields}
    assert [p.name for p in spec.parameters] == [f.name for f in fields]
    p = {q.name: q for q in spec.parameters}
    assert p["ls_points"].default == 2 and faithmap.METHODS["igos"].params["ls_points"] == 3  # what differs
    assert str(p["tol"].range) == "[0, inf)" and str(p["ig_steps"].range) == COMMON_BOUNDS["ig_steps"]
    assert p["smooth"].type_text == "'btv' | 'tv'" and p["l1"].type_name == "a number or None"


def test_signature_methods_are_described_the_same_way():
    p = {q.name: q for q in faithmap.METHODS["rise"].parameters}
    assert p["n_masks"].type is int and p["n_masks"].default == 4000 and str(p["n_masks"].range) == COMMON_BOUNDS["n_masks"]
    assert str(p["p"].range) == "(0, 1)" and p["baseline"].range is None
    assert p["n_masks"].help.startswith("n_masks = N binary")  # the docstring's sentence about it


def test_explanation_params_are_the_resolved_settings(patch_model):
    x = patch_image()
    e = faithmap.explain(patch_model, x, "igos", target=0, resolution=8, iterations=1, ig_steps=2, quadrature="gl3")
    assert set(e.params) == {f.name for f in dataclasses.fields(IGOSParams)}
    assert e.params["resolution"] == (8, 8) and e.params["l1"] == 1.0  # None resolved: 1 below 224 x 224
    assert e.params["quadrature"] == "gl" and e.params["ig_steps"] == 3 and e.params["iterations"] == 1
    # the settings object and keyword arguments are the same call
    t = torch.zeros(1, dtype=torch.long)
    cfg = IGOSParams(resolution=8, iterations=1, ig_steps=2, quadrature="gl3")
    direct = igos(patch_model, x, t, cfg)
    assert torch.equal(direct.saliency, e.saliency) and direct.params == e.params
    with pytest.raises(FaithmapError, match="takes its settings as IGOSParams"):
        igos(patch_model, x, t, {"iterations": 1})
    with pytest.raises(FaithmapError, match="method igos has no parameter 'colour'"):
        igos(patch_model, x, t, colour="red")


@pytest.mark.parametrize("name", ["igos", "igos++", "extremal_perturbation"])
def test_methods_page_lists_every_field(capsys, name):
    spec = faithmap.METHODS[name]
    rc, out, _ = run_cli(["methods", name], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[0] == spec.name and spec.summary in out and spec.paper in out
    for f in dataclasses.fields(spec.settings):
        row = [ln for ln in lines if ln.split()[:1] == [f.name]]
        assert len(row) == 1, f.name
        rng = declared_range(f)
        if rng is not None and _numeric_kind(spec.settings.__dataclass_fields__[f.name].type):
            assert f" {rng} " in row[0], (f.name, row[0])
        default = repr(f.default) if isinstance(f.default, str) else str(f.default)
        assert f" {default} " in f"{row[0]} ", (f.name, row[0])
    fast = ", ".join(f"{k}={v}" for k, v in spec.fast.items())
    assert f"fast settings (--fast): {fast}" in out and f"faithmap explain sample:coffee --method {spec.name}" in out


def test_metrics_page_and_unknown_names(capsys):
    rc, out, _ = run_cli(["metrics", "max_sensitivity"], capsys)
    assert rc == 0 and "lower is better" in out and "robustness" in out and "explain" in out
    row = [ln for ln in out.splitlines() if ln.split()[:1] == ["n_samples"]]
    assert len(row) == 1 and "int" in row[0] and "200" in row[0]
    for cmd in ("methods", "metrics"):
        rc, _, err = run_cli([cmd, "nosuch"], capsys)
        one_line(rc, err, "unknown")


@pytest.mark.parametrize("argv, first", [("methods igos", "igos"), ("methods igos++", "igos++  (also: igospp, igos_pp)"),
                                         ("methods", "igos"), ("metrics max_sensitivity", "max_sensitivity")])
def test_pages_into_a_closed_pipe_have_no_traceback(argv, first):
    """``| head -1`` closes the pipe after the first line; unbuffered stdout (the hardest case) wrote a
    page's text and its newline in two writes, the second into the closed pipe."""
    src = os.path.dirname(os.path.dirname(faithmap.__file__))
    env = dict(os.environ, PYTHONPATH=src, PYTHONUNBUFFERED="1")
    cmd = f"{sys.executable} -c 'import sys; from faithmap.cli import main; sys.exit(main())' {argv} | head -1"
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env, timeout=300)
    assert res.stdout.split()[0] == first.split()[0] and res.stdout.rstrip("\n").startswith(first)
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr


def test_no_paper_is_a_file_name():
    for spec in (*faithmap.METHODS, *faithmap.METRICS):
        assert not re.search(r"\.txt\b", spec.paper), (spec.name, spec.paper)
        assert re.search(r"\b(19|20)\d\d\b", spec.paper), (spec.name, spec.paper)  # a reference has a year


@pytest.mark.parametrize("argv, needle", [
    (["--param", "igos++.ig_steps=0"], "method igos++: ig_steps must be in [1, 100000], got 0"),
    (["--param", "igos++.ablation=nonsense"], "unknown ablation"),
    (["--metrics", "sufficiency", "--metric-param", "sufficiency.threshold=abc"], "metric sufficiency: threshold must be"),
])
def test_evaluate_checks_parameters_before_anything_runs(tmp_path, capsys, argv, needle):
    """A bad value for the second method (or a metric option) is refused by the plan: one line, exit 2,
    and no output folder — the first method never ran."""
    out = tmp_path / "run"
    rc, _, err = run_cli(["evaluate", "--images", "sample:coffee", "--methods", "gradcam,igos++", "--model", "resnet18",
                          "--weights", "random", "--no-progress", "--out", str(out), *argv], capsys)
    one_line(rc, err, needle)
    assert not out.exists()
