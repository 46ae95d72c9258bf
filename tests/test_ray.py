"""``--engine ray`` on one local Ray cluster of 2 CPUs shared by these tests.

Two actors give exactly the local engine's rows: the tasks batch the same images (the plan decides
the batches, not the engine) and each actor runs torch with one thread, so the local reference runs
with one thread too (float sums depend on the thread count). An actor killed mid-run and a driver
killed mid-run (SIGKILL, then the same command again) lose and duplicate nothing.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")  # Ray is an optional extra of faithmap (faithmap[ray]), not a peer

from faithmap.core.batching import torch_threads  # noqa: E402
from faithmap.evaluation.ray_engine import RayEngine  # noqa: E402
from faithmap.evaluation.store import Store, comparable, part_meta  # noqa: E402

import evalkit  # noqa: E402

pytestmark = pytest.mark.ray
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
KW = dict(methods="test-slow,test-blob", resolutions="4", metrics="deletion,insertion,overall,average_drop",
          params={"delay": 0.6}, batch_images=2)
N_IMAGES = 6  # 3 batches x 2 methods = 6 tasks, 12 image tasks


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; its workers import faithmap and the test helpers from here."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([SRC, HERE] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with evalkit.registered():
            yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def local_rows(cluster, tmp_path_factory):
    with torch_threads(1):
        res = evalkit.run_eval(str(tmp_path_factory.mktemp("local") / "out"), images=evalkit.photos(N_IMAGES), **KW)
    return comparable(res.rows)


def check_once(out):
    sc = Store(out).scan()
    keys = [k for p in sc.parts for k in part_meta(p)["keys"]]
    assert len(keys) == len(set(keys)) == 2 * N_IMAGES  # every task once


def test_two_workers_give_the_local_rows(cluster, local_rows, tmp_path):
    engine = RayEngine(workers=2)
    res = evalkit.run_eval(str(tmp_path / "out"), images=evalkit.photos(N_IMAGES), engine=engine, **KW)
    assert res.tasks_run == 2 * N_IMAGES and engine.restarts == 0
    assert comparable(res.rows) == local_rows
    check_once(str(tmp_path / "out"))


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(cluster, local_rows, tmp_path):
    out = str(tmp_path / "out")
    engine = RayEngine(workers=2)
    killed = []

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline:
            parts = os.path.join(out, "parts")
            if engine.actors and os.path.isdir(parts) and any(f.startswith("part-") for f in os.listdir(parts)):
                time.sleep(0.3)  # the actors are busy with their next tasks (0.6 s each)
                victim = engine.actors[0]
                ray.kill(victim)
                killed.append(victim)
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = evalkit.run_eval(out, images=evalkit.photos(N_IMAGES), engine=engine, **KW)
    t.join(5)
    assert killed and engine.restarts >= 1  # the job it held went to another actor
    assert res.tasks_run == 2 * N_IMAGES and comparable(res.rows) == local_rows
    check_once(out)


DRIVER = """
import sys
sys.path.insert(0, {here!r})
import evalkit
evalkit.register()
evalkit.run_eval({out!r}, images=evalkit.photos({n}), engine="ray", address={address!r}, workers=2, **{kw!r})
"""


def test_a_driver_killed_mid_run_resumes_with_the_same_command(cluster, local_rows, tmp_path):
    out = str(tmp_path / "out")
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(here=HERE, out=out, n=N_IMAGES, address=cluster,
                                                                 kw=KW)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = os.path.join(out, "parts")
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if os.path.isdir(parts) and len([f for f in os.listdir(parts) if f.startswith("part-")]) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"the driver ended before it could be killed: {proc.stderr.read().decode()[-800:]}")
            time.sleep(0.05)
        else:
            pytest.fail("the driver wrote nothing in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len(Store(out).scan().keys)
    assert 0 < done < 2 * N_IMAGES
    res = evalkit.run_eval(out, images=evalkit.photos(N_IMAGES), engine=RayEngine(workers=2), **KW)
    assert res.tasks_done_before == done and res.tasks_done_before + res.tasks_run == 2 * N_IMAGES
    assert comparable(res.rows) == local_rows
    check_once(out)
