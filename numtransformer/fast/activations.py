"""Fast kernels: softmax, its backward, sigmoid, ReLU, SiLU, the SwiGLU gate and GELU.

Same names, signatures and caches as ``numtransformer.functional.activations``
(the functions here also take ``out=``, for the fast kernels that own a
scratch array).  Large passes run in row blocks on the configured threads
(``numtransformer._parallel``), row sums are einsum reductions, and the
softmax exponentiates and normalises in place.  SiLU and the SwiGLU gate
are in-place elementwise passes over blocks of the flattened arrays
(measured, float32 forward + backward kernels, two cores: SiLU 1.75 -> 0.72 ms
on 1024 x 256 and 2.4 -> 1.35 ms on 1024 x 688; the SwiGLU gate 7.1-7.7 ->
2.1-2.2 ms on 1024 x 688, the d_ff width where it runs, and no faster on
1024 x 256).

The exact GELU (``gelu_forward``/``gelu_backward``, approximate="none") needs
the normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2.  SciPy's erf computes each
float32 value in float64 on one core (7-20 ns an entry, measured); for float32
work Phi is here (1 + tanh(w)) / 2 with w a polynomial, evaluated in float32
by NumPy's SIMD ufuncs (see ``_phi32``), in cache-sized chunks of row blocks on the
configured threads; float64 keeps SciPy's erf, in row blocks (the same bits
as the reference).  The tanh form is the reference's arithmetic, in blocks.
"""

from __future__ import annotations

import numpy as np

import math

from scipy.special import erf

from .._parallel import parallel_rows, row_blocks
from ..functional import activations as _ref
from ..functional.activations import ActivationCache, GELUCache, SiLUCache, SwiGLUCache

__all__ = ["softmax", "softmax_backward", "sigmoid", "relu_forward", "relu_backward",
           "silu_forward", "silu_backward", "swiglu_forward", "swiglu_backward",
           "gelu_forward", "gelu_backward", "gelu_inplace", "last_axis_max"]

_TREE_MAX_WIDTH = 32  # rows up to this long: last_axis_max by halving


def last_axis_max(x):
    """``x.max(axis=-1, keepdims=True)``, the same values, for an x with a last axis of
    at least one entry.  NumPy reduces each short row in its own inner loop; rows of
    at most 32 go instead by halving, m = maximum(m[..., :h], m[..., h:2h]) (plus
    the odd column), about log2(n) passes each over the whole array: 1.9x faster
    on (32, 4, 32, 32) float32 attention scores (192 against 380 us), 1.7-2.4x on
    rows of 8-32 (measured, NumPy 2.4).  Longer rows: NumPy's own max (at n >= 33
    the two are mixed, at 128 and more NumPy's is faster).  max is exact, so any
    order of comparisons gives the same value (NaN propagates either way)."""
    n = x.shape[-1]
    if n > _TREE_MAX_WIDTH or n < 2:
        return x.max(axis=-1, keepdims=True)
    m = x
    while n > 1:
        h = n // 2
        halved = np.maximum(m[..., :h], m[..., h:2 * h])  # fresh: x is never written
        if n % 2:
            np.maximum(halved[..., :1], m[..., 2 * h:n], out=halved[..., :1])
        m, n = halved, h
    return m


def softmax(x, axis: int = -1, mask=None, out=None):
    """The reference softmax; ``out``: write the result there (an array of x's
    shape and dtype; it may be ``x`` itself, for scores that are a temporary of
    the caller).  A large x is split along its first axis over the threads."""
    ax = axis % x.ndim if x.ndim else 0
    if (x.ndim >= 2 and ax != 0 and x.shape[ax] > 0
            and (mask is None or np.ndim(mask) <= x.ndim)):
        row_size = x.size // max(x.shape[0], 1)
        if len(row_blocks(x.shape[0], row_size)) > 1:
            if out is None:
                out = np.empty_like(x)
            # a mask with x's first axis is cut with it; one without broadcasts whole
            cut = mask is not None and np.ndim(mask) == x.ndim and np.shape(mask)[0] != 1
            in_place = out is x

            def block(r):
                o = out[r]
                _softmax(o if in_place else x[r], ax, mask[r] if cut else mask, o)

            parallel_rows(block, x.shape[0], row_size)
            return out
    return _softmax(x, axis, mask, out)


