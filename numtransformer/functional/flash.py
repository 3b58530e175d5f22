"""Reference kernels: tiled attention, FlashAttention's online softmax (Dao, Fu,
Ermon, Rudra & Re 2022, "FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness", Algorithms 1 and 2; Dao 2023,
"FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning", Algorithms 1 and 2).

The same function as the multi-head core ``scaled_dot_product_attention_forward``
(context = softmax(q_s k^T) v over the unblocked keys, a row with none: 0),
computed without ever holding the (Tq, Tk) scores of a head: the queries are
cut into blocks of ``block_q`` rows and the keys into blocks of ``block_k``
columns, and only one (block_q, block_k) tile of scores exists at a time.
What is saved for the backward is the output o and ONE number per query row,
its log-sum-exp, so the memory is O(T d) instead of O(T^2).

Notation (one query row i, its keys j = 0 .. Tk - 1 cut into tiles
J_1, J_2, ..; s_ij = q_s_i . k_j, blocked entries s_ij = -inf):

    the row's softmax       P_ij = exp(s_ij - lse_i),  lse_i = log sum_j exp(s_ij)
    the row's output        o_i  = sum_j P_ij v_j

The forward: the online softmax (Milakov & Gimelshein 2018; FlashAttention-2's
Algorithm 1, which rescales the accumulator and divides once at the end).
Before any tile: m = -inf, l = 0, acc = 0.  For each tile J_t of keys:

    s_t   = q_s k_{J_t}^T                         (block_q, block_k), blocked: -inf
    m_t   = max(m_{t-1}, max_{j in J_t} s_ij)     the running row max
    c_t   = exp(m_{t-1} - m_t)                     rescales what was summed against m_{t-1}
    p_t   = exp(s_t - m_t)                         this tile's unnormalised weights
    l_t   = c_t l_{t-1} + sum_{j in J_t} p_t,j     the running row sum
    acc_t = c_t acc_{t-1} + p_t v_{J_t}            the running unnormalised output

and after the last tile T:  o = acc_T / l_T,  lse = m_T + log l_T.

The invariant, proved by induction over the tiles: after tile t, with K_t =
J_1 u .. u J_t the keys seen so far,

    m_t = max_{j in K_t} s_ij,   l_t = sum_{j in K_t} exp(s_ij - m_t),
    acc_t = sum_{j in K_t} exp(s_ij - m_t) v_j.

It holds for t = 0 (empty sums, max of nothing = -inf).  If it holds for t - 1,
then m_t is the max over K_{t-1} u J_t, and
c_t l_{t-1} = sum_{K_{t-1}} exp(s_ij - m_{t-1}) exp(m_{t-1} - m_t) =
sum_{K_{t-1}} exp(s_ij - m_t); adding sum_{J_t} exp(s_ij - m_t) gives l_t
(and the same steps with v_j give acc_t).  At the end K_T is every key:
acc_T / l_T = sum_j exp(s_ij) v_j / sum_j exp(s_ij) = o_i, and
m_T + log l_T = log sum_j exp(s_ij) = lse_i.  Every exponent is <= 0 (m_t is
a max over the exponents' s), so nothing overflows.

Blocked keys and rows.  A row with no unblocked key yet has m = -inf; its
exponents are taken against 0 instead (``m_ref``) so -inf - (-inf) never
happens: p = exp(-inf) = 0 and c = exp(-inf) = 0, with l = acc = 0 already.
A row whose keys are ALL blocked ends with l = 0: o = 0 (as the plain kernel)
and lse = the largest finite number of the dtype (``lse_blocked``), a finite
sentinel for which exp(s - lse) = 0 whatever s is.  A tile whose every entry
is blocked (all keys after all queries under ``causal``, all older than the
window, all padding in every sequence, all True in ``attn_mask``) is skipped.

The backward (FlashAttention-2's Algorithm 2).  With dP_ij = do_i . v_j, the
softmax Jacobian gives ds_ij = P_ij (dP_ij - sum_k P_ik dP_ik), and

    sum_k P_ik dP_ik = sum_k P_ik (do_i . v_k) = do_i . (sum_k P_ik v_k) = do_i . o_i

so the row sum the softmax backward needs is D_i = rowsum(do * o), known
before any tile: the backward needs o, lse and do, not the weights.  Per
tile (outer loop over key tiles, inner over query tiles):

    P_t  = exp(s_t - lse)                  the weights, recomputed from the saved lse
    dv  += P_t^T do                        C = A V:  dV = A^T dC
    dP_t = do v^T                                    dA = dC V^T
    ds_t = P_t (dP_t - D)                  the softmax Jacobian, with D for the row sum
    dq_s += ds_t k                         E = Q K^T:  dQ = dE K
    dk  += ds_t^T q_s                                  dK = dE^T Q
and dq' = dq_s / sqrt(d_k) (q_s = q' / sqrt(d_k)).  A key tile's dk, dv are
sums over the query tiles (fresh locals, written once per key tile); dq_s
collects each query tile's sum over the key tiles.

Heads.  q (B, H, Tq, d_k); k (B, H_kv, Tk, d_k) and v (B, H_kv, Tk, d_v) with
H_kv dividing H (grouped-query attention, as the plain core's ``repeat_kv``:
query head h reads key/value head h // g, g = H / H_kv).  The kernel never
copies k and v: it views q as (B, H_kv, g, Tq, d_k) and k, v as (B, H_kv, 1,
Tk, .), and the matmuls broadcast each key/value head over its g query heads;
the backward sums the group's dk and dv over that axis of g.

Masks, as structure (True = blocked, as everywhere in the library): query row
i sits at position t = q_offset + i, key j at position j;

    causal             blocks j > t
    window = w         the causal sliding window: blocks j > t and j <= t - w
    key_padding_mask   (B, Tk): blocks key j of sequence b
    attn_mask          a dense fallback, broadcastable to (B, H, Tq, Tk), sliced per tile

``q_offset`` is the number of steps cached before these queries in
incremental decoding.  ``position`` is the plain core's position seam, a pair
(forward(q, k) -> (q', k'), backward(dq', dk') -> (dq, dk)) for rotary
embeddings.  There is no dropout on the weights and no additive score bias
(ALiBi): this kernel never forms the weights.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["TileMasks", "FlashAttentionCache", "flash_attention_forward",
           "flash_attention_backward", "lse_blocked", "is_causal_mask"]


class TileMasks(NamedTuple):
    causal: bool  # blocks key j > t
    window: int | None  # the causal sliding window w: also blocks j <= t - w
    q_offset: int  # query row i sits at position t = q_offset + i
    key_padding_mask: np.ndarray | None  # (B, Tk) bool, True = padding
    attn_mask: np.ndarray | None  # (B or 1, H_kv or 1, g or 1, Tq, Tk) bool: the dense fallback


class FlashAttentionCache(NamedTuple):
    q_s: np.ndarray  # (B, H, Tq, d_k): q' / sqrt(d_k)
    k: np.ndarray  # (B, H_kv, Tk, d_k): k', the keys after the position map
    v: np.ndarray  # (B, H_kv, Tk, d_v) the values
    o: np.ndarray  # (B, H, Tq, d_v) the output (the context)
    lse: np.ndarray  # (B, H, Tq): log sum_j exp(s_ij); lse_blocked(dtype) for a blocked row
    masks: TileMasks  # the masks' structure
    block_q: int  # rows of a query tile
    block_k: int  # columns of a key tile
    position: tuple | None  # the (forward, backward) position map, None: the identity


def lse_blocked(dtype) -> float:
    """The log-sum-exp saved for a row whose keys are all blocked: the largest
    finite number of ``dtype``, so exp(s - lse) = 0 for every finite or -inf s."""
    return float(np.finfo(dtype).max)


def is_causal_mask(mask, q_offset: int = 0) -> bool:
    """True when the boolean ``mask`` (Tq, Tk) blocks exactly the keys j > q_offset + i
    of row i (``causal_mask(T)`` when q_offset = 0 and Tq = Tk): the structure a
    tiled kernel can use instead of the matrix.  Compared in row blocks, so no
    second (Tq, Tk) array is made."""
    if mask.ndim != 2:
        return False
    Tq, Tk = mask.shape
    j = np.arange(Tk)
    for r0 in range(0, Tq, 256):
        r1 = min(r0 + 256, Tq)
        if not np.array_equal(mask[r0:r1], j[None, :] > (q_offset + np.arange(r0, r1))[:, None]):
            return False
    return True


def _check(q, k, v, window, q_offset, key_padding_mask, attn_mask, block_q, block_k):
    who = "flash_attention_forward"
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{who}: q, k, v must be (B, H, T, d) arrays, got shapes {q.shape}, "
                         f"{k.shape}, {v.shape}")
    B, H, _, d = q.shape
    if k.shape[0] != B or k.shape[3] != d or v.shape[:3] != k.shape[:3] or H % k.shape[1]:
        raise ValueError(f"{who}: expected k (B, H_kv, Tk, d_k) and v (B, H_kv, Tk, d_v) with "
                         f"B = {B}, d_k = {d} and H_kv dividing H = {H}; got k {k.shape}, "
                         f"v {v.shape}")
    for name, x, minimum in (("block_q", block_q, 1), ("block_k", block_k, 1),
                             ("window", 1 if window is None else window, 1),
                             ("q_offset", q_offset, 0)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < minimum:
            raise ValueError(f"{who}: {name} must be an int >= {minimum}"
                             f"{' or None' if name == 'window' else ''}, got {x!r}")
    if key_padding_mask is not None and (key_padding_mask.dtype != np.bool_
                                         or key_padding_mask.shape != (B, k.shape[2])):
        raise ValueError(f"{who}: key_padding_mask must be boolean (B, Tk) = {(B, k.shape[2])}, "
                         f"got {key_padding_mask.dtype} {key_padding_mask.shape}")
    if attn_mask is not None and (attn_mask.dtype != np.bool_ or attn_mask.ndim > 4):
        raise ValueError(f"{who}: attn_mask must be boolean, broadcastable to (B, H, Tq, Tk), "
                         f"got {attn_mask.dtype} {attn_mask.shape}")


def _grouped_mask(attn_mask, n_kv: int, g: int):
    """attn_mask broadcastable to (B, H, Tq, Tk) -> (b, H_kv or 1, g or 1, Tq, Tk), a view,
    so it broadcasts against the scores' (B, H_kv, g, ., .) layout."""
    am = attn_mask.reshape((1,) * (4 - attn_mask.ndim) + attn_mask.shape)
    if am.shape[1] == 1:
        return am[:, :, None]
    return am.reshape(am.shape[0], n_kv, g, am.shape[2], am.shape[3])


