"""Gradient-check cases of the recurrent layers (``numtransformer/recurrent/``): each
cell with initial states; ``RNN`` with lengths and initial states, one layer and
stacked + bidirectional for each cell type; ``LSTMN``."""

from __future__ import annotations

import numpy as np

from ..gradcheck import Case
from ..recurrent import LSTMN, RNN, GRUCell, LSTMCell, RNNCell

F64 = np.float64


def _x(rng, *shape):
    return rng.standard_normal(shape)


def _cell(cls, n_states):
    def build(r):
        cell = cls(4, 3, dtype=F64, rng=r)
        return cell, (_x(r, 2, 4),) + tuple(_x(r, 2, 3) for _ in range(n_states)), {}
    return build


def _rnn(cell_type, num_layers=1, bidirectional=False, dropout=0.0):
    def build(r):
        rnn = RNN(cell_type, 3, 2, num_layers=num_layers, bidirectional=bidirectional,
                  dropout=dropout, dtype=F64, rng=r)
        S = num_layers * (2 if bidirectional else 1)
        states = tuple(_x(r, S, 3, 2) for _ in range(2 if cell_type == "lstm" else 1))
        return rnn, (_x(r, 3, 4, 3),) + states, {"lengths": np.array([4, 1, 3])}
    return build


def _lstmn(D, H, T, **options):
    def build(r):
        lstmn = LSTMN(D, H, dtype=F64, rng=r, **options)
        for p in (lstmn.W_h, lstmn.W_x, lstmn.W_ht, lstmn.v):
            p.data = 3 * p.data  # sharper reads, so the attention's gradients are not tiny
        return lstmn, (_x(r, 2, T, D),), {}
    return build


CASES: list[Case] = [
    Case("RNNCell", _cell(RNNCell, 1)),
    Case("LSTMCell", _cell(LSTMCell, 2)),
    Case("GRUCell", _cell(GRUCell, 1)),
    *[case for cell_type in ("rnn", "lstm", "gru") for case in (
        Case(f"RNN({cell_type}, lengths)", _rnn(cell_type)),
        Case(f"RNN({cell_type}, 2 layers, bidirectional, dropout=0.2, lengths)",
             _rnn(cell_type, num_layers=2, bidirectional=True, dropout=0.2)))],
    Case("LSTMN", _lstmn(3, 3, attention_size=4, T=5)),
    Case("LSTMN(window=2)", _lstmn(3, 2, window=2, T=4)),
]
