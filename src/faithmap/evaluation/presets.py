"""Evaluation presets: the method x resolution x metric grid of a table in one of the papers, as data.

Each preset lists its methods as the paper names them, with the registry names that may implement
each (the first registered one is used; spelling differences such as ``grad-cam`` / ``gradcam`` /
``grad_cam`` do not matter). Methods that no registered method implements are skipped and reported.
To add a preset, add an entry to :data:`PRESETS`; nothing else changes.

An ablation table lists one method several times with other parameters: each row is a
:class:`PresetMethod` with a ``variant``, and runs under the *run name* ``method:variant``
(``igos:no-tv``), its own parameters and label. A run name is what the evaluation keys its tasks,
rows, parameters and labels by; :func:`base_method` gives the registered method behind it. The
same names work outside presets: ``--methods igos,igos:no-tv --param igos:no-tv.l2=0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import FaithmapError
from ..registry import METHODS, METRICS


@dataclass(frozen=True)
class PresetMethod:
    label: str  # as the paper writes it
    names: tuple[str, ...]  # registry names or aliases that implement it, in order of preference
    params: dict[str, Any] = field(default_factory=dict)
    variant: str = ""  # non-empty: runs as "method:variant", so one method can appear in several rows


VARIANT_SEP = ":"
_VARIANT_RE = re.compile(r"[a-z0-9][a-z0-9_+-]*")


def split_run_name(name: str) -> tuple[str, str]:
    """``"igospp:no-tv"`` -> (``"igos++"``, ``"no-tv"``): the registered method and the variant ("" if none).

    Raises the registry's one-line error for an unknown method, and one for a malformed variant.
    """
    base, sep, variant = str(name).strip().partition(VARIANT_SEP)
    canon = METHODS.canonical(base)
    variant = variant.strip().lower()
    if sep and not _VARIANT_RE.fullmatch(variant):
        raise FaithmapError(f"bad method variant {name!r}: write METHOD{VARIANT_SEP}VARIANT with a variant of "
                            f"letters, digits, '+', '-' or '_' (e.g. igos{VARIANT_SEP}no-tv)")
    return canon, variant


def run_name(name: str) -> str:
    """The canonical run name: the registered method's name, and ``:variant`` if there is one."""
    canon, variant = split_run_name(name)
    return f"{canon}{VARIANT_SEP}{variant}" if variant else canon


def base_method(name: str) -> str:
    """The registered method a run name runs."""
    return split_run_name(name)[0]


def is_run_name(name: str) -> bool:
    """Whether ``name`` is a registered method or a variant of one."""
    try:
        split_run_name(name)
    except FaithmapError:
        return False
    return True


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    source: str
    methods: tuple[PresetMethod, ...]
    resolutions: tuple[int, ...]
    metrics: tuple[str, ...]
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""


GRADCAM = PresetMethod("Grad-CAM", ("gradcam", "grad_cam"))
GRADCAMPP = PresetMethod("Grad-CAM++", ("gradcam++", "gradcampp", "gradcam_plus_plus", "gradcamplusplus"))
IG = PresetMethod("Integrated Gradients", ("integrated_gradients", "integratedgradients", "ig"))
RISE = PresetMethod("RISE", ("rise",))
MASK = PresetMethod("Mask (Fong & Vedaldi)", ("mask", "meaningful_perturbation", "fong_vedaldi", "emp"))
IGOS = PresetMethod("I-GOS", ("igos",))
IGOSPP = PresetMethod("iGOS++", ("igos++", "igospp", "igos_pp", "igos_plus_plus"))
EXCITATION = PresetMethod("Excitation BP", ("excitation_bp", "excitationbp", "ebp", "excitation_backprop"))
XRAI = PresetMethod("XRAI", ("xrai",))
SIGCAM = PresetMethod("SIGCAM", ("sigcam",))


