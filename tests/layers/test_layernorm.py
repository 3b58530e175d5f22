import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import LayerNorm, gradcheck
from tests.helpers import check_dtype_preserved, seeds


@given(lead=st.lists(st.integers(1, 3), max_size=2), norm=st.lists(st.integers(1, 5), min_size=1,
       max_size=2), affine=st.booleans(), seed=seeds)
def test_gradcheck(lead, norm, affine, seed):
    rng = np.random.default_rng(seed)
    if sum(norm) == len(norm):  # a single element normalises to exactly 0: nothing to check
        norm = [*norm[:-1], 2]
    ln = LayerNorm(tuple(norm), elementwise_affine=affine, dtype=np.float64)
    if affine:
        ln.gamma.data[...] = rng.standard_normal(ln.gamma.shape)
        ln.beta.data[...] = rng.standard_normal(ln.beta.shape)
    gradcheck(ln, rng.standard_normal((*lead, *norm)) * 3 + 1, seed=seed).assert_passed()


def test_output_has_zero_mean_unit_biased_variance():
    x = np.random.default_rng(0).standard_normal((4, 7, 16)) * 5 + 3
    y = LayerNorm(16, eps=1e-12, dtype=np.float64)(x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-9)  # np.var is the biased variance


def test_known_value_eps_inside_sqrt():
    ln = LayerNorm(2, eps=1.0, dtype=np.float64)
    ln.gamma.data[...] = [2.0, 1.0]
    ln.beta.data[...] = [0.0, 10.0]
    # x = [1, 3]: mu = 2, var = 1, rstd = 1/sqrt(1 + eps) = 1/sqrt(2)
    y = ln(np.array([1.0, 3.0]))
    np.testing.assert_allclose(y, [2 * -1 / np.sqrt(2), 10 + 1 / np.sqrt(2)], rtol=1e-14)


def test_constant_rows_are_finite():
    ln = LayerNorm(4)
    x = np.full((2, 4), 1e6, np.float32)
    y, cache = ln.forward(x)
    dx = ln.backward(np.arange(8, dtype=np.float32).reshape(2, 4), cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all() and not y.any()


def test_float32_preserved():
    check_dtype_preserved(LayerNorm(5), np.linspace(-1, 2, 15, dtype=np.float32).reshape(3, 5))
    check_dtype_preserved(LayerNorm(5, elementwise_affine=False),
                          np.linspace(-1, 2, 15, dtype=np.float32).reshape(3, 5))


def test_bad_input():
    ln = LayerNorm(8)
    with pytest.raises(ValueError, match=r"LayerNorm: x has trailing shape \(7,\), "
                       r"expected normalized_shape=\(8,\)"):
        ln(np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ln(np.full((1, 8), np.inf, np.float32))
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(3, eps=0)
    with pytest.raises(ValueError, match="normalized_shape"):
        LayerNorm(0)


def test_state_dict_round_trip():
    a, b = LayerNorm(3), LayerNorm(3)
    a.gamma.data[...] = [1, 2, 3]
    b.load_state_dict(a.state_dict())
    assert np.array_equal(b.gamma.data, [1, 2, 3]) and b.gamma.dtype == np.float32
