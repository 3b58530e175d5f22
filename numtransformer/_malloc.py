"""Keep freed memory for reuse (glibc malloc), for training loops.

A training step allocates and frees the same large arrays every step
(activations, caches, gradients).  By default glibc serves allocations above
a threshold (128 KiB, raised dynamically up to 32 MiB) with fresh ``mmap``
pages and returns them to the OS on ``free``, and it trims the top of the heap
once 128 KiB there are free.  So every step faults in, and the kernel zeroes,
much of its working set again: measured by ``benchmarks/bench_train.py`` as
thousands of minor page faults per step.

``keep_freed_memory()`` sets ``M_MMAP_THRESHOLD`` to glibc's maximum (32 MiB on
64-bit: larger values are refused) and ``M_TRIM_THRESHOLD`` to its maximum, so
freed blocks stay in the heap and the next step reuses them.  The cost: the
process keeps its peak heap until it exits, which a training run reaches
anyway.  It changes the whole process, so the library never calls it on
import; ``numtransformer train`` calls it.  Elsewhere than glibc (macOS,
musl, Windows) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc: 4 MiB * sizeof(long) on 64-bit
_applied = None


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when glibc accepted them."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = mmap_ok and trim_ok
    return _applied
