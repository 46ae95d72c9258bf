"""``faithmap docs``: regenerate the registry tables of the README and the docs pages, or the gallery."""

from __future__ import annotations

import glob
import os

from .cli import command
from .core.io import write_text
from .docs import MARKER, load_picker_data, render
from .errors import FaithmapError

DEFAULT_FILES = ("README.md", "docs/**/*.md")
"""The files ``faithmap docs`` keeps current when none are named (from the repository root)."""


def _files(named: list[str]) -> list[str]:
    if named:
        missing = [f for f in named if not os.path.isfile(f)]
        if missing:
            raise FaithmapError(f"no such file: {missing[0]}")
        return named
    found = [f for pattern in DEFAULT_FILES for f in sorted(glob.glob(pattern, recursive=True))]
    if not found:
        raise FaithmapError("no README.md or docs/ here; run `faithmap docs` from the repository root or name the files")
    return found


def run_docs(args) -> int:
    if args.gallery:
        methods = [m for m in args.methods.split(",") if m.strip()] if args.methods else None
        from .gallery import write_gallery  # lazy: matplotlib (over a second), which only --gallery needs

        for path in write_gallery(args.gallery, methods, report=not args.no_report):
            print(f"wrote {path}")
        return 0
    data = load_picker_data(args.data)
    stale = []
    for path in _files(args.files):
        with open(path, encoding="utf-8") as fh:
            old = fh.read()
        if not MARKER.search(old):
            continue
        new = render(old, data, os.path.dirname(os.path.relpath(path)) or ".")
        if new == old:
            continue
        stale.append(path)
        if not args.check:
            write_text(path, new)
            print(f"updated the generated tables in {path}")
    if args.check and stale:
        raise FaithmapError(f"{', '.join(stale)} out of date; run `faithmap docs`")
    return 0


def _args(p) -> None:
    p.add_argument("files", nargs="*", help="Markdown files with table markers (default: README.md and docs/**/*.md)")
    p.add_argument("--check", action="store_true", help="fail if a table is out of date (write nothing)")
    p.add_argument("--data", default=os.path.join("docs", "data"),
                   help="the method picker's data: method_costs.json (python -m bench costs) and picker.json")
    p.add_argument("--gallery", metavar="DIR", default=None,
                   help="instead: draw the documentation's pictures from the registry into DIR (docs/assets)")
    p.add_argument("--methods", default=None, help="--gallery: a comma-separated subset of the methods")
    p.add_argument("--no-report", action="store_true", help="--gallery: skip the report screenshot")


run_docs.add_arguments = _args  # type: ignore[attr-defined]
command("docs", "regenerate the generated tables of README.md and docs/, or the gallery (--gallery DIR)")(run_docs)
