"""Position-wise feed-forward networks of the Transformer: the 2017 one and
LLaMA's SwiGLU."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._parallel import parallel_matmul
from .._validate import as_rng, check_float, check_positive_int
from ..fast.activations import gelu_inplace
from ..functional.activations import SwiGLUCache
from ..inference import is_inference_mode
from ..kernels import select
from ..module import Module
from .activations import get_activation
from .dropout import Dropout
from .linear import Linear

__all__ = ["PositionwiseFeedForward", "FeedForwardCache", "SwiGLUFeedForward",
           "SwiGLUFeedForwardCache", "SwiGLUCache"]


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
                 *, bias: bool = True, dtype=np.float32, rng=None):
        self.d_model = check_positive_int(self, "d_model", d_model)
        self.d_ff = check_positive_int(self, "d_ff", d_ff)
        rng = as_rng(rng)
        self.linear1 = Linear(d_model, d_ff, bias=bool(bias), dtype=dtype, rng=rng)
        self.act = get_activation(activation)
        self.activation = activation
        self.dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        self.linear2 = Linear(d_ff, d_model, bias=bool(bias), dtype=dtype, rng=rng)

    def forward(self, x):
        x = check_float(self, "x", x, dtype=self.linear1.W.dtype, min_ndim=1,
                        last_dim=self.d_model, last_dim_name="d_model")
        h, c1 = self.linear1.forward(x)
        a, ca = self.act.forward(h)
        a_drop, cd = self.dropout.forward(a)
        y, c2 = self.linear2.forward(a_drop)
        return y, FeedForwardCache(linear1=c1, act=ca, dropout=cd, linear2=c2)

    def __call__(self, x):
        """FFN(x), the output alone.  In ``inference_mode()``, with plain Linear layers,
        a relu or exact gelu activation and no active dropout, the hidden layer is
        worked on in place: h = x W1 (the GEMM's own output), then h = act(h + b1) on
        cache-sized chunks of rows (``fast.activations.gelu_inplace``; the bias add,
        Phi and the product while a chunk is in cache), then y = h W2 + b2.  The same
        function as ``forward`` (float64: the same bits), with no cache and no second
        (N, d_ff) array."""
        if not (is_inference_mode() and self.activation in ("gelu", "relu")
                and type(self.linear1) is Linear and type(self.linear2) is Linear
                and not (self.dropout.training and self.dropout.p > 0)):
            return super().__call__(x)
        W1 = self.linear1.W.data
        b1 = None if self.linear1.b is None else self.linear1.b.data
        x = check_float(self, "x", x, dtype=W1.dtype, min_ndim=1, last_dim=self.d_model,
                        last_dim_name="d_model")
        kernels = select(x.dtype)
        h = parallel_matmul(x.reshape(-1, self.d_model), W1)
        if self.activation == "gelu":
            gelu_inplace(h, b1)
        else:
            if b1 is not None:
                h += b1
            np.maximum(h, 0, out=h)
        y, _ = kernels.linear_forward(h, self.linear2.W.data,
                                      None if self.linear2.b is None else self.linear2.b.data)
        return y.reshape(x.shape)

    def backward(self, dy, cache: FeedForwardCache):
        da_drop = self.linear2.backward(dy, cache.linear2)
        da = self.dropout.backward(da_drop, cache.dropout)
        dh = self.act.backward(da, cache.act)
        return self.linear1.backward(dh, cache.linear1)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation!r}"


class SwiGLUFeedForwardCache(NamedTuple):
    gate_proj: tuple  # cache of g = x W_gate + b_gate
    up_proj: tuple  # cache of u = x W_up + b_up
    swiglu: SwiGLUCache  # cache of h = silu(g) * u
    dropout: tuple  # cache of h' = dropout(h)
    down_proj: tuple  # cache of y = h' W_down + b_down


class SwiGLUFeedForward(Module):
    """The SwiGLU feed-forward network (Shazeer, 2020, "GLU Variants Improve
    Transformer", sec. 2: FFN_SwiGLU(x, W, V, W_2) = (Swish_1(x W) * x V) W_2),
    LLaMA's MLP, applied to every position alike.

    Shapes: x (..., d_model); W_gate, W_up (d_model, d_ff); W_down (d_ff, d_model).
    No biases by default (the paper's and LLaMA's); ``bias=True`` gives each
    projection one.

    Forward:
        g  = x W_gate + b_gate          (gate_proj)
        u  = x W_up + b_up              (up_proj)
        a  = silu(g) = g sigmoid(g)     the gate
        h  = a * u                      elementwise
        h' = dropout(h)                 (none in LLaMA: dropout=0.0, the default)
        y  = h' W_down + b_down         (down_proj)

    Backward (each line a child's backward or a kernel, in reverse order):
        dh'  = down_proj.backward(dy)           (adds dW_down, db_down)
        dh   = dropout.backward(dh')
        du   = dh * a                           the product rule on h = a * u: each
        da   = dh * u                           factor gets dh times the other
        dg   = da s (1 + g (1 - s))             silu', with s = sigmoid(g)
        dx   = gate_proj.backward(dg)           x feeds both projections, so the
             + up_proj.backward(du)             gradients of the two paths add
                                                (adds dW_gate, db_gate, dW_up, db_up)
    The middle three lines are ``functional.swiglu_backward``.

    The gate and up projections stay two GEMMs: one GEMM against
    [W_gate | W_up] would need the two weights (and dg, du) concatenated on
    every call, and measured slower (float32, 1024 rows, 256 -> 688, the
    gate and up GEMMs forward and backward: 30-31 ms against 21-25 ms).

    Parameter names map onto Hugging Face's ``LlamaMLP``: ``gate_proj.W`` is
    ``gate_proj.weight`` transposed, ``up_proj.W`` is ``up_proj.weight``
    transposed, ``down_proj.W`` is ``down_proj.weight`` transposed (our
    ``Linear`` stores W as (D_in, D_out), torch's weight is (D_out, D_in));
    HF's ``intermediate_size`` is d_ff.  Init as ``Linear``:
    U(-1/sqrt(D_in), 1/sqrt(D_in)).
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0,
                 *, dtype=np.float32, rng=None):
        self.d_model = check_positive_int(self, "d_model", d_model)
        self.d_ff = check_positive_int(self, "d_ff", d_ff)
        rng = as_rng(rng)
        bias = bool(bias)
        self.gate_proj = Linear(d_model, d_ff, bias=bias, dtype=dtype, rng=rng)
        self.up_proj = Linear(d_model, d_ff, bias=bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        self.down_proj = Linear(d_ff, d_model, bias=bias, dtype=dtype, rng=rng)

    def forward(self, x):
        x = check_float(self, "x", x, dtype=self.gate_proj.W.dtype, min_ndim=1,
                        last_dim=self.d_model, last_dim_name="d_model")
        g, c_gate = self.gate_proj.forward(x)
        u, c_up = self.up_proj.forward(x)
        h, c_glu = select(x.dtype).swiglu_forward(g, u)
        h_drop, c_drop = self.dropout.forward(h)
        y, c_down = self.down_proj.forward(h_drop)
        return y, SwiGLUFeedForwardCache(gate_proj=c_gate, up_proj=c_up, swiglu=c_glu,
                                         dropout=c_drop, down_proj=c_down)

    def backward(self, dy, cache: SwiGLUFeedForwardCache):
        dh_drop = self.down_proj.backward(dy, cache.down_proj)
        dh = self.dropout.backward(dh_drop, cache.dropout)
        dg, du = select(dy.dtype).swiglu_backward(dh, cache.swiglu)
        return self.gate_proj.backward(dg, cache.gate_proj) + self.up_proj.backward(du, cache.up_proj)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, bias={self.gate_proj.b is not None}"
