"""Gradient-check cases of the interop modules (``numtransformer/interop/``): the
``TransformerStack`` that mirrors ``torch.nn.Transformer``, post- and pre-LN."""

from __future__ import annotations

import numpy as np

from ..attention import causal_mask
from ..gradcheck import Case
from ..interop import TransformerStack


def _stack(norm_first):
    def build(r):
        model = TransformerStack(6, 2, 1, 1, 8, dropout=0.1, activation="gelu",
                                 norm_first=norm_first, dtype=np.float64, rng=r)
        pad = np.array([[False, False, False, True], [False] * 4])
        kw = {"tgt_mask": causal_mask(3), "src_key_padding_mask": pad,
              "memory_key_padding_mask": pad, "max_entries": 8}
        return model, (r.standard_normal((2, 4, 6)), r.standard_normal((2, 3, 6))), kw
    return build


CASES: list[Case] = [Case(f"TransformerStack({'pre' if nf else 'post'}-LN)", _stack(nf))
                     for nf in (False, True)]
