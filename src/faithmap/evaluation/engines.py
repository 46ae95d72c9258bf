"""Execution engines: who runs the jobs of a plan. The driver alone writes what they return.

An engine is anything with the :class:`Engine` protocol: ``name``, ``loads_model`` and
``run(ctx, jobs, on_output)``, which calls ``on_output`` in the driver once per finished job, in any
order (``jobs`` is consumed lazily). :data:`ENGINES` is the one registry of engines by name (a
factory from an :class:`EngineConfig`, a help line, a check of the options): the command line's
``--engine`` choices and the runner read it. Two are registered:

Engines make their job handler with :meth:`Context.make_worker <.worker.Context.make_worker>` (the
evaluation's :class:`~.worker.Worker`, or the class a run's context names: the audit's), so one
engine runs any run's jobs.

* ``local`` (the default): one worker in this process; the next jobs' photos are
  decoded while the current job computes, by a background thread or by ``workers`` DataLoader
  processes. Never imports Ray.
* ``ray`` (``pip install faithmap[ray]``): a pool of Ray actors, each loading the model once, pulling
  jobs as they finish (:mod:`.ray_engine`, imported only when a ray engine is made).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

from ..errors import FaithmapError
from .worker import Context, Job, Output, Worker, load_photos


@runtime_checkable
class Engine(Protocol):
    """What the runner needs of an engine."""

    name: str
    loads_model: bool
    """True: each of its workers loads a named model itself (a :class:`~.tasks.ModelSpec` is shipped);
    False: it runs on the driver's Classifier object."""

    def run(self, ctx: Context, jobs: Iterable[Job], on_output: Callable[[Output], None]) -> None:
        ...


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs an evaluation, and its options (checked by the engine's registry entry)."""

    name: str = field(default="local", metadata={
        "flag": "--engine", "help": lambda: " or ".join(f"{n} ({e.help})" for n, e in ENGINES.items()),
        "choices": lambda: list(ENGINES)})
    address: str | None = field(default=None, metadata={
        "help": "ray: the address of a running Ray cluster (or 'auto'); default: start a local one"})
    workers: int | None = field(default=None, metadata={
        "help": "local: processes decoding the next tasks' images (DataLoader; default 0: one background thread); "
                "ray: number of actors (default: one per CPU, or per GPU share with --gpus-per-worker)"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "ray: GPUs per actor (e.g. 1, or 0.5 to share)"})
    cpus_per_worker: float = field(default=1.0, metadata={
        "help": "ray: CPUs (and torch threads) per actor (default 1)"})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise FaithmapError(f"an engine is named by a string, got {self.name!r}")
        object.__setattr__(self, "name", self.name.strip().lower())
        if self.name not in ENGINES:
            raise FaithmapError(f"unknown engine {self.name!r}; choose from: {', '.join(ENGINES)}")
        for flag, v in (("gpus-per-worker", self.gpus_per_worker), ("cpus-per-worker", self.cpus_per_worker)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise FaithmapError(f"--{flag} must be a number >= 0, got {v!r}")
        entry = ENGINES[self.name]
        w = self.workers
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < entry.min_workers):
            raise FaithmapError(f"--workers must be a whole number of at least {entry.min_workers} with --engine "
                                f"{self.name}, got {w!r}")
        given = [f for f in ENGINE_OPTIONS if f not in entry.options and getattr(self, f) != _DEFAULTS[f]]
        if given:
            takers = [n for n, e in ENGINES.items() if set(given) & set(e.options)]
            raise FaithmapError(f"{' and '.join('--' + f.replace('_', '-') for f in given)} apply to --engine "
                                f"{' or '.join(takers)}")


ENGINE_OPTIONS = ("address", "gpus_per_worker", "cpus_per_worker")
"""The options of :class:`EngineConfig` that only some engines take (``EngineEntry.options``)."""
_DEFAULTS = {f: EngineConfig.__dataclass_fields__[f].default for f in ENGINE_OPTIONS}


@dataclass(frozen=True)
class EngineEntry:
    """A registered engine: how to make it from an :class:`EngineConfig`, and a line of help."""

    name: str
    factory: Callable[[EngineConfig], Engine]
    help: str
    min_workers: int = 0  # the least --workers it accepts
    options: tuple[str, ...] = ()  # the options of EngineConfig it takes besides workers


ENGINES: dict[str, EngineEntry] = {}
"""Engines by name (in registration order: the first is the default)."""


def register_engine(name: str, factory: Callable[[EngineConfig], Engine], help: str, *, min_workers: int = 0,
                    options: tuple[str, ...] = ()) -> EngineEntry:
    """Register an engine: ``factory(config) -> Engine``; it becomes a choice of ``--engine``."""
    if name in ENGINES:
        raise ValueError(f"engine {name!r} is registered twice")
    unknown = [o for o in options if o not in ENGINE_OPTIONS]
    if unknown:
        raise ValueError(f"engine {name!r}: unknown option {unknown[0]!r}")
    ENGINES[name] = EngineEntry(name, factory, help, int(min_workers), tuple(options))
    return ENGINES[name]


def make_engine(engine: EngineConfig | Any) -> Engine:
    """The engine of a run: made by the registry from an :class:`EngineConfig`, or an engine object as it is."""
    if isinstance(engine, EngineConfig):
        return ENGINES[engine.name].factory(engine)
    if not isinstance(engine, Engine):
        raise FaithmapError(f"engine must be a name ({', '.join(ENGINES)}), an EngineConfig or an object with "
                            f"name, loads_model and run(ctx, jobs, on_output); got {type(engine).__name__}")
    return engine


# ----------------------------------------------------------------------------------------------
# local
# ----------------------------------------------------------------------------------------------
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
    loads_model = False

    def __init__(self, prefetch: bool = True, workers: int = 0):
        self.prefetch = prefetch
        self.workers = int(workers)

    def run(self, ctx: Context, jobs: Iterable[Job], on_output: Callable[[Output], None]) -> None:
        worker = ctx.make_worker()
        if self.workers > 0:
            self._run_loader(worker, list(jobs), on_output)
        elif self.prefetch:
            self._run_prefetched(worker, iter(jobs), on_output)
        else:
            for job in jobs:
                on_output(worker.run(job))

    def _run_prefetched(self, worker: Worker, it, on_output: Callable[[Output], None]) -> None:
        job = next(it, None)
        if job is None:
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
        if not jobs:
            return
        loader = DataLoader(_JobPhotos(jobs, worker.model.transform, worker.ctx.config.convert), batch_size=None,
                            shuffle=False, num_workers=self.workers, prefetch_factor=2, persistent_workers=False,
                            worker_init_fn=_one_thread)
        for job, loaded in zip(jobs, loader):
            if isinstance(loaded, BaseException):
                raise loaded
            on_output(worker.run(job, loaded))


def _one_thread(_: int) -> None:
    """Decoding workers use one torch thread each (the model's threads stay the driver's)."""
    torch.set_num_threads(1)


def _local_engine(cfg: EngineConfig) -> Engine:
    return LocalEngine(workers=cfg.workers or 0)


def _ray_engine(cfg: EngineConfig) -> Engine:
    from .ray_engine import RayEngine  # lazy: imports Ray (and says how to install it when it is missing)

    return RayEngine(address=cfg.address, workers=cfg.workers, gpus_per_worker=float(cfg.gpus_per_worker),
                     cpus_per_worker=float(cfg.cpus_per_worker))


register_engine("local", _local_engine, "default: this process")
register_engine("ray", _ray_engine, "a pool of Ray actors; pip install 'faithmap[ray]'", min_workers=1,
                options=("address", "gpus_per_worker", "cpus_per_worker"))
