"""Recurrent cells: one time step of the tanh RNN, the LSTM and the GRU.

The math lives in the step kernels of ``numtransformer.functional.recurrent``
(``rnn_step_*``, ``lstm_step_*``, ``gru_step_*``: their docstrings state the
equations and derive the backward line by line); the fast ones in
``numtransformer.fast.recurrent``.  A cell holds the parameters and splits its
time step in two, so the unrolled ``RNN`` can hoist the input projection out
of its time loop:

    xw = x W_ih + b_ih                   the input projection (one GEMM for all gates)
    (h', [c']), step = cell.step(xw, h, [c])                 everything else
    da_x, da_h, (dh, [dc]) = cell.step_backward(dh', [dc'], step)

``step_backward`` is pure: it returns the gradients of the two pre-activation
projections (``da_x`` of xw = x W_ih + b_ih, ``da_h`` of h W_hh + b_hh) and of
the previous state, and leaves the parameter gradients to the caller, who turns
``da_x``/``da_h`` into dW_ih, db_ih, dW_hh, db_hh with one GEMM (the cell's own
``backward`` for one step; ``RNN.backward`` once for all T steps).  For the
tanh RNN and the LSTM the two pre-activations are summed, so da_x = da_h; the
GRU's candidate gate multiplies its hidden half by r, so they differ there.
``step_backward`` takes an optional ``W_hh_T``: a contiguous copy of W_hh^T
(``transposed_copy``) that an unrolled caller makes once for all T steps for
the products da W_hh^T, and ``out=``, a (B, G*H) array (a view is fine) that
receives da_x.  The fast kernels use both (see ``numtransformer.fast.recurrent``);
with the reference kernels W_hh_T is not needed and da_x is copied into ``out``.

Weights are stored so the math reads as written, x W: ``W_ih`` (D, G*H),
``W_hh`` (H, G*H), biases (G*H,), with the G gates side by side in PyTorch's
order.  The exact mapping to ``torch.nn.RNNCell/LSTMCell/GRUCell`` (and to each
layer/direction of ``nn.RNN/LSTM/GRU``)::

    W_ih = weight_ih.T     W_hh = weight_hh.T     b_ih = bias_ih     b_hh = bias_hh

(a transpose, same gate order), so weights move between the two unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._init import uniform
from .. import fast
from .._validate import as_rng, check_float, check_float_dtype, check_positive_int
from ..fast.recurrent import transposed_copy
from ..functional.linear import linear_forward
from ..functional.recurrent import GRUStep, LSTMStep, RNNStep
from ..kernels import select
from ..module import Module, Parameter

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "transposed_copy", "RNNStep", "LSTMStep", "GRUStep"]


def check_state(layer: Module, arg: str, s, shape: tuple, dtype) -> np.ndarray:
    """A float state array of exactly ``shape`` (used by the cells and by RNN)."""
    s = check_float(layer, arg, s, dtype=dtype, ndim=len(shape))
    if s.shape != tuple(shape):
        raise ValueError(f"{type(layer).__name__}: {arg} has shape {s.shape}, "
                         f"expected {tuple(shape)}")
    return s


def loop_options(K, W_hh_T=None, out=None, W_hh_blocks=None) -> dict:
    """The keyword options an unrolled loop passes to the step kernels of ``K``:
    the fast kernels take ``W_hh_T`` and ``out`` (backward) and ``W_hh_blocks``
    (forward) (``numtransformer.fast.recurrent``), the reference kernels none."""
    if K is not fast:
        return {}
    return {name: a for name, a in (("W_hh_T", W_hh_T), ("out", out),
                                    ("W_hh_blocks", W_hh_blocks)) if a is not None}


def input_projection(x, W_ih, b_ih):
    """xw = x W_ih + b_ih for every time step at once (one GEMM), and its LinearCache.

    The reference ``linear_forward`` in both kernel modes: the fast one adds
    the bias in place on the GEMM's output, in row blocks, which measured
    2-4% slower over a whole float32 LSTM layer forward+backward (B=32, T=32,
    E=128, H=256; 1 and 2 threads) than this fresh x W_ih + b_ih.  The same
    numbers either way; the backward is ``K.linear_backward`` on this cache.
    """
    return linear_forward(x, W_ih, b_ih)


class CellCache(NamedTuple):
    x: np.ndarray  # (B, D) the input
    xw: tuple  # the LinearCache of xw = x W_ih + b_ih
    step: tuple  # the step cache (RNNStep, LSTMStep or GRUStep)
    given: tuple  # for each state argument (h[, c]): was it passed (so it gets a gradient)?


class _Cell(Module):
    """Parameters, the public one-step forward/backward, and checks shared by the cells."""

    n_gates: int = 1
    state_names: tuple = ("h",)
    kernel: str = "rnn"  # the step kernels: {kernel}_step_forward / {kernel}_step_backward

    def __init__(self, input_size: int, hidden_size: int, *, dtype=np.float32, rng=None):
        self.input_size = check_positive_int(self, "input_size", input_size)
        self.hidden_size = check_positive_int(self, "hidden_size", hidden_size)
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        GH = self.n_gates * hidden_size
        bound = 1.0 / math.sqrt(hidden_size)  # PyTorch: every weight and bias ~ U(-k, k)
        self.W_ih = Parameter(uniform(rng, -bound, bound, (input_size, GH), dtype))
        self.W_hh = Parameter(uniform(rng, -bound, bound, (hidden_size, GH), dtype))
        self.b_ih = Parameter(uniform(rng, -bound, bound, GH, dtype))
        self.b_hh = Parameter(uniform(rng, -bound, bound, GH, dtype))

    def _forward(self, x, states):
        dtype = self.W_ih.dtype
        x = check_float(self, "x", x, dtype=dtype, ndim=2, last_dim=self.input_size,
                        last_dim_name="input_size")
        shape = (x.shape[0], self.hidden_size)
        given = tuple(s is not None for s in states)
        states = tuple(np.zeros(shape, dtype) if s is None
                       else check_state(self, name, s, shape, dtype)
                       for name, s in zip(self.state_names, states))
        xw, c_xw = select(dtype).linear_forward(x, self.W_ih.data, self.b_ih.data)
        new, step = self.step(xw, *states)
        out = new[0] if len(new) == 1 else new
        return out, CellCache(x=x, xw=c_xw, step=step, given=given)

    def backward(self, dout, cache: CellCache):
        """dout: dh (an array), or for the LSTM a tuple (dh, dc) where either may be None.

        Returns dx, followed by the gradient of each state that forward was given.
        """
        douts = tuple(dout) if isinstance(dout, (tuple, list)) else (dout,)
        if len(douts) > len(self.state_names):
            raise ValueError(f"{type(self).__name__}.backward: got {len(douts)} upstream "
                             f"gradients, expected at most {len(self.state_names)} "
                             f"({', '.join('d' + n for n in self.state_names)})")
        douts = douts + (None,) * (len(self.state_names) - len(douts))
        x, step = cache.x, cache.step
        zeros = np.zeros((x.shape[0], self.hidden_size), x.dtype)
        da_x, da_h, dstates = self.step_backward(*(zeros if d is None else d for d in douts), step)
        K = select(x.dtype)
        dx, dW_ih, db_ih = K.linear_backward(da_x, cache.xw, self.W_ih.data)
        dW_hh, db_hh = K.projection_grads(step.h_prev, da_h)
        self.W_ih.grad += dW_ih
        self.b_ih.grad += db_ih
        self.W_hh.grad += dW_hh
        self.b_hh.grad += db_hh
        grads = (dx,) + tuple(d for d, g in zip(dstates, cache.given) if g)
        return grads[0] if len(grads) == 1 else grads

    def step(self, xw, *states):
        """xw = x W_ih + b_ih (B, G*H), the previous states (h[, c]) -> (new states, step cache)."""
        K = select(xw.dtype)
        forward = getattr(K, f"{self.kernel}_step_forward")
        return forward(xw, *states, self.W_hh.data, self.b_hh.data)

    def step_backward(self, *args, W_hh_T=None, out=None):
        """(dh[, dc], step cache) -> (da_x, da_h, d(previous states)); parameter
        gradients are left to the caller.  ``W_hh_T``: a contiguous copy of W_hh^T
        made once by an unrolled caller (used by the fast kernels).  ``out``: a
        (B, G*H) array that receives da_x (the returned da_x is then ``out``)."""
        *dstates, cache = args
        K = select(dstates[0].dtype)
        backward = getattr(K, f"{self.kernel}_step_backward")
        da_x, da_h, dprev = backward(*dstates, cache, self.W_hh.data,
                                     **loop_options(K, W_hh_T, out))
        if out is not None and da_x is not out:  # the reference kernels make a fresh da_x
            out[...] = da_x
            da_x, da_h = out, (out if da_h is da_x else da_h)
        return da_x, da_h, dprev

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


class RNNCell(_Cell):
    """One step of the Elman RNN with tanh, as ``torch.nn.RNNCell``.

    Shapes: x (B, D), h_prev (B, H); W_ih (D, H), W_hh (H, H), b_ih, b_hh (H,).

    Forward (``linear_forward``, then ``rnn_step_forward``):
        xw = x W_ih + b_ih
        a  = xw + h_prev W_hh + b_hh
        h  = tanh(a)

    Backward (dh: the gradient reaching h, from the output and from step t+1;
    ``rnn_step_backward`` derives each line):
        da      = dh (1 - h^2)
        dh_prev = da W_hh^T
        dW_hh  += h_prev^T da     db_hh += sum_b da      (projection_grads)
        dx      = da W_ih^T
        dW_ih  += x^T da          db_ih += sum_b da      (linear_backward)

    ``forward(x, h=None)`` -> h'.  h defaults to zeros; when it is passed,
    ``backward(dh', cache)`` returns (dx, dh), otherwise dx.
    Weights: W_ih = torch weight_ih.T, W_hh = weight_hh.T, b_ih = bias_ih,
    b_hh = bias_hh.
    """

    n_gates = 1
    state_names = ("h",)
    kernel = "rnn"

    def forward(self, x, h=None):
        return self._forward(x, (h,))


class LSTMCell(_Cell):
    """One step of the LSTM (Hochreiter & Schmidhuber, 1997, with the forget gate
    of Gers et al., 2000), as ``torch.nn.LSTMCell``.

    Shapes: x (B, D), h_prev, c_prev (B, H); W_ih (D, 4H), W_hh (H, 4H),
    b_ih, b_hh (4H,); the four column blocks are the gates i, f, g, o.

    Forward (``linear_forward``, then ``lstm_step_forward``):
        a = x W_ih + b_ih + h_prev W_hh + b_hh        (B, 4H) = [a_i, a_f, a_g, a_o]
        i = sigmoid(a_i)    f = sigmoid(a_f)    g = tanh(a_g)    o = sigmoid(a_o)
        c = f * c_prev + i * g
        h = o * tanh(c)

    Backward (dh, dc: the gradients reaching h and c from the output and from
    step t+1 -- both must be carried between steps; ``lstm_step_backward``
    derives each line):
        do      = dh * tanh(c)
        dc_t    = dc + dh * o * (1 - tanh(c)^2)       the total gradient of c
        di      = dc_t * g
        df      = dc_t * c_prev
        dg      = dc_t * i
        dc_prev = dc_t * f
        da      = [di, df, dg, do] * [i (1 - i), f (1 - f), 1 - g^2, o (1 - o)]
        dh_prev = da W_hh^T
        dW_hh  += h_prev^T da     db_hh += sum_b da   (each bias block from its own gate)
        dx      = da W_ih^T
        dW_ih  += x^T da          db_ih += sum_b da

    ``forward(x, h=None, c=None)`` -> (h', c').  Missing states are zeros;
    ``backward((dh', dc'), cache)`` (either may be None) returns dx followed by
    dh and/or dc for the states that were passed.
    Weights: W_ih = torch weight_ih.T, W_hh = weight_hh.T, b_ih = bias_ih,
    b_hh = bias_hh (rows/columns in the gate order i, f, g, o in both).
    """

    n_gates = 4
    state_names = ("h", "c")
    kernel = "lstm"

    def forward(self, x, h=None, c=None):
        return self._forward(x, (h, c))


class GRUCell(_Cell):
    """One step of the GRU as ``torch.nn.GRUCell``: PyTorch's variant of the GRU
    of Cho et al. (2014), with the reset gate applied AFTER the matrix product,
    r * (h_prev W_hn + b_hn), where Cho et al. apply it to the state before the
    product, (r * h_prev) W_hn.  The two are different functions (weights do
    not carry over between them); this is the one of PyTorch and cuDNN.

    Shapes: x (B, D), h_prev (B, H); W_ih (D, 3H), W_hh (H, 3H),
    b_ih, b_hh (3H,); the three column blocks are the gates r, z, n.
    PyTorch keeps the input and hidden biases apart because b_hn sits inside
    r * (...); both are kept here so weights move unchanged.

    Forward (xw = x W_ih + b_ih = [x_r, x_z, x_n], hw = h_prev W_hh + b_hh = [h_r, h_z, hn];
    ``gru_step_forward``):
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = tanh(x_n + r * hn)
        h = (1 - z) * n + z * h_prev

    Backward (dh: the gradient reaching h; ``gru_step_backward`` derives each line):
        dn      = dh * (1 - z)
        dz      = dh * (h_prev - n)
        da_n    = dn * (1 - n^2)                 gradient of n's pre-activation
        dr      = da_n * hn
        da_r    = dr * r * (1 - r)
        da_z    = dz * z * (1 - z)
        da_x    = [da_r, da_z, da_n]             gradient of xw
        da_h    = [da_r, da_z, da_n * r]         gradient of hw
        dh_prev = dh * z + da_h W_hh^T
        dW_ih  += x^T da_x          db_ih += sum_b da_x
        dW_hh  += h_prev^T da_h     db_hh += sum_b da_h
        dx      = da_x W_ih^T

    ``forward(x, h=None)`` -> h'.  h defaults to zeros; when it is passed,
    ``backward(dh', cache)`` returns (dx, dh), otherwise dx.
    Weights: W_ih = torch weight_ih.T, W_hh = weight_hh.T, b_ih = bias_ih,
    b_hh = bias_hh (gate order r, z, n in both).
    """

    n_gates = 3
    state_names = ("h",)
    kernel = "gru"

    def forward(self, x, h=None):
        return self._forward(x, (h,))
