"""Execution engines: who runs the jobs of a plan. The driver alone writes what they return.

* ``local`` (the default): one :class:`~.worker.Worker` in this process; the next job's photos are
  decoded in a background thread while the current job computes. Never imports Ray.
* ``ray`` (``pip install faithmap[ray]``): a pool of Ray actors, each loading the model once, pulling
  jobs as they finish (:mod:`.ray_engine`).

An engine's ``run(ctx, jobs, on_output)`` calls ``on_output`` in the driver once per finished job,
in any order; ``jobs`` is consumed lazily.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from ..errors import FaithmapError
from .worker import Context, Job, Output, Worker

ENGINES = ("local", "ray")


class LocalEngine:
    """Jobs one after the other in this process, photos of the next job decoded meanwhile."""

    name = "local"

    def __init__(self, prefetch: bool = True):
        self.prefetch = prefetch

    def run(self, ctx: Context, jobs: Iterable[Job], on_output: Callable[[Output], None]) -> None:
        worker = Worker(ctx)
        it = iter(jobs)
        job = next(it, None)
        if job is None:
            return
        if not self.prefetch:
            while job is not None:
                on_output(worker.run(job))
                job = next(it, None)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="faithmap-load") as pool:
            fut = pool.submit(worker.load, job)
            while job is not None:
                loaded = fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    fut = pool.submit(worker.load, nxt)
                on_output(worker.run(job, loaded))
                job = nxt


def make_engine(engine="local", *, address: str | None = None, workers: int | None = None,
                gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0):
    """An engine from its name (or an engine object, returned as it is); options checked here."""
    if not isinstance(engine, str):
        return engine
    name = engine.strip().lower()
    if name not in ENGINES:
        raise FaithmapError(f"unknown engine {engine!r}; choose from: {', '.join(ENGINES)}")
    for flag, v in (("workers", workers),):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise FaithmapError(f"--{flag} must be a whole number of at least 1, got {v!r}")
    for flag, v in (("gpus-per-worker", gpus_per_worker), ("cpus-per-worker", cpus_per_worker)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise FaithmapError(f"--{flag} must be a number >= 0, got {v!r}")
    if name == "local":
        if address is not None or workers is not None or gpus_per_worker:
            raise FaithmapError("--address, --workers and --gpus-per-worker apply to --engine ray")
        return LocalEngine()
    from .ray_engine import RayEngine  # imports Ray (and says how to install it when it is missing)

    return RayEngine(address=address, workers=workers, gpus_per_worker=float(gpus_per_worker),
                     cpus_per_worker=float(cpus_per_worker))
