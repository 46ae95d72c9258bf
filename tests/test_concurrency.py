"""Two real ``faithmap evaluate`` processes on one ``--out``: neither loses nor duplicates a finished task.

The first holds an exclusive lock on the output directory for its whole run; the second refuses
with one line (exit 2) before writing anything, and leaves the first one's folder alone (also when
both start at the same instant into a folder that does not exist yet, so both think they create it).
The runs block in a test method until the test lets them go, so the overlap is certain, not timed.
"""

import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

CHILD = """
import os, sys, time, torch
sys.path.insert(0, {here!r})
import evalkit
from faithmap.explanation import Explanation
from faithmap.registry import register_method

@register_method("test-wait", family="test", resolution="mask", summary="test: waits for a flag file")
def wait(model, x, target, *, resolution: int = 4, batch_size=None, seed=0):
    deadline = time.time() + 240
    while not os.path.exists({flag!r}) and time.time() < deadline:
        time.sleep(0.05)
    return Explanation(evalkit.blob(resolution, resolution, 0.4, 0.6).expand(x.shape[0], resolution, resolution).clone(),
                       target)

from faithmap.cli import main
sys.exit(main(["evaluate", "--methods", "test-wait", "--images", "sample:coffee", "sample:chelsea", "sample:rocket",
               "--resolution", "4", "--metrics", "average_drop", "--batch-images", "1", "--no-progress",
               "--no-report", "--save-maps", "0", "--out", {out!r}]))
"""


def start(out, flag):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", CHILD.format(here=HERE, flag=flag, out=out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def holder(out):
    try:
        return open(os.path.join(out, ".lock")).read().strip()
    except OSError:
        return ""


def finish(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        outs.append((p.returncode, o.decode(), e.decode()))
    return outs


def check_results(out):
    from faithmap.evaluation.store import Store, part_meta

    sc = Store(out).scan()
    keys = [k for p in sc.parts for k in part_meta(p)["keys"]]
    assert sorted(keys) == sorted(f"{n}|test-wait|4" for n in ("coffee", "chelsea", "rocket"))  # each task once
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(p).num_rows for p in sc.parts)
    assert rows == 3  # one metric, one target per image: every row once


def test_second_process_refuses_while_the_first_writes(tmp_path):
    out, flag = str(tmp_path / "out"), str(tmp_path / "go")
    a = start(out, flag)
    try:
        deadline = time.time() + 240
        while not holder(out).isdigit():  # A holds the lock (it writes its pid beside the flock)
            assert a.poll() is None, a.stderr.read().decode()[-600:]
            assert time.time() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        b = start(out, flag)
        (rc_b, _, err_b), = finish([b])
        assert rc_b == 2, err_b
        lines = err_b.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("faithmap: error: another faithmap process")
        assert f"pid {a.pid}" in lines[0]
        open(flag, "w").close()
        (rc_a, out_a, err_a), = finish([a])
    finally:
        open(flag, "w").close()
        if a.poll() is None:
            a.kill()
    assert rc_a == 0, err_a[-800:]
    assert "0 task(s) were already done, 3 run now, 3 in all" in out_a
    check_results(out)


def test_two_processes_started_together_into_a_new_folder(tmp_path):
    """Both find no folder and create it; one wins the lock and finishes, the other refuses and removes
    nothing of the winner's (an output folder is only removed by the process that holds its lock)."""
    out, flag = str(tmp_path / "new" / "out"), str(tmp_path / "go")
    procs = [start(out, flag), start(out, flag)]
    try:
        deadline = time.time() + 240
        while not any(p.poll() is not None for p in procs):  # the loser gives up while the winner waits
            assert time.time() < deadline, "neither run ended"
            time.sleep(0.05)
        assert os.path.isdir(out) and holder(out).isdigit()
        open(flag, "w").close()
        results = finish(procs)
    finally:
        open(flag, "w").close()
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    loser = next(e for rc, _, e in results if rc == 2)
    assert len(loser.strip().splitlines()) == 1 and "another faithmap process" in loser
    check_results(out)
    # the same command again: nothing left to do, nothing written twice
    again = start(out, flag)
    (rc, text, err), = finish([again])
    assert rc == 0 and "3 task(s) were already done, 0 run now, 3 in all" in text, err
    check_results(out)
