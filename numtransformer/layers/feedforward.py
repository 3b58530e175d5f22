"""Position-wise feed-forward network of the Transformer."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import as_rng, check_float, check_positive_int
from ..module import Module
from .activations import get_activation
from .dropout import Dropout
from .linear import Linear


class FeedForwardCache(NamedTuple):
    linear1: tuple  # cache of h = x W1 + b1
    act: tuple  # cache of a = act(h)
    dropout: tuple  # cache of a' = dropout(a)
    linear2: tuple  # cache of y = a' W2 + b2


class PositionwiseFeedForward(Module):
    """FFN(x) = act(x W1 + b1) W2 + b2, applied to every position alike
    ("Attention Is All You Need", eq. 2), with dropout on the hidden layer as
    PyTorch's ``TransformerEncoderLayer`` does.

    Shapes: x (..., d_model), W1 (d_model, d_ff), W2 (d_ff, d_model).

    Forward:
        h  = x W1 + b1            (linear1)
        a  = act(h)               (relu, gelu, gelu_tanh, tanh or sigmoid)
        a' = dropout(a)
        y  = a' W2 + b2           (linear2)

    Backward (each line is the child's backward, in reverse order):
        da' = linear2.backward(dy)     (adds dW2, db2)
        da  = dropout.backward(da')
        dh  = act.backward(da)
        dx  = linear1.backward(dh)     (adds dW1, db1)
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0,
                 *, dtype=np.float32, rng=None):
        self.d_model = check_positive_int(self, "d_model", d_model)
        self.d_ff = check_positive_int(self, "d_ff", d_ff)
        rng = as_rng(rng)
        self.linear1 = Linear(d_model, d_ff, dtype=dtype, rng=rng)
        self.act = get_activation(activation)
        self.activation = activation
        self.dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        self.linear2 = Linear(d_ff, d_model, dtype=dtype, rng=rng)

    def forward(self, x):
        x = check_float(self, "x", x, dtype=self.linear1.W.dtype, min_ndim=1,
                        last_dim=self.d_model, last_dim_name="d_model")
        h, c1 = self.linear1.forward(x)
        a, ca = self.act.forward(h)
        a_drop, cd = self.dropout.forward(a)
        y, c2 = self.linear2.forward(a_drop)
        return y, FeedForwardCache(linear1=c1, act=ca, dropout=cd, linear2=c2)

    def backward(self, dy, cache: FeedForwardCache):
        da_drop = self.linear2.backward(dy, cache.linear2)
        da = self.dropout.backward(da_drop, cache.dropout)
        dh = self.act.backward(da, cache.act)
        return self.linear1.backward(dh, cache.linear1)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation!r}"
