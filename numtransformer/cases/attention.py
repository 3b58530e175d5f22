"""Gradient-check cases of the attention package (``numtransformer/attention/``):
every score, ``Attention`` per mask shape, ``MultiHeadAttention`` variants.

Every case builds a float64 module and its inputs at small sizes.  Parameters
are redrawn from N(0, 0.5^2) so that no bias sits at the special value 0, and
scores stay O(1) (softmax neither saturated nor uniform).
"""

from __future__ import annotations

import numpy as np

from ..attention import (AdditiveScore, Attention, CosineScore, DotScore, GeneralScore,
                         LocationScore, MultiHeadAttention, RotaryEmbedding, ScaledDotScore,
                         causal_mask)
from ..gradcheck import Case

F64 = np.float64


def _x(rng, *shape):
    return rng.standard_normal(shape)


def _randomized(module, rng, scale=0.5):
    for p in module.parameters():
        p.data = scale * rng.standard_normal(p.shape)
    return module


def _score_case(make_score, dq, dk, Tq=3, Tk=4):
    def build(r):
        return _randomized(make_score(r), r), (_x(r, 2, Tq, dq), _x(r, 2, Tk, dk)), {}
    return build


def _attention_case(make_score, dq, dk, dv, mask_kind, Tq=3, Tk=4):
    def build(r):
        B = 2
        kwargs = {}
        if mask_kind == "key_padding":  # (B, Tk); sequence 1 has 2 padded keys
            kwargs["mask"] = np.array([[False] * Tk, [False] * (Tk - 2) + [True] * 2])
        elif mask_kind == "full":  # (B, Tq, Tk) with a fully blocked query row
            mask = r.random((B, Tq, Tk)) < 0.4
            mask[:, :, 0] = False
            mask[1, 1, :] = True
            kwargs["mask"] = mask
        attention = _randomized(Attention(make_score(r)), r)
        return attention, (_x(r, B, Tq, dq), _x(r, B, Tk, dk), _x(r, B, Tk, dv)), kwargs
    return build


def _mha_case(*, self_attention=True, same_array=False, kdim=None, vdim=None, dropout=0.0,
              bias=True, masks=False, need_weights=False, average=True, Tq=4, Tk=5):
    def build(r):
        B, E, H = 2, 6, 2
        mha = _randomized(MultiHeadAttention(E, H, dropout=dropout, bias=bias, kdim=kdim,
                                             vdim=vdim, dtype=F64, rng=r), r)
        kwargs = {}
        if self_attention:
            x = _x(r, B, Tq, E)
            inputs = (x, x, x) if same_array else (x,)
            T_k = Tq
        else:
            inputs = (_x(r, B, Tq, E), _x(r, B, Tk, kdim or E), _x(r, B, Tk, vdim or E))
            T_k = Tk
        if masks:  # both masks, and query 0 of sequence 1 blocked everywhere
            kpm = np.zeros((B, T_k), dtype=bool)
            kpm[1, -1] = True
            attn = r.random((B, Tq, T_k)) < 0.3
            attn[1, 0, :] = True
            kwargs.update(key_padding_mask=kpm, attn_mask=attn)
        elif self_attention:
            kwargs["attn_mask"] = causal_mask(Tq)
        if need_weights:
            kwargs.update(need_weights=True, average_attn_weights=average)
        return mha, inputs, kwargs
    return build


def _dot(r):
    return DotScore()


def _scaled(r):
    return ScaledDotScore()


def _general(r):
    return GeneralScore(3, 5, dtype=F64, rng=r)


def _additive(r):
    return AdditiveScore(3, 5, 4, dtype=F64, rng=r)


def _cosine(r):
    return CosineScore(beta=2.5)


def _location(r):
    return LocationScore(3, 6, dtype=F64, rng=r)


def _cosine_zero_rows(r):
    # eps = 0.5 makes the eps term matter, so the check proves the backward
    # is the derivative of exactly this forward; zero vectors included.
    s, h = _x(r, 2, 3, 4), _x(r, 2, 5, 4)
    s[0, 1] = 0.0
    h[1, 2] = 0.0
    return CosineScore(beta=1.5, eps=0.5), (s, h), {}


