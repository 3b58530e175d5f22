"""Gradient-check cases of the RNN seq2seq family (``numtransformer/models/seq2seq/``).

Each decoder with each score function (input feeding on and off), the
attention-free decoder, the Bahdanau decoder, the encoders (stacked
bidirectional LSTM, GRU, LSTMN) and whole models.  Parameters are redrawn from
N(0, 0.5^2) so no bias sits at 0 and the attention is neither uniform nor
saturated; dropout is on (its masks are replayed by the check).  Memories
carry a padded source position and ids include the padding id.
"""

from __future__ import annotations

import numpy as np

from ..gradcheck import Case
from ..models import BahdanauDecoder, Encoder, LuongDecoder, Seq2Seq

F64 = np.float64
_SCORES = ("dot", "scaled_dot", "general", "additive", "cosine", "location")


def _randomized(module, rng, scale=0.5):
    for p in module.parameters():
        p.data = scale * rng.standard_normal(p.shape)
    return module


def _decoder_inputs(r, cell, L, B=2, T=3, S=4, D=6, H=6):
    y = r.integers(0, 7, (B, T))
    M = r.standard_normal((B, S, D))
    h0 = r.standard_normal((L, B, H))
    c0 = r.standard_normal((L, B, H)) if cell == "lstm" else None
    mask = np.zeros((B, S), dtype=bool)
    mask[1, -1] = True
    return (y, M, h0, c0, mask)


def _luong(score, input_feeding, cell="lstm", L=1):
    def build(r):
        dec = LuongDecoder(7, 4, 6, 6, num_layers=L, cell=cell, score=score,
                           input_feeding=input_feeding, max_src_len=5,
                           score_options={"beta": 2.5} if score == "cosine" else None,
                           dropout=0.2, dtype=F64, rng=r)
        return _randomized(dec, r), _decoder_inputs(r, cell, L), {"max_entries": 8}
    return build


def _bahdanau(cell):
    def build(r):
        dec = BahdanauDecoder(7, 4, 6, 6, num_layers=2, cell=cell, attn_size=5, dropout=0.2,
                              dtype=F64, rng=r)
        return _randomized(dec, r), _decoder_inputs(r, cell, 2), {"max_entries": 8}
    return build


_SRC = np.array([[3, 4, 5, 0], [2, 6, 1, 6]])
_TGT = np.array([[1, 3, 4], [1, 5, 0]])


def _encoder(cell, **kw):
    def build(r):
        enc = _randomized(Encoder(7, 4, 3, cell=cell, dropout=0.2, decoder_hidden_size=5,
                                  dtype=F64, rng=r, **kw), r)
        return enc, (_SRC, _SRC == 0), {"max_entries": 8}
    return build


def _model(**kw):
    def build(r):
        model = _randomized(Seq2Seq(7, 9, embed_dim=4, hidden_size=6, dropout=0.1, dtype=F64,
                                    rng=r, **kw), r)
        return model, (_SRC, _TGT, _SRC == 0, _TGT == 0), {"max_entries": 6}
    return build


def _luong_tag(score, feed):
    return f"{score or 'no attention'}, {'input feeding' if feed else 'no feeding'}"


CASES: list[Case] = [
    *[Case(f"LuongDecoder({_luong_tag(score, feed)})", _luong(score, feed))
      for score in _SCORES + (None,) for feed in (True, False)],
    Case("LuongDecoder(general, lstm, 2 layers, input feeding)", _luong("general", True, L=2)),
    Case("LuongDecoder(dot, gru, 2 layers, no feeding)", _luong("dot", False, cell="gru", L=2)),
    Case("BahdanauDecoder(gru)", _bahdanau("gru")),
    Case("BahdanauDecoder(lstm)", _bahdanau("lstm")),
    Case("Encoder(lstm, 2 layers, bidirectional)",
         _encoder("lstm", num_layers=2, bidirectional=True)),
    Case("Encoder(gru)", _encoder("gru")),
    Case("Encoder(lstmn)", _encoder("lstmn")),
    Case("Seq2Seq(luong dot, bidirectional lstm)", _model(bidirectional=True, score="dot")),
    Case("Seq2Seq(luong general, gru, 2 layers)",
         _model(cell="gru", num_layers=2, score="general")),
    Case("Seq2Seq(luong additive, gru, no feeding)",
         _model(cell="gru", score="additive", input_feeding=False)),
    Case("Seq2Seq(bahdanau, bidirectional gru)",
         _model(attention="bahdanau", cell="gru", bidirectional=True)),
    Case("Seq2Seq(no attention, lstm)", _model(attention="none")),
    Case("Seq2Seq(luong general, lstmn encoder)", _model(encoder_cell="lstmn", score="general")),
]
