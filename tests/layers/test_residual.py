import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.attention import MultiHeadAttention
from numtransformer.layers import (NORM_KINDS, Dropout, LayerNorm, Linear,
                                   PositionwiseFeedForward, SublayerConnection, make_norm)
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64


def _connection(sublayer, d, norm_first, p, seed, dtype=F64):
    """A connection around ``sublayer`` with a LayerNorm whose gamma, beta are not 1, 0."""
    rng = np.random.default_rng(seed)
    norm = make_norm("layernorm", d, 1e-5, dtype=dtype)
    norm.gamma.data[...] = 1 + 0.3 * rng.standard_normal(d)
    norm.beta.data[...] = 0.3 * rng.standard_normal(d)
    return SublayerConnection(sublayer, norm, Dropout(p, rng=seed), norm_first)


def _pad_mask(rng, B, S, fully_masked_row):
    """(B, S) True = padding; one row fully padded when asked."""
    mask = np.arange(S)[None, :] >= rng.integers(1, S + 1, B)[:, None]
    if fully_masked_row:
        mask[0] = True
    return mask


# -- gradient checks (float64, reference kernels) -----------------------------------------
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), d=st.integers(2, 5),
       norm_first=st.booleans(), p=st.sampled_from([0.0, 0.3]), seed=seeds)
def test_gradcheck_around_a_linear(lead, d, norm_first, p, seed):
    rng = np.random.default_rng(seed)
    conn = _connection(Linear(d, d, dtype=F64, rng=rng), d, norm_first, p, seed)
    x = rng.standard_normal((*lead, d)) * 2 + 0.5
    gradcheck(conn, x, seed=seed).assert_passed()


@given(B=st.integers(1, 2), T=st.integers(1, 4), S=st.integers(1, 4),
       heads=st.sampled_from([1, 2]), norm_first=st.booleans(),
       p=st.sampled_from([0.0, 0.25]), fully_masked_row=st.booleans(), seed=seeds)
@settings(max_examples=10)
def test_gradcheck_around_attention_with_memory(B, T, S, heads, norm_first, p,
                                                 fully_masked_row, seed):
    """Cross-attention: x the queries, a memory as key and value; backward returns
    (dx, dkey, dvalue) and the masked memory positions get no gradient."""
    rng = np.random.default_rng(seed)
    attn = MultiHeadAttention(4, heads, p, dtype=F64, rng=rng)
    conn = _connection(attn, 4, norm_first, p, seed)
    x, mk, mv = (rng.standard_normal((B, n, 4)) for n in (T, S, S))
    kpm = _pad_mask(rng, B, S, fully_masked_row)
    report = gradcheck(conn, x, mk, mv, key_padding_mask=kpm, seed=seed, max_entries=24)
    report.assert_passed()
    y, cache = conn.forward(x, mk, mv, key_padding_mask=kpm)
    dx, dk, dv = conn.backward(rng.standard_normal(y.shape), cache)
    assert dx.shape == x.shape and dk.shape == mk.shape and dv.shape == mv.shape
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert not dk[kpm].any() and not dv[kpm].any()


@given(B=st.integers(1, 2), T=st.integers(1, 4), norm_first=st.booleans(), seed=seeds)
@settings(max_examples=8)
def test_gradcheck_around_self_attention_and_ffn(B, T, norm_first, seed):
    rng = np.random.default_rng(seed)
    attn = MultiHeadAttention(4, 2, 0.1, dtype=F64, rng=rng)
    ffn = PositionwiseFeedForward(4, 6, "gelu", 0.1, dtype=F64, rng=rng)
    x = rng.standard_normal((B, T, 4))
    causal = np.triu(np.ones((T, T), bool), 1)
    gradcheck(_connection(attn, 4, norm_first, 0.2, seed), x, attn_mask=causal,
              seed=seed, max_entries=24).assert_passed()
    gradcheck(_connection(ffn, 4, norm_first, 0.2, seed), x, seed=seed,
              max_entries=24).assert_passed()


