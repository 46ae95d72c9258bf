"""Shared fixtures: tiny hand-built models with known answers, and the real default model."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import faithmap

torch.set_num_threads(min(2, os.cpu_count() or 1))
faithmap.keep_freed_memory()  # as the CLI does: reuse freed memory (faster CPU passes)


class PatchModel(nn.Module):
    """Two-class model whose class-0 evidence is a known patch.

    logit_0 = gain * (mean over the patch of the channel-mean image - offset); logit_1 = 0.
    A ReLU and a conv make it usable by gradient and CAM methods too.
    """

    def __init__(self, size: int = 32, patch: tuple[int, int, int, int] = (8, 16, 16, 24), gain: float = 12.0,
                 offset: float = 0.3):
        super().__init__()
        self.size = size
        self.patch = patch
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 3)
        self.act = nn.ReLU()
        weight = torch.zeros(1, 1, size, size)
        r0, r1, c0, c1 = patch
        weight[..., r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
        self.register_buffer("weight", weight)
        self.gain, self.offset = gain, offset

    def patch_mask(self, h: int | None = None) -> torch.Tensor:
        """Boolean (h, h) grid of the cells covering the patch (for an h x h map)."""
        h = h or self.size
        r0, r1, c0, c1 = self.patch
        s = self.size / h
        rows = (torch.arange(h) + 0.5) * s
        cols = (torch.arange(h) + 0.5) * s
        return ((rows >= r0) & (rows < r1))[:, None] & ((cols >= c0) & (cols < c1))[None, :]

    def forward(self, x):  # noqa: D102
        a = self.act(self.conv(x))
        s = (a * self.weight).flatten(1).sum(1)
        z = self.gain * (s - self.offset)
        return torch.stack([z, torch.zeros_like(z)], 1)


def patch_image(size: int = 32, patch=(8, 16, 16, 24), seed: int = 0) -> torch.Tensor:
    """A dark textured image with a bright patch: (1, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.1 * torch.rand(1, 3, size, size, generator=g)
    r0, r1, c0, c1 = patch
    x[..., r0:r1, c0:c1] = 0.9 + 0.1 * torch.rand(1, 3, r1 - r0, c1 - c0, generator=g)
    return x


@pytest.fixture
def patch_model():
    from faithmap.models import wrap

    return wrap(PatchModel().eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)


@pytest.fixture
def patch_input():
    return patch_image()


@pytest.fixture(scope="session")
def lite0():
    from faithmap import models

    return models.load()


@pytest.fixture(scope="session")
def coffee(lite0):
    from faithmap.data import load_sample

    return lite0.preprocess(load_sample("coffee"))


def model_state(net: nn.Module):
    """Everything a method must leave unchanged: modes, requires_grad, hooks, parameter values."""
    return (
        [m.training for m in net.modules()],
        [p.requires_grad for p in net.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
          len(getattr(m, "_backward_pre_hooks", {}))) for m in net.modules()],
        [p.detach().clone() for p in net.parameters()],
    )


def assert_state_equal(a, b):
    assert a[0] == b[0], "training modes changed"
    assert a[1] == b[1], "requires_grad changed"
    assert a[2] == b[2], "hooks left behind"
    for p, q in zip(a[3], b[3]):
        assert torch.equal(p, q), "parameters changed"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (models must load from local files only)."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def run(argv, capsys):
    """The command line in this process: (exit code, stdout, stderr)."""
    from faithmap.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


TESTS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(TESTS), "src")


@contextlib.contextmanager
def local_ray_cluster(num_cpus: int = 2):
    """A local Ray cluster whose workers import faithmap and the test helpers from this tree; yields its
    address."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([SRC, TESTS] + ([old] if old else []))
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def finished_parts(out: str) -> int:
    """How many finished parts ``out/parts`` holds."""
    folder = os.path.join(out, "parts")
    return len([f for f in os.listdir(folder) if f.startswith("part-")]) if os.path.isdir(folder) else 0


def kill_when(script: str, ready, timeout: float = 300) -> None:
    """Run ``script`` (Python source, with this tree's ``src`` and tests importable) in a child process and
    SIGKILL it as soon as ``ready()`` is true."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if ready():
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-800:]}")
            time.sleep(0.02)
        else:
            pytest.fail("the run did not get there in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def kill_after_parts(script: str, out: str, parts: int = 2) -> None:
    """:func:`kill_when` the run of ``script`` has finished ``parts`` parts in ``out``: killed between parts."""
    kill_when(script, lambda: finished_parts(out) >= parts)
