"""RNN encoder-decoder models with attention: the first half of the story.

``Encoder`` reads the source into a memory of states h_1..h_S and a bridged
initial decoder state; a decoder writes the target one token at a time:

* ``LuongDecoder`` (Luong, Pham & Manning, 2015): the state s_t asks the
  memory *after* its recurrence step; any score of ``numtransformer.attention``
  (dot, scaled_dot, general, additive, cosine, location); input feeding as an
  option.  With ``score=None`` it is a plain encoder-decoder without
  attention: the context is the bridged final encoder state at every step, so
  the whole source must pass through one vector.  (Cho et al., 2014 feed
  their summary c into every step's recurrence and output; this one
  initialises the state with it and gives it to every step's output layer,
  see ``LuongDecoder``.)
* ``BahdanauDecoder`` (Bahdanau, Cho & Bengio, 2015): the previous state
  s_{t-1} asks the memory with the additive score and the context is fed into
  the recurrence.

``Seq2Seq`` puts an encoder and a decoder together behind the interface of
``numtransformer.models.Transformer`` (``forward(src_ids, tgt_in_ids,
src_pad_mask, tgt_pad_mask) -> (logits, cache)``, ``backward(dlogits, cache)``,
``start_decoding`` / ``decode_step`` for ``numtransformer.decoding``), so one
trainer and one beam search drive both families.

Every backward pass is written out: BPTT through the decoder, into the memory
through the attention's keys and values, into the bridge through the initial
state, and on through the encoder's RNN into the embeddings.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._parallel import column_sum
from .._validate import (_name, as_rng, check_float, check_float_dtype, check_ids, check_mask,
                         check_positive_int, check_probability)
from ..data.tokenizers import BOS_ID, EOS_ID
from ..attention import (AdditiveScore, Attention, CosineScore, DotScore, GeneralScore,
                         LocationScore, ScaledDotScore)
from ..layers import Dropout, Embedding, Linear
from ..layers.activations import softmax
from ..module import Module
from ..recurrent import LSTMN, RNN

__all__ = ["Encoder", "LuongDecoder", "BahdanauDecoder", "Seq2Seq", "Seq2SeqState",
           "make_score", "SCORES"]

SCORES = ("dot", "scaled_dot", "general", "additive", "concat", "cosine", "location")
_RNN_CELLS = ("rnn", "gru", "lstm")
_ATTENTIONS = ("luong", "bahdanau", "none")


def make_score(name: str, d_query: int, d_key: int, *, attn_size: int | None = None,
               max_src_len: int | None = None, options: dict | None = None,
               dtype=np.float32, rng=None, owner: str = "make_score"):
    """Build a score of ``numtransformer.attention`` by name for queries of width
    ``d_query`` (the decoder state) and keys of width ``d_key`` (the memory).

    dot, scaled_dot, cosine need d_query == d_key; additive (alias concat) uses
    ``attn_size`` (default d_query); location needs ``max_src_len``;
    ``options`` go to the score's constructor (e.g. {"beta": 5.0} for cosine).
    """
    options = dict(options or {})
    if name not in SCORES:
        raise ValueError(f"{owner}: score must be one of {list(SCORES)} or None, got {name!r}")
    if name in ("dot", "scaled_dot", "cosine") and d_query != d_key:
        raise ValueError(f"{owner}: score={name!r} needs the decoder hidden size ({d_query}) to "
                         f"equal the memory width ({d_key}); use score='general' or change the "
                         f"sizes")
    if name == "dot":
        return DotScore(**options)
    if name == "scaled_dot":
        return ScaledDotScore(**options)
    if name == "cosine":
        return CosineScore(**options)
    if name == "general":
        return GeneralScore(d_query, d_key, dtype=dtype, rng=rng, **options)
    if name in ("additive", "concat"):
        return AdditiveScore(d_query, d_key, attn_size or d_query, dtype=dtype, rng=rng,
                             **options)
    if max_src_len is None:
        raise ValueError(f"{owner}: score='location' needs max_src_len (the longest source "
                         f"it will see)")
    return LocationScore(d_query, max_src_len, dtype=dtype, rng=rng, **options)


def _check_cell(owner, cell, allowed):
    if cell not in allowed:
        raise ValueError(f"{_name(owner)}: cell must be one of {list(allowed)}, got {cell!r}")
    return cell


def _lengths_from_mask(owner, src_pad_mask, B: int, S: int) -> np.ndarray:
    """Source lengths (B,) from a right-padding mask (True = padding)."""
    if src_pad_mask is None:
        return np.full(B, S, dtype=np.intp)
    mask = check_mask(owner, "src_pad_mask", src_pad_mask, (B, S))
    lengths = S - mask.sum(axis=1)
    if B and lengths.min() < 1:
        b = int(np.argmin(lengths))
        raise ValueError(f"{_name(owner)}: src_pad_mask marks every position of row {b} "
                         f"as padding; each source needs at least one real token")
    if not np.array_equal(mask, np.arange(S)[None, :] >= lengths[:, None]):
        raise ValueError(f"{_name(owner)}: src_pad_mask must be right padding (True "
                         f"only on a suffix of each row)")
    return lengths.astype(np.intp)


# -- stepping a stacked RNN by hand ------------------------------------------------------------


class StackStep(NamedTuple):
    inputs: list  # per layer l: (B, D_l) the layer's input x^(l)_t (after dropout for l >= 1)
    drops: list  # per layer l >= 1: the DropoutCache of x^(l)_t
    steps: list  # per layer: the cell's step cache (h_prev, gates, ...)


def _stack_step(rnn: RNN, x, states):
    """One time step through every layer of a unidirectional ``RNN``.

    x (B, D_0); states: per layer a tuple (h[, c]) of (B, H).  Returns the top
    layer's new h (B, H), the new states, and a ``StackStep`` cache.
        x^(0) = x ;  x^(l) = dropout(h^(l-1)_t) ;  h^(l)_t = cell_l(x^(l) W_ih + b_ih, h^(l)_{t-1})
    """
    new_states, inputs, drops, steps = [], [], [], []
    inp = x
    for layer, cell in enumerate(rnn.cells):
        if layer > 0:
            inp, drop = rnn.dropout.forward(inp)
            drops.append(drop)
        inputs.append(inp)
        new, step = cell.step(inp @ cell.W_ih.data + cell.b_ih.data, *states[layer])
        new_states.append(new)
        steps.append(step)
        inp = new[0]
    return inp, new_states, StackStep(inputs=inputs, drops=drops, steps=steps)


def _stack_step_backward(rnn: RNN, dh_top, dstates, cache: StackStep, grads):
    """Backward of ``_stack_step``.

    dh_top (B, H): the gradient reaching the top layer's new h from outside the
    recurrence; dstates: per layer (dh[, dc]) carried from step t+1.  Returns dx
    (B, D_0) and the per-layer gradients of the previous states.  The gradients
    of the two pre-activations are appended to ``grads[layer]`` so that
    ``_add_cell_grads`` turns all steps into parameter gradients with one GEMM.
        da_x, da_h, dprev = cell.step_backward(dh^(l) + dx^(l+1), dc^(l))
        dx^(l) = da_x W_ih^T             (through dropout below the top)
    """
    dprev = [None] * len(rnn.cells)
    dinp = dh_top
    for layer in reversed(range(len(rnn.cells))):
        cell = rnn.cells[layer]
        dh, *dc = dstates[layer]
        da_x, da_h, dprev[layer] = cell.step_backward(dh + dinp, *dc, cache.steps[layer])
        grads[layer].append((da_x, da_h))
        dinp = da_x @ cell.W_ih.data.T
        if layer > 0:
            dinp = rnn.dropout.backward(dinp, cache.drops[layer - 1])
    return dinp, dprev


def _add_cell_grads(rnn: RNN, caches: list, grads: list) -> None:
    """dW_ih += X^T da_x, db_ih += sum da_x, dW_hh += H_prev^T da_h, db_hh += sum da_h
    over all steps at once (``grads`` were appended from the last step to the first)."""
    for layer, cell in enumerate(rnn.cells):
        X = np.concatenate([c.inputs[layer] for c in caches])
        H_prev = np.concatenate([c.steps[layer].h_prev for c in caches])
        da_x = np.concatenate([g[0] for g in reversed(grads[layer])])
        da_h = np.concatenate([g[1] for g in reversed(grads[layer])])
        cell.W_ih.grad += X.T @ da_x
        cell.b_ih.grad += column_sum(da_x)
        cell.W_hh.grad += H_prev.T @ da_h
        cell.b_hh.grad += column_sum(da_h)


# -- encoder ----------------------------------------------------------------------------------


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


# -- decoding state ---------------------------------------------------------------------------


class Seq2SeqState:
    """Incremental decoding state of an RNN decoder (see ``numtransformer.decoding``).

    memory (B, S, D) and src_pad_mask (B, S) or None: the encoded source;
    states: per layer a tuple (h[, c]) of (B, H); feed: Luong's s~_{t-1}
    (input feeding) or None; keys: Bahdanau's hoisted h W_k (B, S, A) or None;
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


