import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import Embedding, Linear, TiedLinear, gradcheck
from tests.helpers import check_dtype_preserved, seeds

dims = st.integers(1, 6)


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), d_in=dims, d_out=dims,
       bias=st.booleans(), seed=seeds)
def test_gradcheck(lead, d_in, d_out, bias, seed):
    rng = np.random.default_rng(seed)
    lin = Linear(d_in, d_out, bias=bias, dtype=np.float64, rng=rng)
    gradcheck(lin, rng.standard_normal((*lead, d_in)), seed=seed).assert_passed()


def test_known_value():
    lin = Linear(2, 3, dtype=np.float64)
    lin.W.data[...] = [[1, 2, 3], [4, 5, 6]]
    lin.b.data[...] = [0.5, 0, -1]
    np.testing.assert_array_equal(lin(np.array([[1.0, -1.0]])), [[-2.5, -3, -4]])
    _, cache = lin.forward(np.array([[1.0, -1.0]]))
    dx = lin.backward(np.array([[1.0, 0.0, 2.0]]), cache)
    np.testing.assert_array_equal(dx, [[7.0, 16.0]])
    np.testing.assert_array_equal(lin.W.grad, [[1, 0, 2], [-1, 0, -2]])
    np.testing.assert_array_equal(lin.b.grad, [1, 0, 2])


def test_float32_preserved():
    lin = Linear(4, 3, rng=0)
    check_dtype_preserved(lin, np.ones((2, 5, 4), np.float32))


def test_grads_accumulate_across_calls():
    rng = np.random.default_rng(0)
    lin = Linear(3, 2, dtype=np.float64, rng=0)
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    g1, g2 = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))
    _, c1 = lin.forward(x1)
    _, c2 = lin.forward(x2)
    lin.backward(g2, c2)
    lin.backward(g1, c1)
    np.testing.assert_allclose(lin.W.grad, x1.T @ g1 + x2.T @ g2, rtol=1e-12)
    np.testing.assert_allclose(lin.b.grad, g1.sum(0) + g2.sum(0), rtol=1e-12)


def test_inputs_not_mutated():
    lin = Linear(3, 3, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    x0 = x.copy()
    y, cache = lin.forward(x)
    dy = np.ones_like(y)
    lin.backward(dy, cache)
    assert np.array_equal(x, x0) and (dy == 1).all()


def test_bad_input():
    lin = Linear(64, 8, rng=0)
    with pytest.raises(ValueError, match=r"Linear: x has last dim 63, expected in_features=64"):
        lin(np.zeros((2, 63), np.float32))
    with pytest.raises(TypeError, match="Linear: x .*dtype float64"):
        lin(np.zeros((2, 64)))
    with pytest.raises(TypeError, match="Linear: x must be a floating-point"):
        lin(np.zeros((2, 64), np.int64))
    with pytest.raises(ValueError, match="Linear: x must have at least 1 dims"):
        lin(np.float32(1.0))
    x = np.zeros((2, 64), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match="Linear: x contains 1 NaN/inf"):
        lin(x)
    with pytest.raises(ValueError, match="in_features"):
        Linear(0, 3)
    with pytest.raises(TypeError, match="dtype"):
        Linear(3, 3, dtype=np.int32)


def test_init_matches_pytorch_bounds():
    lin = Linear(100, 50, rng=0)
    assert np.abs(lin.W.data).max() <= 0.1 and np.abs(lin.b.data).max() <= 0.1
    assert lin.W.data.std() > 0.05


def test_state_dict_round_trip():
    a, b = Linear(3, 4, rng=0), Linear(3, 4, rng=1)
    b.load_state_dict(a.state_dict())
    x = np.ones((1, 3), np.float32)
    assert np.array_equal(a(x), b(x))


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), V=dims, D=dims,
       bias=st.booleans(), seed=seeds)
def test_tied_linear_gradcheck(lead, V, D, bias, seed):
    rng = np.random.default_rng(seed)
    tied = TiedLinear(Embedding(V, D, dtype=np.float64, rng=rng).W, bias=bias)
    if bias:
        tied.b.data[...] = rng.standard_normal(V)
    gradcheck(tied, rng.standard_normal((*lead, D)), seed=seed).assert_passed()


def test_tied_linear_shares_the_table_and_sums_both_gradients():
    rng = np.random.default_rng(3)
    emb = Embedding(5, 3, dtype=np.float64, rng=rng)
    tied = TiedLinear(emb.W)
    assert tied.E is emb.W
    ids = np.array([[1, 4, 4]])
    h, c_emb = emb.forward(ids)
    y, c_out = tied.forward(h)
    dy = rng.standard_normal(y.shape)
    emb.backward(tied.backward(dy, c_out), c_emb)
    dy2 = dy.reshape(-1, 5)
    expected = dy2.T @ h.reshape(-1, 3)  # from the output projection
    np.add.at(expected, ids.reshape(-1), (dy2 @ emb.W.data))  # plus from the lookup
    np.testing.assert_allclose(emb.W.grad, expected, rtol=1e-13)
    check_dtype_preserved(TiedLinear(Embedding(5, 3, rng=0).W, bias=True),
                          np.ones((2, 3), np.float32))


def test_a_frozen_linear_adds_no_gradient():
    import numtransformer as nt

    lin = nt.Linear(3, 2, dtype=np.float64, rng=0)
    lin.requires_grad_(False)
    x = np.random.default_rng(1).standard_normal((4, 3))
    y, cache = lin.forward(x)
    dx = lin.backward(np.ones_like(y), cache)
    assert not lin.W.grad.any() and not lin.b.grad.any()
    np.testing.assert_allclose(dx, np.ones((4, 2)) @ lin.W.data.T)