_SKIP = "skip"  # a tile whose every entry is blocked


def _tile_blocked(masks: TileMasks, i0: int, i1: int, j0: int, j1: int):
    """What is blocked in the tile of query rows i0 .. i1 - 1 and keys j0 .. j1 - 1:
    _SKIP (everything), None (nothing), or a boolean array broadcastable to the
    scores' (B, H_kv, g, i1 - i0, j1 - j0)."""
    t0, t1 = masks.q_offset + i0, masks.q_offset + i1 - 1  # the tile's first and last position
    causal = masks.causal or masks.window is not None
    if causal and j0 > t1:  # every key after every query
        return _SKIP
    if masks.window is not None and j1 - 1 <= t0 - masks.window:  # every key too old
        return _SKIP
    blocked = None
    if (causal and j1 - 1 > t0) or (masks.window is not None and j0 <= t1 - masks.window):
        t = np.arange(t0, t1 + 1)[:, None]
        j = np.arange(j0, j1)[None, :]
        blocked = j > t  # the window is causal by itself
        if masks.window is not None:
            blocked = blocked | (j <= t - masks.window)
    if masks.key_padding_mask is not None:
        kpm = masks.key_padding_mask[:, j0:j1]
        if kpm.all():
            return _SKIP
        if kpm.any():
            kpm = kpm[:, None, None, None, :]
            blocked = kpm if blocked is None else (blocked | kpm)
    if masks.attn_mask is not None:
        am = masks.attn_mask[..., i0:i1, j0:j1]
        if am.all():
            return _SKIP
        if am.any():
            blocked = am if blocked is None else (blocked | am)
    if blocked is not None and blocked.all():
        return _SKIP
    return blocked