# -- decoders ---------------------------------------------------------------------------------


class _RNNDecoder(Module):
    """What the decoders share: target embedding, a stacked RNN, checks, states."""

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

    def _zero_dstates(self, B):
        n = 2 if self.cell == "lstm" else 1
        return [tuple(np.zeros((B, self.hidden_size), self.dtype) for _ in range(n))
                for _ in range(self.num_layers)]

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


class LuongStep(NamedTuple):
    stack: tuple  # StackStep of the recurrence
    attention: tuple | None  # AttentionCache of the query s_t (None without attention)
    W_c: tuple  # LinearCache of [c_t; s_t] W_c


class LuongCache(NamedTuple):
    embed: tuple  # EmbeddingCache of E[y_in]
    dropout_in: tuple  # DropoutCache of x = dropout(E[y_in])
    rnn: tuple | None  # RNNCache of the whole recurrence (no input feeding)
    attention: tuple | None  # AttentionCache over all (B, T, S) (no input feeding)
    W_c: tuple | None  # LinearCache of [C; S] W_c (no input feeding)
    steps: list | None  # per step LuongStep (input feeding)
    alpha: np.ndarray | None  # (B, T, S) attention weights (None without attention)
    s_tilde: np.ndarray  # (B, T, H) attentional states s~_t = tanh([c_t; s_t] W_c)
    dropout_out: tuple  # DropoutCache of dropout(s~)
    W_s: tuple  # LinearCache of the output projection
    memory_shape: tuple  # (B, S, D), for dM (zero where nothing attended)


