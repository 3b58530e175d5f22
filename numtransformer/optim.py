"""Optimizers, gradient clipping and learning-rate schedules.

An optimizer updates ``p.data`` from ``p.grad`` for a list of parameters:

    opt = Adam(model, lr=1e-3)     # a Module (names kept) or an iterable of Parameters
    ... forward, backward ...
    clip_grad_norm(model.parameters(), 1.0)
    opt.lr = schedule(opt.step_count + 1)   # optional: a schedule sets the rate
    opt.step()
    model.zero_grad()

The step count advances once per ``step()`` call (not once per tensor), and
Adam's bias correction uses it.  The update rules themselves are the kernels
``functional.sgd_update`` and ``adam_update`` (equations in their docstrings;
``kernels.select`` picks the reference or the fast family by dtype); the
optimizers hold the state and copy each result back into the parameter's own
arrays.  ``state_dict()`` is a flat dict of numpy
arrays (the step count and one moment array per parameter and kind), so a
``.npz`` checkpoint can hold it and a resumed run continues bit for bit.
Updates happen in place in the parameters' dtype: float32 stays float32.

Frozen parameters (``requires_grad=False``, see ``module.py``) are skipped,
whether they came with a Module or were listed explicitly: an optimizer holds
every parameter it is given (``opt.params``, ``zero_grad``), but ``step()``
updates only those trainable at that step (no update, no weight decay, no
moment state is created for a frozen one; one unfrozen later is trained from
then on, with fresh zero moments), as ``torch.optim`` skips a tensor with no
gradient.  ``clip_grad_norm`` and ``global_grad_norm`` skip them too.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from . import fast
from .kernels import select
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

    def trainable(self) -> list[tuple[str, Parameter]]:
        """``(name, Parameter)`` of the parameters a step updates now (``requires_grad``)."""
        return [(name, p) for name, p in self.named_params if p.requires_grad]

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        self.step_count += 1
        for name, p in self.trainable():
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
    as ``torch.optim.SGD`` (the update: ``functional.sgd_update``):

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
        first = name not in self.state["momentum"]
        b = self._buf("momentum", name, p) if self.momentum else None
        p_new, b_new = select(p.dtype).sgd_update(
            p.data, p.grad, b, float(self.lr), self.momentum, self.dampening,
            self.weight_decay, self.nesterov, first)
        # into the arrays the parameter and the state own: views and ties see it
        p.data[...] = p_new
        if b is not None:
            b[...] = b_new


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1), as ``torch.optim.Adam`` (the
    update: ``functional.adam_update``):

        g     = grad + weight_decay * p          (L2 penalty folded into the gradient)
        m     = beta1 m + (1 - beta1) g
        v     = beta2 v + (1 - beta2) g^2
        m_hat = m / (1 - beta1^t),   v_hat = v / (1 - beta2^t)   (t = step count)
        p     = p - lr m_hat / (sqrt(v_hat) + eps)

    t is the step count: advanced once per ``step()``, the same for every
    tensor of that step.  Each parameter is updated by the ``adam_update``
    kernel that ``kernels.select`` picks for its dtype, and the result is
    copied back into ``p.data`` and the state arrays.  When the fast kernels
    are selected and every trainable parameter has one dtype, the step is
    instead one pass over flat buffers holding every trainable parameter (frozen
    ones are not packed; ``fast.FlatAdam``: it
    rebinds ``p.data``, ``p.grad`` and the state arrays to views of four flat
    buffers, updates them in chunks on the configured threads, and packs again
    whenever something rebinds one of them), with the same numbers as the
    fast kernel applied tensor by tensor.
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
        self._flat = fast.FlatAdam()
        self._chunk = None  # elements per pass over the flat buffers (None: FlatAdam's default)

    def _hyper(self) -> tuple:
        return (float(self.lr), self.beta1, self.beta2, self.eps, self.weight_decay,
                self.decoupled)

    @staticmethod
    def _common_dtype(named_params):
        """The parameters' one dtype (data and grad), or None when they mix dtypes."""
        dtype = named_params[0][1].dtype
        for _, p in named_params:
            if p.data.dtype != dtype or p.grad.dtype != dtype:
                return None
        return dtype

    def step(self) -> None:
        self.step_count += 1
        active = self.trainable()  # frozen parameters are neither packed nor updated
        if not active:
            return
        m_state, v_state = self.state["m"], self.state["v"]
        flat = self._flat.current(active, m_state, v_state)
        dtype = flat[0].dtype if flat is not None else self._common_dtype(active)
        if dtype is not None and select(dtype) is fast:
            if flat is None:
                flat = self._flat.pack(active, m_state, v_state)
            self._flat.step(flat, self.step_count, *self._hyper(), chunk=self._chunk)
            return
        for name, p in active:
            self._update(name, p)

    def _update(self, name, p):
        m = self._buf("m", name, p)
        v = self._buf("v", name, p)
        p_new, m_new, v_new = select(p.dtype).adam_update(
            p.data, p.grad, m, v, self.step_count, *self._hyper())
        # into the arrays the parameter and the state own: views and ties see it
        p.data[...] = p_new
        m[...] = m_new
        v[...] = v_new

    def zero_grad(self) -> None:
        active = self.trainable()
        if not active or not self._flat.zero_grad(active, self.state["m"], self.state["v"]):
            super().zero_grad()
            return
        for _, p in self.named_params:  # the flat buffer holds the trainable grads only
            if not p.requires_grad:
                p.zero_grad()


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
    """sqrt(sum over all trainable parameters of sum(grad^2)), accumulated as a
    Python float; frozen parameters (``requires_grad=False``) are skipped."""
    total = 0.0
    for p in params:
        if not p.requires_grad:
            continue
        g = p.grad.reshape(-1)
        total += float(np.dot(g, g))
    return math.sqrt(total)


def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> float:
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)) (global norm
    clipping, as ``torch.nn.utils.clip_grad_norm_``); returns the norm before
    clipping.  A non-finite norm is returned unchanged and nothing is scaled,
    so the caller can stop on it.  Frozen parameters are neither counted nor
    scaled.
    """
    params = [p for p in params if p.requires_grad]
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
