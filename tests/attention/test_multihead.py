import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.attention import (Attention, KVCache, MultiHeadAttention, ScaledDotScore,
                                      causal_mask)
from tests.helpers import check_dtype_preserved, seeds

MODES = ["self", "same_array", "cross", "kdim_vdim"]
MASKS = [None, "kpm", "attn2d", "attn3d", "both"]


def make_mha(rng, E, H, *, kdim=None, vdim=None, dropout=0.0, bias=True, dtype=np.float64):
    """An MHA whose parameters (biases included) are drawn from N(0, 0.5^2)."""
    mha = MultiHeadAttention(E, H, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim,
                             dtype=dtype, rng=rng)
    for p in mha.parameters():
        p.data = (0.5 * rng.standard_normal(p.shape)).astype(dtype)
    return mha


def make_inputs(rng, mode, B, Tq, Tk, E, kdim=None, vdim=None, dtype=np.float64):
    """(args, Tk): the positional inputs of forward for ``mode``."""
    x = rng.standard_normal((B, Tq, E)).astype(dtype)
    if mode == "self":
        return (x,), Tq
    if mode == "same_array":
        return (x, x, x), Tq
    key = rng.standard_normal((B, Tk, kdim or E)).astype(dtype)
    value = rng.standard_normal((B, Tk, vdim or E)).astype(dtype)
    return (x, key, value), Tk


def make_masks(rng, kind, B, Tq, Tk, p_block):
    kw = {}
    if kind in ("kpm", "both"):
        kw["key_padding_mask"] = rng.random((B, Tk)) < p_block
    if kind == "attn2d":
        kw["attn_mask"] = rng.random((Tq, Tk)) < p_block
    if kind in ("attn3d", "both"):
        kw["attn_mask"] = rng.random((B, Tq, Tk)) < p_block
    return kw


def union(kw, B, Tq, Tk):
    """The (B, Tq, Tk) union of the masks in ``kw``."""
    blocked = np.zeros((B, Tq, Tk), dtype=bool)
    if "key_padding_mask" in kw:
        blocked |= kw["key_padding_mask"][:, None, :]
    if "attn_mask" in kw:
        blocked |= kw["attn_mask"]
    return blocked


@pytest.mark.parametrize("mode", MODES)
@given(H=st.integers(1, 3), d_k=st.integers(1, 2), Tq=st.integers(1, 3), Tk=st.integers(1, 4),
       masks=st.sampled_from(MASKS), p_block=st.sampled_from([0.3, 1.0]),
       dropout=st.sampled_from([0.0, 0.3]), weights=st.sampled_from([None, "mean", "heads"]),
       bias=st.booleans(), seed=seeds)
def test_gradcheck(mode, H, d_k, Tq, Tk, masks, p_block, dropout, weights, bias, seed):
    rng = np.random.default_rng(seed)
    E = H * d_k
    kdim, vdim = (3, 2) if mode == "kdim_vdim" else (None, None)
    mha = make_mha(rng, E, H, kdim=kdim, vdim=vdim, dropout=dropout, bias=bias)
    args, Tk = make_inputs(rng, mode, 2, Tq, Tk, E, kdim, vdim)
    kw = make_masks(rng, masks, 2, Tq, Tk, p_block)
    if weights:
        kw.update(need_weights=True, average_attn_weights=weights == "mean")
    gradcheck(mha, *args, seed=seed, max_entries=24, **kw).assert_passed()


@pytest.mark.parametrize("mode", MODES)
@given(H=st.integers(1, 3), Tq=st.integers(1, 4), Tk=st.integers(1, 5),
       masks=st.sampled_from(MASKS), seed=seeds)
