"""Losses."""

from __future__ import annotations

import numpy as np

from ._validate import check_float, check_probability
from .functional.losses import CrossEntropyCache
from .kernels import select
from .module import Module

__all__ = ["CrossEntropyLoss", "CrossEntropyCache"]


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
    with w_i = dL / n_valid (mean), dL (sum), dL_i (none);
    ``functional.cross_entropy_backward`` derives why the gradient is p - q.

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
        return select(logits.dtype).cross_entropy_forward(
            logits, targets, self.ignore_index, self.label_smoothing, self.reduction)

    def backward(self, dout=1.0, cache: CrossEntropyCache = None):
        dout = np.asarray(dout)
        if self.reduction == "none":
            if dout.shape != cache.shape[:-1]:
                raise ValueError(f"CrossEntropyLoss.backward: dout has shape {dout.shape}, "
                                 f"expected {cache.shape[:-1]} (reduction='none')")
        elif dout.size != 1:
            raise ValueError(f"CrossEntropyLoss.backward: dout must be a scalar for "
                             f"reduction={self.reduction!r}, got shape {dout.shape}")
        return select(cache.probs.dtype).cross_entropy_backward(
            dout, cache, self.label_smoothing, self.reduction)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
                f"reduction={self.reduction!r}")
