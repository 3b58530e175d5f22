"""Affine map."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._parallel import add_rows, column_sum
from .._validate import as_rng, check_float, check_float_dtype, check_positive_int
from ..module import Module, Parameter


class LinearCache(NamedTuple):
    x: np.ndarray  # (N, D_in): the input with its leading dims flattened
    lead_shape: tuple  # the leading dims of the input, restored on the way back


class Linear(Module):
    """Affine map over the last axis, any leading dims.

    Shapes: x (..., D_in), W (D_in, D_out), b (D_out,), y (..., D_out).
    W is stored as (D_in, D_out) so the code reads as the equation; PyTorch's
    ``nn.Linear.weight`` is its transpose.

    Forward (leading dims flattened into N rows, one GEMM):
        y = x W + b

    Backward (dy has the shape of y):
        dW += x^T dy           (D_in, D_out): sum over the N rows
        db += sum_n dy_n       (D_out,)
        dx  = dy W^T           (..., D_in)

    Init as PyTorch: W, b ~ U(-1/sqrt(D_in), 1/sqrt(D_in)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 *, dtype=np.float32, rng=None):
        self.in_features = check_positive_int(self, "in_features", in_features)
        self.out_features = check_positive_int(self, "out_features", out_features)
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        bound = 1.0 / math.sqrt(in_features)
        self.W = Parameter(rng.uniform(-bound, bound, (in_features, out_features)).astype(dtype))
        self.b = (Parameter(rng.uniform(-bound, bound, out_features).astype(dtype))
                  if bias else None)

    def forward(self, x):
        x = check_float(self, "x", x, dtype=self.W.dtype, min_ndim=1,
                        last_dim=self.in_features, last_dim_name="in_features")
        lead_shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.W.data
        if self.b is not None:
            add_rows(y, self.b.data)
        return y.reshape(*lead_shape, self.out_features), LinearCache(x=x2, lead_shape=lead_shape)

    def backward(self, dy, cache: LinearCache):
        dy2 = dy.reshape(-1, self.out_features)
        self.W.grad += cache.x.T @ dy2
        if self.b is not None:
            self.b.grad += column_sum(dy2)
        dx = dy2 @ self.W.data.T
        return dx.reshape(*cache.lead_shape, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.b is not None}")


class TiedLinearCache(NamedTuple):
    x: np.ndarray  # (N, D_in) rows of the input
    lead_shape: tuple


class TiedLinear(Module):
    """An output projection that reuses an embedding table as its weight
    ("weight tying", Press & Wolf, 2017; "Attention Is All You Need", sec. 3.4).

    Shapes: x (..., D), E (V, D) the shared table (the *same* Parameter object
    as the embedding's W), optional b (V,), y (..., V).

    Forward:
        y = x E^T + b
    Backward:
        dE += dy^T x        (V, D): added to the shared parameter's grad, so E's
                            gradient is the sum from both uses
        db += sum_n dy_n
        dx  = dy E
    """

    def __init__(self, weight: Parameter, bias: bool = False):
        if not isinstance(weight, Parameter) or weight.data.ndim != 2:
            raise TypeError("TiedLinear: weight must be a 2-D Parameter (the embedding table)")
        self.out_features, self.in_features = weight.shape
        self.E = weight
        self.b = Parameter(np.zeros(self.out_features, weight.dtype)) if bias else None

    def forward(self, x):
        x = check_float(self, "x", x, dtype=self.E.dtype, min_ndim=1,
                        last_dim=self.in_features, last_dim_name="embedding_dim")
        lead_shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.E.data.T
        if self.b is not None:
            add_rows(y, self.b.data)
        return y.reshape(*lead_shape, self.out_features), TiedLinearCache(x2, lead_shape)

    def backward(self, dy, cache: TiedLinearCache):
        dy2 = dy.reshape(-1, self.out_features)
        self.E.grad += dy2.T @ cache.x
        if self.b is not None:
            self.b.grad += column_sum(dy2)
        return (dy2 @ self.E.data).reshape(*cache.lead_shape, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, tied, "
                f"bias={self.b is not None}")
