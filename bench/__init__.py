"""faithmap's benchmarks, run from the repository root as ``python -m bench NAME [images] [options]``.

They live beside the package, not in it (the wheel holds no benchmark code): each one calls
faithmap's public API and prints Markdown tables of seconds and model images against reference
figures (``bench/data/*.json``, each with its source) or peer libraries (captum, pytorch-grad-cam,
Quantus, PAIR saliency: the test extras). ``python -m bench`` lists them; BENCHMARKS.md records
their figures with the exact commands. ``make bench`` runs this from the project's ``.venv``.
"""

from __future__ import annotations

import sys
from typing import Sequence

import faithmap
from faithmap.errors import FaithmapError

from . import ablations, aop, audit, cams, costs, deletion, evaluate, excitation, gather, gpu, gradients, igos, igospp  # noqa: F401
from . import audit_tier2, metrics, ties, truth_board, truth_cost, truth_leaks, xrai  # noqa: F401  (each module registers its benchmarks)
from .common import BENCHES, Options, listing, parse_args

EXIT_BAD_INPUT = 2

__all__ = ["BENCHES", "Options", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench``: run one benchmark (exit 0), list them (no name), or one line ``bench: error: ...`` (exit 2)."""
    faithmap.keep_freed_memory()  # as the faithmap command does: the recorded figures were measured with it
    try:
        name, opts = parse_args(argv)
        if name is None:
            print(listing())
            return 0
        return int(BENCHES[name](opts) or 0)
    except FaithmapError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
