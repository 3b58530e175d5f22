"""Elementwise activations and softmax.

Each activation is a parameter-free Module whose cache holds the one array its
backward needs (the input or the output, whichever makes the derivative
cheapest).  ``softmax`` and ``log_softmax`` are also exposed as functions,
both numerically stable; ``softmax`` also takes a mask of blocked entries
(``log_softmax`` takes none: an all -inf row gives NaN there).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import erf

from .._parallel import parallel_rows, row_blocks
from .._validate import check_float, check_mask
from ..module import Module

__all__ = ["ReLU", "GELU", "Tanh", "Sigmoid", "Softmax", "softmax", "softmax_backward",
           "log_softmax", "sigmoid",
           "get_activation"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def softmax(x: np.ndarray, axis: int = -1, mask: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
    """Stable softmax along ``axis``; ``mask`` True = blocked (weight 0).

    Subtracting the row max leaves the result unchanged (softmax is invariant
    to adding a constant to a row) and keeps exp from overflowing.  A row whose
    entries are all blocked (or all -inf) gives all zeros, never NaN.
    ``out``: write the result there (an array of x's shape and dtype; it may be
    ``x`` itself, for scores that are a temporary of the caller), so no new
    array is allocated.  Without it x is left untouched.
    Rows are independent: a large x is split along its first axis and the
    blocks run on the configured threads (``numtransformer._parallel``).
    """
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
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # an all-blocked row has max -inf
    e = np.subtract(x, m, out=out)  # without out: a fresh array, x is never touched
    np.exp(e, out=e)
    if axis in (-1, e.ndim - 1):  # einsum: 3-4x faster than sum over short rows
        s = np.einsum("...j->...", e)[..., None]
    else:
        s = e.sum(axis=axis, keepdims=True)
    e /= np.where(s > 0, s, 1)
    return e


def softmax_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The gradient through y = softmax(x) over the last axis:

        dx_i = sum_j dy_j dy_j/dx_i = y_i (dy_i - sum_j dy_j y_j)

    (dy_j/dx_i = y_j ([i = j] - y_i)).  Blocked entries have y = 0, so they
    get dx = 0.  ``out`` may be ``dy`` itself.  Rows are independent: a large
    dy is split along its first axis over the configured threads.
    """
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


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-x)) elementwise, in x's dtype; ``out`` as for a ufunc (may be x).

    For very negative x, exp(-x) overflows to inf and the result is the right
    limit 0 (the overflow warning is silenced).  Within a few ulps of
    ``scipy.special.expit`` and 3-5x faster: numpy's exp is vectorised.
    """
    # out=empty_like: a 0-d x then gives a 0-d array, not a scalar the steps below can't fill.
    # -x as a multiply: numpy 2.4's in-place np.negative miscomputes some strided views.
    e = np.multiply(x, -1.0, out=np.empty_like(x) if out is None else out)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1.0
    return np.reciprocal(e, out=e)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log-softmax: ``x - max - log(sum(exp(x - max)))`` (log-sum-exp)."""
    if x.shape[axis] == 0:  # an empty axis: max over it would raise
        return np.zeros(x.shape, x.dtype)
    m = x.max(axis=axis, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


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


class ActivationCache(NamedTuple):
    x: np.ndarray | None  # the input, kept when the derivative needs it
    y: np.ndarray | None  # the output, kept when the derivative needs it


class _Elementwise(Module):
    def _check(self, x):
        return check_float(self, "x", x)


class ReLU(_Elementwise):
    """y = max(x, 0).

    Backward: dx = dy * [x > 0]  (the subgradient at exactly 0 is taken as 0,
    as PyTorch does).
    """

    def forward(self, x):
        x = self._check(x)
        y = _blockwise(lambda x, out: np.maximum(x, 0, out=out), x)
        return y, ActivationCache(x=None, y=y)

    def backward(self, dy, cache):
        return _blockwise(lambda dy, y, out: np.multiply(dy, y > 0, out=out), dy, cache.y)


class GELUCache(NamedTuple):
    x: np.ndarray  # the input
    Phi: np.ndarray | None  # exact form: the normal CDF at x (erf is the costly part)
    t: np.ndarray | None  # tanh form: tanh(u)


class GELU(Module):
    """Gaussian error linear unit (Hendrycks & Gimpel, 2016).

    approximate="none" (exact, erf form):
        Phi(x) = (1 + erf(x / sqrt 2)) / 2,   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        y  = x Phi(x)
        dx = dy (Phi(x) + x phi(x))
    approximate="tanh":
        u  = sqrt(2/pi) (x + 0.044715 x^3),   t = tanh(u)
        y  = x (1 + t) / 2
        dx = dy ((1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2)
    Both as PyTorch's ``nn.GELU(approximate=...)``.
    """

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        x = check_float(self, "x", x)
        if self.approximate == "none":
            Phi = 0.5 * (1.0 + erf(x * _INV_SQRT2))
            y = x * Phi
            return y, GELUCache(x=x, Phi=Phi, t=None)
        t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
        y = 0.5 * x * (1.0 + t)
        return y, GELUCache(x=x, Phi=None, t=t)

    def backward(self, dy, cache):
        x = cache.x
        if self.approximate == "none":
            phi = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
            return dy * (cache.Phi + x * phi)
        t = cache.t
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Tanh(_Elementwise):
    """y = tanh(x).   Backward: dx = dy (1 - y^2)."""

    def forward(self, x):
        y = np.tanh(self._check(x))
        return y, ActivationCache(x=None, y=y)

    def backward(self, dy, cache):
        y = cache.y
        return dy * (1.0 - y * y)


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x)) (``sigmoid``: exp(-x) = inf for very negative x gives y = 0).

    Backward: dx = dy y (1 - y).
    """

    def forward(self, x):
        y = sigmoid(self._check(x))
        return y, ActivationCache(x=None, y=y)

    def backward(self, dy, cache):
        y = cache.y
        return dy * y * (1.0 - y)


class SoftmaxCache(NamedTuple):
    y: np.ndarray  # the softmax output


class Softmax(Module):
    """Softmax along ``axis``, optionally masked (True = blocked).

    Forward:
        y_i = exp(x_i - max_j x_j) / sum_k exp(x_k - max_j x_j)   (blocked: y_i = 0)

    Backward (the Jacobian is diag(y) - y y^T):
        dx_i = y_i (dy_i - sum_k dy_k y_k)
    Blocked entries have y_i = 0, so they get dx_i = 0; an all-blocked row is 0.
    """

    def __init__(self, axis: int = -1):
        self.axis = int(axis)

    def forward(self, x, mask=None):
        x = check_float(self, "x", x, min_ndim=1)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"Softmax: axis {self.axis} is out of range for x of shape {x.shape}")
        if mask is not None:
            mask = check_mask(self, "mask", mask, x.shape)
        y = softmax(x, axis=self.axis, mask=mask)
        return y, SoftmaxCache(y=y)

    def backward(self, dy, cache: SoftmaxCache):
        y = cache.y
        if self.axis in (-1, y.ndim - 1):
            return softmax_backward(dy, y)
        return y * (dy - np.sum(dy * y, axis=self.axis, keepdims=True))

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


def get_activation(name: str) -> Module:
    """``relu``, ``gelu`` (exact), ``gelu_tanh``, ``tanh`` or ``sigmoid``."""
    table = {
        "relu": ReLU,
        "gelu": GELU,
        "gelu_tanh": lambda: GELU(approximate="tanh"),
        "tanh": Tanh,
        "sigmoid": Sigmoid,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]()
