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
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from .kernels import use_kernels
from .module import Module

__all__ = ["gradcheck", "GradcheckReport", "TensorCheck", "numerical_gradient", "relu_margin",
           "Case"]

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
    """
    with use_kernels(kernels):
        return _gradcheck(module, inputs, threshold, seed, max_entries, forward_kwargs)


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
