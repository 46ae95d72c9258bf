"""Process-level memory settings that make CPU model passes faster.

PyTorch's CPU allocator takes tensor memory from the C library's ``malloc``. glibc serves
allocations above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and returns them
to the system on ``free``; every new activation of a batch then pays a page fault per 4 KiB page
(on virtual machines especially). A batch of 20 EfficientNet-Lite0 activations at 224 px holds
tensors of 96 MiB, so the same buffers are faulted in again at every layer of every pass: measured
here, cloning one such tensor took 65 ms with glibc's defaults and 11 ms with the settings below,
and I-GOS on one photo went from 22 s to 14.5 s (``BENCHMARKS.md``).

:func:`keep_freed_memory` tells glibc to serve large blocks from its heap and keep freed memory for
reuse (``mallopt(M_MMAP_MAX, 0)`` and a high ``M_TRIM_THRESHOLD``; the same as setting the
environment variables ``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_``). The cost: the
process keeps its peak heap until it exits. The ``faithmap`` command calls it at start; library
users opt in by calling it once. On systems without glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed memory in the process for reuse (glibc only); True when the setting is in force.

    Idempotent. Returns False, changing nothing, where the C library is not glibc.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
