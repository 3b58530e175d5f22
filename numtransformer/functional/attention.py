"""Reference kernels: the attention scores, the attention step, multi-head attention.

Names follow the RNN-attention papers: ``s`` (B, Tq, Dq) are the queries (the
decoder states that ask), ``h`` (B, Tk, Dk) the keys (the encoder states that
answer), ``e`` (B, Tq, Tk) the scores, ``alpha`` the weights, ``c`` the context.

The score kernels (every one maps (s, h) to e, each backward returns (ds, dh)
and then its parameter gradients, in the order of the parameters):

    dot_score          e = s h^T                          Luong et al. 2015, eq. 8 "dot"
    scaled_dot_score   e = s h^T / sqrt(D)                Vaswani et al. 2017, eq. 1
    general_score      e = (s W_a) h^T                    Luong et al. 2015, eq. 8 "general"
    additive_score     e_ij = v_a . tanh(s_i W_q + h_j W_k)   Bahdanau et al. 2015, A.1.2;
                                                          Luong's eq. 8 "concat"
    cosine_score       e = beta cos(s_i, h_j)             Graves et al. 2014, eqs. 5-6
    location_score     e = (s W_a)[:, :, :Tk]             Luong et al. 2015, eq. 9

The attention step (``attention_forward``) turns scores into weights and a
context; the multi-head core (``scaled_dot_product_attention_forward``) is
the step of one Transformer attention layer over (B, H, T, d_k) heads, the
one place where masks (padding, causal, sliding window), an additive score
bias (ALiBi), dropout on the weights, a position transform of q and k (rotary
embeddings, ``functional.rotary``) and grouped key/value heads (GQA's
``repeat_kv`` and its backward ``sum_kv_groups``) meet the query-key product.

The matrix rules every backward here uses.  For Y = X W (X (N, D_in), W
(D_in, D_out)): dX = dY W^T and dW = X^T dY.  For E = Q K^T (one row per
query, one column per key): E_ij = sum_d Q_id K_jd, so dQ_id = sum_j dE_ij
K_jd and dK_jd = sum_i dE_ij Q_id, that is
    dQ = dE K          dK = dE^T Q
(batched over the leading axes).  A vector added to every row (a bias, sq_i
added to every key j) gets the sum of the rows' gradients: broadcast-then-sum.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .activations import softmax, softmax_backward
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .linear import LinearCache, linear_backward, linear_forward

__all__ = ["AdditiveEnergyCache", "additive_energy_forward", "additive_energy_backward",
           "DotScoreCache", "dot_score_forward", "dot_score_backward",
           "scaled_dot_score_forward", "scaled_dot_score_backward",
           "GeneralScoreCache", "general_score_forward", "general_score_backward",
           "AdditiveScoreCache", "additive_score_forward", "additive_score_backward",
           "CosineScoreCache", "cosine_score_forward", "cosine_score_backward",
           "LocationScoreCache", "location_score_forward", "location_score_backward",
           "AttentionCache", "attention_forward", "attention_backward",
           "split_heads", "merge_heads", "repeat_kv", "sum_kv_groups",
           "ScaledDotProductCache", "scaled_dot_product_attention_forward",
           "scaled_dot_product_attention_backward"]


# -- the additive energy, shared by the additive score, Bahdanau's decoder and the LSTMN --

class AdditiveEnergyCache(NamedTuple):
    t: np.ndarray  # (B, Tq, Tk, A): tanh(sq_i + hk_j)
    v_a: np.ndarray  # (A,) the scoring vector


def additive_energy_forward(sq, hk, v_a):
    """The additive (Bahdanau) energy of every query-key pair, from their projections.

    Shapes: sq (B, Tq, A) the projected queries, hk (B, Tk, A) the projected
    keys, v_a (A,); e (B, Tq, Tk).

        t_ij = tanh(sq_i + hk_j)            (B, Tq, Tk, A): sq and hk broadcast
        e_ij = t_ij . v_a

    The projections (sq = s W_q, hk = h W_k, or LSTMN's sums of several) stay
    with the caller, who computes each once; this kernel is the part every
    additive score shares.  Returns (e, AdditiveEnergyCache).
    """
    t = np.tanh(sq[:, :, None, :] + hk[:, None, :, :])
    e = t @ v_a
    return e, AdditiveEnergyCache(t=t, v_a=v_a)


def additive_energy_backward(de, cache: AdditiveEnergyCache):
    """The gradients of e_ij = tanh(sq_i + hk_j) . v_a.  Returns (dsq, dhk, dv_a).

        dv_a  = sum_{b,i,j} de_ij t_ij
        dt_ij = de_ij v_a
        dz_ij = dt_ij (1 - t_ij^2)          z_ij = sq_i + hk_j ;  tanh' = 1 - tanh^2
        dsq_i = sum_j dz_ij                 sq_i was broadcast over the keys j: sum them
        dhk_j = sum_i dz_ij                 hk_j was broadcast over the queries i
    """
    t, v_a = cache.t, cache.v_a
    dv_a = (de[..., None] * t).sum(axis=(0, 1, 2))
    dt = de[..., None] * v_a
    dz = dt * (1.0 - t * t)
    dsq = dz.sum(axis=2)
    dhk = dz.sum(axis=1)
    return dsq, dhk, dv_a


# -- the score functions -----------------------------------------------------------------

class DotScoreCache(NamedTuple):
    s: np.ndarray  # (B, Tq, D) the queries
    h: np.ndarray  # (B, Tk, D) the keys


def dot_score_forward(s, h):
    """Dot-product score (Luong, Pham & Manning 2015, eq. 8, "dot").

    Shapes: s (B, Tq, D), h (B, Tk, D), e (B, Tq, Tk).

        e = s h^T                  e_ij = s_i . h_j
    Returns (e, DotScoreCache).
    """
    e = s @ h.swapaxes(-1, -2)
    return e, DotScoreCache(s=s, h=h)


def dot_score_backward(de, cache: DotScoreCache):
    """The gradients of e = s h^T (the rule for E = Q K^T).  Returns (ds, dh).

        ds = de h                  ds_i = sum_j de_ij h_j
        dh = de^T s                dh_j = sum_i de_ij s_i
    """
    s, h = cache.s, cache.h
    ds = de @ h
    dh = de.swapaxes(-1, -2) @ s
    return ds, dh


def scaled_dot_score_forward(s, h):
    """Scaled dot-product score ("Attention Is All You Need", eq. 1).

    Shapes: s (B, Tq, D), h (B, Tk, D), e (B, Tq, Tk).

        e = s h^T / sqrt(D)
    For entries ~ N(0, 1), s_i . h_j has variance D: the scale brings it back
    to 1, so the softmax is neither saturated nor flat at any width.
    Returns (e, DotScoreCache).
    """
    scale = 1.0 / math.sqrt(h.shape[-1])  # a Python float: float32 stays float32
    e = (s @ h.swapaxes(-1, -2)) * scale
    return e, DotScoreCache(s=s, h=h)


def scaled_dot_score_backward(de, cache: DotScoreCache):
    """The gradients of e = s h^T / sqrt(D): the dot score's, scaled.  Returns (ds, dh).

        ds = de h / sqrt(D)
        dh = de^T s / sqrt(D)
    """
    s, h = cache.s, cache.h
    scale = 1.0 / math.sqrt(h.shape[-1])
    ds = (de @ h) * scale
    dh = (de.swapaxes(-1, -2) @ s) * scale
    return ds, dh


class GeneralScoreCache(NamedTuple):
    proj: LinearCache  # the linear cache of u = s W_a (holds the rows of s)
    h: np.ndarray  # (B, Tk, Dk) the keys
    u: np.ndarray  # (B, Tq, Dk): s W_a


def general_score_forward(s, h, W_a):
    """Bilinear ("general") score (Luong, Pham & Manning 2015, eq. 8, "general").

    Shapes: s (B, Tq, Dq), h (B, Tk, Dk), W_a (Dq, Dk), e (B, Tq, Tk).

        u = s W_a                  (B, Tq, Dk): the linear kernel, one GEMM over B*Tq rows
        e = u h^T                  e_ij = s_i^T W_a h_j
    With W_a = I this is the dot score.  Returns (e, GeneralScoreCache).
    """
    u, proj = linear_forward(s, W_a)
    e = u @ h.swapaxes(-1, -2)
    return e, GeneralScoreCache(proj=proj, h=h, u=u)


def general_score_backward(de, cache: GeneralScoreCache, W_a):
    """The gradients of e = (s W_a) h^T.  Returns (ds, dh, dW_a).

        du   = de h                E = U H^T:  dU = dE H
        dh   = de^T u                          dH = dE^T U
        ds   = du W_a^T            u = s W_a:  the linear rules
        dW_a = s^T du
    """
    h, u = cache.h, cache.u
    du = de @ h
    dh = de.swapaxes(-1, -2) @ u
    ds, dW_a, _ = linear_backward(du, cache.proj, W_a, has_bias=False)
    return ds, dh, dW_a


class AdditiveScoreCache(NamedTuple):
    sq: LinearCache  # the linear cache of sq = s W_q
    hk: LinearCache  # the linear cache of hk = h W_k
    energy: AdditiveEnergyCache  # t = tanh(sq_i + hk_j) and v_a


def additive_score_forward(s, h, W_q, W_k, v_a):
    """Additive score (Bahdanau, Cho & Bengio 2015, appendix A.1.2; Luong et al.
    2015, eq. 8, "concat").

    Shapes: s (B, Tq, Dq), h (B, Tk, Dk), W_q (Dq, A), W_k (Dk, A), v_a (A,),
    e (B, Tq, Tk).

        sq   = s W_q                        (B, Tq, A)
        hk   = h W_k                        (B, Tk, A)
        t_ij = tanh(sq_i + hk_j)            (B, Tq, Tk, A)   additive_energy_forward
        e_ij = t_ij . v_a
    Luong's concat form v_a^T tanh(W_a [s_i; h_j]) is the same map with W_a =
    [W_q; W_k] stacked: [s_i; h_j] W_a = s_i W_q + h_j W_k.  Projecting s and
    h apart costs B (Tq + Tk) projections instead of B Tq Tk.
    Returns (e, AdditiveScoreCache).
    """
    sq, sq_cache = linear_forward(s, W_q)
    hk, hk_cache = linear_forward(h, W_k)
    e, energy = additive_energy_forward(sq, hk, v_a)
    return e, AdditiveScoreCache(sq=sq_cache, hk=hk_cache, energy=energy)


def additive_score_backward(de, cache: AdditiveScoreCache, W_q, W_k):
    """The gradients of the additive score.  Returns (ds, dh, dW_q, dW_k, dv_a).

        dsq, dhk, dv_a = additive_energy_backward(de)   (dsq_i = sum_j dz_ij: broadcast-then-sum)
        ds = dsq W_q^T ;  dW_q = s^T dsq                 the linear rules
        dh = dhk W_k^T ;  dW_k = h^T dhk
    """
    dsq, dhk, dv_a = additive_energy_backward(de, cache.energy)
    ds, dW_q, _ = linear_backward(dsq, cache.sq, W_q, has_bias=False)
    dh, dW_k, _ = linear_backward(dhk, cache.hk, W_k, has_bias=False)
    return ds, dh, dW_q, dW_k, dv_a


class CosineScoreCache(NamedTuple):
    s_hat: np.ndarray  # (B, Tq, D): s / n_s
    h_hat: np.ndarray  # (B, Tk, D): h / n_h
    n_s: np.ndarray  # (B, Tq, 1): sqrt(|s_i|^2 + eps^2)
    n_h: np.ndarray  # (B, Tk, 1): sqrt(|h_j|^2 + eps^2)


def cosine_score_forward(s, h, beta: float = 1.0, eps: float = 1e-8):
    """Content-based (cosine) score with sharpness beta (Graves, Wayne & Danihelka
    2014, "Neural Turing Machines", eqs. 5-6: K[u, v] = u.v / (|u| |v|), scaled
    by the key strength beta before the softmax).

    Shapes: s (B, Tq, D), h (B, Tk, D), e (B, Tq, Tk); beta, eps Python floats.

        n_s   = sqrt(|s_i|^2 + eps^2)      eps inside the norm: a zero vector has
        s_hat = s / n_s                    s_hat = 0, so e = 0, never NaN
        n_h   = sqrt(|h_j|^2 + eps^2)
        h_hat = h / n_h
        e     = beta s_hat h_hat^T
    Returns (e, CosineScoreCache).
    """
    eps2 = eps * eps
    n_s = np.sqrt(np.sum(s * s, axis=-1, keepdims=True) + eps2)
    s_hat = s / n_s
    n_h = np.sqrt(np.sum(h * h, axis=-1, keepdims=True) + eps2)
    h_hat = h / n_h
    e = (s_hat @ h_hat.swapaxes(-1, -2)) * beta
    return e, CosineScoreCache(s_hat=s_hat, h_hat=h_hat, n_s=n_s, n_h=n_h)


def cosine_score_backward(de, cache: CosineScoreCache, beta: float = 1.0):
    """The gradients of e = beta s_hat h_hat^T.  Returns (ds, dh).

    The normalisation x_hat = x / n, n = sqrt(|x|^2 + eps^2), has dn/dx = x / n
    = x_hat, so by the quotient rule
        dx_hat/dx = (I n - x x_hat^T) / n^2 = (I - x_hat x_hat^T) / n
    (exact for this forward, eps included), a symmetric matrix; hence:
        ds_hat = beta de h_hat                         E = S H^T: dS = dE H
        dh_hat = beta de^T s_hat                                  dH = dE^T S
        ds     = (ds_hat - s_hat (s_hat . ds_hat)) / n_s
        dh     = (dh_hat - h_hat (h_hat . dh_hat)) / n_h
    """
    s_hat, h_hat, n_s, n_h = cache.s_hat, cache.h_hat, cache.n_s, cache.n_h
    ds_hat = (de @ h_hat) * beta
    dh_hat = (de.swapaxes(-1, -2) @ s_hat) * beta
    ds = (ds_hat - s_hat * np.sum(s_hat * ds_hat, axis=-1, keepdims=True)) / n_s
    dh = (dh_hat - h_hat * np.sum(h_hat * dh_hat, axis=-1, keepdims=True)) / n_h
    return ds, dh


class LocationScoreCache(NamedTuple):
    proj: LinearCache  # the linear cache of e = s W_a[:, :Tk] (holds the rows of s)
    h_shape: tuple  # the keys' shape: dh is zero, of this shape


def location_score_forward(s, h, W_a):
    """Location-based score (Luong, Pham & Manning 2015, eq. 9: a_t = softmax(W_a h_t),
    h_t the decoder state, our query s).

    The scores come from the query alone: W_a maps a query to one score per
    source *position* 0..max_len-1; the keys h only say how many positions
    (Tk <= max_len) exist.

    Shapes: s (B, Tq, Dq), h (B, Tk, Dk), W_a (Dq, max_len), e (B, Tq, Tk).

        e = s W_a[:, :Tk]          only the first Tk columns are used
    The softmax over the Tk existing positions is the softmax over all max_len
    positions with those >= Tk blocked.  Returns (e, LocationScoreCache).
    """
    Tk = h.shape[1]
    e, proj = linear_forward(s, W_a[:, :Tk])
    return e, LocationScoreCache(proj=proj, h_shape=h.shape)


def location_score_backward(de, cache: LocationScoreCache, W_a):
    """The gradients of e = s W_a[:, :Tk].  Returns (ds, dh, dW_a).

        ds          = de W_a[:, :Tk]^T        the linear rules
        dW_a[:, :Tk] = s^T de ;  dW_a[:, Tk:] = 0   (those columns were not used)
        dh          = 0                       e does not depend on the keys' values
    """
    Tk = cache.h_shape[1]
    ds, dW_used, _ = linear_backward(de, cache.proj, W_a[:, :Tk], has_bias=False)
    dW_unused = np.zeros((W_a.shape[0], W_a.shape[1] - Tk), dtype=dW_used.dtype)
    dW_a = np.concatenate([dW_used, dW_unused], axis=1)
    dh = np.zeros(cache.h_shape, dtype=de.dtype)
    return ds, dh, dW_a


# -- the attention step: scores -> weights -> context ---------------------------------------

class AttentionCache(NamedTuple):
    e: np.ndarray  # (B, Tq, Tk) the scores
    alpha: np.ndarray  # (B, Tq, Tk) the weights; 0 where blocked
    c: np.ndarray  # (B, Tq, Dv) the context, the output
    v: np.ndarray  # (B, Tk, Dv) the values
    score: tuple | None  # the score function's cache (the Attention module fills it in)


def attention_forward(e, v, mask=None):
    """The attention step from scores: weights, then the weighted sum of the values
    (Bahdanau et al. 2015, eqs. 5-6; Luong et al. 2015, eq. 7 and the context
    c_t of sec. 3.1).

    Shapes: e (B, Tq, Tk) the scores, v (B, Tk, Dv) the values, mask
    broadcastable to (B, Tq, Tk), boolean, True = blocked; c (B, Tq, Dv).

        alpha_ij = exp(e_ij) / sum_k exp(e_ik)     over the unblocked k; 0 if blocked
        c        = alpha v                         c_i = sum_j alpha_ij v_j
    A query whose keys are all blocked has alpha = 0, so c = 0 (never NaN).
    Returns (c, AttentionCache) with score=None.
    """
    alpha = softmax(e, axis=-1, mask=mask)
    c = alpha @ v
    return c, AttentionCache(e=e, alpha=alpha, c=c, v=v, score=None)


def attention_backward(dc, cache: AttentionCache):
    """The gradients of c = softmax(e) v.  Returns (de, dv).

        dalpha = dc v^T            C = A V:  dA = dC V^T
        dv     = alpha^T dc                  dV = A^T dC
        de     = alpha (dalpha - sum_j dalpha_j alpha_j)   softmax_backward (its Jacobian)
    Blocked entries have alpha = 0 and get de = 0.
    """
    alpha, v = cache.alpha, cache.v
    dalpha = dc @ v.swapaxes(-1, -2)
    dv = alpha.swapaxes(-1, -2) @ dc
    de = softmax_backward(dalpha, alpha, axis=-1)
    return de, dv


# -- multi-head attention: the heads and the scaled dot-product core ------------------------

def split_heads(X, n_heads: int):
    """(B, T, H*d) -> (B, H, T, d), a view: head h is columns h*d .. (h+1)*d - 1."""
    B, T, D = X.shape
    return X.reshape(B, T, n_heads, D // n_heads).transpose(0, 2, 1, 3)


def merge_heads(*xs):
    """(B, H, T, d) arrays -> (B, T, n*H*d): each one's heads side by side (the
    inverse of ``split_heads``), the arrays concatenated along the last axis."""
    merged = [x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])
              for x in xs]  # sizes spelled out: -1 is ambiguous for an empty batch
    return np.concatenate(merged, axis=-1)


def repeat_kv(x, n_rep: int):
    """(B, H_kv, T, d) -> (B, H_kv * n_rep, T, d): head h of the result is head
    h // n_rep of x (Hugging Face's ``repeat_kv``: grouped-query attention's
    query head h reads key/value head h // n_rep).  x itself when n_rep = 1."""
    if n_rep == 1:
        return x
    return np.repeat(x, n_rep, axis=1)


