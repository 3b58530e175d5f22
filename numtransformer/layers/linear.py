"""Affine map."""

from __future__ import annotations

import math
import numpy as np

from .._init import uniform
from .._validate import as_rng, check_float, check_float_dtype, check_positive_int
from ..functional.linear import LinearCache
from ..kernels import select
from ..module import Module, Parameter

TiedLinearCache = LinearCache  # the same record: (x rows, leading shape)


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
        self.W = Parameter(uniform(rng, -bound, bound, (in_features, out_features), dtype))
        self.b = (Parameter(uniform(rng, -bound, bound, out_features, dtype))
                  if bias else None)

    def forward(self, x):
        x = check_float(self, "x", x, dtype=self.W.dtype, min_ndim=1,
                        last_dim=self.in_features, last_dim_name="in_features")
        b = None if self.b is None else self.b.data
        return select(x.dtype).linear_forward(x, self.W.data, b)

    def backward(self, dy, cache: LinearCache):
        K = select(dy.dtype)
        if not self.W.requires_grad and (self.b is None or not self.b.requires_grad):
            return K.frozen_linear_backward(dy, cache, self.W.data)  # dW, db not formed
        dx, dW, db = K.linear_backward(dy, cache, self.W.data, self.b is not None)
        if self.W.requires_grad:  # a frozen parameter's grad stays zero
            self.W.grad += dW
        if self.b is not None and self.b.requires_grad:
            self.b.grad += db
        return dx

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.b is not None}")


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
        b = None if self.b is None else self.b.data
        return select(x.dtype).tied_linear_forward(x, self.E.data, b)

    def backward(self, dy, cache: LinearCache):
        K = select(dy.dtype)
        if not self.E.requires_grad and (self.b is None or not self.b.requires_grad):
            # y = x E^T + b: dx = dy E, and no (V, D) dE formed for a frozen table
            return K.frozen_linear_backward(dy, cache, self.E.data.T)
        dx, dE, db = K.tied_linear_backward(dy, cache, self.E.data, self.b is not None)
        if self.E.requires_grad:  # a frozen parameter's grad stays zero
            self.E.grad += dE
        if self.b is not None and self.b.requires_grad:
            self.b.grad += db
        return dx

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, tied, "
                f"bias={self.b is not None}")
