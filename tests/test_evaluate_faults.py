"""``faithmap evaluate`` when the output cannot be written, when a method fails, and with hostile input:
one line, exit 2, and nothing half-written or empty left behind (issue 18, parts 3 and 4).

Faults that need another process (a read-only folder for a user who is not root, a file-size limit)
run the real command in a subprocess; a full file system is a small tmpfs where mounting is allowed."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

import faithmap
from faithmap.cli import main
from faithmap.errors import FaithmapError

import evalkit

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


@pytest.fixture(scope="module", autouse=True)
def test_methods():
    with evalkit.registered():
        yield


def one_line(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("faithmap: error:") and needle in err[0], err
    return err[0]


CLI = ["evaluate", "--methods", "test-blob", "--images", "sample:coffee", "--resolution", "4",
       "--metrics", "average_drop", "--no-progress", "--no-report"]


# ----------------------------------------------------------------------------------------------
# output faults
# ----------------------------------------------------------------------------------------------
def test_out_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert main(CLI + ["--out", str(f)]) == 2
    one_line(capsys, "exists and is not a directory")
    assert main(CLI + ["--out", str(f / "sub")]) == 2
    one_line(capsys, "is a file, not a directory")
    assert f.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["file"]


CHILD = """
import os, resource, signal, sys
sys.path.insert(0, {here!r})
if {fsize!r}:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize!r}, {fsize!r}))
import evalkit
evalkit.register()
from faithmap.cli import main
sys.exit(main({argv!r}))
"""


def run_child(argv, fsize=0, user=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, HERE, os.environ.get("PYTHONPATH", "")]),
               HOME=tempfile.gettempdir(), MPLCONFIGDIR=tempfile.mkdtemp())
    if user is not None:
        os.chmod(env["MPLCONFIGDIR"], 0o777)
    kw = {"user": user, "group": user} if user is not None else {}
    p = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, fsize=fsize, argv=argv)], env=env,
                       capture_output=True, timeout=600, cwd=cwd or tempfile.gettempdir(), **kw)
    return p.returncode, p.stderr.decode().strip().splitlines()


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nothing can be written to: a read-only bind mount for root (who may write anywhere else),
    a folder with mode 0555 for other users."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
        yield ro, "permission denied"
        os.chmod(ro, 0o755)
        return
    r = subprocess.run(["mount", "--bind", str(ro), str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"root cannot be denied a write here without a mount: {r.stderr.decode().strip()[:200]}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        yield ro, "read-only file system"
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_read_only_output_folder(read_only_dir):
    ro, reason = read_only_dir
    with pytest.raises(FaithmapError, match=f"cannot write to {ro}: permission denied"):
        evalkit.run_eval(ro)
    with pytest.raises(FaithmapError, match=reason):
        evalkit.run_eval(ro / "new")
    assert os.listdir(ro) == []


def test_file_size_limit_mid_run(tmp_path):
    """Writes past RLIMIT_FSIZE fail (EFBIG, as a full disk fails with ENOSPC): one line, and the folder the
    run created is gone (no task had finished)."""
    out = tmp_path / "out"
    rc, err = run_child(CLI + ["--out", str(out)], fsize=6000)
    assert rc == 2 and len(err) == 1 and "file too large" in err[0], err
    assert not out.exists()


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_full(small_fs):
    """A 16 KiB file system fills during the first task: one line, nothing left. Made larger, it fills after
    some tasks: they stay (whole), nothing torn is left, and once there is room the same call finishes with
    the rows of a run that never failed."""
    out = small_fs / "out"
    with pytest.raises(FaithmapError, match="no space left on the device"):
        evalkit.run_eval(out, batch_images=1)
    assert os.listdir(small_fs) == []
    subprocess.run(["mount", "-o", "remount,size=96k", str(small_fs)], check=True)
    with pytest.raises(FaithmapError, match="no space left on the device"):
        evalkit.run_eval(out, batch_images=1)
    parts = os.listdir(out / "parts")
    assert parts and all(p.startswith("part-") for p in parts)  # finished parts only, no temporary file
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_fs)], check=True)
    res = evalkit.run_eval(out, batch_images=1)
    assert res.tasks_done_before == len(parts) and res.complete
    fresh = evalkit.run_eval(small_fs / "fresh", batch_images=1)
    from faithmap.evaluation.store import comparable

    assert comparable(res.rows) == comparable(fresh.rows)


# ----------------------------------------------------------------------------------------------
# a method that fails
# ----------------------------------------------------------------------------------------------
def test_a_failing_method_leaves_nothing_that_binds(tmp_path):
    """An error inside a method: a new folder is removed; in an existing folder the run.json written
    meanwhile binds nothing, so the corrected command runs (it is not refused as 'other settings')."""
    from faithmap.registry import METHODS, register_method

    @register_method("test-boom", family="test", resolution="mask", summary="test: fails when told to")
    def boom(model, x, target, *, resolution: int = 4, fail: bool = False, batch_size=None, seed=0):
        if fail:
            raise RuntimeError("boom")
        return faithmap.explanation.Explanation(evalkit.blob(resolution, resolution, 0.4, 0.6)
                                                     .expand(x.shape[0], resolution, resolution).clone(), target)

    try:
        new = tmp_path / "new"
        with pytest.raises(RuntimeError, match="boom"):
            evalkit.run_eval(new, methods="test-boom", params={"fail": True})
        assert not new.exists()
        kept = tmp_path / "kept"
        kept.mkdir()
        with pytest.raises(RuntimeError, match="boom"):
            evalkit.run_eval(kept, methods="test-boom", params={"fail": True})
        res = evalkit.run_eval(kept, methods="test-boom", params={"fail": False})
        assert res.tasks_run == 6 and res.run["settings"]["params"]["test-boom"] == {"fail": False}
    finally:
        METHODS._specs.pop("test-boom")


# ----------------------------------------------------------------------------------------------
# hostile input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, needle", [
    ("{not json", "is corrupt (not valid JSON)"),
    ("[" * 200000 + "]" * 200000, "is corrupt"),
    ('["a list"]', "expected a JSON object"),
    ('{"methods": 5}', "'methods' should be a JSON list"),
])
def test_report_only_with_a_corrupt_run_json(tmp_path, capsys, content, needle):
    (tmp_path / "run.json").write_text(content)
    assert main(["evaluate", "--report-only", "--out", str(tmp_path)]) == 2
    one_line(capsys, needle)


def test_a_corrupt_run_json_binds_only_with_finished_tasks(tmp_path):
    """Nothing finished: the corrupt run.json is rewritten by the run. Tasks finished: refused, one line."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text("{torn")
    res = evalkit.run_eval(out, methods="test-blob", resolutions="4", metrics="deletion")
    assert res.tasks_run == 3 and json.load(open(out / "run.json"))["methods"] == ["test-blob"]
    (out / "run.json").write_text("{torn")
    with pytest.raises(FaithmapError, match="run.json is corrupt .*--overwrite"):
        evalkit.run_eval(out, methods="test-blob", resolutions="4", metrics="deletion")
    assert evalkit.run_eval(out, methods="test-blob", resolutions="4", metrics="deletion", overwrite=True).tasks_run == 3


def test_report_only_without_a_run(tmp_path, capsys):
    assert main(["evaluate", "--report-only", "--out", str(tmp_path / "nothing")]) == 2
    one_line(capsys, "holds no run.json")
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("seed, needle", [(str(2**64), "64 bits"), ("-1", "0 to 2**64-1"), ("abc", "invalid int")])
def test_seed_out_of_range(tmp_path, capsys, seed, needle):
    out = tmp_path / "o"
    assert main(CLI + ["--seed", seed, "--out", str(out)]) == 2
    one_line(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--address", "auto"], "apply to --engine ray"),
    (["--workers", "-1"], "at least 0 with --engine local"),
    (["--batch-images", "0"], "batch_images must be a whole number of at least 1"),
    (["--target", "label"], "the true labels are needed (--target label)"),
])
def test_engine_and_batch_options(tmp_path, capsys, args, needle):
    out = tmp_path / "o"
    assert main(CLI + args + ["--out", str(out)]) == 2
    one_line(capsys, needle)
    assert not out.exists()


