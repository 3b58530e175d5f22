"""``compare``: run someone's forward/backward against the oracle on many cases.

A *candidate* is any callable with the oracle's protocol: called as
``candidate(**case, dout=dout)`` it returns ``(outputs, grads)``, where
``outputs`` is an array (a family with one output) or a dict of them, and
``grads`` a dict of gradients by argument name (or a tuple in the order of
the oracle's ``grads``).  Arrays may be NumPy arrays or anything
``numpy.asarray`` accepts (detach torch tensors first).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .examples import describe, sample_cases

__all__ = ["TensorComparison", "CompareReport", "compare"]

_FLOOR = 1e-3  # a tensor is judged relative to at least 1e-3 x the case's largest tensor


@dataclass
class TensorComparison:
    """The worst errors of one named tensor over all cases."""

    name: str
    max_abs: float = 0.0  # max |candidate - oracle|
    max_rel: float = 0.0  # max over cases of max|c - o| / max|o| (the gradcheck convention)
    cases: int = 0  # cases in which it was compared
    failures: int = 0  # cases in which it failed
    first_failure: str | None = None  # "case i: shapes and options" of the first failure
    problem: str | None = None  # missing, wrong shape, NaN, ... (the first seen)

    @property
    def passed(self) -> bool:
        return self.failures == 0


@dataclass
class CompareReport:
    """Per-tensor errors of a candidate against the oracle."""

    reference: str
    rtol: float
    atol: float
    n_cases: int = 0
    tensors: dict = field(default_factory=dict)  # name -> TensorComparison
    errors: list = field(default_factory=list)  # (case description, exception text)

    @property
    def passed(self) -> bool:
        return not self.errors and all(t.passed for t in self.tensors.values())

    @property
    def failed_tensors(self) -> list[str]:
        return [n for n, t in self.tensors.items() if not t.passed]

    def __bool__(self) -> bool:
        return self.passed

    def table(self) -> str:
        rows = [("tensor", "max abs err", "max rel err", "pass", "first failing case")]
        for t in self.tensors.values():
            rows.append((t.name, f"{t.max_abs:.2e}", f"{t.max_rel:.2e}",
                         "ok" if t.passed else f"FAIL {t.failures}/{t.cases}",
                         (t.problem + "; " if t.problem else "") + (t.first_failure or "")))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join([c.ljust(w) for c, w in zip(r[:4], widths)] + [r[4]]).rstrip()
                 for r in rows]
        lines += [f"error in {where}: {what}" for where, what in self.errors[:3]]
        return "\n".join(lines)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED: " + ", ".join(
            self.failed_tensors + (["(exceptions)"] if self.errors else []))
        return (f"compare against oracle {self.reference}: {verdict} "
                f"({self.n_cases} cases, rtol {self.rtol:.0e}, atol {self.atol:.0e})\n"
                + self.table())

    def assert_passed(self) -> None:
        if not self.passed:
            raise AssertionError(str(self))


def _resolve(reference):
    from . import FUNCTIONS
    if isinstance(reference, str):
        if reference not in FUNCTIONS:
            raise ValueError(f"compare: unknown oracle {reference!r}; expected one of "
                             f"{sorted(FUNCTIONS)}")
        return reference, FUNCTIONS[reference]
    for name, fn in FUNCTIONS.items():
        if fn is reference:
            return name, fn
    return getattr(reference, "__name__", "reference"), reference


def _as_dict(x, names, what):
    if isinstance(x, dict):
        return dict(x)
    if isinstance(x, (tuple, list)):
        if len(x) != len(names):
            raise ValueError(f"the candidate returned {len(x)} {what}, expected {len(names)} "
                             f"({', '.join(names)})")
        return dict(zip(names, x))
    if len(names) != 1:
        raise ValueError(f"the candidate returned one array of {what}, expected "
                         f"{', '.join(names)}")
    return {names[0]: x}


def _to_numpy(x):
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def compare(candidate, reference, cases=None, *, n: int = 20, seed: int = 0,
            rtol: float = 1e-9, atol: float = 0.0, names=None, verbose: bool = True,
            ) -> CompareReport:
    """Run ``candidate`` and the oracle ``reference`` on every case and compare
    every output and gradient by name.

    ``reference``: an oracle function (``oracle.scaled_dot_product_attention``)
    or its name.  ``cases``: a list of keyword-argument dicts (see
    ``oracle.examples``), a hypothesis strategy of such dicts (``n`` examples are
    drawn), or None: ``n`` cases of the family drawn by ``sample_cases`` with
    ``seed``.  Each case gets an upstream gradient ``dout`` ~ N(0, 1) per
    output (never all ones: softmax's backward is exactly zero for it).

    A tensor passes a case when ``max|c - o| <= atol + rtol * scale``, its
    shape matches and it is finite; ``scale = max(max|o|, max|c|, 1e-3 m)``,
    m the largest entry of any tensor of the case: the error relative to the
    tensor's largest entry (as ``gradcheck``), except that a gradient that is
    exactly zero (a query with a single visible key has dq = 0) is judged
    against a thousandth of the case's scale instead of against its rounding
    noise.  The report's "max rel err" is max|c - o| / scale.  ``names``:
    compare only these tensors.  Prints the per-tensor report when
    ``verbose``; returns the ``CompareReport``.
    """
    ref_name, ref = _resolve(reference)
    if cases is None:
        cases = sample_cases(ref_name, n, seed)
    elif hasattr(cases, "example"):  # a hypothesis strategy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = [cases.example() for _ in range(n)]
    report = CompareReport(reference=ref_name, rtol=rtol, atol=atol)
    rng = np.random.default_rng([seed, 0x6F72])
    for i, case in enumerate(cases):
        where = f"case {i}: {describe(case)}"
        report.n_cases += 1
        outs, _ = ref(**case)
        dout = {k: rng.standard_normal(np.shape(o)) for k, o in outs.items()}
        dout_arg = dout if len(dout) > 1 else next(iter(dout.values()))
        expected_outs, expected_grads = ref(**case, dout=dout)
        expected = {**expected_outs, **{"d" + k: g for k, g in expected_grads.items()}}
        try:
            got_outs, got_grads = candidate(**case, dout=dout_arg)
            got = {**_as_dict(got_outs, list(expected_outs), "outputs"),
                   **{"d" + k: g for k, g in _as_dict(got_grads, list(expected_grads),
                                                      "gradients").items()}}
        except Exception as exc:  # a crash in one case is reported, the rest still run
            report.errors.append((where, f"{type(exc).__name__}: {exc}"))
            continue
        case_scale = max(float(np.abs(o).max(initial=0.0)) for o in expected.values())
        for k, o in expected.items():
            if names is not None and k not in names and not (k.startswith("d") and k[1:] in names):
                continue
            t = report.tensors.setdefault(k, TensorComparison(k))
            t.cases += 1
            problem = None
            c = got.get(k)
            if c is None:
                problem = "missing"
            else:
                c = _to_numpy(c)
                if c.shape != o.shape:
                    problem = f"shape {c.shape}, expected {o.shape}"
                elif not np.all(np.isfinite(c)):
                    problem = "NaN/inf"
            if problem is None:
                diff = float(np.abs(c - o).max(initial=0.0))
                scale = max(float(np.abs(o).max(initial=0.0)), float(np.abs(c).max(initial=0.0)),
                            _FLOOR * case_scale)
                rel = diff / scale if scale > 0 else (0.0 if diff == 0 else np.inf)
                t.max_abs, t.max_rel = max(t.max_abs, diff), max(t.max_rel, rel)
                ok = diff <= atol + rtol * scale
            else:
                ok = False
                t.problem = t.problem or problem
                t.max_abs = t.max_rel = np.inf
            if not ok:
                t.failures += 1
                if t.first_failure is None:
                    t.first_failure = where
    if verbose:
        print(report)
    return report
