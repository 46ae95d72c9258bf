"""``faithmap explain`` for a newcomer: the quick default, progress, warnings, models described on the
command line (--classes, --mean, --std, --input-size), and quiet exits on a closed pipe."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import faithmap
from faithmap.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """This process's environment with this faithmap first on the path (the tests may run with a relative
    PYTHONPATH=src, which a child in another folder would not find)."""
    pkg = str(pathlib.Path(faithmap.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pkg, os.environ.get("PYTHONPATH")) if p)}


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A torchvision ResNet-18 with 3 classes saved as a state dict, a photo, and class-name files."""
    import torchvision

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), d / "r18.pth")
    rgb = (np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "photo.png")
    (d / "names.txt").write_text("tabby cat\ndog\ncow\n")
    (d / "names.json").write_text(json.dumps(["tabby cat", "dog", "cow"]))
    (d / "names_dict.json").write_text(json.dumps({"0": "tabby cat", "1": "dog", "2": "cow"}))
    (d / "two.txt").write_text("tabby cat\ndog\n")
    return d


def model_args(d, *extra):
    return [str(d / "photo.png"), "--model", "resnet18", "--weights", str(d / "r18.pth"), "--input-size", "64",
            "--device", "cpu", *extra]


# ----------------------------------------------------------------------------------------------
# the default method, its note, progress and warnings
# ----------------------------------------------------------------------------------------------
def test_default_is_gradcam_with_a_note_on_the_papers_method(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", *model_args(tiny), "--out", str(out)], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == sorted(f"photo_gradcam_{k}" for k in
                                             ("heatmap.png", "map.npy", "curves.png", "strip.png", "summary.json"))
    notes = [line for line in err.splitlines() if line.startswith("faithmap: note:")]
    assert len(notes) == 1 and "gradcam" in notes[0] and "--method igos" in notes[0] and " s a photo" in notes[0]
    rc, stdout, err = run(["explain", *model_args(tiny, "--method", "gradcam"), "--out", str(tmp_path / "o2")], capsys)
    assert rc == 0 and "faithmap: note: method" not in err  # said only when the default was chosen for you


def test_the_cli_asks_for_progress_inside_the_image(tiny, tmp_path, capsys, monkeypatch):
    from faithmap import api

    seen = {}
    real = api.explain

    def spy(*a, **k):
        seen["progress"] = k.get("progress")
        return real(*a, **k)

    monkeypatch.setattr(api, "explain", spy)
    rc, _, err = run(["explain", *model_args(tiny, "--method", "igos", "--param", "iterations=1", "--param", "ig_steps=1",
                                             "--resolution", "4"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert isinstance(seen["progress"], api.TqdmProgress) and "igos" in seen["progress"].desc


def test_a_constant_map_is_a_warning_line_and_in_the_summary(tiny, tmp_path, capsys, monkeypatch):
    from faithmap import api

    real = api.explain

    def flat(*a, **k):
        e = real(*a, **k)
        e.saliency = torch.zeros_like(e.saliency)
        return e

    out = tmp_path / "out"
    rc, _, _ = run(["explain", *model_args(tiny, "--method", "saliency"), "--out", str(out)], capsys)
    assert rc == 0
    assert json.loads((out / "photo_saliency_summary.json").read_text())["warnings"] == []
    monkeypatch.setattr(api, "explain", flat)
    rc, stdout, err = run(["explain", *model_args(tiny, "--method", "saliency"), "--out", str(tmp_path / "o2")], capsys)
    assert rc == 0, err
    warn = [line for line in err.splitlines() if line.startswith("faithmap: warning:")]
    assert len(warn) == 1 and warn[0].startswith("faithmap: warning: photo: constant map: every cell is 0")
    summary = json.loads((tmp_path / "o2" / "photo_saliency_summary.json").read_text())
    assert len(summary["warnings"]) == 1 and summary["warnings"][0].startswith("constant map")


def test_makefile_demo_stays_on_igos():
    demo = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].splitlines()[1]
    assert "faithmap explain" in demo and "--method igos" in demo


# ----------------------------------------------------------------------------------------------
# models described on the command line
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", ["names.txt", "names.json", "names_dict.json"])
def test_class_names_reach_the_top5_the_summary_the_titles_and_the_target(tiny, tmp_path, capsys, monkeypatch,
                                                                         names):
    from faithmap import viz

    titles = []
    real = viz.save_heatmap
    monkeypatch.setattr(viz, "save_heatmap", lambda path, img, sal, title="", **k: (titles.append(title),
                                                                                   real(path, img, sal, title, **k)))
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", *model_args(tiny, "--classes", str(tiny / names), "--target", "cow",
                                                  "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"),
                           "--out", str(out)], capsys)
    assert rc == 0, err
    summary = json.loads((out / "photo_gradcam_summary.json").read_text())
    assert summary["target"] == 2 and summary["target_name"] == "cow"
    assert sorted(t["name"] for t in summary["top5"]) == ["cow", "dog", "tabby cat"]
    top = next(line for line in stdout.splitlines() if "top-5" in line)
    assert "tabby cat" in top and "class 0" not in top
    assert "for 'cow'" in titles[0]