def flash_attention_forward(q, k, v, *, causal: bool = False, window: int | None = None,
                            q_offset: int = 0, key_padding_mask=None, attn_mask=None,
                            position=None, block_q: int = 128, block_k: int = 128):
    """Tiled attention, the online softmax (FlashAttention-2, Algorithm 1).

    Shapes: q (B, H, Tq, d_k), k (B, H_kv, Tk, d_k), v (B, H_kv, Tk, d_v), H_kv
    dividing H; o (B, H, Tq, d_v); masks as the module docstring says.  Any
    Tq, Tk: the last tile of each is shorter when a block does not divide it.

        q', k'   = position(q, k)        the plain core's position seam (identity when None)
        q_s      = q' / sqrt(d_k)
        for each query tile I (rows i0 .. i1 - 1):
            m = -inf ; l = 0 ; acc = 0                      (per row of the tile)
            for each key tile J not entirely blocked:
                s     = q_s[I] k'[J]^T, blocked entries -inf
                m_new = max(m, rowmax(s))
                m_ref = m_new, or 0 where m_new = -inf       (no key seen yet: no -inf - -inf)
                p     = exp(s - m_ref)
                c     = exp(m - m_ref)
                l     = c l + rowsum(p)
                acc   = c acc + p v[J]
                m     = m_new
            o[I]   = acc / l                 0 where l = 0 (every key blocked)
            lse[I] = m + log l               lse_blocked(dtype) where l = 0
    Returns (o, FlashAttentionCache).
    """
    _check(q, k, v, window, q_offset, key_padding_mask, attn_mask, block_q, block_k)
    B, H, Tq, d = q.shape
    n_kv, Tk, d_v = k.shape[1], k.shape[2], v.shape[3]
    g = H // n_kv
    dtype = q.dtype
    if position is None:
        q_p, k_p = q, k
    else:
        q_p, k_p = position[0](q, k)
    q_s = q_p * (1.0 / math.sqrt(d))  # a Python float: float32 stays float32
    masks = TileMasks(causal=bool(causal), window=None if window is None else int(window),
                      q_offset=int(q_offset), key_padding_mask=key_padding_mask,
                      attn_mask=None if attn_mask is None else _grouped_mask(attn_mask, n_kv, g))
    q_g = q_s.reshape(B, n_kv, g, Tq, d)  # query head h = kv head h // g, member h % g
    k_g, v_g = k_p[:, :, None], v[:, :, None]  # (B, H_kv, 1, Tk, .): broadcast over the g
    o = np.zeros((B, n_kv, g, Tq, d_v), dtype)
    lse = np.full((B, n_kv, g, Tq), lse_blocked(dtype), dtype)
    for i0 in range(0, Tq, block_q):
        i1 = min(i0 + block_q, Tq)
        q_i = q_g[..., i0:i1, :]
        m = np.full((B, n_kv, g, i1 - i0, 1), -np.inf, dtype)
        l = np.zeros((B, n_kv, g, i1 - i0, 1), dtype)
        acc = np.zeros((B, n_kv, g, i1 - i0, d_v), dtype)
        for j0 in range(0, Tk, block_k):
            j1 = min(j0 + block_k, Tk)
            blocked = _tile_blocked(masks, i0, i1, j0, j1)
            if blocked is _SKIP:
                continue
            s = q_i @ k_g[..., j0:j1, :].swapaxes(-1, -2)
            if blocked is not None:
                s = np.where(blocked, -np.inf, s)
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            m_ref = np.where(m_new > -np.inf, m_new, 0.0)
            p = np.exp(s - m_ref)
            c = np.exp(m - m_ref)
            l = c * l + p.sum(axis=-1, keepdims=True)
            acc = c * acc + p @ v_g[..., j0:j1, :]
            m = m_new
        seen = l > 0
        o[..., i0:i1, :] = acc / np.where(seen, l, 1.0)
        lse[..., i0:i1] = np.where(seen, m + np.log(np.where(seen, l, 1.0)),
                                   lse_blocked(dtype))[..., 0]
    o = o.reshape(B, H, Tq, d_v)
    return o, FlashAttentionCache(q_s=q_s, k=k_p, v=v, o=o, lse=lse.reshape(B, H, Tq),
                                  masks=masks, block_q=int(block_q), block_k=int(block_k),
                                  position=position)


