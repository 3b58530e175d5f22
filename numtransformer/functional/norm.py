"""Reference kernels: layer normalisation and RMS normalisation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["LayerNormCache", "layer_norm_forward", "layer_norm_backward",
           "RMSNormCache", "rms_norm_forward", "rms_norm_backward"]


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


class RMSNormCache(NamedTuple):
    x_hat: np.ndarray  # (..., n) the normalised input x * r
    r: np.ndarray  # (..., 1) 1 / sqrt(mean(x^2) + eps), per row


def rms_norm_forward(x, gamma, eps: float):
    """Root mean square layer normalisation (Zhang & Sennrich, 2019, "Root Mean
    Square Layer Normalization", eq. 4, with eps added to the mean square as
    LLaMA and torch.nn.RMSNorm do; the paper's formula has none) over the last
    axis.

    Shapes: x (..., n); gamma (n,) or None (no affine part).  The mean runs
    over the last axis.  No centring and no bias: only the scale is
    normalised.

        ms    = mean(x^2)                   the mean square of the row
        r     = 1 / sqrt(ms + eps)          eps inside the square root
        x_hat = x * r
        y     = gamma * x_hat               (y = x_hat without gamma)

    The work is in x's dtype throughout (float32 in float32, float64 in
    float64).  Hugging Face's LlamaRMSNorm differs for inputs narrower than
    float32: it casts x to float32, computes ms and rsqrt(ms + eps) and
    x * rsqrt(...) in float32, casts that product back to the input dtype, and
    only then multiplies by the weight (weight * x_hat.to(input_dtype)).  For
    float32 inputs the two agree step for step.
    Returns (y, RMSNormCache).
    """
    ms = (x * x).mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(ms + eps)
    x_hat = x * r
    y = x_hat if gamma is None else gamma * x_hat
    return y, RMSNormCache(x_hat=x_hat, r=r)


def rms_norm_backward(dy, cache: RMSNormCache, gamma):
    """The gradients of RMS norm.  Returns (dx, dgamma) (dgamma None without gamma).

        dgamma = sum over the leading dims of dy * x_hat
        dx_hat = dy * gamma
        dx     = r * (dx_hat - x_hat * mean(dx_hat * x_hat))

    The first line: gamma is broadcast over the rows, so its gradient sums
    them.  The last line, for one row of n features.  With
    ms = (1/n) sum_k x_k^2, d ms / dx_j = 2 x_j / n, so
        d r / dx_j = -1/2 (ms + eps)^(-3/2) 2 x_j / n = -r^3 x_j / n = -r^2 x_hat_j / n
    and, by the product rule on x_hat_i = x_i r,
        d x_hat_i / d x_j = r [i = j] + x_i d r / dx_j
                          = r ([i = j] - x_hat_i x_hat_j / n),
    the Jacobian r (I - x_hat x_hat^T / n).  It is symmetric, so
        dx_j = sum_i dx_hat_i d x_hat_i / d x_j
             = r (dx_hat_j - x_hat_j mean(dx_hat * x_hat)).
    There is no mean(dx_hat) term, unlike layer norm: layer norm subtracts the
    row mean mu from x, and the path through mu (d mu / dx_j = 1/n for every
    j) gives its Jacobian the extra -1 1^T / n; RMS norm does not centre, so
    that path and its term do not exist (and x_hat is not orthogonal to 1).
    """
    x_hat, r = cache.x_hat, cache.r
    lead_axes = tuple(range(dy.ndim - 1))
    if gamma is None:
        dgamma = None
        dx_hat = dy
    else:
        dgamma = (dy * x_hat).sum(axis=lead_axes)
        dx_hat = dy * gamma
    mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=-1, keepdims=True)
    dx = r * (dx_hat - x_hat * mean_dx_hat_x_hat)
    return dx, dgamma
