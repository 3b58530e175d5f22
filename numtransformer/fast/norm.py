"""Fast kernels: layer normalisation in row blocks on the configured threads.

Same signature and cache as ``numtransformer.functional.layer_norm_*``.  The
rows are independent, so each block of rows runs the equations on one thread;
the row sums are einsum reductions (2-3x faster than ``.mean`` over short
rows, no temporary), x - mu is normalised in place into x_hat, dx_hat is
turned into dx in place, and mean(dx_hat) = (dy . gamma) / n and
mean(dx_hat * x_hat) = ((dy * x_hat) . gamma) / n are row dot products that
reuse dy * x_hat for dgamma.  The sums over rows (dgamma, dbeta) run after,
on one thread, as GEMVs.
"""

from __future__ import annotations

import numpy as np

from .._parallel import column_sum, parallel_rows
from ..functional.norm import LayerNormCache

__all__ = ["layer_norm_forward", "layer_norm_backward"]


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
