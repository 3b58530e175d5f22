"""Recurrent cells: one time step of the tanh RNN, the LSTM and the GRU.

Each cell splits its time step in two, so the unrolled ``RNN`` can hoist the
input projection out of its time loop:

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
Both take an optional ``W_hh_T``: a contiguous copy of W_hh^T (``transposed_copy``)
that an unrolled caller makes once for all T steps and uses in both directions
(the step GEMMs are faster with it: see ``_Cell._recurrent``).
``step_backward`` also takes ``out=``, a (B, G*H) array (a view is fine) that
receives da_x, so an unrolled caller can have it written straight into its
(B, T, G*H) buffer.

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

from .._parallel import column_sum
from .._validate import as_rng, check_float, check_float_dtype, check_positive_int
from ..layers.activations import sigmoid
from ..module import Module, Parameter

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "transposed_copy"]


def transposed_copy(w: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of the 2-D w.T, the same values as ``np.ascontiguousarray(w.T)``.

    The plain copy reads w down its columns; when a row of w is a multiple of
    4 KiB long (H = 256 in float32: 1024 columns), every element of a column
    falls in the same cache set and the copy runs ~20x slower than a straight
    one (900 us for 256 x 1024 float32, measured).  Copying w first into a
    buffer whose rows are 16 elements longer breaks that alignment: 200 us.
    """
    rows, cols = w.shape
    padded = np.empty((rows, cols + 16), w.dtype)
    padded[:, :cols] = w
    return np.ascontiguousarray(padded[:, :cols].T)


def check_state(layer: Module, arg: str, s, shape: tuple, dtype) -> np.ndarray:
    """A float state array of exactly ``shape`` (used by the cells and by RNN)."""
    s = check_float(layer, arg, s, dtype=dtype, ndim=len(shape))
    if s.shape != tuple(shape):
        raise ValueError(f"{type(layer).__name__}: {arg} has shape {s.shape}, "
                         f"expected {tuple(shape)}")
    return s


class CellCache(NamedTuple):
    x: np.ndarray  # (B, D) the input
    step: tuple  # the step cache (RNNStep, LSTMStep or GRUStep)
    given: tuple  # for each state argument (h[, c]): was it passed (so it gets a gradient)?


class _Cell(Module):
    """Parameters, the public one-step forward/backward, and checks shared by the cells."""

    n_gates: int = 1
    state_names: tuple = ("h",)

    def __init__(self, input_size: int, hidden_size: int, *, dtype=np.float32, rng=None):
        self.input_size = check_positive_int(self, "input_size", input_size)
        self.hidden_size = check_positive_int(self, "hidden_size", hidden_size)
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        GH = self.n_gates * hidden_size
        bound = 1.0 / math.sqrt(hidden_size)  # PyTorch: every weight and bias ~ U(-k, k)
        self.W_ih = Parameter(rng.uniform(-bound, bound, (input_size, GH)).astype(dtype))
        self.W_hh = Parameter(rng.uniform(-bound, bound, (hidden_size, GH)).astype(dtype))
        self.b_ih = Parameter(rng.uniform(-bound, bound, GH).astype(dtype))
        self.b_hh = Parameter(rng.uniform(-bound, bound, GH).astype(dtype))

    def _forward(self, x, states):
        dtype = self.W_ih.dtype
        x = check_float(self, "x", x, dtype=dtype, ndim=2, last_dim=self.input_size,
                        last_dim_name="input_size")
        shape = (x.shape[0], self.hidden_size)
        given = tuple(s is not None for s in states)
        states = tuple(np.zeros(shape, dtype) if s is None
                       else check_state(self, name, s, shape, dtype)
                       for name, s in zip(self.state_names, states))
        xw = x @ self.W_ih.data + self.b_ih.data
        new, step = self.step(xw, *states)
        out = new[0] if len(new) == 1 else new
        return out, CellCache(x=x, step=step, given=given)

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
        self.W_ih.grad += x.T @ da_x
        self.b_ih.grad += column_sum(da_x)
        self.W_hh.grad += step.h_prev.T @ da_h
        self.b_hh.grad += column_sum(da_h)
        dx = da_x @ self.W_ih.data.T
        grads = (dx,) + tuple(d for d, g in zip(dstates, cache.given) if g)
        return grads[0] if len(grads) == 1 else grads

    def _recurrent(self, h_prev, W_hh_T):
        """h_prev W_hh, the step's (B, H) x (H, G*H) GEMM.

        With the caller's contiguous W_hh^T it is computed as h_prev (W_hh^T)^T,
        the same product, which OpenBLAS splits better over two threads:
        32 x 256 x 1024 float32 took 135 us this way against 193 us, and the
        same on one thread (measured)."""
        return h_prev @ (self.W_hh.data if W_hh_T is None else W_hh_T.T)

    def _transposed_W_hh(self, W_hh_T):
        """W_hh^T for dh_prev = da W_hh^T: the caller's contiguous copy, made once for
        all T steps (a transposed operand makes this small GEMM ~30% slower), or a view."""
        return self.W_hh.data.T if W_hh_T is None else W_hh_T

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


