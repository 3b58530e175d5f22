"""The Long Short-Term Memory-Network: an LSTM that reads its own past through attention."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _init
from .._validate import as_rng, check_float, check_float_dtype, check_positive_int
from ..kernels import select
from ..module import Module, Parameter
from .cells import input_projection

__all__ = ["LSTMN"]


class LSTMNCache(NamedTuple):
    x: np.ndarray  # (B, T, D) the input
    xq: tuple  # LinearCache of x W_x (the input's share of every query)
    xz: tuple  # LinearCache of x W_ih + b (the input's share of every gate pre-activation)
    h: np.ndarray  # (B, T, H) hidden tape h_0 .. h_{T-1}
    c: np.ndarray  # (B, T, H) memory (cell) tape c_0 .. c_{T-1}
    h_tilde: np.ndarray  # (B, T, H) adaptive summaries of the hidden tape, h~_t
    c_tilde: np.ndarray  # (B, T, H) adaptive summaries of the memory tape, c~_t
    s: np.ndarray  # (B, T, T) intra-attention weights, s[:, t, i] for i in the window
    steps: list  # per step t: its LSTMNStep (the read, the energy, the LSTM gates)

    def _gates(self, k: int) -> np.ndarray:
        return np.stack([st.lstm._gate(k) for st in self.steps], axis=1)

    i = property(lambda self: self._gates(0), doc="(B, T, H) input gates")
    f = property(lambda self: self._gates(1), doc="(B, T, H) forget gates")
    g = property(lambda self: self._gates(2), doc="(B, T, H) candidate cells c^_t")
    o = property(lambda self: self._gates(3), doc="(B, T, H) output gates")
    tanh_c = property(lambda self: np.stack([st.lstm.tanh_c for st in self.steps], axis=1),
                      doc="(B, T, H) tanh(c_t)")


class LSTMN(Module):
    """Long Short-Term Memory-Network (Cheng, Dong & Lapata, 2016, "Long
    Short-Term Memory-Networks for Machine Reading", EMNLP, arXiv:1601.06733):
    an LSTM whose state is a tape of every past hidden and cell state, read at
    each step by intra-attention.  The paper's gate matrices have no bias; b
    here is the usual LSTM bias (set it to 0 for the paper's form).

    ``LSTMN(input_size, hidden_size, attention_size=None, window=None, *,
    dtype=np.float32, rng=None)``; attention_size A defaults to H.

    Shapes: x (B, T, D); h, c, h~, c~ (B, T, H); s (B, T, T).
    Parameters: W_h (H, A), W_x (D, A), W_ht (H, A), v (A,) for the attention;
    W_ih (D, 4H), W_hh (H, 4H), b (4H,) for the gates, whose column blocks are
    i, f, c^, o -- the order of ``LSTMCell`` (i, f, g, o), so an LSTM's weights
    load unchanged: W_ih = W_ih, W_hh = W_hh, b = b_ih + b_hh.

    Forward, t = 0 .. T-1, reading the slots i in R_t = [max(0, t - window), t)
    (all earlier steps when window is None):
        q_t  = x_t W_x + h~_{t-1} W_ht                   (B, A), the query
        k_i  = h_i W_h                                   (B, A), the key of slot i
        t_ti = tanh(k_i + q_t)
        a_ti = t_ti v                      i.e. a_i = v^T tanh(W_h h_i + W_x x_t + W_ht h~_{t-1})
        s_t  = softmax_i(a_t)
        h~_t = sum_i s_ti h_i
        c~_t = sum_i s_ti c_i
        z_t  = x_t W_ih + b + h~_t W_hh = [z_i, z_f, z_g, z_o]   i.e. W [h~_t, x_t]
        i = sigmoid(z_i)   f = sigmoid(z_f)   g = c^_t = tanh(z_g)   o = sigmoid(z_o)
        c_t  = f * c~_t + i * g
        h_t  = o * tanh(c_t)
    The t = 0 convention: the tape is empty, so there is nothing to read and
    h~_0 = c~_0 = 0 (the zero initial state of an LSTM) and s_0 = 0; the first
    query, at t = 1, uses h~_0 = 0.  x W_x and x W_ih + b are computed for all
    steps with one GEMM each, before the time loop.

    Backward (t = T-1 .. 0; dh, dc start as the upstream d_h, d_c and collect
    every later step's reads; dk collects every later step's scores):
        dh_t     = dh_t + dk_t W_h^T                     k_t = h_t W_h was read later
        do       = dh_t * tanh(c_t)
        dc_t     = dc_t + dh_t * o * (1 - tanh(c_t)^2)
        di, df, dg, dc~_t = dc_t * g, dc_t * c~_t, dc_t * i, dc_t * f
        dz_t     = [di i (1 - i), df f (1 - f), dg (1 - g^2), do o (1 - o)]
        dh~_t    = dz_t W_hh^T + dq_{t+1} W_ht^T         h~_t feeds the gates and the next query
      the read (t >= 1):
        ds_ti    = dh~_t . h_i + dc~_t . c_i (+ d_s[t, i], the upstream gradient of s)
        dh_i    += s_ti dh~_t                            every past state gets gradient
        dc_i    += s_ti dc~_t                            from every later read
        da_t     = s_t * (ds_t - sum_i s_ti ds_ti)       softmax backward
        dv      += sum_{b,i} da_ti t_ti
        dp_ti    = da_ti v * (1 - t_ti^2)                gradient of k_i + q_t
        dk_i    += dp_ti
        dq_t     = sum_i dp_ti
      after the loop, one GEMM each over all B*T rows:
        dW_h  += h^T dk          dW_ht += h~_prev^T dq     (h~_prev[:, t] = h~_{t-1})
        dW_x  += x^T dq          dW_ih += x^T dz     db += sum dz     dW_hh += h~^T dz
        dx     = dq W_x^T + dz W_ih^T

    Call conventions:
        (h, c, s), cache = lstmn.forward(x)
            h, c: the hidden and memory tapes (B, T, H); s: the intra-attention
            weights (B, T, T), row t over the slots it read (zero elsewhere and
            in row 0) -- for plotting.
        dx = lstmn.backward((d_h, d_c, d_s), cache)      any may be None; a bare
            array is d_h alone.
    The model is causal: step t never reads steps >= t, so trailing padding
    never changes the real steps (mask the padded outputs in the loss).
    ``window=1`` reads only the last state (s = 1), which is exactly an LSTM.

    The code: one kernel call per step each way, ``lstmn_step_forward`` /
    ``lstmn_step_backward`` (``numtransformer.functional.recurrent``), which
    call the shared kernels for each part: ``additive_energy_*`` for a_ti,
    ``softmax`` / ``softmax_backward`` for s_t, the LSTM step on (h~_t, c~_t).
    """

    def __init__(self, input_size: int, hidden_size: int, attention_size: int | None = None,
                 window: int | None = None, *, dtype=np.float32, rng=None):
        self.input_size = check_positive_int(self, "input_size", input_size)
        self.hidden_size = check_positive_int(self, "hidden_size", hidden_size)
        self.attention_size = (hidden_size if attention_size is None
                               else check_positive_int(self, "attention_size", attention_size))
        self.window = None if window is None else check_positive_int(self, "window", window)
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        D, H, A = input_size, hidden_size, self.attention_size

        def uniform(shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return Parameter(_init.uniform(rng, -bound, bound, shape, dtype))

        # The gates as PyTorch's LSTM (U(-1/sqrt(H), 1/sqrt(H))); the attention as Linear layers.
        self.W_ih = uniform((D, 4 * H), H)
        self.W_hh = uniform((H, 4 * H), H)
        self.b = uniform((4 * H,), H)
        self.W_h = uniform((H, A), H)
        self.W_x = uniform((D, A), D)
        self.W_ht = uniform((H, A), H)
        self.v = uniform((A,), A)

    def _first_slot(self, t: int) -> int:
        return 0 if self.window is None else max(0, t - self.window)

    def forward(self, x):
        dtype = self.W_ih.dtype
        x = check_float(self, "x", x, dtype=dtype, ndim=3, last_dim=self.input_size,
                        last_dim_name="input_size")
        B, T, D = x.shape
        if T == 0:
            raise ValueError(f"LSTMN: x has no time steps (shape {x.shape})")
        H, A = self.hidden_size, self.attention_size
        K = select(dtype)
        xq, c_xq = K.linear_forward(x, self.W_x.data)  # x_t W_x for all t, the input's share of q_t
        xz, c_xz = input_projection(x, self.W_ih.data, self.b.data)  # x_t W_ih + b for all t
        h, c, h_tilde, c_tilde = (np.zeros((B, T, H), dtype) for _ in range(4))
        k = np.empty((B, T, A), dtype)
        s = np.zeros((B, T, T), dtype)
        h_tilde_prev = np.zeros((B, H), dtype)  # h~_{-1}: the first query reads nothing
        steps = []
        for t in range(T):
            lo = self._first_slot(t)  # t = 0: the tape is empty, h~_0 = c~_0 = 0
            (h[:, t], c[:, t], k[:, t]), step = K.lstmn_step_forward(
                xq[:, t], xz[:, t], k[:, lo:t], h[:, lo:t], c[:, lo:t], h_tilde_prev,
                self.W_ht.data, self.v.data, self.W_hh.data, self.W_h.data)
            s[:, t, lo:t] = step.s
            h_tilde[:, t], c_tilde[:, t] = step.h_tilde, step.c_tilde
            h_tilde_prev = step.h_tilde
            steps.append(step)
        cache = LSTMNCache(x=x, xq=c_xq, xz=c_xz, h=h, c=c, h_tilde=h_tilde, c_tilde=c_tilde,
                           s=s, steps=steps)
        return (h, c, s), cache

    def backward(self, dout, cache: LSTMNCache):
        douts = (dout,) if isinstance(dout, np.ndarray) else tuple(dout)
        if len(douts) > 3:
            raise ValueError(f"LSTMN.backward: got {len(douts)} upstream gradients, "
                             f"expected at most 3 (d_h, d_c, d_s)")
        d_h, d_c, d_s = douts + (None,) * (3 - len(douts))
        x, h, c, s = cache.x, cache.h, cache.c, cache.s
        B, T, D = x.shape
        H, A = self.hidden_size, self.attention_size
        for name, d, shape in (("d_h", d_h, h.shape), ("d_c", d_c, c.shape), ("d_s", d_s, s.shape)):
            if d is not None and d.shape != shape:
                raise ValueError(f"LSTMN.backward: {name} has shape {d.shape}, expected {shape}")
        dtype = x.dtype
        K = select(dtype)
        # copies: later reads add into dh and dc, and dout must not change
        dh = np.zeros((B, T, H), dtype) if d_h is None else d_h.astype(dtype, copy=True)
        dc = np.zeros((B, T, H), dtype) if d_c is None else d_c.astype(dtype, copy=True)
        dk = np.zeros((B, T, A), dtype)
        dq = np.empty((B, T, A), dtype)
        dz = np.empty((B, T, 4 * H), dtype)
        dv = np.zeros(A, dtype)
        dh_tilde_next = np.zeros((B, H), dtype)  # nothing reads h~_{T-1}
        for t in reversed(range(T)):
            lo = self._first_slot(t)
            ds = None if d_s is None else d_s[:, t, lo:t]
            dz[:, t], dq[:, t], dv_t, dh_mem, dc_mem, dk_mem, dh_tilde_next = \
                K.lstmn_step_backward(dh[:, t], dc[:, t], dk[:, t], dh_tilde_next, ds,
                                      cache.steps[t], self.W_ht.data, self.W_hh.data,
                                      self.W_h.data)
            dv += dv_t
            dh[:, lo:t] += dh_mem  # every slot read gets gradient from every later read
            dc[:, lo:t] += dc_mem
            dk[:, lo:t] += dk_mem

        N = B * T
        h_tilde_prev = np.zeros_like(cache.h_tilde)  # h~_prev[:, t] = h~_{t-1}, h~_{-1} = 0
        h_tilde_prev[:, 1:] = cache.h_tilde[:, :-1]
        dx_q, dW_x, _ = K.linear_backward(dq, cache.xq, self.W_x.data, has_bias=False)
        dx_z, dW_ih, db = K.linear_backward(dz, cache.xz, self.W_ih.data)
        dW_hh, _ = K.projection_grads(cache.h_tilde.reshape(N, H), dz.reshape(N, 4 * H),
                                      has_bias=False)
        dW_ht, _ = K.projection_grads(h_tilde_prev.reshape(N, H), dq.reshape(N, A),
                                      has_bias=False)
        dW_h, _ = K.projection_grads(h.reshape(N, H), dk.reshape(N, A), has_bias=False)
        self.v.grad += dv
        self.W_h.grad += dW_h
        self.W_ht.grad += dW_ht
        self.W_x.grad += dW_x
        self.W_ih.grad += dW_ih
        self.b.grad += db
        self.W_hh.grad += dW_hh
        return dx_q + dx_z

    def extra_repr(self) -> str:
        window = "" if self.window is None else f", window={self.window}"
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"attention_size={self.attention_size}{window}")