def test_mean_std_and_input_size_change_what_the_model_sees(tiny, tmp_path, capsys):
    outs = {}
    for key, extra in (("plain", []), ("described", ["--mean", "0.2,0.3,0.4", "--std", "0.5,0.5,0.5"])):
        rc, _, err = run(["explain", *model_args(tiny, "--method", "saliency", *extra), "--out", str(tmp_path / key)],
                         capsys)
        assert rc == 0, err
        outs[key] = json.loads((tmp_path / key / "photo_saliency_summary.json").read_text())
    assert outs["plain"]["map_resolution"] == [64, 64]  # --input-size 64
    assert outs["plain"]["top5"][0]["probability"] != pytest.approx(outs["described"]["top5"][0]["probability"],
                                                                     abs=1e-6)


@pytest.mark.parametrize("extra, needle", [
    (["--classes", "/no/such/names.txt"], "class names file not found: /no/such/names.txt"),
    (["--classes", "{two}"], "2 class names for a model with 3 classes"),
    (["--mean", "a,b,c"], "--mean must be three numbers separated by commas"),
    (["--mean", "0.5,0.5"], "--mean must be three numbers"),
    (["--std", "0.2,0,0.2"], "std must be positive"),
    (["--std", "0.2,nan,0.2"], "std must be finite numbers"),
    (["--input-size", "16"], "input size must be 32 to 4096 pixels, got 16"),
])
def test_bad_model_descriptions_are_one_line_and_write_nothing(tiny, tmp_path, capsys, extra, needle):
    extra = [e.replace("{two}", str(tiny / "two.txt")) for e in extra]
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", *model_args(tiny, *extra), "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("faithmap: error:") and needle in lines[0], err
    assert not out.exists()


def test_without_names_a_name_target_is_refused_with_them_accepted(tiny, tmp_path, capsys):
    rc, _, err = run(["explain", *model_args(tiny, "--target", "cow"), "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and "unknown target" in err
    rc, _, err = run(["explain", *model_args(tiny, "--target", "cow", "--classes", str(tiny / "names.txt")),
                      "--out", str(tmp_path / "b")], capsys)
    assert rc == 0, err


def test_evaluate_sanity_and_gad_take_the_model_flags(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    rc, _, err = run(["evaluate", "--images", str(tiny / "photo.png"), "--model", "resnet18", "--weights",
                      str(tiny / "r18.pth"), "--input-size", "64", "--classes", str(tiny / "names.txt"),
                      "--methods", "gradcam", "--metrics", "deletion", "--target", "cow", "--device", "cpu",
                      "--no-progress", "--csv", "--out", str(out)], capsys)
    assert rc == 0, err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows and {r["target_name"] for r in rows} == {"cow"}
    for argv in (["evaluate", "--images", str(tiny / "photo.png"), "--mean", "x", "--out", str(tmp_path / "e2")],
                 ["sanity", "--method", "saliency", "--model", "resnet18", "--std", "0,1,1", "--out",
                  str(tmp_path / "s")],
                 ["sanity", "--method", "saliency", "--classes", str(tiny / "names.txt"), "--out", str(tmp_path / "s2")],
                 ["gad", "--demo", "--class-names", str(tiny / "names.txt"), "--out", str(tmp_path / "g")]):
        rc, _, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("faithmap: error:"), (argv, err)


# ----------------------------------------------------------------------------------------------
# a closed pipe: no traceback, exit 141
# ----------------------------------------------------------------------------------------------
def _closed_pipe(argv, cwd):
    """Run ``python -m faithmap ARGV`` whose stdout pipe is closed before it writes anything; unbuffered,
    so that the first line written meets the closed pipe (buffered, it meets it at the final flush)."""
    proc = subprocess.Popen([sys.executable, "-m", "faithmap", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env={**child_env(), "PYTHONUNBUFFERED": "1"})
    proc.stdout.close()  # the reader is gone before the first write (as `| head -1` after its line)
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), err


@pytest.mark.parametrize("command", ["methods", "metrics"])
def test_listing_into_a_closed_pipe_exits_quietly(tmp_path, command):
    rc, err = _closed_pipe([command], tmp_path)
    assert rc == 141 and err == "", err


def test_explain_into_a_closed_pipe_exits_quietly_and_leaves_nothing_half_written(tiny, tmp_path):
    out = tmp_path / "out"
    rc, err = _closed_pipe(["explain", *model_args(tiny, "--method", "saliency"), "--out", str(out)], tmp_path)
    assert rc == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert not out.exists()  # cut off after its first photo's line: removed as any failed run's folder


def test_head_one_in_a_shell_pipeline(tmp_path):
    cmd = f"{sys.executable} -m faithmap methods | head -1"
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=tmp_path, timeout=300, env=child_env())
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1 and res.stderr == "", res.stderr