# -- tanh RNN ---------------------------------------------------------------------------------


class RNNStep(NamedTuple):
    h_prev: np.ndarray  # (B, H) the previous hidden state
    h: np.ndarray  # (B, H) the new hidden state


class RNNCell(_Cell):
    """One step of the Elman RNN with tanh, as ``torch.nn.RNNCell``.

    Shapes: x (B, D), h_prev (B, H); W_ih (D, H), W_hh (H, H), b_ih, b_hh (H,).

    Forward:
        a = x W_ih + b_ih + h_prev W_hh + b_hh
        h = tanh(a)

    Backward (dh: the gradient reaching h, from the output and from step t+1):
        da      = dh (1 - h^2)
        dh_prev = da W_hh^T
        dW_ih  += x^T da          db_ih += sum_b da
        dW_hh  += h_prev^T da     db_hh += sum_b da
        dx      = da W_ih^T

    ``forward(x, h=None)`` -> h'.  h defaults to zeros; when it is passed,
    ``backward(dh', cache)`` returns (dx, dh), otherwise dx.
    Weights: W_ih = torch weight_ih.T, W_hh = weight_hh.T, b_ih = bias_ih,
    b_hh = bias_hh.
    """

    n_gates = 1
    state_names = ("h",)

    def forward(self, x, h=None):
        return self._forward(x, (h,))

    def step(self, xw, h_prev, *, W_hh_T=None):
        """xw = x W_ih + b_ih (B, H) -> ((h,), RNNStep)."""
        a = self._recurrent(h_prev, W_hh_T)
        a += xw
        a += self.b_hh.data
        h = np.tanh(a, out=a)
        return (h,), RNNStep(h_prev=h_prev, h=h)

    def step_backward(self, dh, cache: RNNStep, *, W_hh_T=None, out=None):
        """-> (da_x, da_h, (dh_prev,)); parameter gradients are left to the caller."""
        h = cache.h
        da = np.multiply(h, h, out=out)
        np.subtract(1, da, out=da)
        da *= dh  # da = dh (1 - h^2)
        dh_prev = da @ self._transposed_W_hh(W_hh_T)
        return da, da, (dh_prev,)


# -- LSTM -------------------------------------------------------------------------------------


class LSTMStep(NamedTuple):
    h_prev: np.ndarray  # (B, H) previous hidden state
    c_prev: np.ndarray  # (B, H) previous cell state
    gates: np.ndarray  # (B, 4H) [i, f, g, o] side by side (the properties below are views)
    tanh_c: np.ndarray  # (B, H) tanh of the new cell state

    def _gate(self, k: int) -> np.ndarray:
        H = self.tanh_c.shape[-1]
        return self.gates[:, k * H:(k + 1) * H]

    i = property(lambda self: self._gate(0), doc="(B, H) input gate")
    f = property(lambda self: self._gate(1), doc="(B, H) forget gate")
    g = property(lambda self: self._gate(2), doc="(B, H) candidate cell")
    o = property(lambda self: self._gate(3), doc="(B, H) output gate")


