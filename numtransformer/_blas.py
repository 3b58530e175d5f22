"""The BLAS's own thread count, changed at run time (OpenBLAS, as NumPy's and SciPy's wheels bundle it).

Why.  An OpenBLAS worker thread does not sleep when a GEMM ends: it spins,
waiting for the next one, for about 2^28 cycles (``OPENBLAS_THREAD_TIMEOUT``,
read once, when NumPy loads the library).  When the elementwise passes between
two GEMMs (GELU, the norms, the attention core) run on ``_parallel``'s threads,
the spinning worker takes a core from them: measured on the MiniLM encoder with
two cores, those passes ran no faster on two threads than on one (GELU 114 ms
against 107; the residual adds and layer norms 35 against 34), and 1.4-1.6x
faster once the BLAS was held to one thread (GELU 67-71 ms, adds and norms
23-25).  ``inference.own_threads()`` therefore holds the BLAS to one thread
and splits each large GEMM by rows (or, for one row, by columns) over
``_parallel``'s threads itself (``_parallel.parallel_matmul``): every core then
works for one pool, as PyTorch's operators all share OpenMP's.

How.  The BLAS libraries loaded in this process are found in /proc/self/maps
(Linux), and their ``*openblas_set_num_threads*`` functions are called through
ctypes.  Elsewhere (macOS, Windows, another BLAS) ``available()`` is False and
nothing changes.  The setting is the whole process's: ``single_threaded()``
counts its users, so nested and concurrent blocks restore the BLAS's count when
the last one leaves.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

__all__ = ["available", "single_threaded"]

_NAMES = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
          ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
          ("openblas_get_num_threads", "openblas_set_num_threads"))
_lock = threading.Lock()
_state = {"controls": None, "depth": 0, "saved": []}


def _find() -> list:
    """[(get, set)] of each OpenBLAS library mapped into this process (Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f
                            if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    except OSError:
        return []
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and put is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                controls.append((get, put))
                break
    return controls


def _controls() -> list:
    if _state["controls"] is None:
        import numpy  # noqa: F401  (NumPy's BLAS must be loaded to be found)
        _state["controls"] = _find()
    return _state["controls"]


def available() -> bool:
    """True when this process's BLAS thread count can be changed (OpenBLAS on Linux)."""
    with _lock:
        return bool(_controls())


@contextlib.contextmanager
def single_threaded():
    """``with single_threaded(): ...``: every OpenBLAS in the process runs on one thread
    inside the block (of any thread: the setting is global); the counts it had come
    back when the last block open in the process closes."""
    with _lock:
        if _state["depth"] == 0:
            _state["saved"] = [(put, get()) for get, put in _controls()]
            for put, n in _state["saved"]:
                if n != 1:
                    put(1)
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                for put, n in _state["saved"]:
                    if n != 1:
                        put(n)
                _state["saved"] = []
