import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.attention import Attention, DotScore, GeneralScore, ScaledDotScore, causal_mask
from tests.attention.test_scores import KINDS, key_width, make_score
from tests.helpers import check_dtype_preserved, seeds

MASKS = [None, "key_padding", "full"]


def draw_mask(kind, rng, B, Tq, Tk, p_block):
    """A random mask of ``kind``; rows may be fully blocked (always when p_block = 1)."""
    if kind is None:
        return None
    shape = (B, Tk) if kind == "key_padding" else (B, Tq, Tk)
    return rng.random(shape) < p_block


def build(kind, rng, B, Tq, Tk, dq, dk, dv, dtype=np.float64):
    dk = key_width(kind, dq, dk)
    attention = Attention(make_score(kind, dq, dk, rng, dtype=dtype))
    query = rng.standard_normal((B, Tq, dq)).astype(dtype)
    keys = rng.standard_normal((B, Tk, dk)).astype(dtype)
    values = rng.standard_normal((B, Tk, dv)).astype(dtype)
    return attention, query, keys, values


def blocked_rows(mask, B, Tq, Tk):
    """(B, Tq) True where every key of the query row is blocked."""
    if mask is None:
        return np.zeros((B, Tq), dtype=bool)
    full = np.broadcast_to(mask[:, None, :] if mask.ndim == 2 else mask, (B, Tq, Tk))
    return full.all(axis=-1)


@pytest.mark.parametrize("kind", KINDS)
@given(mask_kind=st.sampled_from(MASKS), B=st.integers(1, 2), Tq=st.integers(1, 3),
       Tk=st.integers(1, 4), dq=st.integers(1, 4), dk=st.integers(1, 3), dv=st.integers(1, 3),
       p_block=st.sampled_from([0.0, 0.4, 1.0]), seed=seeds)
def test_gradcheck(kind, mask_kind, B, Tq, Tk, dq, dk, dv, p_block, seed):
    rng = np.random.default_rng(seed)
    attention, query, keys, values = build(kind, rng, B, Tq, Tk, dq, dk, dv)
    mask = draw_mask(mask_kind, rng, B, Tq, Tk, p_block)
    gradcheck(attention, query, keys, values, mask=mask, seed=seed).assert_passed()


@pytest.mark.parametrize("kind", KINDS)
@given(mask_kind=st.sampled_from(MASKS), Tq=st.integers(1, 4), Tk=st.integers(1, 6),
       seed=seeds)
def test_weights_are_a_distribution_over_unblocked_keys(kind, mask_kind, Tq, Tk, seed):
    rng = np.random.default_rng(seed)
    B = 2
    attention, query, keys, values = build(kind, rng, B, Tq, Tk, 3, 2, 3)
    mask = draw_mask(mask_kind, rng, B, Tq, Tk, 0.5)
    context, cache = attention.forward(query, keys, values, mask=mask)
    alpha = cache.alpha
    assert np.all(alpha >= 0)
    if mask is not None:
        full = np.broadcast_to(mask[:, None, :] if mask.ndim == 2 else mask, alpha.shape)
        assert np.all(alpha[full] == 0)
    dead = blocked_rows(mask, B, Tq, Tk)
    np.testing.assert_allclose(alpha.sum(axis=-1)[~dead], 1.0, rtol=1e-12)
    assert np.all(alpha[dead] == 0)
    np.testing.assert_allclose(context, np.einsum("bij,bjd->bid", alpha, values), rtol=1e-12)
    # the cache is the trace of the equations
    np.testing.assert_array_equal(cache.e, attention.score(query, keys))
    assert cache.c is context


# not "location": its scores are tied to positions, not to key contents
@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "additive", "cosine"])
@given(mask_kind=st.sampled_from(MASKS), Tq=st.integers(1, 3), Tk=st.integers(2, 5),
       seed=seeds)
def test_permuting_keys_and_values_together_changes_nothing(kind, mask_kind, Tq, Tk, seed):
    rng = np.random.default_rng(seed)
    B = 2
    attention, query, keys, values = build(kind, rng, B, Tq, Tk, 3, 2, 4)
    mask = draw_mask(mask_kind, rng, B, Tq, Tk, 0.3)
    perm = rng.permutation(Tk)
    pmask = None if mask is None else mask[..., perm]
    np.testing.assert_allclose(attention(query, keys[:, perm], values[:, perm], mask=pmask),
                               attention(query, keys, values, mask=mask), rtol=1e-10,
                               atol=1e-13)


