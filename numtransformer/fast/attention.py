"""Fast kernels: the additive energy, the attention step, the multi-head core.

Same names, signatures and caches as ``numtransformer.functional.attention``
(the score kernels without a faster form are the reference ones).  What
makes them fast:

* the multi-head core writes its context, and its backward dq, dk and dv,
  straight into merged layouts by the matmuls' ``out=``: ``merge_heads`` of
  them is then a free reshape, and the three gradients of a self-attention
  layer land as the column blocks [dQ | dK | dV] of one (B, T, 3E) array,
  ready for the fused input projection's single GEMM;
* softmax runs in row blocks on the configured threads, its backward in
  place on the kernel's own dalpha;
* the additive energy takes tanh in place and dv_a as one GEMV;
* grouped-query heads are never copied: forward and backward view q, the
  scores and the context as (B, H_kv, g, T, .) and the matmuls broadcast each
  key/value head over its g query heads (the reference copies k and v with
  repeat_kv).  The GEMMs keep the shapes of H_kv = H: taking a group's g
  query heads as g Tq rows of one larger GEMM (which would sum dk and dv
  inside it) measured no faster single-threaded, and pushed the GEMMs past
  OpenBLAS's threading threshold, where two busy cores made them stall.

The rotary kernels turn each pair (a, b) by one complex multiplication,
(a + ib) e^(i m theta) = (a cos - b sin) + i (a sin + b cos), the rotation of
``functional.rotary`` (the backward multiplies by the conjugate): the
interleaved layout's pairs (2i, 2i+1) are already complex numbers in memory
(a free ``view``), the half layout's are gathered into one complex buffer and
scattered back.  A (32, 4, 64, 64) float32 rotation takes 0.35 ms
interleaved and 0.87 ms half, against the reference's 1.8 and 1.4 ms (one
thread).  (Writing the reference's products into one buffer with ``out=``
measured slower than the reference: half-width pair views give NumPy short
inner loops.)

The fast multi-head core normalises the scores in place, so its cache has
``e = None``: keeping e costs one more (B, H, Tq, Tk) buffer per layer (at
B=32, T=64, d_model=256, 4 heads, float32: 2 MiB on a 10 MiB cache) and
measurable time (cross-attention forward+backward 6% slower on one thread).
Inspection reads the reference kernels' caches, which keep e: ``numtransformer
trace`` runs its forward under ``use_kernels("reference")``
(``numtransformer.trace.reference_forward``).
"""

from __future__ import annotations

import math

import numpy as np

from ..functional.attention import (AdditiveEnergyCache, AdditiveScoreCache, AttentionCache,
                                    ScaledDotProductCache)
from ..functional.attention import merge_heads as _merge_heads_reference
from ..functional.dropout import dropout_backward, dropout_forward
from ..functional.rotary import RopeCache, rope_tables
from .activations import softmax, softmax_backward
from .linear import linear_backward, linear_forward

__all__ = ["additive_energy_forward", "additive_energy_backward",
           "additive_score_forward", "additive_score_backward",
           "attention_forward", "attention_backward", "merge_heads",
           "scaled_dot_product_attention_forward", "scaled_dot_product_attention_backward",
           "rope_rotate", "rope_forward", "rope_backward", "rope_position"]


def additive_energy_forward(sq, hk, v_a):
    """t = tanh(sq_i + hk_j) in place on the broadcast sum; e = t v_a (a GEMV)."""
    t = sq[:, :, None, :] + hk[:, None, :, :]
    np.tanh(t, out=t)
    e = t @ v_a
    return e, AdditiveEnergyCache(t=t, v_a=v_a)


def additive_energy_backward(de, cache: AdditiveEnergyCache):
    """dv_a as one GEMV de^T t over the (B Tq Tk, A) rows; dz built in place."""
    t, v_a = cache.t, cache.v_a
    A = t.shape[-1]
    dv_a = de.reshape(-1) @ t.reshape(-1, A)
    dz = de[..., None] * v_a
    tanh_deriv = t * t
    np.subtract(1.0, tanh_deriv, out=tanh_deriv)
    dz *= tanh_deriv
    dsq = dz.sum(axis=2)
    dhk = dz[:, 0] if dz.shape[1] == 1 else dz.sum(axis=1)  # one query: nothing to sum
    return dsq, dhk, dv_a


