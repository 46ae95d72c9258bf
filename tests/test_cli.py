"""The command line end to end on the real default model, and every bad-input case."""

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import faithmap
from faithmap.cli import main


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels (the data is never read)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.fixture
def bad_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "ok.png")
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((64, 64), 255, np.uint8)])).save(d / "rgba.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "deep.png")
    Image.fromarray(rgb[:8, :8]).save(d / "tiny.png")
    _png_header_only(d / "huge.png", 20000, 20000)
    (d / "notes.png").write_text("this is not an image")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    return d


@pytest.mark.parametrize("name, needle", [
    ("missing.png", "no such file"),
    ("notes.png", "not an image"),
    ("broken.jpg", ""),
    ("gray.png", "grayscale"),
    ("rgba.png", "alpha"),
    ("deep.png", "16-bit"),
    ("tiny.png", "too small"),
    ("huge.png", "too large"),
])
def test_bad_images(bad_files, tmp_path, capsys, name, needle):
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", str(bad_files / name), "--out", str(out), "--fast"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faithmap: error:") and needle in lines[0]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args, needle", [
    (["--method", "nosuch"], "unknown method"),
    (["--model", "nosuchnet"], "unknown model"),
    (["--model", "resnet18"], "needs --weights"),
    (["--weights", "/no/such/file.pth"], "not found"),
    (["--target", "5000"], "out of range"),
    (["--target", "zebrafish-unicorn"], "unknown target"),
    (["--resolution", "1"], "resolution"),
    (["--resolution", "500"], "resolution"),
    (["--param", "colour=red"], "no parameter"),
    (["--param", "oops"], "KEY=VALUE"),
    (["--device", "tpu"], "unknown device"),
    (["--fraction", "3"], "fraction"),
])
def test_bad_options(bad_files, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", str(bad_files / "ok.png"), "--out", str(out), "--fast", *args], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not out.exists() or not any(out.iterdir())


def test_convert_accepts_gray(bad_files, tmp_path, capsys):
    from faithmap.data import load_image

    arr = load_image(str(bad_files / "gray.png"), convert=True)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8 and (arr[..., 0] == arr[..., 2]).all()
    deep = load_image(str(bad_files / "deep.png"), convert=True)
    assert deep.dtype == np.uint8 and deep.max() > 200


def test_methods_and_unknown_command(capsys):
    rc, out, err = run(["methods"], capsys)
    assert rc == 0 and "igos" in out
    rc, out, err = run(["frobnicate"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_explain_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run(["explain", "sample:coffee", "--method", "igos", "--out", str(out), "--param", "iterations=3",
                           "--param", "ig_steps=5", "--resolution", "14"], capsys)
    assert rc == 0, err
    files = sorted(os.listdir(out))
    assert files == sorted(f"coffee_igos_{k}" for k in ("heatmap.png", "map.npy", "curves.png", "strip.png",
                                                        "summary.json"))
    summary = json.loads((out / "coffee_igos_summary.json").read_text())
    assert summary["target_name"] == "espresso" and summary["top5"][0]["name"] == "espresso"
    assert 0 <= summary["deletion_auc"] < summary["insertion_auc"] <= 1
    assert np.load(out / "coffee_igos_map.npy").shape == (14, 14)
    assert summary["model_images"]["grad_images"] == 3 * 5
    assert "espresso" in stdout and "deletion" in stdout
    for png in ("heatmap", "curves", "strip"):
        im = Image.open(out / f"coffee_igos_{png}.png")
        assert im.size[0] > 200 and np.asarray(im).std() > 10  # a real picture, not blank


def test_building_the_command_line_imports_no_matplotlib_or_ray():
    """Every command's parser is built at start-up: none of them may pull in matplotlib (over a second,
    and a font cache written on first use: under a file-size limit that cache failed as a second error
    line) or Ray; they load where a command draws or distributes."""
    src = os.path.dirname(os.path.dirname(faithmap.__file__))
    code = ("import sys; from faithmap.cli import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'ray'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=src))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
