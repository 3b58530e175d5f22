"""Inverted dropout."""

from __future__ import annotations

from .._validate import as_rng, check_float, check_probability
from ..functional.dropout import DropoutCache
from ..kernels import select
from ..module import Module

__all__ = ["Dropout", "DropoutCache"]


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
        return select(x.dtype).dropout_forward(x, self.p, self.rng, self.training)

    def backward(self, dy, cache: DropoutCache):
        return select(dy.dtype).dropout_backward(dy, cache)

    def extra_repr(self) -> str:
        return f"p={self.p}"
