import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import Embedding, gradcheck
from numtransformer.gradcheck import numerical_gradient
from tests.helpers import seeds


@given(V=st.integers(1, 8), D=st.integers(1, 5), shape=st.lists(st.integers(1, 4), max_size=2),
       seed=seeds)
def test_gradcheck(V, D, shape, seed):
    rng = np.random.default_rng(seed)
    emb = Embedding(V, D, dtype=np.float64, rng=rng)
    ids = rng.integers(0, V, shape)
    gradcheck(emb, ids, seed=seed).assert_passed()


def test_repeated_ids_sum_their_gradients():
    emb = Embedding(4, 2, dtype=np.float64, rng=0)
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    _, cache = emb.forward(ids)
    dy = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
    assert emb.backward(dy, cache) is None
    expected = np.zeros((4, 2))
    for (b, t), v in np.ndenumerate(ids):
        expected[v] += dy[b, t]
    np.testing.assert_array_equal(emb.W.grad, expected)
    assert emb.W.grad[1].tolist() == [0 + 2 + 6, 1 + 3 + 7]


def test_padding_idx_row_is_zero_and_gets_no_gradient():
    emb = Embedding(5, 3, padding_idx=-1, dtype=np.float64, rng=0)
    assert emb.padding_idx == 4 and not emb.W.data[4].any()
    ids = np.array([[4, 2, 4, 1]])
    out, cache = emb.forward(ids)
    assert not out[0, 0].any()
    G = np.random.default_rng(1).standard_normal(out.shape)
    emb.backward(G, cache)
    assert not emb.W.grad[4].any()
    # Every other row: the gradient is the finite difference of sum(out * G).
    W = emb.W.data

    def loss():
        return float(np.sum(emb(ids) * G))

    for flat in range(4 * 3):
        n = numerical_gradient(loss, W, index=flat)
        assert abs(n - emb.W.grad.reshape(-1)[flat]) < 1e-9


def test_lookup_and_dtype():
    emb = Embedding(3, 2, rng=0)
    out = emb(np.array([2, 0]))
    assert out.dtype == np.float32 and np.array_equal(out, emb.W.data[[2, 0]])


def test_bad_ids():
    emb = Embedding(10, 4, rng=0)
    with pytest.raises(ValueError, match=r"Embedding: ids contains id 10, expected ids in \[0, 10\)"):
        emb(np.array([1, 10]))
    with pytest.raises(ValueError, match="contains id -1"):
        emb(np.array([-1, 2]))
    with pytest.raises(TypeError, match="Embedding: ids must be an integer array"):
        emb(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer"):
        emb(np.array([True, False]))
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(3, 2, padding_idx=3)


def test_state_dict_round_trip():
    a, b = Embedding(6, 3, padding_idx=0, rng=0), Embedding(6, 3, rng=5)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.W.data, b.W.data)
