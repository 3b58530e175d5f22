"""Which kernels the layers call: the reference ones or the fast ones.

Every layer's math lives once, as a pair of plain functions in
``numtransformer.functional`` (the *reference kernels*: one statement per
docstring line, what a student checks with a pencil and what the float64
gradient oracle runs).  ``numtransformer.fast`` holds kernels with the same
names, signatures and cache records that compute the same numbers faster (row
blocks on threads, in-place buffers, fused layouts); each is tested equal to
its reference (float64 <= 1e-13 relative, float32 within a few ulps).  Because
the caches are the same records, a backward may use either family whatever
family ran the forward.

The switch, one of three modes:

    "auto"       (default) fast kernels for float32 (and float16) work,
                 reference kernels for float64: training is fast, gradient
                 checks and float64 oracles read as the equations
    "reference"  always the reference kernels
    "fast"       always the fast kernels (float64 training at full speed)

Set it for the process with the environment variable
``NUMTRANSFORMER_KERNELS`` or ``set_kernels(mode)``, or for a block of code
with the context manager ``use_kernels(mode)`` (it wins over both, and is
local to the thread or task that enters it).  ``gradcheck`` enters
``use_kernels("reference")`` unless asked otherwise.

A layer asks ``select(dtype)`` once per forward or backward and calls the
kernel by name on the namespace it gets back::

    K = select(x.dtype)
    y, cache = K.layer_norm_forward(x, gamma, beta, eps)
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np

__all__ = ["MODES", "get_kernels", "set_kernels", "use_kernels", "select"]

MODES = ("auto", "reference", "fast")
ENV = "NUMTRANSFORMER_KERNELS"

_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "numtransformer_kernels", default=None)
_process = {"mode": None}  # set_kernels; None: the environment's


def _check(mode, who: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{who}: mode must be one of {', '.join(map(repr, MODES))}, "
                         f"got {mode!r}")
    return mode


def _from_env() -> str:
    text = os.environ.get(ENV, "").strip().lower()
    if not text:
        return "auto"
    return _check(text, f"environment variable {ENV}")


def get_kernels() -> str:
    """The mode in force here: the innermost ``use_kernels``, else ``set_kernels``'s,
    else the environment's, else "auto"."""
    mode = _scoped.get()
    if mode is not None:
        return mode
    if _process["mode"] is not None:
        return _process["mode"]
    return _from_env()


def set_kernels(mode: str | None) -> None:
    """Use ``mode`` in this process from now on (None: back to the environment's)."""
    _process["mode"] = None if mode is None else _check(mode, "set_kernels")


@contextlib.contextmanager
def use_kernels(mode: str):
    """``with use_kernels("reference"): ...`` runs the block with that mode."""
    token = _scoped.set(_check(mode, "use_kernels"))
    try:
        yield
    finally:
        _scoped.reset(token)


def select(dtype=None):
    """The kernel namespace for work in ``dtype``: ``numtransformer.functional``
    or ``numtransformer.fast`` (see the module docstring for the rule)."""
    mode = _scoped.get() or _process["mode"] or _from_env()
    if mode == "auto":
        mode = "reference" if dtype == _FLOAT64 else "fast"
    if not _namespaces:
        from . import fast, functional  # here, not at the top: they import nothing of ours
        _namespaces.update(fast=fast, reference=functional)
    return _namespaces[mode]


_FLOAT64 = np.dtype(np.float64)
_namespaces: dict = {}