def flash_attention_backward(do, cache: FlashAttentionCache):
    """The gradients of the tiled attention (FlashAttention-2, Algorithm 2).  Returns
    (dq, dk, dv), the shapes of q, k, v.

        D = rowsum(do * o)                   (B, H, Tq): sum_j P_ij dP_ij = do_i . o_i
        for each key tile J:
            dk_J = 0 ; dv_J = 0
            for each query tile I with (I, J) not entirely blocked:
                s     = q_s[I] k'[J]^T, blocked entries -inf
                P     = exp(s - lse[I])            the weights, recomputed
                dv_J += sum_group P^T do[I]        summed over the g query heads of a kv head
                dP    = do[I] v[J]^T
                ds    = P (dP - D[I])
                dq_s[I] += ds k'[J]
                dk_J += sum_group ds^T q_s[I]
            dk'[J], dv[J] = dk_J, dv_J
        dq'    = dq_s / sqrt(d_k)
        dq, dk = position.backward(dq', dk')   (the identity when None)
    """
    q_s, k_p, v, o, lse, masks = cache.q_s, cache.k, cache.v, cache.o, cache.lse, cache.masks
    B, H, Tq, d = q_s.shape
    n_kv, Tk, d_v = k_p.shape[1], k_p.shape[2], v.shape[3]
    g = H // n_kv
    dtype = q_s.dtype
    D = np.sum(do * o, axis=-1)
    q_g = q_s.reshape(B, n_kv, g, Tq, d)
    do_g = do.reshape(B, n_kv, g, Tq, d_v)
    D_g = D.reshape(B, n_kv, g, Tq, 1)
    lse_g = lse.reshape(B, n_kv, g, Tq, 1)
    dq_s = np.zeros((B, n_kv, g, Tq, d), dtype)
    dk_p = np.zeros((B, n_kv, Tk, d), dtype)
    dv = np.zeros((B, n_kv, Tk, d_v), dtype)
    for j0 in range(0, Tk, cache.block_k):
        j1 = min(j0 + cache.block_k, Tk)
        k_j, v_j = k_p[:, :, None, j0:j1], v[:, :, None, j0:j1]  # (B, H_kv, 1, bk, .)
        dk_j = np.zeros((B, n_kv, j1 - j0, d), dtype)
        dv_j = np.zeros((B, n_kv, j1 - j0, d_v), dtype)
        for i0 in range(0, Tq, cache.block_q):
            i1 = min(i0 + cache.block_q, Tq)
            blocked = _tile_blocked(masks, i0, i1, j0, j1)
            if blocked is _SKIP:
                continue
            q_i, do_i = q_g[..., i0:i1, :], do_g[..., i0:i1, :]
            s = q_i @ k_j.swapaxes(-1, -2)
            if blocked is not None:
                s = np.where(blocked, -np.inf, s)
            P = np.exp(s - lse_g[..., i0:i1, :])
            dv_j = dv_j + (P.swapaxes(-1, -2) @ do_i).sum(axis=2)
            dP = do_i @ v_j.swapaxes(-1, -2)
            ds = P * (dP - D_g[..., i0:i1, :])
            dq_s[..., i0:i1, :] += ds @ k_j
            dk_j = dk_j + (ds.swapaxes(-1, -2) @ q_i).sum(axis=2)
        dk_p[:, :, j0:j1] = dk_j
        dv[:, :, j0:j1] = dv_j
    dq_p = dq_s.reshape(B, H, Tq, d) * (1.0 / math.sqrt(d))
    if cache.position is None:
        return dq_p, dk_p, dv
    dq, dk = cache.position[1](dq_p, dk_p)
    return dq, dk, dv
