"""Gradient-check cases of the core layers (``numtransformer/layers/``) and the loss.

Every case builds a float64 module and its inputs at small sizes; ReLU inputs
are drawn away from the kink at 0.
"""

from __future__ import annotations

import numpy as np

from ..gradcheck import Case
from ..layers import (
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    LoRALinear,
    PositionwiseFeedForward,
    ReLU,
    RMSNorm,
    Sigmoid,
    SiLU,
    SinusoidalPositionalEncoding,
    Softmax,
    SwiGLUFeedForward,
    Tanh,
    TiedLinear,
    apply_lora,
    lora_parameters,
)
from ..losses import CrossEntropyLoss
from ..module import Parameter

F64 = np.float64


def _away_from_zero(rng, shape, margin=0.05):
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


def _x(rng, *shape):
    return rng.standard_normal(shape)


def _lora_linear(rng, bias=True, dropout=0.0):
    lora = LoRALinear(Linear(6, 5, bias=bias, dtype=F64, rng=rng), 3, alpha=6.0,
                      dropout=dropout, rng=rng.spawn(1)[0])
    lora.B.data[...] = rng.standard_normal(lora.B.shape)  # B = 0 (the init) would make dA = 0
    return lora


def _lora_ffn(rng):
    ffn = PositionwiseFeedForward(6, 10, activation="gelu", dropout=0.2, dtype=F64, rng=rng)
    apply_lora(ffn, ["linear1", "linear2"], r=2, alpha=4.0, dropout=0.1, rng=rng.spawn(1)[0])
    for _, p in lora_parameters(ffn):
        p.data[...] = rng.standard_normal(p.shape)
    return ffn


CASES: list[Case] = [
    Case("Linear", lambda r: (Linear(5, 3, dtype=F64, rng=r), (_x(r, 2, 3, 5),), {})),
    Case("Linear(bias=False)", lambda r: (Linear(4, 6, bias=False, dtype=F64, rng=r),
                                           (_x(r, 7, 4),), {})),
    Case("TiedLinear(bias=True)", lambda r: (
        TiedLinear(Parameter(r.standard_normal((9, 5))), bias=True), (_x(r, 2, 3, 5),), {})),
    Case("Embedding", lambda r: (Embedding(9, 4, dtype=F64, rng=r),
                                 (r.integers(0, 9, (3, 5)),), {})),
    Case("ReLU", lambda r: (ReLU(), (_away_from_zero(r, (3, 7)),), {})),
    Case("GELU", lambda r: (GELU(), (_x(r, 3, 7),), {})),
    Case("GELU(tanh)", lambda r: (GELU("tanh"), (_x(r, 3, 7),), {})),
    Case("Tanh", lambda r: (Tanh(), (_x(r, 3, 7),), {})),
    Case("Sigmoid", lambda r: (Sigmoid(), (_x(r, 3, 7),), {})),
    Case("Softmax", lambda r: (Softmax(), (_x(r, 3, 7),), {})),
    Case("Softmax(masked)", lambda r: (Softmax(), (_x(r, 3, 5),),
                                       {"mask": np.array([[0, 1, 0, 0, 1], [1] * 5, [0] * 5],
                                                         dtype=bool)})),
    Case("Dropout(p=0.3)", lambda r: (Dropout(0.3, rng=r.spawn(1)[0]), (_x(r, 4, 6),), {})),
    Case("LayerNorm", lambda r: (LayerNorm(6, dtype=F64), (_x(r, 2, 3, 6),), {})),
    Case("LayerNorm(no affine)", lambda r: (LayerNorm(5, elementwise_affine=False, dtype=F64),
                                            (_x(r, 4, 5),), {})),
    Case("PositionwiseFeedForward", lambda r: (
        PositionwiseFeedForward(6, 10, activation="gelu", dropout=0.2, dtype=F64, rng=r),
        (_x(r, 2, 3, 6),), {})),
    Case("SinusoidalPositionalEncoding", lambda r: (SinusoidalPositionalEncoding(7, max_len=16),
                                                    (_x(r, 2, 5, 7),), {"offset": 3})),
    Case("LearnedPositionalEmbedding", lambda r: (
        LearnedPositionalEmbedding(12, 6, dtype=F64, rng=r), (_x(r, 2, 5, 6),), {"offset": 2})),
    Case("CrossEntropyLoss", lambda r: (
        CrossEntropyLoss(ignore_index=0, label_smoothing=0.1),
        (_x(r, 3, 4, 7), r.integers(0, 7, (3, 4))), {})),
    Case("SiLU", lambda r: (SiLU(), (2 * _x(r, 3, 7),), {})),
    Case("RMSNorm", lambda r: (RMSNorm(6, dtype=F64), (_x(r, 2, 3, 6),), {})),
    Case("RMSNorm(no affine)", lambda r: (RMSNorm(5, elementwise_affine=False, dtype=F64),
                                          (_x(r, 4, 5),), {})),
    Case("SwiGLUFeedForward", lambda r: (SwiGLUFeedForward(6, 10, dtype=F64, rng=r),
                                         (_x(r, 2, 3, 6),), {})),
    Case("SwiGLUFeedForward(bias, dropout)", lambda r: (
        SwiGLUFeedForward(5, 7, bias=True, dropout=0.2, dtype=F64, rng=r), (_x(r, 3, 5),), {})),
    # LoRA: the frozen bases (W, b) are parameters, not checked; x, A and B are
    Case("LoRALinear", lambda r: (_lora_linear(r), (_x(r, 2, 3, 6),), {})),
    Case("LoRALinear(dropout, bias=False)", lambda r: (_lora_linear(r, bias=False, dropout=0.3),
                                                       (_x(r, 4, 6),), {})),
    Case("PositionwiseFeedForward(LoRA)", lambda r: (_lora_ffn(r), (_x(r, 2, 3, 6),), {})),
]