def test_weights_are_a_distribution_over_unblocked_keys(mode, H, Tq, Tk, masks, seed):
    rng = np.random.default_rng(seed)
    B, E = 2, 2 * H
    kdim, vdim = (3, 5) if mode == "kdim_vdim" else (None, None)
    mha = make_mha(rng, E, H, kdim=kdim, vdim=vdim)
    args, Tk = make_inputs(rng, mode, B, Tq, Tk, E, kdim, vdim)
    kw = make_masks(rng, masks, B, Tq, Tk, 0.5)
    y, w = mha(*args, need_weights=True, average_attn_weights=False, **kw)
    y_mean, w_mean = mha(*args, need_weights=True, **kw)
    np.testing.assert_array_equal(y, y_mean)
    np.testing.assert_allclose(w_mean, w.mean(axis=1), rtol=1e-14)
    assert w.shape == (B, H, Tq, Tk) and np.all(w >= 0)
    blocked = union(kw, B, Tq, Tk)
    assert np.all(w[np.broadcast_to(blocked[:, None], w.shape)] == 0)
    dead = blocked.all(axis=-1)  # (B, Tq) rows with no key to look at
    sums = w.sum(axis=-1)  # (B, H, Tq)
    np.testing.assert_allclose(sums.transpose(0, 2, 1)[~dead], 1.0, rtol=1e-12)
    assert np.all(sums.transpose(0, 2, 1)[dead] == 0)
    if mha.out_proj.b is not None:  # a dead row has context 0, so y = b_o
        np.testing.assert_allclose(y[dead], np.broadcast_to(mha.out_proj.b.data,
                                                            y[dead].shape), rtol=1e-14)


@given(H=st.integers(1, 3), Tq=st.integers(1, 3), Tk=st.integers(2, 5),
       masks=st.sampled_from(MASKS), seed=seeds)
def test_permuting_keys_and_values_together_changes_nothing(H, Tq, Tk, masks, seed):
    rng = np.random.default_rng(seed)
    B, E = 2, 2 * H
    mha = make_mha(rng, E, H, kdim=3, vdim=4)
    (x, key, value), Tk = make_inputs(rng, "cross", B, Tq, Tk, E, 3, 4)
    kw = make_masks(rng, masks, B, Tq, Tk, 0.3)
    perm = rng.permutation(Tk)
    pkw = {name: m[..., perm] for name, m in kw.items()}
    np.testing.assert_allclose(mha(x, key[:, perm], value[:, perm], **pkw),
                               mha(x, key, value, **kw), rtol=1e-10, atol=1e-13)


@given(H=st.integers(1, 3), T=st.integers(2, 6), t=st.integers(0, 5), padded=st.booleans(),
       seed=seeds)
def test_causal_mask_hides_the_future(H, T, t, padded, seed):
    t = t % (T - 1)  # steps t+1.. are the future of step t
    rng = np.random.default_rng(seed)
    mha = make_mha(rng, 2 * H, H)
    x = rng.standard_normal((2, T, 2 * H))
    kw = {"attn_mask": causal_mask(T)}
    if padded:
        kw["key_padding_mask"] = np.zeros((2, T), dtype=bool)
        kw["key_padding_mask"][1, -1] = True
    y = mha(x, **kw)
    x2 = x.copy()
    x2[:, t + 1:] += rng.standard_normal(x2[:, t + 1:].shape)
    y2 = mha(x2, **kw)
    np.testing.assert_array_equal(y2[:, :t + 1], y[:, :t + 1])
    assert not np.allclose(y2[:, t + 1:], y[:, t + 1:])


@given(E=st.integers(1, 6), B=st.integers(1, 3), Tq=st.integers(1, 4), Tk=st.integers(1, 5),
       seed=seeds)
