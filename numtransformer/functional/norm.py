"""Reference kernels: layer normalisation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["LayerNormCache", "layer_norm_forward", "layer_norm_backward"]


class LayerNormCache(NamedTuple):
    x_hat: np.ndarray  # (..., n) the normalised input
    rstd: np.ndarray  # (..., 1) 1 / sqrt(var + eps), per row


def layer_norm_forward(x, gamma, beta, eps: float):
    """Layer normalisation (Ba, Kiros & Hinton, 2016) over the last axis.

    Shapes: x (..., n); gamma, beta (n,) or both None (no affine part).
    Means run over the last axis (the n features of one position).

        mu    = mean(x)
        var   = mean((x - mu)^2)            biased (divide by n), as PyTorch
        rstd  = 1 / sqrt(var + eps)         eps inside the square root
        x_hat = (x - mu) * rstd
        y     = gamma * x_hat + beta        (y = x_hat without gamma and beta)
    Returns (y, LayerNormCache).
    """
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    x_hat = xc * rstd
    y = x_hat if gamma is None else gamma * x_hat + beta
    return y, LayerNormCache(x_hat=x_hat, rstd=rstd)


def layer_norm_backward(dy, cache: LayerNormCache, gamma):
    """The gradients of layer norm.  Returns (dx, dgamma, dbeta) (None, None
    without gamma).

        dgamma = sum over the leading dims of dy * x_hat
        dbeta  = sum over the leading dims of dy
        dx_hat = dy * gamma
        dx     = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))

    The last line, for one row of n features.  x_hat = (x - mu) rstd with
    d mu / dx_j = 1/n and d var / dx_j = 2 (x_j - mu) / n (the term through mu,
    -2/n sum_i (x_i - mu), is zero because the centred x sums to 0), so
    d rstd / dx_j = -rstd^3 (x_j - mu) / n = -rstd^2 x_hat_j / n, and
        d x_hat_i / d x_j = rstd ([i = j] - 1/n) + (x_i - mu) d rstd / dx_j
                          = rstd ([i = j] - 1/n - x_hat_i x_hat_j / n),
    the Jacobian rstd (I - 1 1^T / n - x_hat x_hat^T / n) (1 1^T / n: the n x n
    matrix of 1/n; the path through mu directly gives its -1/n, the path
    through mu into var vanishes as above).  It is symmetric, so
        dx_j = sum_i dx_hat_i d x_hat_i / d x_j
             = rstd (dx_hat_j - mean(dx_hat) - x_hat_j mean(dx_hat * x_hat)).
    """
    x_hat, rstd = cache.x_hat, cache.rstd
    lead_axes = tuple(range(dy.ndim - 1))
    if gamma is None:
        dgamma = dbeta = None
        dx_hat = dy
    else:
        dgamma = (dy * x_hat).sum(axis=lead_axes)
        dbeta = dy.sum(axis=lead_axes)
        dx_hat = dy * gamma
    mean_dx_hat = dx_hat.mean(axis=-1, keepdims=True)
    mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=-1, keepdims=True)
    dx = rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)
    return dx, dgamma, dbeta
