"""The source encoder: embedding, a stacked (optionally bidirectional) RNN or an
LSTMN, and the bridge to the decoder's initial state."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._validate import (as_rng, check_float_dtype, check_ids, check_positive_int,
                          check_probability)
from ...layers import Dropout, Embedding, Linear
from ...module import Module
from ...recurrent import LSTMN, RNN
from .common import _RNN_CELLS, _check_cell, _lengths_from_mask

__all__ = ["Encoder", "EncoderCache"]


class EncoderCache(NamedTuple):
    embed: tuple  # EmbeddingCache of E[src]
    dropout: tuple  # DropoutCache of x = dropout(E[src])
    rnn: tuple  # RNNCache, or LSTMNCache for cell "lstmn"
    lengths: np.ndarray  # (B,) real source lengths
    h0: np.ndarray  # (L, B, H_dec) bridge output tanh(f W_bh + b_bh)
    c0: np.ndarray | None  # (L, B, H_dec) tanh(g W_bc + b_bc), decoder LSTM only
    bridge_h: tuple  # LinearCache of f W_bh + b_bh
    bridge_c: tuple | None  # LinearCache of g W_bc + b_bc


class Encoder(Module):
    """Source encoder: embedding, a (stacked, optionally bidirectional) RNN or an
    LSTMN, and a bridge to the decoder's initial state.

    ``Encoder(vocab_size, embed_dim, hidden_size, num_layers=1, cell="lstm",
    bidirectional=False, dropout=0.0, decoder_hidden_size=None,
    decoder_cell=None, *, dtype=np.float32, rng=None)``; cell "rnn", "gru",
    "lstm" or "lstmn" (one layer, one direction).  decoder_hidden_size
    defaults to hidden_size * dirs, decoder_cell to cell ("lstm" for "lstmn").

    Shapes: src (B, S) ids; src_pad_mask (B, S) right padding, True = pad,
    at least one real token per row; memory M (B, S, D) with D = dirs * H
    (zero at padded positions for the RNN; the LSTMN runs on and its padded
    states are never read); h0, c0 (L, B, H_dec).

    Forward (lengths_b = real tokens of row b):
        x      = dropout(E[src])                                    (B, S, E)
        M, h_n[, c_n] = RNN(x, lengths)                             padded steps skipped
        f_l    = [h_n(l, fwd); h_n(l, bwd)]                         (L, B, D): each layer's
                 final states (forward: after step lengths - 1; backward: after step 0)
        g_l    = [c_n(l, fwd); c_n(l, bwd)]                         (LSTM)
      cell "lstmn":
        M, C, s = LSTMN(x)                                          (B, S, H) tapes; s for plotting
        f      = M[b, lengths_b - 1]     g = C[b, lengths_b - 1]    (1, B, H)
      the bridge (decoder LSTM: also c0):
        h0     = tanh(f W_bh + b_bh)                                (L, B, H_dec)
        c0     = tanh(g W_bc + b_bc)
    Backward:
        df     = bridge_h.backward(dh0 (1 - h0^2))
        dg     = bridge_c.backward(dc0 (1 - c0^2))
        dx     = RNN.backward(dM, d_h_n = df, d_c_n = dg)            split per direction
      cell "lstmn":
        dM[b, lengths_b - 1] += df_b ;  dC[b, lengths_b - 1] = dg_b ;  dx = LSTMN.backward(dM, dC)
        dE    += embed.backward(dropout.backward(dx))

    The bridge is the choice made here (Bahdanau et al. 2015, A.2.2, initialise
    s_0 = tanh(W_s h<-_1); Cho et al. 2014 c = tanh(V h_N)): one Linear + tanh
    shared by all layers, from the concatenated directions of each layer to
    the decoder's width, always present (even when the widths match), so any
    encoder/decoder sizes combine and the bidirectional final states are mixed
    into one vector.  A decoder LSTM's c0 gets its own bridge from the encoder's
    final cells (so the encoder must be an LSTM or LSTMN); the decoder must have
    as many layers as the encoder.  ``forward`` returns (M, h0, c0), c0 None
    unless the decoder cell is an LSTM; ``backward((dM, dh0, dc0), cache)``
    (any may be None) returns None (ids get no gradient).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 cell: str = "lstm", bidirectional: bool = False, dropout: float = 0.0,
                 decoder_hidden_size: int | None = None, decoder_cell: str | None = None,
                 *, dtype=np.float32, rng=None):
        self.vocab_size = check_positive_int(self, "vocab_size", vocab_size)
        self.embed_dim = check_positive_int(self, "embed_dim", embed_dim)
        self.hidden_size = check_positive_int(self, "hidden_size", hidden_size)
        self.num_layers = check_positive_int(self, "num_layers", num_layers)
        self.cell = _check_cell(self, cell, _RNN_CELLS + ("lstmn",))
        self.bidirectional = bool(bidirectional)
        check_probability(self, "dropout", dropout)
        dtype = check_float_dtype(self, dtype)
        if cell == "lstmn" and (num_layers != 1 or bidirectional):
            raise ValueError("Encoder: cell='lstmn' is one layer in one direction "
                             f"(got num_layers={num_layers}, bidirectional={bidirectional})")
        self.num_directions = 2 if self.bidirectional else 1
        self.memory_size = self.num_directions * hidden_size
        self.decoder_hidden_size = (self.memory_size if decoder_hidden_size is None else
                                    check_positive_int(self, "decoder_hidden_size",
                                                       decoder_hidden_size))
        if decoder_cell is None:
            decoder_cell = "lstm" if cell == "lstmn" else cell
        self.decoder_cell = _check_cell(self, decoder_cell, _RNN_CELLS)
        if decoder_cell == "lstm" and cell not in ("lstm", "lstmn"):
            raise ValueError(f"Encoder: a decoder LSTM needs an initial cell state, which a "
                             f"{cell!r} encoder does not have; use cell 'lstm' or 'lstmn'")
        rng = as_rng(rng)
        self.embed = Embedding(vocab_size, embed_dim, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        if cell == "lstmn":
            self.rnn = LSTMN(embed_dim, hidden_size, dtype=dtype, rng=rng)
        else:
            self.rnn = RNN(cell, embed_dim, hidden_size, num_layers, bidirectional, dropout,
                           dtype=dtype, rng=rng)
        self.bridge_h = Linear(self.memory_size, self.decoder_hidden_size, dtype=dtype, rng=rng)
        self.bridge_c = (Linear(self.memory_size, self.decoder_hidden_size, dtype=dtype, rng=rng)
                         if decoder_cell == "lstm" else None)

    @property
    def dtype(self):
        return self.embed.W.dtype

    def _per_layer(self, s_n):
        """(L * dirs, B, H) final states -> (L, B, dirs * H), directions side by side."""
        _, B, H = s_n.shape
        L, dirs = self.num_layers, self.num_directions
        return s_n.reshape(L, dirs, B, H).transpose(0, 2, 1, 3).reshape(L, B, dirs * H)

    def _per_direction(self, d):
        """Inverse of ``_per_layer`` (for the gradients)."""
        L, B, _ = d.shape
        dirs, H = self.num_directions, self.hidden_size
        return d.reshape(L, B, dirs, H).transpose(0, 2, 1, 3).reshape(L * dirs, B, H)

    def forward(self, src_ids, src_pad_mask=None):
        src = check_ids(self, "src_ids", src_ids, self.vocab_size)
        if src.ndim != 2 or src.shape[1] == 0:
            raise ValueError(f"Encoder: src_ids must be (B, S) with S >= 1, got shape {src.shape}")
        B, S = src.shape
        lengths = _lengths_from_mask(self, src_pad_mask, B, S)
        e, c_embed = self.embed.forward(src)
        x, c_drop = self.dropout.forward(e)
        if self.cell == "lstmn":
            (M, C, _), c_rnn = self.rnn.forward(x)
            rows = np.arange(B)
            f, g = M[rows, lengths - 1][None], C[rows, lengths - 1][None]
        else:
            out, c_rnn = self.rnn.forward(x, lengths=lengths)
            M = out[0]
            f = self._per_layer(out[1])
            g = self._per_layer(out[2]) if self.cell == "lstm" else None
        a_h, c_bh = self.bridge_h.forward(f)
        h0 = np.tanh(a_h)
        c0 = c_bc = None
        if self.bridge_c is not None:
            a_c, c_bc = self.bridge_c.forward(g)
            c0 = np.tanh(a_c)
        return (M, h0, c0), EncoderCache(embed=c_embed, dropout=c_drop, rnn=c_rnn,
                                         lengths=lengths, h0=h0, c0=c0, bridge_h=c_bh,
                                         bridge_c=c_bc)

    def backward(self, dout, cache: EncoderCache):
        dout = (dout,) if isinstance(dout, np.ndarray) else tuple(dout)
        dM, dh0, dc0 = dout + (None,) * (3 - len(dout))
        h0, c0 = cache.h0, cache.c0
        df = dg = None
        if dh0 is not None:
            df = self.bridge_h.backward(dh0 * (1 - h0 * h0), cache.bridge_h)
        if dc0 is not None and c0 is not None:
            dg = self.bridge_c.backward(dc0 * (1 - c0 * c0), cache.bridge_c)
        if self.cell == "lstmn":
            B, S, H = cache.rnn.h.shape
            rows, last = np.arange(B), cache.lengths - 1
            dMt = np.zeros((B, S, H), self.dtype) if dM is None else dM.copy()
            dCt = np.zeros((B, S, H), self.dtype)
            if df is not None:
                dMt[rows, last] += df[0]
            if dg is not None:
                dCt[rows, last] += dg[0]
            dx = self.rnn.backward((dMt, dCt), cache.rnn)
        else:
            d_h_n = None if df is None else self._per_direction(df)
            d_c_n = None if dg is None else self._per_direction(dg)
            dstates = (d_h_n, d_c_n) if self.cell == "lstm" else (d_h_n,)
            dx = self.rnn.backward((dM,) + dstates, cache.rnn)
        self.embed.backward(self.dropout.backward(dx, cache.dropout), cache.embed)
        return None

    def extra_repr(self) -> str:
        return (f"{self.vocab_size}, embed_dim={self.embed_dim}, hidden_size={self.hidden_size}, "
                f"cell={self.cell!r}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}")
