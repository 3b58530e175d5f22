"""Reference kernels: elementwise activations, softmax and log-softmax.

Each activation's cache holds the one array its backward needs (the input or
the output, whichever makes the derivative cheapest).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import erf

__all__ = ["ActivationCache", "GELUCache",
           "relu_forward", "relu_backward", "gelu_forward", "gelu_backward",
           "tanh_forward", "tanh_backward", "sigmoid", "sigmoid_forward", "sigmoid_backward",
           "softmax", "softmax_backward", "log_softmax",
           "SiLUCache", "silu_forward", "silu_backward", "SwiGLUCache", "swiglu_forward",
           "swiglu_backward"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class ActivationCache(NamedTuple):
    x: np.ndarray | None  # the input, kept when the derivative needs it
    y: np.ndarray | None  # the output, kept when the derivative needs it


class GELUCache(NamedTuple):
    x: np.ndarray  # the input
    Phi: np.ndarray | None  # exact form: the normal CDF at x (erf is the costly part)
    t: np.ndarray | None  # tanh form: tanh(u)


def relu_forward(x):
    """y = max(x, 0).  Returns (y, ActivationCache(y=y))."""
    y = np.maximum(x, 0)
    return y, ActivationCache(x=None, y=y)


def relu_backward(dy, cache: ActivationCache):
    """dx = dy [x > 0]; y > 0 exactly where x > 0.  The subgradient at x = 0 is
    taken as 0, as PyTorch does."""
    return dy * (cache.y > 0)


def gelu_forward(x, approximate: str = "none"):
    """Gaussian error linear unit (Hendrycks & Gimpel, 2016), as PyTorch's
    ``nn.GELU(approximate=...)``.

    approximate="none" (exact):
        Phi(x) = (1 + erf(x / sqrt 2)) / 2          the standard normal CDF
        y      = x Phi(x)
    approximate="tanh":
        u = sqrt(2/pi) (x + 0.044715 x^3) ;  t = tanh(u)
        y = x (1 + t) / 2
    Returns (y, GELUCache).
    """
    if approximate == "none":
        Phi = 0.5 * (1.0 + erf(x * _INV_SQRT2))
        y = x * Phi
        return y, GELUCache(x=x, Phi=Phi, t=None)
    u = _SQRT_2_OVER_PI * (x + _GELU_C * x ** 3)
    t = np.tanh(u)
    y = 0.5 * x * (1.0 + t)
    return y, GELUCache(x=x, Phi=None, t=t)


def gelu_backward(dy, cache: GELUCache):
    """Exact form, the product rule with dPhi/dx = phi(x), the normal density:
        phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        dx     = dy (Phi(x) + x phi(x))
    tanh form, with du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2) and tanh' = 1 - t^2:
        dx = dy ((1 + t) / 2 + x (1 - t^2) du/dx / 2)
    """
    x = cache.x
    if cache.Phi is not None:
        phi = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
        return dy * (cache.Phi + x * phi)
    t = cache.t
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3 * _GELU_C * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def tanh_forward(x):
    """y = tanh(x).  Returns (y, ActivationCache(y=y))."""
    y = np.tanh(x)
    return y, ActivationCache(x=None, y=y)


def tanh_backward(dy, cache: ActivationCache):
    """tanh' = 1 - tanh^2:   dx = dy (1 - y^2)."""
    y = cache.y
    return dy * (1.0 - y * y)


def sigmoid(x):
    """1 / (1 + exp(-x)) elementwise, in x's dtype.

    For very negative x, exp(-x) overflows to inf and the result is the right
    limit 0 (the overflow warning is silenced).
    """
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def sigmoid_forward(x):
    """y = sigmoid(x).  Returns (y, ActivationCache(y=y))."""
    y = sigmoid(x)
    return y, ActivationCache(x=None, y=y)


def sigmoid_backward(dy, cache: ActivationCache):
    """sigmoid' = sigmoid (1 - sigmoid):   dx = dy y (1 - y)."""
    y = cache.y
    return dy * y * (1.0 - y)


