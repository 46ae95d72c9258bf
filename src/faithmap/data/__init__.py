"""Images: the one gatherer of input images (files, folders, class-folder trees, labels files,
sample photos), loading with clear errors, streaming to a model, and the bundled sample photos."""

from .datasets import gather, sample_key, select
from .images import MAX_PIXELS, MIN_SIDE, load_image
from .imagenet import devkit_to_wnid, imagenet_wnids, imagenet_words, is_imagenet, read_meta_mat, wnid_to_index
from .inputs import IMAGE_EXTENSIONS, ImageRecord, Listing, list_images, name_key, safe_name, unique_names
from .labels import attach_labels, read_labels, resolve_labels
from .samples import PHOTOS, SAMPLES, load_sample, photo_names, sample_names
from .stream import Batch, PhotoDataset, iter_batches

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_PIXELS", "MIN_SIDE", "PHOTOS", "SAMPLES", "Batch", "ImageRecord", "Listing", "PhotoDataset",
    "attach_labels", "devkit_to_wnid", "gather", "imagenet_wnids", "imagenet_words", "is_imagenet",
    "iter_batches", "list_images", "load_image", "load_sample", "name_key", "photo_names", "read_labels", "read_meta_mat",
    "resolve_labels", "safe_name", "sample_key", "sample_names", "select", "unique_names", "wnid_to_index",
]
