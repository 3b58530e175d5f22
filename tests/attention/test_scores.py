import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.attention import (AdditiveScore, ConcatScore, CosineScore, DotScore,
                                      GeneralScore, LocationScore, ScaledDotScore)
from numtransformer.layers import softmax
from tests.helpers import check_dtype_preserved, seeds

KINDS = ["dot", "scaled_dot", "general", "additive", "cosine", "location"]


def make_score(kind, dq, dk, rng, dtype=np.float64, max_len=6):
    """A score of ``kind`` for query width dq and key width dk (dk is ignored where
    the score needs equal widths); parameters drawn from N(0, 0.7^2)."""
    score = {
        "dot": lambda: DotScore(),
        "scaled_dot": lambda: ScaledDotScore(),
        "general": lambda: GeneralScore(dq, dk, dtype=dtype, rng=rng),
        "additive": lambda: AdditiveScore(dq, dk, 3, dtype=dtype, rng=rng),
        "cosine": lambda: CosineScore(beta=1.7),
        "location": lambda: LocationScore(dq, max_len, dtype=dtype, rng=rng),
    }[kind]()
    for p in score.parameters():
        p.data = (0.7 * rng.standard_normal(p.shape)).astype(dtype)
    return score


def key_width(kind, dq, dk):
    return dq if kind in ("dot", "scaled_dot", "cosine") else dk


@pytest.mark.parametrize("kind", KINDS)
@given(B=st.integers(1, 2), Tq=st.integers(1, 4),
       Tk=st.integers(1, 5), dq=st.integers(1, 5), dk=st.integers(1, 4), seed=seeds)
def test_gradcheck(kind, B, Tq, Tk, dq, dk, seed):
    rng = np.random.default_rng(seed)
    dk = key_width(kind, dq, dk)
    score = make_score(kind, dq, dk, rng)
    s, h = rng.standard_normal((B, Tq, dq)), rng.standard_normal((B, Tk, dk))
    gradcheck(score, s, h, seed=seed).assert_passed()


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_float32(kind):
    rng = np.random.default_rng(0)
    score = make_score(kind, 4, 3, rng, dtype=np.float32)
    dk = key_width(kind, 4, 3)
    s = rng.standard_normal((2, 3, 4)).astype(np.float32)
    h = rng.standard_normal((2, 5, dk)).astype(np.float32)
    e, cache = score.forward(s, h)
    assert e.shape == (2, 3, 5) and e.dtype == np.float32
    check_dtype_preserved(score, s, h)


def test_dot_and_scaled_dot_equations():
    rng = np.random.default_rng(1)
    s, h = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    expected = np.einsum("bid,bjd->bij", s, h)
    np.testing.assert_allclose(DotScore()(s, h), expected, rtol=1e-13)
    np.testing.assert_allclose(ScaledDotScore()(s, h), expected / 2.0, rtol=1e-13)


def test_general_with_identity_is_dot():
    rng = np.random.default_rng(2)
    g = GeneralScore(4, 4, dtype=np.float64)
    g.W_a.data = np.eye(4)
    s, h = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    np.testing.assert_allclose(g(s, h), DotScore()(s, h), rtol=1e-13)
    W = rng.standard_normal((4, 2))
    g2 = GeneralScore(4, 2, dtype=np.float64)
    g2.W_a.data = W
    h2 = rng.standard_normal((2, 5, 2))
    np.testing.assert_allclose(g2(s, h2), np.einsum("bid,de,bje->bij", s, W, h2), rtol=1e-13)


def test_additive_equals_its_concat_form():
    rng = np.random.default_rng(3)
    a = make_score("additive", 3, 4, rng)
    assert ConcatScore is AdditiveScore
    s, h = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 5, 4))
    W_a = a.concat_weight()
    assert W_a.shape == (7, 3)
    expected = np.empty((2, 2, 5))
    for b in range(2):
        for i in range(2):
            for j in range(5):
                expected[b, i, j] = a.v_a.data @ np.tanh(np.concatenate([s[b, i], h[b, j]]) @ W_a)
    np.testing.assert_allclose(a(s, h), expected, rtol=1e-12)


