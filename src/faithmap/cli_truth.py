"""``faithmap truth``: score every method against evidence the model is known to use.

    faithmap truth [--tier 0,1,2] [--methods all|NAME,...] [--seeds 3] [--rho 0.5,...] [--images-per-scenario N]
                   [--device auto] [--out DIR] [--quick] [--fast|--no-fast] [--cache-dir DIR]

A thin shell over :func:`faithmap.truth.run`: the flags make one :class:`faithmap.truth.TruthConfig`
(checked before anything is written); the command prints each tier's leaderboard and writes
``parts/``, ``truth.json`` and ``truth.html`` to ``--out``. A failure leaves no folder behind.
"""

from __future__ import annotations

import argparse
import sys

from .cli import command, pick_device


def _args(p: argparse.ArgumentParser) -> None:
    p.description = ("Ground truth: models whose evidence is known (tier 0 by construction; tiers 1-2 trained, checked "
                     "by intervention); every method's maps scored by pointing game, evidence mass, pixel AUROC and "
                     "(tier 0) mass where the model cannot look, beside the proxy metrics and how far each proxy "
                     "agrees with the truth.")
    p.add_argument("--tier", default="0,1,2", help="tiers, comma-separated (default 0,1,2)")
    p.add_argument("--methods", default="all", help="'all' (default; methods that cannot run on a model are skipped "
                                                    "and said) or comma-separated names")
    p.add_argument("--seeds", type=int, default=None, help="model seeds 0..N-1 (default 3; --quick 1)")
    p.add_argument("--rho", default=None, help="tier-2 watermark agreement rates, comma-separated "
                                               "(default 0.5,0.75,0.9,1.0; --quick 0.5,1.0)")
    p.add_argument("--images-per-scenario", type=int, default=None,
                   help="images explained per scenario and seed (default 8; --quick 2)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default="faithmap_truth", help="output folder (default faithmap_truth)")
    p.add_argument("--quick", action="store_true", help="a CI-sized run: one model seed, the small CNN, tier 2 at "
                                                        "rho 0.5 and 1.0, fast settings, coarse proxy curves")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="every method at its fast settings (--no-fast: every method at its defaults; default: fast, "
                        "except I-GOS, iGOS++, RISE, occlusion and Extremal Perturbation in a full run)")
    p.add_argument("--arch", default=None, help="tier 1-2 architectures: cnn, vit, resnet18 (default cnn,vit; "
                                                "+resnet18 on CUDA; --quick cnn)")
    p.add_argument("--trunk", default=None, help="tier-0 trunks: cnn, lite0 (default both; --quick cnn)")
    p.add_argument("--cache-dir", default=None, help="where trained tier 1-2 weights are cached by seed")
    p.add_argument("--batch-size", type=int, default=None, help="maximum images per forward pass")
    p.add_argument("--no-proxies", action="store_true", help="skip the proxy metrics")
    p.add_argument("--progress", action="store_true", help="print each method as it finishes")


def _board_lines(result, tier: int) -> list[str]:
    from .truth.report import leaderboard_rows  # lazy: faithmap --help builds every command's parser; the truth package loads only when it runs

    rows = leaderboard_rows(result.leaderboard(tier), tier)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def run_truth(args: argparse.Namespace) -> int:
    from .truth import run  # lazy: see above

    result = run(tiers=args.tier, methods=args.methods, seeds=args.seeds, images_per_scenario=args.images_per_scenario,
                 device=pick_device(args.device), out=args.out, quick=args.quick, fast=args.fast,
                 cache_dir=args.cache_dir, batch_size=args.batch_size, proxies=not args.no_proxies,
                 progress=args.progress, archs=args.arch, trunks=args.trunk, rhos=args.rho)
    for tier, why in result.unavailable.items():
        print(f"faithmap: note: {why}", file=sys.stderr)
    for r in result.records:
        if not r.passed:
            print(f"faithmap: note: {r.failed_line()}", file=sys.stderr)
    from .truth.report import use_line  # lazy: see above

    for r in result.records:
        if r.tier > 0 and r.info.get("uses"):
            print(f"tier {r.tier} {r.name} measured use, {use_line(r)}")
    for tier in result.config.tiers:
        if result.leaderboard(tier):
            print(f"tier {tier} (all scenarios, mean [95% interval]):")
            print("\n".join(_board_lines(result, tier)))
    parts = result.summary.get("seconds_by_part", {})
    print("seconds by part: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"{result.seconds:.1f} s; wrote {len(result.written)} files to {args.out} (truth.json, truth.html, parts/)")
    return 0


run_truth.add_arguments = _args  # type: ignore[attr-defined]
command("truth", "ground truth: score every method against evidence the model is known to use", owns_out=True)(run_truth)
