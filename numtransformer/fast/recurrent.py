"""Fast kernels: one time step of the tanh RNN, the LSTM and the GRU.

Same names, signatures and caches as ``numtransformer.functional.recurrent``
(whose docstrings state and derive the equations); what differs is how:

- ``W_hh_T=``: a C-contiguous copy of W_hh^T (``transposed_copy``) that an
  unrolled caller makes once for all T steps, read by the backward's
  da W_hh^T (a transposed operand makes that small GEMM ~1.7x slower: 16 x
  1024 x 256 float32, one thread, 121 us against 210, measured with NumPy
  2.4's OpenBLAS 0.3.31).  The forward's h_prev W_hh reads W_hh itself: on
  that OpenBLAS the plain product is the faster one (16 x 256 x 1024: 116 us
  against 204 through W_hh_T.T on one thread, 73 against 107 on two).
- ``out=`` (backward): a (B, G*H) array, a view is fine, that receives da_x,
  so an unrolled caller has it written straight into its (B, T, G*H) buffer.
- The LSTM gates in place on the column blocks of the pre-activation a: one
  contiguous sigmoid pass over all of a makes i, f and o, and the g block is
  tanh(a_g) taken just before that pass (``np.tanh``, as the reference: the
  former 2 sigmoid(2 a_g) - 1 cost as much and lost float32 precision near
  a_g = 0, relative error of g up to 1.18 for |a_g| < 1e-7).  The backward
  writes the four gate gradients into the blocks of one array and makes the
  four derivatives in one pass (s (1 - s), then the g block 1 - g^2).
- Bias gradients as one GEMV 1^T da (``column_sum``).
"""

from __future__ import annotations

import numpy as np

from .._parallel import column_sum
from ..functional.recurrent import GRUStep, LSTMNStep, LSTMStep, RNNStep
from .activations import sigmoid, softmax, softmax_backward
from .attention import additive_energy_backward, additive_energy_forward

__all__ = ["rnn_step_forward", "rnn_step_backward", "lstm_step_forward", "lstm_step_backward",
           "gru_step_forward", "gru_step_backward", "projection_grads",
           "lstmn_step_forward", "lstmn_step_backward"]


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


def _recurrent(h_prev, W_hh):
    """h_prev W_hh, the step's (B, H) x (H, G*H) GEMM (a fresh array)."""
    return h_prev @ W_hh


def _back(da, W_hh, W_hh_T):
    """da W_hh^T, with the caller's contiguous W_hh^T when it has one."""
    return da @ (W_hh.T if W_hh_T is None else W_hh_T)


def rnn_step_forward(xw, h_prev, W_hh, b_hh):
    """a = xw + h_prev W_hh + b_hh, h = tanh(a), in place on the GEMM's output."""
    a = _recurrent(h_prev, W_hh)
    a += xw
    a += b_hh
    h = np.tanh(a, out=a)
    return (h,), RNNStep(h_prev=h_prev, h=h)


def rnn_step_backward(dh, cache: RNNStep, W_hh, *, W_hh_T=None, out=None):
    """da = dh (1 - h^2) built in ``out`` when given; dh_prev = da W_hh^T."""
    h = cache.h
    da = np.multiply(h, h, out=out)
    np.subtract(1.0, da, out=da)
    da *= dh
    return da, da, (_back(da, W_hh, W_hh_T),)


def lstm_step_forward(xw, h_prev, c_prev, W_hh, b_hh):
    """The gates in place on the column blocks of a = xw + h_prev W_hh + b_hh:
    tanh of the g block aside, one sigmoid pass over all of a, g put back."""
    a = _recurrent(h_prev, W_hh)
    a += xw
    if b_hh is not None:
        a += b_hh
    H = a.shape[1] // 4
    i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    tanh_g = np.tanh(g)
    sigmoid(a, out=a)
    g[...] = tanh_g
    c = f * c_prev
    c += i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    return (h, c), LSTMStep(h_prev=h_prev, c_prev=c_prev, gates=a, tanh_c=tanh_c)


