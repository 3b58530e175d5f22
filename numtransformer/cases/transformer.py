"""Gradient-check cases of the Transformer family (``numtransformer/models/transformer.py``)
and the residual sublayer connection it is built from.

Encoder and decoder layers pre- and post-LN with each activation, the stacks,
the whole model with a tied output, the language model; padding and causal
masks throughout, dropout on (its masks are replayed by the check).
"""

from __future__ import annotations

import numpy as np

from ..attention import MultiHeadAttention, causal_mask
from ..gradcheck import Case
from ..layers import Dropout, Linear, SublayerConnection, make_norm
from ..models import (Transformer, TransformerDecoder, TransformerDecoderLayer,
                      TransformerEncoder, TransformerEncoderLayer, TransformerLM)

F64 = np.float64


def _enc(norm_first, activation):
    def build(r):
        layer = TransformerEncoderLayer(8, 2, 12, 0.1, activation, norm_first=norm_first,
                                        dtype=F64, rng=r)
        pad = np.array([[False, False, True], [False, False, False]])
        return layer, (r.standard_normal((2, 3, 8)),), {"src_key_padding_mask": pad}
    return build


def _dec(norm_first, activation):
    def build(r):
        layer = TransformerDecoderLayer(8, 2, 12, 0.1, activation, norm_first=norm_first,
                                        dtype=F64, rng=r)
        mpad = np.array([[False, False, True, True], [False] * 4])
        return layer, (r.standard_normal((2, 3, 8)), r.standard_normal((2, 4, 8))), {
            "tgt_mask": causal_mask(3), "memory_key_padding_mask": mpad}
    return build


def _encoder(r):
    stack = TransformerEncoder(2, 8, 2, 12, 0.1, "gelu", norm_first=True, dtype=F64, rng=r)
    pad = np.array([[False, False, True], [False, False, False]])
    return stack, (r.standard_normal((2, 3, 8)),), {"src_key_padding_mask": pad}


def _decoder(r):
    stack = TransformerDecoder(2, 8, 2, 12, 0.1, "relu", dtype=F64, rng=r)
    mpad = np.array([[False, False, True, True], [False] * 4])
    return stack, (r.standard_normal((2, 3, 8)), r.standard_normal((2, 4, 8))), {
        "tgt_mask": causal_mask(3), "memory_key_padding_mask": mpad, "max_entries": 16}


def _transformer(r):
    model = Transformer(7, 9, d_model=8, nhead=2, num_encoder_layers=1,
                        num_decoder_layers=2, dim_feedforward=12, dropout=0.1,
                        tie_output=True, dtype=F64, rng=r)
    src = np.array([[3, 4, 5, 0], [2, 6, 1, 6]])
    tgt = np.array([[1, 3, 4], [1, 5, 0]])
    return model, (src, tgt, src == 0, tgt == 0), {"max_entries": 16}


def _lm(r):
    model = TransformerLM(11, 8, 2, 2, 12, dropout=0.1, dtype=F64, rng=r)
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])
    return model, (ids, ids == 0), {"max_entries": 16}


def _llama(n_kv, window, tie):
    """The LLaMA-style LM: RMSNorm, rotary, SwiGLU, grouped-query heads, no biases.

    The embeddings are drawn N(0, 0.5^2), not the init's N(0, 0.02^2): a
    finite-difference step scaled to a 0.02-sized table divides the O(1)
    rounding of everything downstream by a tiny h (errors up to 2e-6 over
    seeds, against 1e-11 at this scale); the analytic gradient is the same
    either way (tests/parity/test_llama_model_hf.py: 1e-10 against
    transformers at the init's scale)."""
    def build(r):
        model = TransformerLM(11, 8, 4, 2, 12, dropout=0.1, activation="swiglu",
                              positional="rotary", tie_output=tie, norm="rmsnorm",
                              n_kv_heads=n_kv, window=window, bias=False, dtype=F64, rng=r)
        model.embed.W.data[...] = 0.5 * r.standard_normal(model.embed.W.shape)
        for name, p in model.named_parameters():  # norm gains away from 1
            if name.endswith("gamma"):
                p.data[...] = 1 + 0.3 * r.standard_normal(p.shape)
        ids = np.array([[1, 2, 3, 4, 5], [5, 6, 7, 0, 0]])
        return model, (ids, ids == 0), {"max_entries": 16}
    return build


def _connection(norm_first, memory):
    def build(r):
        norm = make_norm("layernorm", 8, 1e-5, dtype=F64)
        norm.gamma.data[...] = 1 + 0.3 * r.standard_normal(8)
        norm.beta.data[...] = 0.3 * r.standard_normal(8)
        x = r.standard_normal((2, 3, 8))
        if not memory:
            sub = Linear(8, 8, dtype=F64, rng=r)
            return SublayerConnection(sub, norm, Dropout(0.1, rng=r), norm_first), (x,), {}
        sub = MultiHeadAttention(8, 2, 0.1, dtype=F64, rng=r)
        mpad = np.array([[False, False, True, True], [True] * 4])  # a fully masked row
        m = r.standard_normal((2, 4, 8))
        return SublayerConnection(sub, norm, Dropout(0.1, rng=r), norm_first), (
            x, m, m + 0.5), {"key_padding_mask": mpad}
    return build


CASES: list[Case] = [
    *[Case(f"SublayerConnection({'pre' if nf else 'post'}-norm, {sub})", _connection(nf, memory))
      for nf in (False, True) for sub, memory in (("Linear", False), ("cross-attention", True))],
    *[Case(f"Transformer{kind}Layer({'pre' if nf else 'post'}-LN, {act})", build(nf, act))
      for nf in (False, True) for act in ("relu", "gelu")
      for kind, build in (("Encoder", _enc), ("Decoder", _dec))],
    Case("TransformerEncoder(2 layers, pre-LN, gelu)", _encoder),
    Case("TransformerDecoder(2 layers, post-LN, relu)", _decoder),
    Case("Transformer(tied output)", _transformer),
    Case("TransformerLM", _lm),
    Case("TransformerLM(llama: RMSNorm, rotary, SwiGLU, GQA 4/2, untied)", _llama(2, None, False)),
    Case("TransformerLM(llama: multi-query, window 2, tied)", _llama(1, 2, True)),
]