def test_one_head_identity_projections_is_scaled_dot_attention(E, B, Tq, Tk, seed):
    rng = np.random.default_rng(seed)
    mha = MultiHeadAttention(E, 1, dtype=np.float64, rng=rng)
    mha.in_proj.W.data = np.concatenate([np.eye(E)] * 3, axis=1)
    mha.out_proj.W.data = np.eye(E)
    assert not mha.in_proj.b.data.any() and not mha.out_proj.b.data.any()
    attention = Attention(ScaledDotScore())
    q, k, v = (rng.standard_normal((B, T, E)) for T in (Tq, Tk, Tk))
    mask = rng.random((B, Tq, Tk)) < 0.4
    mask[rng.integers(B), rng.integers(Tq)] = True  # a fully blocked row too
    y, cache = mha.forward(q, k, v, attn_mask=mask)
    c, att_cache = attention.forward(q, k, v, mask=mask)
    np.testing.assert_allclose(y, c, rtol=1e-13, atol=1e-15)
    G = rng.standard_normal(y.shape)
    for ours, theirs in zip(mha.backward(G, cache), attention.backward(G, att_cache)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_heads_are_independent_attentions_over_column_blocks():
    rng = np.random.default_rng(2)
    E, H, B, Tq, Tk = 6, 3, 2, 3, 4
    d_k = E // H
    mha = make_mha(rng, E, H, kdim=4, vdim=5)
    q, k, v = (rng.standard_normal(s) for s in ((B, Tq, E), (B, Tk, 4), (B, Tk, 5)))
    Q = q @ mha.q_proj.W.data + mha.q_proj.b.data
    K = k @ mha.k_proj.W.data + mha.k_proj.b.data
    V = v @ mha.v_proj.W.data + mha.v_proj.b.data
    heads = [Attention(ScaledDotScore())(Q[..., h * d_k:(h + 1) * d_k],
                                         K[..., h * d_k:(h + 1) * d_k],
                                         V[..., h * d_k:(h + 1) * d_k]) for h in range(H)]
    expected = np.concatenate(heads, axis=-1) @ mha.out_proj.W.data + mha.out_proj.b.data
    np.testing.assert_allclose(mha(q, k, v), expected, rtol=1e-12)


def test_self_attention_forms_agree():
    # forward(x) -> one gradient; forward(x, x, x) -> three, summing to it.
    rng = np.random.default_rng(3)
    mha = make_mha(rng, 4, 2)
    x = rng.standard_normal((2, 3, 4))
    y1, c1 = mha.forward(x, attn_mask=causal_mask(3))
    y3, c3 = mha.forward(x, x, x, attn_mask=causal_mask(3))
    y_cross, c_cross = mha.forward(x, x.copy(), x.copy(), attn_mask=causal_mask(3))
    np.testing.assert_array_equal(y1, y3)
    np.testing.assert_allclose(y_cross, y1, rtol=1e-13)
    G = rng.standard_normal(y1.shape)
    dx = mha.backward(G, c1)
    assert isinstance(dx, np.ndarray)
    dq, dk, dv = mha.backward(G, c3)
    np.testing.assert_allclose(dq + dk + dv, dx, rtol=1e-12)
    for a, b in zip(mha.backward(G, c_cross), (dq, dk, dv)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_need_weights_with_no_weight_gradient():
    rng = np.random.default_rng(4)
    mha = make_mha(rng, 4, 2)
    x = rng.standard_normal((2, 3, 4))
    (y, w), cache = mha.forward(x, need_weights=True)
    _, plain = mha.forward(x)
    G = rng.standard_normal(y.shape)
    mha.zero_grad()
    dx = mha.backward((G, None), cache)
    grads = [p.grad.copy() for p in mha.parameters()]
    mha.zero_grad()
    np.testing.assert_array_equal(mha.backward(G, plain), dx)
    for g, p in zip(grads, mha.parameters()):
        np.testing.assert_array_equal(g, p.grad)


def test_fully_blocked_rows_give_no_nan_and_no_gradient():
    rng = np.random.default_rng(5)
    mha = make_mha(rng, 4, 2, dropout=0.3)
    q, k, v = (rng.standard_normal(s) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 4)))
    kpm = np.zeros((2, 5), dtype=bool)
    kpm[1] = True  # sequence 1 has only padding
    attn = np.zeros((3, 5), dtype=bool)
    attn[0] = True  # query 0 may look at nothing
    (y, w), cache = mha.forward(q, k, v, key_padding_mask=kpm, attn_mask=attn, need_weights=True)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(w))
    np.testing.assert_array_equal(y[1], np.broadcast_to(mha.out_proj.b.data, (3, 4)))
    np.testing.assert_array_equal(y[0, 0], mha.out_proj.b.data)
    mha.zero_grad()
    dq, dk, dv = mha.backward((rng.standard_normal(y.shape), rng.standard_normal(w.shape)),
                              cache)
    assert not dq[1].any() and not dq[0, 0].any() and not dk[1].any() and not dv[1].any()
    assert all(np.all(np.isfinite(p.grad)) for p in mha.parameters())


