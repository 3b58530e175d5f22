"""Layer normalisation."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._parallel import column_sum, parallel_rows
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
    The code takes mean(dx_hat) = (dy . gamma) / n and mean(dx_hat * x_hat) =
    ((dy * x_hat) . gamma) / n as row dot products, reusing dy * x_hat for
    dgamma, and works in place on its own arrays: x - mu becomes x_hat,
    dx_hat becomes dx.  Rows are independent, so both passes run in blocks of
    rows on the configured threads; the sums over rows (dgamma, dbeta) run
    after, on one thread.

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
        n = math.prod(self.normalized_shape)
        stats_shape = x.shape[:x.ndim - len(self.normalized_shape)] + (1,) * len(self._axes)
        x2 = x.reshape(-1, n)  # one row per normalised group
        x_hat2 = np.empty_like(x2)
        rstd2 = np.empty((x2.shape[0], 1), x2.dtype)
        y2 = x_hat2 if self.gamma is None else np.empty_like(x2)

        def rows(r):  # the equations above on a block of rows
            # row sums with einsum: 2-3x faster than .mean/.sum over short rows, no temporary
            mu = np.einsum("ij->i", x2[r])[:, None] * (1.0 / n)
            xc = np.subtract(x2[r], mu, out=x_hat2[r])  # x - mu, normalised in place below
            var = np.einsum("ij,ij->i", xc, xc)[:, None] * (1.0 / n)
            rstd = np.sqrt(var + self.eps, out=rstd2[r])
            np.divide(1.0, rstd, out=rstd)
            xc *= rstd
            if self.gamma is not None:
                y = np.multiply(xc, self.gamma.data.reshape(n), out=y2[r])
                y += self.beta.data.reshape(n)

        parallel_rows(rows, x2.shape[0], n)  # rows are independent: one block per thread
        x_hat, rstd = x_hat2.reshape(x.shape), rstd2.reshape(stats_shape)
        y = y2.reshape(x.shape)
        return y, LayerNormCache(x_hat=x_hat, rstd=rstd)

    def backward(self, dy, cache: LayerNormCache):
        x_hat, rstd = cache.x_hat, cache.rstd
        n = math.prod(self.normalized_shape)
        dy2, x_hat2 = dy.reshape(-1, n), x_hat.reshape(-1, n)  # rows of the normalised groups
        rstd2 = rstd.reshape(-1, 1)
        gamma = None if self.gamma is None else self.gamma.data.reshape(n)
        P = np.empty_like(dy2)  # dy * x_hat
        dx = np.empty_like(dy2)

        def rows(r):  # dx on a block of rows (the row means need only their own row)
            d, xh, p, o = dy2[r], x_hat2[r], P[r], dx[r]
            np.multiply(d, xh, out=p)
            if gamma is not None:
                # row means with gamma (dx_hat = dy * gamma) as row dot products:
                mean_dx_hat = np.einsum("ij,j->i", d, gamma) * (1.0 / n)
                mean_dx_hat_x_hat = np.einsum("ij,j->i", p, gamma) * (1.0 / n)
                np.multiply(d, gamma, out=o)  # dx_hat, turned into dx in place
            else:
                mean_dx_hat = d.mean(axis=1)
                mean_dx_hat_x_hat = p.mean(axis=1)
                o[...] = d  # dx_hat = dy
            o -= mean_dx_hat[:, None]
            o -= xh * mean_dx_hat_x_hat[:, None]
            o *= rstd2[r]

        parallel_rows(rows, dy2.shape[0], n)
        if gamma is not None:  # sums over rows: on one thread, in one order
            self.gamma.grad += column_sum(P).reshape(self.normalized_shape)
            self.beta.grad += column_sum(dy2).reshape(self.normalized_shape)
        return dx.reshape(dy.shape)

    def extra_repr(self) -> str:
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"{shape}, eps={self.eps}, elementwise_affine={self.gamma is not None}"