@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "additive", "cosine"])
@given(T=st.integers(2, 5), t=st.integers(0, 4), seed=seeds)
def test_causal_mask_hides_the_future(kind, T, t, seed):
    t = t % (T - 1)  # change step t + 1 .. T-1 (the future of step t)
    rng = np.random.default_rng(seed)
    attention = Attention(make_score(kind, 3, 3, rng))
    x = rng.standard_normal((2, T, 3))
    mask = np.broadcast_to(causal_mask(T), (2, T, T))
    y = attention(x, x, x, mask=mask)
    x2 = x.copy()
    x2[:, t + 1:] = rng.standard_normal(x2[:, t + 1:].shape)
    y2 = attention(x2, x2, x2, mask=mask)
    np.testing.assert_array_equal(y2[:, :t + 1], y[:, :t + 1])
    assert not np.allclose(y2[:, t + 1:], y[:, t + 1:])


@pytest.mark.parametrize("kind", KINDS)
def test_fully_blocked_rows_give_zero_context_and_zero_grads(kind):
    rng = np.random.default_rng(11)
    attention, query, keys, values = build(kind, rng, 2, 3, 4, 3, 2, 3)
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[0, 1] = True  # query 1 of sequence 0 may see nothing
    mask[1] = True  # sequence 1 sees nothing at all
    context, cache = attention.forward(query, keys, values, mask=mask)
    assert np.all(np.isfinite(context)) and not context[0, 1].any() and not context[1].any()
    dq, dk, dv = attention.backward(rng.standard_normal(context.shape), cache)
    for g in (dq, dk, dv):
        assert np.all(np.isfinite(g))
    assert not dq[0, 1].any() and not dq[1].any() and not dk[1].any() and not dv[1].any()
    for _, p in attention.named_parameters():
        assert np.all(np.isfinite(p.grad))


def test_equals_the_equations():
    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal(s) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 6)))
    mask = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=bool)
    e = np.einsum("bid,bjd->bij", q, k) / 2.0
    e = np.where(mask[:, None, :], -np.inf, e)
    alpha = np.exp(e - e.max(-1, keepdims=True))
    alpha /= alpha.sum(-1, keepdims=True)
    np.testing.assert_allclose(Attention(ScaledDotScore())(q, k, v, mask=mask), alpha @ v,
                               rtol=1e-12)


def test_keys_as_values_grads_add_up():
    # RNN attention: the encoder states are both keys and values.
    rng = np.random.default_rng(13)
    attention = Attention(GeneralScore(3, 4, dtype=np.float64, rng=rng))
    s, h = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 5, 4))
    c, cache = attention.forward(s, h, h)
    G = rng.standard_normal(c.shape)
    ds, dk, dv = attention.backward(G, cache)
    eps = 1e-6
    d = rng.standard_normal(h.shape)
    numeric = (np.sum(attention(s, h + eps * d, h + eps * d) * G)
               - np.sum(attention(s, h - eps * d, h - eps * d) * G)) / (2 * eps)
    np.testing.assert_allclose(np.sum((dk + dv) * d), numeric, rtol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask_kind", MASKS)
def test_float32_preserved(kind, mask_kind):
    rng = np.random.default_rng(14)
    attention, query, keys, values = build(kind, rng, 2, 3, 4, 3, 2, 5, dtype=np.float32)
    mask = draw_mask(mask_kind, rng, 2, 3, 4, 0.3)
    check_dtype_preserved(attention, query, keys, values, mask=mask)


def test_errors():
    f32 = np.float32
    q, k, v = np.zeros((2, 3, 4), f32), np.zeros((2, 5, 4), f32), np.zeros((2, 5, 6), f32)
    att = Attention(DotScore())
    with pytest.raises(ValueError, match="Attention: query has last dim 4 but keys has 3"):
        att(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"Attention: values has shape \(2, 4, 6\), expected"):
        att(q, k, v[:, :4])
    with pytest.raises(ValueError, match="Attention: keys has batch size 1 but query has 2"):
        att(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="Attention: query has last dim 4, expected d_query=3"):
        Attention(GeneralScore(3, 4, rng=0))(q, k, v)
    with pytest.raises(TypeError, match="Attention: values has dtype float64"):
        att(q, k, v.astype(np.float64))
    with pytest.raises(ValueError, match=r"Attention: mask has shape \(2, 4\), expected "
                                         r"\(B, Tk\) = \(2, 5\) or \(B, Tq, Tk\)"):
        att(q, k, v, mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="Attention: mask has shape"):
        att(q, k, v, mask=np.zeros((3, 5), bool))  # a (Tq, Tk) mask is not accepted here
    with pytest.raises(TypeError, match="Attention: mask must be boolean"):
        att(q, k, v, mask=np.zeros((2, 5), np.int64))
    with pytest.raises(TypeError, match="Attention: score must be a Score module"):
        Attention(lambda s, h: s @ h.T)
    bad = v.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="Attention: values contains 1 NaN/inf"):
        att(q, k, bad)
    with pytest.raises(ValueError, match="Attention: query contains 1 NaN/inf"):
        Attention(GeneralScore(4, 4, rng=0))(bad[:, :3, :4], k, v)
    with pytest.raises(ValueError, match="Attention: keys contains 1 NaN/inf"):
        att(q, bad[..., :4], v)
