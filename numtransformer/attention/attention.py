"""Attention: scores -> masked softmax -> weighted sum of the values."""

from __future__ import annotations

from .._validate import check_float
from ..functional.attention import AttentionCache
from ..kernels import select
from ..module import Module
from .masks import check_attn_mask
from .scores import Score

__all__ = ["Attention", "AttentionCache"]


class Attention(Module):
    """Attention with any score function (Bahdanau et al. 2015, eqs. 5-6;
    Luong et al. 2015, eqs. 7-8 and the context vector c_t of sec. 3.1).

    Shapes: query s (B, Tq, Dq), keys h (B, Tk, Dk), values v (B, Tk, Dv),
    mask (B, Tk) key padding or (B, Tq, Tk), boolean, True = blocked;
    context c (B, Tq, Dv).  In RNN attention keys and values are the same
    encoder states: pass the same array twice and add the two gradients.

    Forward:
        e          = score(s, h)                              (B, Tq, Tk)
        alpha_ij   = exp(e_ij) / sum_k exp(e_ik)              over unblocked k; 0 if blocked
        c_i        = sum_j alpha_ij v_j          c = alpha v  (B, Tq, Dv)
    Backward:
        dalpha = dc v^T
        dv     = alpha^T dc
        de_ij  = alpha_ij (dalpha_ij - sum_k dalpha_ik alpha_ik)   (softmax Jacobian)
        ds, dh = score.backward(de)

    A query row whose keys are all blocked has alpha = 0: its context is 0 and
    every gradient through it is 0 (never NaN).  The cache holds e, alpha, the
    context c and the values v under those names, for inspection, and the
    score's own cache as ``score``.  Kernels: the score's, then
    ``attention_forward`` / ``attention_backward``.
    """

    def __init__(self, score: Score):
        if not isinstance(score, Score):
            raise TypeError(f"Attention: score must be a Score module (DotScore, GeneralScore, "
                            f"...), got {type(score).__name__}")
        self.score = score

    def forward(self, query, keys, values, mask=None):
        query, keys = self.score.check_inputs(query, keys, who=self, s_arg="query",
                                              h_arg="keys")
        values = check_float(self, "values", values, dtype=query.dtype, ndim=3)
        (B, Tq, _), Tk = query.shape, keys.shape[1]
        if values.shape[:2] != (B, Tk):
            raise ValueError(f"Attention: values has shape {values.shape}, expected "
                             f"(B, Tk, Dv) with (B, Tk) = {(B, Tk)} as the keys")
        if mask is not None:
            mask = check_attn_mask(self, "mask", mask, B, Tq, Tk, allow_2d=False,
                                   allow_key_padding=True)
        e, score_cache = self.score.forward(query, keys)
        context, cache = select(e.dtype).attention_forward(e, values, mask)
        return context, cache._replace(score=score_cache)

    def backward(self, dcontext, cache: AttentionCache):
        de, dvalues = select(dcontext.dtype).attention_backward(dcontext, cache)
        dquery, dkeys = self.score.backward(de, cache.score)
        return dquery, dkeys, dvalues
