"""Luong's global-attention decoder (and, with ``score=None``, the decoder
without attention)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._validate import as_rng
from ...attention import Attention
from ...layers import Linear
from .common import make_score
from .decoder import Seq2SeqState, _RNNDecoder

__all__ = ["LuongDecoder", "LuongCache", "LuongStep"]


class LuongStep(NamedTuple):
    stack: tuple  # StackStep of the recurrence (RNN.step's cache)
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
        s_t     = RNN([x_t; s~_{t-1}], s_{t-1})                   input feeding: RNN.step
        s_t     = RNN(x_t, s_{t-1})                               without: RNN.forward
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
                      (de_t, dvalues = attention_backward(dc_t) ;  dquery, dkeys = score's)
            (input feeding) [dx_t; dfeed_{t-1}], dstates_{t-1}
                    = RNN.step_backward(ds_t, dstates_t)      dstates: per layer (dh[, dc])
        (without) dx, dh0, dc0 = RNN.backward(dS)                 BPTT
        (RNN.backward adds the cells' parameter gradients; after the stepped loop,
        RNN.add_step_grads adds them for all steps at once)
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
            s, states, c_stack = self.rnn.step(np.concatenate([x[:, t], feed], axis=1), states)
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
            dstates = None  # step T-1's carried state gradients: zeros
            dfeed = np.zeros((B, H), self.dtype)
            dc_sum = np.zeros((B, H), self.dtype)
            rnn_grads = self.rnn.new_step_grads()  # the cells' dW: one product after the loop
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
                dinp, dstates = self.rnn.step_backward(ds, dstates, step.stack,
                                                       grads=rnn_grads)
                dx[:, t] = dinp[:, :self.embed_dim]
                dfeed = dinp[:, self.embed_dim:]
            self.rnn.add_step_grads(rnn_grads)
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
        s, state.states, _ = self.rnn.step(inp, state.states)
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
