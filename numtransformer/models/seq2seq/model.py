"""The RNN encoder-decoder: an ``Encoder`` and a Luong or Bahdanau decoder behind
the Transformer's interface."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._validate import (as_rng, check_float_dtype, check_positive_int, check_source_target)
from ...decoding import decode_with_attention
from ...module import Module
from ...tokens import BOS_ID, EOS_ID
from .bahdanau import BahdanauDecoder
from .common import _ATTENTIONS, _RNN_CELLS, _check_cell
from .decoder import Seq2SeqState
from .encoder import Encoder
from .luong import LuongDecoder

__all__ = ["Seq2Seq", "Seq2SeqCache"]


class Seq2SeqCache(NamedTuple):
    encoder: tuple  # EncoderCache
    decoder: tuple  # LuongCache or BahdanauCache (its .alpha: the (B, T, S) attention)


class Seq2Seq(Module):
    """RNN encoder-decoder with (or without) attention, one configurable class.

    ``Seq2Seq(src_vocab, tgt_vocab, embed_dim=32, hidden_size=64, num_layers=1,
    cell="lstm", encoder_cell=None, bidirectional=False,
    encoder_hidden_size=None, attention="luong", score="general",
    input_feeding=True, attn_size=None, max_src_len=None, score_options=None,
    dropout=0.0, *, dtype=np.float32, rng=None)``

    * attention: "luong" (``LuongDecoder`` with ``score``), "bahdanau"
      (``BahdanauDecoder``, additive; ``score`` and ``input_feeding`` unused)
      or "none" (``LuongDecoder(score=None)``: the context is the bridged final
      encoder state -- the bottleneck the attention removes).
    * cell: the decoder's "rnn", "gru" or "lstm"; encoder_cell (default: cell)
      may also be "lstmn" (one layer, one direction; the decoder is an LSTM).
    * the encoder's hidden size per direction defaults to hidden_size // 2 when
      bidirectional (so the memory is hidden_size wide and dot scores apply),
      else hidden_size; the bridge maps its final states to the decoder's.
    * dropout: on both embeddings, between stacked layers, and before the
      output projection.

    ``config`` holds the constructor arguments (JSON-serialisable), so
    ``Seq2Seq.from_config(config)`` rebuilds the model from a checkpoint.

    Shapes: src_ids (B, S), tgt_in_ids (B, T) (teacher forcing: <bos> y_1 ..);
    src_pad_mask (B, S) right padding, True = pad; tgt_pad_mask (B, T) is
    accepted for the Transformer's signature and checked, but not needed: the
    decoder is causal and the loss ignores padded targets.  logits (B, T, V).

    Forward:   M, h0[, c0] = Encoder(src, src_pad_mask) ;  logits = Decoder(tgt_in, M, h0, c0)
    Backward:  dM, dh0[, dc0] = Decoder.backward(dlogits) ;  Encoder.backward(dM, dh0, dc0)
    (returns None: ids get no gradient).  Parameters: encoder.*, decoder.*.

    Decoding (``numtransformer.decoding``): ``start_decoding(src_ids,
    src_pad_mask)`` encodes once and returns a ``Seq2SeqState``;
    ``decode_step(state, tokens)`` -> logits (B, V) and appends that step's
    attention (B, S) to ``state.attention``.  ``attention_weights`` and
    ``decode_with_attention`` (``numtransformer.decoding``'s, as a method)
    return attention matrices for plotting.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, embed_dim: int = 32,
                 hidden_size: int = 64, num_layers: int = 1, cell: str = "lstm",
                 encoder_cell: str | None = None, bidirectional: bool = False,
                 encoder_hidden_size: int | None = None, attention: str = "luong",
                 score: str = "general", input_feeding: bool = True,
                 attn_size: int | None = None, max_src_len: int | None = None,
                 score_options: dict | None = None, dropout: float = 0.0, *,
                 dtype=np.float32, rng=None):
        self.src_vocab = check_positive_int(self, "src_vocab", src_vocab)
        self.tgt_vocab = check_positive_int(self, "tgt_vocab", tgt_vocab)
        hidden_size = check_positive_int(self, "hidden_size", hidden_size)
        if attention not in _ATTENTIONS:
            raise ValueError(f"Seq2Seq: attention must be one of {list(_ATTENTIONS)}, "
                             f"got {attention!r}")
        _check_cell(self, cell, _RNN_CELLS)
        encoder_cell = cell if encoder_cell is None else encoder_cell
        _check_cell(self, encoder_cell, _RNN_CELLS + ("lstmn",))
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"Seq2Seq: bidirectional must be a bool, "
                            f"got {type(bidirectional).__name__}")
        if score_options is not None and not isinstance(score_options, dict):
            raise TypeError(f"Seq2Seq: score_options must be a dict or None, "
                            f"got {type(score_options).__name__}")
        dtype = check_float_dtype(self, dtype)
        if encoder_hidden_size is None:
            if bidirectional and hidden_size % 2:
                raise ValueError(f"Seq2Seq: a bidirectional encoder splits hidden_size="
                                 f"{hidden_size} over two directions; make it even or give "
                                 f"encoder_hidden_size")
            encoder_hidden_size = hidden_size // 2 if bidirectional else hidden_size
        self.config = dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, embed_dim=embed_dim,
                           hidden_size=hidden_size, num_layers=num_layers, cell=cell,
                           encoder_cell=encoder_cell, bidirectional=bool(bidirectional),
                           encoder_hidden_size=encoder_hidden_size, attention=attention,
                           score=score, input_feeding=bool(input_feeding), attn_size=attn_size,
                           max_src_len=max_src_len, score_options=score_options,
                           dropout=dropout)
        rng = as_rng(rng)
        self.encoder = Encoder(src_vocab, embed_dim, encoder_hidden_size, num_layers,
                               encoder_cell, bool(bidirectional), dropout,
                               decoder_hidden_size=hidden_size, decoder_cell=cell, dtype=dtype,
                               rng=rng)
        D = self.encoder.memory_size
        if attention == "bahdanau":
            self.decoder = BahdanauDecoder(tgt_vocab, embed_dim, hidden_size, D, num_layers,
                                           cell, attn_size, dropout, dtype=dtype, rng=rng)
        else:
            self.decoder = LuongDecoder(tgt_vocab, embed_dim, hidden_size, D, num_layers, cell,
                                        None if attention == "none" else score, input_feeding,
                                        attn_size, max_src_len, score_options, dropout,
                                        dtype=dtype, rng=rng)

    @classmethod
    def from_config(cls, config: dict, *, dtype=np.float32, rng=None) -> "Seq2Seq":
        return cls(**config, dtype=dtype, rng=rng)

    @property
    def dtype(self):
        return self.encoder.dtype

    def _check(self, src_ids, tgt_in_ids, src_pad_mask, tgt_pad_mask):
        return check_source_target(self, src_ids, tgt_in_ids, src_pad_mask, tgt_pad_mask,
                                   self.src_vocab, self.tgt_vocab)

    def forward(self, src_ids, tgt_in_ids, src_pad_mask=None, tgt_pad_mask=None):
        if tgt_in_ids is None:
            raise TypeError("Seq2Seq: tgt_in_ids is required (start_decoding() encodes a "
                            "source alone)")
        src, tgt = self._check(src_ids, tgt_in_ids, src_pad_mask, tgt_pad_mask)
        (M, h0, c0), c_enc = self.encoder.forward(src, src_pad_mask)
        logits, c_dec = self.decoder.forward(tgt, M, h0, c0, src_pad_mask)
        return logits, Seq2SeqCache(encoder=c_enc, decoder=c_dec)

    def backward(self, dlogits, cache: Seq2SeqCache):
        grads = self.decoder.backward(dlogits, cache.decoder)
        self.encoder.backward(grads, cache.encoder)
        return None

    # -- inference ------------------------------------------------------------------------
    def start_decoding(self, src_ids, src_pad_mask=None) -> Seq2SeqState:
        """Encode the source once; returns the decoder's state (see ``Seq2SeqState``)."""
        src, _ = self._check(src_ids, None, src_pad_mask, None)
        M, h0, c0 = self.encoder(src, src_pad_mask)
        return self.decoder.start_decoding(M, h0, c0, src_pad_mask)

    def decode_step(self, state: Seq2SeqState, tokens) -> np.ndarray:
        """Feed the previous target token of every row (B,), return next-token
        logits (B, V); the state advances by one step."""
        return self.decoder.decode_step(state, tokens)

    def attention_weights(self, src_ids, tgt_in_ids, src_pad_mask=None):
        """The (B, T, S) attention of a teacher-forced pass (in eval mode), or None
        for attention="none"."""
        was_training = self.training
        self.eval()
        try:
            _, cache = self.forward(src_ids, tgt_in_ids, src_pad_mask)
        finally:
            self.train(was_training)
        return cache.decoder.alpha

    def decode_with_attention(self, src_ids, src_pad_mask=None, max_len: int = 50,
                              bos_id: int = BOS_ID, eos_id: int = EOS_ID):
        """``numtransformer.decoding.decode_with_attention(self, ...)``: greedy
        decoding with, per source, the attention matrix of its output."""
        return decode_with_attention(self, src_ids, src_pad_mask, max_len=max_len,
                                     bos_id=bos_id, eos_id=eos_id)

    def extra_repr(self) -> str:
        c = self.config
        return (f"attention={c['attention']!r}, score={c['score']!r}, cell={c['cell']!r}, "
                f"encoder_cell={c['encoder_cell']!r}, bidirectional={c['bidirectional']}")