def _softmax(x, axis, mask, out):
    """softmax above, on one thread."""
    if mask is not None:
        if out is None:
            out = np.where(mask, -np.inf, x)  # fresh: the steps below may work in place
        else:
            if out is not x:
                np.copyto(out, x)
            np.copyto(out, -np.inf, where=mask)
        x = out
    if x.shape[axis] == 0:  # nothing to normalise (and max over an empty axis would raise)
        return np.zeros(x.shape, x.dtype)
    m = last_axis_max(x) if axis in (-1, x.ndim - 1) else x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # an all-blocked row has max -inf
    e = np.subtract(x, m, out=out)  # without out: a fresh array, x is never touched
    np.exp(e, out=e)
    if axis in (-1, e.ndim - 1):  # einsum: 3-4x faster than sum over short rows
        s = np.einsum("...j->...", e)[..., None]
    else:
        s = e.sum(axis=axis, keepdims=True)
    e /= np.where(s > 0, s, 1)
    return e


def softmax_backward(dy, y, axis: int = -1, out=None):
    """dx = y (dy - sum_j dy_j y_j); ``out`` may be ``dy`` itself.  Over the
    last axis, a large dy is split along its first axis over the threads."""
    if axis not in (-1, dy.ndim - 1):
        return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))
    if out is None:
        out = np.empty_like(dy)

    def block(r):
        d, p, o = dy[r], y[r], out[r]
        row = np.einsum("...j,...j->...", d, p)[..., None]  # sum_j dy_j y_j
        np.subtract(d, row, out=o)
        o *= p

    if dy.ndim < 2:
        block(slice(None))
    else:
        parallel_rows(block, dy.shape[0], dy.size // max(dy.shape[0], 1))
    return out


def sigmoid(x, out=None):
    """1 / (1 + exp(-x)) in four in-place passes; ``out`` as for a ufunc (may be x).
    Within a few ulps of ``scipy.special.expit`` and 3-5x faster."""
    # out=empty_like: a 0-d x then gives a 0-d array, not a scalar the steps below can't fill.
    # -x as a multiply: numpy 2.4's in-place np.negative miscomputes some strided views.
    e = np.multiply(x, -1.0, out=np.empty_like(x) if out is None else out)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1.0
    return np.reciprocal(e, out=e)


def _blockwise(f, *xs):
    """out = f(*xs, out=out) for an elementwise f, on arrays of one shape: over
    the configured threads in blocks of the flattened arrays when they are
    contiguous (any split gives the same bits), else in one call."""
    out = np.empty_like(xs[0])
    if all(a.shape == out.shape and a.flags.c_contiguous for a in xs):
        flat, out1 = [a.reshape(-1) for a in xs], out.reshape(-1)
        parallel_rows(lambda r: f(*(a[r] for a in flat), out=out1[r]), out1.size, 1)
    else:
        f(*xs, out=out)
    return out


def relu_forward(x):
    y = _blockwise(lambda x, out: np.maximum(x, 0, out=out), x)
    return y, ActivationCache(x=None, y=y)


def relu_backward(dy, cache: ActivationCache):
    return _blockwise(lambda dy, y, out: np.multiply(dy, y > 0, out=out), dy, cache.y)


def silu_forward(x):
    s = _blockwise(lambda x, out: sigmoid(x, out=out), x)
    y = _blockwise(lambda x, s, out: np.multiply(x, s, out=out), x, s)
    return y, SiLUCache(x=x, s=s)


def _silu_grad(dy, x, s, out):
    """out = dy s (1 + x (1 - s)), in place in ``out``."""
    np.subtract(1.0, s, out=out)
    out *= x
    out += 1.0
    out *= s
    out *= dy
    return out


def silu_backward(dy, cache: SiLUCache):
    return _blockwise(_silu_grad, dy, cache.x, cache.s)


def swiglu_forward(g, u):
    a, silu_cache = silu_forward(g)
    h = _blockwise(lambda a, u, out: np.multiply(a, u, out=out), a, u)
    return h, SwiGLUCache(silu=silu_cache, a=a, u=u)


def swiglu_backward(dh, cache: SwiGLUCache):
    du = _blockwise(lambda dh, a, out: np.multiply(dh, a, out=out), dh, cache.a)

    def dg(dh, u, g, s, out):  # dg = (dh * u) s (1 + g (1 - s)), in one buffer
        _silu_grad(dh, g, s, out)
        out *= u
        return out

    return _blockwise(dg, dh, cache.u, cache.silu.x, cache.silu.s), du


# -- GELU ------------------------------------------------------------------------------------
# Phi(x) = (1 + erf(x / sqrt 2)) / 2 = (1 + tanh(w(x))) / 2 with w = atanh(erf(x / sqrt 2)), an
# odd function that grows like x^2 / 4; w is here the polynomial x P(x^2), P of degree 6
# (the tanh form of GELU is its first two terms, sqrt(2/pi) (x + 0.044715 x^3)), fitted for this
# kernel on [0, 5.6] (Lawson-reweighted least squares in float64, weighted by dPhi/dw =
# 2 Phi (1 - Phi), against SciPy's erfc: the fit's error in Phi is 2.9e-8).  x^2 is clipped at
# 6^2, where w = 11.8: NumPy's float32 tanh is exactly +-1 from |w| = 10 on (at 9.5 it still
# gives -0.99999994, which left Phi = 3e-8 instead of 0 near x = -5.7), so Phi is exactly 0
# or 1 beyond |x| = 6 (as the reference's 1 + erf(x / sqrt 2) in float32), with no overflow in
# u^6; between 5.6 and 6 the polynomial still rises and Phi stays within its float32 rounding.
# Evaluated in float32 by the steps of _phi32, the largest error in Phi over 2.2 million float32
# inputs (a grid of [-8, 8] and every scale from 1e-30 to 8) is 9.7e-8, 1.6 ulps of 1.0 (SciPy's
# float32 path, erf of the float32 x / sqrt 2, is within 6.1e-8), and the error of x Phi(x) is
# at most 1.4e-7 |x|.  NumPy's float32 tanh is a SIMD ufunc (0.3 ns an entry, measured, against
# 7-20 ns for SciPy's erf): 19 passes in all, where an erf by a rational function took 27.  The
# constants are float32 scalars: a Python float costs a float32 ufunc 2-3x more time per call
# (measured).
_F32 = np.float32
_GELU_U_MAX = _F32(6.0 * 6.0)
_GELU_W = tuple(_F32(c) for c in (
    0.7978849411010742, 0.03633308410644531, -3.259497316321358e-05, -5.530619455385022e-05,
    3.964744792028796e-06, -1.3226335227045638e-07, 1.7561712084557257e-09))  # P, p0 first
_HALF = _F32(0.5)
_ONE = _F32(1.0)
_CHUNK = 1 << 17  # entries per inner step: the scratch arrays stay in the core's L2 cache


def _horner(coef, u, out):
    """out = coef[0] + coef[1] u + ... + coef[-1] u^n by Horner's rule, into ``out``."""
    np.multiply(u, coef[-1], out=out)
    for c in coef[-2:0:-1]:
        out += c
        out *= u
    out += coef[0]
    return out


def _phi32_chunk(xk, pk, uk):
    """Phi of a float32 chunk xk into pk (uk: scratch of xk's size):
        u = min(x^2, 6^2);  w = x P(u);  Phi = (1 + tanh(w)) / 2"""
    np.multiply(xk, xk, out=uk)
    np.minimum(uk, _GELU_U_MAX, out=uk)
    _horner(_GELU_W, uk, pk)
    pk *= xk
    np.tanh(pk, out=pk)
    pk += _ONE
    pk *= _HALF
    return pk


def _phi32(x, phi, y=None):
    """Phi(x) of a float32 vector x into ``phi`` (and x Phi(x) into ``y``), in chunks
    (``_phi32_chunk``)."""
    n = x.shape[0]
    u = np.empty(min(n, _CHUNK), np.float32)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        pk = _phi32_chunk(x[lo:hi], phi[lo:hi], u[:hi - lo])
        if y is not None:
            np.multiply(x[lo:hi], pk, out=y[lo:hi])
    return phi


def gelu_inplace(h, b=None):
    """h = GELU(h + b) in place, for inference (no cache), exact form: a 2-D h, the
    bias b (optional) added to every row.  float32: ``_phi32_chunk`` on chunks of
    whole rows (the bias add, Phi and the product all on a chunk while it is in
    cache); float64: the reference's statements on row blocks (the same bits as
    ``gelu_forward`` of h + b).  Row blocks on the threads.  Returns h."""
    rows, width = h.shape
    if h.size == 0:
        return h
    if h.dtype != np.float32:
        def block(r):
            hr = h[r]
            if b is not None:
                hr += b
            p = np.multiply(hr, _ref._INV_SQRT2)
            erf(p, out=p)
            p += 1.0
            p *= 0.5
            hr *= p

        parallel_rows(block, rows, width)
        return h
    step = max(1, _CHUNK // width)

    def block(r):
        m = min(step, r.stop - r.start)
        p, u = np.empty((m, width), np.float32), np.empty((m, width), np.float32)
        for lo in range(r.start, r.stop, step):
            hi = min(lo + step, r.stop)
            hk, pk, uk = h[lo:hi], p[:hi - lo], u[:hi - lo]
            if b is not None:
                hk += b
            _phi32_chunk(hk, pk, uk)
            hk *= pk

    parallel_rows(block, rows, width)
    return h


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def gelu_forward(x, approximate: str = "none"):
    """The reference ``gelu_forward``: the same cache record and, for float64 and the
    tanh form, the same arithmetic; float32's exact form computes Phi by ``_phi32``
    (within a few float32 ulps of the reference).  Row blocks on the threads."""
    if x.dtype not in (np.float32, np.float64) or x.size == 0:
        return _ref.gelu_forward(x, approximate)
    shape = x.shape
    xf = _flat(x)
    y = np.empty(xf.shape, x.dtype)
    if approximate != "none":
        t = np.empty(xf.shape, x.dtype)

        def block(r):
            yr, tr = _ref.gelu_forward(xf[r], approximate)
            y[r], t[r] = yr, tr.t

        parallel_rows(block, xf.size, 1)
        return y.reshape(shape), GELUCache(x=x, Phi=None, t=t.reshape(shape))
    Phi = np.empty(xf.shape, x.dtype)
    if x.dtype == np.float32:
        parallel_rows(lambda r: _phi32(xf[r], Phi[r], y[r]), xf.size, 1)
    else:
        def block(r):  # the reference's statements, on a block
            p = Phi[r]
            erf(np.multiply(xf[r], _ref._INV_SQRT2, out=p), out=p)
            p += 1.0
            p *= 0.5
            np.multiply(xf[r], p, out=y[r])

        parallel_rows(block, xf.size, 1)
    return y.reshape(shape), GELUCache(x=x, Phi=Phi.reshape(shape), t=None)


def gelu_backward(dy, cache: GELUCache):
    """The reference ``gelu_backward``'s arithmetic in row blocks on the threads."""
    x = cache.x
    if cache.Phi is None or dy.shape != x.shape or dy.size == 0:
        return _ref.gelu_backward(dy, cache)
    shape = dy.shape
    xf, pf, df = _flat(x), _flat(cache.Phi), _flat(dy)
    dx = np.empty(df.shape, np.result_type(dy, cache.Phi, x))

    def block(r):  # dx = dy (Phi + x phi),  phi = exp(-x^2 / 2) / sqrt(2 pi)
        xr, o = xf[r], dx[r]
        np.multiply(xr, -0.5, out=o)
        o *= xr
        np.exp(o, out=o)
        o *= _ref._INV_SQRT_2PI
        o *= xr
        o += pf[r]
        o *= df[r]

    parallel_rows(block, df.size, 1)
    return dx.reshape(shape)
