"""``faithmap audit``: what a model relies on across a labelled dataset, verified by intervention.

A thin shell over :func:`faithmap.audit`: its options are generated from the fields of
:class:`faithmap.auditing.AuditConfig` by the same code as ``faithmap evaluate``'s
(:func:`faithmap.cli.add_config_options`), and the options given are passed on as they are.
"""

from __future__ import annotations

import argparse
import sys

from .auditing import AuditConfig, runner
from .auditing.config import OPTIONS
from .cli import add_config_options, command, given_options, notes_as_lines, parse_params
from .evaluation.plan import EvalNote

CONVERT = {"params": parse_params}
"""Options whose command-line text becomes another value (repeated KEY=VALUE -> a dict)."""


def _args(p: argparse.ArgumentParser) -> None:
    p.description = ("Explain every image of a labelled dataset, find where the maps concentrate (the same place "
                     "in many images of a class; one kind of patch, clustered in the model's own features), and "
                     "verify each candidate by removing it against random regions of the same size. Writes "
                     "audit.json and audit.html to --out; re-running the same command resumes.")
    add_config_options(p, OPTIONS)


def _line(d: dict) -> str:
    box = runner.AuditResult.region(d)
    where = "[" + ", ".join(f"{v:.2f}" for v in box) + "]" if box else "-"
    names = ", ".join(c["name"] for c in d["classes"][:3]) + (" ..." if len(d["classes"]) > 3 else "")
    e = d["effect"]["probability_drop"]
    return (f"{d['kind']:<11} {names:<30} {where:<26} {d['images']:>6} images  effect {e['mean']:+.3f} "
            f"[{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]  {'FINDING' if d['finding'] else 'no'}")


def run_audit(args: argparse.Namespace) -> int:
    opts = given_options(args, OPTIONS, CONVERT)
    out = opts.get("out", AuditConfig.out)
    try:
        with notes_as_lines(EvalNote):
            res = runner.audit(**opts)
    except KeyboardInterrupt:
        print(f"faithmap: interrupted; run the same command again to resume (explained images are kept in {out})",
              file=sys.stderr)
        return 130
    print(f"{res.explained_before} image(s) were already explained, {res.explained_now} now, {res.images} in all")
    for d in res.candidates:
        print(_line(d))
    print(f"{len(res.findings)} finding(s) among {len(res.candidates)} candidate(s); report: {res.files['page']}")
    return 0


run_audit.add_arguments = _args  # type: ignore[attr-defined]
command("audit", "find what a model relies on across a labelled dataset, verified by intervention")(run_audit)
