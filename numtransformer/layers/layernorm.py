"""Layer normalisation."""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_float, check_float_dtype, check_normalized_shape
from ..functional.norm import LayerNormCache
from ..kernels import select
from ..module import Module, Parameter

__all__ = ["LayerNorm", "LayerNormCache"]


class LayerNorm(Module):
    """Layer normalisation (Ba, Kiros & Hinton, 2016) over the trailing dims S.

    Shapes: x (..., *S) with S = normalized_shape; gamma, beta (*S,).
    Let n = prod(S) and the mean/sum below run over the axes of S.

    Forward:
        mu    = mean(x)
        var   = mean((x - mu)^2)              biased (divide by n), as PyTorch
        rstd  = 1 / sqrt(var + eps)           eps inside the square root
        x_hat = (x - mu) * rstd
        y     = gamma * x_hat + beta

    Backward:
        dgamma += sum over the leading dims of dy * x_hat
        dbeta  += sum over the leading dims of dy
        dx_hat  = dy * gamma
        dx      = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
    The last line is the Jacobian rstd (I - 1/n - x_hat x_hat^T / n) of
    x_hat applied to dx_hat; ``functional.layer_norm_backward`` derives it.
    The kernels work on rows of n = prod(S) features: the trailing dims S are
    flattened into one axis on the way in and restored on the way out.

    ``elementwise_affine=False`` drops gamma and beta (y = x_hat).
    Init as PyTorch: gamma = 1, beta = 0.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 *, dtype=np.float32):
        normalized_shape = check_normalized_shape(self, normalized_shape)
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"LayerNorm: eps must be > 0, got {eps}")
        self.normalized_shape = normalized_shape
        self.eps = eps
        dtype = check_float_dtype(self, dtype)
        self.gamma = Parameter(np.ones(normalized_shape, dtype)) if elementwise_affine else None
        self.beta = Parameter(np.zeros(normalized_shape, dtype)) if elementwise_affine else None
        self.dtype = dtype

    def forward(self, x):
        k = len(self.normalized_shape)
        x = check_float(self, "x", x, dtype=self.dtype, min_ndim=k)
        if x.shape[-k:] != self.normalized_shape:
            raise ValueError(f"LayerNorm: x has trailing shape {x.shape[-k:]}, "
                             f"expected normalized_shape={self.normalized_shape}")
        n = math.prod(self.normalized_shape)
        lead = x.shape[:x.ndim - k]
        gamma, beta = (None, None) if self.gamma is None else (self.gamma.data.reshape(n),
                                                              self.beta.data.reshape(n))
        y, cache = select(x.dtype).layer_norm_forward(x.reshape(*lead, n), gamma, beta, self.eps)
        # the cache in x's shape (rstd: one per normalised group, broadcastable)
        cache = LayerNormCache(x_hat=cache.x_hat.reshape(x.shape),
                               rstd=cache.rstd.reshape(lead + (1,) * k))
        return y.reshape(x.shape), cache

    def backward(self, dy, cache: LayerNormCache):
        n = math.prod(self.normalized_shape)
        lead = dy.shape[:dy.ndim - len(self.normalized_shape)]
        rows = LayerNormCache(x_hat=cache.x_hat.reshape(*lead, n), rstd=cache.rstd.reshape(*lead, 1))
        gamma = None if self.gamma is None else self.gamma.data.reshape(n)
        dx, dgamma, dbeta = select(dy.dtype).layer_norm_backward(dy.reshape(*lead, n), rows, gamma)
        if self.gamma is not None and self.gamma.requires_grad:
            self.gamma.grad += dgamma.reshape(self.normalized_shape)
        if self.beta is not None and self.beta.requires_grad:
            self.beta.grad += dbeta.reshape(self.normalized_shape)
        return dx.reshape(dy.shape)

    def extra_repr(self) -> str:
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"{shape}, eps={self.eps}, elementwise_affine={self.gamma is not None}"

