"""Reference kernels: the SGD, Adam and AdamW update rules.

Each rule takes one parameter tensor ``p``, its gradient ``g`` and its state
(a momentum buffer, or Adam's two moments) and *returns* the new values; it
writes into nothing it is given.  ``numtransformer.optim``'s optimizers are
thin: per parameter, they call the rule and copy the result back into the
arrays the parameter and the state already own (so tied parameters and views
keep seeing the update).

Adam's bias correction uses the optimizer's step count ``t`` (1 at the first
step, advanced once per optimizer step), never the index of the tensor in the
parameter list: every tensor of one step gets the same t.

Scalars are Python floats, so a float32 update stays float32.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sgd_update", "adam_update"]


def sgd_update(p, g, b, lr: float, momentum: float = 0.0, dampening: float = 0.0,
               weight_decay: float = 0.0, nesterov: bool = False, first: bool = False):
    """One step of stochastic gradient descent, as ``torch.optim.SGD``.

    p, g (any shape): the parameter and its gradient; b: the momentum buffer
    (same shape; ignored when ``first`` or when momentum = 0, may then be None);
    ``first``: this is the buffer's first step.

        g_wd = g + weight_decay * p                   L2 penalty folded into the gradient
        b'   = g_wd                                   (first step)
        b'   = momentum * b + (1 - dampening) * g_wd  (later steps)
        d    = g_wd + momentum * b'   if nesterov     (Sutskever et al., 2013, as PyTorch)
        d    = b'                     otherwise
        p'   = p - lr * d

    With momentum = 0 there is no buffer: d = g_wd, and b' is None.
    Returns (p', b').
    """
    g_wd = g + weight_decay * p if weight_decay else g
    if not momentum:
        p_new = p - lr * g_wd
        return p_new, None
    if first:
        b_new = g_wd.copy()
    else:
        b_new = momentum * b + (1.0 - dampening) * g_wd
    d = g_wd + momentum * b_new if nesterov else b_new
    p_new = p - lr * d
    return p_new, b_new


def adam_update(p, g, m, v, t: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):
    """One step of Adam (Kingma & Ba, 2015, Algorithm 1), as ``torch.optim.Adam``,
    or of AdamW (Loshchilov & Hutter, 2019, Algorithm 2), as ``torch.optim.AdamW``.

    p, g, m, v (any shape, one dtype): the parameter, its gradient, the first
    and second moment estimates; t >= 1: the step count (the same for every
    tensor of one optimizer step).

    Weight decay, one of two kinds:
        decoupled = False (Adam, L2):  p_d = p ;                      g_d = g + weight_decay * p
        decoupled = True  (AdamW):     p_d = p (1 - lr weight_decay); g_d = g
    Algorithm 1, lines 7-11:
        m'    = beta1 m + (1 - beta1) g_d            biased first moment
        v'    = beta2 v + (1 - beta2) g_d^2          biased second raw moment
        m_hat = m' / (1 - beta1^t)                   bias corrections: m and v start
        v_hat = v' / (1 - beta2^t)                   at 0, so early estimates are small
        p'    = p_d - lr m_hat / (sqrt(v_hat) + eps)
    At t = 1, m_hat = g_d and v_hat = g_d^2: the first step moves each entry by
    lr g_d / (|g_d| + eps), about lr, whatever the gradient's scale.
    Returns (p', m', v').
    """
    if weight_decay and decoupled:
        p_d = p * (1.0 - lr * weight_decay)
        g_d = g
    elif weight_decay:
        p_d = p
        g_d = g + weight_decay * p
    else:
        p_d, g_d = p, g
    m_new = beta1 * m + (1.0 - beta1) * g_d
    v_new = beta2 * v + (1.0 - beta2) * g_d * g_d
    m_hat = m_new / (1.0 - beta1 ** t)
    v_hat = v_new / (1.0 - beta2 ** t)
    p_new = p_d - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p_new, m_new, v_new
