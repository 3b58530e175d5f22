"""The in-place inference kernels and the FFN's inference fast path.

``fast.activations.gelu_inplace`` (h = GELU(h + b) in place) against the fast and
reference ``gelu_forward`` (float64: the same bits; float32: within a few ulps);
the float32 Phi's accuracy against the exact normal CDF; ``fast.norm.
add_layer_norm_inplace`` against ``layer_norm_forward(x + y)``; and
``PositionwiseFeedForward.__call__`` in ``inference_mode()`` against ``forward``."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import ndtr

import numtransformer as nt
from numtransformer import _parallel, fast
from numtransformer import functional as F
from numtransformer.fast import activations as fast_act
from numtransformer.fast import norm as fast_norm
from numtransformer.fast.activations import gelu_inplace
from numtransformer.fast.norm import add_layer_norm_inplace
from numtransformer.layers import feedforward as ff_module
from numtransformer.layers.feedforward import PositionwiseFeedForward
from numtransformer.layers.lora import apply_lora

from ..helpers import on_threads, seeds
from .equal import assert_same, relative_error

EPS32 = float(np.finfo(np.float32).eps)
dtypes = st.sampled_from([np.float64, np.float32])
threads = st.sampled_from([1, 2])


@contextlib.contextmanager
def chunk(module, name, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def within_ulps_of_x(got, want, x, ulps=4):
    """|got - want| <= ulps * eps32 * max(1, |x|) entrywise (NaN where both are NaN)."""
    g, w, x = (a.astype(np.float64) for a in (got, want, x))
    both_nan = np.isnan(g) & np.isnan(w)
    diff = np.where(both_nan, 0.0, np.abs(g - w))
    bound = ulps * EPS32 * np.maximum(1.0, np.abs(x))
    bad = ~(diff <= bound)
    assert not bad.any(), (f"{int(bad.sum())} entries off, e.g. x={x[bad][:3]}, "
                           f"got={g[bad][:3]}, want={w[bad][:3]}")


# -- gelu_inplace ----------------------------------------------------------------------------

@given(st.integers(1, 9), st.integers(1, 40), st.booleans(), st.sampled_from([0.5, 3.0, 30.0]),
       st.sampled_from([None, 7, 64]), threads, dtypes, seeds)
def test_gelu_inplace_equals_gelu_forward(rows, width, with_bias, scale, chunk_size, n_threads,
                                          dtype, seed):
    rng = np.random.default_rng(seed)
    h = (rng.standard_normal((rows, width)) * scale).astype(dtype)
    b = (rng.standard_normal(width) * scale).astype(dtype) if with_bias else None
    x = h + b if with_bias else h.copy()  # the float input both forwards see
    b_before = None if b is None else b.copy()
    want_fast, _ = fast.gelu_forward(x)
    want_ref, _ = F.gelu_forward(x)
    size = fast_act._CHUNK if chunk_size is None else chunk_size  # 7, 64: widths not dividing it
    with chunk(fast_act, "_CHUNK", size), on_threads(n_threads):
        out = gelu_inplace(h, b)
    assert out is h and h.dtype == dtype
    if b is not None:
        np.testing.assert_array_equal(b, b_before)  # the bias is not written
    if dtype == np.float64:
        np.testing.assert_array_equal(h, want_fast)
        np.testing.assert_array_equal(h, want_ref)
    else:
        within_ulps_of_x(h, want_ref, x)
        within_ulps_of_x(h, want_fast, x)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf * 0 at -inf, as the reference
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gelu_inplace_edge_values(dtype, n_threads):
    values = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 1e-30, -1e-30, 1e30, -1e30,
                       3e38, -3e38, 5.6, -5.6, 6.0, -6.0, 1.0, -1.0], dtype)
    h = np.tile(values, (3, 1))
    want, _ = fast.gelu_forward(h.copy())
    want_ref, _ = F.gelu_forward(h.copy())
    with chunk(fast_act, "_CHUNK", 5), on_threads(n_threads):
        gelu_inplace(h)
    np.testing.assert_array_equal(h, want)  # NaN where it has NaN, the same infinities
    np.testing.assert_array_equal(np.signbit(h), np.signbit(want))  # -0.0 stays -0.0
    assert np.isnan(h[:, 2]).all()  # NaN propagates
    assert h[0, 0] == np.inf and np.signbit(h[0, 3]) and h[0, 4] == 0
    finite = np.isfinite(want_ref)
    np.testing.assert_array_equal(np.isnan(h), np.isnan(want_ref))
    within_ulps_of_x(h[finite], want_ref[finite], np.tile(values, (3, 1))[finite])
    # a bias of edge values too
    b = values.copy()
    h2 = np.zeros((2, values.size), dtype)
    with on_threads(n_threads):
        gelu_inplace(h2, b)
    np.testing.assert_array_equal(h2, fast.gelu_forward(np.zeros((2, values.size), dtype) + b)[0])


def test_gelu_inplace_empty():
    for dtype in (np.float32, np.float64):
        h = np.empty((0, 4), dtype)
        assert gelu_inplace(h, np.ones(4, dtype)) is h
        h = np.empty((3, 0), dtype)
        assert gelu_inplace(h) is h


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # x^2 overflows for |x| > 1.8e19
def test_float32_phi_accuracy():
    """max |Phi - Phi_exact| <= 2 ulps of values just below 1.0 (eps32 = 1.19e-7; the
    kernel's comment measures 9.7e-8) over a dense grid of [-8, 8] and every scale
    1e-30 .. 8 of both signs; Phi_exact from the float64 normal CDF of the float32 x."""
    rng = np.random.default_rng(0)
    mags = np.logspace(-30, np.log10(8.0), 200_000)
    x = np.concatenate([np.linspace(-8, 8, 1_600_001, dtype=np.float32),
                        mags.astype(np.float32), (-mags).astype(np.float32),
                        (rng.standard_normal(100_000) * 2).astype(np.float32)])
    _, cache = fast.gelu_forward(x)
    assert cache.Phi.dtype == np.float32
    err = np.abs(cache.Phi.astype(np.float64) - ndtr(x.astype(np.float64)))
    assert float(err.max()) <= EPS32, float(err.max())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # x^2 overflows for |x| > 1.8e19
def test_float32_phi_is_exactly_0_and_1_beyond_6():
    """As the reference's 1 + erf(x / sqrt 2) in float32 (and as the kernel's comment
    says: x^2 is clipped at 6^2, where w = 11.8 and NumPy's float32 tanh(w) is exactly
    +-1), so GELU(x) = -0.0 there.  (At a clip of 5.6^2, w = 9.5, tanh gave
    -0.99999994 and Phi 3e-8 on [-5.9, -5.6]: this test found it.)"""
    tail = np.concatenate([np.linspace(6.0, 8, 10_001, dtype=np.float32),
                           np.float32([6.0, 10, 100, 1e10, 3e38, np.inf])])
    tail = tail[tail >= np.float32(6.0)]
    _, ref_hi = F.gelu_forward(tail)
    _, ref_lo = F.gelu_forward(-tail)
    assert (ref_hi.Phi == 1).all() and (ref_lo.Phi == 0).all()  # the premise
    _, hi = fast.gelu_forward(tail)
    _, lo = fast.gelu_forward(-tail)
    assert (hi.Phi == 1).all(), f"Phi != 1 at x = {tail[hi.Phi != 1][:5]}"
    bad = lo.Phi != 0
    assert not bad.any(), (f"Phi != 0 at {int(bad.sum())} of {tail.size} x in "
                           f"[{-tail[bad].max()}, {-tail[bad].min()}]: Phi({-tail[bad][0]}) = "
                           f"{lo.Phi[bad][0]!r}")
    # and gelu_inplace's Phi is the same function: x Phi(x) with Phi exactly 0/1 there
    h = np.stack([tail, -tail])
    gelu_inplace(h)
    np.testing.assert_array_equal(h[0], tail)
    assert (h[1][np.isfinite(tail)] == 0).all()


# -- add_layer_norm_inplace ------------------------------------------------------------------

@given(st.integers(1, 9), st.integers(1, 33), st.booleans(), st.sampled_from([1e-12, 1e-5]),
       st.sampled_from([None, 1, 7, 50]), threads, dtypes, seeds)
def test_add_layer_norm_inplace_equals_layer_norm(rows, n, affine, eps, chunk_size, n_threads,
                                                  dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * 3 + 1).astype(dtype)
    y = rng.standard_normal((rows, n)).astype(dtype)
    gamma = rng.standard_normal(n).astype(dtype) if affine else None
    beta = rng.standard_normal(n).astype(dtype) if affine else None
    want, _ = F.layer_norm_forward(x + y, gamma, beta, eps)
    oracle, _ = F.layer_norm_forward(x.astype(np.float64) + y.astype(np.float64),
                                     None if gamma is None else gamma.astype(np.float64),
                                     None if beta is None else beta.astype(np.float64), eps)
    x_before = x.copy()
    size = fast_norm._ROWS_CHUNK if chunk_size is None else chunk_size
    with chunk(fast_norm, "_ROWS_CHUNK", size), on_threads(n_threads):
        out = add_layer_norm_inplace(y, x, gamma, beta, eps)
    assert out is y
    np.testing.assert_array_equal(x, x_before)
    if dtype == np.float64:
        assert relative_error(y, want) <= 1e-14
    assert_same(y, want, "add_layer_norm_inplace", oracle=oracle)


def test_add_layer_norm_inplace_constant_rows():
    """A row with x + y constant normalises to beta (0 without affine), never NaN."""
    for dtype in (np.float64, np.float32):
        x = np.full((3, 5), 2.0, dtype)
        y = np.full((3, 5), -0.5, dtype)
        beta = np.arange(5, dtype=dtype)
        want, _ = F.layer_norm_forward(x + y, np.ones(5, dtype), beta, 1e-5)
        add_layer_norm_inplace(y, x, np.ones(5, dtype), beta, 1e-5)
        np.testing.assert_array_equal(y, want)
        assert y.dtype == dtype


# -- PositionwiseFeedForward.__call__ in inference_mode() ------------------------------------

def make_ffn(activation, dropout, dtype, seed, bias=True, d_model=6, d_ff=10):
    rng = np.random.default_rng(seed)
    ffn = PositionwiseFeedForward(d_model, d_ff, activation, dropout, bias=bias, dtype=dtype,
                                  rng=rng)
    for _, p in ffn.named_parameters():
        p.data[...] = rng.standard_normal(p.data.shape).astype(dtype)
    return ffn


@given(st.sampled_from(["relu", "gelu"]), st.sampled_from([0.0, 0.3]), st.booleans(),
       st.lists(st.integers(1, 5), min_size=1, max_size=3), threads, dtypes, seeds)
def test_ffn_call_in_inference_mode_equals_forward(activation, dropout, bias, lead_shape,
                                                   n_threads, dtype, seed):
    ffn = make_ffn(activation, dropout, dtype, seed, bias).eval()
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(tuple(lead_shape) + (6,)).astype(dtype)
    x_before = x.copy()
    want, _ = ffn.forward(x)
    with on_threads(n_threads), nt.inference_mode():
        got = ffn(x)
    np.testing.assert_array_equal(x, x_before)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == x.shape
    if dtype == np.float64:
        np.testing.assert_array_equal(got, want)  # the same statements: the same bits
    else:
        oracle = make_ffn(activation, dropout, np.float64, seed, bias).eval().forward(
            x.astype(np.float64))[0]
        assert_same(got, want, "ffn", oracle=oracle)


def test_ffn_call_takes_the_fast_path_only_when_it_may(monkeypatch):
    calls = []
    real = ff_module.gelu_inplace

    def spy(h, b=None):
        calls.append(h.shape)
        return real(h, b)

    monkeypatch.setattr(ff_module, "gelu_inplace", spy)
    x = np.random.default_rng(0).standard_normal((2, 3, 6))
    ffn = make_ffn("gelu", 0.3, np.float64, 0).eval()
    with nt.inference_mode():
        ffn(x)
    assert calls == [(6, 10)]  # eval(): dropout off, the fast path
    calls.clear()
    ffn(x)  # outside the mode: forward
    assert calls == []
    ffn.train()  # active dropout: falls back to forward (stochastic), runs with the shape
    with nt.inference_mode():
        y = ffn(x)
    assert calls == [] and y.shape == x.shape and np.isfinite(y).all()
    ffn.dropout.p = 0.0  # train() without dropout: the fast path, the same numbers
    with nt.inference_mode():
        y = ffn(x)
    assert calls == [(6, 10)]
    np.testing.assert_array_equal(y, ffn.forward(x)[0])
    calls.clear()
    apply_lora(ffn, ["linear1"], r=2, rng=0)  # a wrapped layer: forward
    ffn.linear1.B.data[...] = 0.5
    with nt.inference_mode():
        y = ffn(x)
    assert calls == []
    np.testing.assert_allclose(y, ffn.forward(x)[0], rtol=1e-13, atol=1e-13)


def test_ffn_call_bad_input_in_inference_mode():
    ffn = make_ffn("gelu", 0.0, np.float32, 0).eval()
    with nt.inference_mode():
        with pytest.raises(ValueError, match="PositionwiseFeedForward"):
            ffn(np.zeros((2, 5), np.float32))
        with pytest.raises((ValueError, TypeError), match="PositionwiseFeedForward"):
            ffn(np.zeros((2, 6), np.float64))