def _row(base: PresetMethod, label: str, variant: str, **params) -> PresetMethod:
    """A row of an ablation table: ``base``'s method under the run name ``method:variant``."""
    return PresetMethod(label, base.names, params, variant)


# The ablation tables (Qi, Khorram & Li, AAAI 2020 Table 3; Khorram, Lawson & Li, ACM CHIL 2021 Tables 3, 5 and 7): each row changes what
# the paper's row changes and keeps every other parameter at the method's registered default.
IGOS_TABLE3 = (
    PresetMethod("I-GOS (ours)", IGOS.names),
    _row(IGOS, "I-GOS, no TV term", "no-tv", l2=0.0),
    _row(IGOS, "I-GOS, no noise", "no-noise", noise_std=0.0),
    _row(IGOS, "I-GOS, fixed step size 1", "fixed-step", step_size=1.0),
)
IGOSPP_TABLE3 = (
    IGOS,
    _row(IGOSPP, "Insertion", "insertion", ablation="insertion"),
    _row(IGOSPP, "I-GOS + Insertion (naive)", "naive", ablation="naive"),
    _row(IGOSPP, "iGOS++ (no noise)", "no-noise", ablation="no-noise"),
    _row(IGOSPP, "iGOS++ (fix step size)", "fixed-step", ablation="fixed-step"),
    _row(IGOSPP, "iGOS++ (no BTV)", "no-btv", ablation="no-btv"),
    IGOSPP,
)
IGOSPP_TABLE5 = (
    _row(IGOSPP, "M_x (deletion mask)", "deletion-mask", final_mask="deletion"),
    _row(IGOSPP, "M_y (insertion mask)", "insertion-mask", final_mask="insertion"),
    PresetMethod("M_xy (iGOS++)", IGOSPP.names),
)
TABLE7_LAMBDAS = ((1.0, 2.0), (1.0, 20.0), (10.0, 20.0), (10.0, 200.0))
"""The (lambda1, lambda2) columns of Khorram, Lawson & Li, ACM CHIL 2021 Table 7 (L1 and TV/BTV weights)."""
IGOSPP_TABLE7 = tuple(
    row for l1, l2 in TABLE7_LAMBDAS for row in (
        _row(IGOSPP, f"I-GOS + Ins (naive), l1={l1:g} l2={l2:g}", f"naive-l1-{l1:g}-l2-{l2:g}", ablation="naive",
             l1=l1, l2=l2),
        _row(IGOSPP, f"iGOS++, l1={l1:g} l2={l2:g}", f"l1-{l1:g}-l2-{l2:g}", l1=l1, l2=l2)))

