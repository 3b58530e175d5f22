"""Bahdanau's decoder: the previous state asks the memory with the additive
score, and the context enters the recurrence."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._validate import as_rng, check_positive_int
from ...attention import AdditiveScore
from ...kernels import select
from ...layers import Linear
from .decoder import Seq2SeqState, _RNNDecoder

__all__ = ["BahdanauDecoder", "BahdanauCache", "BahdanauStep"]


class BahdanauStep(NamedTuple):
    query: tuple  # LinearCache of sq_t = s_{t-1} W_q (its .x: the query s_{t-1}, (B, H))
    energy: tuple  # AdditiveEnergyCache of e_tj = tanh(sq_t + hk_j) . v_a (its .t: (B, 1, S, A))
    attention: tuple  # AttentionCache of alpha_t = softmax(e_t), c_t = alpha_t M ((B, 1, .) each)
    stack: tuple  # StackStep of the recurrence s_t = RNN([x_t; c_t], s_{t-1}) (RNN.step's cache)


class BahdanauCache(NamedTuple):
    embed: tuple  # EmbeddingCache of E[y_in]
    dropout_in: tuple  # DropoutCache of x = dropout(E[y_in])
    M: np.ndarray  # (B, S, D) memory h_1..h_S (keys and values)
    keys: tuple  # LinearCache of hk = M W_k, projected once for all steps
    steps: list  # per step t: its BahdanauStep (query, energy, attention, recurrence)
    alpha: np.ndarray  # (B, T, S) attention weights
    o: np.ndarray  # (B, T, H) output layer tanh([s_t; c_t; x_t] W_o + b_o)
    W_o: tuple  # LinearCache of [S; C; X] W_o + b_o
    dropout_out: tuple  # DropoutCache of dropout(o)
    W_s: tuple  # LinearCache of the output projection

    s_prev = property(lambda self: np.stack([st.query.x for st in self.steps], axis=1),
                      doc="(B, T, H) the query of step t: the top state s_{t-1}")
    e = property(lambda self: np.concatenate([st.attention.e for st in self.steps], axis=1),
                 doc="(B, T, S) the scores e_tj before the softmax")


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
        hk      = M W_k                                  (B, S, A), once, before the loop
        sq_t    = s_{t-1} W_q                            (B, A)
        t_tj    = tanh(sq_t + hk_j)                      (B, S, A)
        e_tj    = t_tj . v_a                             e_tj = v_a^T tanh(W_a s_{t-1} + U_a h_j)
                                                         (A.1.2)
        alpha_t = softmax_j(e_t) over the real positions (eq. 6)
        c_t     = sum_j alpha_tj h_j                     (eq. 5)
        x_t     = dropout(E[y_in_t])
        s_t     = RNN([x_t; c_t], s_{t-1})               (the paper's GRU reads E y_{t-1}, c_t)
        o_t     = tanh([s_t; c_t; x_t] W_o + b_o)        (B, H), all t in one GEMM after the loop
        logits_t = dropout(o_t) W_s + b_s
    The output layer is a documented simplification of the paper's
    g(y_{t-1}, s_t, c_t) (eq. 4): a tanh layer over the same three inputs in
    place of the maxout layer of A.2.2 (maxout has kinks; tanh keeps every
    gradient smooth for the finite-difference checks).

    The score is the ``AdditiveScore`` of ``numtransformer.attention``; it holds
    the parameters (W_q, W_k, v_a: ``score.W_q`` etc. in the state dict), and
    its math runs here on the shared kernels, with the keys' projection hoisted
    out of the time loop (the score's own forward would project M again at
    every step): ``linear_forward`` for hk (once) and sq_t,
    ``additive_energy_forward`` for t and e, ``attention_forward`` for alpha_t
    and c_t; the recurrence is ``RNN.step``.

    Backward (each line the backward kernel of its forward line):
        do        = dropout_out.backward(dlogits W_s^T)             dW_s, db_s
        dz        = do (1 - o^2);  [dS; dC; dX] = dz W_o^T           dW_o, db_o
        for t = T-1 .. 0 (ds_{t-1} collects step t's query gradient):
            [dx_t'; dc_t'], ds_{t-1} = RNN.step_backward(dS_t, ds_t)   the cells' dW, db: below
            dX_t   += dx_t' ;  dc_t = dC_t + dc_t'
            de_t, dM_t = attention_backward(dc_t):
                dalpha_t = dc_t M^T ;  dM_t = alpha_t^T dc_t        c_t = alpha_t M
                de_t     = alpha_t (dalpha_t - sum_j alpha_tj dalpha_tj)   (softmax_backward)
            dsq_t, dhk_t, dv_a_t = additive_energy_backward(de_t):
                dv_a_t  = sum_{b,j} de_tj t_tj
                dz_tj   = de_tj v_a (1 - t_tj^2)                    z_tj = sq_t + hk_j
                dsq_t   = sum_j dz_tj ;  dhk_t = dz_t               sq_t was broadcast over j
            ds_{t-1} += dsq_t W_q^T
            dM += dM_t ;  dhk += dhk_t ;  dv_a += dv_a_t
        dW_q = sum_t s_{t-1}^T dsq_t = S_prev^T DSQ                  one projection_grads
        the cells' dW, db: RNN.add_step_grads, one product per weight over all steps
        dM  += dhk W_k^T ;  dW_k = M^T dhk                           one linear_backward
        dE  += embed.backward(dropout_in.backward(dX))
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

    def _attend(self, K, s_prev, hk, M, mask):
        """Step t's attention for the query s_{t-1} (B, H) over the projected keys hk
        (B, S, A) and the values M; mask (B, 1, S) or None.  Returns c_t (B, D) and
        the caches of sq_t, e_t and (alpha_t, c_t)."""
        sq, c_sq = K.linear_forward(s_prev, self.score.W_q.data)
        e, c_energy = K.additive_energy_forward(sq[:, None, :], hk, self.score.v_a.data)
        c, c_att = K.attention_forward(e, M, mask)
        return c[:, 0], c_sq, c_energy, c_att

    def forward(self, tgt_ids, memory, h0, c0=None, src_pad_mask=None):
        y, M, h0, c0 = self._check(tgt_ids, memory, h0, c0, src_pad_mask)
        e, c_embed = self.embed.forward(y)
        x, c_din = self.dropout_in.forward(e)
        (B, T, _), (S, D), H = x.shape, M.shape[1:], self.hidden_size
        K = select(M.dtype)
        mask = None if src_pad_mask is None else src_pad_mask[:, None, :]
        hk, c_hk = K.linear_forward(M, self.score.W_k.data)
        states = self._layer_states(h0, c0)
        s = h0[-1]
        S_top = np.empty((B, T, H), self.dtype)
        C = np.empty((B, T, D), self.dtype)
        alpha = np.empty((B, T, S), self.dtype)
        steps = []
        for t in range(T):
            C[:, t], c_sq, c_energy, c_att = self._attend(K, s, hk, M, mask)
            alpha[:, t] = c_att.alpha[:, 0]
            s, states, c_stack = self.rnn.step(np.concatenate([x[:, t], C[:, t]], axis=1), states)
            S_top[:, t] = s
            steps.append(BahdanauStep(query=c_sq, energy=c_energy, attention=c_att,
                                      stack=c_stack))
        z, c_wo = self.W_o.forward(np.concatenate([S_top, C, x], axis=-1))
        o = np.tanh(z)
        od, c_dout = self.dropout_out.forward(o)
        logits, c_ws = self.W_s.forward(od)
        return logits, BahdanauCache(embed=c_embed, dropout_in=c_din, M=M, keys=c_hk,
                                     steps=steps, alpha=alpha, o=o, W_o=c_wo,
                                     dropout_out=c_dout, W_s=c_ws)

    def backward(self, dlogits, cache: BahdanauCache):
        M, o = cache.M, cache.o
        (B, S, D), (T, H, E) = M.shape, (o.shape[1], self.hidden_size, self.embed_dim)
        W_q, W_k, v_a = self.score.W_q, self.score.W_k, self.score.v_a
        K = select(M.dtype)
        do = self.dropout_out.backward(self.W_s.backward(dlogits, cache.W_s), cache.dropout_out)
        dSCX = self.W_o.backward(do * (1 - o * o), cache.W_o)
        dS, dC = dSCX[..., :H], dSCX[..., H:H + D]
        dX = np.array(dSCX[..., H + D:])  # a copy: the loop adds the recurrence's share
        dM = np.zeros((B, S, D), self.dtype)
        dhk = np.zeros((B, S, self.score.d_attn), self.dtype)
        dv_a = np.zeros_like(v_a.data)
        # the weight gradients of the recurrence and of W_q are summed over all
        # steps after the loop, one product each (a step's own are tiny GEMMs)
        rnn_grads = self.rnn.new_step_grads()
        queries, dqueries = [], []
        dstates = None  # step T-1's carried state gradients: zeros
        for t in reversed(range(T)):
            step = cache.steps[t]
            dinp, dstates = self.rnn.step_backward(dS[:, t], dstates, step.stack,
                                                   grads=rnn_grads)
            dX[:, t] += dinp[:, :E]
            dc = dC[:, t] + dinp[:, E:]
            de, dM_t = K.attention_backward(dc[:, None, :], step.attention)
            dsq, dhk_t, dv_a_t = K.additive_energy_backward(de, step.energy)
            ds_prev = dsq[:, 0] @ W_q.data.T  # ds_{t-1} += dsq_t W_q^T
            queries.append(step.query.x)
            dqueries.append(dsq[:, 0])
            top = dstates[-1]
            dstates[-1] = (top[0] + ds_prev,) + tuple(top[1:])
            dM += dM_t
            dhk += dhk_t
            dv_a += dv_a_t
        self.rnn.add_step_grads(rnn_grads)
        dW_q, _ = K.projection_grads(np.concatenate(queries), np.concatenate(dqueries),
                                     has_bias=False)
        dM_k, dW_k, _ = K.linear_backward(dhk, cache.keys, W_k.data, has_bias=False)
        dM += dM_k
        W_q.grad += dW_q
        W_k.grad += dW_k
        v_a.grad += dv_a
        self.embed.backward(self.dropout_in.backward(dX, cache.dropout_in), cache.embed)
        return self._input_grads(dM, dstates)

    # -- incremental decoding -----------------------------------------------------------
    def start_decoding(self, memory, h0, c0=None, src_pad_mask=None) -> Seq2SeqState:
        M, h0, c0 = self._check_source(memory, h0, c0, src_pad_mask)
        hk, _ = select(M.dtype).linear_forward(M, self.score.W_k.data)
        return Seq2SeqState(M, src_pad_mask, self._layer_states(h0, c0), keys=hk)

    def decode_step(self, state: Seq2SeqState, tokens) -> np.ndarray:
        """Feed y_{t-1} (B,), return the logits of y_t (B, V); records alpha_t."""
        x = self._embed_tokens(tokens, state.batch_size)
        mask = None if state.src_pad_mask is None else state.src_pad_mask[:, None, :]
        c, _, _, c_att = self._attend(select(x.dtype), state.states[-1][0], state.keys,
                                      state.memory, mask)
        s, state.states, _ = self.rnn.step(np.concatenate([x, c], axis=1), state.states)
        state.attention.append(c_att.alpha[:, 0])
        state.step += 1
        o = np.tanh(self.W_o(np.concatenate([s, c, x], axis=1)))
        return self.W_s(self.dropout_out(o))

    def extra_repr(self) -> str:
        return (f"{self.vocab_size}, hidden_size={self.hidden_size}, cell={self.cell!r}, "
                f"attn_size={self.score.d_attn}")
