"""Random initial weights in the parameter's dtype, without a float64 twin.

``rng.uniform(lo, hi, shape).astype(float32)`` first builds the whole array in
float64: twice the parameter's memory again, and for a model too large for
the machine a float64 allocation error instead of the size check's message.
These draw the same numbers in blocks of ``BLOCK`` and write each block into
the result: equal values, the same generator state afterwards (NumPy's
generators produce a stream, so a draw of n then m numbers is the draw of
n + m), and float64 scratch of one block at most.

``with skipped(): ...`` builds a model whose every weight is about to be
replaced by loaded ones: inside it these return zeros without drawing
(untouched zero pages cost nothing until the loader writes them; loading
SmolLM2-135M spent 4.5 of its 9 s drawing weights it then overwrote)."""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

__all__ = ["uniform", "normal", "BLOCK", "skipped"]

BLOCK = 1 << 20  # numbers per draw: 8 MiB of float64 scratch

_SKIP = contextvars.ContextVar("numtransformer_skip_init", default=False)


@contextlib.contextmanager
def skipped():
    """Initial weights as zeros, no random draws, inside the block: for a model
    whose parameters a strict loader (every parameter named, or an error)
    overwrites next.  The generators passed in are not advanced."""
    token = _SKIP.set(True)
    try:
        yield
    finally:
        _SKIP.reset(token)


def _fill(shape, dtype, draw) -> np.ndarray:
    if _SKIP.get():
        return np.zeros(shape, dtype)
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    for start in range(0, flat.size, BLOCK):
        n = min(BLOCK, flat.size - start)
        flat[start:start + n] = draw(n)
    return out


def uniform(rng: np.random.Generator, low: float, high: float, shape, dtype) -> np.ndarray:
    """``rng.uniform(low, high, shape).astype(dtype)``, in blocks."""
    return _fill(shape, dtype, lambda n: rng.uniform(low, high, n))


def normal(rng: np.random.Generator, shape, dtype, scale: float = 1.0) -> np.ndarray:
    """``(scale * rng.standard_normal(shape)).astype(dtype)``, in blocks."""
    return _fill(shape, dtype, lambda n: scale * rng.standard_normal(n))
