"""Reliability at the boundary (issue 18): writes that cannot be redirected or half-finish, output faults
as one line, parameters checked by type and range, bad API inputs, markup in names, EXIF orientation.

CLI cases run the real command, in a subprocess where the fault needs one (a process file-size limit,
a small full file system, a read-only mount inside a user namespace); those that need ``unshare``
skip where the machine does not allow unprivileged namespaces.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import faithmap
from faithmap.cli import main
from faithmap.core.io import atomic_open, output_dir, parse_json, write_json
from faithmap.data import load_image
from faithmap.errors import FaithmapError
from faithmap.models import wrap
from faithmap.params import Interval, check, interval

from conftest import PatchModel, patch_image

CLI = [sys.executable, "-m", "faithmap.cli"]


def run_cli(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(rc, err, needle=""):
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("faithmap: error:"), err
    assert needle in lines[0], lines[0]


def photo(path, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# the atomic-write helper
# ----------------------------------------------------------------------------------------------
def test_atomic_open_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write(b'{"x": 2')  # torn write: the block fails before the replace
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"x": 1}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_planted_symlinks_never_redirect_a_write(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    # the old predictable temporary name, and the final name itself, both point at the victim
    os.symlink(victim, out / "a.json.tmp")
    os.symlink(victim, out / "a.json")
    write_json(out / "a.json", {"ok": True})
    assert victim.read_text() == "keep me"
    assert not os.path.islink(out / "a.json") and json.loads((out / "a.json").read_text()) == {"ok": True}


def test_explain_through_planted_symlinks_leaves_the_target_alone(tmp_path, capsys):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "coffee_gradcam_summary.json.tmp")
    os.symlink(victim, out / "coffee_gradcam_summary.json")
    rc, stdout, err = run_cli(["explain", "sample:coffee", "--method", "gradcam", "--out", str(out)], capsys)
    assert rc == 0, err
    assert victim.read_text() == "precious"
    summary = json.loads((out / "coffee_gradcam_summary.json").read_text())
    assert summary["image"] == "coffee"
    assert not any(n.endswith(".part") for n in os.listdir(out))


def test_output_dir_removes_only_what_it_created(tmp_path):
    new = tmp_path / "a" / "b"
    with pytest.raises(ValueError):
        with output_dir(new):
            (new / "half.png").write_bytes(b"x")
            raise ValueError("inside the command")
    assert not (tmp_path / "a").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "earlier.txt").write_text("mine")
    with pytest.raises(ValueError):
        with output_dir(old):
            raise ValueError("again")
    assert (old / "earlier.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------------
# output faults through the real command
# ----------------------------------------------------------------------------------------------
def test_out_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    rc, _, err = run_cli(["explain", "sample:coffee", "--method", "gradcam", "--out", str(f)], capsys)
    one_line_error(rc, err, "not a directory")
    rc, _, err = run_cli(["explain", "sample:coffee", "--method", "gradcam", "--out", str(f / "sub")], capsys)
    one_line_error(rc, err, "is a file")
    assert f.read_text() == "x"


def test_error_inside_a_method_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "never"
    rc, _, err = run_cli(["explain", "sample:coffee", "--method", "gradcam", "--layer", "no.such.layer",
                          "--out", str(out)], capsys)
    one_line_error(rc, err, "no.such.layer")
    assert not out.exists()


def _subprocess_explain(out, preexec=None, wrapper=()):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([*wrapper, *CLI, "explain", "sample:coffee", "--method", "gradcam", "--out", str(out)],
                          capture_output=True, text=True, env=env, preexec_fn=preexec, timeout=300)


def test_file_size_limit_is_one_line_and_nothing_half_written(tmp_path):
    """A write that the system refuses (here EFBIG from a process file-size limit) ends as one line."""
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    p = _subprocess_explain(out, preexec=limit)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("faithmap: error: cannot write") and "too large" in lines[0]
    assert not out.exists()  # the folder was made by this run: removed with what it held


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_unshare = pytest.mark.skipif(not _unshare_ok(), reason="no unprivileged user namespaces here")


def _in_namespace(script: str, out) -> subprocess.CompletedProcess:
    cmd = " ".join(f"'{c}'" for c in CLI)
    sh = f"{script} && exec {cmd} explain sample:coffee --method gradcam --out '{out}'"
    return subprocess.run(["unshare", "-Urm", "sh", "-c", sh], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


@needs_unshare
def test_full_disk_is_one_line_and_leaves_no_partial_files(tmp_path):
    """A 160 kB file system fills during the second image's pictures: one line, exit 2, and the folder
    (which existed before the run, so it stays) holds whole files only, no temporary ones."""
    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = " ".join(f"'{c}'" for c in CLI)
    sh = (f"mount -t tmpfs -o size=160k none '{disk}' && mkdir '{disk}/out' && "
          f"{cmd} explain sample:coffee sample:chelsea --method gradcam --out '{disk}/out' 2>'{disk}/err'; "
          f"echo rc=$?; cat '{disk}/err'; echo files:; ls -a '{disk}/out'")
    p = subprocess.run(["unshare", "-Urm", "sh", "-c", sh], capture_output=True, text=True, timeout=300)
    head, _, listing = p.stdout.partition("files:")
    assert "rc=2" in head, p.stdout + p.stderr
    err = [ln for ln in head.split("rc=2", 1)[1].strip().splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("faithmap: error: cannot write") and "no space left" in err[0], err
    names = [n for n in listing.split() if n not in (".", "..")]
    assert not any(n.endswith(".part") for n in names), names
    assert all(n.startswith(("coffee_", "chelsea_")) for n in names), names


@needs_unshare
def test_read_only_file_system_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    p = _in_namespace(f"mount --bind '{ro}' '{ro}' && mount -o remount,ro,bind '{ro}'", ro / "out")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and ("read-only" in lines[0] or "permission denied" in lines[0]), p.stderr
    assert not (ro / "out").exists()


# ----------------------------------------------------------------------------------------------
# inputs: markup in names, EXIF orientation
# ----------------------------------------------------------------------------------------------
def test_mathtext_in_an_image_name_is_drawn_literally(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    photo(src / "$x^{2$ and $$.png", size=(80, 64))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(["explain", str(src), "--method", "gradcam", "--out", str(out)], capsys)
    assert rc == 0, err
    assert sum(n.endswith("_heatmap.png") for n in os.listdir(out)) == 1


def test_exif_orientation_is_applied_on_load(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :, 0] = 255  # a red band along the stored top edge
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "side.jpg", exif=exif, quality=95)
    shown = load_image(str(tmp_path / "side.jpg"))
    assert shown.shape == (60, 40, 3)  # displayed upright: the sides swap
    assert shown[:, -10:, 0].mean() > 200 and shown[:, :10, 0].mean() < 50  # the band is now on the right


# ----------------------------------------------------------------------------------------------
# parameters: types and ranges, declared once and checked at the boundary
# ----------------------------------------------------------------------------------------------
def test_interval_notation():
    assert str(interval("[1, 100]")) == "[1, 100]" and 1 in interval("[1, 100]") and 0 not in interval("[1, 100]")
    assert 0 not in interval("(0, 1)") and 1 not in interval("(0, 1)") and 0.5 in interval("(0, 1)")
    assert 2 ** 64 - 1 in interval("[0, 2**64)") and 2 ** 64 not in interval("[0, 2**64)")
    assert interval((0, None)) == Interval(0.0, float("inf"), False, True)
    with pytest.raises(ValueError):
        interval("1..2")


def test_check_types_and_ranges():
    def fn(*, n: int = 1, x: float = 0.5, name: str = "a", flag: bool = False, res: int | tuple[int, int] = 2,
           maybe: float | None = None):
        pass

    check("method t", fn, dict(n=3, x=1, name="b", flag=True, res=(2, 3), maybe=None))
    bad = [(dict(n="5"), "n must be an integer, got str '5'"), (dict(n=True), "n must be an integer"),
           (dict(n=2.0), "n must be an integer"), (dict(x=float("nan")), "x must be a number, got nan"),
           (dict(maybe=float("inf")), "maybe must be finite"), (dict(flag=1), "flag must be true or false"),
           (dict(res=(2, "3")), "res must be"), (dict(n=0), "n must be in [1, 5]"), (dict(x=2.0), "x must be in (0, 1)")]
    for params, needle in bad:
        with pytest.raises(FaithmapError) as info:
            check("method t", fn, params, {"n": (1, 5), "x": "(0, 1)"})
        assert needle in str(info.value) and str(info.value).startswith("method t: "), (params, str(info.value))


@pytest.mark.parametrize("value, needle", [
    ("abc", "iterations must be an integer, got str 'abc'"),
    ("1e9", "iterations must be an integer, got float"),
    ("-1", "iterations must be in [0, 100000], got -1"),
    ("10000000", "iterations must be in [0, 100000]"),
])
def test_cli_param_type_and_range_before_anything_is_written(tmp_path, capsys, value, needle):
    out = tmp_path / "out"
    rc, _, err = run_cli(["explain", "sample:coffee", "--method", "igos", "--param", f"iterations={value}", "--out", str(out)],
                        capsys)
    one_line_error(rc, err, needle)
    assert not out.exists()


def test_cli_seed_beyond_64_bits(tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli(["explain", "sample:coffee", "--method", "rise", "--seed", str(2 ** 70), "--out", str(out)],
                         capsys)
    one_line_error(rc, err, "seed must be in [0, 18446744073709551616)")
    assert not out.exists()


@pytest.fixture
def patch_clf():
    return wrap(PatchModel().eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)


@pytest.mark.parametrize("case, needle", [
    (dict(iterations="5"), "iterations must be an integer, got str '5'"),
    (dict(noise_std=float("nan")), "noise_std must be a number, got nan"),
    (dict(target=True), "got bool True"),
    (dict(target=torch.tensor([0.0])), "integer class indices"),
    (dict(images=torch.zeros(1, 1, 32, 32)), "must have 3 channels"),
    (dict(images=torch.zeros(1, 4, 32, 32)), "must have 3 channels"),
    (dict(images=[torch.full((3, 32, 32), float("nan"))] * 2), "NaN or infinite"),
    (dict(method=None), "must be named by a string"),
    (dict(iterations=-1), "iterations must be in [0, 100000], got -1"),
    (dict(seed=2 ** 70), "seed must be in [0, "),
    (dict(ig_steps=0), "ig_steps must be in [1, "),
])
def test_api_refuses_bad_inputs_with_one_line(patch_clf, case, needle):
    kw = dict(case)
    images = kw.pop("images", patch_image())
    method = kw.pop("method", "igos")
    target = kw.pop("target", 0)
    with pytest.raises(FaithmapError) as info:
        faithmap.explain(patch_clf, images, method, target=target, **{"iterations": 1, "ig_steps": 2, **kw})
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_api_device_cuda_without_cuda(patch_clf):
    with pytest.raises(FaithmapError, match="no CUDA device"):
        faithmap.explain(patch_clf, patch_image(), "saliency", target=0, device="cuda")


def test_every_registered_default_passes_its_own_check():
    """The declared types and ranges admit every method's defaults and fast settings (no false refusals)."""
    for spec in faithmap.METHODS:
        params = {k: v for k, v in spec.params.items() if v is not None}
        spec.check(params)
        spec.check({k: v for k, v in spec.fast.items() if v is not None})


