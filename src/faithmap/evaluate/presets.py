"""Evaluation presets: the method x resolution x metric grid of a table in one of the papers, as data.

Each preset lists its methods as the paper names them, with the registry names that may implement
each (the first registered one is used; spelling differences such as ``grad-cam`` / ``gradcam`` /
``grad_cam`` do not matter). Methods that no registered method implements are skipped and reported.
To add a preset, add an entry to :data:`PRESETS`; nothing else changes.
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
MASK = PresetMethod("Mask (Fong & Vedaldi)", ("mask", "meaningful_perturbation", "fong_vedaldi", "emp", "extremal_perturbation"))
IGOS = PresetMethod("I-GOS", ("igos",))
IGOSPP = PresetMethod("iGOS++", ("igos++", "igospp", "igos_pp", "igos_plus_plus"))
EXCITATION = PresetMethod("Excitation BP", ("excitation_bp", "excitationbp", "ebp", "excitation_backprop"))
XRAI = PresetMethod("XRAI", ("xrai",))
SIGCAM = PresetMethod("SIGCAM", ("sigcam",))

# Expected Grad-CAM (expected_gradcam.txt): the ten CAM methods of Tables 1 and 3-6, and the metrics of
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
           "igos.txt, Table 1 (VGG19) and Table 2 (ResNet50)",
           (EXCITATION, MASK, GRADCAM, RISE, IG, IGOS), (224, 112, 28, 14, 7), ("deletion", "insertion"),
           note="Grad-CAM runs at its layer's grid (7x7 on EfficientNet-Lite0), RISE and Integrated Gradients at 224x224."),
    Preset("igospp-table1", "iGOS++ Table 1: deletion and insertion at 224, 28 and 7",
           "igos_plus_plus.txt, Table 1 (ResNet50; Table 2, VGG19, uses 14 instead of 7)",
           (GRADCAM, IG, RISE, MASK, IGOS, IGOSPP), (224, 28, 7), ("deletion", "insertion")),
    Preset("sigcam-table2", "AOP/SIGCAM Table 2: deletion, insertion and over-all score",
           "aop_sigcam.txt, Table 2 (DenseNet201, Inception v3, VGG19)",
           (GRADCAM, GRADCAMPP, IGOS, XRAI, SIGCAM), (28,), ("deletion", "insertion", "overall"),
           note="I-GOS and SIGCAM at 28x28 as in the paper; CAM maps at their layer's grid."),
    Preset("sigcam-table3", "AOP/SIGCAM Table 3: pointing game on segmentation masks, classes scored above 0.5",
           "aop_sigcam.txt, Table 3 (COCO val2017, ResNet50)",
           (GRADCAM, GRADCAMPP, IGOS, XRAI, SIGCAM), (28,), ("pointing_mask",),
           metric_params={"pointing_mask": {"min_score": 0.5}},
           note="Boxes stand in for masks where the annotations have no segmentation (the bundled sample boxes)."),
    Preset("expected-gradcam-table3", "Expected Grad-CAM Table 3: insertion, deletion and their difference",
           "expected_gradcam.txt, Table 3 (VGG16, ResNet-50, AlexNet)",
           EXPECTED_GRADCAM_METHODS, (), ("insertion", "deletion", "overall"),
           note="CAM methods run at their layer's grid; the table has no mask resolutions."),
    Preset("expected-gradcam-table1",
           "Expected Grad-CAM Table 1 with every metric of its appendix Table 2: faithfulness, robustness, "
           "complexity, localisation",
           "expected_gradcam.txt, Table 1 (VGG16; P.F., Suff., Inf., L. Est., M. Sens., A. Sens., CP., SP.) and "
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
    methods: list[str]
    params: dict[str, dict[str, Any]]  # per registered method
    labels: dict[str, str]  # registered name -> paper label
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
