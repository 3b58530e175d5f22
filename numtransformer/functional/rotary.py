"""Reference kernels: rotary position embeddings (RoPE; Su et al. 2021, "RoFormer:
Enhanced Transformer with Rotary Position Embedding", sec. 3.2, eqs. 13-16 and
34).

A head vector x (d even) at position m is cut into d/2 pairs (a_i, b_i), and
pair i is turned by the angle m theta_i in its plane:

    theta_i = base^(-2i/d)                 i = 0 .. d/2 - 1   (base = 10000 in the paper)
    y_a_i   = a_i cos(m theta_i) - b_i sin(m theta_i)
    y_b_i   = a_i sin(m theta_i) + b_i cos(m theta_i)

that is y = R(m) x with R(m) block diagonal, one 2x2 rotation per pair
(eq. 15).  Applied to the queries and the keys of an attention layer, the
score of query position m and key position n becomes (eq. 16)

    q_m' . k_n' = (R(m) q)^T (R(n) k) = q^T R(m)^T R(n) k = q^T R(n - m) k

since rotations by the same plane angles compose by adding them (R(m)^T =
R(-m)): it depends on the positions only through n - m.

Two layouts decide which coordinates form pair i:

    "half"         (a_i, b_i) = (x_i, x_{i + d/2})   Hugging Face's Llama ("rotate_half",
                                                   GPT-NeoX): y = x cos + rotate_half(x) sin,
                                                   rotate_half(x) = [-x_2nd_half, x_1st_half]
    "interleaved"  (a_i, b_i) = (x_2i, x_2i+1)       the paper (eq. 34), GPT-J, llama.cpp

The two are the same map up to a fixed permutation of the coordinates:
with P = [0, 2, 4, .., d-2, 1, 3, .., d-1] (the evens, then the odds),

    rope_half(x[..., P]) = rope_interleaved(x)[..., P]

so a model trained in one layout runs in the other after permuting the
columns of each head of W_q and W_k (and the entries of b_q, b_k) by P:
q_m . k_n is unchanged by permuting both vectors alike.  (This is the
permutation Hugging Face's Llama conversion script applies to the weights of
Meta's original, interleaved checkpoints.)  ``rope_permutation(d)`` returns P.

The backward.  R(m) is orthogonal, so the vector-Jacobian product of y = R(m) x
is dx = R(m)^T dy: the rotation by -m theta_i (cos is even, sin odd):

    da_i = dy_a_i cos(m theta_i) + dy_b_i sin(m theta_i)
    db_i = -dy_a_i sin(m theta_i) + dy_b_i cos(m theta_i)

from y_a = a cos - b sin, y_b = a sin + b cos: dL/da = dy_a dy_a/da + dy_b
dy_b/da = dy_a cos + dy_b sin, and dL/db = -dy_a sin + dy_b cos.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["ROPE_LAYOUTS", "RopeCache", "rope_tables", "rope_rotate", "rope_forward",
           "rope_backward", "rope_position", "rope_permutation"]

ROPE_LAYOUTS = ("half", "interleaved")


class RopeCache(NamedTuple):
    cos: np.ndarray  # (T, d/2) or (B, 1, T, d/2): cos(m theta_i), in the dtype of x
    sin: np.ndarray  # the same shape: sin(m theta_i)
    layout: str  # "half" or "interleaved": which coordinates form pair i


def rope_tables(positions, d: int, base: float = 10000.0, layout: str = "half",
                dtype=np.float64) -> RopeCache:
    """The cos and sin of every angle m theta_i.

    ``positions``: integer positions m, shape (T,) (one sequence of positions
    for the whole batch: offset + arange(T) in incremental decoding) or (B, T)
    (one per sequence); the tables are (T, d/2) or (B, 1, T, d/2), so they
    broadcast against (B, H, T, d/2).

        theta_i = base^(-2i/d) = 1 / base^(2i/d)   computed as Hugging Face does
        angle   = m theta_i                       (T, d/2) or (B, T, d/2)
        cos, sin of the angles

    The angles are formed and taken cos/sin of in float64 (m theta_i exceeds
    1000 in long contexts, where float32 keeps 3 decimals), then cast to
    ``dtype``: a float32 layer gets float32 tables and does float32 work.
    (Hugging Face's ``LlamaRotaryEmbedding`` forms them in float32; the
    tables differ from ours by float32 rounding of the angles.)
    """
    theta = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    m = np.asarray(positions, dtype=np.float64)
    angle = m[..., None] * theta
    if angle.ndim == 3:  # per-sequence positions: broadcast over the heads
        angle = angle[:, None]
    return RopeCache(cos=np.cos(angle).astype(dtype), sin=np.sin(angle).astype(dtype),
                     layout=layout)


def _pairs(x, layout: str):
    """(a, b): the first and second coordinates of the d/2 pairs of x (views)."""
    if layout == "half":
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]
    return x[..., 0::2], x[..., 1::2]


def _unpairs(a, b, layout: str):
    """The inverse of ``_pairs``: a new array with the pairs' coordinates in place."""
    if layout == "half":
        return np.concatenate([a, b], axis=-1)
    return np.stack([a, b], axis=-1).reshape(a.shape[:-1] + (2 * a.shape[-1],))