def test_ambiguous_class_name_is_refused_in_the_api(lite0, coffee):
    with pytest.raises(FaithmapError, match=r"'cardigan' names 2 classes \(264, 474\)"):
        faithmap.explain(lite0, coffee, "gradcam", target="cardigan")
    e = faithmap.explain(lite0, coffee, "gradcam", target=474)
    assert int(e.target[0]) == 474


# ----------------------------------------------------------------------------------------------
# annotation files
# ----------------------------------------------------------------------------------------------
def test_json_too_deep_or_invalid_is_one_line():
    with pytest.raises(FaithmapError, match="nests too deeply"):
        parse_json("[" * 200_000 + "]" * 200_000, "deep.json")
    with pytest.raises(FaithmapError, match="not valid JSON"):
        parse_json("{", "torn.json")


def test_coco_rle_with_a_non_numeric_size(tmp_path):
    from faithmap.data.annotations import load_annotations

    coco = {"images": [{"id": 1, "file_name": "coffee.png", "width": 4, "height": 5}],
            "categories": [{"id": 1, "name": "cup"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2],
                             "segmentation": {"size": ["five", 4], "counts": [20]}}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(FaithmapError, match=r"RLE size must be two positive integers"):
        load_annotations(str(path))
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FaithmapError, match="nests too deeply"):
        load_annotations(str(path))
