"""Reference kernels: LoRA, a frozen affine map plus a trainable low-rank update."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .dropout import DropoutCache, dropout_backward, dropout_forward
from .linear import linear_forward

__all__ = ["LoRACache", "lora_forward", "lora_backward", "frozen_linear_backward"]


class LoRACache(NamedTuple):
    x_d: np.ndarray  # (N, D_in): dropout(x), the adapter branch's input, leading dims flattened
    dropout: DropoutCache  # the mask of x_d = dropout(x) (None when dropout is off)
    u: np.ndarray  # (N, r): u = x_d A, the low-rank code
    lead_shape: tuple  # the leading dims of x, restored on the way back


def lora_forward(x, W0, b0, A, B, scale: float, p: float = 0.0, rng=None,
                 training: bool = True):
    """LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language
    Models", sec. 4.1, eq. 3: h = W0 x + dW x = W0 x + B A x, scaled by
    alpha / r), in this library's row layout (W stored as (D_in, D_out)).

    Shapes: x (..., D_in); W0 (D_in, D_out) and b0 (D_out,) or None, the frozen
    base; A (D_in, r), B (r, D_out), the adapter; y (..., D_out).  ``scale`` is
    alpha / r, a Python float (a NumPy float64 scalar would promote float32 work).
    The paper's A (r x d) and B (d x r) act on columns; ours act on
    rows, so our A is the paper's A^T and our B is its B^T (and
    ``peft``'s ``lora_A.weight`` / ``lora_B.weight`` transposed).

    Forward (the leading dims flattened into N rows):
        y0  = x W0 + b0           the frozen base (``linear_forward``)
        x_d = dropout(x)          inverted dropout on the adapter branch only
        u   = x_d A               (N, r): down to rank r
        y   = y0 + (scale u) B    (N, D_out): back up, scaled
    Dropout acts on the adapter's input alone, as the authors' ``loralib``
    (``loralib/layers.py``, ``Linear.forward``: ``lora_dropout(x) @ A^T @ B^T
    * scaling``) and Hugging Face ``peft`` (``tuners/lora/layer.py``,
    ``Linear.forward``: ``result + lora_B(lora_A(dropout(x))) * scaling``) do;
    the base path always sees x itself.  ``p``, ``rng`` and ``training`` are
    ``dropout_forward``'s.
    Returns (y, LoRACache).
    """
    lead_shape = x.shape[:-1]
    y0, base_cache = linear_forward(x, W0, b0)
    x_d, drop_cache = dropout_forward(base_cache.x, p, rng, training)
    u = x_d @ A
    y = y0 + ((scale * u) @ B).reshape(*lead_shape, B.shape[1])
    return y, LoRACache(x_d=x_d, dropout=drop_cache, u=u, lead_shape=lead_shape)


def lora_backward(dy, cache: LoRACache, W0, A, B, scale: float):
    """The gradients of y = x W0 + b0 + scale dropout(x) A B, the base frozen.

    Read the forward in reverse (dy (N, D_out), the leading dims flattened):
        dB   = (scale u)^T dy      y = y0 + (scale u) B: the rule dW = X^T dY with
                                   X = scale u                        (r, D_out)
        du   = scale dy B^T        the rule dX = dY W^T, times the scale (N, r)
        dA   = x_d^T du            u = x_d A: dW = X^T dY              (D_in, r)
        dx_d = du A^T              dX = dY W^T                         (N, D_in)
        dx0  = dy W0^T             the base path: dX = dY W^T; W0 and b0 are
                                   frozen, so no dW0 = x^T dy and no db0 are
                                   formed (that GEMM is saved, not discarded)
        dx   = dx0 + dropout'(dx_d)   x feeds both paths, so their gradients
                                   add; only the adapter path carries the mask
                                   (``dropout_backward``: dx_d * mask)
    With B = 0 (the initial state) dA = 0 and dx = dx0: the first step moves B
    alone, as the paper's zero init intends.
    Returns (dx, dA, dB).
    """
    dy2 = dy.reshape(-1, B.shape[1])
    dB = (scale * cache.u).T @ dy2
    du = scale * (dy2 @ B.T)
    dA = cache.x_d.T @ du
    dx_d = du @ A.T
    dx0 = dy2 @ W0.T
    dx = dx0 + dropout_backward(dx_d, cache.dropout)
    return dx.reshape(*cache.lead_shape, W0.shape[0]), dA, dB


def frozen_linear_backward(dy, cache, W):
    """The input gradient of y = x W + b with W and b frozen (a merged LoRA layer,
    whose forward is ``linear_forward`` on the merged weight).

    Shapes: dy (..., D_out), W (D_in, D_out); ``cache`` is ``linear_forward``'s
    LinearCache (only its ``lead_shape`` is read).
        dx = dy W^T          the rule dX = dY W^T                  (..., D_in)
    dW = x^T dy and db = sum_n dy_n are not formed: nothing trains W or b.
    Returns dx.
    """
    dy2 = dy.reshape(-1, W.shape[1])
    dx = dy2 @ W.T
    return dx.reshape(*cache.lead_shape, W.shape[0])
