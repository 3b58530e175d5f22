"""Reference kernels: one time step of the tanh RNN, the LSTM, the GRU and the LSTMN.

A recurrent layer runs the same step T times, so each step is split in two:

    xw = x W_ih + b_ih                  the input projection: the caller makes it for
                                        all T steps with one GEMM (``linear_forward``)
    new_states, cache = *_step_forward(xw, *states, W_hh, b_hh)      everything else

and its backward returns the gradients of the two pre-activation projections
and of the previous states, leaving the parameter gradients to the caller:

    da_x, da_h, dstates_prev = *_step_backward(*dstates, cache, W_hh)

da_x is the gradient of xw = x W_ih + b_ih and da_h that of h_prev W_hh + b_hh.
The caller stacks them over all T steps and turns them into dW_ih, db_ih, dx
(``linear_backward``) and dW_hh, db_hh (``projection_grads``) with one
GEMM each, instead of T small ones.  For the tanh RNN and the LSTM the two
projections are summed, so da_x and da_h are the same array; the GRU's
candidate multiplies its hidden half by r, so there they differ.

The states' gradients ``dstates`` reaching a step are the sum of what its
output received and what step t+1 sent back (dh_prev, and for the LSTM
dc_prev): the caller carries both from step to step.  Dropping either is the
classic bug (the gradient then only flows one step back).

Weights are stored so the math reads as written, x W: W_ih (D, G*H),
W_hh (H, G*H), biases (G*H,), the G gates side by side in PyTorch's order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .activations import sigmoid, softmax, softmax_backward
from .attention import AdditiveEnergyCache, additive_energy_backward, additive_energy_forward

__all__ = ["RNNStep", "LSTMStep", "GRUStep", "LSTMNStep",
           "rnn_step_forward", "rnn_step_backward",
           "lstm_step_forward", "lstm_step_backward",
           "gru_step_forward", "gru_step_backward",
           "projection_grads",
           "lstmn_step_forward", "lstmn_step_backward"]


# -- tanh RNN ---------------------------------------------------------------------------------


class RNNStep(NamedTuple):
    h_prev: np.ndarray  # (B, H) the previous hidden state
    h: np.ndarray  # (B, H) the new hidden state


def rnn_step_forward(xw, h_prev, W_hh, b_hh):
    """One step of the Elman RNN with tanh (Elman, 1990), as ``torch.nn.RNNCell``.

    Shapes: xw = x W_ih + b_ih (B, H), h_prev (B, H), W_hh (H, H), b_hh (H,).

        a = xw + h_prev W_hh + b_hh
        h = tanh(a)

    Returns ((h,), RNNStep).
    """
    a = xw + h_prev @ W_hh + b_hh
    h = np.tanh(a)
    return (h,), RNNStep(h_prev=h_prev, h=h)


def rnn_step_backward(dh, cache: RNNStep, W_hh):
    """The gradients of one tanh-RNN step.  Returns (da_x, da_h, (dh_prev,)).

    dh (B, H) is the total gradient reaching h: from the step's output and
    from step t+1 (its dh_prev).
        da      = dh (1 - h^2)          tanh' = 1 - tanh^2
        da_x    = da_h = da             a = xw + (h_prev W_hh + b_hh): a sum passes da to both
        dh_prev = da W_hh^T             the matrix rule dX = dY W^T
    (dW_hh = h_prev^T da and db_hh = sum_b da are the caller's.)
    """
    h = cache.h
    da = dh * (1.0 - h * h)
    dh_prev = da @ W_hh.T
    return da, da, (dh_prev,)


# -- LSTM -------------------------------------------------------------------------------------


class LSTMStep(NamedTuple):
    h_prev: np.ndarray  # (B, H) previous hidden state (the LSTMN: its read h~_t)
    c_prev: np.ndarray  # (B, H) previous cell state (the LSTMN: its read c~_t)
    gates: np.ndarray  # (B, 4H) [i, f, g, o] side by side (the properties below are views)
    tanh_c: np.ndarray  # (B, H) tanh of the new cell state

    def _gate(self, k: int) -> np.ndarray:
        H = self.tanh_c.shape[-1]
        return self.gates[:, k * H:(k + 1) * H]

    i = property(lambda self: self._gate(0), doc="(B, H) input gate")
    f = property(lambda self: self._gate(1), doc="(B, H) forget gate")
    g = property(lambda self: self._gate(2), doc="(B, H) candidate cell")
    o = property(lambda self: self._gate(3), doc="(B, H) output gate")


def lstm_step_forward(xw, h_prev, c_prev, W_hh, b_hh):
    """One step of the LSTM (Hochreiter & Schmidhuber, 1997, with the forget gate of
    Gers et al., 2000), as ``torch.nn.LSTMCell``.

    Shapes: xw = x W_ih + b_ih (B, 4H), h_prev, c_prev (B, H), W_hh (H, 4H),
    b_hh (4H,) or None (the LSTMN has a single bias, folded into its xw); the
    four column blocks are the gates i, f, g, o.

        a = xw + h_prev W_hh + b_hh                   (B, 4H) = [a_i, a_f, a_g, a_o]
        i = sigmoid(a_i)    f = sigmoid(a_f)    g = tanh(a_g)    o = sigmoid(a_o)
        c = f * c_prev + i * g
        h = o * tanh(c)

    Returns ((h, c), LSTMStep); the cache keeps [i, f, g, o] as one (B, 4H)
    array, so the backward makes the four gate derivatives in one array too.
    """
    a = xw + h_prev @ W_hh
    if b_hh is not None:
        a = a + b_hh
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    g = np.tanh(a_g)
    o = sigmoid(a_o)
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    gates = np.concatenate([i, f, g, o], axis=1)
    return (h, c), LSTMStep(h_prev=h_prev, c_prev=c_prev, gates=gates, tanh_c=tanh_c)


def lstm_step_backward(dh, dc, cache: LSTMStep, W_hh):
    """The gradients of one LSTM step.  Returns (da_x, da_h, (dh_prev, dc_prev)).

    dh, dc (B, H): the gradients reaching h and c from the step's output and
    from step t+1 (its dh_prev and dc_prev: both must be carried back).
    h = o * tanh(c) reaches c through tanh, and c also goes on to step t+1:
        do      = dh * tanh(c)
        dc_t    = dc + dh * o * (1 - tanh(c)^2)       the total gradient of c
    c = f * c_prev + i * g, a product rule for each factor:
        di      = dc_t * g
        df      = dc_t * c_prev
        dg      = dc_t * i
        dc_prev = dc_t * f
    through each gate's nonlinearity (sigmoid' = s (1 - s), tanh' = 1 - tanh^2):
        da_i = di * i (1 - i)    da_f = df * f (1 - f)    da_g = dg * (1 - g^2)
        da_o = do * o (1 - o)
        da      = [da_i, da_f, da_g, da_o]            (B, 4H), in the gate order
        da_x    = da_h = da                           a = xw + (h_prev W_hh + b_hh)
        dh_prev = da W_hh^T
    Each bias block takes its gradient from its own gate: db[k*H:(k+1)*H] =
    sum_b da_k (the caller's sum over rows of da; taking the forget gate's
    block from another gate is a classic bug).
    """
    i, f, g, o, tanh_c = cache.i, cache.f, cache.g, cache.o, cache.tanh_c
    do = dh * tanh_c
    dc_t = dc + dh * o * (1.0 - tanh_c * tanh_c)
    di = dc_t * g
    df = dc_t * cache.c_prev
    dg = dc_t * i
    dc_prev = dc_t * f
    da_i = di * (i * (1.0 - i))
    da_f = df * (f * (1.0 - f))
    da_g = dg * (1.0 - g * g)
    da_o = do * (o * (1.0 - o))
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
    dh_prev = da @ W_hh.T
    return da, da, (dh_prev, dc_prev)


# -- GRU --------------------------------------------------------------------------------------


class GRUStep(NamedTuple):
    h_prev: np.ndarray  # (B, H) previous hidden state
    r: np.ndarray  # (B, H) reset gate
    z: np.ndarray  # (B, H) update gate
    n: np.ndarray  # (B, H) candidate state
    hn: np.ndarray  # (B, H) h_prev W_hn + b_hn, the hidden half of n's pre-activation


def gru_step_forward(xw, h_prev, W_hh, b_hh):
    """One step of the GRU as ``torch.nn.GRUCell``: PyTorch's variant, which
    applies the reset gate AFTER the matrix product, r * (h_prev W_hn + b_hn)
    (the form of cuDNN), not Cho et al. (2014)'s original, which applies it to
    the state before the product, (r * h_prev) W_hn.  The two are different
    functions; this one lets h_prev W_hh be one GEMM for all three gates.

    Shapes: xw = x W_ih + b_ih (B, 3H), h_prev (B, H), W_hh (H, 3H),
    b_hh (3H,); the three column blocks are the gates r, z, n.

        [x_r, x_z, x_n] = xw
        hw = h_prev W_hh + b_hh = [h_r, h_z, hn]
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = tanh(x_n + r * hn)
        h = (1 - z) * n + z * h_prev

    PyTorch keeps b_ih and b_hh apart because b_hn sits inside r * (...).
    Returns ((h,), GRUStep).
    """
    x_r, x_z, x_n = np.split(xw, 3, axis=1)
    hw = h_prev @ W_hh + b_hh
    h_r, h_z, hn = np.split(hw, 3, axis=1)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * hn)
    h = (1.0 - z) * n + z * h_prev
    return (h,), GRUStep(h_prev=h_prev, r=r, z=z, n=n, hn=hn)


def gru_step_backward(dh, cache: GRUStep, W_hh):
    """The gradients of one GRU step.  Returns (da_x, da_h, (dh_prev,)).

    dh (B, H): the total gradient reaching h (output and step t+1).
    h = (1 - z) * n + z * h_prev:
        dn      = dh * (1 - z)
        dz      = dh * (h_prev - n)
    n = tanh(x_n + r * hn), with tanh' = 1 - n^2:
        da_n    = dn * (1 - n^2)               the gradient of n's pre-activation
        dr      = da_n * hn
    r and z are sigmoids:
        da_r    = dr * r (1 - r)
        da_z    = dz * z (1 - z)
    the pre-activations are xw + hw blockwise, except that hn enters as r * hn:
        da_x    = [da_r, da_z, da_n]           the gradient of xw
        da_h    = [da_r, da_z, da_n * r]       the gradient of hw = h_prev W_hh + b_hh
    h_prev reaches h directly (z * h_prev) and through hw:
        dh_prev = dh * z + da_h W_hh^T
    The caller's bias gradients follow: db_ih = sum_b da_x and db_hh = sum_b da_h,
    so the two n-biases differ (b_in gets da_n, b_hn inside r * (...) gets da_n * r),
    while the r and z blocks of both biases get the same da_r and da_z.
    """
    h_prev, r, z, n, hn = cache.h_prev, cache.r, cache.z, cache.n, cache.hn
    dn = dh * (1.0 - z)
    dz = dh * (h_prev - n)
    da_n = dn * (1.0 - n * n)
    dr = da_n * hn
    da_r = dr * (r * (1.0 - r))
    da_z = dz * (z * (1.0 - z))
    da_x = np.concatenate([da_r, da_z, da_n], axis=1)
    da_h = np.concatenate([da_r, da_z, da_n * r], axis=1)
    dh_prev = dh * z + da_h @ W_hh.T
    return da_x, da_h, (dh_prev,)


def projection_grads(x, da, has_bias: bool = True):
    """The parameter gradients of a projection a = x W + b, summed over the rows
    of every step at once: what the step kernels leave to their caller.

    Shapes: x (N, D) the rows the projection read, da (N, G*H) the gradient of
    a, stacked in the same row order (N = B * T: all steps of a layer).  For
    W_hh, x is the states h_prev each step read and da the step kernels' da_h.
        dW = x^T da          dW_ik = sum_n x_ni da_nk (the matrix rule)
        db = sum_n da        b is broadcast over the rows: sum them
    (dx = da W^T, the third rule, is each step's own: the step kernel makes
    dh_prev = da_h W_hh^T.)  Returns (dW, db); db is None without a bias.
    """
    dW = x.T @ da
    db = da.sum(axis=0) if has_bias else None
    return dW, db


# -- LSTMN ------------------------------------------------------------------------------------


class LSTMNStep(NamedTuple):
    h_mem: np.ndarray  # (B, n, H) the hidden tape's slots this step read, h_i
    c_mem: np.ndarray  # (B, n, H) the memory tape's slots, c_i
    energy: AdditiveEnergyCache  # of a_i = v . tanh(k_i + q)
    s: np.ndarray  # (B, n) the intra-attention weights s_i
    h_tilde_prev: np.ndarray  # (B, H) h~_{t-1}, the previous read, in the query
    lstm: LSTMStep  # the LSTM step on (h~_t, c~_t): lstm.h_prev = h~_t, lstm.c_prev = c~_t

    h_tilde = property(lambda self: self.lstm.h_prev, doc="(B, H) h~_t, the hidden read")
    c_tilde = property(lambda self: self.lstm.c_prev, doc="(B, H) c~_t, the memory read")


def lstmn_step_forward(xq, xz, k_mem, h_mem, c_mem, h_tilde_prev, W_ht, v, W_hh, W_h):
    """One step of the Long Short-Term Memory-Network (Cheng, Dong & Lapata, 2016,
    "Long Short-Term Memory-Networks for Machine Reading", EMNLP; arXiv:1601.06733,
    the section "Long Short-Term Memory-Network": the intra-attention a^t_i,
    s^t_i, the adaptive summaries [h~_t; c~_t] and the LSTM on [h~_t, x_t]).

    Shapes: xq = x_t W_x (B, A) and xz = x_t W_ih + b (B, 4H), the input's
    projections (the caller makes them for all steps with one GEMM each);
    k_mem (B, n, A) the keys k_i = h_i W_h of the n slots read, h_mem, c_mem
    (B, n, H) the hidden and memory tapes' slots; h_tilde_prev (B, H) the
    previous read h~_{t-1}; W_ht (H, A), v (A,), W_hh (H, 4H), W_h (H, A).

        q    = xq + h~_{t-1} W_ht                       the query's two projections, summed
        a_i  = v . tanh(k_i + q)                        additive_energy_forward
                                   (i.e. a_i = v^T tanh(W_h h_i + W_x x_t + W_ht h~_{t-1}))
        s    = softmax_i(a)                             (B, n)
        h~_t = sum_i s_i h_i                            the adaptive summaries of the tapes
        c~_t = sum_i s_i c_i
        (h_t, c_t) = lstm_step_forward(xz, h~_t, c~_t, W_hh, None)
                                   z = x_t W_ih + b + h~_t W_hh: the gates read h~_t
                                   c_t = f * c~_t + i * g ;  h_t = o * tanh(c_t)
        k_t  = h_t W_h                                  the key of the new slot

    n = 0 (the first step: the tape is empty) reads nothing: s is empty and
    h~ = c~ = 0, the zero initial state of an LSTM.
    Returns ((h_t, c_t, k_t), LSTMNStep).
    """
    q = xq + h_tilde_prev @ W_ht
    a, energy = additive_energy_forward(q[:, None, :], k_mem, v)
    s = softmax(a[:, 0], axis=-1)
    h_tilde = (s[:, None, :] @ h_mem)[:, 0]
    c_tilde = (s[:, None, :] @ c_mem)[:, 0]
    (h, c), lstm = lstm_step_forward(xz, h_tilde, c_tilde, W_hh, None)
    k = h @ W_h
    return (h, c, k), LSTMNStep(h_mem=h_mem, c_mem=c_mem, energy=energy, s=s,
                                h_tilde_prev=h_tilde_prev, lstm=lstm)


def lstmn_step_backward(dh, dc, dk, dh_tilde_next, ds, cache: LSTMNStep, W_ht, W_hh, W_h):
    """The gradients of one LSTMN step.

    dh, dc (B, H): the gradients reaching h_t and c_t from the outputs and from
    every later step that read slot t; dk (B, A): the later reads' gradient of
    the key k_t; dh_tilde_next (B, H): the gradient of h~_t from the next
    step's query (its dh_tilde_prev); ds (B, n) or None: an upstream gradient
    of the weights s.
        dh_t     = dh + dk W_h^T                        k_t = h_t W_h
        dz, _, (dh~_z, dc~) = lstm_step_backward(dh_t, dc, lstm, W_hh)
        dh~      = dh~_z + dh_tilde_next                h~_t feeds the gates and the next query
    h~_t = sum_i s_i h_i, c~_t = sum_i s_i c_i (per batch row the products
    (1 x n)(n x H) h~ = s H_mem: the matrix rules ds = dh~ H_mem^T, dH_mem = s^T dh~):
        ds_i     = dh~ . h_i + dc~ . c_i (+ ds_i)
        dh_mem_i = s_i dh~                              every slot read gets gradient
        dc_mem_i = s_i dc~
        da       = softmax_backward(ds, s)              da_i = s_i (ds_i - sum_j s_j ds_j)
        dq, dk_mem, dv = additive_energy_backward(da)   dq = sum_i (da_i v (1 - t_i^2)):
                                                        q was broadcast over the slots
        dh_tilde_prev = dq W_ht^T                       q = xq + h~_{t-1} W_ht
    Returns (dz, dq, dv, dh_mem, dc_mem, dk_mem, dh_tilde_prev): dz (B, 4H) the
    gradient of z (its xz part and its h~_t W_hh part alike); dq (B, A) that of
    q (both xq = x_t W_x and h~_{t-1} W_ht); dv (A,); the slots' gradients
    dh_mem, dc_mem (B, n, H) and dk_mem (B, n, A), for the caller to add to
    its tapes.  The caller turns dz and dq into dW_ih, db, dW_hh, dW_x, dW_ht
    and dx, and dk into dW_h, one GEMM each over all steps.
    """
    s, h_mem, c_mem = cache.s, cache.h_mem, cache.c_mem
    dh_t = dh + dk @ W_h.T
    dz, _, (dh_tilde_z, dc_tilde) = lstm_step_backward(dh_t, dc, cache.lstm, W_hh)
    dh_tilde = dh_tilde_z + dh_tilde_next
    ds_read = (h_mem @ dh_tilde[:, :, None])[:, :, 0] + (c_mem @ dc_tilde[:, :, None])[:, :, 0]
    ds_total = ds_read if ds is None else ds_read + ds
    dh_mem = s[:, :, None] * dh_tilde[:, None, :]
    dc_mem = s[:, :, None] * dc_tilde[:, None, :]
    da = softmax_backward(ds_total, s, axis=-1)
    dq, dk_mem, dv = additive_energy_backward(da[:, None, :], cache.energy)
    dq = dq[:, 0]
    dh_tilde_prev = dq @ W_ht.T
    return dz, dq, dv, dh_mem, dc_mem, dk_mem, dh_tilde_prev
