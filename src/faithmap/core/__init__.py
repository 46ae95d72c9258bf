"""Operations shared by every method: perturbation, regularisers, scores, targets, batching."""

from .batching import EvalCounter, chunks, forward_batched, model_guard, per_image_generators
from .perturb import blur_baseline, gaussian_blur, make_baseline, phi, upsample
from .regularizers import bilateral_tv, btv, l1_keep, tv
from .scores import SCORES, resolve_targets, score_of, topk

__all__ = [
    "EvalCounter", "SCORES", "bilateral_tv", "blur_baseline", "btv", "chunks", "forward_batched",
    "gaussian_blur", "l1_keep", "make_baseline", "model_guard", "per_image_generators", "phi",
    "resolve_targets", "score_of", "topk", "tv", "upsample",
]
