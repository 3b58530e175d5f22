"""Fast kernel: softmax cross-entropy in row blocks on the configured threads.

Same signature and cache as ``numtransformer.functional.cross_entropy_*``.
The forward never forms the (N, V) log p or q: one exp pass and one
normalising pass over the logits, the loss read at the targets,
        loss_i = (1 - eps) (log s_i - u_{i,y_i}) - eps (mean_c(u_ic) - log s_i)
(the reference's -sum_c q_ic log p_ic, expanded), and the backward is one
scaling pass (two with label smoothing).
"""

from __future__ import annotations

import numpy as np

from .._parallel import parallel_rows
from .activations import last_axis_max
from ..functional.losses import CrossEntropyCache

__all__ = ["cross_entropy_forward", "cross_entropy_backward"]


def cross_entropy_forward(logits, targets, ignore_index: int = -100,
                          label_smoothing: float = 0.0, reduction: str = "mean"):
    V = logits.shape[-1]
    y = targets.reshape(-1)
    valid = y != ignore_index
    y = np.where(valid, y, 0)
    n_valid = int(valid.sum())
    z = logits.reshape(-1, V)
    eps = label_smoothing
    p = np.empty_like(z)
    loss_i = np.empty(z.shape[0], z.dtype)

    def rows(r):  # the forward on a block of rows
        u = np.subtract(z[r], last_axis_max(z[r]), out=p[r])  # exp'd in place
        u_y = np.take_along_axis(u, y[r, None], axis=1)[:, 0]
        mean_u = u.mean(axis=1) if eps else None
        e = np.exp(u, out=u)
        s = e.sum(axis=1, keepdims=True)
        e /= s
        log_s = np.log(s[:, 0])
        nll = log_s - u_y  # -log p_{i,y_i}
        loss_r = nll if eps == 0.0 else (1.0 - eps) * nll - eps * (mean_u - log_s)
        loss_i[r] = np.where(valid[r], loss_r, 0)

    parallel_rows(rows, z.shape[0], V)  # rows are independent: one block per thread
    if reduction == "none":
        loss = loss_i.reshape(targets.shape)
    else:
        total = loss_i.sum(dtype=loss_i.dtype)
        loss = total / max(n_valid, 1) if reduction == "mean" else total
        loss = np.asarray(loss, dtype=logits.dtype)
    cache = CrossEntropyCache(probs=p, targets=y, valid=valid, n_valid=n_valid,
                              shape=logits.shape)
    return loss, cache


def cross_entropy_backward(dL, cache: CrossEntropyCache, label_smoothing: float = 0.0,
                           reduction: str = "mean"):
    p, y, valid = cache.probs, cache.targets, cache.valid
    N, V = p.shape
    eps = label_smoothing
    dL = np.asarray(dL)
    if reduction == "none":
        w = dL.astype(p.dtype, copy=False).reshape(-1) * valid
    else:
        scale = dL.item() / (max(cache.n_valid, 1) if reduction == "mean" else 1)
        w = valid * np.asarray(scale, dtype=p.dtype)
    dz = np.empty_like(p)

    def rows(r):
        d, at = dz[r], (np.arange(r.stop - r.start), y[r])  # (row, target) in the block
        if eps:
            np.subtract(p[r], eps / V, out=d)  # p - q, then scaled by w
            d[at] -= 1.0 - eps
            d *= w[r, None]
        else:  # one pass: p w, then the one-hot part at the targets
            np.multiply(p[r], w[r, None], out=d)
            d[at] -= w[r]

    parallel_rows(rows, N, V)
    return dz.reshape(cache.shape)