def test_names_are_never_markup_and_never_collide(tmp_path):
    """Files named with mathtext and HTML are drawn and shown as text; 'cat 1.png' and 'cat_1.png' keep
    their own maps and thumbnails (names unique after sanitising: the one gatherer's rule); names given
    in memory that would share a file are refused."""
    import numpy as np
    from PIL import Image

    from faithmap.data import gather

    photos = evalkit.photos(4)
    folder = tmp_path / "in"
    folder.mkdir()
    files = ["x$^$y.png", "<b>bold<b> & <script>.png", "cat 1.png", "cat_1.png"]
    for f, (_, p) in zip(files, photos):
        Image.fromarray(p).save(folder / f)
    recs = gather(str(folder))
    res = evalkit.run_eval(tmp_path / "o", images=str(folder), methods="test-blob,test-random", resolutions="4",
                           metrics="deletion", report=True)
    page = open(res.files["report"]).read()
    assert "&lt;b&gt;bold&lt;b&gt; &amp; &lt;script&gt;" in page and "<script>" not in page.replace(
        "<script>window", "")
    assert "x$^$y" in page and os.path.getsize(res.files["grid_all"]) > 5000
    dirs = {r.stem for r in recs}
    assert len(dirs) == 4 and dirs == set(os.listdir(tmp_path / "o" / "maps"))
    info = json.load(open(tmp_path / "o" / "images.json"))
    assert len({v["thumbnail"] for v in info.values()}) == 4
    by_file = {os.path.basename(r.source): r.name for r in recs}
    for f, (_, p) in zip(files, photos):  # each thumbnail is its own photo
        thumb = np.asarray(Image.open(tmp_path / "o" / info[by_file[f]]["thumbnail"]))
        assert np.abs(thumb.astype(int) - p.astype(int)).max() <= 1
    with pytest.raises(FaithmapError, match="cat"):
        evalkit.run_eval(tmp_path / "m", images=[("cat 1", photos[0][1]), ("cat_1", photos[1][1])],
                         methods="test-blob", resolutions="4", metrics="deletion")
    assert not (tmp_path / "m").exists()