def test_dropout_mask_lives_in_the_cache():
    # Classic bug: a mask kept on self is overwritten by the second call.
    rng = np.random.default_rng(6)
    mha = make_mha(rng, 4, 2, dropout=0.5)
    x = rng.standard_normal((2, 6, 4))
    y1, c1 = mha.forward(x)
    y2, c2 = mha.forward(x)
    assert not np.array_equal(c1.dropout.mask, c2.dropout.mask)
    assert not np.allclose(y1, y2)
    G = rng.standard_normal(y1.shape)
    mha.zero_grad()
    d1 = mha.backward(G, c1)
    mha.backward(G, c2)
    mha.zero_grad()
    np.testing.assert_array_equal(mha.backward(G, c1), d1)
    # eval mode: no dropout, and the weights returned are alpha (before dropout)
    mha.eval()
    (y_eval, w), c_eval = mha.forward(x, need_weights=True, average_attn_weights=False)
    assert c_eval.dropout.mask is None and c_eval.alpha_drop is c_eval.alpha
    mha.train()
    (_, w_train), c_train = mha.forward(x, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(w_train, w, rtol=1e-14)
    np.testing.assert_allclose(w_train.sum(-1), 1.0, rtol=1e-12)


def test_seeded_dropout_reproduces():
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    a = MultiHeadAttention(4, 2, dropout=0.3, rng=7)
    b = MultiHeadAttention(4, 2, dropout=0.3, rng=7)
    np.testing.assert_array_equal(a(x), b(x))


# -- incremental decoding -------------------------------------------------------------------

@given(H=st.integers(1, 3), d_k=st.integers(1, 3), T=st.integers(1, 7),
       chunks=st.lists(st.integers(1, 3), min_size=1, max_size=7), capacity=st.integers(1, 4),
       left_pad=st.integers(0, 2), bias=st.booleans(), seed=seeds)
def test_incremental_decoding_equals_full_causal(H, d_k, T, chunks, capacity, left_pad, bias,
                                                 seed):
    rng = np.random.default_rng(seed)
    E, B = H * d_k, 2
    mha = make_mha(rng, E, H, bias=bias, dropout=0.4)  # decode never drops
    x = rng.standard_normal((B, T, E))
    kpm = np.zeros((B, T), dtype=bool)
    kpm[1, :min(left_pad, T - 1)] = True  # sequence 1 is left-padded
    full = mha.eval()(x, attn_mask=causal_mask(T), key_padding_mask=kpm)
    mha.train()
    kv = mha.new_kv_cache(B, capacity=capacity)
    outs, t = [], 0
    for n in chunks * T:
        if t == T:
            break
        n = min(n, T - t)
        outs.append(mha.decode(x[:, t:t + n], kv, key_padding_mask=kpm[:, :t + n]))
        t += n
    assert kv.length == T
    inc = np.concatenate(outs, axis=1)
    assert np.abs(inc - full).max() <= 1e-10 * np.abs(full).max()


@given(H=st.integers(1, 2), Tq=st.integers(1, 4), Tk=st.integers(1, 5),
       dims=st.sampled_from([(None, None), (3, 5)]), seed=seeds)
def test_incremental_cross_attention_equals_full(H, Tq, Tk, dims, seed):
    rng = np.random.default_rng(seed)
    kdim, vdim = dims
    mha = make_mha(rng, 2 * H, H, kdim=kdim, vdim=vdim).eval()
    (x, key, value), _ = make_inputs(rng, "cross", 2, Tq, Tk, 2 * H, kdim, vdim)
    kpm = np.zeros((2, Tk), dtype=bool)
    kpm[0, Tk // 2 + 1:] = True
    full = mha(x, key, value, key_padding_mask=kpm)
    memory = mha.cache_memory(key, value)
    assert memory.static and memory.length == Tk
    steps = [mha.decode(x[:, t:t + 1], memory, key_padding_mask=kpm) for t in range(Tq)]
    inc = np.concatenate(steps, axis=1)
    assert np.abs(inc - full).max() <= 1e-10 * np.abs(full).max()
    assert memory.length == Tk  # a memory is never appended to


def test_decode_float32_and_cache_growth():
    rng = np.random.default_rng(8)
    mha = MultiHeadAttention(8, 2, rng=rng)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    kv = mha.new_kv_cache(3, capacity=1)
    ys = [mha.decode(x[:, t:t + 1], kv) for t in range(5)]
    assert all(y.dtype == np.float32 for y in ys) and kv.k.dtype == np.float32
    assert kv.k.shape == (3, 2, 5, 4) and kv._k.shape[2] >= 5
    np.testing.assert_allclose(np.concatenate(ys, 1), mha(x, attn_mask=causal_mask(5)),
                               rtol=1e-4, atol=1e-5)


def test_decode_errors():
    mha = MultiHeadAttention(8, 2, rng=0)
    x = np.zeros((2, 1, 8), np.float32)
    with pytest.raises(TypeError, match="kv_cache must be a KVCache"):
        mha.decode(x, None)
    with pytest.raises(ValueError, match="kv_cache has batch_size=3"):
        mha.decode(x, mha.new_kv_cache(3))
    with pytest.raises(TypeError, match="kv_cache has dtype float64"):
        mha.decode(x, KVCache(2, 2, 4, dtype=np.float64))
    with pytest.raises(ValueError, match="MultiHeadAttention: x has last dim 7, "
                                         "expected d_model=8"):
        mha.decode(x[..., :7], mha.new_kv_cache(2))
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \(2, 3\), expected"):
        mha.decode(x, mha.new_kv_cache(2), key_padding_mask=np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="needs kdim == vdim == d_model"):
        MultiHeadAttention(8, 2, kdim=4, rng=0).new_kv_cache(2)
    memory = mha.cache_memory(np.zeros((2, 3, 8), np.float32), np.zeros((2, 3, 8), np.float32))
    with pytest.raises(ValueError, match="static"):
        memory.append(np.zeros((2, 2, 1, 4), np.float32), np.zeros((2, 2, 1, 4), np.float32))


# -- dtype, errors, names ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weights", [None, "mean", "heads"])
def test_float32_preserved(mode, weights):
    rng = np.random.default_rng(9)
    kdim, vdim = (3, 5) if mode == "kdim_vdim" else (None, None)
    mha = MultiHeadAttention(6, 3, dropout=0.2, kdim=kdim, vdim=vdim, rng=rng)
    args, Tk = make_inputs(rng, mode, 2, 3, 4, 6, kdim, vdim, dtype=np.float32)
    kw = make_masks(rng, "both", 2, 3, Tk, 0.3)
    if weights:
        kw.update(need_weights=True, average_attn_weights=weights == "mean")
    check_dtype_preserved(mha, *args, **kw)


def test_errors():
    f32 = np.float32
    mha = MultiHeadAttention(64, 4, rng=0)
    x = np.zeros((2, 3, 64), f32)
    with pytest.raises(ValueError, match="MultiHeadAttention: query has last dim 63, "
                                         "expected d_model=64"):
        mha(np.zeros((2, 3, 63), f32))
    with pytest.raises(ValueError, match="MultiHeadAttention: d_model=64 is not divisible "
                                         "by n_heads=5"):
        MultiHeadAttention(64, 5)
    with pytest.raises(ValueError, match="MultiHeadAttention: key has last dim 32, "
                                         "expected kdim=64"):
        mha(x, np.zeros((2, 4, 32), f32), np.zeros((2, 4, 64), f32))
    with pytest.raises(ValueError, match="MultiHeadAttention: value has last dim 16, "
                                         "expected vdim=8"):
        MultiHeadAttention(64, 4, kdim=32, vdim=8, rng=0)(
            x, np.zeros((2, 4, 32), f32), np.zeros((2, 4, 16), f32))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: value has shape \(2, 5, 64\)"):
        mha(x, np.zeros((2, 4, 64), f32), np.zeros((2, 5, 64), f32))
    with pytest.raises(ValueError, match="MultiHeadAttention: key has batch size 1 but "
                                         "query has 2"):
        mha(x, np.zeros((1, 4, 64), f32), np.zeros((1, 4, 64), f32))
    with pytest.raises(ValueError, match="pass both key and value"):
        mha(x, x)
    with pytest.raises(ValueError, match="self-attention .* needs kdim == vdim == d_model"):
        MultiHeadAttention(64, 4, kdim=32, rng=0)(x)
    with pytest.raises(TypeError, match="MultiHeadAttention: query has dtype float64 but the "
                                        "layer computes in float32"):
        mha(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: key_padding_mask has shape "
                                         r"\(2, 4\), expected \(B, Tk\) = \(2, 3\)"):
        mha(x, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: attn_mask has shape \(8, 3, 3\), "
                                         r"expected \(Tq, Tk\) = \(3, 3\) or \(B, Tq, Tk\)"):
        mha(x, attn_mask=np.zeros((8, 3, 3), bool))
    with pytest.raises(TypeError, match="MultiHeadAttention: attn_mask must be boolean"):
        mha(x, attn_mask=np.zeros((3, 3), f32))
    with pytest.raises(TypeError, match="MultiHeadAttention: key_padding_mask must be a boolean "
                                        "numpy array, got list"):
        mha(x, key_padding_mask=[[False] * 3] * 2)
    bad = x.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="MultiHeadAttention: query contains 1 NaN/inf"):
        mha(bad)
    with pytest.raises(ValueError, match="MultiHeadAttention: value contains 1 NaN/inf"):
        mha(x, x.copy(), bad)
    with pytest.raises(ValueError, match="MultiHeadAttention: x contains 1 NaN/inf"):
        mha.decode(bad, mha.new_kv_cache(2))
    with pytest.raises(ValueError, match="MultiHeadAttention: dropout must be in"):
        MultiHeadAttention(64, 4, dropout=1.5)
    with pytest.raises(ValueError, match="MultiHeadAttention: key has no positions"):
        mha(x, np.zeros((2, 0, 64), f32), np.zeros((2, 0, 64), f32))
    with pytest.raises(ValueError, match="causal_mask: T must be >= 1"):
        causal_mask(0)


def test_causal_mask():
    np.testing.assert_array_equal(causal_mask(3), [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert causal_mask(4).dtype == np.bool_


def test_parameter_names_and_state_dict():
    fused = MultiHeadAttention(4, 2, rng=0)
    assert [n for n, _ in fused.named_parameters()] == [
        "in_proj.W", "in_proj.b", "out_proj.W", "out_proj.b"]
    assert fused.in_proj.W.shape == (4, 12)
    separate = MultiHeadAttention(4, 2, kdim=3, vdim=5, bias=False, rng=0)
    assert [n for n, _ in separate.named_parameters()] == [
        "q_proj.W", "k_proj.W", "v_proj.W", "out_proj.W"]
    assert separate.k_proj.W.shape == (3, 4) and separate.v_proj.W.shape == (5, 4)
    other = MultiHeadAttention(4, 2, rng=1)
    other.load_state_dict(fused.state_dict())
    x = np.random.default_rng(0).standard_normal((1, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(fused(x), other(x))
    assert fused.astype(np.float64)(x.astype(np.float64)).dtype == np.float64


@pytest.mark.parametrize("mode", ["self", "cross"])
def test_the_cache_is_the_trace_of_the_equations(mode):
    """The cache names every symbol of the docstring: q_s, k, v, e, alpha,
    alpha_drop, context, C; e reaches alpha through the masked softmax.  The
    fast kernels (float32) keep no e; the reference ones (and trace) do."""
    from numtransformer.functional import softmax, split_heads
    from numtransformer.kernels import use_kernels
    from numtransformer.trace import reference_forward, trace_lines

    rng = np.random.default_rng(3)
    B, T, E, H = 2, 5, 6, 3
    mha = make_mha(rng, E, H)
    args, Tk = make_inputs(rng, mode, B, T, 4, E)
    kpm = np.zeros((B, Tk), bool)
    kpm[1, -1] = True
    y, c = mha.forward(*args, key_padding_mask=kpm)
    np.testing.assert_allclose(c.e, c.q_s @ c.k.swapaxes(-1, -2), rtol=1e-13)
    np.testing.assert_array_equal(c.alpha, softmax(c.e, -1, kpm[:, None, None, :]))
    assert c.alpha_drop is c.alpha and c.core.context is c.context
    np.testing.assert_array_equal(split_heads(c.C, H), c.context)
    np.testing.assert_array_equal(c.out_proj.x, c.C.reshape(B * T, E))

    mha32 = mha.astype(np.float32)
    args32 = tuple(a.astype(np.float32) for a in args)
    if mode == "self":
        args32 = (args32[0],)
    y32, c32 = mha32.forward(*args32, key_padding_mask=kpm)
    assert c32.e is None  # the fast kernel normalised the scores in place
    with use_kernels("reference"):
        y_ref, c_ref = mha32.forward(*args32, key_padding_mask=kpm)
    assert c_ref.e.dtype == np.float32
    np.testing.assert_allclose(y32, y_ref, rtol=1e-5, atol=1e-6)
    lines = trace_lines(reference_forward(mha32, *args32, key_padding_mask=kpm)[1])
    names = [line.split()[0] for line in lines]
    for name in ("q_s", "k", "v", "e", "alpha", "alpha_drop", "context", "C", "out_proj.x"):
        assert name in names, name
