"""The settings of one evaluation: :class:`RunConfig`, one frozen dataclass, checked once.

Every option of ``faithmap.evaluate(...)`` and of ``faithmap evaluate`` is a field here, with its
help text (and, where the flag differs from the name, its command-line flag) in the field's
metadata. The command line's options, the signature and docstring of :func:`faithmap.evaluate`
and the list of valid keyword names are generated from these fields (:data:`OPTIONS`), so adding
an option is adding a field here and the line that uses it.

The engine's options form a sub-config (:class:`~.engines.EngineConfig`); as keywords and flags
they are flat: ``engine="ray", workers=4`` (``--engine ray --workers 4``).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence, get_args, get_type_hints

import numpy as np

from ..data.annotations import Annotations
from ..errors import FaithmapError
from ..models import check_input_size, check_stats
from ..registry import METHODS, METRICS
from . import presets as _presets
from .engines import Engine, EngineConfig

MAX_SEED = 2**64 - 1
DEFAULT_RESOLUTION = 28
"""The mask resolution of mask methods when none is given (and the preset names none)."""


def default_methods() -> list[str]:
    """The methods run when none are named (and no preset is given): those registered with ``default=True``."""
    return [s.name for s in METHODS if s.default]


def default_metrics() -> list[str]:
    """The metrics computed when none are named: those registered with ``default=True`` (the ones that
    need ground-truth regions only with annotations)."""
    return [s.name for s in METRICS if s.default]


def _methods_help() -> str:
    return (f"comma-separated, or 'all' (default: {', '.join(default_methods())}; with --preset, the preset's): "
            f"{', '.join(METHODS.names())}")


def _metrics_help() -> str:
    plain = [m for m in default_metrics() if not METRICS.get(m).localises]
    loc = [m for m in default_metrics() if METRICS.get(m).localises]
    where = f", and {', '.join(loc)} with annotations" if loc else ""
    return f"comma-separated or 'all' (default: {', '.join(plain)}{where}): {', '.join(METRICS.names())}"


def option_field(default: Any = dataclasses.MISSING, help: Any = "", *, factory: Any = dataclasses.MISSING,
                 flag: str | None = None, shared: bool = False, api: str = "", **argparse_kw: Any):
    """A field of a run's config (:class:`RunConfig`, the audit's ``AuditConfig``): its default, its help (a
    string, or a function for text that reads a registry), its flag when not ``--name-with-dashes``, extra
    ``argparse`` keywords (``metavar``, ``nargs``, ``action``), ``shared``: the flag is one of the model
    options every command shares, and ``api``: what the help adds for Python callers (the docstring)."""
    meta = {"help": help, "flag": flag, "argparse": argparse_kw, "shared": shared, "api": api}
    return field(default=default, default_factory=factory, metadata=meta)


_opt = option_field


@dataclass(frozen=True)
class ModelOptions:
    """The model of a run and what describes it: the options every command that loads a model shares (the
    command line's flags for them come from :func:`faithmap.cli.add_model_args`). Run configs inherit them."""

    model: Any = _opt("efficientnet_lite0", "a model name (see `faithmap models`), a faithmap Classifier or a "
                      "torch.nn.Module", shared=True)
    weights: str | None = _opt(None, "local weights for a named model (a state dict or .safetensors file)", shared=True)
    device: str | None = _opt("auto", "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps", shared=True)
    resize: str | None = _opt(None, "crop or squash (default: the model's own)", shared=True)
    class_names: Any = _opt(None, "class names of a named model: a file (one per line, or JSON) or a list",
                            shared=True)
    mean: tuple[float, ...] | None = _opt(None, "the named model's input normalisation mean", shared=True)
    std: tuple[float, ...] | None = _opt(None, "the named model's input normalisation std", shared=True)
    input_size: int | None = _opt(None, "the named model's input size in pixels", shared=True)


def check_model_options(c: ModelOptions) -> None:
    """Refuse a bad ``resize``, a description (class names, mean, std, input size) of a model object, and
    out-of-range normalisation or input size: one line each."""
    if c.resize and c.resize not in ("crop", "squash"):
        raise FaithmapError(f"resize must be crop or squash, got {c.resize!r}")
    described = [n for n in ("class_names", "mean", "std", "input_size") if getattr(c, n) is not None]
    if described and not (isinstance(c.model, str) or c.model is None):
        raise FaithmapError(f"{described[0]} describes a named model; describe a model object with "
                            f"faithmap.models.wrap(net, {described[0]}=...)")
    check_stats(c.mean, c.std)
    check_input_size(c.input_size)


@dataclass(frozen=True)
class RunConfig(ModelOptions):
    """Every setting of an evaluation run (see the module docstring). Construct it with keywords, or
    :meth:`make` from keyword overrides; values are checked (and normalised) on construction."""

    methods: str | Sequence[str] | None = _opt(None, _methods_help)
    images: Any = _opt("samples", "image folders (flat, or one sub-folder per class) or files, 'samples' (the six "
                       "bundled photos, the default), 'photos' (20) or sample:NAME",
                       api="also (name, photo) pairs, (name, photo, label) triples or a dict",
                       nargs="+", metavar="DIR|FILE|samples")
    labels: Any = _opt(None, "true labels of flat folders or files: CSV image,label (an index, WordNet id or class "
                       "name), ImageNet's LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt"
                       "; a class-folder tree (one sub-folder per class) is labelled by its folder names",
                       metavar="FILE")
    limit: int | None = _opt(None, "at most the first N images (listing order)", metavar="N")
    sample: int | None = _opt(None, "N images drawn with --seed (the papers' 'random validation images'; the same "
                              "on any machine)", metavar="N")
    preset: str | None = _opt(None, lambda: f"a table of the papers: {', '.join(_presets.PRESETS)} "
                                            f"(see --list-presets)")
    resolutions: str | int | Sequence[int] | None = _opt(
        None, f"mask resolutions of mask methods, comma-separated (default {DEFAULT_RESOLUTION})", flag="--resolution",
        metavar="RESOLUTION", api="or a list of ints")
    metrics: str | Sequence[str] | None = _opt(None, _metrics_help)
    out: str = _opt("faithmap_eval", "output directory (default faithmap_eval)")
    fast: bool = _opt(False, "each method's quick settings")
    params: dict[str, Any] | None = _opt(None, "method parameter (repeatable)", flag="--param", action="append",
                                         metavar="[METHOD.]KEY=VALUE", api="{KEY: VALUE} for every method that takes "
                                                                           "it, or {METHOD: {KEY: VALUE}}")
    metric_params: dict[str, dict] | None = _opt(None, "metric option (repeatable)", flag="--metric-param",
                                                 action="append", metavar="METRIC.KEY=VALUE",
                                                 api="{METRIC: {KEY: VALUE}}")
    seed: int = _opt(0, "seed of the run (default 0); each image's randomness comes from a seed derived from it, "
                     "the image's name, the method and the resolution")
    batch_size: int | None = _opt(None, "maximum images per forward pass")
    batch_images: int | None = _opt(None, "images per task: each method explains this many images in one call "
                                    "(default --batch-size)")
    engine: EngineConfig | Engine = _opt(factory=EngineConfig, help="the engine and its options")
    csv: bool | None = _opt(None, "also write results.csv (default: when the finished run has at most 100,000 rows)")
    target: Any = _opt(None, "top1 (default: each image's top-1 prediction), a class index or name, 'annotated' "
                       "(every annotated class of each image) or 'label' (each image's ground-truth label)")
    annotations: str | Annotations | None = _opt(
        None, "ground truth for the pointing game: faithmap JSON, COCO JSON or CSV (boxes in photo pixels); the "
              "sample photos have bundled boxes", metavar="FILE")
    tolerance: float | None = _opt(None, "pointing game: hit within this many pixels (default 0)")
    min_score: float | None = _opt(None, "pointing game: only targets the model scores above this probability "
                                   "(AOP uses 0.5)")
    shard: str | tuple[int, int] | None = _opt(None, "run every n-th task starting at the i-th (1-based)",
                                               metavar="i/n")
    overwrite: bool = _opt(False, "discard earlier results in --out instead of resuming")
    report: bool = _opt(True, "write results only", flag="--no-report")
    progress: bool = _opt(True, "no progress bar", flag="--no-progress")
    save_maps: int = _opt(12, "keep maps and thumbnails of the first N images for the heatmap grid (-1 all, 0 none)",
                          metavar="N")
    convert: bool = _opt(False, "convert grayscale, RGBA and 16-bit images to 8-bit RGB")

    def __post_init__(self) -> None:
        for name, value in _normalised(self).items():
            object.__setattr__(self, name, value)

    @classmethod
    def make(cls, base: "RunConfig | None" = None, /, **overrides: Any) -> "RunConfig":
        """``base`` (default: all defaults) with ``overrides``: any name of :data:`OPTION_NAMES`, the engine's
        options flat (``engine="ray", workers=4``); an unknown name is one line listing the valid ones."""
        return make_config(cls, base, overrides, OPTION_NAMES, "evaluate", " (methods=..., images=..., out=...)")

    def for_workers(self) -> "RunConfig":
        """This config without what a worker must not receive pickled: the inputs (images, labels,
        annotations: the plan hands workers what they need of them), a model object (workers get the
        model from the context) and an engine object."""
        return dataclasses.replace(self, images=None, labels=None, annotations=None,
                                   model=self.model if isinstance(self.model, str) else None,
                                   engine=self.engine if isinstance(self.engine, EngineConfig) else EngineConfig())


def _engine(current: EngineConfig | Engine, overrides: dict) -> EngineConfig | Engine:
    """The engine of :meth:`RunConfig.make`: ``engine=`` (a name, an EngineConfig or an engine object) and the
    engine's flat options, taken out of ``overrides``."""
    flat = {k: overrides.pop(k) for k in _ENGINE_FIELDS if k in overrides}
    engine = overrides.pop("engine", current)
    if engine is None or isinstance(engine, str):
        return EngineConfig(**({"name": engine} if engine is not None else {}), **flat)
    if isinstance(engine, EngineConfig):
        return dataclasses.replace(engine, **flat) if flat else engine
    if flat:
        raise FaithmapError(f"{', '.join(flat)} apply to an engine named by engine=, not to an engine object")
    return engine


def make_config(cls, base, overrides: dict, names: Sequence[str], what: str, example: str = ""):
    """``base`` (an instance of the frozen config class ``cls``, or None: all defaults) with ``overrides``,
    the engine's options flat: what ``RunConfig.make`` and ``AuditConfig.make`` do (``what`` names the
    function in the messages, ``example`` shows a few of its keywords)."""
    if base is not None and not isinstance(base, cls):
        raise FaithmapError(f"faithmap.{what} takes a {cls.__name__} or keywords only{example}, not settings by "
                            f"position")
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise FaithmapError(f"{what} has no option {unknown[0]!r}; the options are: {', '.join(names)}")
    overrides = dict(overrides)
    engine = _engine(base.engine if base is not None else EngineConfig(), overrides)
    return dataclasses.replace(base, engine=engine, **overrides) if base is not None else cls(engine=engine,
                                                                                               **overrides)


# ----------------------------------------------------------------------------------------------
# checks (once, on construction)
# ----------------------------------------------------------------------------------------------
def split_names(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def _is_all(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "all"


def parse_resolutions(value) -> list[int]:
    """``"7,14,28"``, an int or a sequence -> list of ints (each at least 1)."""
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    out = []
    for v in split_names(value):
        if not re.fullmatch(r"\d+", v) or int(v) < 1:
            raise FaithmapError(f"resolutions must be positive integers (e.g. 7,14,28,224), got {v!r}")
        if int(v) not in out:
            out.append(int(v))
    return out


def parse_shard(value) -> tuple[int, int] | None:
    """``"i/n"`` or ``(i, n)`` with 1 <= i <= n."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not m:
            raise FaithmapError(f"--shard expects i/n (e.g. 1/4), got {value!r}")
        i, n = int(m.group(1)), int(m.group(2))
    else:
        i, n = (int(v) for v in value)
    if n < 1 or not 1 <= i <= n:
        raise FaithmapError(f"--shard i/n needs 1 <= i <= n, got {i}/{n}")
    return i, n


def parse_seed(seed) -> int:
    """``--seed``: an integer from 0 to 2**64 - 1 (what a torch generator takes)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise FaithmapError(f"seed must be an integer from 0 to 2**64-1, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise FaithmapError(f"seed must be an integer from 0 to 2**64-1 (64 bits), got {int(seed)}")
    return int(seed)


def parse_count(value, what: str, default: int | None = None) -> int | None:
    """A whole number of at least 1 (``None``: ``default``)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise FaithmapError(f"{what} must be a whole number of at least 1, got {value!r}")
    return int(value)


def _names(value, canonical, what: str) -> tuple[str, ...] | str | None:
    """None (the default set), ``"all"``, or the canonical names, each once; none at all is an error."""
    if value is None or _is_all(value):
        return "all" if value is not None else None
    names = tuple(dict.fromkeys(canonical(m) for m in split_names(value)))
    if not names:
        raise FaithmapError(f"no {what}")
    return names


def _check_target(target) -> Any:
    if isinstance(target, bool) or (not isinstance(target, (str, int, np.integer)) and target is not None):
        raise FaithmapError(f"target must be top1, a class index or name, 'annotated' or 'label', got {target!r}")
    return int(target) if isinstance(target, np.integer) else target


def _check_flags(c: RunConfig) -> None:
    if isinstance(c.save_maps, bool) or not isinstance(c.save_maps, (int, np.integer)) or c.save_maps < -1:
        raise FaithmapError("save_maps must be -1 (all), 0 (none) or a number of images")
    check_model_options(c)
    for name in ("params", "metric_params"):
        if getattr(c, name) is not None and not isinstance(getattr(c, name), dict):
            raise FaithmapError(f"{name} must be a dict, got {type(getattr(c, name)).__name__}")
    if c.csv is not None and not isinstance(c.csv, bool):
        raise FaithmapError(f"csv must be True, False or None, got {c.csv!r}")
    if c.preset is not None:
        _presets.get_preset(str(c.preset))


def _normalised(c: RunConfig) -> dict[str, Any]:
    """The checked values of ``c`` that are normalised (canonical names, parsed resolutions and shard)."""
    _check_flags(c)
    engine = EngineConfig(name=c.engine) if isinstance(c.engine, str) else c.engine
    return {
        "methods": _names(c.methods, _presets.run_name, "methods to evaluate"),
        "metrics": _names(c.metrics, METRICS.canonical, "metrics to compute"),
        "resolutions": tuple(parse_resolutions(c.resolutions)) or None,
        "shard": parse_shard(c.shard), "seed": parse_seed(c.seed),
        "batch_size": parse_count(c.batch_size, "batch_size"),
        "batch_images": parse_count(c.batch_images, "batch_images"),
        "target": _check_target(c.target), "save_maps": int(c.save_maps), "engine": engine,
        "out": os.fspath(c.out), "fast": bool(c.fast), "convert": bool(c.convert),
    }


# ----------------------------------------------------------------------------------------------
# the options, flat: what the command line, the signature and the docstring are generated from
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One option of an evaluation: a field of :class:`RunConfig` (or of the engine's :class:`EngineConfig`)."""

    name: str  # the keyword of faithmap.evaluate
    field: dataclasses.Field
    hint: Any  # the field's type

    @property
    def default(self) -> Any:
        return self.field.default

    @property
    def help(self) -> str:
        h = self.field.metadata.get("help", "")
        return h() if callable(h) else h

    @property
    def flag(self) -> str:
        return self.field.metadata.get("flag") or "--" + self.name.replace("_", "-")

    @property
    def scalar(self) -> type | None:
        """bool, int or float when the type is one of them (or None), else None (a string on the command line)."""
        kinds = {a for a in (get_args(self.hint) or (self.hint,)) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 and kinds <= {bool, int, float} else None


INPUT_FIELDS = ("images", "labels", "limit", "sample", "preset")
"""The inputs of a run: the options listed before the model's (:class:`ModelOptions`)."""


def _field_order(cls) -> list[dataclasses.Field]:
    """``cls``'s own fields in order, with the inherited model options after its first field and the inputs."""
    model = {f.name for f in dataclasses.fields(ModelOptions)}
    own = [f for f in dataclasses.fields(cls) if f.name not in model]
    at = next((i for i, f in enumerate(own) if i > 0 and f.name not in INPUT_FIELDS), len(own))
    return own[:at] + [f for f in dataclasses.fields(cls) if f.name in model] + own[at:]


def config_options(cls) -> tuple[Option, ...]:
    """Every option of the config class ``cls``, flat, in order (:func:`_field_order`): its ``engine`` field
    (an :class:`EngineConfig`) becomes the engine's options (``engine``, ``workers``, ...)."""
    hints = {**get_type_hints(cls), **{f"engine.{k}": v for k, v in get_type_hints(EngineConfig).items()}}
    out = []
    for f in _field_order(cls):
        if f.name != "engine":
            out.append(Option(f.name, f, hints[f.name]))
            continue
        for g in dataclasses.fields(EngineConfig):
            hint = str | EngineConfig | Engine if g.name == "name" else hints[f"engine.{g.name}"]
            out.append(Option("engine" if g.name == "name" else g.name, g, hint))
    return tuple(out)


OPTIONS: tuple[Option, ...] = config_options(RunConfig)
"""Every option, flat, in order: the keywords of :func:`faithmap.evaluate` and the flags of ``faithmap evaluate``."""
OPTION_NAMES: tuple[str, ...] = tuple(o.name for o in OPTIONS)
_ENGINE_FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig) if f.name != "name")


def signature(returns: Any, options: Sequence[Option] = OPTIONS, config: str = "RunConfig") -> inspect.Signature:
    """``(config=None, /, *, <every option with its default>) -> returns``."""
    params = [inspect.Parameter("config", inspect.Parameter.POSITIONAL_ONLY, default=None,
                                annotation=f"{config} | None")]
    params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=o.hint)
               for o in options]
    return inspect.Signature(params, return_annotation=returns)


def options_doc(options: Sequence[Option] = OPTIONS) -> str:
    """The options as docstring lines: ``name`` (default): help."""
    def line(o: Option) -> str:
        api = o.field.metadata.get("api")
        return f"``{o.name}`` (default {o.default!r}): {o.help}{'; ' + api if api else ''}."

    return "\n".join(line(o) for o in options)
