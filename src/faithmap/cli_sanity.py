"""``faithmap sanity``: the sanity checks of Adebayo et al. (2018) for a saliency method.

    faithmap sanity --method igos [--check model,data] [--model digits|efficientnet_lite0|...]
                    [--param KEY=VALUE ...] [--fast] [--n-images 8] [--epochs 3] [--out DIR]

``--check model``: cascading model-parameter randomisation, on the digits CNN (trained here in a
few seconds, default) or on ``--model`` with the given photos. ``--check data``: the digits CNN
trained on real labels against the same CNN trained on shuffled labels. Per check it writes a
plot (``sanity_<check>_<method>.png``), a Markdown table (``.md``) and the numbers (``.json``).
"""

from __future__ import annotations

import os

import torch

from . import api
from .cli import add_model_args, command, gather_images, load_model, method_params, model_description
from .core.io import write_json, write_text
from .data.digits import load_digits, train_digits_cnn
from .errors import FaithmapError
from .metrics.sanity import data_randomisation, model_randomisation, parameter_layers
from .registry import METHODS, check_params

CHECKS = ("model", "data")


def _args(p) -> None:
    p.add_argument("images", nargs="*", help="photos for --check model with a photo model (default: the samples)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS.names())}")
    p.add_argument("--check", default="model,data", help="model, data or model,data (default)")
    add_model_args(p)
    p.set_defaults(model="digits")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--fast", action="store_true", help="the method's quick settings")
    p.add_argument("--batch-size", type=int, default=None, help="maximum images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomisation, training and method")
    p.add_argument("--layers", type=int, default=None, help="randomise only the top N layers (default: all)")
    p.add_argument("--n-images", type=int, default=8, help="digits test images to explain (default 8)")
    p.add_argument("--digits-size", type=int, default=32, help="side of the upsampled digits (default 32)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the digits CNNs (default 3)")
    p.add_argument("--epochs-random", type=int, default=None, help="epochs of the random-label CNN (default: --epochs)")
    p.add_argument("--convert", action="store_true", help="convert non-RGB photos")
    p.add_argument("--out", default="faithmap_sanity", help="output directory")
    for name in ("resolution", "layer", "ablation", "base", "refine"):
        p.set_defaults(**{name: None})


def _markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| step | Spearman | Spearman of abs | SSIM |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['spearman']:.3f} ± {r['spearman_std']:.3f} | "
                     f"{r['spearman_abs']:.3f} ± {r['spearman_abs_std']:.3f} | {r['ssim']:.3f} ± {r['ssim_std']:.3f} |")
    return "\n".join(lines) + "\n"


def _checked(args):
    """The method, its parameters and the checks of ``faithmap sanity``, every flag checked (one line each)."""
    spec = METHODS.get(args.method)
    params = method_params(spec, args)
    if "seed" in spec.params and "seed" not in params:
        params["seed"] = args.seed
    check_params(spec, params)
    checks = [c.strip() for c in args.check.split(",") if c.strip()]
    bad = [c for c in checks if c not in CHECKS]
    if bad or not checks:
        raise FaithmapError(f"--check must be model, data or model,data; got {args.check!r}")
    for flag in ("n_images", "epochs", "digits_size"):
        if getattr(args, flag) < 1:
            raise FaithmapError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.layers is not None and args.layers < 1:
        raise FaithmapError("--layers must be at least 1")
    if args.epochs_random is not None and args.epochs_random < 1:
        raise FaithmapError("--epochs-random must be at least 1")
    if args.images and args.model == "digits":
        raise FaithmapError("photos need a photo model: add --model efficientnet_lite0 (the digits CNN explains digits)")
    if args.model == "digits" and model_description(args):
        raise FaithmapError("the digits CNN describes itself; --classes, --mean, --std and --input-size apply to "
                            "--model NAME with --check model")
    return spec, params, checks


