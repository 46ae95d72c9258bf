"""Writing output files: one atomic-write helper, and an output directory that never stays half-made.

Every file faithmap writes goes through :func:`atomic_open`: the data lands in a temporary file
created by :func:`tempfile.mkstemp` in the target's own directory (a fresh random name opened with
``O_CREAT | O_EXCL``, so a symlink planted under a predictable name is never followed), is flushed
and ``fsync``\\ ed, and then renamed over the target with :func:`os.replace` (which replaces a
symlink standing at the target instead of writing through it). A reader sees the old file or the
new one, never a torn one; on any error the temporary file is removed. Operating-system faults
(a full disk, a read-only directory, a path through a file) become one :class:`FaithmapError` line.

:func:`output_dir` is the command-level half: it checks and creates an output folder and, when the
block fails, removes the folder again if this call created it (so a failed command leaves no empty
or partial folder behind); a folder that existed before keeps what it had.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from typing import IO, Any, Iterator

from ..errors import FaithmapError

__all__ = ["atomic_open", "output_dir", "os_error", "parse_json", "write_atomic", "write_json", "write_text", "save_npy"]


def os_error(action: str, path: str, exc: OSError) -> FaithmapError:
    """One line naming what failed, where, and the system's reason (``cannot write x: No space left on device``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif exc.errno == errno.EFBIG:
        reason = "file too large for this file system or process limit"
    elif exc.errno == errno.ENOTDIR:
        reason = "a part of the path is a file, not a directory"
    return FaithmapError(f"cannot {action} {path}: {reason}")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """A file object whose contents replace ``path`` atomically when the block ends without error.

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding``). Writers that take a file object
    (``np.save``, ``torch.save``, ``Figure.savefig(fh, format=...)``, ``Image.save(fh, format=...)``,
    ``json.dump``) write to it directly, so no second name is ever opened.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('wb' or 'w'), got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) and not os.path.islink(path):
        raise FaithmapError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:80]}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise os_error("write", path, exc) from None
    ok = False
    try:
        try:
            os.fchmod(fd, 0o644 & ~_umask())
        except OSError:
            pass
        fh = os.fdopen(fd, mode, **({"encoding": encoding} if mode == "w" else {}))
        try:
            with fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise os_error("write", path, exc) from None
        ok = True
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(directory)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` (bytes, or text as UTF-8) atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    write_atomic(path, text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Replace ``path`` by ``obj`` as JSON atomically."""
    write_atomic(path, json.dumps(obj, indent=indent))


def save_npy(path: str | os.PathLike, arr) -> None:
    """Replace ``path`` by ``arr`` in NumPy's ``.npy`` format atomically."""
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.save(fh, np.asarray(arr), allow_pickle=False)


def parse_json(text: str | bytes, name: str) -> Any:
    """``json.loads`` with one clear line for invalid JSON and for nesting too deep to decode (no RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FaithmapError(f"{name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise FaithmapError(f"{name} nests too deeply to be read as JSON") from None
    except UnicodeDecodeError:
        raise FaithmapError(f"{name} is not UTF-8 text") from None


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[str]:
    """Create the output folder ``path`` (and missing parents) for the block; undo that if the block fails.

    Refuses, with one line, a path that is a file, lies under a file, or cannot be created or
    written. If the block raises, the folders this call created are removed with whatever the
    block wrote into them; a folder that existed before is left as it is (its files were each
    written whole by :func:`atomic_open`).
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FaithmapError(f"--out {path} exists and is not a directory")
    created: str | None = None
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        created, probe = probe, os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise FaithmapError(f"cannot create {path}: {probe} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise os_error("create", path, exc) from None
    if not os.access(path, os.W_OK | os.X_OK):
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise FaithmapError(f"cannot write to {path}: permission denied")
    try:
        yield path
    except BaseException:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
