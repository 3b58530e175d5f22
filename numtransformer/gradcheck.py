"""Finite-difference gradient checking: the proof behind every backward pass.

``gradcheck(module, *inputs, **forward_kwargs)`` compares the gradients that
``module.backward`` computes ("analytic", ``a``) with central finite differences
("numeric", ``n``) of the scalar

    L = sum_k sum(out_k * G_k)          (G_k ~ N(0, 1), fixed by ``seed``)

for every float input (named ``input[i]``) and every parameter (named by its
dotted name).  Everything runs in float64 on a deep copy of the module, so the
caller's parameters, gradients and random generators are left untouched.

Numerical derivative: the fourth-order central stencil

    dL/dx ~ (-L(x+2h) + 8 L(x+h) - 8 L(x-h) + L(x-2h)) / (12 h),   h = 1e-4,

whose truncation error (O(h^4)) is far below its rounding error
(~1e-12 * |L|), so the check resolves errors well under 1e-7.  Inputs must sit
farther than 2h from any kink (ReLU at 0).

Which entries: a tensor with at most ``max_entries`` entries is checked in
full; a larger one at ``max_entries`` random entries *plus* one directional
derivative along a random unit direction d (``a . d`` against the stencil of
``L(x + t d)``), which sees every entry at once.

The error reported per tensor is

    err = max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|, floor)

the worst difference relative to that tensor's largest gradient (a per-entry
ratio is noise wherever a true gradient is ~0).  ``floor = noise / threshold``
where ``noise = 15 * eps_float64 * S / h`` bounds the stencil's rounding error
(S = sum |out * G| at the unperturbed point, 15 = 10 x the stencil's
coefficient sum 18/12): a difference the finite differences cannot resolve
never fails the check.  That matters only for tensors whose exact gradient is
zero or tiny (a bias before a softmax, which shift invariance makes exactly
zero; a softmax over one element); for every other tensor the floor is orders
of magnitude below its own gradient scale and the error is plainly relative.

It also catches three classic mistakes that a plain comparison misses:
parameter gradients *overwritten* instead of accumulated (every ``p.grad`` is
pre-filled with random values before backward and the analytic gradient is the
difference), an input array mutated in place by forward or backward, and an
upstream gradient mutated by backward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from .module import Module

__all__ = ["gradcheck", "GradcheckReport", "TensorCheck", "numerical_gradient"]

_STEP = 1e-4


@dataclass(frozen=True)
class TensorCheck:
    """The result for one named tensor."""

    name: str
    shape: tuple
    entries_checked: int  # entries compared one by one (plus a directional derivative
    directional: bool  # when the tensor was larger than max_entries)
    error: float  # max |a - n| / max(max|a|, max|n|, floor)
    max_abs_grad: float  # max |a| over the whole analytic gradient


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
                (t.name, "x".join(map(str, t.shape)) or "()", checked, f"{t.error:.2e}",
                 "ok" if t.error <= self.threshold else "FAIL")
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
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


def _float_outputs(out) -> list:
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [x if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) else None
            for x in items]


def numerical_gradient(f, x: np.ndarray, index=None, direction=None, h: float = _STEP) -> float:
    """Fourth-order central difference of the scalar ``f()`` w.r.t. ``x``.

    Perturbs ``x`` in place (restoring it afterwards) at the flat ``index``, or
    along ``direction`` (an array of x's shape) when given.
    """
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient: x must be C-contiguous (it is perturbed in place)")
    flat = x.reshape(-1)
    if direction is not None:
        d = direction.reshape(-1)
        saved = flat.copy()

        def at(t):
            flat[:] = saved + t * d
            return f()
    else:
        saved = flat[index]

        def at(t):
            flat[index] = saved + t
            return f()
    try:
        value = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
    finally:
        if direction is not None:
            flat[:] = saved
        else:
            flat[index] = saved
    return float(value)


def gradcheck(
    module: Module,
    *inputs,
    threshold: float = 1e-7,
    seed: int = 0,
    max_entries: int = 64,
    **forward_kwargs,
) -> GradcheckReport:
    """Check ``module.backward`` against finite differences (see the module docstring).

    ``inputs`` are passed to ``forward`` positionally (float arrays are cast to
    float64; ids and masks pass unchanged); ``forward_kwargs`` by keyword.
    Returns a ``GradcheckReport``; call ``.assert_passed()`` in a test.
    """
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
    originals = [x.copy() if isinstance(x, np.ndarray) else x for x in inputs]

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
    S = sum(float(np.sum(np.abs(o * g))) for o, g in zip(outs, G) if g is not None)
    floor = 15 * np.finfo(np.float64).eps * S / _STEP / threshold

    def loss() -> float:
        restore_rngs()
        o, _ = module.forward(*inputs, **forward_kwargs)
        total = 0.0
        for oi, gi in zip(_float_outputs(o), G):
            if gi is not None:
                total += float(np.sum(oi * gi))
        return total

    params = list(module.named_parameters())
    prefill = {}
    for pname, p in params:
        prefill[pname] = rng.standard_normal(p.shape)
        p.grad = prefill[pname].copy()

    grads = module.backward(dout, cache)

    for g, g0 in zip(G, G_saved):
        if g is not None and not np.array_equal(g, g0):
            report.problems.append("backward modified the upstream gradient dout in place")
    for i, (x, x0) in enumerate(zip(inputs, originals)):
        if isinstance(x, np.ndarray) and not np.array_equal(x, x0, equal_nan=True):
            report.problems.append(f"input[{i}] was modified in place by forward or backward")
            inputs[i][...] = x0

    # Normalise backward's return value: one array, a tuple, or None.
    n_float = len(float_slots)
    if grads is None:
        grads = ()
    elif isinstance(grads, np.ndarray):
        grads = (grads,)
    grads = tuple(grads)
    if len(grads) != n_float:
        report.problems.append(
            f"backward returned {len(grads)} input gradient(s), expected {n_float} "
            f"(one per float input, in order)"
        )
        return report

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
        if p.grad.shape != p.shape:
            report.problems.append(f"{pname}: grad has shape {p.grad.shape}, expected {p.shape}")
            return report
        analytic.append((pname, p.grad - prefill[pname], p.data))

    measured = []
    for tname, a, x in analytic:
        size = x.size
        if size <= max_entries:
            idx = np.arange(size)
        else:
            idx = np.sort(rng.choice(size, size=max_entries, replace=False))
        n = np.array([numerical_gradient(loss, x, index=int(i)) for i in idx])
        a_sel = a.reshape(-1)[idx]
        direction = None
        if size > max_entries:
            d = rng.standard_normal(x.shape)
            d /= np.linalg.norm(d)
            direction = (float(np.sum(a * d)), numerical_gradient(loss, x, direction=d))
        measured.append((tname, a, a_sel, n, direction, x.shape, len(idx)))

    for tname, a, a_sel, n, direction, shape, checked in measured:
        amax = float(np.abs(a).max(initial=0.0))
        denom = max(amax, float(np.abs(n).max(initial=0.0)), floor)
        diff = float(np.abs(a_sel - n).max(initial=0.0))
        if direction is not None:
            ad, nd = direction
            diff = max(diff, abs(ad - nd))
            denom = max(denom, abs(ad), abs(nd))
        if not (np.isfinite(diff) and np.isfinite(denom)):
            error = float("inf")
        else:
            error = diff / denom if denom > 0 else 0.0
        report.tensors.append(TensorCheck(tname, tuple(shape), checked,
                                          direction is not None, error, amax))
    return report
