"""Positional encodings: the fixed sinusoid table and a learned table."""

from __future__ import annotations


from typing import NamedTuple

import numpy as np

from .._init import normal
from .._validate import as_rng, check_float, check_float_dtype, check_positive_int
from ..module import Module, Parameter


def sinusoid_table(max_len: int, d_model: int) -> np.ndarray:
    """The (max_len, d_model) float64 table of "Attention Is All You Need", sec. 3.5:

        PE[pos, 2i]   = sin(pos / 10000^(2i / d_model))
        PE[pos, 2i+1] = cos(pos / 10000^(2i / d_model))

    For odd d_model the last column is a sine (there is no matching cosine).
    """
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)  # 2i for each sine column
    angle = pos / np.power(10000.0, two_i / d_model)  # (max_len, ceil(d/2))
    table = np.empty((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : d_model // 2])
    return table


class PositionalCache(NamedTuple):
    offset: int  # position of the first step (non-zero in incremental decoding)
    length: int  # T


def _check_positions(layer, x, offset, max_len, d_model, dtype):
    x = check_float(layer, "x", x, dtype=dtype, ndim=(2, 3), last_dim=d_model,
                    last_dim_name="d_model")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise TypeError(f"{type(layer).__name__}: offset must be an int, got "
                        f"{type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"{type(layer).__name__}: offset must be >= 0, got {offset}")
    T = x.shape[-2]
    if offset + T > max_len:
        raise ValueError(f"{type(layer).__name__}: positions {offset}..{offset + T - 1} "
                         f"exceed max_len={max_len} (x has {T} positions from offset={offset})")
    return x, int(offset), T


class SinusoidalPositionalEncoding(Module):
    """Adds the fixed sinusoid table to a sequence of embeddings.

    Shapes: x (B, T, D) or (T, D); y like x.

    Forward (positions start at ``offset``, used when decoding step by step):
        y[b, t] = x[b, t] + PE[offset + t]
    Backward (the table is a constant):
        dx = dy

    The table is computed once, in float64, at construction; it is cast to the
    input's dtype slice by slice, so float32 inputs stay float32.

    Scale: each pair (sin, cos) has squared length 1, so the table's entries
    have mean square 1/2 (RMS 1/sqrt(2)).  ``Transformer`` multiplies
    embeddings drawn N(0, 1/d_model) by sqrt(d_model), to mean square 1: the
    same order as the table, not the same variance.
    """

    def __init__(self, d_model: int, max_len: int = 5000):
        self.d_model = check_positive_int(self, "d_model", d_model)
        self.max_len = check_positive_int(self, "max_len", max_len)
        self.table = sinusoid_table(max_len, d_model)

    def forward(self, x, offset: int = 0):
        x, offset, T = _check_positions(self, x, offset, self.max_len, self.d_model, None)
        y = x + self.table[offset: offset + T].astype(x.dtype)
        return y, PositionalCache(offset=offset, length=T)

    def backward(self, dy, cache: PositionalCache):
        return dy

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


class LearnedPositionalEmbedding(Module):
    """Adds a learned vector per position (as in BERT and GPT).

    Shapes: x (B, T, D) or (T, D); P (max_len, D).

    Forward:
        y[b, t] = x[b, t] + P[offset + t]
    Backward:
        dP[offset + t] += sum_b dy[b, t]
        dx = dy

    Init: P ~ N(0, 0.02^2), the Hugging Face convention (its GPT-2 and BERT
    initialise every embedding with std ``initializer_range`` = 0.02).  It is
    not GPT-2's original: OpenAI's code (gpt-2, src/model.py) draws the
    position table wpe with std 0.01 and only the token table wte with 0.02.
    """

    def __init__(self, max_len: int, d_model: int, *, dtype=np.float32, rng=None):
        self.max_len = check_positive_int(self, "max_len", max_len)
        self.d_model = check_positive_int(self, "d_model", d_model)
        dtype = check_float_dtype(self, dtype)
        self.P = Parameter(normal(as_rng(rng), (max_len, d_model), dtype, 0.02))

    def forward(self, x, offset: int = 0):
        x, offset, T = _check_positions(self, x, offset, self.max_len, self.d_model,
                                        self.P.dtype)
        return x + self.P.data[offset: offset + T], PositionalCache(offset=offset, length=T)

    def backward(self, dy, cache: PositionalCache):
        dP = dy if dy.ndim == 2 else dy.sum(axis=0)
        self.P.grad[cache.offset: cache.offset + cache.length] += dP
        return dy

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}"


