"""The ``faithmap`` command line.

Every bad input ends with one line ``faithmap: error: ...`` on stderr and exit status 2; all inputs
are checked before any file is written, and every file is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import warnings
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from . import api, models
from ._discover import import_submodules
from ._version import __version__
from .api import DEFAULT_METHOD, TqdmProgress
from .core.batching import model_guard
from .core.device import mps_unsupported, resolve_device
from .core.io import output_dir, save_npy, write_json
from .core.memory import keep_freed_memory
from .core.perturb import grid_size, make_baseline
from .core.scores import resolve_targets, topk
from .data import gather, safe_name
from .docs import method_page, metric_page
from .errors import FaithmapError
from .metrics.deletion import deletion_insertion, images_at_fraction
from .models import check_input_size, check_stats
from .models.layers import get_layer
from .params import parse_params, parse_value  # noqa: F401  (the sub-commands' --param)
from .registry import METHODS, METRICS, check_class_count, check_params

EXIT_BAD_INPUT = 2

# sub-command name -> (help, add_arguments, run); modules ``faithmap/cli_<name>.py`` add theirs with
# :func:`command` (they are imported automatically)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


OWNS_OUT: set[str] = set()
"""Sub-commands whose ``--out`` folder is made for them and removed again if they fail (see :func:`main`)."""


def command(name: str, help: str, *, owns_out: bool = False):
    """Register a sub-command: decorate ``run(args) -> int``; ``run.add_arguments(parser)`` is optional.

    ``owns_out``: :func:`main` runs the command inside :func:`faithmap.core.io.output_dir` for its
    ``--out``: the folder is checked and created, and removed again (with what the command wrote)
    when the command fails and the folder did not exist before. Commands whose partial output is
    meant to survive a failure (``evaluate`` resumes) manage their folder themselves.
    """

    def deco(run):
        COMMANDS[name] = (help, getattr(run, "add_arguments", lambda p: None), run)
        if owns_out:
            OWNS_OUT.add(name)
        return run

    return deco


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str):  # noqa: D102
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        raise FaithmapError(f"{sub}: {message}" if sub else message)


# ----------------------------------------------------------------------------------------------
# helpers shared by sub-commands
# ----------------------------------------------------------------------------------------------
def pick_device(name: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps (:func:`faithmap.core.device.resolve_device`)."""
    return str(resolve_device(name))


def gather_images(paths: list[str], convert: bool) -> list[tuple[str, Any]]:
    """(name, uint8 array) for each input, or the sample photos: a thin call of :func:`faithmap.data.gather`
    (files, folders, class-folder trees, ``sample:NAME``, ``samples``: the six, ``photos``: the 20). Names are unique after
    :func:`faithmap.data.safe_name`, which every per-image output file name must use."""
    return [(r.name, r.load(convert)) for r in gather(paths or None)]


