"""Optimizers, gradient clipping and learning-rate schedules.

An optimizer updates ``p.data`` from ``p.grad`` for a list of parameters:

    opt = Adam(model, lr=1e-3)     # a Module (names kept) or an iterable of Parameters
    ... forward, backward ...
    clip_grad_norm(model.parameters(), 1.0)
    opt.lr = schedule(opt.step_count + 1)   # optional: a schedule sets the rate
    opt.step()
    model.zero_grad()

The step count advances once per ``step()`` call (not once per tensor), and
Adam's bias correction uses it.  ``state_dict()`` is a flat dict of numpy
arrays (the step count and one moment array per parameter and kind), so a
``.npz`` checkpoint can hold it and a resumed run continues bit for bit.
Updates happen in place in the parameters' dtype: float32 stays float32.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ._parallel import parallel_rows
from .module import Module, Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "global_grad_norm",
           "ConstantSchedule", "WarmupCosineSchedule", "NoamSchedule"]


def _named(params) -> list[tuple[str, Parameter]]:
    if isinstance(params, Module):
        return list(params.named_parameters())
    items = list(params)
    if items and isinstance(items[0], tuple):
        named = [(str(n), p) for n, p in items]
    else:
        named = [(str(i), p) for i, p in enumerate(items)]
    seen, out = set(), []
    for name, p in named:
        if not isinstance(p, Parameter):
            raise TypeError(f"optimizer: expected Parameters, got {type(p).__name__} for {name!r}")
        if id(p) not in seen:  # a tied parameter is updated once
            seen.add(id(p))
            out.append((name, p))
    if not out:
        raise ValueError("optimizer: got an empty parameter list")
    return out


def _check_nonneg(owner: str, **values):
    for key, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{owner}: {key} must be a finite number >= 0, got {v!r}")


class Optimizer:
    """Base class: parameters, learning rate, step count, state arrays."""

    state_kinds: tuple[str, ...] = ()

    def __init__(self, params, lr: float):
        self.named_params = _named(params)
        _check_nonneg(type(self).__name__, lr=lr)
        self.lr = float(lr)
        self.step_count = 0
        # one zero array per parameter and per kind of state (created lazily, as needed)
        self.state: dict[str, dict[str, np.ndarray]] = {k: {} for k in self.state_kinds}

    @property
    def params(self) -> list[Parameter]:
        return [p for _, p in self.named_params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        self.step_count += 1
        for name, p in self.named_params:
            self._update(name, p)

    def _update(self, name: str, p: Parameter) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _buf(self, kind: str, name: str, p: Parameter) -> np.ndarray:
        buf = self.state[kind].get(name)
        if buf is None:
            buf = self.state[kind][name] = np.zeros_like(p.data)
        return buf

    def state_dict(self) -> dict[str, np.ndarray]:
        sd = {"step_count": np.asarray(self.step_count, dtype=np.int64),
              "lr": np.asarray(self.lr, dtype=np.float64)}
        for kind, bufs in self.state.items():
            for name, buf in bufs.items():
                sd[f"{kind}.{name}"] = buf.copy()
        return sd

    def load_state_dict(self, sd) -> None:
        owner = type(self).__name__
        if "step_count" not in sd:
            raise ValueError(f"{owner}.load_state_dict: missing key 'step_count'")
        shapes = {name: p for name, p in self.named_params}
        state: dict[str, dict[str, np.ndarray]] = {k: {} for k in self.state_kinds}
        for key, value in sd.items():
            if key in ("step_count", "lr"):
                continue
            kind, _, name = key.partition(".")
            if kind not in state or name not in shapes:
                raise ValueError(f"{owner}.load_state_dict: unexpected key {key!r}")
            value = np.asarray(value)
            p = shapes[name]
            if value.shape != p.shape:
                raise ValueError(f"{owner}.load_state_dict: {key} has shape {value.shape}, "
                                 f"expected {p.shape}")
            state[kind][name] = value.astype(p.dtype, copy=True)
        self.state = state
        self.step_count = int(sd["step_count"])
        if "lr" in sd:
            self.lr = float(sd["lr"])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov and L2 weight decay,
    as ``torch.optim.SGD``:

        g = grad + weight_decay * p
        b = g                                    (first step)
        b = momentum * b + (1 - dampening) * g   (later steps)
        g = g + momentum * b   if nesterov else   g = b     (when momentum > 0)
        p = p - lr * g
    """

    state_kinds = ("momentum",)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        _check_nonneg("SGD", momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def _update(self, name, p):
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            first = name not in self.state["momentum"]
            b = self._buf("momentum", name, p)
            if first:
                b[...] = g
            else:
                b *= self.momentum
                b += (1.0 - self.dampening) * g
            g = g + self.momentum * b if self.nesterov else b
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1), as ``torch.optim.Adam``:

        g     = grad + weight_decay * p          (L2 penalty folded into the gradient)
        m     = beta1 m + (1 - beta1) g
        v     = beta2 v + (1 - beta2) g^2
        m_hat = m / (1 - beta1^t),   v_hat = v / (1 - beta2^t)   (t = step count)
        p     = p - lr m_hat / (sqrt(v_hat) + eps)

    One update for all parameters at once: at the first step the optimizer
    packs every parameter's data and grad, and its m and v, into four flat
    buffers and rebinds ``p.data``, ``p.grad``, ``state["m"][name]`` and
    ``state["v"][name]`` to views of them (same shapes, same values), so a
    step is a dozen vectorised operations per chunk of 2^18 entries (small
    enough for one scratch chunk to stay in cache) instead of a dozen per
    parameter; the chunks are shared out in contiguous blocks over the
    configured threads (the update is elementwise: the same bits whatever
    the split).
    Backward passes still add into ``p.grad`` in place and land in the flat
    buffer.  Whenever anything rebinds one of those arrays (``load_state_dict``
    of the model or the optimizer, ``astype``, ``p.data = ...``), the next step
    notices and packs again from the current values, so results are the same
    bit for bit.  Parameters of mixed dtypes are updated one by one.
    """

    state_kinds = ("m", "v")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        _check_nonneg(type(self).__name__, eps=eps, weight_decay=weight_decay)
        self.beta1, self.beta2 = float(b1), float(b2)
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self._flat_views = None  # per parameter (data, grad, m, v) views of the flat buffers
        self._flat_buffers = None  # (data, grad, m, v), 1-D
        self._chunk = 1 << 18  # elements updated per pass over the flat buffers
        self._scratch = {}  # one scratch chunk per thread's block, by its first chunk

    def step(self) -> None:
        self.step_count += 1
        t = self.step_count
        # Python floats: folding these into a float32 update never promotes it.
        self._bias1 = 1.0 - self.beta1 ** t
        self._bias2 = 1.0 - self.beta2 ** t
        flat = self._flat()
        if flat is None:
            for name, p in self.named_params:
                self._update(name, p)
            return
        data, grad, m, v = flat
        size, chunk = data.size, self._chunk

        def chunks(r):  # chunks r.start .. r.stop - 1, one block per thread
            # each block its own scratch, kept across steps: it stays in cache
            tmp = self._scratch.get(r.start)
            if tmp is None:
                tmp = self._scratch[r.start] = np.empty(min(size, chunk), data.dtype)
            for k in range(r.start, r.stop):
                part = slice(k * chunk, (k + 1) * chunk)
                self._apply(data[part], grad[part], m[part], v[part], tmp[:data[part].size])

        parallel_rows(chunks, -(-size // chunk), chunk)

    def _update(self, name, p):
        m = self._buf("m", name, p)
        v = self._buf("v", name, p)
        self._apply(p.data, p.grad, m, v, np.empty_like(p.data))

    def _apply(self, p, g, m, v, tmp):
        """The update of the class docstring, in place on p, m and v (any shape;
        tmp: scratch of the same shape)."""
        if self.weight_decay:
            if self.decoupled:
                p *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        np.subtract(g, m, out=tmp)
        tmp *= 1.0 - self.beta1
        m += tmp  # m + (1 - beta1) (g - m) = beta1 m + (1 - beta1) g
        v *= self.beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.beta2
        v += tmp
        # p -= lr * m_hat / (sqrt(v_hat) + eps), with the bias corrections folded
        # into two scalars as PyTorch does (same numbers, fewer array passes).
        denom = np.sqrt(v, out=tmp)
        denom /= math.sqrt(self._bias2)
        denom += self.eps
        np.divide(m, denom, out=tmp)
        tmp *= self.lr / self._bias1
        p -= tmp

    def _flat(self):
        """The flat buffers (data, grad, m, v), packed again when any
        parameter or state array is no longer its view; None for mixed dtypes."""
        m_state, v_state = self.state["m"], self.state["v"]
        views = self._flat_views
        if views is not None and all(
                p.data is d and p.grad is g and m_state.get(name) is m and v_state.get(name) is v
                for (name, p), (d, g, m, v) in zip(self.named_params, views)):
            return self._flat_buffers
        dtype = self.named_params[0][1].dtype
        if any(p.data.dtype != dtype or p.grad.dtype != dtype for _, p in self.named_params):
            self._flat_views = self._flat_buffers = None
            return None
        total = sum(p.size for _, p in self.named_params)
        buffers = tuple(np.empty(total, dtype) for _ in range(4))
        views, start = [], 0
        for name, p in self.named_params:
            d, g, m, v = (b[start:start + p.size].reshape(p.shape) for b in buffers)
            d[...], g[...] = p.data, p.grad
            m[...] = m_state.get(name, 0.0)  # state is created (zero) at the first step
            v[...] = v_state.get(name, 0.0)
            p.data, p.grad, m_state[name], v_state[name] = d, g, m, v
            views.append((d, g, m, v))
            start += p.size
        self._flat_views, self._flat_buffers = views, buffers
        self._scratch = {}
        return buffers

    def zero_grad(self) -> None:
        flat = self._flat() if self._flat_views is not None else None
        if flat is None:
            super().zero_grad()
        else:
            grad = flat[1]
            parallel_rows(lambda r: grad[r].fill(0), grad.size, 1)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as
    ``torch.optim.AdamW``: before the Adam update,

        p = p - lr * weight_decay * p

    and the gradient itself carries no penalty.  Default weight_decay 0.01.
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


def global_grad_norm(params: Iterable[Parameter]) -> float:
    """sqrt(sum over all parameters of sum(grad^2)), accumulated as a Python float."""
    total = 0.0
    for p in params:
        g = p.grad.reshape(-1)
        total += float(np.dot(g, g))
    return math.sqrt(total)


def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> float:
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)) (global norm
    clipping, as ``torch.nn.utils.clip_grad_norm_``); returns the norm before
    clipping.  A non-finite norm is returned unchanged and nothing is scaled,
    so the caller can stop on it.
    """
    params = list(params)
    norm = global_grad_norm(params)
    if math.isfinite(norm):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for p in params:
                p.grad *= coef
    return norm


