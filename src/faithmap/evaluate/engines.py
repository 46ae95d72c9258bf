"""Execution engines: who runs the jobs of a plan. The driver alone writes what they return.

* ``local`` (the default): one :class:`~.worker.Worker` in this process; the next jobs' photos are
  decoded while the current job computes, by a background thread or by ``workers`` DataLoader
  processes. Never imports Ray.
* ``ray`` (``pip install faithmap[ray]``): a pool of Ray actors, each loading the model once, pulling
  jobs as they finish (:mod:`.ray_engine`).

An engine's ``run(ctx, jobs, on_output)`` calls ``on_output`` in the driver once per finished job,
in any order; ``jobs`` is consumed lazily.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from ..errors import FaithmapError
from .worker import Context, Job, Output, Worker, load_photos

ENGINES = ("local", "ray")


class _JobPhotos:
    """The photos of job ``i`` (a map-style dataset for a DataLoader): decode errors come back as values,
    so the driver raises them as the one line they are instead of a worker's traceback."""

    def __init__(self, jobs: list[Job], transform, convert: bool):
        self.jobs, self.transform, self.convert = jobs, transform, convert

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int):
        try:
            return load_photos(self.jobs[i].images, self.transform, self.convert)
        except (FaithmapError, OSError, ValueError) as exc:
            return exc


class LocalEngine:
    """Jobs one after the other in this process. The photos of the next jobs are decoded meanwhile: by
    one background thread (``workers=0``, the default), or by ``workers`` DataLoader processes, which
    keep up with a GPU on cheap methods (Grad-CAM explains faster than one thread decodes JPEGs)."""

    name = "local"

    def __init__(self, prefetch: bool = True, workers: int = 0):
        self.prefetch = prefetch
        self.workers = int(workers)

    def run(self, ctx: Context, jobs: Iterable[Job], on_output: Callable[[Output], None]) -> None:
        worker = Worker(ctx)
        if self.workers > 0:
            self._run_loader(worker, list(jobs), on_output)
            return
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

    def _run_loader(self, worker: Worker, jobs: list[Job], on_output: Callable[[Output], None]) -> None:
        from torch.utils.data import DataLoader

        if not jobs:
            return
        loader = DataLoader(_JobPhotos(jobs, worker.model.transform, worker.ctx.convert), batch_size=None,
                            shuffle=False, num_workers=self.workers, prefetch_factor=2, persistent_workers=False,
                            worker_init_fn=_one_thread)
        for job, loaded in zip(jobs, loader):
            if isinstance(loaded, BaseException):
                raise loaded
            on_output(worker.run(job, loaded))


def _one_thread(_: int) -> None:
    """Decoding workers use one torch thread each (the model's threads stay the driver's)."""
    import torch

    torch.set_num_threads(1)


def make_engine(engine="local", *, address: str | None = None, workers: int | None = None,
                gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0):
    """An engine from its name (or an engine object, returned as it is); options checked here."""
    if not isinstance(engine, str):
        return engine
    name = engine.strip().lower()
    if name not in ENGINES:
        raise FaithmapError(f"unknown engine {engine!r}; choose from: {', '.join(ENGINES)}")
    least = 1 if name == "ray" else 0  # local: 0 = one background thread
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < least):
        raise FaithmapError(f"--workers must be a whole number of at least {least} with --engine {name}, got {workers!r}")
    for flag, v in (("gpus-per-worker", gpus_per_worker), ("cpus-per-worker", cpus_per_worker)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise FaithmapError(f"--{flag} must be a number >= 0, got {v!r}")
    if name == "local":
        if address is not None or gpus_per_worker:
            raise FaithmapError("--address and --gpus-per-worker apply to --engine ray")
        return LocalEngine(workers=workers or 0)
    from .ray_engine import RayEngine  # imports Ray (and says how to install it when it is missing)

    return RayEngine(address=address, workers=workers, gpus_per_worker=float(gpus_per_worker),
                     cpus_per_worker=float(cpus_per_worker))