def test_cosine_equation_beta_and_range():
    rng = np.random.default_rng(4)
    s, h = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    cos = np.einsum("bid,bjd->bij", s, h) / (
        np.linalg.norm(s, axis=-1)[:, :, None] * np.linalg.norm(h, axis=-1)[:, None, :])
    np.testing.assert_allclose(CosineScore()(s, h), cos, rtol=1e-12)
    np.testing.assert_allclose(CosineScore(beta=3.0)(s, h), 3.0 * cos, rtol=1e-12)
    assert np.all(np.abs(CosineScore()(s, h)) <= 1.0)
    # invariant to the length of either vector
    np.testing.assert_allclose(CosineScore()(5.0 * s, 0.1 * h), cos, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_zero_vectors_give_zero_not_nan(dtype):
    rng = np.random.default_rng(5)
    s = rng.standard_normal((1, 3, 4)).astype(dtype)
    h = rng.standard_normal((1, 4, 4)).astype(dtype)
    s[0, 1] = 0
    h[0, 2] = 0
    score = CosineScore(beta=2.0)
    e, cache = score.forward(s, h)
    assert np.all(np.isfinite(e)) and e.dtype == dtype
    assert np.all(e[0, 1] == 0) and np.all(e[0, :, 2] == 0)
    ds, dh = score.backward(rng.standard_normal(e.shape).astype(dtype), cache)
    assert np.all(np.isfinite(ds)) and np.all(np.isfinite(dh))
    assert ds.dtype == dtype and dh.dtype == dtype


def test_cosine_backward_is_exact_for_the_eps_forward():
    # With a large eps the eps term changes the function visibly; the backward
    # must still be its exact derivative, also at a zero vector.
    rng = np.random.default_rng(6)
    s, h = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 4))
    s[1, 0] = 0
    gradcheck(CosineScore(beta=0.8, eps=0.7), s, h).assert_passed()
    assert not np.allclose(CosineScore(eps=0.7)(s, h), CosineScore()(s, h))


def test_location_ignores_the_keys_and_masks_beyond_length():
    rng = np.random.default_rng(7)
    loc = make_score("location", 3, 0, rng, max_len=6)
    s = rng.standard_normal((2, 4, 3))
    h = rng.standard_normal((2, 4, 5))
    e, cache = loc.forward(s, h)
    full = s @ loc.W_a.data  # scores for all max_len positions
    np.testing.assert_allclose(e, full[:, :, :4], rtol=1e-13)
    np.testing.assert_array_equal(e, loc(s, 10 * h + 3))  # independent of the key values
    # softmax over the Tk existing positions == softmax over max_len with the rest blocked
    beyond = np.arange(6) >= 4
    np.testing.assert_allclose(softmax(e), softmax(full, mask=beyond)[:, :, :4], rtol=1e-13)
    assert np.all(softmax(full, mask=beyond)[:, :, 4:] == 0)
    ds, dh = loc.backward(rng.standard_normal(e.shape), cache)
    assert not dh.any() and dh.shape == h.shape
    loc.zero_grad()
    loc.backward(rng.standard_normal(e.shape), cache)
    assert not loc.W_a.grad[:, 4:].any()  # columns beyond the length get no gradient


def test_errors():
    f32 = np.float32
    s, h = np.zeros((2, 3, 4), f32), np.zeros((2, 5, 4), f32)
    with pytest.raises(ValueError, match="DotScore: s has last dim 4 but h has 3; "
                                         "DotScore needs equal widths"):
        DotScore()(s, h[..., :3])
    with pytest.raises(ValueError, match="ScaledDotScore: h has batch size 1 but s has 2"):
        ScaledDotScore()(s, h[:1])
    with pytest.raises(ValueError, match="CosineScore: s must have 3 dims"):
        CosineScore()(s[0], h)
    with pytest.raises(TypeError, match="DotScore: h has dtype float64"):
        DotScore()(s, h.astype(np.float64))
    with pytest.raises(ValueError, match="GeneralScore: s has last dim 4, expected d_query=3"):
        GeneralScore(3, 4, rng=0)(s, h)
    with pytest.raises(ValueError, match="AdditiveScore: h has last dim 4, expected d_key=2"):
        AdditiveScore(4, 2, 3, rng=0)(s, h)
    with pytest.raises(TypeError, match="GeneralScore: s has dtype float64 but the layer "
                                        "computes in float32"):
        GeneralScore(4, 4, rng=0)(s.astype(np.float64), h.astype(np.float64))
    with pytest.raises(ValueError, match="LocationScore: h has 5 positions, more than max_len=4"):
        LocationScore(4, 4, rng=0)(s, h)
    with pytest.raises(ValueError, match="DotScore: h has no positions"):
        DotScore()(s, h[:, :0])
    bad = s.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="DotScore: s contains 1 NaN/inf value"):
        DotScore()(bad, h)
    with pytest.raises(ValueError, match="CosineScore: eps must be > 0"):
        CosineScore(eps=0.0)
    with pytest.raises(TypeError, match="CosineScore: beta must be a float"):
        CosineScore(beta="2")
    with pytest.raises(ValueError, match="GeneralScore: d_key must be >= 1"):
        GeneralScore(3, 0)


def test_parameter_names():
    assert [n for n, _ in GeneralScore(2, 3).named_parameters()] == ["W_a"]
    assert [n for n, _ in AdditiveScore(2, 3, 4).named_parameters()] == ["W_q", "W_k", "v_a"]
    assert [n for n, _ in LocationScore(2, 5).named_parameters()] == ["W_a"]
    assert DotScore().parameters() == [] and CosineScore().parameters() == []
