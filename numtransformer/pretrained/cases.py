"""float64 gradient-check cases of the pretrained-model layers (small random BERT),
for ``numtransformer gradcheck``."""

from __future__ import annotations

import numpy as np


def gradcheck_cases():
    from ..selfcheck import Case
    from .bert import BertEmbeddings, BertModel, L2Normalize, MeanPooling, SentenceEncoder

    F64 = np.float64
    ids = np.array([[2, 5, 7, 3], [2, 9, 3, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])

    def bert(r):
        return BertModel(vocab_size=10, hidden_size=6, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=8, max_position_embeddings=6,
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, dtype=F64,
                         rng=r)

    def perturbed(module, r):
        for p in module.parameters():  # gamma = 1, beta = 0 would hide a swapped gradient
            p.data = p.data + 0.2 * r.standard_normal(p.shape)
        return module

    return [
        Case("BertEmbeddings", lambda r: (
            perturbed(BertEmbeddings(10, 6, 6, dropout=0.1, dtype=F64, rng=r), r),
            (ids, np.array([[0, 0, 1, 1], [0, 1, 1, 0]])), {})),
        Case("BertModel", lambda r: (perturbed(bert(r), r), (ids, mask), {"max_entries": 16})),
        Case("MeanPooling", lambda r: (MeanPooling(), (r.standard_normal((2, 4, 5)), mask), {})),
        Case("L2Normalize", lambda r: (L2Normalize(), (r.standard_normal((3, 5)),), {})),
        Case("SentenceEncoder", lambda r: (perturbed(SentenceEncoder(bert(r)), r), (ids, mask),
                                           {"max_entries": 16})),
    ]
