"""What the benchmarks share: their registry and options, the model and photos, timing, tables, data files.

A benchmark is ``fn(opts: Options) -> int`` registered with :func:`bench`; it calls faithmap's public
API (``faithmap.explain``, ``faithmap.evaluate``, ``faithmap.models``, ``faithmap.data``,
``faithmap.metrics``, the registries) and prints its tables; ``--json FILE`` also writes them
(atomically, :func:`faithmap.core.io.write_json`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

import faithmap
from faithmap.core.io import write_json
from faithmap.data import gather
from faithmap.errors import FaithmapError
from faithmap.metrics import deletion_insertion
from faithmap.params import parse_params

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
"""Reference figures, each file with its ``source`` (:func:`reference`)."""


@dataclass(frozen=True)
class Options:
    """The options of ``python -m bench NAME`` (each benchmark reads those it uses)."""

    images: tuple[str, ...] = ()
    model: str = "efficientnet_lite0"
    weights: str | None = None
    device: str = "auto"
    resize: str | None = None
    resolution: str | None = None
    iterations: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    repeats: int = 1
    json: str | None = None
    convert: bool = False
    quick: bool = False
    compare_cpu: str | None = None


BENCHES: dict[str, Callable[[Options], int]] = {}
ONLY: dict[str, set[str]] = {}
"""Options only some benchmarks take: option -> their names (others refuse it)."""


def bench(name: str, *, takes: Sequence[str] = ()):
    """Register ``fn(opts) -> int`` as ``python -m bench NAME``; ``takes``: options of :data:`ONLY` it reads."""

    def deco(fn):
        BENCHES[name] = fn
        for opt in takes:
            ONLY.setdefault(opt, set()).add(name)
        return fn

    return deco


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (:class:`FaithmapError`)."""

    def error(self, message: str):  # noqa: D102
        raise FaithmapError(message)


def parser() -> argparse.ArgumentParser:
    """The options of every benchmark (those of the former ``faithmap bench``, plus ``bench gpu``'s)."""
    p = _Parser(prog="python -m bench", description="faithmap's benchmarks: seconds and model images "
                "against reference figures or peer libraries (BENCHMARKS.md). Without NAME: the list.")
    p.add_argument("name", nargs="?", help="the benchmark (none: list them)")
    p.add_argument("images", nargs="*", help="image files, folders, sample:NAME, samples or photos "
                   "(default: the benchmark's own, mostly the six sample photos)")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), a torchvision classifier, timm:NAME or hf:DIR")
    p.add_argument("--weights", default=None, help="local weights for --model ('random' for random weights)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--resize", default=None, choices=("crop", "squash"), help="how photos meet the model's size")
    p.add_argument("--resolution", default=None, help="mask resolution(s), comma-separated")
    p.add_argument("--iterations", type=int, default=None, help="iterations of optimisation methods")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="benchmark or method option (repeatable)")
    p.add_argument("--batch-size", type=int, default=None, help="maximum images per forward pass")
    p.add_argument("--repeats", type=int, default=1, help="timing repeats (best is reported)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--convert", action="store_true", help="convert non-RGB images")
    p.add_argument("--quick", action="store_true", help="gpu: tiny iteration counts and 2 photos (a CPU smoke run)")
    p.add_argument("--compare-cpu", default=None, metavar="FILE",
                   help="gpu: check the model-image counts against a CPU run's JSON (written with --device cpu)")
    return p


def parse_args(argv: Sequence[str] | None) -> tuple[str | None, Options]:
    """(benchmark name or None, options) from the command line; unknown names and misplaced options refused."""
    a = parser().parse_args(argv)
    if a.name is not None and a.name not in BENCHES:
        raise FaithmapError(f"unknown benchmark {a.name!r}; choose from: {', '.join(sorted(BENCHES))}")
    for opt, names in ONLY.items():
        if getattr(a, opt) not in (None, False) and a.name not in names:
            raise FaithmapError(f"--{opt.replace('_', '-')} is an option of bench {', '.join(sorted(names))} only")
    if a.repeats < 1:
        raise FaithmapError(f"--repeats must be at least 1, got {a.repeats}")
    return a.name, Options(images=tuple(a.images), model=a.model, weights=a.weights, device=a.device, resize=a.resize,
                           resolution=a.resolution, iterations=a.iterations, params=parse_params(a.param),
                           batch_size=a.batch_size, repeats=a.repeats, json=a.json, convert=a.convert, quick=a.quick,
                           compare_cpu=a.compare_cpu)