def softmax(x, axis: int = -1, mask=None):
    """Stable softmax along ``axis``; ``mask`` (broadcastable to x): True = blocked.

        y_i = exp(x_i - m) / sum_k exp(x_k - m),    m = max_k x_k over the unblocked k
        blocked entries: y_i = 0

    Subtracting the row max m leaves y unchanged (softmax is invariant to a
    constant added to a row) and keeps exp from overflowing: every exponent is
    <= 0.  A row whose entries are all blocked (or all -inf) gives all zeros,
    never NaN: its max is taken as 0 and its sum 0 is divided as 1.
    """
    if mask is not None:
        x = np.where(mask, -np.inf, x)
    if x.shape[axis] == 0:  # nothing to normalise (max over an empty axis would raise)
        return np.zeros(x.shape, x.dtype)
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # an all-blocked row has max -inf
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    y = e / np.where(s > 0, s, 1)
    return y


def softmax_backward(dy, y, axis: int = -1):
    """The gradient through y = softmax(x) along ``axis`` (the cache is y itself).

    The quotient rule on y_j = exp(x_j) / S, S = sum_k exp(x_k):
        dy_j/dx_i = ([i = j] exp(x_j) S - exp(x_j) exp(x_i)) / S^2 = y_j ([i = j] - y_i)
    so the Jacobian is diag(y) - y y^T, and its product with dy is
        dx_i = sum_j dy_j y_j ([i = j] - y_i) = y_i (dy_i - sum_j dy_j y_j)
    Blocked entries have y_i = 0, so they get dx_i = 0; an all-blocked row is 0.
    """
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


def log_softmax(x, axis: int = -1):
    """Stable log-softmax (log-sum-exp):  log y_i = (x_i - m) - log sum_k exp(x_k - m)."""
    if x.shape[axis] == 0:  # an empty axis: max over it would raise
        return np.zeros(x.shape, x.dtype)
    m = x.max(axis=axis, keepdims=True)
    u = x - m
    return u - np.log(np.exp(u).sum(axis=axis, keepdims=True))


class SiLUCache(NamedTuple):
    x: np.ndarray  # the input
    s: np.ndarray  # sigmoid(x)


def silu_forward(x):
    """Sigmoid-weighted linear unit, SiLU (Hendrycks & Gimpel, 2016; Elfwing et
    al., 2017), also Swish-1 (Ramachandran et al., 2017: Swish with beta = 1),
    as PyTorch's ``nn.SiLU``.

        s = sigmoid(x)
        y = x s
    Returns (y, SiLUCache).
    """
    s = sigmoid(x)
    y = x * s
    return y, SiLUCache(x=x, s=s)


def silu_backward(dy, cache: SiLUCache):
    """The product rule on y = x s, with s' = s (1 - s) (``sigmoid_backward``):
        y'(x) = s + x s (1 - s) = s (1 + x (1 - s))
        dx    = dy s (1 + x (1 - s))
    (The cache holds both x and s: y / x would lose s at x = 0.)
    """
    x, s = cache.x, cache.s
    return dy * s * (1.0 + x * (1.0 - s))


class SwiGLUCache(NamedTuple):
    silu: SiLUCache  # cache of a = silu(g)
    a: np.ndarray  # silu(g), the gate
    u: np.ndarray  # the linear ("up") branch


def swiglu_forward(g, u):
    """The SwiGLU gated unit (Shazeer, 2020, "GLU Variants Improve Transformer",
    sec. 2: SwiGLU(x, W, V) = Swish_1(x W) * (x V), inside
    FFN_SwiGLU(x) = (Swish_1(x W) * x V) W_2), on the two projections:

    Shapes: g (..., d_ff) = x W_gate, u (..., d_ff) = x W_up (same shape).

        a = silu(g)            the gate
        h = a * u              elementwise
    Returns (h, SwiGLUCache).
    """
    a, silu_cache = silu_forward(g)
    h = a * u
    return h, SwiGLUCache(silu=silu_cache, a=a, u=u)


def swiglu_backward(dh, cache: SwiGLUCache):
    """The product rule through the gate: h = a * u depends on u directly and on
    g through a, so
        du = dh * a            (the partial of h_i in u_i is a_i)
        da = dh * u            (the partial of h_i in a_i is u_i)
        dg = silu_backward(da) = da s (1 + g (1 - s)),  s = sigmoid(g)
    Returns (dg, du).
    """
    du = dh * cache.a
    da = dh * cache.u
    dg = silu_backward(da, cache.silu)
    return dg, du
