"""Images: loading with clear errors, and the sample photos that installed packages ship."""

from .images import MAX_PIXELS, MIN_SIDE, load_image
from .samples import PHOTOS, SAMPLES, load_sample, photo_names, sample_names

__all__ = ["MAX_PIXELS", "MIN_SIDE", "PHOTOS", "SAMPLES", "load_image", "load_sample", "photo_names", "sample_names"]
