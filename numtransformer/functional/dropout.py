"""Reference kernels: inverted dropout."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["DropoutCache", "dropout_forward", "dropout_backward"]


class DropoutCache(NamedTuple):
    mask: np.ndarray | None  # keep / (1 - p) per entry; None when dropout is off


def dropout_forward(x, p: float, rng, training: bool = True):
    """Inverted dropout (Srivastava et al., 2014); the identity when not training.

    Training, 0 < p < 1:
        keep ~ Bernoulli(1 - p) per entry     (drawn from the Generator ``rng``)
        mask = keep / (1 - p)                 so E[y] = x and eval needs no rescale
        y    = x * mask
    p = 1 drops everything (mask = 0).  Returns (y, DropoutCache).
    """
    if not training or p == 0.0:
        return x, DropoutCache(mask=None)
    if p == 1.0:
        mask = np.zeros_like(x)
    else:
        keep = rng.random(x.shape, dtype=x.dtype) >= p
        mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    y = x * mask
    return y, DropoutCache(mask=mask)


def dropout_backward(dy, cache: DropoutCache):
    """y = x * mask is linear in x:   dx = dy * mask   (dx = dy when dropout was off)."""
    if cache.mask is None:
        return dy
    return dy * cache.mask
