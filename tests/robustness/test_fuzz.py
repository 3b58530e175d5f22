"""Property-based fuzz of every public layer and model (issue 10).

Two drivers share one judge (``fuzz.run_case``):

* ``test_sweep``: deterministic, every argument of every spec under every
  mutation of its kind, plus the size edge cases (empty batch, length 0 and
  1, source length 0 and 1), in float32 and float64;
* ``test_hypothesis``: hypothesis draws sizes, dtype, train/eval mode, which
  optional arguments are present, the values, and at most one mutation.

The number of calls per spec is collected in ``fuzz.COUNTS`` and written to
the file named by the environment variable ``NT_FUZZ_COUNTS`` (JSON) at the
end of the session (see conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .fuzz import (DEFAULT_SIZES, MUTATIONS, module_for, mutate, preserves_values, run_case,
                   valid_kwargs, valid_value)
from .specs import specs

SPECS = specs()
IDS = [s.name for s in SPECS]


def _sizes_range(spec, sym):
    return spec.sizes.get(sym, DEFAULT_SIZES[sym])


def _baseline(spec, module, kw):
    """The plain input's outputs, or None when the plain input is refused."""
    try:
        out, _ = (spec.call(module, kw) if spec.call else module.forward(**kw))
    except (ValueError, TypeError):
        return None
    return out


def _one(spec, dtype, sizes, training, seed, target=None, mutation=None, present=None):
    rng = np.random.default_rng(seed)
    module = module_for(spec, dtype, training)
    kw = valid_kwargs(spec, sizes, dtype, rng, present)
    baseline = plain = None
    if target is not None:
        arg = next(a for a in spec.args if a.name == target)
        if target not in kw:  # an optional argument drawn absent: it is there to be broken
            kw[target] = valid_value(arg, sizes, dtype, rng)
        plain = dict(kw)
        if preserves_values(arg.kind, mutation) and not training:
            baseline = _baseline(spec, module, kw)
        kw[target] = mutate(kw[target], arg, mutation, dtype, rng, sizes)
    return run_case(spec, module, kw, dtype=dtype, target=target, mutation=mutation,
                    rng_seed=seed, baseline=baseline, plain=plain)


def sweep_cases(spec):
    """(dtype, sizes, target, mutation) of the deterministic sweep."""
    base = {"B": 2, "T": 3, "S": 2}
    for sym in ("B", "T", "S"):
        lo, hi = _sizes_range(spec, sym)
        base[sym] = min(max(base[sym], lo), hi)
    for dtype in (np.float32, np.float64):
        yield dtype, base, None, None
        for sym, values in (("B", (0, 1)), ("T", (0, 1)), ("S", (0, 1))):
            if not any(sym in a.shape for a in spec.args):
                continue
            for v in values:
                yield dtype, dict(base, **{sym: v}), None, None
        if dtype == np.float64:
            continue
        for arg in spec.args:
            for m in MUTATIONS[arg.kind]:
                yield dtype, base, arg.name, m


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_sweep(spec):
    for i, (dtype, sizes, target, mutation) in enumerate(sweep_cases(spec)):
        _one(spec, dtype, sizes, False, i, target, mutation)


@st.composite
def cases(draw, spec):
    sizes = {}
    for sym in ("B", "T", "S"):
        lo, hi = _sizes_range(spec, sym)
        sizes[sym] = draw(st.integers(lo, hi))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    training = draw(st.booleans())
    present = {a.name: draw(st.booleans()) for a in spec.args if a.optional}
    target = mutation = None
    if draw(st.integers(0, 3)):  # three in four examples break one argument
        arg = draw(st.sampled_from(spec.args))
        target, mutation = arg.name, draw(st.sampled_from(MUTATIONS[arg.kind]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, sizes, training, seed, target, mutation, present


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@settings()  # the profile decides: 15 examples in CI ("ci"), 100 with "dev"
@given(data=st.data())
def test_hypothesis(spec, data):
    dtype, sizes, training, seed, target, mutation, present = data.draw(cases(spec))
    _one(spec, dtype, sizes, training, seed, target, mutation, present)
