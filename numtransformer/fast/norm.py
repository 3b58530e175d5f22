"""Fast kernels: layer normalisation in row blocks on the configured threads.

Same signature and cache as ``numtransformer.functional.layer_norm_*``.  The
rows are independent, so each block of rows runs the equations on one thread;
the row sums are einsum reductions (2-3x faster than ``.mean`` over short
rows, no temporary), x - mu is normalised in place into x_hat, dx_hat is
turned into dx in place, and mean(dx_hat) = (dy . gamma) / n and
mean(dx_hat * x_hat) = ((dy * x_hat) . gamma) / n are row dot products that
reuse dy * x_hat for dgamma.  The sums over rows (dgamma, dbeta) run after,
on one thread, as GEMVs.

RMS norm the same way: ms = (x . x) / n is an einsum row dot product, x * r
and gamma * x_hat are written into their fresh outputs, dx_hat is turned into
dx in place, and mean(dx_hat * x_hat) = ((dy * x_hat) . gamma) / n reuses
dy * x_hat for dgamma (a GEMV after the row blocks).  Measured, float32
forward + backward kernels on 1024 rows, two cores: 2.1 -> 0.9 ms at n = 256,
3.4 -> 2.7 ms at n = 688.
"""

from __future__ import annotations

import numpy as np

from .._parallel import column_sum, parallel_rows
from ..functional.norm import LayerNormCache, RMSNormCache

__all__ = ["layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward",
           "add_layer_norm_inplace"]


def layer_norm_forward(x, gamma, beta, eps: float):
    n = x.shape[-1]
    x2 = x.reshape(-1, n)  # one row per normalised group
    x_hat2 = np.empty_like(x2)
    rstd2 = np.empty((x2.shape[0], 1), x2.dtype)
    y2 = x_hat2 if gamma is None else np.empty_like(x2)

    def rows(r):  # the equations on a block of rows
        mu = np.einsum("ij->i", x2[r])[:, None] * (1.0 / n)
        xc = np.subtract(x2[r], mu, out=x_hat2[r])  # x - mu, normalised in place below
        var = np.einsum("ij,ij->i", xc, xc)[:, None] * (1.0 / n)
        rstd = np.sqrt(var + eps, out=rstd2[r])
        np.divide(1.0, rstd, out=rstd)
        xc *= rstd
        if gamma is not None:
            y = np.multiply(xc, gamma, out=y2[r])
            y += beta

    parallel_rows(rows, x2.shape[0], n)  # rows are independent: one block per thread
    cache = LayerNormCache(x_hat=x_hat2.reshape(x.shape),
                           rstd=rstd2.reshape(x.shape[:-1] + (1,)))
    return y2.reshape(x.shape), cache


def layer_norm_backward(dy, cache: LayerNormCache, gamma):
    x_hat = cache.x_hat
    n = x_hat.shape[-1]
    dy2, x_hat2 = dy.reshape(-1, n), x_hat.reshape(-1, n)
    rstd2 = cache.rstd.reshape(-1, 1)
    P = np.empty_like(dy2)  # dy * x_hat
    dx = np.empty_like(dy2)

    def rows(r):  # dx on a block of rows (the row means need only their own row)
        d, xh, p, o = dy2[r], x_hat2[r], P[r], dx[r]
        np.multiply(d, xh, out=p)
        if gamma is not None:
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
    dgamma = dbeta = None
    if gamma is not None:  # sums over rows: on one thread, in one order
        dgamma = column_sum(P)
        dbeta = column_sum(dy2)
    return dx.reshape(dy.shape), dgamma, dbeta


_ROWS_CHUNK = 1 << 17  # entries per step of the in-place inference kernel (L2-resident)


def add_layer_norm_inplace(y, x, gamma, beta, eps: float):
    """y = LayerNorm(x + y) in place in y, for inference (no cache): the residual add of
    a post-LN block and its norm on 2-D (N, n) arrays, on chunks of rows while they
    are in cache (row blocks on the threads):
        r = x + y;  mu = mean(r);  r -= mu;  std = sqrt(mean(r^2) + eps)
        y = gamma * (r / std) + beta
    The same math as ``layer_norm_forward(x + y)`` (float64 within 1e-15 relative).
    Returns y."""
    rows, n = y.shape
    step = max(1, _ROWS_CHUNK // max(n, 1))
    inv_n = y.dtype.type(1.0 / n)
    eps = y.dtype.type(eps)

    def block(r):
        for lo in range(r.start, r.stop, step):
            hi = min(lo + step, r.stop)
            yk = y[lo:hi]
            yk += x[lo:hi]
            mu = np.einsum("ij->i", yk)[:, None]
            mu *= inv_n
            yk -= mu
            var = np.einsum("ij,ij->i", yk, yk)[:, None]
            var *= inv_n
            var += eps
            std = np.sqrt(var, out=var)
            yk /= std
            if gamma is not None:
                yk *= gamma
                yk += beta

    parallel_rows(block, rows, n)
    return y


def rms_norm_forward(x, gamma, eps: float):
    n = x.shape[-1]
    x2 = x.reshape(-1, n)  # one row per normalised group
    x_hat2 = np.empty_like(x2)
    r2 = np.empty((x2.shape[0], 1), x2.dtype)
    y2 = x_hat2 if gamma is None else np.empty_like(x2)

    def rows(b):  # the equations on a block of rows
        xb = x2[b]
        ms = np.einsum("ij,ij->i", xb, xb)[:, None] * (1.0 / n)
        r = np.sqrt(ms + eps, out=r2[b])
        np.divide(1.0, r, out=r)
        x_hat = np.multiply(xb, r, out=x_hat2[b])
        if gamma is not None:
            np.multiply(x_hat, gamma, out=y2[b])

    parallel_rows(rows, x2.shape[0], n)  # rows are independent: one block per thread
    cache = RMSNormCache(x_hat=x_hat2.reshape(x.shape), r=r2.reshape(x.shape[:-1] + (1,)))
    return y2.reshape(x.shape), cache


def rms_norm_backward(dy, cache: RMSNormCache, gamma):
    x_hat = cache.x_hat
    n = x_hat.shape[-1]
    dy2, x_hat2 = dy.reshape(-1, n), x_hat.reshape(-1, n)
    r2 = cache.r.reshape(-1, 1)
    P = None if gamma is None else np.empty_like(dy2)  # dy * x_hat, for dgamma
    dx = np.empty_like(dy2)

    def rows(b):  # dx on a block of rows (the row mean needs only its own row)
        d, xh, o = dy2[b], x_hat2[b], dx[b]
        if gamma is not None:
            p = np.multiply(d, xh, out=P[b])
            mean_dx_hat_x_hat = np.einsum("ij,j->i", p, gamma) * (1.0 / n)
            np.multiply(d, gamma, out=o)  # dx_hat, turned into dx in place
        else:
            mean_dx_hat_x_hat = np.einsum("ij,ij->i", d, xh) * (1.0 / n)
            o[...] = d  # dx_hat = dy
        o -= xh * mean_dx_hat_x_hat[:, None]
        o *= r2[b]

    parallel_rows(rows, dy2.shape[0], n)
    dgamma = None if gamma is None else column_sum(P)  # the sum over rows: one thread, one order
    return dx.reshape(dy.shape), dgamma
