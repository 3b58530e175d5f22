"""What the two decoders share: the incremental decoding state, and a base class
with the target embedding, the stacked RNN, the argument checks and the
per-layer states."""

from __future__ import annotations

import numpy as np

from ..._validate import (check_float, check_float_dtype, check_ids, check_mask,
                          check_positive_int, check_probability)
from ...attention import LocationScore
from ...layers import Dropout, Embedding
from ...module import Module
from ...recurrent import RNN
from .common import _RNN_CELLS, _check_cell

__all__ = ["Seq2SeqState"]


class Seq2SeqState:
    """Incremental decoding state of an RNN decoder (see ``numtransformer.decoding``).

    memory (B, S, D) and src_pad_mask (B, S) or None: the encoded source;
    states: per layer a tuple (h[, c]) of (B, H); feed: Luong's s~_{t-1}
    (input feeding) or None; keys: Bahdanau's projected keys hk = M W_k
    (B, S, A), computed once per source, or None;
    context: the fixed context of the attention-free decoder or None;
    attention: one (B, S) array of weights per decoded step (empty without
    attention), for plotting.  ``select(rows)`` keeps, reorders or repeats batch
    rows of all of them (beam search), the attention history included.
    """

    def __init__(self, memory, src_pad_mask, states, feed=None, keys=None, context=None,
                 attention=None, step=0):
        self.memory, self.src_pad_mask = memory, src_pad_mask
        self.states, self.feed, self.keys, self.context = states, feed, keys, context
        self.attention = [] if attention is None else attention
        self.step = step

    @property
    def batch_size(self) -> int:
        return self.memory.shape[0]

    def select(self, rows) -> "Seq2SeqState":
        rows = np.asarray(rows)

        def take(a):
            return None if a is None else a[rows]

        return Seq2SeqState(self.memory[rows], take(self.src_pad_mask),
                            [tuple(s[rows] for s in layer) for layer in self.states],
                            take(self.feed), take(self.keys), take(self.context),
                            [a[rows] for a in self.attention], self.step)


class _RNNDecoder(Module):
    """What the decoders share: target embedding, a stacked RNN (stepped with
    ``RNN.step`` / ``RNN.step_backward``), checks, per-layer states."""

    def _init_common(self, vocab_size, embed_dim, hidden_size, memory_size, num_layers, cell,
                     dropout, rnn_input, dtype, rng):
        self.vocab_size = check_positive_int(self, "vocab_size", vocab_size)
        self.embed_dim = check_positive_int(self, "embed_dim", embed_dim)
        self.hidden_size = check_positive_int(self, "hidden_size", hidden_size)
        self.memory_size = check_positive_int(self, "memory_size", memory_size)
        self.num_layers = check_positive_int(self, "num_layers", num_layers)
        self.cell = _check_cell(self, cell, _RNN_CELLS)
        check_probability(self, "dropout", dropout)
        dtype = check_float_dtype(self, dtype)
        self.embed = Embedding(vocab_size, embed_dim, dtype=dtype, rng=rng)
        self.dropout_in = Dropout(dropout, rng=rng.spawn(1)[0])
        self.rnn = RNN(cell, rnn_input, hidden_size, num_layers, dropout=dropout, dtype=dtype,
                       rng=rng)
        self.dropout_out = Dropout(dropout, rng=rng.spawn(1)[0])
        return dtype

    @property
    def dtype(self):
        return self.embed.W.dtype

    def _check(self, tgt_ids, memory, h0, c0, src_pad_mask):
        who = type(self).__name__
        y = check_ids(self, "tgt_ids", tgt_ids, self.vocab_size)
        if y.ndim != 2 or y.shape[1] == 0:
            raise ValueError(f"{who}: tgt_ids must be (B, T) with T >= 1, got shape {y.shape}")
        M, h0, c0 = self._check_source(memory, h0, c0, src_pad_mask, y.shape[0])
        return y, M, h0, c0

    def _check_source(self, memory, h0, c0, src_pad_mask, B=None):
        who = type(self).__name__
        M = check_float(self, "memory", memory, dtype=self.dtype, ndim=3,
                        last_dim=self.memory_size, last_dim_name="memory_size")
        if B is not None and M.shape[0] != B:
            raise ValueError(f"{who}: memory has batch size {M.shape[0]}, tgt_ids has {B}")
        B, S, _ = M.shape
        if S == 0:
            raise ValueError(f"{who}: memory has no positions (shape {M.shape})")
        shape = (self.num_layers, B, self.hidden_size)
        states = []
        for name, s in (("h0", h0), ("c0", c0)):
            if name == "c0" and self.cell != "lstm":
                if s is not None:
                    raise ValueError(f"{who}: c0 is only for cell='lstm'")
                continue
            if s is None:
                raise ValueError(f"{who}: {name} is required (the bridged encoder state), "
                                 f"expected shape {shape}")
            s = check_float(self, name, s, dtype=self.dtype, ndim=3)
            if s.shape != shape:
                raise ValueError(f"{who}: {name} has shape {s.shape}, expected "
                                 f"(num_layers, B, hidden_size) = {shape}")
            states.append(s)
        if src_pad_mask is not None:
            check_mask(self, "src_pad_mask", src_pad_mask, (B, S))
        score = getattr(getattr(self, "attention", None), "score", None)
        if isinstance(score, LocationScore) and S > score.max_len:
            raise ValueError(f"{who}: memory has {S} positions, more than max_src_len="
                             f"{score.max_len} of the location score")
        return M, states[0], (states[1] if len(states) > 1 else None)

    def _layer_states(self, h0, c0):
        if c0 is None:
            return [(h0[layer],) for layer in range(self.num_layers)]
        return [(h0[layer], c0[layer]) for layer in range(self.num_layers)]

    def _input_grads(self, dM, dstates):
        """(dM, dh0[, dc0]) from the per-layer gradients of the initial states."""
        dh0 = np.stack([d[0] for d in dstates])
        if self.cell == "lstm":
            return dM, dh0, np.stack([d[1] for d in dstates])
        return dM, dh0

    def _embed_tokens(self, tokens, batch_size: int):
        tokens = check_ids(self, "tokens", np.asarray(tokens), self.vocab_size)
        if tokens.shape != (batch_size,):
            raise ValueError(f"{type(self).__name__}: tokens must be (B,) with B = {batch_size} "
                             f"(the state's batch), got shape {tokens.shape}")
        return self.dropout_in(self.embed(tokens))