def lstm_step_backward(dh, dc, cache: LSTMStep, W_hh, *, W_hh_T=None, out=None):
    """The four gate gradients written into the column blocks of one (B, 4H)
    array (``out`` when given) and multiplied there by the four derivatives,
    made in one pass over all of ``gates``: 15 array passes where the
    gate-by-gate formulas and a concatenation take 23."""
    gates, tanh_c = cache.gates, cache.tanh_c
    H = tanh_c.shape[1]
    i, f, g, o = cache.i, cache.f, cache.g, cache.o
    dc_t = dc + dh * o * (1.0 - tanh_c * tanh_c)  # the total gradient of c
    da = np.empty_like(gates) if out is None else out
    np.multiply(dc_t, g, out=da[:, :H])  # di
    np.multiply(dc_t, cache.c_prev, out=da[:, H:2 * H])  # df
    np.multiply(dc_t, i, out=da[:, 2 * H:3 * H])  # dg
    np.multiply(dh, tanh_c, out=da[:, 3 * H:])  # do
    deriv = np.subtract(1.0, gates)
    deriv *= gates  # s (1 - s) for the sigmoid gates i, f, o
    tanh_deriv = deriv[:, 2 * H:3 * H]
    np.multiply(g, g, out=tanh_deriv)
    np.subtract(1.0, tanh_deriv, out=tanh_deriv)  # 1 - g^2 for the tanh gate
    da *= deriv
    dc_prev = dc_t * f
    return da, da, (_back(da, W_hh, W_hh_T), dc_prev)


def gru_step_forward(xw, h_prev, W_hh, b_hh):
    """The reference step with b_hh added in place, and the gates' sigmoid and
    tanh in place on their fresh pre-activations."""
    H = h_prev.shape[1]
    hw = _recurrent(h_prev, W_hh)
    hw += b_hh
    r = xw[:, :H] + hw[:, :H]
    sigmoid(r, out=r)
    z = xw[:, H:2 * H] + hw[:, H:2 * H]
    sigmoid(z, out=z)
    hn = hw[:, 2 * H:]
    n = r * hn
    n += xw[:, 2 * H:]
    np.tanh(n, out=n)
    h = (1.0 - z) * n + z * h_prev
    return (h,), GRUStep(h_prev=h_prev, r=r, z=z, n=n, hn=hn)


def gru_step_backward(dh, cache: GRUStep, W_hh, *, W_hh_T=None, out=None):
    """The reference step with da_x concatenated into ``out`` when given."""
    h_prev, r, z, n, hn = cache.h_prev, cache.r, cache.z, cache.n, cache.hn
    dn = dh * (1.0 - z)
    dz = dh * (h_prev - n)
    da_n = dn * (1.0 - n * n)
    dr = da_n * hn
    da_r = dr * (r * (1.0 - r))
    da_z = dz * (z * (1.0 - z))
    da_x = np.concatenate([da_r, da_z, da_n], axis=1, out=out)
    da_h = np.concatenate([da_r, da_z, da_n * r], axis=1)
    dh_prev = dh * z + _back(da_h, W_hh, W_hh_T)
    return da_x, da_h, (dh_prev,)


def projection_grads(x, da, has_bias: bool = True):
    """dW = x^T da, db = 1^T da (one GEMV)."""
    dW = x.T @ da
    db = column_sum(da) if has_bias else None
    return dW, db


def lstmn_step_forward(xq, xz, k_mem, h_mem, c_mem, h_tilde_prev, W_ht, v, W_hh, W_h):
    """The reference step on the fast pieces: the fast additive energy, softmax
    and LSTM step; the reads h~ = s h_mem, c~ = s c_mem as einsum contractions."""
    q = h_tilde_prev @ W_ht
    q += xq
    a, energy = additive_energy_forward(q[:, None, :], k_mem, v)
    s = softmax(a[:, 0], -1)
    h_tilde = np.einsum("bi,bih->bh", s, h_mem)
    c_tilde = np.einsum("bi,bih->bh", s, c_mem)
    (h, c), lstm = lstm_step_forward(xz, h_tilde, c_tilde, W_hh, None)
    k = h @ W_h
    return (h, c, k), LSTMNStep(h_mem=h_mem, c_mem=c_mem, energy=energy, s=s,
                                h_tilde_prev=h_tilde_prev, lstm=lstm)


def lstmn_step_backward(dh, dc, dk, dh_tilde_next, ds, cache: LSTMNStep, W_ht, W_hh, W_h):
    """The reference backward on the fast pieces, the read's gradients as einsum."""
    s, h_mem, c_mem = cache.s, cache.h_mem, cache.c_mem
    dh_t = dk @ W_h.T
    dh_t += dh
    dz, _, (dh_tilde, dc_tilde) = lstm_step_backward(dh_t, dc, cache.lstm, W_hh)
    dh_tilde += dh_tilde_next
    ds_total = np.einsum("bh,bih->bi", dh_tilde, h_mem)
    ds_total += np.einsum("bh,bih->bi", dc_tilde, c_mem)
    if ds is not None:
        ds_total += ds
    dh_mem = s[:, :, None] * dh_tilde[:, None, :]
    dc_mem = s[:, :, None] * dc_tilde[:, None, :]
    da = softmax_backward(ds_total, s, -1, out=ds_total)
    dq, dk_mem, dv = additive_energy_backward(da[:, None, :], cache.energy)
    dq = dq[:, 0]
    return dz, dq, dv, dh_mem, dc_mem, dk_mem, dq @ W_ht.T