def rope_rotate(x, cache: RopeCache):
    """y = R(m) x with the tables of ``cache``: every pair (a_i, b_i) turned by m theta_i.

        a, b = the pairs of x                 (layout: see the module docstring)
        y_a  = a cos - b sin
        y_b  = a sin + b cos
        y    = the pairs (y_a, y_b) put back in the layout
    """
    a, b = _pairs(x, cache.layout)
    y_a = a * cache.cos - b * cache.sin
    y_b = a * cache.sin + b * cache.cos
    return _unpairs(y_a, y_b, cache.layout)


def rope_forward(x, positions, base: float = 10000.0, layout: str = "half"):
    """Rotary position embedding of x (B, H, T, d), d even, at ``positions`` (T,) or (B, T).

        cos, sin = rope_tables(positions, d, base)   cos(m theta_i), sin(m theta_i)
        y        = R(m) x                            rope_rotate
    Returns (y, RopeCache).
    """
    cache = rope_tables(positions, x.shape[-1], base, layout, x.dtype)
    y = rope_rotate(x, cache)
    return y, cache


def rope_backward(dy, cache: RopeCache):
    """dx = R(m)^T dy, the rotation by -m theta_i (derived in the module docstring).

        dy_a, dy_b = the pairs of dy
        da = dy_a cos + dy_b sin
        db = dy_b cos - dy_a sin
        dx = the pairs (da, db) put back in the layout
    """
    dy_a, dy_b = _pairs(dy, cache.layout)
    da = dy_a * cache.cos + dy_b * cache.sin
    db = dy_b * cache.cos - dy_a * cache.sin
    return _unpairs(da, db, cache.layout)


def rope_position(q_positions, k_positions, d: int, base: float = 10000.0,
                  layout: str = "half", dtype=np.float64):
    """The (forward, backward) pair for the attention core's ``position`` seam.

    ``forward(q, k) -> (R(m) q, R(n) k)`` with m in ``q_positions`` and n in
    ``k_positions``; ``backward(dq', dk') -> (R(m)^T dq', R(n)^T dk')``.
    ``k_positions=None`` leaves the keys as they come (keys rotated when they
    were stored: a KV cache) and returns dk' unchanged.  The tables are built
    once here, in ``dtype``, and shared by both functions.
    """
    q_tables = rope_tables(q_positions, d, base, layout, dtype)
    k_tables = None if k_positions is None else rope_tables(k_positions, d, base, layout, dtype)

    def forward(q, k):
        return rope_rotate(q, q_tables), (k if k_tables is None else rope_rotate(k, k_tables))

    def backward(dq, dk):
        return (rope_backward(dq, q_tables),
                dk if k_tables is None else rope_backward(dk, k_tables))

    return forward, backward


def rope_permutation(d: int) -> np.ndarray:
    """P = [0, 2, .., d-2, 1, 3, .., d-1]: rope_half(x[..., P]) = rope_interleaved(x)[..., P].

    Pair i of the interleaved layout, coordinates (2i, 2i+1), lands at
    (i, i + d/2), pair i of the half layout.  Its inverse is ``np.argsort(P)``.
    """
    return np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
