import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, gradcheck
from numtransformer.layers import sinusoid_table
from tests.helpers import check_dtype_preserved, seeds


def test_table_matches_the_formula_for_even_and_odd_d():
    for d in (1, 2, 5, 8):
        table = sinusoid_table(12, d)
        for pos in range(12):
            for j in range(d):
                i = j // 2
                angle = pos / 10000 ** (2 * i / d)
                expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
                assert abs(table[pos, j] - expected) < 1e-12


def test_relative_offsets_are_a_linear_map():
    # PE[pos + k] = M_k PE[pos] with M_k block-diagonal rotations: the reason a
    # model can attend by relative position.
    d, k = 8, 3
    table = sinusoid_table(30, d)
    for i in range(d // 2):
        w = 1 / 10000 ** (2 * i / d)
        c, s = math.cos(k * w), math.sin(k * w)
        rot = np.array([[c, -s], [s, c]])
        np.testing.assert_allclose(table[:-k, 2 * i:2 * i + 2] @ rot, table[k:, 2 * i:2 * i + 2],
                                   atol=1e-12)


@given(d=st.integers(1, 7), T=st.integers(1, 5), offset=st.integers(0, 3),
       batched=st.booleans(), seed=seeds)
def test_gradcheck(d, T, offset, batched, seed):
    rng = np.random.default_rng(seed)
    shape = (2, T, d) if batched else (T, d)
    x = rng.standard_normal(shape)
    gradcheck(SinusoidalPositionalEncoding(d, max_len=10), x, offset=offset,
              seed=seed).assert_passed()
    learned = LearnedPositionalEmbedding(10, d, dtype=np.float64, rng=rng)
    gradcheck(learned, x, offset=offset, seed=seed).assert_passed()


def test_adds_the_rows_at_the_offset():
    pe = SinusoidalPositionalEncoding(4, max_len=10)
    x = np.zeros((1, 3, 4))
    np.testing.assert_array_equal(pe(x, offset=2)[0], sinusoid_table(10, 4)[2:5])
    lp = LearnedPositionalEmbedding(10, 4, dtype=np.float64, rng=0)
    np.testing.assert_array_equal(lp(x, offset=5)[0], lp.P.data[5:8])


def test_learned_gradient_lands_on_the_offset_rows_summed_over_batch():
    lp = LearnedPositionalEmbedding(6, 2, dtype=np.float64, rng=0)
    _, cache = lp.forward(np.zeros((3, 2, 2)), offset=1)
    dy = np.arange(12.0).reshape(3, 2, 2)
    lp.backward(dy, cache)
    np.testing.assert_array_equal(lp.P.grad[1:3], dy.sum(0))
    assert not lp.P.grad[[0, 3, 4, 5]].any()


def test_float32_preserved():
    x = np.ones((2, 3, 4), np.float32)
    check_dtype_preserved(SinusoidalPositionalEncoding(4), x)
    check_dtype_preserved(LearnedPositionalEmbedding(8, 4, rng=0), x)


def test_bad_input():
    pe = SinusoidalPositionalEncoding(4, max_len=5)
    with pytest.raises(ValueError, match=r"SinusoidalPositionalEncoding: positions 3..6 exceed max_len=5"):
        pe(np.zeros((1, 4, 4)), offset=3)
    with pytest.raises(ValueError, match="x has last dim 3, expected d_model=4"):
        pe(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="must have 2 or 3 dims"):
        pe(np.zeros((1, 1, 2, 4)))
    with pytest.raises(ValueError, match="offset"):
        pe(np.zeros((1, 2, 4)), offset=-1)
    lp = LearnedPositionalEmbedding(5, 4, rng=0)
    with pytest.raises(TypeError, match="LearnedPositionalEmbedding: x has dtype float64"):
        lp(np.zeros((1, 2, 4)))


def test_learned_state_dict_round_trip():
    a, b = LearnedPositionalEmbedding(8, 4, rng=0), LearnedPositionalEmbedding(8, 4, rng=1)
    assert not np.array_equal(a.P.data, b.P.data)
    b.load_state_dict(a.state_dict())
    x = np.ones((2, 3, 4), np.float32)
    np.testing.assert_array_equal(a(x, offset=2), b(x, offset=2))
    with pytest.raises(ValueError, match="P"):
        LearnedPositionalEmbedding(9, 4).load_state_dict(a.state_dict())
