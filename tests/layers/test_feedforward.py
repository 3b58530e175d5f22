import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import PositionwiseFeedForward, gradcheck
from tests.helpers import check_dtype_preserved, seeds


@given(d_model=st.integers(1, 6), d_ff=st.integers(1, 8), T=st.integers(1, 4),
       activation=st.sampled_from(["gelu", "gelu_tanh", "tanh"]),
       dropout=st.sampled_from([0.0, 0.3]), seed=seeds)
def test_gradcheck(d_model, d_ff, T, activation, dropout, seed):
    rng = np.random.default_rng(seed)
    ffn = PositionwiseFeedForward(d_model, d_ff, activation, dropout, dtype=np.float64, rng=rng)
    gradcheck(ffn, rng.standard_normal((2, T, d_model)), seed=seed).assert_passed()


def test_gradcheck_relu():
    rng = np.random.default_rng(0)
    ffn = PositionwiseFeedForward(4, 6, "relu", dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 4))
    h = ffn.linear1(x)
    assert np.abs(h).min() > 1e-3  # no pre-activation near the kink
    gradcheck(ffn, x).assert_passed()


def test_equals_its_equation():
    rng = np.random.default_rng(1)
    ffn = PositionwiseFeedForward(3, 5, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 4, 3))
    h = x @ ffn.linear1.W.data + ffn.linear1.b.data
    expected = np.maximum(h, 0) @ ffn.linear2.W.data + ffn.linear2.b.data
    np.testing.assert_allclose(ffn(x), expected, rtol=1e-12)


def test_float32_preserved():
    check_dtype_preserved(PositionwiseFeedForward(4, 8, "gelu", 0.1, rng=0),
                          np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32))


def test_bad_input():
    ffn = PositionwiseFeedForward(8, 16, rng=0)
    with pytest.raises(ValueError, match="PositionwiseFeedForward: x has last dim 7, expected d_model=8"):
        ffn(np.zeros((1, 2, 7), np.float32))
    with pytest.raises(ValueError, match="unknown activation"):
        PositionwiseFeedForward(8, 16, activation="swish")


def test_names_and_state_dict():
    ffn = PositionwiseFeedForward(2, 3, rng=0)
    assert [n for n, _ in ffn.named_parameters()] == ["linear1.W", "linear1.b", "linear2.W",
                                                      "linear2.b"]
    other = PositionwiseFeedForward(2, 3, rng=1)
    other.load_state_dict(ffn.state_dict())
    x = np.ones((1, 2), np.float32)
    assert np.array_equal(ffn(x), other(x))