class ConstantSchedule:
    """lr(step) = lr."""

    def __init__(self, lr: float):
        self.lr = float(lr)

    def __call__(self, step: int) -> float:
        return self.lr


class WarmupCosineSchedule:
    """Linear warmup to ``lr`` over ``warmup`` steps, then a cosine decay to
    ``min_lr`` at ``total`` steps (constant ``min_lr`` after).  Steps count from 1:

        lr(s) = lr * s / warmup                                    s <= warmup
        lr(s) = min_lr + (lr - min_lr) (1 + cos(pi q)) / 2,  q = (s - warmup) / (total - warmup)
    """

    def __init__(self, lr: float, warmup: int, total: int, min_lr: float = 0.0):
        if not 0 <= warmup < total:
            raise ValueError(f"WarmupCosineSchedule: need 0 <= warmup < total, got "
                             f"warmup={warmup}, total={total}")
        self.lr, self.warmup, self.total, self.min_lr = float(lr), int(warmup), int(total), float(min_lr)

    def __call__(self, step: int) -> float:
        if step <= self.warmup:
            return self.lr * step / max(self.warmup, 1)
        q = min(1.0, (step - self.warmup) / (self.total - self.warmup))
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))


class NoamSchedule:
    """The schedule of "Attention Is All You Need", eq. 3 (steps count from 1):

        lr(s) = factor * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)

    It rises linearly for ``warmup`` steps, peaks at
    factor * (d_model * warmup)^-0.5, then decays as s^-0.5.
    """

    def __init__(self, d_model: int, warmup: int = 4000, factor: float = 1.0):
        if d_model < 1 or warmup < 1:
            raise ValueError(f"NoamSchedule: d_model and warmup must be >= 1, got {d_model}, {warmup}")
        self.d_model, self.warmup, self.factor = int(d_model), int(warmup), float(factor)

    def __call__(self, step: int) -> float:
        step = max(int(step), 1)
        return self.factor * self.d_model ** -0.5 * min(step ** -0.5, step * self.warmup ** -1.5)
