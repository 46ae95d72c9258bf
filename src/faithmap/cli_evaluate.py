"""``faithmap evaluate``: benchmark many methods on many images, with a report a person can read.

A thin shell over :func:`faithmap.evaluation.evaluate`: its options are generated from the fields of
:class:`faithmap.evaluation.RunConfig` (flag, help, type; the model options shared with every command;
:func:`faithmap.cli.add_config_options`), and the options given are passed on as they are. ``--merge``, ``--report-only`` and ``--list-presets``
are actions of the command, not settings of a run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli import add_config_options, command, given_options, notes_as_lines, parse_value
from .errors import FaithmapError
from .evaluation import RunConfig, merge, runner, write_report
from .evaluation.config import OPTIONS
from .evaluation.plan import EvalNote
from .evaluation.presets import PRESETS, resolve, run_name
from .evaluation.report import md_table, summary_table
from .registry import METHODS, METRICS

ACTIONS = ("list_presets", "merge", "report_only")
"""Parser destinations that are actions of the command, not options of a run."""


def _params(items: list[str] | None, registry, what: str) -> dict:
    """``KEY=VALUE`` (shared) and ``NAME.KEY=VALUE`` (for one method or metric) -> dict."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise FaithmapError(f"--{what} expects KEY=VALUE or NAME.KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        value = parse_value(v)
        if "." in k:
            name, key = k.rsplit(".", 1)
            # a method, or a variant "method:name"; a metric (each raises the one-line error naming the choices)
            canon = run_name(name) if what == "param" else registry.canonical(name)
            out.setdefault(canon, {})[key.strip().replace("-", "_")] = value
        else:
            out[k.replace("-", "_")] = value
    return out


def _metric_params(items: list[str] | None) -> dict:
    mparams = _params(items, METRICS, "metric-param")
    for k, v in mparams.items():
        if not isinstance(v, dict):
            raise FaithmapError(f"--metric-param expects METRIC.KEY=VALUE, got {k}={v!r}")
    return mparams


CONVERT = {"params": lambda items: _params(items, METHODS, "param"), "metric_params": _metric_params}
"""Options whose command-line text becomes another value (repeated KEY=VALUE -> a dict)."""


def _args(p: argparse.ArgumentParser) -> None:
    p.description = ("Explain every image with every method (mask methods at every --resolution, others at their "
                     "native grid), score each map with every metric, and write the results (Parquet parts; "
                     "results.csv for small runs or with --csv), summary.md/.csv, mean deletion/insertion curves, a "
                     "heatmap grid and report.html to --out. Re-running the same command resumes an interrupted run.")
    act = p.add_argument_group("actions instead of a run")
    act.add_argument("--list-presets", action="store_true", help="list the presets and which of their methods are "
                                                                 "registered")
    act.add_argument("--merge", nargs="+", default=None, metavar="DIR", help="join the output directories of shards "
                                                                            "into --out")
    act.add_argument("--report-only", action="store_true", help="rebuild the report of --out from its files")
    add_config_options(p, OPTIONS)


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as keywords of :func:`faithmap.evaluate`."""
    return given_options(args, OPTIONS, CONVERT)


def _list_presets() -> int:
    for name in PRESETS:
        rp = resolve(name)
        p = rp.preset
        print(f"{name}: {p.title} [{p.source}]")
        print(f"    methods: {', '.join(f'{rp.labels[m]} ({m})' for m in rp.methods) or 'none registered'}")
        if rp.skipped_methods:
            print(f"    not registered (skipped): {', '.join(rp.skipped_methods)}")
        print(f"    resolutions: {', '.join(map(str, p.resolutions)) or 'native grids only'}; metrics: {', '.join(p.metrics)}")
    return 0


def _print_summary(res) -> None:
    if res.markdown:
        start = res.markdown.find("## Summary")
        print(res.markdown[start:] if start >= 0 else res.markdown)
        return
    summaries = res.summaries()
    metrics = [m for m in res.run.get("metrics", []) if any(s.metric == m for s in summaries)]
    if summaries:
        print(md_table(summary_table(res.run, summaries, metrics)))


def _evaluate(opts: dict):
    """:func:`faithmap.evaluate` with the notes of the run (:class:`EvalNote`) printed as one ``faithmap: note:``
    line each, when they happen (other warnings are shown as usual)."""
    with notes_as_lines(EvalNote):
        return runner.evaluate(**opts)


def _merge(args: argparse.Namespace, out: str, report: bool) -> int:
    res = merge(args.merge, out, report=report)
    _print_summary(res)
    print(f"merged {res.tasks_total} tasks from {len(args.merge)} director"
          f"{'y' if len(args.merge) == 1 else 'ies'} into {out}")
    if "report" in res.files:
        print(f"report: {res.files['report']}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    opts = options(args)
    out = opts.get("out", RunConfig.out)
    if args.list_presets:
        return _list_presets()
    if args.report_only:
        files, md = write_report(out)
        print(md)
        print(f"wrote {files['report']}")
        return 0
    if args.merge:
        return _merge(args, out, opts.get("report", True))
    try:
        res = _evaluate(opts)
    except KeyboardInterrupt:
        print(f"faithmap: interrupted; run the same command again to resume (finished tasks are kept in {out})",
              file=sys.stderr)
        return 130
    if res.skipped_methods:
        print(f"skipped (not registered): {', '.join(res.skipped_methods)}")
    if res.rows_dropped:
        print(f"resumed: removed {res.rows_dropped} unreadable result part(s); their tasks were run again")
    _print_summary(res)
    print(f"{res.tasks_done_before} task(s) were already done, {res.tasks_run} run now, {res.tasks_total} in all")
    if opts.get("shard"):
        print(f"shard {opts['shard']} written to {res.files['parts']}; join the shards with "
              f"`faithmap evaluate --merge DIR... --out DIR`")
    elif "report" in res.files:
        print(f"report: {res.files['report']}")
    return 0


run_evaluate.add_arguments = _args  # type: ignore[attr-defined]
command("evaluate", "benchmark methods on images with metrics; results.csv, summary and an HTML report")(run_evaluate)
