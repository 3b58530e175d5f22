"""The fast kernels of the layer family equal their reference kernels, float64
and float32, forward and backward, on drawn shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import _parallel, fast

from ..helpers import seeds
from .equal import row_blocks, same

dtypes = st.sampled_from([np.float64, np.float32])
dims = st.integers(1, 9)


blocks = pytest.fixture(autouse=True, params=["one block", "row blocks"])(row_blocks)


@given(st.lists(dims, min_size=1, max_size=3), dims, dims, st.booleans(), dtypes, seeds)
def test_linear_and_tied_linear(lead, d_in, d_out, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, d_in)).astype(dtype)
    W = rng.standard_normal((d_in, d_out)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype) if bias else None
    dy = rng.standard_normal((*lead, d_out)).astype(dtype)
    _, cache = same("linear_forward", x, W, b)
    same("linear_backward", dy, cache, W, bias)
    E = W.T.copy()
    _, cache = same("tied_linear_forward", x, E, b)
    same("tied_linear_backward", dy, cache, E, bias)


@given(st.lists(dims, min_size=1, max_size=3), st.integers(1, 12), dims,
       st.sampled_from([None, 0, 3]), dtypes, seeds)
def test_embedding_scatter_add(lead, V, D, padding_idx, dtype, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, lead)  # repeated ids: the sums must add every position
    W = rng.standard_normal((V, D)).astype(dtype)
    dy = rng.standard_normal((*lead, D)).astype(dtype)
    pad = None if padding_idx is None else padding_idx % V
    _, cache = same("embedding_forward", ids, W)
    same("embedding_backward", dy, cache, V, pad)


@given(st.lists(dims, min_size=1, max_size=4), dtypes, seeds)
def test_relu_and_sigmoid(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 30).astype(dtype)  # exp(-x) overflows for some
    dy = rng.standard_normal(shape).astype(dtype)
    _, cache = same("relu_forward", x)
    same("relu_backward", dy, cache)
    same("sigmoid", x)


masks = st.sampled_from(["none", "keys", "full", "row", "all blocked"])


@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 9), masks, dtypes, seeds)
def test_softmax_and_its_backward(B, H, T, mask_kind, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((B, H, T)) * 4).astype(dtype)
    dy = rng.standard_normal((B, H, T)).astype(dtype)
    mask = {"none": None, "keys": rng.random((B, 1, T)) < 0.4,
            "full": rng.random((B, H, T)) < 0.4, "row": rng.random(T) < 0.4,
            "all blocked": np.ones((B, H, T), bool)}[mask_kind]
    y = same("softmax", x, -1, mask)
    if mask_kind == "all blocked":
        assert not y.any() and not fast.softmax(x, -1, mask).any()
    same("softmax_backward", dy, y)
    same("softmax_backward", dy, same("softmax", x, 1), 1)


@given(st.lists(st.integers(0, 5), min_size=0, max_size=3), st.integers(1, 40),
       st.sampled_from([None, np.nan, np.inf, -np.inf]), dtypes, seeds)
def test_last_axis_max_is_numpys_max(lead, n, special, dtype, seed):
    """The halving row max (rows up to 32) and NumPy's (longer rows) give
    x.max(-1, keepdims=True) exactly, NaN and infinities included, and never write x."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, n)) * 4).astype(dtype)
    if special is not None and x.size:
        x.reshape(-1)[rng.integers(0, x.size, max(1, x.size // 7))] = special
    before = x.copy()
    got = fast.last_axis_max(x)
    want = x.max(axis=-1, keepdims=True)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, before)


@given(st.lists(dims, min_size=0, max_size=3), st.integers(1, 40), st.booleans(), dtypes, seeds)
def test_layer_norm(lead, n, affine, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, n)) * 3 + rng.standard_normal()).astype(dtype)
    gamma = rng.standard_normal(n).astype(dtype) if affine else None
    beta = rng.standard_normal(n).astype(dtype) if affine else None
    dy = rng.standard_normal((*lead, n)).astype(dtype)
    _, cache = same("layer_norm_forward", x, gamma, beta, 1e-5)
    same("layer_norm_backward", dy, cache, gamma)


@given(st.lists(dims, min_size=1, max_size=3), st.integers(1, 30),
       st.sampled_from([0.0, 0.1, 1.0]), st.sampled_from(["mean", "sum", "none"]),
       st.booleans(), dtypes, seeds)
def test_cross_entropy(lead, V, eps, reduction, some_ignored, dtype, seed):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((*lead, V)) * 5).astype(dtype)
    y = rng.integers(0, V, lead)
    if some_ignored:
        y = np.where(rng.random(lead) < 0.3, -100, y)
    _, cache = same("cross_entropy_forward", z, y, -100, eps, reduction)
    dL = rng.standard_normal(lead).astype(dtype) if reduction == "none" else np.asarray(1.3)
    same("cross_entropy_backward", dL, cache, eps, reduction)


@given(st.lists(dims, min_size=0, max_size=3), st.integers(1, 40), st.booleans(),
       st.sampled_from([1e-6, 1e-5, 1.0]), dtypes, seeds)
def test_rms_norm(lead, n, affine, eps, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, n)) * 3 + rng.standard_normal()).astype(dtype)
    gamma = rng.standard_normal(n).astype(dtype) if affine else None
    dy = rng.standard_normal((*lead, n)).astype(dtype)
    _, cache = same("rms_norm_forward", x, gamma, eps)
    same("rms_norm_backward", dy, cache, gamma)


@given(st.lists(dims, min_size=1, max_size=4), st.booleans(), dtypes, seeds)
def test_silu_and_swiglu(shape, strided, dtype, seed):
    rng = np.random.default_rng(seed)
    g = (rng.standard_normal(shape) * 30).astype(dtype)  # exp(-g) overflows for some
    u = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if strided:  # views that are not contiguous: the one-call path
        g, u, dy = (np.concatenate([a, a], axis=-1)[..., ::2] for a in (g, u, dy))
    _, cache = same("silu_forward", g)
    same("silu_backward", dy, cache)
    _, cache = same("swiglu_forward", g, u)
    same("swiglu_backward", dy, cache)