# Expected Grad-CAM (Buono et al., arXiv 2406.01274, 2024): the ten CAM methods of Tables 1 and 3-6, and the metrics of
# appendix Table 2 in its order (F.E, P.F, Ins., Del., Ins-Del., IROF, Suff., Inf.; L. Est., M. Sens.,
# A. Sens., RIS, ROS; CP., SP.; A.L., T-K.I., RR-A, RM-A). Ins./Del. are the pixel-level RISE curves
# the paper computed with the IROF library, not the I-GOS blur protocol of ``deletion``/``insertion``.
EXPECTED_GRADCAM_METHODS = (
    GRADCAM, GRADCAMPP,
    PresetMethod("Smooth Grad-CAM++", ("smooth_gradcam++", "smoothgradcam++", "smooth_gradcampp", "smoothgradcampp")),
    PresetMethod("Integrated Grad-CAM", ("integrated_gradcam", "integratedgradcam", "intgradcam", "ig_cam")),
    PresetMethod("HiRes-CAM", ("hirescam", "hires_cam")),
    PresetMethod("XGrad-CAM", ("xgradcam", "xgrad_cam")),
    PresetMethod("LayerCAM", ("layercam", "layer_cam")),
    PresetMethod("Score-CAM", ("scorecam", "score_cam")),
    PresetMethod("Ablation-CAM", ("ablationcam", "ablation_cam")),
    PresetMethod("Expected Grad-CAM", ("expected_gradcam", "expectedgradcam", "egc")),
)
EXPECTED_GRADCAM_METRICS = (
    "faithfulness_estimate", "pixel_flipping", "rise_insertion", "rise_deletion", "ins_del", "irof", "sufficiency",
    "infidelity",
    "local_lipschitz", "max_sensitivity", "avg_sensitivity", "relative_input_stability", "relative_output_stability",
    "complexity", "sparseness",
    "attribution_localisation", "top_k_intersection", "relevance_rank_accuracy", "relevance_mass_accuracy",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("igos-table1", "I-GOS Tables 1 and 2: deletion and insertion at five resolutions",
           "Qi, Khorram & Li, AAAI 2020, Table 1 (VGG19) and Table 2 (ResNet50)",
           (EXCITATION, MASK, GRADCAM, RISE, IG, IGOS), (224, 112, 28, 14, 7), ("deletion", "insertion"),
           note="Grad-CAM runs at its layer's grid (7x7 on EfficientNet-Lite0), RISE and Integrated Gradients at 224x224."),
    Preset("igospp-table1", "iGOS++ Table 1: deletion and insertion at 224, 28 and 7",
           "Khorram, Lawson & Li, ACM CHIL 2021, Table 1 (ResNet50; Table 2, VGG19, uses 14 instead of 7)",
           (GRADCAM, IG, RISE, MASK, IGOS, IGOSPP), (224, 28, 7), ("deletion", "insertion")),
    Preset("sigcam-table2", "AOP/SIGCAM Table 2: deletion, insertion and over-all score",
           "Zhang, Rao & Yang, AAAI 2021, Table 2 (DenseNet201, Inception v3, VGG19)",
           (GRADCAM, GRADCAMPP, IGOS, XRAI, SIGCAM), (28,), ("deletion", "insertion", "overall"),
           note="I-GOS and SIGCAM at 28x28 as in the paper; CAM maps at their layer's grid."),
    Preset("sigcam-table3", "AOP/SIGCAM Table 3: pointing game on segmentation masks, classes scored above 0.5",
           "Zhang, Rao & Yang, AAAI 2021, Table 3 (COCO val2017, ResNet50)",
           (GRADCAM, GRADCAMPP, IGOS, XRAI, SIGCAM), (28,), ("pointing_mask",),
           metric_params={"pointing_mask": {"min_score": 0.5}},
           note="Boxes stand in for masks where the annotations have no segmentation (the bundled sample boxes)."),
    Preset("igos-table3", "I-GOS Table 3: ablations (no TV term, no noise, fixed step size)",
           "Qi, Khorram & Li, AAAI 2020, Table 3 (VGG19)", IGOS_TABLE3, (224, 28), ("deletion", "insertion"),
           note="One change a row from I-GOS's registered defaults: l2 = 0, noise_std = 0, or a fixed step of 1 "
                "(step_size=1; 'the step size is 1 in Table 3')."),
    Preset("igospp-table3", "iGOS++ Table 3: ablations (insertion only, naive insertion, no noise, fixed step, no BTV)",
           "Khorram, Lawson & Li, ACM CHIL 2021, Table 3 (ResNet50)", IGOSPP_TABLE3, (224, 28), ("deletion", "insertion"),
           note="Rows are iGOS++'s ablation= switches (see `faithmap methods`), each alone; I-GOS at its defaults."),
    Preset("igospp-table5", "iGOS++ Table 5: the deletion mask M_x and the insertion mask M_y alone, and their product",
           "Khorram, Lawson & Li, ACM CHIL 2021, Table 5 (ResNet50, supplement)", IGOSPP_TABLE5, (224, 28), ("deletion", "insertion"),
           note="One iGOS++ optimisation read three ways (final_mask=deletion, insertion, product): each row "
                "reruns it, deterministically, so the three maps come from the same masks."),
    Preset("igospp-table7", "iGOS++ Table 7: iGOS++ and the naive objective at four (lambda1, lambda2) pairs",
           "Khorram, Lawson & Li, ACM CHIL 2021, Table 7 (28x28, supplement)", IGOSPP_TABLE7, (28,), ("deletion", "insertion"),
           note="The table reports the objective value each method reaches, with each column's own lambdas, "
                "which a metric (one setting a run) cannot follow: `python -m bench igospp-table7` computes it "
                "(the naive objective at each final mask); this preset gives the same eight runs' deletion and "
                "insertion."),
    Preset("expected-gradcam-table3", "Expected Grad-CAM Table 3: insertion, deletion and their difference",
           "Buono et al., arXiv 2406.01274, 2024, Table 3 (VGG16, ResNet-50, AlexNet)",
           EXPECTED_GRADCAM_METHODS, (), ("insertion", "deletion", "overall"),
           note="CAM methods run at their layer's grid; the table has no mask resolutions."),
    Preset("expected-gradcam-table1",
           "Expected Grad-CAM Table 1 with every metric of its appendix Table 2: faithfulness, robustness, "
           "complexity, localisation",
           "Buono et al., arXiv 2406.01274, 2024, Table 1 (VGG16; P.F., Suff., Inf., L. Est., M. Sens., A. Sens., CP., SP.) and "
           "appendix Table 2 (all evaluated metrics; Tables 3-6)",
           EXPECTED_GRADCAM_METHODS, (), EXPECTED_GRADCAM_METRICS,
           note="CAM methods run at their layer's grid. Localisation metrics (A.L., T-K.I., RR-A, RM-A; COCO "
                "segmentation masks in the paper) use the annotation boxes as regions where no mask is given "
                "(the bundled sample boxes). Sufficiency is a set-level metric (an image's score depends on the "
                "other maps of its batch) and evaluate scores one image per task, so it reads 0 here; compute it "
                "with faithmap.metrics.faithfulness.sufficiency on a batch. Robustness metrics use the paper's "
                "200 samples (Quantus defaults): lower them with --metric-param NAME.n_samples=N for quick runs. "
                "Running time (R.T.) is the explain_seconds column of results.csv."),
)}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", name.lower())