def sum_kv_groups(dx, n_kv: int):
    """The backward of ``repeat_kv``: (B, n_kv * g, T, d) -> (B, n_kv, T, d), head j
    the sum of heads j*g .. j*g + g - 1 (a value copied to g places gets the sum
    of their gradients: broadcast-then-sum).  dx itself when g = 1."""
    B, H, T, d = dx.shape
    if H == n_kv:
        return dx
    return dx.reshape(B, n_kv, H // n_kv, T, d).sum(axis=2)


class ScaledDotProductCache(NamedTuple):
    q_s: np.ndarray  # (B, H, Tq, d_k): q' / sqrt(d_k), q' the query after the position map
    k: np.ndarray  # (B, H_kv, Tk, d_k): k', the keys after the position map (H_kv heads)
    v: np.ndarray  # (B, H_kv, Tk, d_v) the values (H_kv heads)
    e: np.ndarray | None  # (B, H, Tq, Tk): q_s k_r^T [+ bias], the scores (None from the
    #                       fast kernel, which normalises them in place into alpha)
    alpha: np.ndarray  # (B, H, Tq, Tk): softmax weights, 0 where blocked
    dropout: DropoutCache  # its mask: keep / (1 - p), or None without dropout
    alpha_drop: np.ndarray  # (B, H, Tq, Tk): dropout(alpha) (alpha itself without dropout)
    context: np.ndarray  # (B, H, Tq, d_v): alpha_drop v_r, the output
    position: tuple | None  # the (forward, backward) position map, None: the identity


def scaled_dot_product_attention_forward(q, k, v, mask=None, dropout_p: float = 0.0, rng=None,
                                         position=None, overwrite_q: bool = False, bias=None):
    """The core of a multi-head attention layer ("Attention Is All You Need", eq. 1,
    run on every head at once), with grouped-query heads, a position map and an
    additive score bias.

    Shapes: q (B, H, Tq, d_k), k (B, H_kv, Tk, d_k), v (B, H_kv, Tk, d_v), already
    projected and split into heads, H_kv dividing H (H_kv = H: multi-head
    attention; 1 <= H_kv < H: grouped-query attention, Ainslie et al. 2023;
    H_kv = 1: multi-query attention, Shazeer 2019); mask broadcastable to
    (B, H, Tq, Tk), boolean, True = blocked (key padding, causal and window
    masks ORed by the caller); bias broadcastable to (B, H, Tq, Tk), added to
    the scores (ALiBi), no gradient; context (B, H, Tq, d_v).

        q', k'     = position(q, k)        THE place for a position transform of q
                                           and k (rotary embeddings); identity when None
        q_s        = q' / sqrt(d_k)        the scale on q: Tq d_k multiplies, not Tq Tk
        k_r, v_r   = repeat_kv(k', g), repeat_kv(v, g)    g = H / H_kv: query head h
                                           reads key/value head h // g (k', v when g = 1)
        e          = q_s k_r^T [+ bias]    (B, H, Tq, Tk)
        alpha      = softmax(e)            over the unblocked keys (a row with none: 0)
        alpha_drop = alpha * mask          dropout: mask = keep / (1 - p), keep ~
                                           Bernoulli(1 - p) drawn from ``rng``
        context    = alpha_drop v_r

    ``position`` is None or a pair of functions (forward, backward):
    ``forward(q, k) -> (q', k')`` and ``backward(dq', dk') -> (dq, dk)``, its
    vector-Jacobian product (for a rotation, the inverse rotation; see
    ``functional.rope_position``).  It must return new arrays, never write
    into q or k.  Dropout is on when ``dropout_p > 0`` (training); pass 0 for
    inference.  ``overwrite_q=True`` tells the kernel that q is the caller's
    scratch (a view of its own fresh projection), which a fast kernel may
    scale in place into q_s, as scipy.linalg's ``overwrite_a``; this kernel
    never writes into q.  The cache keeps k' and v with their H_kv heads
    (the copies k_r, v_r are made again by the backward).
    Returns (context, ScaledDotProductCache).
    """
    if position is None:
        q_p, k_p = q, k
    else:
        q_p, k_p = position[0](q, k)
    q_s = q_p * (1.0 / math.sqrt(q.shape[-1]))  # a Python float: float32 stays float32
    g = q.shape[1] // k.shape[1]
    k_r, v_r = repeat_kv(k_p, g), repeat_kv(v, g)
    e = q_s @ k_r.swapaxes(-1, -2)
    if bias is not None:
        e = e + bias
    alpha = softmax(e, axis=-1, mask=mask)
    alpha_drop, dropout = dropout_forward(alpha, dropout_p, rng, training=dropout_p > 0)
    context = alpha_drop @ v_r
    return context, ScaledDotProductCache(q_s=q_s, k=k_p, v=v, e=e, alpha=alpha,
                                          dropout=dropout, alpha_drop=alpha_drop,
                                          context=context, position=position)


def scaled_dot_product_attention_backward(dcontext, cache: ScaledDotProductCache, dalpha=None):
    """The gradients of the core, the forward run in reverse.  Returns (dq, dk, dv).

    ``dalpha``: a gradient that reaches alpha by another path (the attention
    weights a layer returns), added before the softmax backward; None: none.
    The bias is a constant (de reaches it, but it has no gradient to return).

        k_r, v_r    = repeat_kv(k', g), repeat_kv(v, g)   as the forward made them
        dalpha_drop = dcontext v_r^T               C = A V:  dA = dC V^T
        dv_r        = alpha_drop^T dcontext                  dV = A^T dC
        dalpha      = dalpha_drop * mask [+ dalpha]   dropout_backward
        de          = alpha (dalpha - sum_j dalpha_j alpha_j)    softmax_backward
        dq_s        = de k_r                       E = Q K^T:  dQ = dE K
        dk_r        = de^T q_s                                 dK = dE^T Q
        dq'         = dq_s / sqrt(d_k)
        dk', dv     = sum_kv_groups(dk_r), sum_kv_groups(dv_r)   key/value head j was
                      read by the g query heads j g .. j g + g - 1: the sum of their
                      gradients (broadcast-then-sum; the identity when g = 1)
        dq, dk      = position.backward(dq', dk')  (the identity when None)
    """
    q_s, k_p, v = cache.q_s, cache.k, cache.v
    n_kv = k_p.shape[1]
    g = q_s.shape[1] // n_kv
    k_r, v_r = repeat_kv(k_p, g), repeat_kv(v, g)
    dalpha_drop = dcontext @ v_r.swapaxes(-1, -2)
    dv_r = cache.alpha_drop.swapaxes(-1, -2) @ dcontext
    dalpha_masked = dropout_backward(dalpha_drop, cache.dropout)
    dalpha_total = dalpha_masked if dalpha is None else dalpha_masked + dalpha
    de = softmax_backward(dalpha_total, cache.alpha, axis=-1)
    dq_s = de @ k_r
    dk_r = de.swapaxes(-1, -2) @ q_s
    dq_p = dq_s * (1.0 / math.sqrt(q_s.shape[-1]))
    dk_p, dv = sum_kv_groups(dk_r, n_kv), sum_kv_groups(dv_r, n_kv)
    if cache.position is None:
        return dq_p, dk_p, dv
    dq, dk = cache.position[1](dq_p, dk_p)
    return dq, dk, dv
