"""Losses."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._parallel import parallel_rows
from ._validate import check_float, check_probability
from .module import Module

__all__ = ["CrossEntropyLoss"]


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V) p = softmax of the logits
    targets: np.ndarray  # (N,) target ids, ignored positions replaced by 0
    valid: np.ndarray  # (N,) bool: the target is not ignore_index
    n_valid: int  # number of targets that count
    shape: tuple  # the logits' shape, restored in backward


class CrossEntropyLoss(Module):
    """Softmax cross-entropy over the last axis, fused with log-softmax.

    Shapes: logits z (..., V), targets y (...) integer ids in [0, V) or
    ``ignore_index``.  Rows are flattened to N = prod(...).

    Forward (eps = label_smoothing, valid_i = [y_i != ignore_index]):
        u_i      = z_i - max(z_i) ;  s_i = sum_c exp(u_ic)            (log-sum-exp)
        p_i      = exp(u_i) / s_i                                     softmax, kept for backward
        log p_i  = u_i - log s_i                                      read at y_i only
        q_i      = (1 - eps) onehot(y_i) + eps / V                    (smoothed target)
        loss_i   = -sum_c q_ic log p_ic
                 = (1 - eps) (-log p_{i,y_i}) + eps * mean_c(-log p_ic)
                 = (1 - eps) (log s_i - u_{i,y_i}) - eps (mean_c(u_ic) - log s_i)
        mean:      L = sum_i valid_i loss_i / n_valid,  n_valid = sum_i valid_i
        sum:       L = sum_i valid_i loss_i
        none:      L_i = valid_i loss_i

    Backward (dL is the upstream gradient: a scalar, or (...) for "none"):
        dz_i = (p_i - q_i) * valid_i * w_i
    with w_i = dL / n_valid (mean), dL (sum), dL_i (none).  The forward keeps
    p itself and never forms the (N, V) log p: one exp pass and one
    normalising pass over the logits, and backward is one scaling pass (two
    with label smoothing).  Rows are independent, so both run in blocks of
    rows on the configured threads.

    Matches ``torch.nn.CrossEntropyLoss(ignore_index, label_smoothing,
    reduction)`` with one deliberate difference: a batch whose targets are all
    ignored has loss 0 and zero gradient (PyTorch returns NaN for "mean").
    log p is finite for finite logits, so label smoothing never takes log(0).
    """

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0,
                 reduction: str = "mean"):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', "
                             f"got {reduction!r}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = check_probability(self, "label_smoothing", label_smoothing)
        self.reduction = reduction

    def forward(self, logits, targets):
        logits = check_float(self, "logits", logits, min_ndim=1)
        V = logits.shape[-1]
        if V == 0:
            raise ValueError("CrossEntropyLoss: logits has last dim 0, expected at least 1 class")
        if not isinstance(targets, np.ndarray) or not np.issubdtype(targets.dtype, np.integer):
            got = targets.dtype if isinstance(targets, np.ndarray) else type(targets).__name__
            raise TypeError(f"CrossEntropyLoss: targets must be an integer array, got {got}")
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"CrossEntropyLoss: targets has shape {targets.shape}, expected "
                             f"{logits.shape[:-1]} (the logits' shape without the class axis)")
        y = targets.reshape(-1)
        valid = y != self.ignore_index
        bad = valid & ((y < 0) | (y >= V))
        if bad.any():
            raise ValueError(f"CrossEntropyLoss: targets contains id {int(y[bad][0])}, expected "
                             f"ids in [0, {V}) or ignore_index={self.ignore_index}")
        y = np.where(valid, y, 0)
        n_valid = int(valid.sum())

        z = logits.reshape(-1, V)
        eps = self.label_smoothing
        p = np.empty_like(z)
        loss_i = np.empty(z.shape[0], z.dtype)

        def rows(r):  # the forward above on a block of rows
            u = np.subtract(z[r], z[r].max(axis=1, keepdims=True), out=p[r])  # exp'd in place
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
        if self.reduction == "none":
            loss = loss_i.reshape(targets.shape)
        else:
            total = loss_i.sum(dtype=loss_i.dtype)
            loss = total / max(n_valid, 1) if self.reduction == "mean" else total
            loss = np.asarray(loss, dtype=logits.dtype)
        cache = CrossEntropyCache(probs=p, targets=y, valid=valid, n_valid=n_valid,
                                  shape=logits.shape)
        return loss, cache

    def backward(self, dout=1.0, cache: CrossEntropyCache = None):
        p, y, valid = cache.probs, cache.targets, cache.valid
        N, V = p.shape
        eps = self.label_smoothing
        dout = np.asarray(dout)
        if self.reduction == "none":
            if dout.shape != cache.shape[:-1]:
                raise ValueError(f"CrossEntropyLoss.backward: dout has shape {dout.shape}, "
                                 f"expected {cache.shape[:-1]} (reduction='none')")
            w = dout.astype(p.dtype, copy=False).reshape(-1) * valid
        else:
            if dout.size != 1:
                raise ValueError(f"CrossEntropyLoss.backward: dout must be a scalar for "
                                 f"reduction={self.reduction!r}, got shape {dout.shape}")
            scale = dout.item() / (max(cache.n_valid, 1) if self.reduction == "mean" else 1)
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

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
                f"reduction={self.reduction!r}")
