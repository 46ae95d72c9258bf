"""GAD, Gradient Artificial Distancing (Mazini Rodrigues, Boutry & Najman, 2024): support regression models trained on
artificially distanced logits, and the pipeline that compares original and GAD maps by their
convex-hull regions (sec. 5-6).

* :mod:`faithmap.gad.support`: distanced targets (sec. 4.1), support-model training with
  checkpoints, resume and a cache (sec. 4.2).
* :func:`faithmap.methods.gad.gad_maps`: the GAD map of any registered method (sec. 4.3); also
  registered as the method ``gad``.
* :mod:`faithmap.metrics.regions`: hulls, RC and RS (sec. 5).
* :mod:`faithmap.gad.pipeline`: the experiment of sec. 6 (Tables 1-2, Fig. 6); ``faithmap gad``.
* :mod:`faithmap.gad.demo`: the offline demo on scikit-learn's handwritten digits.
"""

from .data import FolderImages, ImageSet, TensorImages
from .support import (SupportSet, clone_classifier, default_cache_dir, distanced_targets, load_supports,
                      support_models, train_support, weights_fingerprint)

__all__ = ["FolderImages", "ImageSet", "SupportSet", "TensorImages", "clone_classifier", "default_cache_dir",
           "distanced_targets", "load_supports", "support_models", "train_support", "weights_fingerprint"]