# -- the equations ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True])
def test_forward_is_the_equation(norm_first):
    rng = np.random.default_rng(0)
    lin = Linear(6, 6, dtype=F64, rng=rng)
    conn = _connection(lin, 6, norm_first, 0.0, 1)
    x = rng.standard_normal((2, 3, 6))
    want = x + lin(conn.norm(x)) if norm_first else conn.norm(x + lin(x))
    np.testing.assert_allclose(conn(x), want, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(conn.apply(x), conn(x))
    np.testing.assert_array_equal(conn.apply(x, lambda h: 2 * lin(h)),
                                  x + 2 * lin(conn.norm(x)) if norm_first
                                  else conn.norm(x + 2 * lin(x)))


@pytest.mark.parametrize("norm_first", [False, True])
def test_the_residual_gradient_splits(norm_first):
    """With a branch that outputs 0 (a zero Linear), only the identity path is left:
    pre-norm dx = dy exactly; post-norm dx = norm.backward(dy)."""
    rng = np.random.default_rng(0)
    lin = Linear(5, 5, dtype=F64, rng=rng)
    lin.W.data[...] = 0
    lin.b.data[...] = 0
    conn = _connection(lin, 5, norm_first, 0.0, 2)
    x, dy = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    y, cache = conn.forward(x)
    dx = conn.backward(dy, cache)
    if norm_first:
        np.testing.assert_array_equal(dx, dy)
        assert cache.norm is not None and cache.residual_norm is None
    else:
        _, c_norm = conn.norm.forward(x)
        np.testing.assert_allclose(dx, conn.norm.backward(dy, c_norm), rtol=1e-14)
        assert cache.norm is None and cache.residual_norm is not None


def test_dropout_masks_the_branch_only():
    """Dropout p = 1 drops the whole branch: pre-norm y = x."""
    rng = np.random.default_rng(0)
    conn = _connection(Linear(4, 4, dtype=F64, rng=rng), 4, True, 1.0, 0)
    x = rng.standard_normal((2, 4))
    np.testing.assert_array_equal(conn(x), x)
    np.testing.assert_allclose(conn.eval()(x), x + conn.sublayer(conn.norm(x)), rtol=1e-14)


def test_parameter_names_of_a_standalone_connection():
    conn = _connection(Linear(3, 3, rng=0), 3, False, 0.1, 0, dtype=np.float32)
    assert sorted(conn.state_dict()) == ["norm.beta", "norm.gamma", "sublayer.W", "sublayer.b"]


# -- dtype -----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True])
def test_float32_preserved(norm_first):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    m = rng.standard_normal((2, 5, 4)).astype(np.float32)
    lin = _connection(Linear(4, 4, rng=rng), 4, norm_first, 0.2, 0, dtype=np.float32)
    check_dtype_preserved(lin, x)
    attn = _connection(MultiHeadAttention(4, 2, 0.1, rng=rng), 4, norm_first, 0.2, 0,
                       dtype=np.float32)
    check_dtype_preserved(attn, x, m, m, key_padding_mask=np.array([[0, 0, 1, 1, 1],
                                                                    [1, 1, 1, 1, 1]], bool))


# -- errors ----------------------------------------------------------------------------------
def test_bad_input():
    lin = Linear(4, 4, rng=0)
    norm, drop = LayerNorm(4), Dropout(0.1)
    with pytest.raises(TypeError, match="SublayerConnection: sublayer must be a Module"):
        SublayerConnection(lambda x: x, norm, drop)
    with pytest.raises(TypeError, match="SublayerConnection: norm must be a Module"):
        SublayerConnection(lin, "layernorm", drop)
    with pytest.raises(TypeError, match="SublayerConnection: dropout must be a Dropout, got float"):
        SublayerConnection(lin, norm, 0.1)
    conn = SublayerConnection(lin, norm, drop)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(TypeError, match="SublayerConnection: x has dtype float64"):
        conn(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="SublayerConnection: x must be a numpy array"):
        conn("x")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="SublayerConnection: x contains 1 NaN"):
        conn(bad)
    with pytest.raises(ValueError, match="Linear: x has last dim 3, expected in_features=4"):
        conn(np.zeros((2, 3), np.float32))
    wide = SublayerConnection(Linear(4, 5, rng=0), norm, drop)
    with pytest.raises(ValueError, match=r"sublayer Linear returned shape \(2, 5\), expected "
                                         r"x's shape \(2, 4\)"):
        wide(x)
    attn = SublayerConnection(MultiHeadAttention(4, 2, rng=0), norm, drop)
    m = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="sublayer MultiHeadAttention returned a tuple"):
        attn(np.zeros((2, 1, 4), np.float32), m, m, need_weights=True)
    bad_m = m.copy()
    bad_m[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"SublayerConnection: args\[1\] contains 1 NaN"):
        attn(np.zeros((2, 1, 4), np.float32), m, bad_m)
    with pytest.raises(TypeError, match=r"SublayerConnection: args\[0\] has dtype float64"):
        attn(np.zeros((2, 1, 4), np.float32), m.astype(F64), m)


def test_make_norm():
    norm = make_norm("layernorm", 6, 1e-7, dtype=F64)
    assert isinstance(norm, LayerNorm) and norm.eps == 1e-7 and norm.dtype == F64
    assert norm.normalized_shape == (6,) and norm.gamma.dtype == F64
    assert NORM_KINDS == ("layernorm", "rmsnorm")
    for bad in ("batchnorm", "LayerNorm", None, 3):
        with pytest.raises(ValueError, match=r"make_norm: norm must be one of 'layernorm', "
                                             rf"'rmsnorm', got {bad!r}"):
            make_norm(bad, 6, 1e-5, dtype=F64)