def parse_triple(text: str | None, flag: str) -> tuple[float, float, float] | None:
    """``--mean``/``--std``: three numbers separated by commas (``0.485,0.456,0.406``)."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        nums = tuple(float(p) for p in parts)
    except ValueError:
        raise FaithmapError(f"{flag} must be three numbers separated by commas (R,G,B), got {text!r}") from None
    if len(nums) != 3:
        raise FaithmapError(f"{flag} must be three numbers separated by commas (R,G,B), got {len(nums)}: {text!r}")
    return nums  # type: ignore[return-value]


def model_description(args: argparse.Namespace) -> dict[str, Any]:
    """``--classes``/``--mean``/``--std``/``--input-size`` as keywords of :func:`faithmap.models.load`
    (only those given), checked: one line for a bad value."""
    desc = {"class_names": getattr(args, "class_names", None), "mean": parse_triple(getattr(args, "mean", None), "--mean"),
            "std": parse_triple(getattr(args, "std", None), "--std"), "input_size": getattr(args, "input_size", None)}
    check_stats(desc["mean"], desc["std"])
    check_input_size(desc["input_size"])
    return {k: v for k, v in desc.items() if v is not None}


def model_or_name(args: argparse.Namespace):
    """``--model`` as a name, or, when the command line describes it (``--classes``, ``--mean``, ...),
    the described model, loaded (for commands that load models by name themselves)."""
    return load_model(args) if model_description(args) else args.model


def load_model(args: argparse.Namespace):
    """The model of ``--model``/``--weights``/``--device``/``--resize`` and the description flags
    (``--classes``, ``--mean``, ``--std``, ``--input-size``); what the loader approximated or fell back
    to (e.g. a model folder without a preprocessor config) is printed as ``faithmap: note:``."""
    desc = model_description(args)  # bad values fail before any weights are read
    if str(args.model).lower().startswith(("hf:", "huggingface:", "timm:")):
        # the command owns its process: no hub look-ups by transformers/timm, whatever they are asked
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", models.ModelNote)  # printed below as one line each
        model = models.load(args.model, weights=args.weights, device=pick_device(args.device), **desc)
    for note in model.notes:
        print(f"faithmap: note: {note}", file=sys.stderr)
    resize = getattr(args, "resize", None)
    if resize:
        model.resize = resize
    return model


def add_model_args(p: argparse.ArgumentParser, classes_flags: tuple[str, ...] = ("--classes", "--class-names")) -> None:
    """The model options every command that loads a model shares; ``classes_flags`` names the class-names
    option (``faithmap gad`` has a ``--classes A B`` of its own and keeps ``--class-names``)."""
    p.add_argument("--model", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), a torchvision classifier (resnet50), timm:NAME "
                        "(timm.create_model, needs faithmap[timm]) or hf:DIR (a transformers save_pretrained "
                        "folder, needs faithmap[hf]); see `faithmap models`")
    p.add_argument("--weights", default=None,
                   help="local weights for --model: a state dict or .safetensors file ('random' for random weights); "
                        "hf:DIR models take theirs from the folder")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--resize", default=None, choices=("crop", "squash"),
                   help="crop: shorter side to the model's size, centre crop; squash: whole photo resized "
                        "(default: the model's own, crop for most)")
    p.add_argument(*classes_flags, dest="class_names", default=None, metavar="FILE",
                   help="the model's class names: one per line, or JSON (a list, or an object index -> name); "
                        "they name the targets (--target NAME), the top-5 and the pictures")
    p.add_argument("--mean", default=None, metavar="R,G,B",
                   help="the model's input normalisation mean, three numbers (default: the model's own; "
                        "ImageNet's for a custom model)")
    p.add_argument("--std", default=None, metavar="R,G,B", help="the model's input normalisation std, three positive numbers")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="the model's input side in pixels (at least 32; default: the model's own, 224 for most)")


def add_option(p: argparse.ArgumentParser, o) -> None:
    """The flag of one option of a run's config (:class:`faithmap.evaluation.config.Option`), from its field:
    the type and action from its type and default, the help and extra argparse keywords from its metadata.
    Unset options are left out of the namespace (the config's defaults apply)."""
    kw: dict[str, Any] = {"dest": o.name, "default": argparse.SUPPRESS, "help": o.help}
    kw.update(o.field.metadata.get("argparse") or {})
    choices = o.field.metadata.get("choices")
    if choices is not None:
        kw["choices"] = choices()
    if o.scalar is bool and o.default is None:
        kw["action"] = argparse.BooleanOptionalAction
    elif o.scalar is bool:
        kw["action"] = "store_false" if o.default else "store_true"
    elif o.scalar is not None and "action" not in kw:
        kw["type"] = o.scalar
    p.add_argument(o.flag, **kw)


def add_config_options(p: argparse.ArgumentParser, options) -> None:
    """The flags of a command that is a thin shell over a run's config (``evaluate``, ``audit``): one per
    option, in order; the model options (``shared`` fields) are the flags every command shares
    (:func:`add_model_args`)."""
    shared = False
    for o in options:
        if not o.field.metadata.get("shared"):
            add_option(p, o)
        elif not shared:  # --model, --weights, --device, --resize: the flags every command shares
            add_model_args(p)
            shared = True


def given_options(args: argparse.Namespace, options, convert: dict[str, Callable] | None = None) -> dict[str, Any]:
    """The options given on the command line, as keywords of the library function; ``convert`` maps an
    option to the parser of its command-line text (repeated ``KEY=VALUE`` -> a dict)."""
    given = {o.name: getattr(args, o.name) for o in options if hasattr(args, o.name)}
    model_text = {"mean": lambda t: parse_triple(t, "--mean"), "std": lambda t: parse_triple(t, "--std")}
    for name, fn in {**model_text, **(convert or {})}.items():  # the shared model flags' text, then the command's
        if name in given:
            given[name] = fn(given[name])
    return given


@contextlib.contextmanager
def notes_as_lines(category: type[Warning]):
    """Inside the block, warnings of ``category`` (a run's notes, e.g. ``EvalNote``) are printed as one
    ``faithmap: note:`` line each, when they happen; other warnings are shown as usual."""
    show = warnings.showwarning

    def note(message, cat, *args, **kwargs):
        if issubclass(cat, category):
            print(f"faithmap: note: {message}", file=sys.stderr)
        else:
            show(message, cat, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", category)
        warnings.showwarning = note  # restored when the block ends
        yield


# ----------------------------------------------------------------------------------------------
# faithmap explain
# ----------------------------------------------------------------------------------------------
def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="image files or directories (default: the bundled sample photos)")
    p.add_argument("--method", default=None,
                   help=f"gradcam (default: about a second a photo on a CPU), igos (the I-GOS paper's, minutes a photo "
                        f"on a CPU), or one of: {', '.join(METHODS.names())}")
    p.add_argument("--resolution", type=int, default=None, help="mask resolution of mask methods (default 28)")
    p.add_argument("--target", default="top1", help="top1, a class index or a class name")
    add_model_args(p)
    p.add_argument("--out", default="faithmap_out", help="output directory")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--fast", action="store_true", help="the method's quick settings (fewer iterations)")
    p.add_argument("--batch-size", type=int, default=None, help="maximum images per forward pass")
    p.add_argument("--seed", type=int, default=None, help="random seed of stochastic methods")
    p.add_argument("--fraction", type=float, default=0.1, help="fraction of cells shown in the strip's deletion/insertion images")
    p.add_argument("--convert", action="store_true", help="convert grayscale, RGBA and 16-bit images to 8-bit RGB")
    p.add_argument("--layer", default=None, help="layer of CAM methods (e.g. features.17)")
    p.add_argument("--ablation", default=None, help="ablation switch of methods that have them")
    p.add_argument("--base", default=None, help="AOP: the activation method of stage 1")
    p.add_argument("--refine", default=None, help="AOP: the mask optimiser of stage 2")


def method_params(spec, args: argparse.Namespace) -> dict[str, Any]:
    """Method keyword arguments from the command line: --fast, named options, then --param."""
    params: dict[str, Any] = dict(spec.fast) if args.fast else {}
    named = {"resolution": args.resolution, "batch_size": args.batch_size, "seed": args.seed,
             "layer": getattr(args, "layer", None), "ablation": getattr(args, "ablation", None),
             "base": getattr(args, "base", None), "refine": getattr(args, "refine", None)}
    for k, v in named.items():
        if v is not None:
            params[k] = v
    params.update(parse_params(args.param))
    if not args.fast:
        return params
    known = spec.params
    return {k: v for k, v in params.items() if k in known or k not in spec.fast}


IGOS_COST = "15 s a photo on a quiet 2-core CPU, over 3 min on a busy one"
"""What I-GOS (the papers' method) costs per photo: ``faithmap explain sample:coffee --method igos`` took
14.5 s on a quiet 2-core CPU (BENCHMARKS.md) and 200 s on the same CPU shared with four other jobs
(Grad-CAM: about 1 s there); said once when ``faithmap explain`` runs its default method."""


def _check_explain(args: argparse.Namespace):
    """The method, its parameters and the model of ``faithmap explain``, every input checked before
    anything is written; returns (spec, params, model, [(name, x, logits, target)])."""
    spec = METHODS.get(args.method or DEFAULT_METHOD)
    params = method_params(spec, args)
    check_params(spec, params)
    if not 0 <= args.fraction <= 1:
        raise FaithmapError(f"--fraction must be between 0 and 1, got {args.fraction}")
    images = gather_images(args.images, args.convert)
    model = load_model(args)
    if isinstance(params.get("layer"), str) and params["layer"] != "input":  # "input": the pixels (rule methods)

        get_layer(model.net, params["layer"])  # a bad --layer fails before any photo is processed
    batch = [(stem, model.preprocess(arr)) for stem, arr in images]
    with model_guard(model), torch.no_grad():
        logits = [model(x) for _, x in batch]
    for lg in logits[:1]:
        check_class_count(model, lg)  # --classes of another count than the model's logits
    targets = [resolve_targets(lg, args.target, model.class_names) for lg in logits]
    if spec.resolution == "mask":
        res = params.get("resolution", spec.params.get("resolution", 28))
        h, w = grid_size(res)
        if min(h, w) < spec.min_resolution or max(h, w) > model.input_size:
            raise FaithmapError(f"method {spec.name} cannot use resolution {res}: choose "
                                f"{spec.min_resolution} to {model.input_size}")
    return spec, params, model, [(stem, x, lg, t) for (stem, x), lg, t in zip(batch, logits, targets)]


def _explain_image(args, spec, params, model, stem: str, x, logits, t) -> dict[str, Any]:
    """Explain one photo, write its five files and return its summary (printed by :func:`run_explain`)."""
    from . import viz  # lazy: viz imports matplotlib (over a second), which `faithmap explain` needs only here

    probs, idx = topk(logits, 5)
    # progress inside the image: a bar over the iterations of iterative methods (off when stderr is no terminal)
    bar = TqdmProgress(f"{stem}: {spec.name}", leave=False, disable=None)
    exp = api.explain(model, x, spec.name, target=t, progress=bar, **params)  # looked up per call: replaceable
    curves = deletion_insertion(model, x, exp.saliency, exp.target, batch_size=params.get("batch_size"))
    del_img, ins_img = images_at_fraction(x, exp.saliency, args.fraction, make_baseline("blur", x))
    with model_guard(model), torch.no_grad():
        p = torch.softmax(model(torch.cat([x, del_img, ins_img])), 1)[:, int(t)]
    pix = model.to_pixels(x)[0]
    sal = exp.saliency[0].detach().float().cpu()
    cls = model.class_name(int(t))
    file_stem = f"{safe_name(stem)}_{spec.name}"  # unique per image (the gatherer guarantees it)
    prefix = os.path.join(args.out, file_stem)
    title = f"{stem}: {spec.name} for '{cls}' (p={float(p[0]):.3f})"
    viz.save_heatmap(f"{prefix}_heatmap.png", pix, sal, title)
    save_npy(f"{prefix}_map.npy", sal.numpy().astype(np.float32))
    viz.save_curves(f"{prefix}_curves.png", curves.fractions.cpu(), curves.deletion[0].cpu(),
                    curves.insertion[0].cpu(), title)
    pct = f"{100 * args.fraction:.0f}%"
    viz.save_strip(f"{prefix}_strip.png", [
        (pix, f"input  p={float(p[0]):.3f}"),
        (viz.overlay(pix, sal), f"{spec.name} saliency"),
        (model.to_pixels(del_img)[0], f"deletion {pct}  p={float(p[1]):.3f}"),
        (model.to_pixels(ins_img)[0], f"insertion {pct}  p={float(p[2]):.3f}"),
    ], title)
    summary = {
        "image": stem, "method": spec.name, "model": model.name, "target": int(t), "target_name": cls,
        "target_probability": float(p[0]),
        "top5": [{"class": int(i), "name": model.class_name(int(i)), "probability": float(v)}
                 for v, i in zip(probs[0], idx[0])],
        "deletion_auc": float(curves.deletion_auc[0]), "insertion_auc": float(curves.insertion_auc[0]),
        "overall": float(curves.overall[0]), "seconds": round(exp.seconds, 3), "model_images": exp.counts,
        "map_resolution": list(exp.resolution), "params": {k: _jsonable(v) for k, v in exp.params.items()},
        "warnings": [w for w in exp.problems() if w],
        "files": {k: f"{file_stem}_{k}.{ext}" for k, ext in
                  (("heatmap", "png"), ("map", "npy"), ("curves", "png"), ("strip", "png"))},
    }
    if "loss" in exp.history:
        summary["history"] = {"loss": exp.history["loss"][0].tolist(), "alpha": exp.history["alpha"][0].tolist()}
    write_json(f"{prefix}_summary.json", summary)
    return summary


def run_explain(args: argparse.Namespace) -> int:
    spec, params, model, items = _check_explain(args)
    if args.method is None:
        print(f"faithmap: note: method {DEFAULT_METHOD} (the default, about a second a photo); the papers' I-GOS: "
              f"--method igos ({IGOS_COST}, with a progress bar)", file=sys.stderr)
    summaries = []
    bar = tqdm(items, desc=f"{spec.name}", unit="image", file=sys.stderr, disable=None)
    for stem, x, lg, t in bar:
        bar.set_postfix_str(stem)
        summary = _explain_image(args, spec, params, model, stem, x, lg, t)
        summaries.append(summary)
        for w in summary["warnings"]:
            tqdm.write(f"faithmap: warning: {stem}: {w}", file=sys.stderr)
        top = ", ".join(f"{d['name']} {d['probability']:.3f}" for d in summary["top5"])
        tqdm.write(f"{stem}: top-5 {top}", file=sys.stdout)
        tqdm.write(f"{stem}: {spec.name} for '{summary['target_name']}'  deletion {summary['deletion_auc']:.3f}  "
                   f"insertion {summary['insertion_auc']:.3f}  over-all {summary['overall']:.3f}  "
                   f"{summary['seconds']:.1f} s  {summary['model_images']['images']} model images", file=sys.stdout)
    print(f"wrote {len(summaries) * 5} files for {len(summaries)} image(s) to {args.out}")
    return 0


run_explain.add_arguments = _explain_args  # type: ignore[attr-defined]
command("explain", "explain a classifier's decisions with a saliency method", owns_out=True)(run_explain)


def _jsonable(v):
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    return str(v)


# ----------------------------------------------------------------------------------------------
# faithmap methods / metrics / models
# ----------------------------------------------------------------------------------------------
def _print_once(text: str) -> None:
    """``text`` and a newline in one write: a reader that stops early (``| head -1``) cannot close the
    pipe between two writes of one listing (stdout may be unbuffered, PYTHONUNBUFFERED)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_methods(args: argparse.Namespace) -> int:
    if args.name:
        _print_once(method_page(METHODS[args.name]))
        return 0
    width = max(len(s.name) for s in METHODS)
    _print_once("\n".join(f"{s.name:<{width}}  [{s.family}] {s.summary}"
                           + (f" (also {', '.join(s.aliases)})" if s.aliases else "") for s in METHODS))
    return 0


run_methods.add_arguments = lambda p: p.add_argument(  # type: ignore[attr-defined]
    "name", nargs="?", help="a method (or alias): its page of parameters, ranges, defaults and an example")
command("methods", "list the registered explanation methods, or describe one")(run_methods)


def run_metrics(args: argparse.Namespace) -> int:
    if args.name:
        _print_once(metric_page(METRICS[args.name]))
        return 0
    width = max(len(s.name) for s in METRICS)
    _print_once("\n".join(f"{s.name:<{width}}  {s.arrow} [{s.category}] {s.summary}" for s in METRICS))
    return 0


run_metrics.add_arguments = lambda p: p.add_argument(  # type: ignore[attr-defined]
    "name", nargs="?", help="a metric (or alias): its direction, needs and options")
command("metrics", "list the registered metrics with their direction, or describe one")(run_metrics)


def run_models(args: argparse.Namespace) -> int:
    print(f"{models.DEFAULT_MODEL}  (default, pretrained ImageNet weights shipped with the package)")
    print("torchvision classifiers (need --weights FILE): " + ", ".join(models.torchvision_models()))
    if importlib.util.find_spec("timm") is not None:
        import timm  # lazy: an optional dependency, imported only to list its models

        print(f"timm:NAME  any of timm {timm.__version__}'s {len(timm.list_models())} architectures (timm.list_models()), "
              f"e.g. timm:convnext_tiny, timm:vit_small_patch16_224, timm:resnet50.a1_in1k; need --weights FILE")
    else:
        print("timm:NAME  (not installed: pip install 'faithmap[timm]')")
    if importlib.util.find_spec("transformers") is not None:
        import transformers  # lazy: an optional dependency, imported only to name its version

        print(f"hf:DIR  a transformers {transformers.__version__} image classifier saved with save_pretrained "
              f"(ViT, DeiT, BEiT, DINOv2, ConvNeXt, ResNet, RegNet, Swin, ...); weights from the folder")
    else:
        print("hf:DIR  (not installed: pip install 'faithmap[hf]')")
    print("weights files: PyTorch state dicts (torch.save(model.state_dict(), path)) or .safetensors; "
          "nothing is downloaded")
    return 0


command("models", "list the models faithmap can load")(run_models)


BENCH_MOVED = ("the benchmarks live in the repository, not in the package: run `python -m bench NAME` "
               "from a source checkout (BENCHMARKS.md)")


def run_bench(args: argparse.Namespace) -> int:
    """``faithmap bench`` points to ``python -m bench``: recorded commands fail with a direction."""
    raise FaithmapError(BENCH_MOVED)


run_bench.add_arguments = lambda p: p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # type: ignore[attr-defined]
command("bench", "moved: the benchmarks are run as `python -m bench NAME` from the repository")(run_bench)


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    import_submodules(__package__, [os.path.dirname(__file__)], prefix="cli_")  # cli_<name>.py modules add commands

    parser = _Parser(prog="faithmap", description="Saliency maps for image classifiers and how faithful they are.")
    parser.add_argument("--version", action="version", version=f"faithmap {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name, (help_, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


EXIT_BROKEN_PIPE = 141
"""Exit status when the reader of stdout went away (``faithmap methods | head -1``): 128 + SIGPIPE, what a
shell reports for ``cat``, ``yes`` or ``grep`` cut off the same way, so ``set -o pipefail`` scripts see the
same status from every writer."""


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    run = COMMANDS[args.command][2]
    if args.command in OWNS_OUT and getattr(args, "out", None):
        with output_dir(args.out):
            return int(run(args) or 0)
    return int(run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``faithmap`` command."""
    keep_freed_memory()  # the command owns its process: reuse freed memory (much faster CPU passes)
    try:
        rc = _run(argv)
        sys.stdout.flush()  # a reader that went away shows here for output still in the buffer
        return rc
    except BrokenPipeError:
        # the reader of stdout went away (`| head -1`): stop quietly, as a shell tool killed by SIGPIPE
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except FaithmapError as exc:
        print(f"faithmap: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (NotImplementedError, RuntimeError, TypeError) as exc:
        line = mps_unsupported(exc)  # an operation Apple's MPS backend lacks: one line, not a traceback
        if line is None:
            raise
        print(f"faithmap: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("faithmap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # ``python -m faithmap.cli`` runs this file as ``__main__``, a second copy whose COMMANDS the
    # ``cli_<name>.py`` modules do not see; call the package's own module instead.
    from faithmap.cli import main as _main

    sys.exit(_main())
