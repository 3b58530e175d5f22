"""Reference kernels: one hop of an End-To-End Memory Network.

Sukhbaatar, Szlam, Weston & Fergus (2015), "End-To-End Memory Networks",
sec. 2.1 (a single layer) and 2.2 (multiple layers).  The hop is attention
with a dot score whose keys (the input memories m_i) and values (the output
memories c_i) are two embeddings of the same sentences; ``models.MemN2N``
embeds the story and calls this kernel once per hop.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .activations import softmax, softmax_backward

__all__ = ["MemN2NHopCache", "memnn_hop_forward", "memnn_hop_backward"]


class MemN2NHopCache(NamedTuple):
    u: np.ndarray  # (B, d) the controller state the hop reads with, u^k
    m: np.ndarray  # (B, N, d) input memories m_i (the keys)
    c: np.ndarray  # (B, N, d) output memories c_i (the values)
    mask: np.ndarray | None  # (B, N) True = padding slot (never attended)
    p: np.ndarray  # (B, N) the attention over the memories
    linear_start: bool  # p = s: the softmax removed (sec. 4.2)


def memnn_hop_forward(u, m, c, mask=None, linear_start: bool = False, H=None):
    """One memory hop (sec. 2.1, eq. 1-2; the layer update of sec. 2.2).

    u (B, d) the question's state u^k; m, c (B, N, d) the input and output
    memories; mask (B, N) True = padding slot, or None; H (d, d) or None.

        s_i = u^T m_i                   the match of u with memory i     s (B, N)
        p   = softmax(s)                masked slots get p_i = 0         (eq. 1)
              (linear start, sec. 4.2:  p_i = s_i on real slots, 0 on masked ones)
        o   = sum_i p_i c_i             the response vector              o (B, d)  (eq. 2)
        u'  = u + o                     the next hop's state             (sec. 2.2)
              (with H, sec. 2.2 "layer-wise":  u' = u H + o)

    A story with no real slot gives p = 0 and o = 0, never NaN.
    Returns (u', MemN2NHopCache).
    """
    s = np.matmul(m, u[:, :, None])[:, :, 0]
    if linear_start:
        p = s if mask is None else np.where(mask, 0, s)
    else:
        p = softmax(s, -1, mask)
    o = np.matmul(p[:, None, :], c)[:, 0, :]
    u_next = (u if H is None else u @ H) + o
    return u_next, MemN2NHopCache(u=u, m=m, c=c, mask=mask, p=p, linear_start=bool(linear_start))


def memnn_hop_backward(du_next, cache: MemN2NHopCache, H=None):
    """The gradients of one hop, given du' (B, d) and H (d, d) or None.

    The forward run in reverse; sums over i run over the N memory slots.
        do   = du'                                  u' = u (H) + o: o enters with weight 1
        du   = du'            (with H: du = du' H^T, dH = u^T du', the matrix rules of u H)
        dp_i = <c_i, do>                            o = sum_i p_i c_i  ->  do/dp_i = c_i
        dc_i = p_i do                               ... and do/dc_i = p_i
        ds   = p (dp - sum_i p_i dp_i)              the softmax Jacobian diag(p) - p p^T
                                                    applied to dp (functional.softmax_backward)
               (linear start: ds_i = dp_i on real slots, 0 on masked ones)
        dm_i = ds_i u                               s_i = u^T m_i  ->  ds_i/dm_i = u
        du   = du + sum_i ds_i m_i                  ... and ds_i/du = m_i: u is used twice
                                                    (the match and the skip), the two add
    Returns (du, dm, dc, dH); dH is None without H.
    """
    u, m, c, p = cache.u, cache.m, cache.c, cache.p
    do = du_next
    if H is None:
        du, dH = du_next, None
    else:
        dH = u.T @ du_next
        du = du_next @ H.T
    dp = np.matmul(c, do[:, :, None])[:, :, 0]
    dc = p[:, :, None] * do[:, None, :]
    if cache.linear_start:
        ds = dp if cache.mask is None else np.where(cache.mask, 0, dp)
    else:
        ds = softmax_backward(dp, p, 1)
    dm = ds[:, :, None] * u[:, None, :]
    du = du + np.matmul(ds[:, None, :], m)[:, 0, :]
    return du, dm, dc, dH
