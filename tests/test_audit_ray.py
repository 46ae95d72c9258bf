"""The audit's first step through the Ray engine, unchanged: the engines make the worker the context
names (the audit's), so two Ray actors give the local engine's per-image rows and the same audit.json.
The local reference runs with one torch thread, as each actor does (float sums depend on the thread
count)."""

import pytest

ray = pytest.importorskip("ray")  # Ray is an optional extra of faithmap (faithmap[ray])

import faithmap  # noqa: E402
from faithmap.auditing.worker import COLUMNS  # noqa: E402
from faithmap.core.batching import torch_threads  # noqa: E402
from faithmap.evaluation.ray_engine import RayEngine  # noqa: E402
from faithmap.evaluation.store import Store, comparable, rows_close  # noqa: E402

import auditkit  # noqa: E402
from conftest import local_ray_cluster  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; its workers import faithmap and the test helpers from here."""
    with local_ray_cluster() as address:
        yield address


def _rows(out: str) -> list[dict]:
    return sorted(comparable(Store(out, COLUMNS).table().to_pylist()), key=lambda r: r["image"])


def test_local_and_ray_engines_give_the_same_rows_and_audit(cluster, tmp_path):
    kw = dict(images=auditkit.corner_images(16), model=auditkit.corner_model(), batch_images=4, progress=False)
    with torch_threads(1):
        local = faithmap.audit(out=str(tmp_path / "local"), **kw)
    engine = RayEngine(workers=2)
    remote = faithmap.audit(out=str(tmp_path / "ray"), engine=engine, **kw)
    assert remote.explained_now == 16 and engine.restarts == 0
    a, b = _rows(local.out), _rows(remote.out)
    assert len(a) == 16 and rows_close(a, b, rel=1e-4, abs_=1e-6) is None
    assert local.findings and auditkit.close(local.candidates, remote.candidates, 1e-6)