class LuongDecoder(_RNNDecoder):
    """Global-attention decoder (Luong, Pham & Manning, 2015, "Effective
    Approaches to Attention-based Neural Machine Translation", sec. 3, eqs. 5-9:
    eq. 5 the attentional state s~_t = tanh(W_c [c_t; h_t]), eq. 6 the softmax
    output, eq. 7 the alignment a_t(s), eq. 8 the three content scores, eq. 9
    the location score; input feeding sec. 3.3).  Their s~_t, h_t and h-bar_s
    are our s~_t, s_t and h_j.

    With ``score=None``: an encoder-decoder without attention.  The summary
    c = h0[L - 1] (the bridged final encoder state) is the decoder's initial
    state and enters every step's output layer, s~_t = tanh([c; s_t] W_c);
    it reaches the recurrence only through s_0 (and, with input feeding,
    through s~_{t-1}).  That is not Cho et al. (2014), whose decoder feeds c
    into every step's recurrence, s_t = f(s_{t-1}, y_{t-1}, c) (into each
    gate), and into the output, g(s_t, y_{t-1}, c); nor Sutskever et al.
    (2014), who pass the source only through the initial state.

    ``LuongDecoder(vocab_size, embed_dim, hidden_size, memory_size,
    num_layers=1, cell="lstm", score="general", input_feeding=True,
    attn_size=None, max_src_len=None, score_options=None, dropout=0.0, *,
    dtype=np.float32, rng=None)``; score one of ``SCORES`` or None.

    Shapes: y_in (B, T) target ids (<bos> y_1 .. y_{T-1}); memory M = h_1..h_S
    (B, S, D); h0, c0 (L, B, H) the initial states; src_pad_mask (B, S) True =
    padding; logits (B, T, V).

    Forward, t = 0 .. T-1 (s_t: the top layer's state; s~_{-1} = 0):
        x_t     = dropout(E[y_in_t])                              (B, E)
        s_t     = RNN([x_t; s~_{t-1}], s_{t-1})                   input feeding
        s_t     = RNN(x_t, s_{t-1})                               without
        e_tj    = score(s_t, h_j)                                 (B, S)  (eq. 8 / 9)
        alpha_t = softmax_j(e_t) over the real positions j        (eq. 7)
        c_t     = sum_j alpha_tj h_j                              (B, D)
        s~_t    = tanh([c_t; s_t] W_c)                            (eq. 5; no bias, as the paper)
        logits_t = dropout(s~_t) W_s + b_s                        (eq. 6, before the softmax)
      without attention: c_t = c = h0[L - 1] for every t (D = H then).
    Without input feeding the recurrence runs first (``RNN`` over all T steps),
    then the attention of all steps at once: one batched score, softmax and
    context over (B, T, S) -- the equations read in matrix form.  With input
    feeding s~_{t-1} enters step t, so everything runs inside the time loop.

    Backward (ds~ collects the output's and, with input feeding, step t+1's input's gradient):
        ds~         = dropout_out.backward(dlogits W_s^T)        dW_s += s~^T dlogits, db_s
        for t = T-1 .. 0 (input feeding) / all t at once (without):
            ds~_t  += dfeed_t                                     input feeding only
            dz_t    = ds~_t (1 - s~_t^2)
            [dc_t; ds_t] = dz_t W_c^T                             dW_c += [c_t; s_t]^T dz_t
            ds_t   += Attention.backward(dc_t).query ;  dM += .keys + .values
            (input feeding) [dx_t; dfeed_{t-1}], ds_{t-1} = stacked cell backward
        (without) dx, dh0, dc0 = RNN.backward(dS)                 BPTT
        no attention: dh0[L - 1] += sum_t dc_t
        dE += embed.backward(dropout_in.backward(dx))
    ``backward(dlogits, cache)`` returns (dM, dh0, dc0) for an LSTM, (dM, dh0)
    otherwise; parameters: embed, rnn.cells.{l}, attention.score (if it has
    parameters), W_c, W_s.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, memory_size: int,
                 num_layers: int = 1, cell: str = "lstm", score: str | None = "general",
                 input_feeding: bool = True, attn_size: int | None = None,
                 max_src_len: int | None = None, score_options: dict | None = None,
                 dropout: float = 0.0, *, dtype=np.float32, rng=None):
        rng = as_rng(rng)
        self.input_feeding = bool(input_feeding)
        rnn_input = embed_dim + (hidden_size if self.input_feeding else 0)
        dtype = self._init_common(vocab_size, embed_dim, hidden_size, memory_size, num_layers,
                                  cell, dropout, rnn_input, dtype, rng)
        self.score_name = score
        if score is None:
            self.attention = None
            self.context_size = hidden_size
        else:
            self.attention = Attention(make_score(score, hidden_size, memory_size,
                                                  attn_size=attn_size, max_src_len=max_src_len,
                                                  options=score_options, dtype=dtype, rng=rng,
                                                  owner="LuongDecoder"))
            self.context_size = memory_size
        self.W_c = Linear(self.context_size + hidden_size, hidden_size, bias=False, dtype=dtype,
                          rng=rng)
        self.W_s = Linear(hidden_size, vocab_size, dtype=dtype, rng=rng)

    def forward(self, tgt_ids, memory, h0, c0=None, src_pad_mask=None):
        y, M, h0, c0 = self._check(tgt_ids, memory, h0, c0, src_pad_mask)
        e, c_embed = self.embed.forward(y)
        x, c_din = self.dropout_in.forward(e)
        if self.input_feeding:
            s_tilde, alpha, steps = self._loop(x, M, h0, c0, src_pad_mask)
            c_rnn = c_att = c_wc = None
        else:
            steps = None
            out, c_rnn = self.rnn.forward(x, h0, c0)
            S = out[0]
            if self.attention is None:
                C = np.broadcast_to(h0[-1][:, None, :], S.shape)
                alpha = c_att = None
            else:
                C, c_att = self.attention.forward(S, M, M, mask=src_pad_mask)
                alpha = c_att.alpha
            z, c_wc = self.W_c.forward(np.concatenate([C, S], axis=-1))
            s_tilde = np.tanh(z)
        o, c_dout = self.dropout_out.forward(s_tilde)
        logits, c_ws = self.W_s.forward(o)
        return logits, LuongCache(embed=c_embed, dropout_in=c_din, rnn=c_rnn, attention=c_att,
                                  W_c=c_wc, steps=steps, alpha=alpha, s_tilde=s_tilde,
                                  dropout_out=c_dout, W_s=c_ws, memory_shape=M.shape)

    def _loop(self, x, M, h0, c0, mask):
        """The input-feeding recurrence: returns s~ (B, T, H), alpha, per-step caches."""
        B, T, _ = x.shape
        states = self._layer_states(h0, c0)
        feed = np.zeros((B, self.hidden_size), self.dtype)
        s_tilde = np.empty((B, T, self.hidden_size), self.dtype)
        alpha = None if self.attention is None else np.empty((B, T, M.shape[1]), self.dtype)
        steps = []
        for t in range(T):
            s, states, c_stack = _stack_step(self.rnn, np.concatenate([x[:, t], feed], axis=1),
                                             states)
            c_att = None
            if self.attention is None:
                c = h0[-1]
            else:
                c, c_att = self.attention.forward(s[:, None, :], M, M, mask=mask)
                c = c[:, 0]
                alpha[:, t] = c_att.alpha[:, 0]
            z, c_wc = self.W_c.forward(np.concatenate([c, s], axis=1))
            feed = np.tanh(z)
            s_tilde[:, t] = feed
            steps.append(LuongStep(stack=c_stack, attention=c_att, W_c=c_wc))
        return s_tilde, alpha, steps

    def backward(self, dlogits, cache: LuongCache):
        D = self.context_size
        s_tilde = cache.s_tilde
        B, T, H = s_tilde.shape
        ds_tilde = self.dropout_out.backward(self.W_s.backward(dlogits, cache.W_s),
                                             cache.dropout_out)
        dM = np.zeros(cache.memory_shape, self.dtype)
        if self.input_feeding:
            dx = np.empty((B, T, self.embed_dim), self.dtype)
            dstates = self._zero_dstates(B)
            dfeed = np.zeros((B, H), self.dtype)
            dc_sum = np.zeros((B, H), self.dtype)
            grads = [[] for _ in range(self.num_layers)]
            for t in reversed(range(T)):
                step = cache.steps[t]
                ds_t = ds_tilde[:, t] + dfeed
                dz = ds_t * (1 - s_tilde[:, t] * s_tilde[:, t])
                dcs = self.W_c.backward(dz, step.W_c)
                dc, ds = dcs[:, :D], dcs[:, D:]
                if self.attention is None:
                    dc_sum += dc
                else:
                    dq, dk, dv = self.attention.backward(dc[:, None, :], step.attention)
                    ds = ds + dq[:, 0]
                    dM += dk + dv
                dinp, dstates = _stack_step_backward(self.rnn, ds, dstates, step.stack, grads)
                dx[:, t] = dinp[:, :self.embed_dim]
                dfeed = dinp[:, self.embed_dim:]
            _add_cell_grads(self.rnn, [s.stack for s in cache.steps], grads)
        else:
            dz = ds_tilde * (1 - s_tilde * s_tilde)
            dCS = self.W_c.backward(dz, cache.W_c)
            dC, dS = dCS[..., :D], dCS[..., D:]
            if self.attention is None:
                dc_sum = dC.sum(axis=1)
            else:
                dq, dk, dv = self.attention.backward(dC, cache.attention)
                dS = dS + dq
                dM = dk + dv
            grads = self.rnn.backward((dS,), cache.rnn)
            dx = grads[0]
            dstates = [tuple(g[layer] for g in grads[1:]) for layer in range(self.num_layers)]
        if self.attention is None:  # c = h0[L - 1] at every step
            top = dstates[-1]
            dstates = dstates[:-1] + [(top[0] + dc_sum,) + tuple(top[1:])]
        self.embed.backward(self.dropout_in.backward(dx, cache.dropout_in), cache.embed)
        return self._input_grads(dM, dstates)

    # -- incremental decoding -----------------------------------------------------------
    def start_decoding(self, memory, h0, c0=None, src_pad_mask=None) -> Seq2SeqState:
        M, h0, c0 = self._check_source(memory, h0, c0, src_pad_mask)
        B = M.shape[0]
        feed = np.zeros((B, self.hidden_size), self.dtype) if self.input_feeding else None
        context = h0[-1] if self.attention is None else None
        return Seq2SeqState(M, src_pad_mask, self._layer_states(h0, c0), feed=feed,
                            context=context)

    def decode_step(self, state: Seq2SeqState, tokens) -> np.ndarray:
        """Feed y_{t-1} (B,), return the logits of y_t (B, V); the state advances
        (and, with attention, records alpha_t in ``state.attention``)."""
        x = self._embed_tokens(tokens, state.batch_size)
        inp = np.concatenate([x, state.feed], axis=1) if self.input_feeding else x
        s, state.states, _ = _stack_step(self.rnn, inp, state.states)
        if self.attention is None:
            c = state.context
        else:
            c, c_att = self.attention.forward(s[:, None, :], state.memory, state.memory,
                                              mask=state.src_pad_mask)
            c = c[:, 0]
            state.attention.append(c_att.alpha[:, 0])
        s_tilde = np.tanh(self.W_c(np.concatenate([c, s], axis=1)))
        if self.input_feeding:
            state.feed = s_tilde
        state.step += 1
        return self.W_s(self.dropout_out(s_tilde))

    def extra_repr(self) -> str:
        return (f"{self.vocab_size}, hidden_size={self.hidden_size}, cell={self.cell!r}, "
                f"score={self.score_name!r}, input_feeding={self.input_feeding}")


class BahdanauCache(NamedTuple):
    embed: tuple  # EmbeddingCache of E[y_in]
    dropout_in: tuple  # DropoutCache of x = dropout(E[y_in])
    M: np.ndarray  # (B, S, D) memory h_1..h_S (keys and values)
    s_prev: np.ndarray  # (B, T, H) the query of step t: the top state s_{t-1}
    u: list  # per step: (B, S, A) tanh(s_{t-1} W_q + h_j W_k)
    alpha: np.ndarray  # (B, T, S) attention weights
    steps: list  # per step: StackStep of the recurrence
    o: np.ndarray  # (B, T, H) output layer tanh([s_t; c_t; x_t] W_o + b_o)
    W_o: tuple  # LinearCache of [S; C; X] W_o + b_o
    dropout_out: tuple  # DropoutCache of dropout(o)
    W_s: tuple  # LinearCache of the output projection


class BahdanauDecoder(_RNNDecoder):
    """Decoder of "Neural Machine Translation by Jointly Learning to Align and
    Translate" (Bahdanau, Cho & Bengio, 2015, sec. 3.1 and appendix A.2.2): the
    previous state asks the memory with the additive score, and the context
    enters the recurrence.

    ``BahdanauDecoder(vocab_size, embed_dim, hidden_size, memory_size,
    num_layers=1, cell="gru", attn_size=None, dropout=0.0, *, dtype=np.float32,
    rng=None)``; attn_size A defaults to hidden_size.

    Shapes: y_in (B, T) ids; memory M = h_1..h_S (B, S, D), usually from a
    bidirectional encoder; h0, c0 (L, B, H); src_pad_mask (B, S); logits (B, T, V).

    Forward, t = 0 .. T-1 (s_{t-1}: the top layer's previous state, s_{-1} = h0[L-1]):
        k_j     = h_j W_k                                   (B, S, A), once, before the loop
        q_t     = s_{t-1} W_q                               (B, A)
        u_tj    = tanh(q_t + k_j)
        e_tj    = u_tj . v_a                                e_tj = v_a^T tanh(W_a s_{t-1} + U_a h_j)
        alpha_t = softmax_j(e_t) over the real positions    (eq. 6)
        c_t     = sum_j alpha_tj h_j                        (eq. 5)
        x_t     = dropout(E[y_in_t])
        s_t     = RNN([x_t; c_t], s_{t-1})                  (the paper's GRU reads E y_{t-1}, c_t)
        o_t     = tanh([s_t; c_t; x_t] W_o + b_o)           (B, H), all t in one GEMM after the loop
        logits_t = dropout(o_t) W_s + b_s
    The output layer is a documented simplification of the paper's
    g(y_{t-1}, s_t, c_t) (eq. 4): a tanh layer over the same three inputs in
    place of the maxout layer of A.2.2 (maxout has kinks; tanh keeps every
    gradient smooth for the finite-difference checks).  The score's
    parameters are an ``AdditiveScore`` (W_q, W_k, v_a) whose math runs here
    with the keys' projection k = M W_k hoisted out of the time loop.

    Backward:
        do        = dropout_out.backward(dlogits W_s^T)             dW_s, db_s
        dz        = do (1 - o^2);  [dS; dC; dX] = dz W_o^T           dW_o, db_o
        for t = T-1 .. 0 (ds_{t-1} collects step t's query gradient):
            [dx_t; dc_t'], ds_{t-1} = stacked cell backward(dS_t + ds_t)
            dx_t   += dx_t' ;  dc_t = dC_t + dc_t'
            dM     += alpha_t^T dc_t                                c_t = alpha_t M
            dalpha  = M dc_t
            de      = alpha_t (dalpha - sum_j alpha_tj dalpha_j)     softmax backward
            dv_a   += sum_{b,j} de_tj u_tj
            dp      = de v_a (1 - u_t^2)                             gradient of q_t + k_j
            dk     += dp ;  dq_t = sum_j dp_tj
            ds_{t-1} += dq_t W_q^T
        dW_q += s_prev^T dq ;  dW_k += M^T dk ;  dM += dk W_k^T     one GEMM each
        dE   += embed.backward(dropout_in.backward(dX))
    ``backward`` returns (dM, dh0, dc0) for an LSTM, (dM, dh0) otherwise.
    Parameters: embed, score.{W_q, W_k, v_a}, rnn.cells.{l}, W_o, W_s.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, memory_size: int,
                 num_layers: int = 1, cell: str = "gru", attn_size: int | None = None,
                 dropout: float = 0.0, *, dtype=np.float32, rng=None):
        rng = as_rng(rng)
        dtype = self._init_common(vocab_size, embed_dim, hidden_size, memory_size, num_layers,
                                  cell, dropout, embed_dim + memory_size, dtype, rng)
        A = hidden_size if attn_size is None else check_positive_int(self, "attn_size", attn_size)
        self.score = AdditiveScore(hidden_size, memory_size, A, dtype=dtype, rng=rng)
        self.W_o = Linear(hidden_size + memory_size + embed_dim, hidden_size, dtype=dtype,
                          rng=rng)
        self.W_s = Linear(hidden_size, vocab_size, dtype=dtype, rng=rng)

    def _keys(self, M):
        B, S, D = M.shape
        return (M.reshape(B * S, D) @ self.score.W_k.data).reshape(B, S, self.score.d_attn)

    def _attend(self, s_prev, k, M, mask):
        """alpha_t (B, S), c_t (B, D), u_t (B, S, A) for the query s_{t-1} (B, H)."""
        q = s_prev @ self.score.W_q.data
        u = np.tanh(k + q[:, None, :])
        alpha = softmax(u @ self.score.v_a.data, axis=-1, mask=mask)
        c = (alpha[:, None, :] @ M)[:, 0]
        return alpha, c, u

    def forward(self, tgt_ids, memory, h0, c0=None, src_pad_mask=None):
        y, M, h0, c0 = self._check(tgt_ids, memory, h0, c0, src_pad_mask)
        e, c_embed = self.embed.forward(y)
        x, c_din = self.dropout_in.forward(e)
        (B, T, _), (S, D), H = x.shape, M.shape[1:], self.hidden_size
        k = self._keys(M)
        states = self._layer_states(h0, c0)
        s = h0[-1]
        s_prev = np.empty((B, T, H), self.dtype)
        S_top = np.empty((B, T, H), self.dtype)
        C = np.empty((B, T, D), self.dtype)
        alpha = np.empty((B, T, S), self.dtype)
        u, steps = [], []
        for t in range(T):
            s_prev[:, t] = s
            alpha[:, t], C[:, t], u_t = self._attend(s, k, M, src_pad_mask)
            s, states, c_stack = _stack_step(self.rnn, np.concatenate([x[:, t], C[:, t]], axis=1),
                                             states)
            S_top[:, t] = s
            u.append(u_t)
            steps.append(c_stack)
        z, c_wo = self.W_o.forward(np.concatenate([S_top, C, x], axis=-1))
        o = np.tanh(z)
        od, c_dout = self.dropout_out.forward(o)
        logits, c_ws = self.W_s.forward(od)
        return logits, BahdanauCache(embed=c_embed, dropout_in=c_din, M=M, s_prev=s_prev, u=u,
                                     alpha=alpha, steps=steps, o=o, W_o=c_wo, dropout_out=c_dout,
                                     W_s=c_ws)

    def backward(self, dlogits, cache: BahdanauCache):
        M, o, alpha = cache.M, cache.o, cache.alpha
        (B, S, D), (T, H, E) = M.shape, (o.shape[1], self.hidden_size, self.embed_dim)
        A = self.score.d_attn
        W_q, W_k, v_a = self.score.W_q, self.score.W_k, self.score.v_a
        do = self.dropout_out.backward(self.W_s.backward(dlogits, cache.W_s), cache.dropout_out)
        dSCX = self.W_o.backward(do * (1 - o * o), cache.W_o)
        dS, dC = dSCX[..., :H], dSCX[..., H:H + D]
        dX = np.array(dSCX[..., H + D:])  # a copy: the loop adds the recurrence's share
        dM = np.zeros((B, S, D), self.dtype)
        dk = np.zeros((B, S, A), self.dtype)
        dq = np.empty((B, T, A), self.dtype)
        dv_a = np.zeros(A, self.dtype)
        dstates = self._zero_dstates(B)
        grads = [[] for _ in range(self.num_layers)]
        for t in reversed(range(T)):
            dinp, dstates = _stack_step_backward(self.rnn, dS[:, t], dstates, cache.steps[t],
                                                 grads)
            dX[:, t] += dinp[:, :E]
            dc = dC[:, t] + dinp[:, E:]
            a_t, u_t = alpha[:, t], cache.u[t]
            dM += a_t[:, :, None] * dc[:, None, :]
            dalpha = (M @ dc[:, :, None])[..., 0]
            de = a_t * (dalpha - np.sum(a_t * dalpha, axis=-1, keepdims=True))
            dv_a += de.reshape(-1) @ u_t.reshape(-1, A)
            dp = de[..., None] * v_a.data * (1 - u_t * u_t)
            dk += dp
            dq[:, t] = dp.sum(axis=1)
            top = dstates[-1]
            dstates[-1] = (top[0] + dq[:, t] @ W_q.data.T,) + tuple(top[1:])
        _add_cell_grads(self.rnn, cache.steps, grads)
        dq2, dk2 = dq.reshape(B * T, A), dk.reshape(B * S, A)
        W_q.grad += cache.s_prev.reshape(B * T, H).T @ dq2
        W_k.grad += M.reshape(B * S, D).T @ dk2
        v_a.grad += dv_a
        dM += (dk2 @ W_k.data.T).reshape(B, S, D)
        self.embed.backward(self.dropout_in.backward(dX, cache.dropout_in), cache.embed)
        return self._input_grads(dM, dstates)

    # -- incremental decoding -----------------------------------------------------------
    def start_decoding(self, memory, h0, c0=None, src_pad_mask=None) -> Seq2SeqState:
        M, h0, c0 = self._check_source(memory, h0, c0, src_pad_mask)
        return Seq2SeqState(M, src_pad_mask, self._layer_states(h0, c0), keys=self._keys(M))

    def decode_step(self, state: Seq2SeqState, tokens) -> np.ndarray:
        """Feed y_{t-1} (B,), return the logits of y_t (B, V); records alpha_t."""
        x = self._embed_tokens(tokens, state.batch_size)
        alpha, c, _ = self._attend(state.states[-1][0], state.keys, state.memory,
                                   state.src_pad_mask)
        s, state.states, _ = _stack_step(self.rnn, np.concatenate([x, c], axis=1), state.states)
        state.attention.append(alpha)
        state.step += 1
        o = np.tanh(self.W_o(np.concatenate([s, c, x], axis=1)))
        return self.W_s(self.dropout_out(o))

    def extra_repr(self) -> str:
        return (f"{self.vocab_size}, hidden_size={self.hidden_size}, cell={self.cell!r}, "
                f"attn_size={self.score.d_attn}")


# -- the model --------------------------------------------------------------------------------


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
    ``decode_with_attention`` return attention matrices for plotting.
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
        src = check_ids(self, "src_ids", src_ids, self.src_vocab)
        if src.ndim != 2 or src.shape[1] == 0:
            raise ValueError(f"Seq2Seq: src_ids must be (B, S) with S >= 1, got shape "
                             f"{src.shape}")
        if src_pad_mask is not None:
            check_mask(self, "src_pad_mask", src_pad_mask, src.shape)
        if tgt_in_ids is None:
            return src, None
        tgt = check_ids(self, "tgt_in_ids", tgt_in_ids, self.tgt_vocab)
        if tgt.ndim != 2 or tgt.shape[0] != src.shape[0] or tgt.shape[1] == 0:
            raise ValueError(f"Seq2Seq: tgt_in_ids must be (B, T) with B = {src.shape[0]} and "
                             f"T >= 1, got shape {tgt.shape}")
        if tgt_pad_mask is not None:
            check_mask(self, "tgt_pad_mask", tgt_pad_mask, tgt.shape)
        return src, tgt

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
        """Greedy decoding that also returns, per source, the attention matrix of
        its output: a list of (tokens, weights) with weights (n_out, S_b), row i
        the attention while emitting output i (the final <eos> included when
        emitted; None for attention="none").  Runs in eval mode."""
        was_training = self.training
        self.eval()
        try:
            state = self.start_decoding(src_ids, src_pad_mask)
            B = state.batch_size
            tokens = np.full(B, bos_id, dtype=np.int64)
            out, n_steps = [[] for _ in range(B)], np.zeros(B, dtype=np.intp)
            done = np.zeros(B, dtype=bool)
            for _ in range(max_len):
                tokens = np.argmax(self.decode_step(state, tokens), axis=-1)
                n_steps[~done] += 1
                for b in np.flatnonzero(~done):
                    if tokens[b] == eos_id:
                        done[b] = True
                    else:
                        out[b].append(int(tokens[b]))
                if done.all():
                    break
        finally:
            self.train(was_training)
        S = np.asarray(src_ids).shape[1]
        lengths = np.full(B, S) if src_pad_mask is None else S - src_pad_mask.sum(axis=1)
        weights = np.stack(state.attention, axis=1) if state.attention else None
        return [(out[b], None if weights is None else weights[b, :n_steps[b], :lengths[b]])
                for b in range(B)]

    def extra_repr(self) -> str:
        c = self.config
        return (f"attention={c['attention']!r}, score={c['score']!r}, cell={c['cell']!r}, "
                f"encoder_cell={c['encoder_cell']!r}, bidirectional={c['bidirectional']}")
