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
- ``W_hh_blocks=`` (forward) and a 3-D ``W_hh_T`` (backward): the weights
  cut into contiguous column blocks (``column_blocks``), which an unrolled
  caller on one BLAS thread makes once per layer.  The step's small product
  (B rows) then runs as one batched matmul over the blocks, each block's
  product written into its columns of one output.  Blocks of at most 2^19
  multiply-adds are what NumPy's OpenBLAS 0.3.31 multiplies without packing,
  and on the LSTM's shapes that is 1.3-2x faster than the whole product on one
  thread (float32, B = 16: 16 x 256 x 1024 as 8 blocks of 128 columns 63-78
  us against 109-114; da W_hh^T 16 x 1024 x 256 as 8 blocks of 32 columns 85
  against 122; B = 8: 41 against 90).  On two BLAS threads the whole product
  is faster, so the blocks are made only for one.
- Bias gradients as one GEMV 1^T da (``column_sum``).
"""

from __future__ import annotations

import numpy as np

from .._parallel import column_sum, get_num_threads
from ..functional.recurrent import GRUStep, LSTMNStep, LSTMStep, RNNStep
from .activations import sigmoid, softmax, softmax_backward
from .attention import additive_energy_backward, additive_energy_forward

__all__ = ["column_blocks", "rnn_step_forward", "rnn_step_backward", "lstm_step_forward",
           "lstm_step_backward", "gru_step_forward", "gru_step_backward", "projection_grads",
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


SMALL_GEMM = 1 << 19  # multiply-adds per block: the most OpenBLAS multiplies unpacked
MIN_BLOCK_COLUMNS = 16  # narrower blocks were slower than the whole product (64 x 1024 x 256)


def column_blocks(W: np.ndarray, rows: int, *, transpose: bool = False) -> np.ndarray | None:
    """W (K, N) -- W^T when ``transpose`` -- as n contiguous column blocks, an
    (n, K, nb) array with blocks[j] = W[:, j nb:(j+1) nb], for the product of
    ``rows`` rows by it; None where the whole product is the faster one.

    nb is the widest power-of-two split of N (n = N / nb) whose block products
    have at most ``SMALL_GEMM`` multiply-adds (rows K nb), and at least
    ``MIN_BLOCK_COLUMNS`` columns; None on several BLAS threads, or when the
    whole product is already that small, or no such nb divides N.
    """
    K, N = W.shape[::-1] if transpose else W.shape
    if get_num_threads() > 1 or rows * K * N <= SMALL_GEMM:
        return None
    nb = N
    while rows * K * nb > SMALL_GEMM and nb % 2 == 0:
        nb //= 2
    if rows * K * nb > SMALL_GEMM or nb < MIN_BLOCK_COLUMNS:
        return None
    if transpose:  # blocks[j] = (W[j nb:(j+1) nb, :])^T
        return np.ascontiguousarray(W.reshape(N // nb, nb, K).transpose(0, 2, 1))
    return np.ascontiguousarray(W.reshape(K, N // nb, nb).transpose(1, 0, 2))


def _product(a, W):
    """a @ W for a 2-D W (K, N) or its column blocks W (n, K, nb): then one
    batched matmul, each block's product written into its columns of the
    (M, n nb) result (the same numbers as a @ W up to the order of the sums)."""
    if W.ndim == 2:
        return a @ W
    n, _, nb = W.shape
    y = np.empty((a.shape[0], n * nb), np.result_type(a, W))
    np.matmul(a, W, out=y.reshape(a.shape[0], n, nb).transpose(1, 0, 2))
    return y


def _recurrent(h_prev, W_hh, W_hh_blocks=None):
    """h_prev W_hh, the step's (B, H) x (H, G*H) GEMM (a fresh array), on the
    caller's column blocks of W_hh when it has them."""
    return _product(h_prev, W_hh if W_hh_blocks is None else W_hh_blocks)


def _back(da, W_hh, W_hh_T):
    """da W_hh^T, with the caller's contiguous W_hh^T (or its column blocks)
    when it has one."""
    return _product(da, W_hh.T if W_hh_T is None else W_hh_T)


def rnn_step_forward(xw, h_prev, W_hh, b_hh, *, W_hh_blocks=None):
    """a = xw + h_prev W_hh + b_hh, h = tanh(a), in place on the GEMM's output."""
    a = _recurrent(h_prev, W_hh, W_hh_blocks)
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


def lstm_step_forward(xw, h_prev, c_prev, W_hh, b_hh, *, W_hh_blocks=None):
    """The gates in place on the column blocks of a = xw + h_prev W_hh + b_hh:
    tanh of the g block aside, one sigmoid pass over all of a, g put back."""
    a = _recurrent(h_prev, W_hh, W_hh_blocks)
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


def gru_step_forward(xw, h_prev, W_hh, b_hh, *, W_hh_blocks=None):
    """The reference step with b_hh added in place, and the gates' sigmoid and
    tanh in place on their fresh pre-activations."""
    H = h_prev.shape[1]
    hw = _recurrent(h_prev, W_hh, W_hh_blocks)
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