class LSTMCell(_Cell):
    """One step of the LSTM (Hochreiter & Schmidhuber, 1997, with the forget gate
    of Gers et al., 2000), as ``torch.nn.LSTMCell``.

    Shapes: x (B, D), h_prev, c_prev (B, H); W_ih (D, 4H), W_hh (H, 4H),
    b_ih, b_hh (4H,); the four column blocks are the gates i, f, g, o.

    Forward:
        a = x W_ih + b_ih + h_prev W_hh + b_hh        (B, 4H) = [a_i, a_f, a_g, a_o]
        i = sigmoid(a_i)    f = sigmoid(a_f)    g = tanh(a_g)    o = sigmoid(a_o)
        c = f * c_prev + i * g
        h = o * tanh(c)

    Backward (dh, dc: the gradients reaching h and c from the output and from
    step t+1 -- both must be carried between steps):
        do      = dh * tanh(c)
        dc      = dc + dh * o * (1 - tanh(c)^2)       the total gradient of c
        di      = dc * g
        df      = dc * c_prev
        dg      = dc * i
        dc_prev = dc * f
        da      = [di, df, dg, do] * [i (1 - i), f (1 - f), 1 - g^2, o (1 - o)]
        dh_prev = da W_hh^T
        dW_ih  += x^T da          db_ih += sum_b da
        dW_hh  += h_prev^T da     db_hh += sum_b da
        dx      = da W_ih^T

    ``forward(x, h=None, c=None)`` -> (h', c').  Missing states are zeros;
    ``backward((dh', dc'), cache)`` (either may be None) returns dx followed by
    dh and/or dc for the states that were passed.
    Weights: W_ih = torch weight_ih.T, W_hh = weight_hh.T, b_ih = bias_ih,
    b_hh = bias_hh (rows/columns in the gate order i, f, g, o in both).
    """

    n_gates = 4
    state_names = ("h", "c")

    def forward(self, x, h=None, c=None):
        return self._forward(x, (h, c))

    def step(self, xw, h_prev, c_prev, *, W_hh_T=None):
        """xw = x W_ih + b_ih (B, 4H) -> ((h, c), LSTMStep)."""
        H = self.hidden_size
        a = self._recurrent(h_prev, W_hh_T)
        a += xw
        a += self.b_hh.data  # a = xw + h_prev W_hh + b_hh
        # the gates in place on a's column blocks: i, f, g, o are views of a.
        # tanh(a_g) = 2 sigmoid(2 a_g) - 1, so one sigmoid pass over all of a
        # makes the four gates (one contiguous pass instead of three strided ones)
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        g *= 2.0
        sigmoid(a, out=a)
        g *= 2.0
        g -= 1.0
        c = f * c_prev
        c += i * g
        tanh_c = np.tanh(c)
        h = o * tanh_c
        return (h, c), LSTMStep(h_prev=h_prev, c_prev=c_prev, gates=a, tanh_c=tanh_c)

    def step_backward(self, dh, dc, cache: LSTMStep, *, W_hh_T=None, out=None):
        """-> (da_x, da_h, (dh_prev, dc_prev)); parameter gradients are left to the caller.

        The four gate gradients are written into the column blocks of one
        (B, 4H) array, ``out`` when given, and multiplied there by the four
        gate derivatives, themselves made in one pass over all of ``gates``
        (s (1 - s), then the g block replaced by 1 - g^2): 15 array passes where
        the gate-by-gate formulas and a concatenation took 23.
        """
        H = self.hidden_size
        gates, tanh_c = cache.gates, cache.tanh_c
        i, f, g, o = cache.i, cache.f, cache.g, cache.o
        dc = dc + dh * o * (1 - tanh_c * tanh_c)  # the total gradient of c
        da = np.empty_like(gates) if out is None else out
        np.multiply(dc, g, out=da[:, :H])  # di
        np.multiply(dc, cache.c_prev, out=da[:, H:2 * H])  # df
        np.multiply(dc, i, out=da[:, 2 * H:3 * H])  # dg
        np.multiply(dh, tanh_c, out=da[:, 3 * H:])  # do
        deriv = np.subtract(1, gates)
        deriv *= gates  # s (1 - s) for the sigmoid gates i, f, o
        tanh_deriv = deriv[:, 2 * H:3 * H]
        np.multiply(g, g, out=tanh_deriv)
        np.subtract(1, tanh_deriv, out=tanh_deriv)  # 1 - g^2 for the tanh gate
        da *= deriv
        dc_prev = dc * f
        dh_prev = da @ self._transposed_W_hh(W_hh_T)
        return da, da, (dh_prev, dc_prev)


