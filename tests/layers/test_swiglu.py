import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import SiLU, SwiGLUFeedForward, gradcheck
from numtransformer import functional as F
from numtransformer.kernels import use_kernels
from tests.helpers import check_dtype_preserved, seeds


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), d_model=st.integers(1, 6),
       d_ff=st.integers(1, 7), bias=st.booleans(), dropout=st.sampled_from([0.0, 0.3]),
       seed=seeds)
def test_gradcheck(lead, d_model, d_ff, bias, dropout, seed):
    rng = np.random.default_rng(seed)
    ffn = SwiGLUFeedForward(d_model, d_ff, bias=bias, dropout=dropout, dtype=np.float64,
                            rng=seed)
    for _, p in ffn.named_parameters():  # wider than the init: no entry is special
        p.data[...] = rng.standard_normal(p.shape)
    x = rng.standard_normal((*lead, d_model))
    gradcheck(ffn, x, seed=seed).assert_passed()


def test_forward_is_the_equation():
    rng = np.random.default_rng(0)
    ffn = SwiGLUFeedForward(4, 6, bias=True, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 4))
    g = x @ ffn.gate_proj.W.data + ffn.gate_proj.b.data
    u = x @ ffn.up_proj.W.data + ffn.up_proj.b.data
    h = g / (1 + np.exp(-g)) * u
    expect = h @ ffn.down_proj.W.data + ffn.down_proj.b.data
    np.testing.assert_allclose(ffn(x), expect, rtol=1e-13, atol=1e-14)


def test_no_biases_by_default_and_parameter_names():
    ffn = SwiGLUFeedForward(4, 6)
    names = [n for n, _ in ffn.named_parameters()]
    assert names == ["gate_proj.W", "up_proj.W", "down_proj.W"]
    assert ffn.gate_proj.W.shape == (4, 6) and ffn.down_proj.W.shape == (6, 4)
    assert [n for n, _ in SwiGLUFeedForward(4, 6, bias=True).named_parameters()] == [
        "gate_proj.W", "gate_proj.b", "up_proj.W", "up_proj.b", "down_proj.W", "down_proj.b"]


def test_swiglu_kernel_product_rule():
    rng = np.random.default_rng(1)
    g, u, dh = (rng.standard_normal((3, 5)) for _ in range(3))
    h, cache = F.swiglu_forward(g, u)
    s = 1 / (1 + np.exp(-g))
    np.testing.assert_allclose(h, g * s * u, rtol=1e-14)
    dg, du = F.swiglu_backward(dh, cache)
    np.testing.assert_allclose(du, dh * g * s, rtol=1e-14)
    np.testing.assert_allclose(dg, dh * u * s * (1 + g * (1 - s)), rtol=1e-13)


def test_dropout_masks_the_hidden_layer_and_eval_is_identity():
    rng = np.random.default_rng(2)
    ffn = SwiGLUFeedForward(4, 8, dropout=0.5, dtype=np.float64, rng=7)
    x = rng.standard_normal((3, 4))
    y, cache = ffn.forward(x)
    assert cache.dropout.mask is not None and cache.dropout.mask.shape == (3, 8)
    ffn.eval()
    y_eval, cache_eval = ffn.forward(x)
    assert cache_eval.dropout.mask is None
    ffn.dropout.p = 0.0
    np.testing.assert_array_equal(ffn(x), y_eval)


def test_float32_preserved_on_both_kernel_families():
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    for mode in ("reference", "fast"):
        with use_kernels(mode):
            check_dtype_preserved(SwiGLUFeedForward(4, 5, rng=0), x)
            check_dtype_preserved(SwiGLUFeedForward(4, 5, bias=True, dropout=0.2, rng=0), x)
            check_dtype_preserved(SiLU(), x)


def test_bad_input():
    ffn = SwiGLUFeedForward(4, 6)
    with pytest.raises(ValueError, match="SwiGLUFeedForward: x has last dim 5, expected "
                                         "d_model=4"):
        ffn(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="SwiGLUFeedForward: x contains 1 NaN"):
        ffn(np.array([[0, 0, np.nan, 0]], np.float32))
    with pytest.raises(TypeError, match="SwiGLUFeedForward: x has dtype float64"):
        ffn(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="SwiGLUFeedForward: d_ff must be >= 1"):
        SwiGLUFeedForward(4, 0)
    with pytest.raises(ValueError, match="Dropout: p must be in"):
        SwiGLUFeedForward(4, 6, dropout=1.5)


def test_state_dict_round_trip_and_astype():
    a = SwiGLUFeedForward(3, 5, rng=0)
    b = SwiGLUFeedForward(3, 5, rng=1)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    b.astype(np.float64)
    assert b(x.astype(np.float64)).dtype == np.float64
