"""Inverted dropout."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import as_rng, check_float, check_probability
from ..module import Module


class DropoutCache(NamedTuple):
    mask: np.ndarray | None  # keep / (1 - p) per entry; None when dropout is off


class Dropout(Module):
    """Inverted dropout (Srivastava et al., 2014), identity in eval mode.

    Forward (training, 0 < p < 1):
        keep ~ Bernoulli(1 - p) per entry
        mask = keep / (1 - p)             (so E[y] = x and eval needs no rescale)
        y    = x * mask
    Backward:
        dx = dy * mask

    The mask lives in the returned cache, never on ``self``: one Dropout object
    applied to two branches draws two masks, and each backward uses its own.
    Each Dropout owns a seeded ``np.random.Generator`` (``rng``: a seed or a
    Generator), so runs are reproducible.  p = 1 drops everything (y = 0).
    """

    def __init__(self, p: float = 0.1, *, rng=None):
        self.p = check_probability(self, "p", p)
        self.rng = as_rng(rng)

    def forward(self, x):
        x = check_float(self, "x", x)
        if not self.training or self.p == 0.0:
            return x, DropoutCache(mask=None)
        if self.p == 1.0:
            mask = np.zeros_like(x)
        else:
            keep = self.rng.random(x.shape, dtype=x.dtype) >= self.p
            mask = keep.astype(x.dtype) * (1.0 / (1.0 - self.p))
        return x * mask, DropoutCache(mask=mask)

    def backward(self, dy, cache: DropoutCache):
        if cache.mask is None:
            return dy
        return dy * cache.mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
