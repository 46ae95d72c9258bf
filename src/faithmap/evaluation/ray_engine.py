"""``--engine ray``: a pool of Ray actors, each loading the model once, pulling jobs dynamically.

The driver (the ``faithmap evaluate`` process) keeps at most one job in flight per actor, waits on
whichever finishes first (``ray.wait``) and hands the next job to the actor that just finished, so
a slow I-GOS batch never holds up the Grad-CAM batches behind it. When an actor dies (its process or
node is lost, or it is killed), the job it held is given to another actor and a replacement actor
is started; the driver writes a job's part once, when its result arrives, so nothing is lost or
written twice, and a killed driver is resumed by running the same command again. An error raised
inside a job (a bad image, a method's error) ends the run with that error.

``address``: join a running cluster (``ray start --head`` on one machine, ``ray start
--address=HEAD:6379`` on the others; ``auto`` finds it); otherwise a local Ray instance starts for
the run and stops after it. Workers read images by path, so on a cluster the images (and
``--weights``) must be at the same path on every node (a shared file system).
"""

from __future__ import annotations

import collections
import os
import time
from typing import Callable, Iterable

import torch

from ..errors import FaithmapError
from .worker import Context, Job, Output

try:
    import ray
except ImportError:  # pragma: no cover - exercised where Ray is not installed
    raise FaithmapError("--engine ray needs Ray: pip install 'faithmap[ray]'") from None

MAX_ATTEMPTS = 3
"""How many actors may die holding one job before the run gives up on it."""
_LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
         ray.exceptions.NodeDiedError)


class _Actor:
    """One Ray actor: the run's worker (:meth:`Context.make_worker`) with the model loaded once."""

    def __init__(self, ctx: Context, device: str | None, threads: int):
        torch.set_num_threads(max(1, threads))
        self.worker = ctx.make_worker(device)

    def run(self, job: Job) -> Output:
        return self.worker.run(job)

    def pid(self) -> int:
        return os.getpid()


class RayEngine:
    """Run jobs on ``workers`` Ray actors (default: one per ``cpus_per_worker`` CPUs, or per GPU share)."""

    name = "ray"
    loads_model = True  # each actor loads a named model itself (nothing large is pickled)

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, num_cpus: int | None = None):
        self.address = address
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.num_cpus = num_cpus  # of a local instance started here (None: all)
        self.actors: list = []  # the live actors while a run is going (tests kill one)
        self.restarts = 0
        self.startup_s = 0.0  # seconds until every actor had loaded the model

    def _init(self) -> bool:
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise FaithmapError(f"cannot start or join {where}: {str(exc).splitlines()[0][:200]}") from None
        return True

    def _count(self) -> int:
        if self.workers is not None:
            return self.workers
        res = ray.cluster_resources()
        if self.gpus_per_worker:
            return max(1, int(res.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(res.get("CPU", 1) // max(self.cpus_per_worker, 1e-9)))

    def run(self, ctx: Context, jobs: Iterable[Job], on_output: Callable[[Output], None]) -> None:
        started = self._init()
        device = "cuda" if self.gpus_per_worker else "cpu"  # an actor uses only what Ray reserved for it
        threads = max(1, int(self.cpus_per_worker))
        remote = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)(_Actor)
        ctx_ref = ray.put(ctx)
        try:
            self._start(remote, ctx_ref, device, threads)
            self._pull(iter(jobs), on_output, lambda dead, idle: self._replace(dead, remote, ctx_ref, device, threads,
                                                                                idle))
        finally:
            for a in self.actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            self.actors = []
            if started:
                ray.shutdown()

    def _start(self, remote, ctx_ref, device: str, threads: int) -> None:
        """Start the actors and wait until each has loaded the model (jobs would queue behind the loads anyway)."""
        t0 = time.perf_counter()
        self.actors = [remote.remote(ctx_ref, device, threads) for _ in range(self._count())]
        try:
            ray.get([a.pid.remote() for a in self.actors])
        except _LOST:
            pass  # an actor that cannot start: its first job fails over in _pull
        except ray.exceptions.RayTaskError as exc:  # the model or the specs cannot be loaded there
            _raise_cause(exc)
        self.startup_s = time.perf_counter() - t0

    def _pull(self, it, on_output: Callable[[Output], None], replace) -> None:
        """Keep one job in flight per idle actor; hand each finished job's output to ``on_output``; give
        the job of an actor that died to another (``replace`` starts a new actor in its place)."""
        idle = collections.deque(self.actors)
        retry: collections.deque[Job] = collections.deque()
        attempts: dict[int, int] = collections.Counter()
        inflight: dict = {}  # ObjectRef -> (actor, job)
        exhausted = False
        while True:
            while idle and (retry or not exhausted):
                job = retry.popleft() if retry else next(it, None)
                if job is None:
                    exhausted = True
                    break
                actor = idle.popleft()
                inflight[actor.run.remote(job)] = (actor, job)
            if not inflight:
                return
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            actor, job = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except _LOST:
                attempts[job.task.index] += 1
                if attempts[job.task.index] >= MAX_ATTEMPTS:
                    raise FaithmapError(f"{MAX_ATTEMPTS} Ray workers died while running task {job.task.index} "
                                        f"({job.task.method} on {job.images[0].name} ...); see the Ray logs") from None
                retry.append(job)
                replace(actor, idle)
                continue
            except ray.exceptions.RayTaskError as exc:
                _raise_cause(exc)
            idle.append(actor)
            on_output(out)

    def _replace(self, dead, remote, ctx_ref, device, threads, idle) -> None:
        """Start an actor in place of ``dead`` (Ray places it wherever resources are free)."""
        self.actors = [a for a in self.actors if a is not dead]
        try:
            ray.kill(dead)
        except Exception:  # noqa: BLE001
            pass
        new = remote.remote(ctx_ref, device, threads)
        self.actors.append(new)
        idle.append(new)
        self.restarts += 1


def _raise_cause(exc) -> None:
    """A job's or an actor's error, raised in the driver as what it was (a FaithmapError as its one line)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FaithmapError):
        raise FaithmapError(str(cause)) from None
    if isinstance(cause, BaseException):
        raise cause
    raise exc
