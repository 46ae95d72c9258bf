"""``faithmap gad``: GAD support models, original vs GAD maps with their hulls, and the RC/RS tables
of GAD (Mazini Rodrigues, Boutry & Najman, 2024; Tables 1-2, Fig. 6).

    faithmap gad --demo [--arch cnn,resnet] [--classes 3 8] [--method all]
    faithmap gad --data DIR --classes A B --model resnet18 --weights W.pt [--eval-data DIR2] --method ig

Every input is checked before anything is written; support models go to the cache
(``--cache-dir``, default ``~/.cache/faithmap/gad``), the pictures and tables to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

from .cli import add_model_args, command, load_model, model_description, parse_params, pick_device
from .core.batching import torch_threads
from .core.io import write_json, write_text
from .core.scores import class_index
from .errors import FaithmapError
from .gad import demo
from .gad.data import FolderImages, TensorImages
from .gad.pipeline import (CompareSettings, check_methods, distancing_record, evaluate_method, least_activated,
                           save_figure, table_cost, table_rc, table_rs, table_supports)
from .gad.support import TrainSettings, epoch_limit, model_outputs, support_models
from .registry import METHODS, check_params

DEMO_FIT = 0.03
"""Default ``--fit`` of the digits demo. The paper trains 10 epochs over thousands of photos; the
demo's 250 digits give 80 optimiser steps in 10 epochs, too few to reach the distanced outputs at
lr 4e-5 (sec. 4.2 asks for "the most accurate approximations to these new outputs")."""
DEMO_MAX_EPOCHS = 300


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demo", action="store_true",
                   help="the offline demo: scikit-learn's digits, binary CNN and residual CNN trained here")
    p.add_argument("--arch", default="cnn,resnet", help="demo architectures, comma-separated: cnn, resnet")
    p.add_argument("--demo-epochs", type=int, default=None,
                   help="epochs of the demo classifiers (default 20; fewer for quick checks)")
    p.add_argument("--data", default=None, help="training image folder with one sub-folder per class")
    p.add_argument("--eval-data", default=None, help="folder of the images to explain (default: --data)")
    p.add_argument("--convert", action="store_true", help="convert grayscale/RGBA/16-bit images to 8-bit RGB")
    p.add_argument("--classes", nargs=2, default=None, metavar=("A", "B"),
                   help="the two classes (index or name; sub-folders of --data; demo: two digits, default 3 8)")
    p.add_argument("--method", action="append", default=None,
                   help="base method(s), comma-separated or repeated; 'all' = saliency, deconvnet, gradxinput, "
                        "guidedbackprop, ig (default: all with --demo, else ig)")
    p.add_argument("--alphas", nargs="+", type=float, default=[2.0, 4.0, 6.0, 8.0],
                   help="distances of the support models (0, the original model, is always included)")
    p.add_argument("--epochs", type=int, default=10, help="support-model epochs (paper: 10)")
    p.add_argument("--fit", default=None, metavar="TOL",
                   help="train each support model past --epochs until its epoch loss is at most TOL x its initial "
                        "loss ('none': exactly --epochs; default: none, and %g with --demo)" % DEMO_FIT)
    p.add_argument("--max-epochs", type=int, default=None,
                   help="cap of --fit training (default %d with --demo, else 20 x --epochs)" % DEMO_MAX_EPOCHS)
    p.add_argument("--lr", type=float, default=4e-5, help="support-model Adam learning rate (paper: 4e-5)")
    p.add_argument("--train-batch-size", type=int, default=32, help="support-model mini-batch size")
    p.add_argument("--train-mode", action="store_true", help="train support models in train mode (batch-norm statistics)")
    p.add_argument("--fraction", type=float, default=0.5, help="fraction of pixels important in each map (GAD)")
    p.add_argument("--hull-threshold", type=float, default=0.5, help="fraction of pixels inside each hull's point set")
    p.add_argument("--hull-mode", default="fraction", choices=("fraction", "relative"),
                   help="fraction: top pixels by rank; relative: pixels >= threshold x max (Fig. 4)")
    p.add_argument("--score", default="logit", choices=("logit", "prob"), help="N_a in RS (eq. 2)")
    p.add_argument("--images", type=int, default=None,
                   help="evaluation images per class (default: all demo test images; 256 for folders)")
    p.add_argument("--figure-images", type=int, default=5, help="least-activated images per class in each figure")
    add_model_args(p, classes_flags=("--class-names",))  # --classes A B is the two classes here
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="base-method parameter (repeatable)")
    p.add_argument("--fast", action="store_true", help="the base methods' quick settings")
    p.add_argument("--batch-size", type=int, default=None, help="maximum images per forward pass of the methods")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo split, models and support training")
    p.add_argument("--cache-dir", default=None, help="support-model cache (default $FAITHMAP_CACHE/gad or ~/.cache/faithmap/gad)")
    p.add_argument("--no-cache", action="store_true", help="train in memory; read and write no cache")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all); training sums, hence the numbers, depend on it")
    p.add_argument("--out", default="gad_out", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _method_params(methods, args) -> dict[str, dict]:
    extra = parse_params(args.param)
    per = {}
    used = set()
    for m in methods:
        spec = METHODS.get(m)
        params = dict(spec.fast) if args.fast else {}
        for k, v in extra.items():
            if k in spec.params:
                params[k] = v
                used.add(k)
        check_params(spec, params)
        per[m] = params
    unused = [k for k in extra if k not in used]
    if unused:
        raise FaithmapError(f"no chosen method takes the parameter {unused[0]!r}")
    return per


def _check_numbers(args) -> list[float]:
    alphas = [a for a in args.alphas if a != 0]
    if not alphas:
        raise FaithmapError("give at least one non-zero distance in --alphas (0 is the original model)")
    if any(a < 0 for a in alphas):
        raise FaithmapError(f"distances must be positive, got {min(alphas):g}")
    if len(set(alphas)) != len(alphas):
        raise FaithmapError("--alphas repeats a value")
    for name in ("fraction", "hull_threshold"):
        v = getattr(args, name)
        if not 0 < v <= 1:
            raise FaithmapError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
    if args.epochs < 1:
        raise FaithmapError(f"--epochs must be at least 1, got {args.epochs}")
    if args.fit is None or str(args.fit).lower() == "none":
        args.fit = DEMO_FIT if (args.demo and args.fit is None) else None
    else:
        try:
            args.fit = float(args.fit)
        except ValueError:
            raise FaithmapError(f"--fit must be a number in (0, 1) or 'none', got {args.fit!r}") from None
        if not 0 < args.fit < 1:
            raise FaithmapError(f"--fit must be in (0, 1), got {args.fit:g}")
    if args.max_epochs is None:
        args.max_epochs = DEMO_MAX_EPOCHS if (args.demo and args.fit is not None) else epoch_limit(args.epochs, args.fit, None)
    if args.max_epochs < args.epochs:
        raise FaithmapError(f"--max-epochs must be at least --epochs ({args.epochs}), got {args.max_epochs}")
    if args.lr <= 0:
        raise FaithmapError(f"--lr must be positive, got {args.lr}")
    if args.train_batch_size < 1:
        raise FaithmapError(f"--train-batch-size must be at least 1, got {args.train_batch_size}")
    if args.images is not None and args.images < 1:
        raise FaithmapError(f"--images must be at least 1, got {args.images}")
    if args.batch_size is not None and args.batch_size < 1:
        raise FaithmapError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.figure_images < 0:
        raise FaithmapError("--figure-images must be at least 0")
    return sorted(alphas)


def _subset(data, labels, per_class):
    if per_class is None:
        return data
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique(sorted=True)])
    keep = keep.sort().values
    return TensorImages(data.x[keep], labels[keep])


def _setups(args):
    """(label, model, train set, eval set, (a, b), class names, record) per experiment; checks inputs."""
    if args.demo:
        if args.data or args.eval_data:
            raise FaithmapError("--demo uses scikit-learn's digits; drop --data/--eval-data or --demo")
        if model_description(args):
            raise FaithmapError("--demo trains its own digits models; --class-names, --mean, --std and --input-size "
                                "describe a --model")

        digits = demo.check_digits(args.classes or (3, 8))
        if args.demo_epochs is not None and args.demo_epochs < 1:
            raise FaithmapError("--demo-epochs must be at least 1")
        archs = [a.strip() for a in args.arch.split(",") if a.strip()]
        for a in archs:
            if a not in demo.ARCHS:
                raise FaithmapError(f"unknown demo architecture {a!r}; choose from: {', '.join(demo.ARCHS)}")
        data = demo.load_digits(digits, seed=args.seed)
        out = []
        for arch in archs:
            model, record = demo.demo_classifier(arch, data, seed=args.seed, cache_dir=args.cache_dir,
                                                 use_cache=not args.no_cache, epochs=args.demo_epochs)
            train = TensorImages(data.x_train, data.y_train)
            ev = _subset(TensorImages(data.x_test, data.y_test), data.y_test, args.images)
            out.append((arch, model, train, ev, (0, 1), data.class_names, record))
        return out
    if not args.data:
        raise FaithmapError("give --data DIR (a folder with one sub-folder per class) or --demo")
    if not args.classes:
        raise FaithmapError("give the two classes with --classes A B")
    if not os.path.isdir(args.data):
        raise FaithmapError(f"no such folder: {args.data}")
    if args.eval_data and not os.path.isdir(args.eval_data):
        raise FaithmapError(f"no such folder: {args.eval_data}")

    model = load_model(args)
    k = model.num_classes or 0
    idx = [class_index(c, model.class_names, k) for c in args.classes]
    if idx[0] == idx[1]:
        raise FaithmapError(f"the two classes must differ, got {args.classes[0]!r} and {args.classes[1]!r}")
    spec = [((c, model.class_name(i)), i) for c, i in zip(args.classes, idx)]
    train = FolderImages.from_folder(model, args.data, spec, convert=args.convert)
    ev = FolderImages.from_folder(model, args.eval_data or args.data, spec, convert=args.convert,
                                  limit=args.images or 256)
    names = [model.class_name(i) for i in idx]

    train.batch(torch.tensor([0]))  # fail early on an unreadable image (the others fail when read, also cleanly)
    ev.batch(torch.tensor([0]))
    return [(model.name, model, train, ev, (idx[0], idx[1]), names, {"arch": model.name})]


def run_gad(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise FaithmapError("--threads must be at least 1")
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    methods = check_methods(args.method or (["all"] if args.demo else ["ig"]))
    params = _method_params(methods, args)
    alphas = _check_numbers(args)
    device = pick_device(args.device)
    setups = _setups(args)
    bs = args.batch_size or (256 if args.demo else None)
    os.makedirs(args.out, exist_ok=True)
    progress = not args.quiet
    report = [f"# GAD: {', '.join(methods)}", ""]
    results_json = {"methods": methods, "alphas": [0.0, *alphas], "epochs": args.epochs, "fit": args.fit,
                    "max_epochs": args.max_epochs if args.fit is not None else None, "lr": args.lr,
                    "train_batch_size": args.train_batch_size, "threads": torch.get_num_threads(), "fraction": args.fraction,
                    "hull_threshold": args.hull_threshold, "hull_mode": args.hull_mode, "score": args.score,
                    "experiments": []}
    training = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.train_batch_size, seed=args.seed,
                             train_mode=args.train_mode, fit=args.fit,
                             max_epochs=args.max_epochs if args.fit is not None else None, eval_batch_size=bs)
    compare = CompareSettings(fraction=args.fraction, hull_threshold=args.hull_threshold, hull_mode=args.hull_mode,
                              batch_size=bs, seed=args.seed, score=args.score)
    files = []
    for label, model, train, ev, classes, names, record in setups:
        model = model.to(device)
        t_sup = time.perf_counter()
        sup = support_models(model, train, classes, alphas, training, cache_dir=args.cache_dir,
                             use_cache=not args.no_cache, progress=progress)
        sup_seconds = time.perf_counter() - t_sup
        dist = distancing_record(model, sup, train, classes, bs)
        logits = model_outputs(model, ev, bs)
        fig_idx = least_activated(logits, ev.labels, classes, args.figure_images)
        results = []
        bar = tqdm(total=len(methods) * 2 * len(ev), desc=f"GAD maps ({label})", unit="map", file=sys.stderr,
                   disable=None if progress else True, leave=False)
        try:
            for m in methods:
                r = evaluate_method(model, sup.models, ev, classes, m, compare, logits=logits, base_params=params[m],
                                    figure_index=fig_idx, progress=bar)
                results.append(r)
                if args.figure_images:
                    path = os.path.join(args.out, f"gad_{label}_{m}.png")
                    save_figure(path, model, ev, r, classes, names,
                                f"{label}: {m}, original (red) vs GAD (green) hulls")
                    files.append(path)
        finally:
            bar.close()
        section = _section(args, label, classes, names, train, ev, record, sup, sup_seconds, dist, results)
        report += section
        results_json["experiments"].append(_experiment(label, model, classes, names, train, ev, record, sup,
                                                        sup_seconds, dist, results))
        print("\n".join(section), flush=True)
    total = time.perf_counter() - t0
    report.append(f"Total: {total:.1f} s")
    results_json["seconds"] = total
    md = os.path.join(args.out, "gad_tables.md")
    write_text(md, "\n".join(report) + "\n")
    write_json(os.path.join(args.out, "gad_results.json"), results_json)
    print(f"total {total:.1f} s; wrote {len(files) + 2} files to {args.out}")
    return 0


def _section(args, label, classes, names, train, ev, record, sup, sup_seconds, dist, results) -> list[str]:
    """The report's lines of one experiment: its data, the support models and Tables 1-2 and cost."""
    acc = record.get("test_accuracy")
    head = (f"## {label}: classes {names[0]} vs {names[1]}, {len(ev)} evaluation images "
            f"({len(train)} training images)")
    if acc is not None:
        head += f"; test accuracy {100 * acc:.1f}%"
    return [head, "",
            f"Support models ({'cache' if all(sup.cached) else 'trained'}: {sup_seconds:.1f} s; "
            + (f"{args.epochs} epochs, lr {args.lr:g}" if args.fit is None else
               f"at least {args.epochs} epochs, then until the epoch loss <= {args.fit:g} x the initial loss "
               f"(at most {args.max_epochs}), lr {args.lr:g}") + f", batch {args.train_batch_size}):", "",
            table_supports(dist), "",
            "Table 1 (RC = A(CH_GAD) / A(CH_Orig); images per row):", "", table_rc(results, classes, names), "",
            "Table 2 (mean RS x 10^2; NaN-free means over defined values):", "",
            table_rs(results, classes, names), "", "Cost:", "", table_cost(results), ""]


def _experiment(label, model, classes, names, train, ev, record, sup, sup_seconds, dist, results) -> dict:
    """``gad_results.json``'s record of one experiment, with every image's RC, RS and hull areas."""
    return {
        "label": label, "model": model.name, "classes": list(classes), "class_names": list(names),
        "train_images": len(train), "eval_images": len(ev), "classifier": record,
        "support_seconds": sup_seconds, "supports": dist, "cache": sup.directory,
        "methods": {r.method: {"seconds": r.seconds, "model_images": r.images,
                               "summary": {names[i]: r.summary(c) for i, c in enumerate(classes)},
                               "per_image": {names[i]: {"rc": _list(r.rc[c]), "rs_gad": _list(r.rs_gad[c]),
                                                        "rs_sup": _list(r.rs_sup[c]),
                                                        "area_orig": _list(r.area_orig[c]),
                                                        "area_gad": _list(r.area_gad[c])}
                                             for i, c in enumerate(classes)}}
                    for r in results}}


def _list(a) -> list:
    return [None if v != v else float(v) for v in a.tolist()]


run_gad.add_arguments = _args  # type: ignore[attr-defined]
command("gad", "GAD: support regression models, original vs GAD maps and their convex-hull region metrics",
        owns_out=True)(run_gad)
