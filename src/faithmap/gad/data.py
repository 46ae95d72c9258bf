"""Image sets for GAD: labelled model inputs held in memory, or read from an image folder with one
sub-folder per class. Both give batches of normalised inputs and a content fingerprint (the cache key
of the support models)."""

from __future__ import annotations

import hashlib
import os
from typing import Protocol, Sequence

import torch

from ..data import load_image
from ..data.inputs import IMAGE_EXTENSIONS
from ..errors import FaithmapError


class ImageSet(Protocol):
    """Labelled images: ``labels`` (N,) are the model's class indices."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Normalised model inputs (len(index), 3, H, W) of the images ``index``."""

    def fingerprint(self) -> str:
        """A hex digest of the images' content and labels."""


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())


class TensorImages:
    """Images already turned into model inputs, kept in memory."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | Sequence[int]):
        labels = torch.as_tensor(labels, dtype=torch.long).view(-1).cpu()
        if x.dim() != 4 or x.shape[0] != labels.numel():
            raise FaithmapError(f"expected (N, C, H, W) images with N labels, got {tuple(x.shape)} and {labels.numel()} labels")
        if x.shape[0] == 0:
            raise FaithmapError("the image set is empty")
        self.x = x
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.numel())

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.x[index.to(self.x.device)]

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"tensor-images-v1")
        _hash_tensor(h, self.x.float())
        _hash_tensor(h, self.labels)
        return h.hexdigest()


def list_images(folder: str) -> list[str]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def find_class_folder(root: str, names: Sequence[str]) -> str:
    """The sub-folder of ``root`` named by one of ``names`` (tried in order, then case-insensitively)."""
    subs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for n in names:
        if n in subs:
            return os.path.join(root, n)
    lowered = {d.lower(): d for d in subs}
    for n in names:
        if n.lower() in lowered:
            return os.path.join(root, lowered[n.lower()])
    found = ", ".join(subs[:10]) + (" ..." if len(subs) > 10 else "") if subs else "none"
    raise FaithmapError(f"folder {root} has no sub-folder for class {names[0]!r} (sub-folders found: {found})")


class FolderImages:
    """Images read from files on demand and preprocessed by ``model`` (nothing kept in memory)."""

    def __init__(self, model, paths: Sequence[str], labels: Sequence[int], convert: bool = False):
        if not paths:
            raise FaithmapError("the image set is empty")
        self.model = model
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.convert = convert

    @classmethod
    def from_folder(cls, model, root: str, classes: Sequence[tuple[Sequence[str], int]], *, convert: bool = False,
                    limit: int | None = None) -> "FolderImages":
        """The images of ``root/<class folder>/`` for each (folder names to try, class index) in ``classes``;
        at most ``limit`` per class (the first by file name)."""
        if not os.path.isdir(root):
            raise FaithmapError(f"no such folder: {root}")
        paths, labels = [], []
        for names, index in classes:
            folder = find_class_folder(root, list(names))
            files = list_images(folder)
            if not files:
                raise FaithmapError(f"no images found in {folder}")
            if limit is not None:
                files = files[:limit]
            paths += files
            labels += [int(index)] * len(files)
        return cls(model, paths, labels, convert)

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.model.preprocess([load_image(self.paths[int(i)], convert=self.convert) for i in index])

    def fingerprint(self) -> str:
        m = self.model
        h = hashlib.sha256(b"folder-images-v1")
        h.update(f"{m.input_size},{m.resize_size},{m.resize},{self.convert}".encode())
        _hash_tensor(h, m.mean.float())
        _hash_tensor(h, m.std.float())
        for path, label in zip(self.paths, self.labels.tolist()):
            h.update(f"{label}:{os.path.basename(path)}:".encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()
