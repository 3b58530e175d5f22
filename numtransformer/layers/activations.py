"""Elementwise activations and softmax.

Each activation is a parameter-free Module whose cache holds the one array its
backward needs (the input or the output, whichever makes the derivative
cheapest).  ``softmax`` and ``log_softmax`` are also exposed as functions,
both numerically stable; ``softmax`` also takes a mask of blocked entries
(``log_softmax`` takes none: an all -inf row gives NaN there).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import fast
from .._validate import check_float, check_mask
from ..functional.activations import ActivationCache, GELUCache, SiLUCache
from ..kernels import select
from ..module import Module

__all__ = ["ReLU", "GELU", "Tanh", "Sigmoid", "SiLU", "Softmax", "softmax", "softmax_backward",
           "log_softmax", "sigmoid", "get_activation", "ActivationCache", "GELUCache", "SiLUCache"]


def softmax(x: np.ndarray, axis: int = -1, mask: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
    """Stable softmax along ``axis``; ``mask`` True = blocked (weight 0).

    A row whose entries are all blocked (or all -inf) gives all zeros, never
    NaN (``functional.softmax`` states the equations).  ``out``: write the
    result there (an array of x's shape and dtype; it may be ``x`` itself), so
    no new array is allocated; without it x is left untouched.
    """
    if out is not None:
        return fast.softmax(x, axis, mask, out=out)
    return select(x.dtype).softmax(x, axis, mask)


def softmax_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None,
                     axis: int = -1) -> np.ndarray:
    """The gradient through y = softmax(x) along ``axis``: dx = y (dy - sum_j dy_j y_j)
    (``functional.softmax_backward`` derives it).  ``out`` may be ``dy`` itself."""
    if out is not None:
        return fast.softmax_backward(dy, y, axis, out=out)
    return select(dy.dtype).softmax_backward(dy, y, axis)


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-x)) elementwise, in x's dtype; ``out`` as for a ufunc (may be x).
    For very negative x the result is the right limit 0."""
    if out is not None:
        return fast.sigmoid(x, out=out)
    return select(x.dtype).sigmoid(x)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log-softmax: ``x - max - log(sum(exp(x - max)))`` (log-sum-exp)."""
    return select(x.dtype).log_softmax(x, axis)


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
        return select(x.dtype).relu_forward(x)

    def backward(self, dy, cache):
        return select(dy.dtype).relu_backward(dy, cache)


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
        return select(x.dtype).gelu_forward(x, self.approximate)

    def backward(self, dy, cache):
        return select(dy.dtype).gelu_backward(dy, cache)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Tanh(_Elementwise):
    """y = tanh(x).   Backward: dx = dy (1 - y^2)."""

    def forward(self, x):
        x = self._check(x)
        return select(x.dtype).tanh_forward(x)

    def backward(self, dy, cache):
        return select(dy.dtype).tanh_backward(dy, cache)


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x)) (``sigmoid``: exp(-x) = inf for very negative x gives y = 0).

    Backward: dx = dy y (1 - y).
    """

    def forward(self, x):
        x = self._check(x)
        return select(x.dtype).sigmoid_forward(x)

    def backward(self, dy, cache):
        return select(dy.dtype).sigmoid_backward(dy, cache)


class SiLU(_Elementwise):
    """Sigmoid-weighted linear unit, y = x sigmoid(x) (SiLU: Hendrycks & Gimpel,
    2016, Elfwing et al., 2017; Swish-1: Ramachandran et al., 2017), as
    PyTorch's ``nn.SiLU``; the gate of LLaMA's SwiGLU feed-forward.

    Forward:   s = sigmoid(x);   y = x s
    Backward (product rule, sigmoid' = s (1 - s)):
        dx = dy s (1 + x (1 - s))
    """

    def forward(self, x):
        x = self._check(x)
        return select(x.dtype).silu_forward(x)

    def backward(self, dy, cache: SiLUCache):
        return select(dy.dtype).silu_backward(dy, cache)


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
        y = select(x.dtype).softmax(x, self.axis, mask)
        return y, SoftmaxCache(y=y)

    def backward(self, dy, cache: SoftmaxCache):
        return select(dy.dtype).softmax_backward(dy, cache.y, self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


def get_activation(name: str) -> Module:
    """``relu``, ``gelu`` (exact), ``gelu_tanh``, ``tanh``, ``sigmoid`` or ``silu``."""
    table = {
        "relu": ReLU,
        "gelu": GELU,
        "gelu_tanh": lambda: GELU(approximate="tanh"),
        "tanh": Tanh,
        "sigmoid": Sigmoid,
        "silu": SiLU,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]()
