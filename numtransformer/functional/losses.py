"""Reference kernels: softmax cross-entropy with label smoothing and ignore_index."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["CrossEntropyCache", "cross_entropy_forward", "cross_entropy_backward"]


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V) p = softmax of the logits
    targets: np.ndarray  # (N,) target ids, ignored positions replaced by 0
    valid: np.ndarray  # (N,) bool: the target is not ignore_index
    n_valid: int  # number of targets that count
    shape: tuple  # the logits' shape, restored in backward


def cross_entropy_forward(logits, targets, ignore_index: int = -100,
                          label_smoothing: float = 0.0, reduction: str = "mean"):
    """Softmax cross-entropy over the last axis, fused with log-softmax.

    Shapes: logits z (..., V); targets y (...) ids in [0, V) or ignore_index;
    rows flattened to N.  eps = label_smoothing, valid_i = [y_i != ignore_index].

        u_i     = z_i - max(z_i) ;  s_i = sum_c exp(u_ic)           (log-sum-exp)
        log p_i = u_i - log s_i                                     finite: never log(0)
        p_i     = exp(u_i) / s_i                                    kept for backward
        q_i     = (1 - eps) onehot(y_i) + eps / V                   smoothed target
        loss_i  = -sum_c q_ic log p_ic                              0 where not valid_i
        mean:     L = sum_i loss_i / max(n_valid, 1) ;  sum: L = sum_i loss_i ;
        none:     L_i = loss_i
    Returns (L, CrossEntropyCache); L has the logits' dtype.
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    valid = targets.reshape(-1) != ignore_index
    y = np.where(valid, targets.reshape(-1), 0)
    n_valid = int(valid.sum())
    eps = label_smoothing
    u = z - z.max(axis=1, keepdims=True)
    e = np.exp(u)
    s = e.sum(axis=1, keepdims=True)
    log_p = u - np.log(s)
    p = e / s
    onehot = (np.arange(V) == y[:, None]).astype(z.dtype)
    q = (1.0 - eps) * onehot + eps / V
    loss_i = np.where(valid, -(q * log_p).sum(axis=1), 0).astype(z.dtype)
    if reduction == "none":
        loss = loss_i.reshape(targets.shape)
    else:
        total = loss_i.sum(dtype=z.dtype)
        loss = total / max(n_valid, 1) if reduction == "mean" else total
        loss = np.asarray(loss, dtype=z.dtype)
    cache = CrossEntropyCache(probs=p, targets=y, valid=valid, n_valid=n_valid,
                              shape=logits.shape)
    return loss, cache


def cross_entropy_backward(dL, cache: CrossEntropyCache, label_smoothing: float = 0.0,
                           reduction: str = "mean"):
    """dz_i = (p_i - q_i) * valid_i * w_i

    with w_i = dL / n_valid (mean), dL (sum) or dL_i (none).  Why p - q: with
    log p_c = z_c - log sum_k exp(z_k), d log p_c / dz_j = [c = j] - p_j, so
        d loss_i / dz_ij = -sum_c q_ic ([c = j] - p_ij) = p_ij sum_c q_ic - q_ij = p_ij - q_ij,
    using sum_c q_ic = 1 (in general the middle form, p_ij sum_c q_ic - q_ij,
    is the gradient).  That is why the smoothing mass goes over all V classes,
    the target included: q = (1 - eps) onehot + eps / V sums to
    1 - eps + V eps / V = 1.  Give the eps / V shares to the V - 1 other
    classes only and q sums to 1 - eps / V: the gradient is then
    p (1 - eps / V) - q, and p - q would be wrong by eps p / V.  (Spreading
    eps / (V - 1) over the others also sums to 1, so the rule holds, but that
    is not PyTorch's q.)  Returns dz with the logits' shape.
    """
    p, y, valid = cache.probs, cache.targets, cache.valid
    N, V = p.shape
    eps = label_smoothing
    dL = np.asarray(dL)
    if reduction == "none":
        w = dL.astype(p.dtype).reshape(-1) * valid
    else:
        scale = dL.item() / (max(cache.n_valid, 1) if reduction == "mean" else 1)
        w = valid * np.asarray(scale, dtype=p.dtype)
    onehot = (np.arange(V) == y[:, None]).astype(p.dtype)
    q = (1.0 - eps) * onehot + eps / V
    dz = (p - q) * w[:, None]
    return dz.reshape(cache.shape)
