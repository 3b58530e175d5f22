import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import Dropout, gradcheck
from tests.helpers import check_dtype_preserved, seeds


@given(p=st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=seeds)
def test_gradcheck_under_a_fixed_seed(p, shape, seed):
    rng = np.random.default_rng(seed)
    gradcheck(Dropout(p, rng=seed), rng.standard_normal(shape), seed=seed).assert_passed()


def test_inverted_scaling_and_statistics():
    d = Dropout(0.25, rng=0)
    x = np.ones((200, 500), np.float32)
    y, cache = d.forward(x)
    assert y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.01
    assert abs(y.mean() - 1.0) < 0.01
    np.testing.assert_array_equal(d.backward(2 * x, cache), 2 * y)


def test_eval_mode_and_p_zero_are_identity():
    x = np.random.default_rng(0).standard_normal((3, 4))
    d = Dropout(0.5, rng=0).eval()
    assert np.array_equal(d(x), x)
    assert np.array_equal(Dropout(0.0)(x), x)


def test_p_one_drops_everything():
    y, cache = Dropout(1.0, rng=0).forward(np.ones((2, 3)))
    assert not y.any() and not Dropout(1.0).backward(np.ones((2, 3)), cache).any()


def test_one_dropout_on_two_branches_keeps_two_masks():
    # Classic bug: a mask stored on self is overwritten by the second call.
    d = Dropout(0.5, rng=3)
    x = np.ones((8, 8))
    y1, c1 = d.forward(x)
    y2, c2 = d.forward(x)
    assert not np.array_equal(y1, y2)
    g = np.random.default_rng(0).standard_normal((8, 8))
    np.testing.assert_array_equal(d.backward(g, c1), g * (y1 != 0) * 2)
    np.testing.assert_array_equal(d.backward(g, c2), g * (y2 != 0) * 2)


def test_seeded_generators_reproduce():
    a, b = Dropout(0.3, rng=7), Dropout(0.3, rng=7)
    x = np.ones((4, 4))
    assert np.array_equal(a(x), b(x))


def test_float32_preserved_and_float16_refused():
    check_dtype_preserved(Dropout(0.4, rng=0), np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="Dropout: x must be a float32 or float64 array"):
        Dropout(0.4, rng=0)(np.ones((3, 4), np.float16))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\], got 1.5"):
        Dropout(1.5)
    with pytest.raises(TypeError, match="Dropout: p must be a float"):
        Dropout("0.1")
    with pytest.raises(TypeError, match="Dropout: x must be a floating-point"):
        Dropout(0.1)(np.arange(4))
