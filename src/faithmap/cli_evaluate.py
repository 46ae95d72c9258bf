"""``faithmap evaluate``: benchmark many methods on many images, with a report a person can read."""

from __future__ import annotations

import argparse
import sys

from .cli import add_model_args, command, model_or_name, parse_value
from .errors import FaithmapError


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
            if what == "param":  # a method, or a variant "method:name" (raises the one-line error)
                from .evaluate.presets import run_name

                canon = run_name(name)
            else:
                canon = registry.canonical(name)  # raises the one-line error naming the choices
            out.setdefault(canon, {})[key.strip().replace("-", "_")] = value
        else:
            out[k.replace("-", "_")] = value
    return out


def _args(p: argparse.ArgumentParser) -> None:
    from .evaluate.presets import PRESETS
    from .registry import METHODS, METRICS

    p.description = ("Explain every image with every method (mask methods at every --resolution, others at their "
                     "native grid), score each map with every metric, and write the results (Parquet parts; "
                     "results.csv for small runs or with --csv), summary.md/.csv, mean deletion/insertion curves, a "
                     "heatmap grid and report.html to --out. Re-running the same command resumes an interrupted run.")
    p.add_argument("--methods", default=None, help=f"comma-separated (default: the preset's, else all): {', '.join(METHODS.names())}")
    p.add_argument("--images", nargs="+", default=None, metavar="DIR|FILE|samples",
                   help="image folders (flat, or one sub-folder per class) or files, 'samples' (the six bundled photos, "
                        "the default), 'photos' (20) or sample:NAME")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="true labels of flat folders or files: CSV image,label (an index, WordNet id or class name), "
                        "ImageNet's LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt; "
                        "a class-folder tree (one sub-folder per class) is labelled by its folder names")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most the first N images (listing order)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="N images drawn with --seed (the papers' 'random validation images'; the same on any machine)")
    p.add_argument("--preset", default=None, help=f"a table of the papers: {', '.join(PRESETS)} (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and which of their methods are registered")
    add_model_args(p)
    p.add_argument("--resolution", default=None, help="mask resolutions of mask methods, comma-separated (default 28)")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated or 'all' (default: deletion, insertion, overall, average_drop, "
                        f"increase_confidence, and pointing with annotations): {', '.join(METRICS.names())}")
    p.add_argument("--out", default="faithmap_eval", help="output directory (default faithmap_eval)")
    p.add_argument("--fast", action="store_true", help="each method's quick settings")
    p.add_argument("--param", action="append", metavar="[METHOD.]KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--metric-param", action="append", metavar="METRIC.KEY=VALUE", help="metric option (repeatable)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the run (default 0); each image's randomness comes from a seed derived from it, "
                        "the image's name, the method and the resolution")
    p.add_argument("--batch-size", type=int, default=None, help="maximum images per forward pass")
    p.add_argument("--batch-images", type=int, default=None,
                   help="images per task: each method explains this many images in one call (default --batch-size)")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local (default: this process) or ray (a pool of Ray actors; pip install 'faithmap[ray]')")
    p.add_argument("--address", default=None,
                   help="ray: the address of a running Ray cluster (or 'auto'); default: start a local one")
    p.add_argument("--workers", type=int, default=None,
                   help="local: processes decoding the next tasks' images (DataLoader; default 0: one background "
                        "thread); ray: number of actors (default: one per CPU, or per GPU share with --gpus-per-worker)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per actor (e.g. 1, or 0.5 to share)")
    p.add_argument("--csv", action=argparse.BooleanOptionalAction, default=None,
                   help="also write results.csv (default: when the finished run has at most 100,000 rows)")
    p.add_argument("--target", default="top1", help="top1 (default), a class index or name, 'annotated' "
                                                     "(every annotated class of each image) or 'label' (each image's "
                                                     "ground-truth label)")
    p.add_argument("--annotations", default=None, metavar="FILE",
                   help="ground truth for the pointing game: faithmap JSON, COCO JSON or CSV (boxes in photo pixels); "
                        "the sample photos have bundled boxes")
    p.add_argument("--tolerance", type=float, default=None, help="pointing game: hit within this many pixels (default 0)")
    p.add_argument("--min-score", type=float, default=None,
                   help="pointing game: only targets the model scores above this probability (AOP uses 0.5)")
    p.add_argument("--shard", default=None, metavar="i/n", help="run every n-th task starting at the i-th (1-based)")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR", help="join the output directories of shards into --out")
    p.add_argument("--report-only", action="store_true", help="rebuild the report of --out from its files")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--no-report", action="store_true", help="write results only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--save-maps", type=int, default=12, metavar="N",
                   help="keep maps and thumbnails of the first N images for the heatmap grid (-1 all, 0 none)")
    p.add_argument("--convert", action="store_true", help="convert grayscale, RGBA and 16-bit images to 8-bit RGB")


