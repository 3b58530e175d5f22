"""Gradient-check cases of the tiled attention kernel (``functional/flash.py``) and of
``MultiHeadAttention(attention_impl="tiled")``.

The kernel has no parameters and is not a layer, so its cases run it through
``TiledCore``, a module made here for the check alone: forward(q, k, v) is
``flash_attention_forward`` with the case's masks and blocks, backward its
``flash_attention_backward``.  Block sizes are chosen smaller than the
lengths and not dividing them, so every check crosses tiles, ragged last
tiles and (with the masks) skipped ones.  Parameters are redrawn from
N(0, 0.5^2), as the attention cases do.
"""

from __future__ import annotations

import numpy as np

from ..attention import MultiHeadAttention, causal_mask
from ..functional.flash import flash_attention_backward, flash_attention_forward
from ..gradcheck import Case
from ..module import Module

F64 = np.float64


class TiledCore(Module):
    """``flash_attention_forward`` / ``_backward`` as a module without parameters:
    forward(q, k, v, key_padding_mask=None, attn_mask=None) -> (o, cache), the
    other options (causal, window, q_offset, block sizes) fixed at construction."""

    def __init__(self, **options):
        self.options = options

    def forward(self, q, k, v, key_padding_mask=None, attn_mask=None):
        return flash_attention_forward(q, k, v, key_padding_mask=key_padding_mask,
                                       attn_mask=attn_mask, **self.options)

    def backward(self, do, cache):
        return flash_attention_backward(do, cache)


def _kernel_case(*, H=2, n_kv=2, Tq=7, Tk=7, d=3, padded=False, dense=False, **options):
    def build(r):
        B = 2
        q = r.standard_normal((B, H, Tq, d))
        k, v = r.standard_normal((B, n_kv, Tk, d)), r.standard_normal((B, n_kv, Tk, d + 1))
        kwargs = {}
        if padded:  # sequence 1: the last 3 keys are padding
            kpm = np.zeros((B, Tk), dtype=bool)
            kpm[1, -3:] = True
            kwargs["key_padding_mask"] = kpm
        if dense:  # a random mask with query 2 of sequence 0 blocked everywhere
            am = r.random((B, 1, Tq, Tk)) < 0.3
            am[0, 0, 2] = True
            kwargs["attn_mask"] = am
        return TiledCore(block_q=3, block_k=2, **options), (q, k, v), kwargs
    return build


def _mha_case(*, self_attention=True, causal=True, padded=False, Tq=7, H=4, d_k=2, **options):
    def build(r):
        B, E = 2, H * d_k
        mha = MultiHeadAttention(E, H, dtype=F64, rng=r, attention_impl="tiled", block_q=3,
                                 block_k=2, **options)
        for p in mha.parameters():
            p.data = 0.5 * r.standard_normal(p.shape)
        x = r.standard_normal((B, Tq, E))
        if self_attention:
            inputs, Tk = (x,), Tq
        else:
            Tk = Tq + 2
            inputs = (x, r.standard_normal((B, Tk, E)), r.standard_normal((B, Tk, E)))
        kwargs = {"attn_mask": causal_mask(Tq)} if causal else {}
        if padded:  # every query row of sequence 1 fully blocked
            kpm = np.zeros((B, Tk), dtype=bool)
            kpm[1] = True
            kwargs["key_padding_mask"] = kpm
        return mha, inputs, kwargs
    return build


CASES: list[Case] = [
    Case("flash_attention(tiled kernel)", _kernel_case()),
    Case("flash_attention(causal, n_kv_heads=1, padding)",
         _kernel_case(H=3, n_kv=1, causal=True, padded=True)),
    Case("flash_attention(window=3, q_offset=4, Tk=9)",
         _kernel_case(Tq=5, Tk=9, n_kv=1, window=3, q_offset=4)),
    Case("flash_attention(dense attn_mask, fully blocked row)",
         _kernel_case(Tq=5, Tk=6, dense=True, padded=True)),
    Case("MultiHeadAttention(tiled, causal)", _mha_case()),
    Case("MultiHeadAttention(tiled, cross, padded sequence)",
         _mha_case(self_attention=False, causal=False, padded=True)),
    Case("MultiHeadAttention(tiled, rotary, n_kv_heads=2, window=3)",
         _mha_case(rotary=True, n_kv_heads=2, window=3)),
]
