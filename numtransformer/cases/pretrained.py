"""Gradient-check cases of the pretrained-model layers (``numtransformer/pretrained/``):
a small random BERT, its embeddings, pooling and normalization."""

from __future__ import annotations

import numpy as np

from ..gradcheck import Case
from ..pretrained import BertEmbeddings, BertModel, L2Normalize, MeanPooling, SentenceEncoder

F64 = np.float64
_IDS = np.array([[2, 5, 7, 3], [2, 9, 3, 0]])
_MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])


def _bert(r):
    return BertModel(vocab_size=10, hidden_size=6, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=8, max_position_embeddings=6,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, dtype=F64,
                     rng=r)


def _perturbed(module, r):
    for p in module.parameters():  # gamma = 1, beta = 0 would hide a swapped gradient
        p.data = p.data + 0.2 * r.standard_normal(p.shape)
    return module


CASES: list[Case] = [
    Case("BertEmbeddings", lambda r: (
        _perturbed(BertEmbeddings(10, 6, 6, dropout=0.1, dtype=F64, rng=r), r),
        (_IDS, np.array([[0, 0, 1, 1], [0, 1, 1, 0]])), {})),
    Case("BertModel", lambda r: (_perturbed(_bert(r), r), (_IDS, _MASK), {"max_entries": 16})),
    Case("MeanPooling", lambda r: (MeanPooling(), (r.standard_normal((2, 4, 5)), _MASK), {})),
    Case("L2Normalize", lambda r: (L2Normalize(), (r.standard_normal((3, 5)),), {})),
    Case("SentenceEncoder", lambda r: (_perturbed(SentenceEncoder(_bert(r)), r), (_IDS, _MASK),
                                       {"max_entries": 16})),
]
