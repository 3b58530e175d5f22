import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import GELU, ReLU, Sigmoid, SiLU, Softmax, Tanh, gradcheck
from numtransformer.layers import get_activation, log_softmax, softmax
from tests.helpers import away_from_zero, check_dtype_preserved, seeds

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3)
smooth = [GELU, lambda: GELU("tanh"), Tanh, Sigmoid]


@given(shape=shapes, which=st.sampled_from(range(len(smooth))), seed=seeds)
def test_gradcheck_smooth(shape, which, seed):
    rng = np.random.default_rng(seed)
    gradcheck(smooth[which](), 2 * rng.standard_normal(shape), seed=seed).assert_passed()


@given(shape=shapes, seed=seeds)
def test_gradcheck_relu_away_from_the_kink(shape, seed):
    rng = np.random.default_rng(seed)
    gradcheck(ReLU(), away_from_zero(rng, shape), seed=seed).assert_passed()


@given(shape=shapes, seed=seeds, data=st.data())
def test_gradcheck_softmax_any_axis_with_masks(shape, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    mask = rng.random(shape) < 0.4 if data.draw(st.booleans()) else None
    gradcheck(Softmax(axis), 3 * rng.standard_normal(shape), mask=mask, seed=seed).assert_passed()


def test_known_values():
    x = np.array([-2.0, 0.0, 1.0])
    np.testing.assert_array_equal(ReLU()(x), [0, 0, 1])
    np.testing.assert_allclose(Tanh()(x), np.tanh(x))
    np.testing.assert_allclose(Sigmoid()(x), 1 / (1 + np.exp(-x)))
    # GELU(x) = x * Phi(x); Phi(1) = 0.841344746..., Phi(-2) = 0.022750131...
    np.testing.assert_allclose(GELU()(x), [-2 * 0.0227501319481792, 0, 0.841344746068543],
                               rtol=1e-12)
    t = math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715))
    np.testing.assert_allclose(GELU("tanh")(np.array([1.0])), [0.5 * (1 + t)], rtol=1e-14)
    np.testing.assert_allclose(Softmax()(np.array([[0.0, math.log(3.0)]])), [[0.25, 0.75]])


def test_relu_subgradient_at_zero_is_zero():
    y, cache = ReLU().forward(np.array([0.0, 1.0]))
    np.testing.assert_array_equal(ReLU().backward(np.array([5.0, 5.0]), cache), [0, 5])


def test_softmax_is_stable_and_masked_rows_are_zero():
    x = np.array([[1e4, 1e4 - 1, -1e4], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    mask = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 1]], bool)
    y, cache = Softmax().forward(x, mask=mask)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(y[0, :2], [1 / (1 + math.exp(-1)), 1 / (1 + math.e)], rtol=1e-6)
    assert y[1, 1] == 0 and np.allclose(y[1].sum(), 1)
    assert not y[2].any()
    dx = Softmax().backward(np.ones_like(y) + np.arange(3, dtype=np.float32), cache)
    assert np.isfinite(dx).all() and not dx[2].any() and dx[1, 1] == 0
    # an all -inf row (no mask) is zeros too
    assert not softmax(np.full((1, 3), -np.inf)).any()


def test_log_softmax_matches_log_of_softmax_and_survives_large_logits():
    x = np.random.default_rng(0).standard_normal((4, 6)) * 50
    np.testing.assert_allclose(log_softmax(x), np.log(softmax(x)), atol=1e-10)
    assert np.isfinite(log_softmax(np.array([[1e30, 0.0]], np.float32))).all()


def test_sigmoid_and_gelu_do_not_overflow():
    x = np.array([-1e3, 1e3], np.float32)
    for layer in (Sigmoid(), GELU(), GELU("tanh"), Tanh()):
        y, cache = layer.forward(x)
        dx = layer.backward(np.ones_like(x), cache)
        assert np.isfinite(y).all() and np.isfinite(dx).all() and y.dtype == np.float32


@pytest.mark.parametrize("make", [ReLU, GELU, lambda: GELU("tanh"), Tanh, Sigmoid, Softmax])
def test_float32_preserved(make):
    check_dtype_preserved(make(), np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4))


def test_bad_input():
    with pytest.raises(TypeError, match="ReLU: x must be a floating-point"):
        ReLU()(np.arange(3))
    with pytest.raises(ValueError, match="Sigmoid: x contains 1 NaN"):
        Sigmoid()(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="Softmax: axis 2"):
        Softmax(axis=2)(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"Softmax: mask has shape \(2,\), expected \(2, 2\)"):
        Softmax()(np.zeros((2, 2)), mask=np.zeros(2, bool))
    with pytest.raises(TypeError, match="Softmax: mask must be boolean"):
        Softmax()(np.zeros((2, 2)), mask=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="approximate"):
        GELU("fast")


@given(shape=shapes, scale=st.sampled_from([1.0, 4.0]), seed=seeds)
def test_gradcheck_silu(shape, scale, seed):
    rng = np.random.default_rng(seed)
    gradcheck(SiLU(), scale * rng.standard_normal(shape), seed=seed).assert_passed()


def test_silu_known_values_and_derivative():
    x = np.array([-2.0, 0.0, 1.0, 40.0, -800.0])
    s = 1 / (1 + np.exp(-x[:3]))
    y, cache = SiLU().forward(x)
    np.testing.assert_allclose(y[:3], x[:3] * s, rtol=1e-15)
    assert y[3] == 40.0 and y[4] == 0.0  # the limits x and 0, no overflow warning
    dx = SiLU().backward(np.ones_like(x), cache)
    np.testing.assert_allclose(dx[:3], s * (1 + x[:3] * (1 - s)), rtol=1e-15)
    assert dx[1] == 0.5 and dx[3] == 1.0 and dx[4] == 0.0  # silu'(0) = 1/2


def test_silu_float32_and_get_activation():
    x = np.array([-1e3, -1.5, 0.5, 1e3], np.float32)
    check_dtype_preserved(SiLU(), x)
    y, cache = SiLU().forward(x)
    assert np.isfinite(y).all() and np.isfinite(SiLU().backward(np.ones_like(x), cache)).all()
    assert isinstance(get_activation("silu"), SiLU)
    with pytest.raises(TypeError, match="SiLU: x must be"):
        SiLU()(np.arange(3))
    with pytest.raises(ValueError, match="SiLU: x contains 1 NaN"):
        SiLU()(np.array([np.nan, 1.0]))
