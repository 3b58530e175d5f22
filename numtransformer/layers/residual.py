"""The residual sublayer connection, written once: pre-norm and post-norm."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import check_float
from ..module import Module
from .dropout import Dropout

__all__ = ["SublayerConnection", "SublayerConnectionCache"]


class SublayerConnectionCache(NamedTuple):
    norm: tuple | None  # pre-norm:  n = norm(x)
    sublayer: tuple  # s = F(n or x, *args)
    dropout: tuple  # d = dropout(s)
    residual_norm: tuple | None  # post-norm: y = norm(x + d)


class SublayerConnection(Module):
    """A sublayer F in a residual connection with a norm ("Attention Is All You
    Need", sec. 3.1 and 5.4; pre-norm: Xiong et al., 2020; the Annotated
    Transformer's SublayerConnection).

    F is any Module: self-attention, cross-attention (given the memory and
    masks), the position-wise FFN, a Linear.  Extra inputs ``*args`` and
    options ``**kwargs`` go to F after the (normalised) x; F's output must have
    x's shape.

    Shapes: x (..., D) and y (..., D); the norm acts over the last axis.

    Forward, pre-norm (norm_first=True):
        n = norm(x)
        s = F(n, *args)
        d = dropout(s)
        y = x + d
    Forward, post-norm (norm_first=False, the paper's):
        s = F(x, *args)
        d = dropout(s)
        r = x + d
        y = norm(r)

    Backward.  x reaches y on two paths, the identity and the branch through F,
    so its gradient is the sum of both (the residual's gradient splits:
    dx = d(identity) + d(branch)).  F's backward returns the gradient of its
    first input and, when it has further float inputs (cross-attention's key
    and value), theirs after it: (dn, *dargs).
    Pre-norm (y = x + d: dy reaches x unchanged and through the branch):
        ds         = dropout.backward(dy)
        dn, *dargs = F.backward(ds)
        dx         = dy + norm.backward(dn)
    Post-norm (the norm comes last, so the gradient first goes through it):
        dr         = norm.backward(dy)
        ds         = dropout.backward(dr)
        dxF, *dargs = F.backward(ds)
        dx         = dr + dxF
    backward returns dx, or (dx, *dargs) when F returns several gradients
    (cross-attention over a memory m passed as key and value: (dx, dkey, dvalue),
    and dm = dkey + dvalue).  Parameter gradients of F and the norm are added
    to their ``.grad``.

    The norm comes from the factory (``layers.norms.make_norm``), so one
    argument chooses it in every layer.  The cache records which form ran
    (``norm`` set for pre-norm, ``residual_norm`` for post-norm) and backward
    follows the cache.

    Ownership.  The connection holds F, the norm and the dropout as its
    children ``sublayer``, ``norm``, ``dropout``.  The Transformer layers do not
    store connections: they build one on demand around their own ``self_attn``,
    ``norm1``, ``dropout1`` (...), so parameter names stay ``norm1.gamma`` and a
    module replaced after construction is the one used.
    """

    def __init__(self, sublayer: Module, norm: Module, dropout: Dropout,
                 norm_first: bool = False):
        for arg, value, cls in (("sublayer", sublayer, Module), ("norm", norm, Module),
                                ("dropout", dropout, Dropout)):
            if not isinstance(value, cls):
                raise TypeError(f"SublayerConnection: {arg} must be a {cls.__name__}, got "
                                f"{type(value).__name__}")
        self.sublayer, self.norm, self.dropout = sublayer, norm, dropout
        self.norm_first = bool(norm_first)

    @property
    def dtype(self):
        return self.norm.dtype

    def forward(self, x, *args, **kwargs):
        x = check_float(self, "x", x, dtype=self.dtype, min_ndim=1)
        for i, a in enumerate(args):  # further float inputs of F: dtype and NaN/inf
            if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                check_float(self, f"args[{i}]", a, dtype=self.dtype)
        if self.norm_first:
            n, c_norm = self.norm.forward(x)
            s, c_sub = self.sublayer.forward(n, *args, **kwargs)
            self._check_branch(s, x)
            d, c_drop = self.dropout.forward(s)
            y = x + d
            return y, SublayerConnectionCache(c_norm, c_sub, c_drop, None)
        s, c_sub = self.sublayer.forward(x, *args, **kwargs)
        self._check_branch(s, x)
        d, c_drop = self.dropout.forward(s)
        r = x + d
        y, c_rnorm = self.norm.forward(r)
        return y, SublayerConnectionCache(None, c_sub, c_drop, c_rnorm)

    def backward(self, dy, cache: SublayerConnectionCache):
        if cache.norm is not None:  # pre-norm
            ds = self.dropout.backward(dy, cache.dropout)
            dn, dargs = _first_and_rest(self.sublayer.backward(ds, cache.sublayer))
            dx = dy + self.norm.backward(dn, cache.norm)
        else:  # post-norm
            dr = self.norm.backward(dy, cache.residual_norm)
            ds = self.dropout.backward(dr, cache.dropout)
            dxF, dargs = _first_and_rest(self.sublayer.backward(ds, cache.sublayer))
            dx = dr + dxF
        return (dx, *dargs) if dargs else dx

    def apply(self, x, fn=None):
        """The connection around ``fn`` (default: the sublayer) for inference: no
        dropout, no cache.  y = x + fn(norm(x)) (pre-norm) or norm(x + fn(x))
        (post-norm).  Incremental decoding passes the attention's ``decode``
        with its KV cache as ``fn``."""
        fn = self.sublayer if fn is None else fn
        if self.norm_first:
            return x + fn(self.norm(x))
        return self.norm(x + fn(x))

    def _check_branch(self, s, x):
        if not isinstance(s, np.ndarray):
            raise TypeError(f"SublayerConnection: the sublayer {type(self.sublayer).__name__} "
                            f"returned a {type(s).__name__}, expected one array of x's shape "
                            f"(need_weights and other multi-output options do not apply here)")
        if s.shape != x.shape:
            raise ValueError(f"SublayerConnection: the sublayer {type(self.sublayer).__name__} "
                             f"returned shape {s.shape}, expected x's shape {x.shape} (the "
                             f"residual adds them)")

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


def _first_and_rest(grads):
    """F.backward's result as (gradient of F's first input, gradients of the others)."""
    if isinstance(grads, tuple):
        return grads[0], grads[1:]
    return grads, ()