def find_method(candidates: tuple[str, ...]) -> str | None:
    """The registered method name implementing one of ``candidates`` (spelling-insensitive), or None."""
    index: dict[str, str] = {}
    for spec in METHODS:
        for n in (spec.name, *spec.aliases):
            index.setdefault(_norm(n), spec.name)
    for c in candidates:
        if _norm(c) in index:
            return index[_norm(c)]
    return None


@dataclass
class ResolvedPreset:
    preset: Preset
    methods: list[str]  # run names: registered names, or "method:variant" for the rows of ablation tables
    params: dict[str, dict[str, Any]]  # per run name
    labels: dict[str, str]  # run name -> paper label
    skipped_methods: list[str]  # paper labels with no registered method
    metrics: list[str]
    skipped_metrics: list[str]


def get_preset(name: str) -> Preset:
    key = name.strip().lower()
    if key not in PRESETS:
        raise FaithmapError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return PRESETS[key]


def resolve(name: str) -> ResolvedPreset:
    """What of preset ``name`` can run with the registered methods and metrics."""
    p = get_preset(name)
    methods, skipped, params, labels = [], [], {}, {}
    for pm in p.methods:
        found = find_method(pm.names)
        if found is not None and pm.variant:
            found = run_name(f"{found}{VARIANT_SEP}{pm.variant}")
        if found is None:
            skipped.append(pm.label)
        elif found not in methods:
            methods.append(found)
            labels[found] = pm.label
            if pm.params:
                params[found] = dict(pm.params)
    metrics = [METRICS.canonical(m) for m in p.metrics if m in METRICS]
    skipped_metrics = [m for m in p.metrics if m not in METRICS]
    return ResolvedPreset(p, methods, params, labels, skipped, metrics, skipped_metrics)
