"""The fast GELU equals the reference one (float64: the same bits; float32: within
rounding, by the rules of tests/kernels/equal.py), forward and backward, exact and
tanh forms, on drawn shapes, in one block, in row blocks and in small chunks; and
its float32 erf is accurate to a few float32 ulps against SciPy's float64 erf."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import erf

from numtransformer import fast
from numtransformer import functional as F
from numtransformer.fast import activations as fast_act

from ..helpers import seeds
from .equal import row_blocks, same

dtypes = st.sampled_from([np.float64, np.float32])
dims = st.integers(1, 9)

blocks = pytest.fixture(autouse=True, params=["one block", "row blocks"])(row_blocks)


@given(st.lists(dims, min_size=1, max_size=4), st.sampled_from(["none", "tanh"]),
       st.sampled_from([0.5, 3.0, 30.0]), st.booleans(), dtypes, seeds)
def test_gelu_equals_reference(shape, approximate, scale, strided, dtype, seed):
    chunk, fast_act._CHUNK = fast_act._CHUNK, 5  # several chunks even for tiny arrays
    try:
        _check_gelu(shape, approximate, scale, strided, dtype, seed)
    finally:
        fast_act._CHUNK = chunk


def _check_gelu(shape, approximate, scale, strided, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if strided:  # a non-contiguous input, as a transposed view would be
        x = np.asfortranarray(x)[..., ::-1]
    dy = rng.standard_normal(x.shape).astype(dtype)
    _, cache = same("gelu_forward", x, approximate)
    same("gelu_backward", dy, cache)
    _, fast_cache = fast.gelu_forward(x, approximate)  # a fast cache, the reference backward
    same("gelu_backward", dy, fast_cache)


def test_float64_is_the_reference_bit_for_bit():
    x = np.random.default_rng(0).standard_normal((300, 700)) * 4
    dy = np.random.default_rng(1).standard_normal(x.shape)
    y, c = fast.gelu_forward(x)
    y_ref, c_ref = F.gelu_forward(x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(c.Phi, c_ref.Phi)
    np.testing.assert_array_equal(fast.gelu_backward(dy, c), F.gelu_backward(dy, c_ref))


def _phi_error(x32):
    """max |Phi_fast(x) - Phi(x)| over float32 x, Phi in float64 from SciPy's erf."""
    _, cache = fast.gelu_forward(x32)
    assert cache.Phi.dtype == np.float32
    exact = 0.5 * (1.0 + erf(x32.astype(np.float64) / math.sqrt(2.0)))
    return float(np.abs(cache.Phi.astype(np.float64) - exact).max())


def test_float32_erf_within_a_few_ulps_of_scipy():
    """erf = 2 Phi - 1: its error is twice Phi's; the bound is 4 ulps of 1.0 (4.8e-7);
    SciPy's own float32 path (erf of the float32 x / sqrt 2) is off by up to 6.3e-8."""
    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.linspace(-8, 8, 400_001, dtype=np.float32),
        (rng.standard_normal(200_000) * 2).astype(np.float32),
        (10.0 ** rng.uniform(-30, 1, 100_000) * rng.choice([-1, 1], 100_000)).astype(np.float32),
    ])
    assert 2 * _phi_error(x) <= 4 * float(np.finfo(np.float32).eps)


def test_float32_edges():
    x = np.array([-1e30, -1e6, -100, -6, -0.0, 0.0, 1e-30, -1e-30, 6, 100, 1e6, 1e30,
                  np.inf], np.float32)
    y, cache = fast.gelu_forward(x)
    y_ref, _ = F.gelu_forward(x)
    np.testing.assert_array_equal(cache.Phi[x <= -6], 0)  # exactly, as 1 + erf rounds to 0
    np.testing.assert_array_equal(cache.Phi[x >= 6], 1)
    np.testing.assert_array_equal(y, y_ref)
    assert y.dtype == np.float32
    with np.errstate(invalid="ignore"):
        assert np.isnan(fast.gelu_forward(np.array([np.nan, -np.inf], np.float32))[0]).all()


def test_empty_and_zero_dim():
    for dtype in (np.float32, np.float64):
        y, _ = fast.gelu_forward(np.zeros((0, 3), dtype))
        assert y.shape == (0, 3) and y.dtype == dtype
        y, _ = fast.gelu_forward(np.array(1.5, dtype))
        assert y.shape == () and abs(float(y) - float(F.gelu_forward(np.array(1.5))[0])) < 1e-6
