"""Fast kernels: Adam and AdamW, in place, and over flat buffers on threads.

``adam_update`` has the signature of ``functional.adam_update`` and computes
the same update with fewer array passes: the moments as
m + (1 - beta1) (g - m), the bias corrections folded into two scalars as
PyTorch does (sqrt(v) / sqrt(1 - beta2^t) + eps, then lr / (1 - beta1^t)),
every pass in place into one scratch array.  With ``out=(p', m', v')`` it
writes there (they may be p, m and v themselves); otherwise into copies.

``FlatAdam`` is what ``optim.Adam`` / ``AdamW`` run when every trainable
parameter has one dtype and the fast kernels are selected for it: one update
for all of them at once.  The optimizer hands it the trainable parameters
alone: a frozen one (``requires_grad=False``) is never packed (``pack``
refuses it by name), so its arrays stay its own and are never updated; when
the set of trainable parameters changes, the list changes and the next step
packs again.  At the first step it packs every parameter's data and
grad, and its m and v, into four flat buffers and rebinds ``p.data``,
``p.grad`` and the optimizer's ``m`` and ``v`` state arrays to views of them
(same shapes, same values), so a step is a dozen vectorised operations per
chunk (``CHUNK`` entries on one thread: a chunk of all five arrays, data, grad,
m, v and the scratch, then stays in a core's L2 cache across the dozen passes;
``CHUNK_THREADED`` on several, where each call must be long enough that the
threads seldom wait for the GIL between calls) instead of a dozen per
parameter; the chunks are shared out in contiguous blocks over the
configured threads (the update is elementwise: the same bits
whatever the split).  Backward passes still add into ``p.grad`` in place and
land in the flat buffer.  Whenever anything rebinds one of those arrays
(``load_state_dict`` of the model or the optimizer, ``astype``,
``p.data = ...``), the next step notices and packs again from the current
values, so results are the same bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from .._parallel import get_num_threads, parallel_rows

__all__ = ["adam_update", "FlatAdam"]

# Elements updated per pass over the flat buffers (``FlatAdam.step``'s default chunk).
# Measured, float32, 1.43M / 10M parameters, ms per step:
#   one thread:  2^15 3.2 / 29.6, 2^16 3.1 / 29.7, 2^17 3.3 / 32.8, 2^18 3.9 / 35.5
#   two threads: 2^15 3.9 / 30.8, 2^16 2.8 / 23.2, 2^17 2.5 / 19.5, 2^18 2.4 / 18.7
# (2^18's five 1 MiB chunk arrays overflow a 2 MiB L2; on two threads the short calls of
# small chunks wait for the GIL between them).
CHUNK = 1 << 16
CHUNK_THREADED = 1 << 18


def _adam_in_place(p, g, m, v, tmp, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias1, bias2):
    """functional.adam_update's equations, in place on p, m and v (any shape;
    tmp: scratch of the same shape; bias1, bias2 = 1 - beta1^t, 1 - beta2^t)."""
    if weight_decay:
        if decoupled:
            p *= 1.0 - lr * weight_decay
        else:
            g = g + weight_decay * p
    np.subtract(g, m, out=tmp)
    tmp *= 1.0 - beta1
    m += tmp  # m + (1 - beta1) (g - m) = beta1 m + (1 - beta1) g
    v *= beta2
    np.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp
    # p -= lr * m_hat / (sqrt(v_hat) + eps), with the bias corrections folded
    # into two scalars as PyTorch does (same numbers, fewer array passes).
    denom = np.sqrt(v, out=tmp)
    denom /= math.sqrt(bias2)
    denom += eps
    np.divide(m, denom, out=tmp)
    tmp *= lr / bias1
    p -= tmp


def adam_update(p, g, m, v, t: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False, *,
                out=None):
    if out is None:
        out = (p.copy(), m.copy(), v.copy())
    else:
        for dst, src in zip(out, (p, m, v)):
            if dst is not src:
                np.copyto(dst, src)
    p_new, m_new, v_new = out
    t = int(t)  # Python numbers: the scalars never promote a float32 update
    _adam_in_place(p_new, g, m_new, v_new, np.empty_like(p_new), float(lr), float(beta1),
                   float(beta2), float(eps), float(weight_decay), bool(decoupled),
                   1.0 - beta1 ** t, 1.0 - beta2 ** t)
    return tuple(out)


class FlatAdam:
    """The flat buffers (data, grad, m, v) of one optimizer's parameters (see
    the module docstring).  The optimizer keeps one and hands it, at every
    call, its ``(name, Parameter)`` list and its ``m`` and ``v`` state dicts
    (name -> array; missing entries start at zero and are created here)."""

    def __init__(self):
        self.views = None  # per parameter (data, grad, m, v) views of the flat buffers
        self.buffers = None  # (data, grad, m, v), 1-D
        self.scratch = {}  # one scratch chunk per thread's block, by its first chunk

    def is_packed(self) -> bool:
        return self.views is not None

    def current(self, named_params, m_state, v_state):
        """The flat buffers (data, grad, m, v) if every parameter's data and grad
        and every state array is still its view; else None."""
        views = self.views
        if views is not None and len(views) == len(named_params) and all(
                p.data is d and p.grad is g and m_state.get(name) is m and v_state.get(name) is v
                for (name, p), (d, g, m, v) in zip(named_params, views)):
            return self.buffers
        return None

    def pack(self, named_params, m_state, v_state):
        """The flat buffers, packed again (from the current values) unless
        ``current``; None when the parameters do not share one dtype."""
        buffers = self.current(named_params, m_state, v_state)
        if buffers is not None:
            return buffers
        frozen = [name for name, p in named_params if not p.requires_grad]
        if frozen:
            raise ValueError(f"FlatAdam.pack: frozen parameters (requires_grad=False) are "
                             f"not packed or updated, got {', '.join(frozen)}")
        dtype = named_params[0][1].dtype
        if any(p.data.dtype != dtype or p.grad.dtype != dtype for _, p in named_params):
            self.views = self.buffers = None
            return None
        total = sum(p.size for _, p in named_params)
        buffers = tuple(np.empty(total, dtype) for _ in range(4))
        views, start = [], 0
        for name, p in named_params:
            d, g, m, v = (b[start:start + p.size].reshape(p.shape) for b in buffers)
            d[...], g[...] = p.data, p.grad
            m[...] = m_state.get(name, 0.0)  # state is created (zero) at the first step
            v[...] = v_state.get(name, 0.0)
            p.data, p.grad, m_state[name], v_state[name] = d, g, m, v
            views.append((d, g, m, v))
            start += p.size
        self.views, self.buffers = views, buffers
        self.scratch = {}
        return buffers

    def step(self, buffers, t: int, lr: float, beta1: float, beta2: float, eps: float,
             weight_decay: float, decoupled: bool, *, chunk: int | None = None) -> None:
        """One Adam/AdamW step of every parameter over ``buffers`` (what ``pack``
        returned); t: the step count; chunk: entries per pass (default ``CHUNK`` on
        one thread, ``CHUNK_THREADED`` on several)."""
        if chunk is None:
            chunk = CHUNK if get_num_threads() == 1 else CHUNK_THREADED
        data, grad, m, v = buffers
        size = data.size
        t = int(t)
        # Python floats: folding these into a float32 update never promotes it.
        scalars = (float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                   bool(decoupled), 1.0 - beta1 ** t, 1.0 - beta2 ** t)
        scratch = self.scratch

        def chunks(r):  # chunks r.start .. r.stop - 1, one block per thread
            # each block its own scratch, kept across steps: it stays in cache
            tmp = scratch.get(r.start)
            if tmp is None or tmp.size < min(size, chunk):
                tmp = scratch[r.start] = np.empty(min(size, chunk), data.dtype)
            for k in range(r.start, r.stop):
                part = slice(k * chunk, (k + 1) * chunk)
                _adam_in_place(data[part], grad[part], m[part], v[part],
                               tmp[:data[part].size], *scalars)

        parallel_rows(chunks, -(-size // chunk), chunk)

    def zero_grad(self, named_params, m_state, v_state) -> bool:
        """Zero every gradient in one pass over the flat buffer (on the threads);
        False, and nothing done, when there is no current flat buffer."""
        if self.views is None:
            return False
        flat = self.pack(named_params, m_state, v_state)  # packed again if rebound
        if flat is None:
            return False
        grad = flat[1]
        parallel_rows(lambda r: grad[r].fill(0), grad.size, 1)
        return True