def _list_presets() -> int:
    from .evaluate.presets import PRESETS, resolve

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
    from .evaluate.report import md_table, summary_table

    if res.markdown:
        start = res.markdown.find("## Summary")
        print(res.markdown[start:] if start >= 0 else res.markdown)
        return
    summaries = res.summary()
    metrics = [m for m in res.run.get("metrics", []) if any(s.metric == m for s in summaries)]
    if summaries:
        print(md_table(summary_table(res.run, summaries, metrics)))


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import merge, write_report
    from .evaluate.runner import evaluate
    from .registry import METHODS, METRICS

    if args.list_presets:
        return _list_presets()
    if args.report_only:
        files, md = write_report(args.out)
        print(md)
        print(f"wrote {files['report']}")
        return 0
    if args.merge:
        res = merge(args.merge, args.out, report=not args.no_report)
        _print_summary(res)
        print(f"merged {res.tasks_total} tasks from {len(args.merge)} director"
              f"{'y' if len(args.merge) == 1 else 'ies'} into {args.out}")
        if "report" in res.files:
            print(f"report: {res.files['report']}")
        return 0
    params = _params(args.param, METHODS, "param")
    mparams = _params(args.metric_param, METRICS, "metric-param")
    for k, v in mparams.items():
        if not isinstance(v, dict):
            raise FaithmapError(f"--metric-param expects METRIC.KEY=VALUE, got {k}={v!r}")
    try:
        res = evaluate(
            methods=args.methods, images=args.images or "samples", out=args.out, model=model_or_name(args), weights=args.weights,
            device=args.device, resize=args.resize, resolutions=args.resolution, metrics=args.metrics,
            preset=args.preset, fast=args.fast, params=params, metric_params=mparams, seed=args.seed,
            batch_size=args.batch_size, target=args.target, annotations=args.annotations, tolerance=args.tolerance,
            min_score=args.min_score, shard=args.shard, overwrite=args.overwrite, report=not args.no_report,
            progress=not args.no_progress, save_maps=args.save_maps, convert=args.convert,
            batch_images=args.batch_images, engine=args.engine, address=args.address, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, csv=args.csv, labels=args.labels, limit=args.limit,
            sample=args.sample)
    except KeyboardInterrupt:
        print(f"faithmap: interrupted; run the same command again to resume (finished tasks are kept in {args.out})",
              file=sys.stderr)
        return 130
    if res.skipped_methods:
        print(f"skipped (not registered): {', '.join(res.skipped_methods)}")
    if res.rows_dropped:
        print(f"resumed: removed {res.rows_dropped} unreadable result part(s); their tasks were run again")
    _print_summary(res)
    print(f"{res.tasks_done_before} task(s) were already done, {res.tasks_run} run now, {res.tasks_total} in all")
    if args.shard:
        print(f"shard {args.shard} written to {res.files['parts']}; join the shards with "
              f"`faithmap evaluate --merge DIR... --out DIR`")
    elif "report" in res.files:
        print(f"report: {res.files['report']}")
    return 0


run_evaluate.add_arguments = _args  # type: ignore[attr-defined]
command("evaluate", "benchmark methods on images with metrics; results.csv, summary and an HTML report")(run_evaluate)