# -- GRU --------------------------------------------------------------------------------------


class GRUStep(NamedTuple):
    h_prev: np.ndarray  # (B, H) previous hidden state
    r: np.ndarray  # (B, H) reset gate
    z: np.ndarray  # (B, H) update gate
    n: np.ndarray  # (B, H) candidate state
    hn: np.ndarray  # (B, H) h_prev W_hn + b_hn, the hidden half of n's pre-activation


class GRUCell(_Cell):
    """One step of the GRU (Cho et al., 2014), as ``torch.nn.GRUCell``.

    Shapes: x (B, D), h_prev (B, H); W_ih (D, 3H), W_hh (H, 3H),
    b_ih, b_hh (3H,); the three column blocks are the gates r, z, n.
    PyTorch keeps the input and hidden biases apart because b_hn sits inside
    r * (...); both are kept here so weights move unchanged.

    Forward (xw = x W_ih + b_ih = [x_r, x_z, x_n], hw = h_prev W_hh + b_hh = [h_r, h_z, hn]):
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = tanh(x_n + r * hn)
        h = (1 - z) * n + z * h_prev

    Backward (dh: the gradient reaching h):
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

    def forward(self, x, h=None):
        return self._forward(x, (h,))

    def step(self, xw, h_prev, *, W_hh_T=None):
        """xw = x W_ih + b_ih (B, 3H) -> ((h,), GRUStep)."""
        H = self.hidden_size
        hw = self._recurrent(h_prev, W_hh_T)
        hw += self.b_hh.data
        r = sigmoid(xw[:, :H] + hw[:, :H])
        z = sigmoid(xw[:, H:2 * H] + hw[:, H:2 * H])
        hn = hw[:, 2 * H:]
        n = np.tanh(xw[:, 2 * H:] + r * hn)
        h = (1 - z) * n + z * h_prev
        return (h,), GRUStep(h_prev=h_prev, r=r, z=z, n=n, hn=hn)

    def step_backward(self, dh, cache: GRUStep, *, W_hh_T=None, out=None):
        """-> (da_x, da_h, (dh_prev,)); parameter gradients are left to the caller."""
        h_prev, r, z, n, hn = cache.h_prev, cache.r, cache.z, cache.n, cache.hn
        dn = dh * (1 - z)
        dz = dh * (h_prev - n)
        da_n = dn * (1 - n * n)
        dr = da_n * hn
        da_r = dr * r * (1 - r)
        da_z = dz * z * (1 - z)
        da_x = np.concatenate([da_r, da_z, da_n], axis=1, out=out)
        da_h = np.concatenate([da_r, da_z, da_n * r], axis=1)
        dh_prev = dh * z + da_h @ self._transposed_W_hh(W_hh_T)
        return da_x, da_h, (dh_prev,)
