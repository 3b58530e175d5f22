"""The memory-network hop kernel (functional.memnn_hop_forward / backward): the
paper's equations slot by slot, its gradients against finite differences, the
fast namespace equal to it, and an all-padding story giving zeros, never NaN."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import Module, Parameter, fast, gradcheck
from numtransformer import functional as F
from numtransformer.kernels import select

from ..helpers import seeds
from .equal import same

dtypes = st.sampled_from([np.float64, np.float32])
masks = st.sampled_from(["none", "some", "one story empty"])


class Hop(Module):
    """One hop as a module, so ``gradcheck`` can probe the kernel pair."""

    def __init__(self, d, use_H, rng):
        self.H = Parameter(rng.standard_normal((d, d)) * 0.5) if use_H else None

    def forward(self, u, m, c, mask=None, linear_start=False):
        H = None if self.H is None else self.H.data
        return select(u.dtype).memnn_hop_forward(u, m, c, mask, linear_start, H)

    def backward(self, du_next, cache):
        H = None if self.H is None else self.H.data
        du, dm, dc, dH = select(du_next.dtype).memnn_hop_backward(du_next, cache, H)
        if dH is not None:
            self.H.grad += dH
        return du, dm, dc


def _inputs(rng, B, N, d, mask_kind, dtype=np.float64):
    u, m, c = (rng.standard_normal(shape).astype(dtype) for shape in ((B, d), (B, N, d), (B, N, d)))
    mask = {"none": None, "some": rng.random((B, N)) < 0.4,
            "one story empty": np.zeros((B, N), bool)}[mask_kind]
    if mask_kind == "one story empty":
        mask[rng.integers(B)] = True
    return u, m, c, mask


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), masks, st.booleans(),
       st.booleans(), seeds)
def test_hop_gradcheck(B, N, d, mask_kind, linear_start, use_H, seed):
    rng = np.random.default_rng(seed)
    u, m, c, mask = _inputs(rng, B, N, d, mask_kind)
    report = gradcheck(Hop(d, use_H, rng), u, m, c, mask=mask, linear_start=linear_start,
                       seed=seed)
    report.assert_passed()
    assert report.max_error < 1e-7


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), masks, st.booleans(),
       st.booleans(), seeds)
def test_hop_is_the_papers_equations_slot_by_slot(B, N, d, mask_kind, linear_start, use_H, seed):
    rng = np.random.default_rng(seed)
    u, m, c, mask = _inputs(rng, B, N, d, mask_kind)
    H = rng.standard_normal((d, d)) if use_H else None
    u_next, cache = F.memnn_hop_forward(u, m, c, mask, linear_start, H)
    for b in range(B):
        real = [i for i in range(N) if mask is None or not mask[b, i]]
        s = {i: sum(u[b, k] * m[b, i, k] for k in range(d)) for i in real}
        if linear_start:
            p = s
        else:
            z = sum(np.exp(s[i]) for i in real)
            p = {i: np.exp(s[i]) / z for i in real}
        o = sum((p[i] * c[b, i] for i in real), np.zeros(d))
        expected = (u[b] if H is None else u[b] @ H) + o
        np.testing.assert_allclose(u_next[b], expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cache.p[b], [p.get(i, 0.0) for i in range(N)],
                                   rtol=1e-12, atol=1e-15)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), masks, st.booleans(),
       st.booleans(), dtypes, seeds)
def test_fast_hop_equals_reference(B, N, d, mask_kind, linear_start, use_H, dtype, seed):
    rng = np.random.default_rng(seed)
    u, m, c, mask = _inputs(rng, B, N, d, mask_kind, dtype)
    H = rng.standard_normal((d, d)).astype(dtype) if use_H else None
    u_next, cache = same("memnn_hop_forward", u, m, c, mask, linear_start, H)
    assert u_next.dtype == dtype and cache.p.dtype == dtype
    du_next = rng.standard_normal((B, d)).astype(dtype)
    grads = same("memnn_hop_backward", du_next, cache, H)
    assert all(g is None or g.dtype == dtype for g in grads)
    assert (grads[3] is None) == (H is None)


def test_an_empty_story_reads_nothing_and_stays_finite():
    rng = np.random.default_rng(0)
    u, m, c, _ = _inputs(rng, 2, 3, 4, "none", np.float32)
    mask = np.array([[True] * 3, [False, True, False]])
    for K in (F, fast):
        for linear_start in (False, True):
            u_next, cache = K.memnn_hop_forward(u, m, c, mask, linear_start)
            assert not cache.p[0].any() and np.array_equal(u_next[0], u[0])  # o = 0
            assert np.all(cache.p[1, 1] == 0)
            grads = K.memnn_hop_backward(np.ones((2, 4), np.float32), cache)
            assert all(np.isfinite(g).all() for g in grads[:3])
            assert not grads[1][0].any() and not grads[2][0].any()  # no memory of story 0 learns