def run_sanity(args) -> int:
    spec, params, checks = _checked(args)

    def explain(model, x, target):
        return api.explain(model, x, spec.name, target=target, **params).saliency

    torch.manual_seed(args.seed)
    # everything is loaded and checked before anything is written
    digits = model = x = target = layers = x_digits = y_digits = None
    if "data" in checks or args.model == "digits":
        if args.digits_size < 8:
            raise FaithmapError("--digits-size must be at least 8")
        digits = load_digits(args.digits_size, seed=args.seed)
        xt, yt = digits.test
        x_digits, y_digits = xt[:args.n_images], yt[:args.n_images]
    if "model" in checks:
        if args.model == "digits":
            model = train_digits_cnn(digits, epochs=args.epochs, seed=args.seed, size=args.digits_size)
            x, target = x_digits, y_digits
        else:
            model = load_model(args)
            photos = gather_images(args.images, args.convert)
            x = model.preprocess([arr for _, arr in photos])
            with torch.no_grad():
                target = model(x).argmax(1)
        layers = list(reversed(parameter_layers(model.net)))
        if args.layers is not None:
            layers = layers[:args.layers]
    os.makedirs(args.out, exist_ok=True)
    written = []
    if "model" in checks:
        written += _model_check(args, spec, params, model, x, target, layers, explain)
    if "data" in checks:
        written += _data_check(args, spec, params, model, digits, x_digits, y_digits, explain)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _model_check(args, spec, params, model, x, target, layers, explain) -> list[str]:
    """Cascading model randomisation: its picture, table and record; the files written."""
    from .viz.sanity import save_randomisation_plot  # lazy: matplotlib (over a second)

    res = model_randomisation(model, x, target.to(x.device), explain, layers=layers, seed=args.seed)
    rows = res.table()
    title = f"cascading randomisation of {model.name}: {spec.name}"
    stem = os.path.join(args.out, f"sanity_model_{spec.name}")
    sims = {"spearman": res.spearman, "spearman_abs": res.spearman_abs, "ssim": res.ssim}
    save_randomisation_plot(f"{stem}.png", res.steps, sims, title, maps=res.maps,
                            image=model.to_pixels(x[:1])[0].cpu())
    md = _markdown(rows, title)
    write_text(f"{stem}.md", md)
    write_json(f"{stem}.json", {"check": "model", "method": spec.name, "model": model.name, "images": int(x.shape[0]),
                                "params": {k: str(v) for k, v in params.items()}, "rows": rows})
    print(md)
    return [f"{stem}.{e}" for e in ("png", "md", "json")]


def _data_check(args, spec, params, model, digits, x_digits, y_digits, explain) -> list[str]:
    """Data randomisation on the digits (a CNN trained on real labels vs one on shuffled labels): its
    picture, table and record; the files written."""
    from .viz.sanity import save_data_randomisation_plot  # lazy: matplotlib (over a second)

    true_model = model if (model is not None and args.model == "digits") else train_digits_cnn(
        digits, epochs=args.epochs, seed=args.seed, size=args.digits_size)
    random_model = train_digits_cnn(digits, epochs=args.epochs_random or args.epochs, seed=args.seed,
                                    shuffle_labels=True, size=args.digits_size)
    res = data_randomisation(true_model, random_model, x_digits, y_digits, explain)
    rows = res.table()
    rows[0]["accuracy_real_labels"] = true_model.test_accuracy
    rows[0]["accuracy_random_labels"] = random_model.test_accuracy
    rows[0]["train_accuracy_random_labels"] = random_model.train_accuracy
    title = f"data randomisation on digits: {spec.name}"
    stem = os.path.join(args.out, f"sanity_data_{spec.name}")
    sims = {"spearman": res.spearman, "spearman_abs": res.spearman_abs, "ssim": res.ssim}
    save_data_randomisation_plot(f"{stem}.png", true_model.to_pixels(x_digits).cpu(), res.maps[0], res.maps[1], sims,
                                 f"{title} (right: random labels)")
    md = _markdown(rows, title) + (f"\ntest accuracy: real labels {true_model.test_accuracy:.3f}, random labels "
                                   f"{random_model.test_accuracy:.3f} (train {random_model.train_accuracy:.3f})\n")
    write_text(f"{stem}.md", md)
    write_json(f"{stem}.json", {"check": "data", "method": spec.name, "images": int(x_digits.shape[0]),
                                "params": {k: str(v) for k, v in params.items()}, "rows": rows})
    print(md)
    return [f"{stem}.{e}" for e in ("png", "md", "json")]


run_sanity.add_arguments = _args  # type: ignore[attr-defined]
command("sanity", "sanity checks of a saliency method: model and label randomisation (Adebayo et al. 2018)",
        owns_out=True)(run_sanity)