def listing() -> str:
    """One line per benchmark: its name and the first line of its docstring."""
    width = max(len(n) for n in BENCHES)
    lines = [f"{n:<{width}}  {(fn.__doc__ or '').strip().splitlines()[0]}" for n, fn in sorted(BENCHES.items())]
    return "\n".join(["usage: python -m bench NAME [images] [options]   (python -m bench --help: the options)", "",
                      *lines])


# ----------------------------------------------------------------------------------------------
# the model and the photos
# ----------------------------------------------------------------------------------------------
def load_model(opts: Options):
    """The classifier of ``--model``/``--weights``/``--device``/``--resize``; its notes printed one a line."""
    if opts.model.lower().startswith(("hf:", "huggingface:", "timm:")):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", faithmap.models.ModelNote)
        model = faithmap.models.load(opts.model, weights=opts.weights, device=opts.device)
    for note in model.notes:
        print(f"bench: note: {note}", file=sys.stderr)
    if opts.resize:
        model.resize = opts.resize
    return model


def gather_images(opts: Options, default: Sequence[str] | None = None) -> list[tuple[str, Any]]:
    """(name, uint8 array) of the images given, else of ``default`` (None: the six sample photos)."""
    paths = list(opts.images) or (list(default) if default else None)
    return [(r.name, r.load(opts.convert)) for r in gather(paths)]


def resolutions(opts: Options, default: str = "28") -> list[int]:
    """``--resolution`` as a list of ints (each at least 2)."""
    try:
        out = [int(r) for r in str(opts.resolution or default).split(",")]
    except ValueError:
        raise FaithmapError(f"--resolution expects integers, e.g. 28,224; got {opts.resolution!r}") from None
    if any(r < 2 for r in out):
        raise FaithmapError("--resolution must be at least 2")
    return out


def reference(name: str) -> dict:
    """The reference figures of ``bench/data/<name>.json`` (its ``figures``; ``source`` says where they come from)."""
    with open(os.path.join(DATA, f"{name}.json"), encoding="utf-8") as fh:
        return json.load(fh)["figures"]


# ----------------------------------------------------------------------------------------------
# timing and tables
# ----------------------------------------------------------------------------------------------
def explain_and_curves(model, x, method: str, params: dict[str, Any], batch_size: int | None):
    """``(explanation, deletion/insertion curves)`` of ``method`` with ``params`` on ``x``, the run's
    ``--batch-size`` (when given) applied to both."""
    p = dict(params)
    if batch_size is not None:
        p["batch_size"] = batch_size
    e = faithmap.explain(model, x, method, **p)
    return e, deletion_insertion(model, x, e.saliency, e.target, batch_size=batch_size)


def machine() -> str:
    """One line describing where the benchmark ran."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {dev}, "
            f"torch {torch.__version__}, python {sys.version.split()[0]}")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table; ``columns`` = (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key, "")
            cells.append(format(v, fmt) if isinstance(v, (int, float)) and fmt else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_row(rows: Sequence[dict[str, Any]], label_key: str, label: str = "mean") -> dict[str, Any]:
    """The mean of each numeric column that every row has, labelled ``label`` under ``label_key``."""
    out: dict[str, Any] = {label_key: label}
    for k in rows[0]:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        if vals and len(vals) == len(rows):
            out[k] = sum(vals) / len(vals)
    return out


def dump(path: str | None, obj: Any) -> None:
    """Write ``obj`` to ``path`` as JSON (atomically), if a path is given."""
    if path:
        write_json(path, obj)
