"""How close a fast kernel must be to its reference kernel."""

from __future__ import annotations

import numpy as np

from numtransformer import _parallel, fast
from numtransformer import functional as F

# float64: the same math in another order differs by rounding only
F64_TOL = 1e-13
# float32: "a few ulps" of the tensor's largest entry (eps32 = 1.19e-7)
F32_ULPS = 8


def relative_error(a, b) -> float:
    """max_i |a_i - b_i| / max(max_i |a_i|, max_i |b_i|): the gradcheck measure,
    the worst difference relative to the tensor's largest entry (0 for empty or
    all-zero tensors that agree)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()))
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    return 0.0 if diff == 0 else diff / scale


def to_float64(obj):
    """obj with every float array (nested in tuples/NamedTuples) cast to float64."""
    if isinstance(obj, np.ndarray):
        return obj.astype(np.float64) if np.issubdtype(obj.dtype, np.floating) else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_float64(o) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_float64(o) for o in obj)
    return obj


def assert_same(fast, reference, what: str = "", *, oracle=None, ulps: float = F32_ULPS):
    """Each array of ``fast`` (an array, None, or a tuple/NamedTuple of them,
    nested) equals ``reference``'s, with the same dtype and shape:

    float64: relative error <= 1e-13 (the same math in another order).
    float32: within ``ulps`` ulps of the tensor's largest entry; where the
    kernel sums many terms (a bias gradient, a softmax Jacobian row), rounding
    alone can exceed that, so the fast result then passes when it is as
    accurate as the reference: its error against ``oracle`` (the reference
    kernel run in float64 on the same values) at most twice the reference's
    own, plus ``ulps`` ulps.
    """
    if isinstance(reference, (tuple, list)):
        assert isinstance(fast, (tuple, list)) and len(fast) == len(reference), what
        names = getattr(reference, "_fields", range(len(reference)))
        oracles = oracle if oracle is not None else [None] * len(reference)
        for name, f, r, o in zip(names, fast, reference, oracles):
            assert_same(f, r, f"{what}.{name}", oracle=o, ulps=ulps)
        return
    if reference is None or not isinstance(reference, np.ndarray) or \
            not np.issubdtype(reference.dtype, np.floating):
        if isinstance(reference, np.ndarray):
            np.testing.assert_array_equal(fast, reference, err_msg=what)
        else:
            assert fast == reference, what
        return
    assert isinstance(fast, np.ndarray), f"{what}: {type(fast).__name__}"
    assert fast.dtype == reference.dtype, f"{what}: dtype {fast.dtype} vs {reference.dtype}"
    assert fast.shape == reference.shape, f"{what}: shape {fast.shape} vs {reference.shape}"
    err = relative_error(fast, reference)
    if reference.dtype == np.float64:
        assert err <= F64_TOL, f"{what}: fast differs from reference by {err:.3g} (float64)"
        return
    floor = ulps * float(np.finfo(np.float32).eps)
    if err <= floor:
        return
    assert oracle is not None, f"{what}: fast differs from reference by {err:.3g} > {floor:.3g}"
    err_fast, err_ref = relative_error(fast, oracle), relative_error(reference, oracle)
    assert err_fast <= 2 * err_ref + floor, (
        f"{what}: fast is off the float64 result by {err_fast:.3g}, the reference by "
        f"{err_ref:.3g} (fast vs reference: {err:.3g})")


def same(name, *args, **kwargs):
    """Run kernel ``name`` from both families (``numtransformer.fast`` and
    ``numtransformer.functional``) on the same inputs, which must not change;
    check the results equal with ``assert_same`` (float32 also against the
    reference run in float64); return the reference's result."""
    saved = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    f = getattr(fast, name)(*args, **kwargs)
    r = getattr(F, name)(*args, **kwargs)
    for a, s in zip(args, saved):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, s, err_msg=f"{name} changed an input")
    oracle = getattr(F, name)(*to_float64(args), **kwargs)
    assert_same(f, r, name, oracle=to_float64(oracle))
    return r


def row_blocks(request, monkeypatch):
    """Fixture body (parametrise it with ["one block", "row blocks"]): the fast
    kernels on one thread, or cut into row blocks on three threads (blocks
    forced even for tiny arrays)."""
    if request.param == "row blocks":
        monkeypatch.setattr(_parallel, "MIN_BLOCK", 1)
        monkeypatch.setattr(_parallel, "_cores", lambda: 8)
        _parallel.set_num_threads(3)
    yield
    _parallel.set_num_threads(None)