def additive_score_forward(s, h, W_q, W_k, v_a):
    """The reference additive score on the fast energy and linear kernels."""
    sq, sq_cache = linear_forward(s, W_q)
    hk, hk_cache = linear_forward(h, W_k)
    e, energy = additive_energy_forward(sq, hk, v_a)
    return e, AdditiveScoreCache(sq=sq_cache, hk=hk_cache, energy=energy)


def additive_score_backward(de, cache: AdditiveScoreCache, W_q, W_k):
    dsq, dhk, dv_a = additive_energy_backward(de, cache.energy)
    ds, dW_q, _ = linear_backward(dsq, cache.sq, W_q, has_bias=False)
    dh, dW_k, _ = linear_backward(dhk, cache.hk, W_k, has_bias=False)
    return ds, dh, dW_q, dW_k, dv_a


def attention_forward(e, v, mask=None):
    """alpha = softmax(e) in row blocks on the threads; c = alpha v."""
    alpha = softmax(e, axis=-1, mask=mask)
    c = alpha @ v
    return c, AttentionCache(e=e, alpha=alpha, c=c, v=v, score=None)


def attention_backward(dc, cache: AttentionCache):
    """de computed in place on this call's own dalpha.  With one query (a
    decoder's step, Tq = 1) dv = alpha^T dc is an outer product per row: a
    broadcast product, the same numbers, at half the batched matmul's time."""
    alpha, v = cache.alpha, cache.v
    dalpha = dc @ v.swapaxes(-1, -2)
    if alpha.shape[-2] == 1:
        dv = alpha.swapaxes(-1, -2) * dc
    else:
        dv = alpha.swapaxes(-1, -2) @ dc
    de = softmax_backward(dalpha, alpha, axis=-1, out=dalpha)
    return de, dv


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def merge_heads(*xs):
    """The reference merge, free when the heads already sit in a merged layout:
    one array laid out as (B, T, H, d) (a context or gradient of the core
    below) is reshaped, and n arrays that are the blocks of one (B, T, n, H, d)
    buffer (dq, dk, dv of a self-attention backward) give that buffer as
    (B, T, n*H*d).  Anything else is copied, as the reference does."""
    x0 = xs[0]
    B, H, T, d = x0.shape
    if len(xs) == 1:
        return x0.transpose(0, 2, 1, 3).reshape(B, T, H * d)
    n, base, size = len(xs), x0.base, x0.itemsize
    if (base is not None and base.shape == (B, T, n, H, d) and base.flags.c_contiguous
            and base.size > 0):
        strides = (T * n * H * d * size, d * size, n * H * d * size, size)
        if all(x.base is base and x.shape == x0.shape and x.strides == strides
               and _address(x) == _address(base) + i * H * d * size for i, x in enumerate(xs)):
            return base.reshape(B, T, n * H * d)
    return _merge_heads_reference(*xs)


def _merged_buffers(dtype, *like):
    """Arrays shaped as the (B, H, T, d) arrays ``like``, laid out as (B, T, H, d),
    so that ``merge_heads`` reshapes them for free.  When ``like`` are three
    views of one buffer (q, k, v of one fused projection: self-attention), the
    three share one (B, T, 3, H, d) buffer, which ``merge_heads`` returns as
    [x0 | x1 | x2] for the fused projection's backward GEMM; otherwise each has
    its own contiguous buffer."""
    shapes = [x.shape for x in like]
    base = like[0].base
    if (len(like) == 3 and shapes[0] == shapes[1] == shapes[2] and base is not None
            and all(x.base is base for x in like)):
        B, H, T, d = shapes[0]
        buf = np.empty((B, T, 3, H, d), dtype)
        return [buf[:, :, i].transpose(0, 2, 1, 3) for i in range(3)]
    return [np.empty((B, T, H, d), dtype).transpose(0, 2, 1, 3) for B, H, T, d in shapes]


