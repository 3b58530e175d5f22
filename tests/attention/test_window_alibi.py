"""Sliding-window causal attention and ALiBi: the mask and bias builders, the
core's additive bias, MultiHeadAttention(window=..., alibi=...) in forward,
backward and decode, and incremental decoding with every combination of the
position options (GQA cache, rotary offsets, windows, ALiBi)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer import functional as F
from numtransformer.attention import (MultiHeadAttention, alibi_bias, alibi_slopes, causal_mask,
                                      sliding_window_mask)
from tests.helpers import check_dtype_preserved, seeds


def make(rng, E, H, dtype=np.float64, **kw):
    mha = MultiHeadAttention(E, H, dtype=dtype, rng=rng, **kw)
    for p in mha.parameters():
        p.data = (0.5 * rng.standard_normal(p.shape)).astype(dtype)
    return mha


# -- the builders -----------------------------------------------------------------------------

@given(T=st.integers(1, 8), window=st.integers(1, 10), offset=st.integers(0, 5))
def test_sliding_window_mask_is_its_definition(T, window, offset):
    m = sliding_window_mask(T, window, offset)
    assert m.shape == (T, offset + T) and m.dtype == np.bool_
    for i in range(T):
        t = offset + i
        for j in range(offset + T):
            assert m[i, j] == (not (t - window + 1 <= j <= t))
    if window >= offset + T:  # a window longer than the sequence: plain causal
        np.testing.assert_array_equal(m, sliding_window_mask(offset + T, offset + T)[offset:])
    if offset == 0 and window >= T:
        np.testing.assert_array_equal(m, causal_mask(T))
    np.testing.assert_array_equal(sliding_window_mask(T, window, offset, Tk=offset + T), m)


def test_window_one_sees_only_itself():
    np.testing.assert_array_equal(~sliding_window_mask(4, 1), np.eye(4, dtype=bool))


def test_alibi_slopes_follow_the_paper():
    # powers of two: the geometric sequence from 2^(-8/n) with that ratio
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -k for k in range(1, 9)], rtol=1e-15)
    np.testing.assert_allclose(alibi_slopes(16), [2.0 ** (-k / 2) for k in range(1, 17)],
                               rtol=1e-15)
    np.testing.assert_allclose(alibi_slopes(1), [2.0 ** -8])
    # other counts: the 4 slopes for 4 heads, then every other slope of 8 heads
    np.testing.assert_allclose(alibi_slopes(6), [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8,
                                                 2.0 ** -1, 2.0 ** -3], rtol=1e-15)
    np.testing.assert_allclose(alibi_slopes(12)[8:], alibi_slopes(16)[0::2][:4], rtol=1e-15)
    for n in range(1, 20):
        s = alibi_slopes(n)
        assert s.shape == (n,) and len(set(s)) == n and np.all((s > 0) & (s < 1))


@given(H=st.integers(1, 5), T=st.integers(1, 5), offset=st.integers(0, 4))
def test_alibi_bias_is_minus_slope_times_distance(H, T, offset):
    slopes = alibi_slopes(H)
    b = alibi_bias(slopes, T, offset)
    assert b.shape == (H, T, offset + T)
    for h in range(H):
        for i in range(T):
            for j in range(offset + T):
                assert b[h, i, j] == pytest.approx(-slopes[h] * (offset + i - j), rel=1e-15)
    assert alibi_bias(slopes, T, offset, np.float32).dtype == np.float32


def test_builder_errors():
    with pytest.raises(ValueError, match="sliding_window_mask: window must be >= 1, got 0"):
        sliding_window_mask(3, 0)
    with pytest.raises(ValueError, match="sliding_window_mask: offset must be >= 0"):
        sliding_window_mask(3, 2, -1)
    with pytest.raises(ValueError, match="alibi_slopes: n_heads must be >= 1"):
        alibi_slopes(0)


# -- the core's bias --------------------------------------------------------------------------

@given(B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 4), Tk=st.integers(1, 4),
       seed=seeds)
def test_core_bias_adds_to_the_scores_and_has_no_gradient(B, H, Tq, Tk, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Tq, 3))
    k, v = rng.standard_normal((2, B, H, Tk, 3))
    bias = rng.standard_normal((1, H, Tq, Tk))
    out, cache = F.scaled_dot_product_attention_forward(q, k, v, bias=bias)
    np.testing.assert_allclose(cache.e, q @ k.swapaxes(-1, -2) / np.sqrt(3) + bias, rtol=1e-13)
    # a bias constant along each row changes nothing (softmax is shift-invariant)
    row = rng.standard_normal((1, H, Tq, 1))
    out2, _ = F.scaled_dot_product_attention_forward(q, k, v, bias=bias + row)
    np.testing.assert_allclose(out2, out, rtol=1e-12, atol=1e-14)
    G = rng.standard_normal(out.shape)
    grads = F.scaled_dot_product_attention_backward(G, cache)
    assert len(grads) == 3  # dq, dk, dv: no gradient for the bias
    h = 1e-6
    for which in range(2):
        x = (q, k)[which]
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [q, k, v]
            plus, minus = x.copy(), x.copy()
            plus[idx] += h
            minus[idx] -= h
            args[which] = plus
            up = np.sum(F.scaled_dot_product_attention_forward(*args, bias=bias)[0] * G)
            args[which] = minus
            down = np.sum(F.scaled_dot_product_attention_forward(*args, bias=bias)[0] * G)
            numeric[idx] = (up - down) / (2 * h)
        scale = max(np.abs(numeric).max(), 1e-12)
        assert np.abs(numeric - grads[which]).max() / scale < 1e-7


# -- MultiHeadAttention(window=..., alibi=...) --------------------------------------------------

@given(H=st.integers(1, 3), T=st.integers(1, 6), window=st.integers(1, 8), seed=seeds)
def test_window_is_the_sliding_window_mask(H, T, window, seed):
    rng = np.random.default_rng(seed)
    local = make(rng, 2 * H, H, window=window)
    plain = MultiHeadAttention(2 * H, H, dtype=np.float64, rng=0)
    plain.load_state_dict(local.state_dict())
    x = rng.standard_normal((2, T, 2 * H))
    expected = plain(x, attn_mask=sliding_window_mask(T, window))
    np.testing.assert_array_equal(local(x), expected)  # the window is causal by itself
    np.testing.assert_array_equal(local(x, attn_mask=causal_mask(T)), expected)


@given(H=st.integers(1, 4), T=st.integers(1, 5), seed=seeds)
def test_alibi_is_the_core_with_the_bias(H, T, seed):
    rng = np.random.default_rng(seed)
    E = 2 * H
    mha = make(rng, E, H, alibi=True)
    x = rng.standard_normal((2, T, E))
    y = mha(x, attn_mask=causal_mask(T))
    QKV = x @ mha.in_proj.W.data + mha.in_proj.b.data
    q, k, v = (F.split_heads(QKV[..., i * E:(i + 1) * E], H) for i in range(3))
    context, _ = F.scaled_dot_product_attention_forward(
        q, k, v, causal_mask(T), bias=alibi_bias(alibi_slopes(H), T)[None])
    expected = F.merge_heads(context) @ mha.out_proj.W.data + mha.out_proj.b.data
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)


@given(H=st.integers(1, 3), d_k=st.integers(1, 2), T=st.integers(1, 5),
       window=st.sampled_from([None, 1, 2, 3, 8]), alibi=st.booleans(),
       n_kv=st.sampled_from(["all", 1]), mode=st.sampled_from(["self", "same_array", "cross"]),
       padded=st.sampled_from([None, "row", "sequence"]), dropout=st.sampled_from([0.0, 0.3]),
       weights=st.sampled_from([None, "mean"]), seed=seeds)
def test_gradcheck(H, d_k, T, window, alibi, n_kv, mode, padded, dropout, weights, seed):
    """Windows shorter and longer than the sequence, ALiBi, GQA, fully padded rows."""
    rng = np.random.default_rng(seed)
    E = H * d_k
    mha = make(rng, E, H, window=window, alibi=alibi, dropout=dropout,
               n_kv_heads=None if n_kv == "all" else n_kv)
    x = rng.standard_normal((2, T, E))
    args = {"self": (x,), "same_array": (x, x, x),
            "cross": (x, rng.standard_normal((2, T, E)), rng.standard_normal((2, T, E)))}[mode]
    kw = {}
    if padded == "sequence":  # every key of sequence 1 is padding
        kw["key_padding_mask"] = np.zeros((2, T), bool)
        kw["key_padding_mask"][1] = True
    elif padded == "row":  # query 0 of sequence 0 sees nothing
        am = np.zeros((2, T, T), bool)
        am[0, 0] = True
        kw["attn_mask"] = am
    if weights:
        kw["need_weights"] = True
    gradcheck(mha, *args, seed=seed, max_entries=24, **kw).assert_passed()


# -- incremental decoding: every combination ----------------------------------------------------

@given(heads=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (4, 1), (3, 3)]),
       h=st.integers(1, 2), T=st.integers(1, 8),
       chunks=st.lists(st.integers(1, 3), min_size=1, max_size=6),
       rotary=st.sampled_from([None, "half", "interleaved"]),
       window=st.sampled_from([None, 1, 2, 3, 10]), alibi=st.booleans(),
       left_pad=st.integers(0, 2), capacity=st.integers(1, 4), seed=seeds)
def test_incremental_decoding_equals_the_full_forward(heads, h, T, chunks, rotary, window,
                                                      alibi, left_pad, capacity, seed):
    H, n_kv = heads
    rng = np.random.default_rng(seed)
    d_k = 2 * h
    E, B = H * d_k, 2
    mha = make(rng, E, H, n_kv_heads=n_kv, window=window, alibi=alibi, dropout=0.3,
               rotary=None if rotary is None else {"layout": rotary, "base": 50.0})
    x = rng.standard_normal((B, T, E))
    kpm = np.zeros((B, T), dtype=bool)
    kpm[1, :min(left_pad, T - 1)] = True
    full = mha.eval()(x, attn_mask=causal_mask(T), key_padding_mask=kpm)
    mha.train()  # decode never drops
    kv = mha.new_kv_cache(B, capacity=capacity)
    outs, t = [], 0
    for n in chunks * T:
        if t == T:
            break
        n = min(n, T - t)
        outs.append(mha.decode(x[:, t:t + n], kv, key_padding_mask=kpm[:, :t + n]))
        t += n
    assert kv.length == T and kv.k.shape[1] == n_kv
    inc = np.concatenate(outs, axis=1)
    assert np.abs(inc - full).max() <= 1e-12 * max(np.abs(full).max(), 1.0)


def test_decode_blocks_keys_older_than_the_window():
    """With window w, the output at step t does not depend on steps <= t - w."""
    rng = np.random.default_rng(4)
    mha = make(rng, 4, 2, window=2)
    x = rng.standard_normal((1, 6, 4))
    kv = mha.new_kv_cache(1)
    y = np.concatenate([mha.decode(x[:, t:t + 1], kv) for t in range(6)], 1)
    x2 = x.copy()
    x2[:, :3] += 1.0  # change steps 0..2: steps 4, 5 see only 3..5
    kv2 = mha.new_kv_cache(1)
    y2 = np.concatenate([mha.decode(x2[:, t:t + 1], kv2) for t in range(6)], 1)
    np.testing.assert_array_equal(y2[:, 4:], y[:, 4:])
    assert not np.allclose(y2[:, 3], y[:, 3])


@pytest.mark.parametrize("options", [{"window": 2}, {"alibi": True},
                                     {"window": 3, "alibi": True, "n_kv_heads": 1,
                                      "rotary": True}])
def test_float32_preserved(options):
    rng = np.random.default_rng(2)
    mha = MultiHeadAttention(8, 2, dropout=0.1, rng=rng, **options)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    causal = {"attn_mask": causal_mask(5)}  # alibi is defined for causal attention
    check_dtype_preserved(mha, x, need_weights=True, **causal)
    check_dtype_preserved(mha, x, x.copy(), x.copy(), **causal)
    kv = mha.new_kv_cache(2)
    assert all(mha.decode(x[:, t:t + 1], kv).dtype == np.float32 for t in range(5))


def test_alibi_without_a_causal_mask_is_refused():
    """ALiBi's bias -m (t - j) grows for keys after the query: without a causal
    mask or a window it would favour the future, so forward refuses it."""
    mha = MultiHeadAttention(8, 2, rng=0, alibi=True)
    x = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="MultiHeadAttention: alibi is defined for causal"):
        mha.forward(x)
    leaky = causal_mask(4).copy()
    leaky[1, 2] = False  # query 1 may see key 2
    with pytest.raises(ValueError, match="alibi is defined for causal"):
        mha.forward(x, attn_mask=leaky)
    mha.forward(x, attn_mask=causal_mask(4))
    MultiHeadAttention(8, 2, rng=0, alibi=True, window=2).forward(x)  # a window is causal


def test_errors_and_repr():
    with pytest.raises(ValueError, match="MultiHeadAttention: window must be >= 1, got 0"):
        MultiHeadAttention(8, 2, window=0)
    with pytest.raises(TypeError, match="MultiHeadAttention: window must be an int"):
        MultiHeadAttention(8, 2, window=2.5)
    with pytest.raises(TypeError, match="MultiHeadAttention: alibi must be True or False"):
        MultiHeadAttention(8, 2, alibi="yes")
    for opts in ({"window": 2}, {"alibi": True}):
        mha = MultiHeadAttention(8, 2, rng=0, **opts)
        memory = mha.cache_memory(np.zeros((1, 3, 8), np.float32),
                                  np.zeros((1, 3, 8), np.float32))
        with pytest.raises(ValueError, match="MultiHeadAttention: decode on a memory"):
            mha.decode(np.zeros((1, 1, 8), np.float32), memory)
    r = repr(MultiHeadAttention(8, 4, rng=0, window=3, alibi=True, n_kv_heads=2))
    assert "n_kv_heads=2, window=3, alibi=True" in r