def _mha_modern_case(*, n_kv_heads=None, rotary=None, window=None, alibi=False, dropout=0.0,
                     self_attention=True, padded=False, H=4, d_k=2, Tq=5):
    """The options of the modern decoder: grouped-query heads, rotary
    embeddings, a sliding window, ALiBi; ``padded``: sequence 1 all padding."""
    def build(r):
        B, E = 2, H * d_k
        mha = _randomized(MultiHeadAttention(E, H, dropout=dropout, dtype=F64, rng=r,
                                             n_kv_heads=n_kv_heads, rotary=rotary,
                                             window=window, alibi=alibi), r)
        x = _x(r, B, Tq, E)
        if self_attention:
            inputs, Tk, kwargs = (x,), Tq, {"attn_mask": causal_mask(Tq)}
        else:
            inputs, Tk, kwargs = (x, _x(r, B, Tq + 1, E), _x(r, B, Tq + 1, E)), Tq + 1, {}
        if padded:  # every query row of sequence 1 fully blocked
            kpm = np.zeros((B, Tk), dtype=bool)
            kpm[1] = True
            kwargs["key_padding_mask"] = kpm
        return mha, inputs, kwargs
    return build


def _rotary_case(layout, offset, T=3, d=4):
    def build(r):
        return (RotaryEmbedding(d, base=100.0, layout=layout), (_x(r, 2, 2, T, d),),
                {"offset": offset})
    return build


CASES: list[Case] = [
    Case("DotScore", _score_case(_dot, 4, 4)),
    Case("ScaledDotScore(Tq=1)", _score_case(_scaled, 5, 5, Tq=1)),
    Case("GeneralScore", _score_case(_general, 3, 5)),
    Case("AdditiveScore", _score_case(_additive, 3, 5)),
    Case("CosineScore(beta=2.5)", _score_case(_cosine, 4, 4)),
    Case("CosineScore(eps=0.5, zero vectors)", _cosine_zero_rows),
    Case("LocationScore", _score_case(_location, 3, 2)),
    Case("Attention(dot)", _attention_case(_dot, 4, 4, 3, None)),
    Case("Attention(scaled_dot, key padding)", _attention_case(_scaled, 4, 4, 5, "key_padding")),
    Case("Attention(general, full mask)", _attention_case(_general, 3, 5, 2, "full")),
    Case("Attention(additive, key padding)", _attention_case(_additive, 3, 5, 3, "key_padding")),
    Case("Attention(cosine, full mask)", _attention_case(_cosine, 4, 4, 3, "full")),
    Case("Attention(location, key padding)", _attention_case(_location, 3, 2, 3, "key_padding")),
    Case("MultiHeadAttention(self, causal)", _mha_case()),
    Case("MultiHeadAttention(self, x passed 3 times)", _mha_case(same_array=True)),
    Case("MultiHeadAttention(cross)", _mha_case(self_attention=False)),
    Case("MultiHeadAttention(kdim=3, vdim=5)", _mha_case(self_attention=False, kdim=3, vdim=5)),
    Case("MultiHeadAttention(both masks, fully blocked row)",
         _mha_case(self_attention=False, masks=True)),
    Case("MultiHeadAttention(dropout=0.3)", _mha_case(dropout=0.3)),
    Case("MultiHeadAttention(need_weights)", _mha_case(self_attention=False, need_weights=True)),
    Case("MultiHeadAttention(need_weights per head, dropout)",
         _mha_case(masks=True, need_weights=True, average=False, dropout=0.2)),
    Case("MultiHeadAttention(bias=False)", _mha_case(bias=False, Tq=1)),
    Case("MultiHeadAttention(n_kv_heads=1, multi-query)", _mha_modern_case(n_kv_heads=1)),
    Case("MultiHeadAttention(n_kv_heads=2, grouped-query)", _mha_modern_case(n_kv_heads=2)),
    Case("MultiHeadAttention(n_kv_heads=2, cross, padded sequence)",
         _mha_modern_case(n_kv_heads=2, self_attention=False, padded=True)),
    Case("MultiHeadAttention(rotary half)",
         _mha_modern_case(rotary={"layout": "half", "base": 100.0})),
    Case("MultiHeadAttention(rotary interleaved, n_kv_heads=2)",
         _mha_modern_case(rotary={"layout": "interleaved", "base": 100.0}, n_kv_heads=2)),
    Case("MultiHeadAttention(window=2, shorter than T)", _mha_modern_case(window=2)),
    Case("MultiHeadAttention(window=8, longer than T, padded sequence)",
         _mha_modern_case(window=8, padded=True)),
    Case("MultiHeadAttention(alibi)", _mha_modern_case(alibi=True)),
    Case("MultiHeadAttention(alibi, H=3, n_kv_heads=1)",
         _mha_modern_case(alibi=True, H=3, n_kv_heads=1)),
    Case("MultiHeadAttention(rotary, n_kv_heads=2, window=3, dropout)",
         _mha_modern_case(rotary=True, n_kv_heads=2, window=3, dropout=0.2)),
    Case("RotaryEmbedding(half, offset=7)", _rotary_case("half", 7)),
    Case("RotaryEmbedding(interleaved, offset=100)", _rotary_case("interleaved", 100)),
]
