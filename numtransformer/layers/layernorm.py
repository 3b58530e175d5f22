"""Layer normalisation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import check_float, check_float_dtype
from ..module import Module, Parameter


class LayerNormCache(NamedTuple):
    x_hat: np.ndarray  # (..., *S) the normalised input
    rstd: np.ndarray  # (..., 1...) 1 / sqrt(var + eps), per normalised group


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
    (the last line is d/dx of x_hat, using d(mu)/dx = 1/n and
    d(rstd)/dx = -rstd^3 (x - mu) / n, collected into means.)

    ``elementwise_affine=False`` drops gamma and beta (y = x_hat).
    Init as PyTorch: gamma = 1, beta = 0.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 *, dtype=np.float32):
        if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
            normalized_shape = (int(normalized_shape),)
        try:
            normalized_shape = tuple(int(s) for s in normalized_shape)
        except TypeError as exc:
            raise TypeError(f"LayerNorm: normalized_shape must be an int or a tuple of ints, "
                            f"got {normalized_shape!r}") from exc
        if not normalized_shape or any(s < 1 for s in normalized_shape):
            raise ValueError(f"LayerNorm: normalized_shape must be positive sizes, "
                             f"got {normalized_shape}")
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"LayerNorm: eps must be > 0, got {eps}")
        self.normalized_shape = normalized_shape
        self.eps = eps
        dtype = check_float_dtype(self, dtype)
        self.gamma = Parameter(np.ones(normalized_shape, dtype)) if elementwise_affine else None
        self.beta = Parameter(np.zeros(normalized_shape, dtype)) if elementwise_affine else None
        self.dtype = dtype
        self._axes = tuple(range(-len(normalized_shape), 0))

    def forward(self, x):
        k = len(self.normalized_shape)
        x = check_float(self, "x", x, dtype=self.dtype, min_ndim=k)
        if x.shape[-k:] != self.normalized_shape:
            raise ValueError(f"LayerNorm: x has trailing shape {x.shape[-k:]}, "
                             f"expected normalized_shape={self.normalized_shape}")
        mu = x.mean(axis=self._axes, keepdims=True)
        xc = x - mu
        var = np.mean(xc * xc, axis=self._axes, keepdims=True)
        rstd = 1.0 / np.sqrt(var + self.eps)
        x_hat = xc * rstd
        y = x_hat if self.gamma is None else self.gamma.data * x_hat + self.beta.data
        return y, LayerNormCache(x_hat=x_hat, rstd=rstd)

    def backward(self, dy, cache: LayerNormCache):
        x_hat, rstd = cache.x_hat, cache.rstd
        lead = tuple(range(dy.ndim - len(self.normalized_shape)))
        if self.gamma is not None:
            self.gamma.grad += np.sum(dy * x_hat, axis=lead)
            self.beta.grad += np.sum(dy, axis=lead)
            dx_hat = dy * self.gamma.data
        else:
            dx_hat = dy
        mean_dx_hat = dx_hat.mean(axis=self._axes, keepdims=True)
        mean_dx_hat_x_hat = np.mean(dx_hat * x_hat, axis=self._axes, keepdims=True)
        return rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)

    def extra_repr(self) -> str:
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"{shape}, eps={self.eps}, elementwise_affine={self.gamma is not None}"

