"""Rotary position embeddings as a layer (Su et al. 2021, RoFormer; the kernels and
the derivation of the backward: ``numtransformer.functional.rotary``)."""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_float, check_positive_int
from ..functional.rotary import ROPE_LAYOUTS, RopeCache
from ..kernels import select
from ..module import Module

__all__ = ["RotaryEmbedding"]


class RotaryEmbedding(Module):
    """Rotate each pair of coordinates of a (B, H, T, dim) head tensor by the
    angle m theta_i of its position m:

        theta_i = base^(-2i/dim)              i = 0 .. dim/2 - 1
        y       = R(m) x                      pair i turned by m theta_i (eq. 34)
        dx      = R(m)^T dy                   the rotation by -m theta_i

    ``dim`` (even) is the head dimension d_k; ``base`` is theta's base
    (10000 in the paper and Llama 2, 500000 in Llama 3); ``layout`` "half"
    (Hugging Face's Llama, rotate_half: pairs (i, i + dim/2)) or
    "interleaved" (the paper, GPT-J, llama.cpp: pairs (2i, 2i + 1)); the two
    differ by the permutation ``functional.rope_permutation(dim)``.

    ``forward(x, offset=0)`` rotates x at positions offset .. offset + T - 1
    (incremental decoding passes the number of steps already cached).  No
    parameters.  ``position(...)`` builds the (forward, backward) pair that
    ``MultiHeadAttention`` hands to the attention core's position seam.
    """

    def __init__(self, dim: int, base: float = 10000.0, layout: str = "half"):
        dim = check_positive_int(self, "dim", dim)
        if dim % 2:
            raise ValueError(f"RotaryEmbedding: dim must be even (coordinates are rotated in "
                             f"pairs), got dim={dim}")
        if isinstance(base, bool) or not isinstance(base, (int, float, np.integer,
                                                            np.floating)):
            raise TypeError(f"RotaryEmbedding: base must be a number, got {type(base).__name__}")
        base = float(base)
        if not (math.isfinite(base) and base > 0.0):
            raise ValueError(f"RotaryEmbedding: base must be a finite number > 0, got {base}")
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"RotaryEmbedding: layout must be one of "
                             f"{', '.join(map(repr, ROPE_LAYOUTS))}, got {layout!r}")
        self.dim, self.base, self.layout = dim, base, layout

    @classmethod
    def make(cls, who: str, rotary, dim: int) -> "RotaryEmbedding | None":
        """``rotary`` as a layer option: None, True (the defaults), a dict of
        ``base``/``layout``, or a RotaryEmbedding of dimension ``dim``."""
        if rotary is None or rotary is False:
            return None
        if rotary is True:
            rotary = {}
        if isinstance(rotary, dict):
            unknown = set(rotary) - {"base", "layout"}
            if unknown:
                raise ValueError(f"{who}: rotary accepts the keys 'base' and 'layout', got "
                                 f"{', '.join(map(repr, sorted(unknown)))}")
            if dim % 2:
                raise ValueError(f"{who}: rotary embeddings need an even head dimension "
                                 f"(coordinates are rotated in pairs), got d_k={dim}")
            return cls(dim, **rotary)
        if isinstance(rotary, RotaryEmbedding):
            if rotary.dim != dim:
                raise ValueError(f"{who}: rotary has dim={rotary.dim}, expected the head "
                                 f"dimension d_k={dim}")
            return rotary
        raise TypeError(f"{who}: rotary must be None, True, a dict or a RotaryEmbedding, got "
                        f"{type(rotary).__name__}")

    def _check_offset(self, offset) -> int:
        return check_positive_int(self, "offset", offset, minimum=0)

    def forward(self, x, offset: int = 0):
        x = check_float(self, "x", x, min_ndim=2, last_dim=self.dim, last_dim_name="dim")
        positions = self._check_offset(offset) + np.arange(x.shape[-2])
        return select(x.dtype).rope_forward(x, positions, self.base, self.layout)

    def backward(self, dy, cache: RopeCache):
        return select(dy.dtype).rope_backward(dy, cache)

    def position(self, Tq: int, Tk: int | None, dtype, q_offset: int = 0, k_offset: int = 0):
        """The (forward, backward) pair for the attention core: queries at
        q_offset .. q_offset + Tq - 1, keys at k_offset .. k_offset + Tk - 1
        (Tk None: the keys are left alone, already rotated in a KV cache)."""
        q_positions = q_offset + np.arange(Tq)
        k_positions = None if Tk is None else k_offset + np.arange(Tk)
        return select(dtype).rope_position(q_positions, k_positions, self.dim, self.base,
                                           self.layout, dtype)

    def rotate(self, x, offset: int = 0):
        """R(m) x at positions offset .. offset + T - 1, no cache (inference)."""
        return select(x.dtype).rope_forward(x, offset + np.arange(x.shape[-2]), self.base,
                                            self.layout)[0]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}, layout={self.layout!r}"
