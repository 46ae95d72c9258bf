"""Images: loading with clear errors, and the sample photos that installed packages ship."""

from .images import MAX_PIXELS, MIN_SIDE, load_image
from .samples import SAMPLES, load_sample, sample_names

__all__ = ["MAX_PIXELS", "MIN_SIDE", "SAMPLES", "load_image", "load_sample", "sample_names"]
