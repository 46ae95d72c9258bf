"""``faithmap audit`` as a command: its flags are AuditConfig's fields, bad input is one line with exit
status 2 and nothing written, and a run killed between its parts finishes with the same audit.json."""

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image
from torch import nn

import faithmap
from faithmap.auditing import OPTION_NAMES
from faithmap.auditing.config import OPTIONS
from faithmap.auditing.worker import COLUMNS
from faithmap.cli import build_parser
from faithmap.core.batching import torch_threads
from faithmap.evaluation.store import Store
from faithmap.models import wrap

import auditkit
from conftest import kill_after_parts
from conftest import run as cli



def _parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["audit"]


def test_the_flags_are_the_config_fields():
    flags = {a.dest: a.option_strings for a in _parser()._actions if a.dest != "help"}
    for o in OPTIONS:
        assert o.flag in flags[o.name], (o.name, flags.get(o.name))
    assert set(OPTION_NAMES) <= set(flags)
    with pytest.raises(faithmap.FaithmapError, match="audit has no option 'methods'; the options are: images"):
        faithmap.audit(images="samples", methods="gradcam")
    with pytest.raises(faithmap.FaithmapError, match="takes a AuditConfig or keywords only"):
        faithmap.audit("samples")
    assert "min_share" in faithmap.audit.__doc__ and list(
        faithmap.audit.__signature__.parameters)[1:] == list(OPTION_NAMES)


def _one_line(rc, err, *words):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("faithmap: error:"), err
    for w in words:
        assert w in err, err


def test_target_label_without_labels_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "a"
    rc, _, err = cli(["audit", "--images", "samples", "--target", "label", "--out", str(out)], capsys)
    _one_line(rc, err, "labels")
    assert not out.exists()


def test_an_unknown_method_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "a"
    rc, _, err = cli(["audit", "--images", "samples", "--method", "nosuch", "--out", str(out)], capsys)
    _one_line(rc, err, "unknown method 'nosuch'")
    assert not out.exists()


def test_a_class_with_one_image_is_one_line_and_writes_nothing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for folder, n in (("0", 2), ("1", 1)):  # class folders named by class index (tench, goldfish)
        os.makedirs(tmp_path / "data" / folder)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / folder / f"{i}.png")
    out = tmp_path / "a"
    rc, _, err = cli(["audit", "--images", str(tmp_path / "data"), "--out", str(out), "--no-progress"], capsys)
    _one_line(rc, err, "goldfish", "at least 2 images of each class")
    assert not out.exists()


def test_a_method_that_gives_no_map_for_the_model_is_refused_before_writing(tmp_path):
    mlp = wrap(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).eval(), input_size=32,
               mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=["a", "b"])
    out = tmp_path / "a"
    with pytest.raises(faithmap.FaithmapError, match="method gradcam gives no map for this model: could not find"):
        faithmap.audit(images=auditkit.corner_images(6), model=mlp, out=str(out), progress=False)
    assert not out.exists()
    # a method that maps the input does, and the patches are embedded by their pixels (no spatial layer)
    with torch_threads(1), pytest.warns(UserWarning, match="no spatial layer"):
        res = faithmap.audit(images=auditkit.corner_images(12), model=mlp, method="saliency", out=str(out),
                             progress=False)
    assert res.images == 12 and os.path.exists(res.files["page"])
    emb = [r["embedding"] for r in Store(str(out), COLUMNS).table(["embedding"]).to_pylist()]
    assert all(e is None or len(e) == 3 * 16 for e in emb) and any(e is not None for e in emb)


DRIVER = """
import torch
torch.set_num_threads(1)
import auditkit, faithmap
method = auditkit.register_slow()
faithmap.audit(images=auditkit.corner_images({n}), model=auditkit.corner_model(), method=method, batch_images=4,
               out={out!r}, progress=False)
"""


@pytest.fixture
def slow_method():
    name = auditkit.register_slow()
    try:
        yield name
    finally:
        auditkit.unregister_slow()


def test_a_killed_run_resumes_with_the_same_command_and_the_same_audit(slow_method, tmp_path):
    n = 24
    kw = dict(images=auditkit.corner_images(n), model=auditkit.corner_model(), method=slow_method, batch_images=4,
              progress=False)
    with torch_threads(1):
        clean = faithmap.audit(out=str(tmp_path / "clean"), **kw)
    out = str(tmp_path / "killed")
    kill_after_parts(DRIVER.format(n=n, out=out), out)
    assert not os.path.exists(os.path.join(out, "audit.json"))
    with torch_threads(1):
        res = faithmap.audit(out=out, **kw)
    assert 0 < res.explained_before < n and res.explained_before + res.explained_now == n
    with open(res.files["audit"]) as fh, open(clean.files["audit"]) as gh:
        a, b = json.load(fh), json.load(gh)
    assert a["candidates"] and auditkit.close(a["candidates"], b["candidates"])


@pytest.mark.slow
def test_the_command_on_the_default_model_and_the_photos(tmp_path, capsys):
    out = tmp_path / "a"
    rc, stdout, err = cli(["audit", "--images", "photos", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    assert "20 in all" in stdout and "report:" in stdout
    with open(out / "audit.json") as fh:
        doc = json.load(fh)
    assert doc["images"] == 20 and doc["target"] == "top1" and doc["method"] == "gradcam"