def scaled_dot_product_attention_forward(q, k, v, mask=None, dropout_p: float = 0.0, rng=None,
                                         position=None, overwrite_q: bool = False, bias=None):
    """The reference core; q is scaled in place into q_s when the caller allows
    it (``overwrite_q``: MHA's q is a view of its own fresh projection) or when
    the position map made a new q; the context is written by the matmul
    straight into a merged (B, Tq, H, d_v) layout; softmax runs in row blocks
    on the threads, in place on the scores: the cache's e is None (see the
    module docstring); a bias is added in place.  Grouped-query heads (H_kv <
    H) are never copied (no repeat_kv): q_s and the context are viewed as
    (B, H_kv, g, Tq, d) and the matmuls broadcast each key/value head over its
    g query heads."""
    if position is None:
        q_p, k_p = q, k
    else:
        q_p, k_p = position[0](q, k)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if overwrite_q or q_p is not q:
        q_s = q_p
        q_s *= scale
    else:
        q_s = np.multiply(q_p, scale)
    B, H, Tq, _ = q.shape
    H_kv, Tk, d_v = k_p.shape[1], k_p.shape[2], v.shape[-1]
    g = H // H_kv
    if g == 1:
        e = q_s @ k_p.swapaxes(-1, -2)
    else:  # (B, H_kv, g, Tq, d) @ (B, H_kv, 1, d, Tk): a fresh (B, H_kv, g, Tq, Tk)
        q5 = q_s.reshape(B, H_kv, g, Tq, q_s.shape[-1])  # a view: H split as (H_kv, g)
        e = (q5 @ k_p[:, :, None].swapaxes(-1, -2)).reshape(B, H, Tq, Tk)
    if bias is not None:
        e += bias
    alpha = softmax(e, axis=-1, mask=mask, out=e)  # e is this call's own: normalise in place
    alpha_drop, dropout = dropout_forward(alpha, dropout_p, rng, training=dropout_p > 0)
    buf = np.empty((B, Tq, H, d_v), alpha.dtype)
    context = buf.transpose(0, 2, 1, 3)
    if g == 1:
        np.matmul(alpha_drop, v, out=context)
    else:
        np.matmul(alpha_drop.reshape(B, H_kv, g, Tq, Tk), v[:, :, None],
                  out=buf.reshape(B, Tq, H_kv, g, d_v).transpose(0, 2, 3, 1, 4))
    return context, ScaledDotProductCache(q_s=q_s, k=k_p, v=v, e=None, alpha=alpha,
                                          dropout=dropout, alpha_drop=alpha_drop,
                                          context=context, position=position)


def scaled_dot_product_attention_backward(dcontext, cache: ScaledDotProductCache, dalpha=None):
    """The reference backward; dq, dk and dv are written by the matmuls into
    merged layouts (one buffer when q_s, k, v came from one fused projection),
    de is computed in place on this call's own dalpha, dq scaled in place.
    Grouped-query heads: see ``_grouped_backward``."""
    q_s, k_p, v, alpha = cache.q_s, cache.k, cache.v, cache.alpha
    B, H, Tq, d_k = q_s.shape
    H_kv, Tk, d_v = k_p.shape[1], k_p.shape[2], v.shape[-1]
    if H_kv != H:
        return _grouped_backward(dcontext, cache, dalpha, B, H, H_kv, Tq, Tk, d_k, d_v)
    dq_p, dk_p, dv = _merged_buffers(q_s.dtype, q_s, k_p, v)
    dalpha_drop = dcontext @ v.swapaxes(-1, -2)
    np.matmul(cache.alpha_drop.swapaxes(-1, -2), dcontext, out=dv)
    dalpha_total = dropout_backward(dalpha_drop, cache.dropout)  # ours: a fresh array
    if dalpha is not None:
        np.add(dalpha_total, dalpha, out=dalpha_total)
    de = softmax_backward(dalpha_total, alpha, axis=-1, out=dalpha_total)
    np.matmul(de.swapaxes(-1, -2), q_s, out=dk_p)
    np.matmul(de, k_p, out=dq_p)
    dq_p *= 1.0 / math.sqrt(q_s.shape[-1])
    if cache.position is None:
        return dq_p, dk_p, dv
    dq, dk = cache.position[1](dq_p, dk_p)
    return dq, dk, dv


