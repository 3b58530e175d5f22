"""Finite-difference gradient checking: the proof behind every backward pass.

``gradcheck(module, *inputs, **forward_kwargs)`` compares the gradients that
``module.backward`` computes ("analytic", ``a``) with central finite differences
("numeric", ``n``) of the scalar

    L = sum_k sum(out_k * G_k)          (G_k ~ N(0, 1), fixed by ``seed``)

for every float input (named ``input[i]``) and every trainable parameter (named
by its dotted name; a frozen one, ``requires_grad=False``, is not checked).
Everything runs in float64 on a deep copy of the module, so the caller's
parameters, gradients and random generators are left untouched.

Numerical derivative: the fourth-order central stencil

    dL/dx ~ (-L(x+2h) + 8 L(x+h) - 8 L(x-h) + L(x-2h)) / (12 h),   h = 2^-13 ~ 1.2e-4,

whose truncation error (O(h^4)) is far below its rounding error
(~1e-12 * |L|), so the check resolves errors well under 1e-7.  Inputs must sit
farther than 4h from any kink (ReLU at 0).

Which entries: a tensor with at most ``max_entries`` entries is checked in
full; a larger one at ``max_entries`` random entries *plus* one directional
derivative along a random unit direction d (``a . d`` against the stencil of
``L(x + t d)``), which sees every entry at once.

The error reported per tensor is

    err = max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|, floor)

the worst difference relative to that tensor's largest gradient (a per-entry
ratio is noise wherever a true gradient is ~0).  ``floor = 10 * noise /
threshold``, where ``noise`` is the finite differences' noise, *measured*
per tensor: for five of its entries the stencil is also taken at 2h, and
the median of |n(h) - n(2h)| bounds the error of n(h) (rounding dominates it at these
steps; where curvature is large, the 2h stencil's truncation makes the bound
conservative), never less than the rounding of L itself, eps ||out * G|| / h.  A difference within 10x that noise never fails the check; that matters
only for tensors whose exact gradient is zero or tiny (a bias before a softmax,
made exactly zero by shift invariance; a softmax over one element), which the
table marks with ``*``.  Every other tensor is judged plainly relative to its
own largest gradient.

The step h = 2^-13 is a power of two, so x +- h and x +- 2h are exact in
float64 wherever the result stays in the binade of x (ulp(x) divides h):
for all but a few draws.  They are rounded only where |x +- h| lands in a
higher binade than |x| (|x| < 2h, or |x| within 2h below a power of two; 3e-4
of N(0, 1) draws), and even there the step applied, fl(x + h) - x, differs
from h by at most half an ulp of x + h:

    |fl(x + h) - x - h| / h <= 2^-53 (|x| + h) / h ~ 9.1e-13 (|x| + h)

(the same bound with 2h for the outer points).  That is < 1e-13 relative for
|x| < 0.1 and ~1e-12 for |x| ~ 1 (measured over 2e6 N(0, 1) draws: at most
1.8e-12), far below the stencil's rounding noise and the 1e-7 threshold.  It
is not "exact for every |x| < 2^39": a tiny x (say 1e-8) is not a multiple
of ulp(x + h), and 12% of the sums x + h at |x| ~ 1e-8 are rounded.

It also catches mistakes a plain comparison misses: parameter gradients
*overwritten* instead of accumulated (backward runs again with ``p.grad``
pre-filled with random values, and ``grad - prefill`` must equal the first
result), a backward that changes its cache (a second call with the same cache
must give the same gradients), any input, keyword array, parameter or
upstream gradient modified in place, and a frozen parameter whose grad a
backward pass added to.

More checks, each for a Module or a function in the oracle protocol
(``numtransformer.oracle``; ``gradcheck`` itself accepts such a function too):

    gradcheck_fast    random projections v^T J u (PyTorch's fast mode): one
                      backward and six forward passes for the whole model;
                      on failure every tensor is retried alone, so the
                      report still names it
    jvp_check         J u by central differences of the outputs along random
                      directions u, against the VJPs (and against a
                      candidate's own forward-mode ``jvp=``), as JAX's
                      ``check_grads``
    check_causality   output t has exactly zero gradient w.r.t. inputs after t,
                      and does not move when they do
    check_padding     padded positions get exactly zero gradient and do not
                      move the outputs at real positions
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

import numpy as np

from .kernels import use_kernels
from .module import Module

__all__ = ["gradcheck", "GradcheckReport", "TensorCheck", "numerical_gradient", "relu_margin",
           "Case", "gradcheck_fast", "jvp_check", "check_causality", "check_padding",
           "StructuralReport"]

_STEP = 2.0**-13  # ~1.2e-4; a power of two (see _step)
_NOISE_SAMPLES = 5  # entries per tensor whose stencil is also taken at 2h
_NOISE_MARGIN = 10.0  # differences below 10x the measured rounding noise never fail


@dataclass(frozen=True)
class TensorCheck:
    """The result for one named tensor."""

    name: str
    shape: tuple
    entries_checked: int  # entries compared one by one (plus a directional derivative
    directional: bool  # when the tensor was larger than max_entries)
    error: float  # max |a - n| / max(max|a|, max|n|, floor)
    max_abs_grad: float  # max |a| over the whole analytic gradient
    floored: bool = False  # True when judged against the noise floor (gradient ~ 0)
    noise: float = 0.0  # the finite-difference noise measured on this tensor


@dataclass
class GradcheckReport:
    """Per-tensor errors, the overall maximum, and pass/fail against ``threshold``."""

    module_name: str
    threshold: float
    tensors: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def errors(self) -> dict[str, float]:
        return {t.name: t.error for t in self.tensors}

    @property
    def max_error(self) -> float:
        return max((t.error for t in self.tensors), default=0.0)

    @property
    def failures(self) -> list[str]:
        """Names of the tensors whose error exceeds the threshold."""
        return [t.name for t in self.tensors if not t.error <= self.threshold]

    @property
    def passed(self) -> bool:
        return not self.problems and not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def table(self) -> str:
        rows = [("tensor", "shape", "checked", "max rel error", "pass")]
        for t in self.tensors:
            checked = f"{t.entries_checked}" + ("+dir" if t.directional else "")
            rows.append(
                (t.name, "x".join(map(str, t.shape)) or "()", checked,
                 f"{t.error:.2e}" + (" *" if t.floored else ""),
                 "ok" if t.error <= self.threshold else "FAIL")
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if any(t.floored for t in self.tensors):
            lines.append("* gradient ~ 0: judged against the noise floor "
                         "(10 x the tensor's measured finite-difference noise / threshold)")
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        head = (f"gradcheck {self.module_name}: {verdict} "
                f"(max error {self.max_error:.2e}, threshold {self.threshold:.0e})")
        return head + "\n" + self.table()

    def assert_passed(self) -> None:
        """Raise AssertionError carrying the whole table when the check failed."""
        if not self.passed:
            raise AssertionError(str(self))


def _generators(module: Module) -> list[np.random.Generator]:
    gens = []
    for _, m in module.named_modules():
        for value in vars(m).values():
            if isinstance(value, np.random.Generator):
                gens.append(value)
    return gens


def relu_margin(module: Module, *inputs, **forward_kwargs) -> float:
    """The smallest |x| that any ReLU in ``module`` sees in one forward pass on
    these inputs (inf without a ReLU); the module's random generators (dropout)
    are put back afterwards, so a gradcheck that follows draws the same masks.

    Central differences across the kink of max(x, 0) are off by O(1), whatever
    the backward: a check is only meaningful when every ReLU input stays
    farther from 0 than the stencil reaches.  ``gradcheck``'s stencil takes
    x +- h and x +- 2h, and for the entries whose noise it measures also
    x +- 4h: it perturbs by up to 4h = 2^-11 ~ 4.9e-4 per entry (its
    directional check moves every entry at once, each by at most as much), so
    callers reject draws with a margin below ~2e-3 (4x the reach).
    """
    from .layers.activations import ReLU

    generators = _generators(module)
    states = [g.bit_generator.state for g in generators]
    seen = [math.inf]
    original = ReLU.forward

    def forward(layer, x):
        if np.size(x):
            seen[0] = min(seen[0], float(np.abs(x).min()))
        return original(layer, x)

    ReLU.forward = forward  # the class, for the duration of this one forward pass
    try:
        module.forward(*inputs, **forward_kwargs)
    finally:
        ReLU.forward = original
        for g, state in zip(generators, states):
            g.bit_generator.state = state
    return seen[0]


def _float_outputs(out) -> list:
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [x if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) else None
            for x in items]


def _step(x_scale: float) -> float:
    """h = 2^-13 (~1.2e-4), a power of two: x +- h and x +- 2h are then exact in
    float64 unless the sum reaches a higher binade than x (tiny |x|, or |x|
    just below a power of two), and even then the step really applied errs
    from the step assumed by <= 2^-53 (|x| + h) / h relative (~1e-12 at |x| ~ 1;
    see the module docstring).  A decimal 1e-4 is inexact in binary and x + 1e-4
    is rounded almost always (at x = 1e5 off by up to 7e-8 relative).  |x| >=
    2^35 gets h = 16 ulp(x)."""
    return max(_STEP, 16.0 * float(np.spacing(np.float64(x_scale))))


def numerical_gradient(f, x: np.ndarray, index=None, direction=None, h: float | None = None,
                       with_noise: bool = False):
    """Fourth-order central difference of the scalar ``f()`` w.r.t. ``x``.

    Perturbs ``x`` in place (restoring it afterwards) at the flat ``index``, or
    along ``direction`` (an array of x's shape) when given.  ``h`` defaults to
    2^-13 (see ``_step``; the entry's |x|, or the largest for a direction).  With
    ``with_noise`` it also returns |stencil(h) - stencil(2h)|: truncation is
    negligible at both steps, so their difference measures rounding noise.
    """
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient: x must be C-contiguous (it is perturbed in place)")
    flat = x.reshape(-1)
    if direction is not None:
        d = direction.reshape(-1)
        saved = flat.copy()
        scale = float(np.abs(saved).max(initial=0.0))

        def at(t):
            flat[:] = saved + t * d
            return f()
    else:
        saved = flat[index]
        scale = abs(float(saved))

        def at(t):
            flat[index] = saved + t
            return f()
    if h is None:
        h = _step(scale)
    try:
        l1, l2, m1, m2 = at(h), at(2 * h), at(-h), at(-2 * h)
        value = (-l2 + 8 * l1 - 8 * m1 + m2) / (12 * h)
        if with_noise:
            l4, m4 = at(4 * h), at(-4 * h)
            value_2h = (-l4 + 8 * l2 - 8 * m2 + m4) / (24 * h)
    finally:
        if direction is not None:
            flat[:] = saved
        else:
            flat[index] = saved
    if with_noise:
        return float(value), abs(float(value) - float(value_2h))
    return float(value)


def _as_tuple(grads) -> tuple:
    if grads is None:
        return ()
    if isinstance(grads, np.ndarray):
        return (grads,)
    return tuple(grads)


def gradcheck(
    module: Module,
    *inputs,
    threshold: float = 1e-7,
    seed: int = 0,
    max_entries: int = 64,
    kernels: str = "reference",
    **forward_kwargs,
) -> GradcheckReport:
    """Check ``module.backward`` against finite differences (see the module docstring).

    ``inputs`` are passed to ``forward`` positionally (float arrays are cast to
    float64; ids and masks pass unchanged); ``forward_kwargs`` by keyword.
    ``kernels``: which kernels the module runs on ("reference", the default:
    the plain equations; "fast" checks the fast kernels; see
    ``numtransformer.kernels``).
    Returns a ``GradcheckReport``; call ``.assert_passed()`` in a test.

    ``module`` may also be a function in the oracle protocol
    (``numtransformer.oracle``: ``fn(**inputs, dout=None) -> (outputs,
    grads)``), its inputs given by keyword: every float array among them is
    checked, and the report names each by its keyword.
    """
    if not isinstance(module, Module) and callable(module):
        if inputs:
            raise TypeError("gradcheck: expected a Module, or a function in the oracle "
                            "protocol taking its inputs by keyword; got a "
                            f"{type(module).__name__} and {len(inputs)} positional input(s)")
        wrapped = _FunctionModule(module, forward_kwargs)
        with use_kernels(kernels):
            report = _gradcheck(wrapped, wrapped.arrays, threshold, seed, max_entries, {})
        report.module_name = wrapped.label
        names = {f"input[{i}]": n for i, n in enumerate(wrapped.names)}
        report.tensors = [replace(t, name=names.get(t.name, t.name)) for t in report.tensors]
        report.problems = [_rename(p, names) for p in report.problems]
        return report
    with use_kernels(kernels):
        return _gradcheck(module, inputs, threshold, seed, max_entries, forward_kwargs)


def _rename(text: str, names: dict) -> str:
    for old, new in names.items():
        text = text.replace(old, new)
    return text


class _FunctionModule(Module):
    """A function in the oracle protocol seen as a Module: its float keyword
    arrays become positional inputs, its outputs a tuple (or one array)."""

    def __init__(self, fn, kwargs):
        super().__init__()
        self.fn = fn
        self.label = getattr(fn, "__name__", type(fn).__name__)
        self.names = [k for k, v in kwargs.items()
                      if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)]
        self.arrays = [kwargs[k] for k in self.names]
        self.others = {k: v for k, v in kwargs.items() if k not in self.names}
        self.keys = None

    def forward(self, *arrays):
        kwargs = {**self.others, **dict(zip(self.names, arrays))}
        outs = self.fn(**kwargs)[0]
        if isinstance(outs, dict):
            self.keys = list(outs)
            outs = tuple(outs.values())
        outs = tuple(np.asarray(o, dtype=np.float64) for o in outs) \
            if isinstance(outs, (tuple, list)) else np.asarray(outs, dtype=np.float64)
        return outs, kwargs

    def backward(self, dout, cache):
        if self.keys is not None:
            dout = dict(zip(self.keys, dout if isinstance(dout, tuple) else (dout,)))
        grads = self.fn(**cache, dout=dout)[1]
        if not isinstance(grads, dict):
            return tuple(grads)
        return tuple(None if grads.get(n) is None else np.asarray(grads[n], dtype=np.float64)
                     for n in self.names)


def _gradcheck(module, inputs, threshold, seed, max_entries, forward_kwargs) -> GradcheckReport:
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: expected a Module, got {type(module).__name__}")
    name = type(module).__name__
    module = copy.deepcopy(module).astype(np.float64)
    for p in module.parameters():
        p.data = np.ascontiguousarray(p.data)
    report = GradcheckReport(module_name=name, threshold=threshold)
    # A stream of its own: G must not equal an input a caller drew with the same seed
    # (G = x makes x^T G symmetric and would hide a transposed weight gradient).
    rng = np.random.default_rng([seed, 0x67726164])

    inputs = list(inputs)
    float_slots = []
    for i, x in enumerate(inputs):
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            inputs[i] = np.array(x, dtype=np.float64, order="C", copy=True)
            float_slots.append(i)
    watched = {f"input[{i}]": x for i, x in enumerate(inputs) if isinstance(x, np.ndarray)}
    watched.update({f"keyword argument {k!r}": v for k, v in forward_kwargs.items()
                    if isinstance(v, np.ndarray)})
    params = list(module.named_parameters(trainable_only=True))
    # frozen parameters (requires_grad=False) are not checked, but must stay
    # unchanged and get nothing added to their grads
    frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    watched.update({f"parameter {n}": p.data for n, p in module.named_parameters()})
    snapshot = {k: v.copy() for k, v in watched.items()}

    generators = _generators(module)
    rng_states = [g.bit_generator.state for g in generators]

    def restore_rngs():
        for g, s in zip(generators, rng_states):
            g.bit_generator.state = s

    restore_rngs()
    out, cache = module.forward(*inputs, **forward_kwargs)
    outs = _float_outputs(out)
    if not any(o is not None for o in outs):
        report.problems.append("forward returned no floating-point output")
        return report
    G = [None if o is None else rng.standard_normal(o.shape) for o in outs]
    dout = tuple(G) if isinstance(out, (tuple, list)) else G[0]
    G_saved = [None if g is None else g.copy() for g in G]
    # Rounding noise of L, summed as a random walk: a lower bound for every tensor's floor.
    base_noise = np.finfo(np.float64).eps * math.sqrt(
        sum(float(np.sum((o * g) ** 2)) for o, g in zip(outs, G) if g is not None)) / _STEP

    def loss() -> float:
        restore_rngs()
        o, _ = module.forward(*inputs, **forward_kwargs)
        total = 0.0
        for oi, gi in zip(_float_outputs(o), G):
            if gi is not None:
                total += float(np.sum(oi * gi))
        return total

    def run_backward(prefill):
        for pname, p in params:
            p.grad = np.zeros(p.shape) if prefill is None else prefill[pname].copy()
        for _, p in frozen:
            p.grad = np.zeros(p.shape)
        returned = _as_tuple(module.backward(dout, cache))
        for pname, p in frozen:
            problem = (f"{pname}: frozen (requires_grad=False), but backward added to "
                       f"its grad")
            if (p.grad.shape != p.shape or p.grad.any()) and problem not in report.problems:
                report.problems.append(problem)
        return returned, {pname: p.grad.copy() for pname, p in params}

    grads, pgrads = run_backward(None)
    grads2, pgrads2 = run_backward(None)
    prefill = {pname: rng.standard_normal(p.shape) * max(1e-300, float(np.abs(g).max(initial=1.0)))
               for (pname, p), g in zip(params, pgrads.values())}
    _, pgrads3 = run_backward(prefill)

    for g, g0 in zip(G, G_saved):
        if g is not None and not np.array_equal(g, g0):
            report.problems.append("backward modified the upstream gradient dout in place")
    for label, arr in watched.items():
        if not np.array_equal(arr, snapshot[label], equal_nan=True):
            report.problems.append(f"{label} was modified in place by forward or backward")
            arr[...] = snapshot[label]

    n_float = len(float_slots)
    if len(grads) != n_float:
        report.problems.append(
            f"backward returned {len(grads)} input gradient(s), expected {n_float} "
            f"(one per float input, in order)"
        )
        return report
    same = all(isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
               for a, b in zip(grads, grads2))
    same = same and all(np.array_equal(pgrads[k], pgrads2[k]) for k in pgrads)
    if not same:
        report.problems.append("backward gave different gradients when called twice with the "
                               "same cache (does it modify its cache?)")
    for pname, _ in params:
        accumulated = pgrads3[pname] - prefill[pname]
        tol = 1e-12 * max(1.0, float(np.abs(prefill[pname]).max(initial=0.0)))
        if not np.allclose(accumulated, pgrads[pname], rtol=1e-9, atol=tol):
            report.problems.append(f"{pname}: backward overwrites p.grad instead of adding to it")

    analytic: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, grad, tensor)
    for slot, g in zip(float_slots, grads):
        tname = f"input[{slot}]"
        x = inputs[slot]
        if not isinstance(g, np.ndarray) or g.shape != x.shape:
            shape = getattr(g, "shape", type(g).__name__)
            report.problems.append(f"{tname}: gradient has shape {shape}, expected {x.shape}")
            return report
        if g.dtype != np.float64:
            report.problems.append(f"{tname}: gradient has dtype {g.dtype}, expected float64")
        analytic.append((tname, np.asarray(g, dtype=np.float64), x))
    for pname, p in params:
        if pgrads[pname].shape != p.shape:
            report.problems.append(f"{pname}: grad has shape {pgrads[pname].shape}, "
                                   f"expected {p.shape}")
            return report
        analytic.append((pname, pgrads[pname], p.data))

    measured = []
    for tname, a, x in analytic:
        size = x.size
        if size <= max_entries:
            idx = np.arange(size)
        else:
            idx = np.sort(rng.choice(size, size=max_entries, replace=False))
        n = np.empty(len(idx))
        samples = []
        for k, i in enumerate(idx):
            if k < _NOISE_SAMPLES:  # a few entries per tensor also measure the noise
                n[k], entry_noise = numerical_gradient(loss, x, index=int(i), with_noise=True)
                samples.append(entry_noise)
            else:
                n[k] = numerical_gradient(loss, x, index=int(i))
        # The median: one sample whose 4h stencil crosses a kink (a ReLU input
        # near 0) must not inflate the floor of the whole tensor.
        noise = max(base_noise, float(np.median(samples)))
        a_sel = a.reshape(-1)[idx]
        direction = None
        if size > max_entries:
            d = rng.standard_normal(x.shape)
            d /= np.linalg.norm(d)
            direction = (float(np.sum(a * d)), numerical_gradient(loss, x, direction=d))
        measured.append((tname, a, a_sel, n, direction, x.shape, len(idx), noise))

    for tname, a, a_sel, n, direction, shape, checked, noise in measured:
        floor = _NOISE_MARGIN * noise / threshold
        amax = float(np.abs(a).max(initial=0.0))
        scale = max(amax, float(np.abs(n).max(initial=0.0)))
        diff = float(np.abs(a_sel - n).max(initial=0.0))
        if direction is not None:
            ad, nd = direction
            diff = max(diff, abs(ad - nd))
            scale = max(scale, abs(ad), abs(nd))
        denom = max(scale, floor)
        if not (np.isfinite(diff) and np.isfinite(denom)):
            error = float("inf")
        else:
            error = float(diff / denom) if denom > 0 else 0.0
        report.tensors.append(TensorCheck(tname, tuple(shape), checked, direction is not None,
                                          error, amax, floored=bool(floor > scale),
                                          noise=noise))
    return report


class Case(NamedTuple):
    """One named gradient check: ``build(rng) -> (module, inputs, kwargs)``.

    ``build`` makes a float64 module and its inputs at small sizes from the
    generator it is given; ``kwargs`` are the forward's keyword arguments,
    plus ``max_entries`` where the check should sample large tensors.  The cases
    of every layer live in ``numtransformer.cases``, and ``numtransformer
    gradcheck`` runs them all: ``gradcheck(module, *inputs, **kwargs)``.
    """

    name: str
    build: Callable[[np.random.Generator], tuple]  # rng -> (module, inputs, kwargs)


# -- more modes: random projections, JVPs, structure -----------------------------------------
#
# The checks below accept either a Module (inputs positional, as ``gradcheck``)
# or a function in the oracle protocol (``numtransformer.oracle``): called as
# ``fn(**inputs, dout=None)`` it returns ``(outputs, grads)``, two dicts by
# name (or an array and a tuple), inputs passed by keyword.  Either way the
# tensors checked are the float inputs (and a module's trainable parameters),
# in float64.


class _Target:
    """One thing to check, as arrays perturbed in place, a forward and a VJP."""

    def __init__(self, target, inputs, kwargs, who):
        self.who = who
        self.problems: list[str] = []
        if isinstance(target, Module):
            self._init_module(target, inputs, kwargs)
        elif callable(target):
            if inputs:
                raise TypeError(f"{who}: a function target takes its inputs by keyword "
                                f"(the oracle protocol), got {len(inputs)} positional")
            self._init_function(target, kwargs)
        else:
            raise TypeError(f"{who}: expected a Module or a function in the oracle protocol, "
                            f"got {type(target).__name__}")

    def _init_module(self, module, inputs, kwargs):
        self.name = type(module).__name__
        module = copy.deepcopy(module).astype(np.float64)
        for p in module.parameters():
            p.data = np.ascontiguousarray(p.data)
        self.module, self.kwargs = module, kwargs
        self.inputs = list(inputs)
        self.names, self.arrays, self.input_slots = [], [], []
        for i, x in enumerate(self.inputs):
            if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
                self.inputs[i] = np.array(x, dtype=np.float64, order="C", copy=True)
                self.input_slots.append(len(self.arrays))
                self.names.append(f"input[{i}]")
                self.arrays.append(self.inputs[i])
        self.params = list(module.named_parameters(trainable_only=True))
        for n, p in self.params:
            self.names.append(n)
            self.arrays.append(p.data)
        self.generators = _generators(module)
        self.rng_states = [g.bit_generator.state for g in self.generators]
        self._structure = None

    def _init_function(self, fn, kwargs):
        self.name = getattr(fn, "__name__", type(fn).__name__)
        self.module, self.fn = None, fn
        self.kwargs = dict(kwargs)
        self.names, self.arrays = [], []
        for k, v in self.kwargs.items():
            if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating):
                self.kwargs[k] = np.array(v, dtype=np.float64, order="C", copy=True)
                self.names.append(k)
                self.arrays.append(self.kwargs[k])
        self.input_slots = list(range(len(self.arrays)))
        self._structure = None

    def _restore_rngs(self):
        for g, s in zip(self.generators, self.rng_states):
            g.bit_generator.state = s

    def outputs(self) -> list:
        """The float outputs (None for a non-float one), in order."""
        if self.module is not None:
            self._restore_rngs()
            out, _ = self.module.forward(*self.inputs, **self.kwargs)
            self._structure = isinstance(out, (tuple, list))
            return _float_outputs(out)
        outs = self.fn(**self.kwargs)[0]
        if isinstance(outs, dict):
            self._structure = list(outs)
            outs = list(outs.values())
        else:
            self._structure = isinstance(outs, (tuple, list))
            outs = list(outs) if self._structure else [outs]
        return [np.asarray(o, dtype=np.float64) for o in outs]

    def vjp(self, G: list) -> list:
        """The gradients of sum_k <out_k, G_k> for every array (forward + backward)."""
        if self.module is not None:
            self._restore_rngs()
            out, cache = self.module.forward(*self.inputs, **self.kwargs)
            dout = tuple(G) if isinstance(out, (tuple, list)) else G[0]
            for _, p in self.params:
                p.grad = np.zeros(p.shape)
            returned = _as_tuple(self.module.backward(dout, cache))
            n_in = len(self.input_slots)
            if len(returned) != n_in:
                raise ValueError(f"{self.who}: backward returned {len(returned)} input "
                                 f"gradient(s), expected {n_in}")
            return [np.asarray(g, dtype=np.float64) for g in returned] + \
                [p.grad.copy() for _, p in self.params]
        if self._structure is None:
            self.outputs()
        if isinstance(self._structure, list):
            dout = dict(zip(self._structure, G))
        else:
            dout = tuple(G) if self._structure else G[0]
        grads = self.fn(**self.kwargs, dout=dout)[1]
        if not isinstance(grads, dict):
            grads = dict(zip(self.names, _as_tuple(grads)))
        result = []
        for n, x in zip(self.names, self.arrays):
            g = grads.get(n)
            if g is None:
                problem = f"{n}: no gradient returned"
                if problem not in self.problems:
                    self.problems.append(problem)
                g = np.zeros(x.shape)
            g = np.asarray(g.detach().cpu().numpy() if hasattr(g, "detach") else g,
                           dtype=np.float64)
            if g.shape != x.shape:
                raise ValueError(f"{self.who}: gradient of {n} has shape {g.shape}, "
                                 f"expected {x.shape}")
            result.append(g)
        return result

    def loss(self, G) -> float:
        return sum(float(np.sum(o * g)) for o, g in zip(self.outputs(), G) if g is not None)

    def move(self, directions, t: float, saved):
        for x, d, x0 in zip(self.arrays, directions, saved):
            if d is not None:
                x[...] = x0 + t * d


def _stencil(f, target: _Target, directions, h: float):
    """Fourth-order central differences of f (scalar or list of arrays) along the
    joint direction, at steps h and 2h (their difference measures the noise)."""
    saved = [x.copy() for x in target.arrays]
    try:
        vals = {}
        for t in (1, 2, -1, -2, 4, -4):
            target.move(directions, t * h, saved)
            vals[t] = f()
    finally:
        target.move(directions, 0.0, saved)
        for x, x0 in zip(target.arrays, saved):
            x[...] = x0

    def combine(a, b, c, d, step):
        if isinstance(a, list):
            return [None if ai is None else (-bi + 8 * ai - 8 * ci + di) / (12 * step)
                    for ai, bi, ci, di in zip(a, b, c, d)]
        return (-b + 8 * a - 8 * c + d) / (12 * step)

    return (combine(vals[1], vals[2], vals[-1], vals[-2], h),
            combine(vals[2], vals[4], vals[-2], vals[-4], 2 * h))


def _random_direction(rng, arrays, only=None):
    d = [rng.standard_normal(x.shape) if (only is None or i == only) else None
         for i, x in enumerate(arrays)]
    norm = math.sqrt(sum(float(np.sum(x * x)) for x in d if x is not None))
    return [None if x is None else x / max(norm, 1e-300) for x in d]


def _scale_of(target, directions) -> float:
    return max((float(np.abs(x).max(initial=0.0)) for x, d in zip(target.arrays, directions)
                if d is not None), default=0.0)


def _setup(target, inputs, kwargs, who, seed):
    tgt = _Target(target, inputs, kwargs, who)
    rng = np.random.default_rng([seed, 0x66617374])
    outs = tgt.outputs()
    if not any(o is not None for o in outs):
        raise ValueError(f"{who}: the forward returned no floating-point output")
    G = [None if o is None else rng.standard_normal(o.shape) for o in outs]
    base_noise = np.finfo(np.float64).eps * math.sqrt(
        sum(float(np.sum((o * g) ** 2)) for o, g in zip(outs, G) if g is not None)) / _STEP
    return tgt, rng, outs, G, base_noise


def _accumulation_problems(tgt: _Target, G, grads, rng) -> list[str]:
    """A module's parameter grads must be added to p.grad, not written over it."""
    if tgt.module is None or not tgt.params:
        return []
    tgt._restore_rngs()
    out, cache = tgt.module.forward(*tgt.inputs, **tgt.kwargs)
    prefill = {n: rng.standard_normal(p.shape) for n, p in tgt.params}
    for n, p in tgt.params:
        p.grad = prefill[n].copy()
    tgt.module.backward(tuple(G) if isinstance(out, (tuple, list)) else G[0], cache)
    problems = []
    offset = len(tgt.input_slots)
    for k, (n, p) in enumerate(tgt.params):
        if not np.allclose(p.grad - prefill[n], grads[offset + k], rtol=1e-9, atol=1e-12):
            problems.append(f"{n}: backward overwrites p.grad instead of adding to it")
    return problems


def gradcheck_fast(target, *inputs, threshold: float = 1e-7, seed: int = 0,
                   directions: int = 1, per_tensor: bool = False, kernels: str = "reference",
                   **kwargs) -> GradcheckReport:
    """Fast mode: random projections v^T J u instead of the Jacobian (PyTorch's
    ``gradcheck(fast_mode=True)``), for models too large for ``gradcheck``.

    v = G is the random upstream gradient (L = sum out * G, as ``gradcheck``);
    u a random unit direction over *all* the float inputs and trainable
    parameters at once.  The analytic side is one backward pass, v^T J u =
    sum_k <grad_k, u_k>; the numeric side is the derivative of L along u by
    the same fourth-order stencil (four forward passes, two more measure the
    noise).  Error: |a - n| / max(|a|, |n|, floor), floor as ``gradcheck``'s.
    ``directions`` independent u's are tried.  When one fails (or always,
    with ``per_tensor=True``) every tensor is checked along a direction of
    its own, so the report names the wrong tensor.  For a module it also
    checks that parameter gradients are accumulated into ``p.grad``.

    ``target``: a Module (``inputs`` positional, ``kwargs`` for forward) or a
    function in the oracle protocol (inputs by keyword).
    """
    with use_kernels(kernels):
        tgt, rng, outs, G, base_noise = _setup(target, inputs, kwargs, "gradcheck_fast", seed)
        report = GradcheckReport(module_name=tgt.name + " (fast mode)", threshold=threshold)
        grads = tgt.vjp(G)
        report.problems.extend(_accumulation_problems(tgt, G, grads, rng))

        def one(direction, label, shape, count):
            a = sum(float(np.sum(g * d)) for g, d in zip(grads, direction) if d is not None)
            h = _step(_scale_of(tgt, direction))
            n, n2 = _stencil(lambda: tgt.loss(G), tgt, direction, h)
            noise = max(base_noise, abs(n - n2))
            floor = _NOISE_MARGIN * noise / threshold
            scale = max(abs(a), abs(n))
            denom = max(scale, floor)
            err = abs(a - n) / denom if denom > 0 else 0.0
            if not math.isfinite(err):
                err = float("inf")
            amax = max((float(np.abs(g).max(initial=0.0)) for g, d in zip(grads, direction)
                        if d is not None), default=0.0)
            return TensorCheck(label, shape, count, True, err, amax, floored=floor > scale,
                               noise=noise)

        size = sum(x.size for x in tgt.arrays)
        joint = [one(_random_direction(rng, tgt.arrays), f"all {len(tgt.arrays)} tensors "
                     f"(direction {k + 1})", (size,), 0) for k in range(directions)]
        report.tensors.extend(joint)
        if per_tensor or any(t.error > threshold for t in joint) or tgt.problems:
            report.tensors.extend(one(_random_direction(rng, tgt.arrays, only=i), name, x.shape, 0)
                                  for i, (name, x) in enumerate(zip(tgt.names, tgt.arrays)))
        report.problems.extend(tgt.problems)
    return report


def jvp_check(target, *inputs, threshold: float = 1e-7, seed: int = 0, directions: int = 2,
              probes: int = 3, jvp=None, kernels: str = "reference", **kwargs) -> GradcheckReport:
    """JVPs along random directions, as JAX's ``check_grads(modes=["fwd", "rev"])``.

    For each of ``directions`` random unit directions u (over every float input
    and parameter at once) the Jacobian-vector product J u is taken by central
    differences of the *outputs* (a whole output-shaped array), then checked
    against the backward pass through ``probes`` random output vectors v:
    v . (J u) must equal (v^T J) . u, one backward per probe.  With ``jvp``, a
    callable ``jvp(tangents) -> tangent outputs`` (``tangents`` a dict by the
    names the report uses: ``input[i]``, parameter names, or the keyword names
    of a function target; it returns an array, tuple or dict like the
    outputs), J u is also compared entry by entry with the candidate's own
    forward-mode derivative (a JAX ``jax.jvp``, a PyTorch ``torch.func.jvp``).
    """
    with use_kernels(kernels):
        tgt, rng, outs, G, base_noise = _setup(target, inputs, kwargs, "jvp_check", seed)
        report = GradcheckReport(module_name=tgt.name + " (JVP)", threshold=threshold)
        vs = [[None if o is None else rng.standard_normal(o.shape) for o in outs]
              for _ in range(probes)]
        vjps = [tgt.vjp(v) for v in vs]
        floats = [i for i, o in enumerate(outs) if o is not None]
        for k in range(directions):
            u = _random_direction(rng, tgt.arrays)
            h = _step(_scale_of(tgt, u))
            Ju, Ju2 = _stencil(tgt.outputs, tgt, u, h)
            worst, floored, noise_max = 0.0, False, 0.0
            for v, g in zip(vs, vjps):
                num = sum(float(np.sum(v[i] * Ju[i])) for i in floats)
                num2 = sum(float(np.sum(v[i] * Ju2[i])) for i in floats)
                ana = sum(float(np.sum(gi * ui)) for gi, ui in zip(g, u))
                noise = max(base_noise, abs(num - num2))
                floor = _NOISE_MARGIN * noise / threshold
                scale = max(abs(num), abs(ana))
                denom = max(scale, floor)
                worst = max(worst, abs(num - ana) / denom if denom > 0 else 0.0)
                floored = floored or floor > scale
                noise_max = max(noise_max, noise)
            jmax = max(float(np.abs(Ju[i]).max(initial=0.0)) for i in floats)
            report.tensors.append(TensorCheck(f"J u (direction {k + 1}) vs {probes} VJPs",
                                              (sum(x.size for x in tgt.arrays),), probes, True,
                                              worst, jmax, floored, noise_max))
            if jvp is not None:
                got = jvp({n: d for n, d in zip(tgt.names, u)})
                if isinstance(got, dict):
                    got = list(got.values())
                elif not isinstance(got, (tuple, list)):
                    got = [got]
                diff, noise = 0.0, 0.0
                for i, gi in zip(floats, got):
                    gi = np.asarray(gi.detach().cpu().numpy() if hasattr(gi, "detach") else gi,
                                    dtype=np.float64)
                    if gi.shape != Ju[i].shape:
                        report.problems.append(f"jvp output {i} has shape {gi.shape}, "
                                               f"expected {Ju[i].shape}")
                        continue
                    diff = max(diff, float(np.abs(gi - Ju[i]).max(initial=0.0)))
                    noise = max(noise, float(np.abs(Ju[i] - Ju2[i]).max(initial=0.0)))
                floor = _NOISE_MARGIN * max(noise, base_noise) / threshold
                denom = max(jmax, floor)
                report.tensors.append(TensorCheck(f"J u (direction {k + 1}) vs jvp",
                                                  Ju[floats[0]].shape, int(Ju[floats[0]].size),
                                                  True, diff / denom if denom > 0 else 0.0,
                                                  jmax, floor > jmax, noise))
        report.problems.extend(tgt.problems)
    return report


@dataclass
class StructuralReport:
    """The result of a structural check (causality, padding): exact zeros expected."""

    name: str
    check: str
    atol: float
    checked: list = field(default_factory=list)  # the tensors checked
    violations: list = field(default_factory=list)  # one line each

    @property
    def passed(self) -> bool:
        return not self.violations

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else f"FAILED ({len(self.violations)} violations)"
        lines = [f"{self.check} {self.name}: {verdict} (tensors {', '.join(self.checked)}; "
                 f"atol {self.atol:g})"]
        lines += [f"  {v}" for v in self.violations[:20]]
        if len(self.violations) > 20:
            lines.append(f"  ... and {len(self.violations) - 20} more")
        return "\n".join(lines)

    def assert_passed(self) -> None:
        if not self.passed:
            raise AssertionError(str(self))


def _pick_inputs(tgt: _Target, wanted, ok, who) -> list[int]:
    """Indices into tgt.arrays of the inputs a structural check looks at."""
    slots = tgt.input_slots
    if wanted is None:
        chosen = [i for i in slots if ok(tgt.arrays[i])]
    else:
        by_name = {tgt.names[i]: i for i in slots}
        chosen = []
        for w in ([wanted] if isinstance(wanted, (int, str)) else wanted):
            key = f"input[{w}]" if isinstance(w, int) else w
            if key not in by_name:
                raise ValueError(f"{who}: no float input {key!r}; the float inputs are "
                                 f"{sorted(by_name)}")
            chosen.append(by_name[key])
    if not chosen:
        raise ValueError(f"{who}: no float input to check (pass inputs=...)")
    return chosen


def check_causality(target, *inputs, time_axis: int = 1, output_index: int = 0,
                    causal_inputs=None, atol: float = 0.0, seed: int = 0,
                    kernels: str = "reference", **kwargs) -> StructuralReport:
    """Output position t must not depend on input positions after t.

    For every t: the gradient of output t (along ``time_axis``, a random
    upstream gradient on that slice alone) with respect to every input
    position s > t must be exactly zero (<= ``atol``), and moving the inputs
    at positions s > t must leave outputs 0 .. t bit for bit unchanged.
    ``causal_inputs``: the inputs to check (positions, or keyword names for a
    function target; default: every float input as long as the output along
    ``time_axis``).  A decoder's causal mask goes in ``kwargs`` as usual.
    """
    who = "check_causality"
    with use_kernels(kernels):
        tgt = _Target(target, inputs, kwargs, who)
        rng = np.random.default_rng([seed, 0x63617573])
        outs = tgt.outputs()
        out = outs[output_index]
        T = out.shape[time_axis]
        chosen = _pick_inputs(tgt, causal_inputs,
                              lambda x: x.ndim > time_axis and x.shape[time_axis] == T, who)
        report = StructuralReport(tgt.name, "causality", atol, [tgt.names[i] for i in chosen])
        for t in range(T):
            G = [None if o is None else np.zeros(o.shape) for o in outs]
            sl = [slice(None)] * out.ndim
            sl[time_axis] = t
            G[output_index][tuple(sl)] = rng.standard_normal(G[output_index][tuple(sl)].shape)
            grads = tgt.vjp(G)
            for i in chosen:
                future = np.moveaxis(grads[i], time_axis, 0)[t + 1:]
                leak = float(np.abs(future).max(initial=0.0))
                if leak > atol:
                    report.violations.append(f"backward: output {t} has gradient {leak:.3e} "
                                             f"w.r.t. {tgt.names[i]} at a later position")
        saved = [x.copy() for x in tgt.arrays]
        try:
            for t in range(T - 1):
                for i in chosen:
                    view = np.moveaxis(tgt.arrays[i], time_axis, 0)
                    view[t + 1:] = rng.standard_normal(view[t + 1:].shape) * 3.0
                moved = tgt.outputs()[output_index]
                before = np.moveaxis(out, time_axis, 0)[:t + 1]
                after = np.moveaxis(moved, time_axis, 0)[:t + 1]
                diff = float(np.abs(after - before).max(initial=0.0))
                if not diff <= atol:
                    report.violations.append(f"forward: outputs 0..{t} changed by {diff:.3e} "
                                             f"when inputs after {t} changed")
                for x, x0 in zip(tgt.arrays, saved):
                    x[...] = x0
        finally:
            for x, x0 in zip(tgt.arrays, saved):
                x[...] = x0
        report.violations.extend(tgt.problems)
    return report


def check_padding(target, *inputs, padding_mask, time_axis: int = 1, output_index: int = 0,
                  padded_inputs=None, output_padding="auto", atol: float = 0.0, seed: int = 0,
                  kernels: str = "reference", **kwargs) -> StructuralReport:
    """Padded positions must receive exactly zero gradient and must not change
    the outputs at real positions.

    ``padding_mask`` (B, T), True = padding, marks positions of the inputs
    ``padded_inputs`` (default: every float input with that batch size and
    that length on ``time_axis``).  The upstream gradient is random at real
    output positions and zero at padded ones (``output_padding``: a (B, T_out)
    mask; "auto": ``padding_mask`` when the output has the same length, else
    no output position is padded).  Checks: the gradient at every padded
    input position is zero (<= ``atol``), and putting other values there
    leaves every real output position unchanged.  The module's own mask goes
    in ``kwargs`` (its ``key_padding_mask`` is usually ``padding_mask``).
    """
    who = "check_padding"
    pad = np.asarray(padding_mask)
    if pad.dtype != np.bool_ or pad.ndim != 2:
        raise ValueError(f"{who}: padding_mask must be a (B, T) boolean array, got "
                         f"{pad.dtype} {pad.shape}")
    B, T = pad.shape
    with use_kernels(kernels):
        tgt = _Target(target, inputs, kwargs, who)
        rng = np.random.default_rng([seed, 0x70616464])
        outs = tgt.outputs()
        out = outs[output_index]
        chosen = _pick_inputs(
            tgt, padded_inputs,
            lambda x: x.ndim > time_axis and x.shape[0] == B and x.shape[time_axis] == T, who)
        report = StructuralReport(tgt.name, "padding", atol, [tgt.names[i] for i in chosen])
        if isinstance(output_padding, str):
            same = out.ndim > time_axis and out.shape[0] == B and out.shape[time_axis] == T
            out_pad = pad if same else None
        else:
            out_pad = None if output_padding is None else np.asarray(output_padding, dtype=bool)

        def real(o):  # (N_real, ...) the output entries at real positions
            if out_pad is None:
                return o.reshape(1, -1)
            return np.moveaxis(o, time_axis, 1)[~out_pad]

        G = [None if o is None else rng.standard_normal(o.shape) for o in outs]
        if out_pad is not None:
            np.moveaxis(G[output_index], time_axis, 1)[out_pad] = 0.0
        grads = tgt.vjp(G)
        for i in chosen:
            leak = float(np.abs(np.moveaxis(grads[i], time_axis, 1)[pad]).max(initial=0.0))
            if leak > atol:
                report.violations.append(f"backward: {tgt.names[i]} gets gradient {leak:.3e} "
                                         f"at a padded position")
        saved = [x.copy() for x in tgt.arrays]
        try:
            for trial in range(2):
                for i in chosen:
                    view = np.moveaxis(tgt.arrays[i], time_axis, 1)
                    view[pad] = rng.standard_normal(view[pad].shape) * (3.0 + 30.0 * trial)
                moved = tgt.outputs()[output_index]
                diff = float(np.abs(real(moved) - real(out)).max(initial=0.0))
                if not diff <= atol:
                    report.violations.append(f"forward: real output positions changed by "
                                             f"{diff:.3e} when padded inputs changed")
                    break
        finally:
            for x, x0 in zip(tgt.arrays, saved):
                x[...] = x0
        report.violations.extend(tgt.problems)
    return report
