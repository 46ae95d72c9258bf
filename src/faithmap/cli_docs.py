"""``faithmap docs``: regenerate the README's registry tables."""

from __future__ import annotations

import os

from .cli import command
from .core.io import write_text


def run_docs(args) -> int:
    from .docs import render
    from .errors import FaithmapError

    if not os.path.isfile(args.readme):
        raise FaithmapError(f"no such file: {args.readme}")
    with open(args.readme) as fh:
        old = fh.read()
    new = render(old)
    if args.check:
        if new != old:
            raise FaithmapError(f"{args.readme} is out of date; run `faithmap docs {args.readme}`")
        return 0
    write_text(args.readme, new)
    print(f"updated the method and metric tables in {args.readme}")
    return 0


def _args(p) -> None:
    p.add_argument("readme", nargs="?", default="README.md")
    p.add_argument("--check", action="store_true", help="fail if the tables are out of date")


run_docs.add_arguments = _args  # type: ignore[attr-defined]
command("docs", "regenerate the README's method and metric tables from the registries")(run_docs)