def _grouped_backward(dcontext, cache, dalpha, B, H, H_kv, Tq, Tk, d_k, d_v):
    """The backward for H_kv < H on (B, H_kv, g, T, .) views: each key/value head
    is broadcast over its g query heads inside the matmuls (the same GEMM shapes
    as H_kv = H: no copies of k and v), then dk and dv sum over the g axis."""
    q_s, k_p, v, alpha = cache.q_s, cache.k, cache.v, cache.alpha
    g = H // H_kv
    dcontext5 = dcontext.reshape(B, H_kv, g, Tq, d_v)
    dalpha_drop = (dcontext5 @ v[:, :, None].swapaxes(-1, -2)).reshape(B, H, Tq, Tk)
    dv = (cache.alpha_drop.reshape(B, H_kv, g, Tq, Tk).swapaxes(-1, -2) @ dcontext5).sum(axis=2)
    dalpha_total = dropout_backward(dalpha_drop, cache.dropout)  # ours: a fresh array
    if dalpha is not None:
        np.add(dalpha_total, dalpha, out=dalpha_total)
    de = softmax_backward(dalpha_total, alpha, axis=-1, out=dalpha_total)
    de5 = de.reshape(B, H_kv, g, Tq, Tk)
    dk_p = (de5.swapaxes(-1, -2) @ q_s.reshape(B, H_kv, g, Tq, d_k)).sum(axis=2)
    dq_p = (de5 @ k_p[:, :, None]).reshape(B, H, Tq, d_k)
    dq_p *= 1.0 / math.sqrt(d_k)
    if cache.position is None:
        return dq_p, dk_p, dv
    dq, dk = cache.position[1](dq_p, dk_p)
    return dq, dk, dv


# -- rotary position embeddings -------------------------------------------------------------

def _turn(x, cache: RopeCache, conjugate: bool):
    """Every pair (a, b) of x as a + ib, times e^(i m theta) (or its conjugate)."""
    turn = cache.cos - 1j * cache.sin if conjugate else cache.cos + 1j * cache.sin
    complex_dtype = np.result_type(x.dtype, np.complex64)
    if cache.layout == "interleaved":
        if x.strides[-1] != x.itemsize:  # the pairs must sit side by side in memory
            x = np.ascontiguousarray(x)
        z = x.view(complex_dtype) * turn
        return z.view(x.dtype)
    half = x.shape[-1] // 2
    z = np.empty(x.shape[:-1] + (half,), complex_dtype)
    z.real[...] = x[..., :half]
    z.imag[...] = x[..., half:]
    z *= turn
    y = np.empty(x.shape, x.dtype)
    y[..., :half] = z.real
    y[..., half:] = z.imag
    return y


def rope_rotate(x, cache: RopeCache):
    """y = R(m) x as (a + ib) e^(i m theta) (see the module docstring)."""
    return _turn(x, cache, conjugate=False)


def rope_forward(x, positions, base: float = 10000.0, layout: str = "half"):
    cache = rope_tables(positions, x.shape[-1], base, layout, x.dtype)
    return rope_rotate(x, cache), cache


def rope_backward(dy, cache: RopeCache):
    """dx = R(m)^T dy as (dy_a + i dy_b) e^(-i m theta)."""
    return _turn(dy, cache, conjugate=True)


def rope_position(q_positions, k_positions, d: int, base: float = 10000.0,
                  layout: str = "half", dtype=np.float64):
    """The reference's position pair on the kernels above."""
    q_tables = rope_tables(q_positions, d, base, layout, dtype)
    k_tables = None if k_positions is None else rope_tables(k_positions, d, base, layout, dtype)

    def forward(q, k):
        return rope_rotate(q, q_tables), (k if k_tables is None else rope_rotate(k, k_tables))

    def backward(dq, dk):
        return (rope_backward(dq, q_tables),
                dk if k_tables is None else rope_backward(dk, k_tables))

    return forward, backward
