"""``--engine ray`` on one local Ray cluster of 2 CPUs shared by these tests.

Two actors give exactly the local engine's rows: the tasks batch the same images (the plan decides
the batches, not the engine) and each actor runs torch with one thread, so the local reference runs
with one thread too (float sums depend on the thread count). An actor killed mid-run and a driver
killed mid-run (SIGKILL, then the same command again) lose and duplicate nothing.
"""

import os
import threading
import time

import pytest

ray = pytest.importorskip("ray")  # Ray is an optional extra of faithmap (faithmap[ray]), not a peer

from faithmap.core.batching import torch_threads  # noqa: E402
from faithmap.evaluation.ray_engine import RayEngine  # noqa: E402
from faithmap.evaluation.store import Store, comparable, part_meta  # noqa: E402

import evalkit  # noqa: E402
from conftest import kill_after_parts, local_ray_cluster  # noqa: E402

pytestmark = pytest.mark.ray
KW = dict(methods="test-slow,test-blob", resolutions="4", metrics="deletion,insertion,overall,average_drop",
          params={"delay": 0.6}, batch_images=2)
N_IMAGES = 6  # 3 batches x 2 methods = 6 tasks, 12 image tasks


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; its workers import faithmap and the test helpers from here."""
    with local_ray_cluster() as address, evalkit.registered():
        yield address


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
import evalkit
evalkit.register()
evalkit.run_eval({out!r}, images=evalkit.photos({n}), engine="ray", address={address!r}, workers=2, **{kw!r})
"""


def test_a_driver_killed_mid_run_resumes_with_the_same_command(cluster, local_rows, tmp_path):
    out = str(tmp_path / "out")
    kill_after_parts(DRIVER.format(out=out, n=N_IMAGES, address=cluster, kw=KW), out)
    done = len(Store(out).scan().keys)
    assert 0 < done < 2 * N_IMAGES
    res = evalkit.run_eval(out, images=evalkit.photos(N_IMAGES), engine=RayEngine(workers=2), **KW)
    assert res.tasks_done_before == done and res.tasks_done_before + res.tasks_run == 2 * N_IMAGES
    assert comparable(res.rows) == local_rows
    check_once(out)
