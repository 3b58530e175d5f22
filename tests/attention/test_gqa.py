"""Grouped-query and multi-query attention: MultiHeadAttention(n_kv_heads=...).

Query head h reads key/value head h // (n_heads / n_kv_heads) (Hugging Face's
repeat_kv); the backward sums each group's gradients; the KV cache holds
n_kv_heads heads; n_kv_heads = n_heads is today's layer, bit for bit."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer import functional as F
from numtransformer.attention import KVCache, MultiHeadAttention, causal_mask
from tests.helpers import check_dtype_preserved, seeds

from .test_multihead import MASKS, make_inputs, make_masks

# (n_heads, n_kv_heads): multi-query (1), grouped (2) and plain (n_heads)
HEADS = [(2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (3, 1), (6, 2)]


def make_gqa(rng, E, H, n_kv, *, kdim=None, vdim=None, dtype=np.float64, **kw):
    mha = MultiHeadAttention(E, H, kdim=kdim, vdim=vdim, dtype=dtype, rng=rng, n_kv_heads=n_kv,
                             **kw)
    for p in mha.parameters():
        p.data = (0.5 * rng.standard_normal(p.shape)).astype(dtype)
    return mha


def expanded(gqa: MultiHeadAttention) -> MultiHeadAttention:
    """The plain MHA whose K and V projections are gqa's, each kv head's columns
    repeated for the g query heads that read it: the repeat_kv semantics."""
    H, n_kv, d = gqa.n_heads, gqa.n_kv_heads, gqa.d_k
    g = H // n_kv
    mha = MultiHeadAttention(gqa.d_model, H, bias=gqa.out_proj.b is not None, kdim=gqa.kdim,
                             vdim=gqa.vdim, dtype=gqa.dtype, rng=0)
    cols = np.concatenate([np.arange((h // g) * d, (h // g + 1) * d) for h in range(H)])
    for (W, b, _, _), (W2, b2, _, _), rep in zip(gqa._in_blocks(), mha._in_blocks(),
                                                 (False, True, True)):
        W2[...] = W[:, cols] if rep else W
        if b is not None:
            b2[...] = b[cols] if rep else b
    mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    return mha, cols


@pytest.mark.parametrize("H,n_kv", HEADS)
@pytest.mark.parametrize("mode", ["self", "cross", "kdim_vdim"])
def test_gqa_is_mha_with_repeated_kv_heads(H, n_kv, mode):
    """Outputs equal the expanded MHA's; the gradient of each shared kv column is
    the sum of the gradients of its g copies; input gradients equal."""
    rng = np.random.default_rng(H * 10 + n_kv)
    E = 2 * H
    kdim, vdim = (3, 5) if mode == "kdim_vdim" else (None, None)
    gqa = make_gqa(rng, E, H, n_kv, kdim=kdim, vdim=vdim)
    mha, cols = expanded(gqa)
    args, Tk = make_inputs(rng, "self" if mode == "self" else "cross", 2, 4, 3, E, kdim, vdim)
    kw = make_masks(rng, "both", 2, 4, Tk, 0.3)
    (y, w), cache = gqa.forward(*args, need_weights=True, **kw)
    (y2, w2), cache2 = mha.forward(*args, need_weights=True, **kw)
    np.testing.assert_allclose(y, y2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(w, w2, rtol=1e-12, atol=1e-14)
    assert cache.k.shape[1] == n_kv and cache.v.shape[1] == n_kv  # no copies kept
    G, Gw = rng.standard_normal(y.shape), rng.standard_normal(w.shape)
    gqa.zero_grad()
    mha.zero_grad()
    dx = gqa.backward((G, Gw), cache)
    dx2 = mha.backward((G, Gw), cache2)
    for a, b in zip(dx if isinstance(dx, tuple) else (dx,), dx2 if isinstance(dx2, tuple)
                    else (dx2,)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    E_kv = n_kv * gqa.d_k
    for i, ((_, _, dW, db), (_, _, dW2, db2)) in enumerate(zip(gqa._in_blocks(),
                                                               mha._in_blocks())):
        if i == 0:  # queries: not shared
            np.testing.assert_allclose(dW, dW2, rtol=1e-11, atol=1e-13)
            continue
        summed = np.zeros((dW2.shape[0], E_kv))
        np.add.at(summed.T, cols, dW2.T)  # column c of gqa collects its copies' columns
        np.testing.assert_allclose(dW, summed, rtol=1e-11, atol=1e-13)
        if db is not None:
            np.testing.assert_allclose(db, np.bincount(cols, db2, minlength=E_kv),
                                       rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("mode", ["self", "same_array", "cross", "kdim_vdim"])
@given(heads=st.sampled_from([(2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (3, 1)]),
       d_k=st.integers(1, 2), Tq=st.integers(1, 3), Tk=st.integers(1, 4),
       masks=st.sampled_from(MASKS), p_block=st.sampled_from([0.3, 1.0]),
       dropout=st.sampled_from([0.0, 0.3]), weights=st.sampled_from([None, "mean", "heads"]),
       bias=st.booleans(), seed=seeds)
def test_gradcheck(mode, heads, d_k, Tq, Tk, masks, p_block, dropout, weights, bias, seed):
    H, n_kv = heads
    rng = np.random.default_rng(seed)
    E = H * d_k
    kdim, vdim = (3, 2) if mode == "kdim_vdim" else (None, None)
    mha = make_gqa(rng, E, H, n_kv, kdim=kdim, vdim=vdim, dropout=dropout, bias=bias)
    args, Tk = make_inputs(rng, mode, 2, Tq, Tk, E, kdim, vdim)
    kw = make_masks(rng, masks, 2, Tq, Tk, p_block)
    if weights:
        kw.update(need_weights=True, average_attn_weights=weights == "mean")
    gradcheck(mha, *args, seed=seed, max_entries=24, **kw).assert_passed()


@given(heads=st.sampled_from(HEADS), d_k=st.integers(1, 3), T=st.integers(1, 7),
       chunks=st.lists(st.integers(1, 3), min_size=1, max_size=7), capacity=st.integers(1, 4),
       left_pad=st.integers(0, 2), seed=seeds)
def test_incremental_decoding_with_the_gqa_cache(heads, d_k, T, chunks, capacity, left_pad,
                                                 seed):
    H, n_kv = heads
    rng = np.random.default_rng(seed)
    E, B = H * d_k, 2
    mha = make_gqa(rng, E, H, n_kv)
    x = rng.standard_normal((B, T, E))
    kpm = np.zeros((B, T), dtype=bool)
    kpm[1, :min(left_pad, T - 1)] = True
    full = mha(x, attn_mask=causal_mask(T), key_padding_mask=kpm)
    kv = mha.new_kv_cache(B, capacity=capacity)
    assert kv.n_heads == n_kv
    outs, t = [], 0
    for n in chunks * T:
        if t == T:
            break
        n = min(n, T - t)
        outs.append(mha.decode(x[:, t:t + n], kv, key_padding_mask=kpm[:, :t + n]))
        t += n
    assert kv.k.shape == (B, n_kv, T, d_k)  # n_kv heads, not n_heads copies
    assert np.abs(np.concatenate(outs, 1) - full).max() <= 1e-12 * np.abs(full).max()


@pytest.mark.parametrize("H,n_kv", [(4, 1), (4, 2), (6, 3)])
def test_incremental_cross_attention_with_gqa(H, n_kv):
    rng = np.random.default_rng(H + n_kv)
    mha = make_gqa(rng, 2 * H, H, n_kv, kdim=3, vdim=5)
    (x, key, value), _ = make_inputs(rng, "cross", 2, 3, 4, 2 * H, 3, 5)
    memory = mha.cache_memory(key, value)
    assert memory.k.shape == (2, n_kv, 4, 2)
    steps = np.concatenate([mha.decode(x[:, t:t + 1], memory) for t in range(3)], 1)
    np.testing.assert_allclose(steps, mha(x, key, value), rtol=1e-12, atol=1e-14)


def test_n_kv_heads_equal_n_heads_is_todays_layer_bit_for_bit():
    rng = np.random.default_rng(0)
    for kw in ({}, {"kdim": 3, "vdim": 5}, {"bias": False}):
        old = MultiHeadAttention(8, 4, rng=7, **kw)
        new = MultiHeadAttention(8, 4, rng=7, n_kv_heads=4, **kw)
        old_sd, new_sd = old.state_dict(), new.state_dict()
        assert list(old_sd) == list(new_sd)
        for key in old_sd:
            np.testing.assert_array_equal(old_sd[key], new_sd[key])
        assert repr(old) == repr(new)
        x = rng.standard_normal((3, 5, 8)).astype(np.float32)
        args = (x,) if "kdim" not in kw else (x, rng.standard_normal((3, 4, 3)).astype(
            np.float32), rng.standard_normal((3, 4, 5)).astype(np.float32))
        for dtype in (np.float32, np.float64):
            a, b = old.astype(dtype), new.astype(dtype)
            xs = tuple(arg.astype(dtype) for arg in args)
            y1, c1 = a.forward(*xs, attn_mask=causal_mask(5) if len(xs) == 1 else None)
            y2, c2 = b.forward(*xs, attn_mask=causal_mask(5) if len(xs) == 1 else None)
            np.testing.assert_array_equal(y1, y2)
            G = rng.standard_normal(y1.shape).astype(dtype)
            a.zero_grad()
            b.zero_grad()
            d1, d2 = a.backward(G, c1), b.backward(G, c2)
            for g1, g2 in zip(d1 if isinstance(d1, tuple) else (d1,),
                              d2 if isinstance(d2, tuple) else (d2,)):
                np.testing.assert_array_equal(g1, g2)
            for p1, p2 in zip(a.parameters(), b.parameters()):
                np.testing.assert_array_equal(p1.grad, p2.grad)


def test_parameter_shapes():
    fused = MultiHeadAttention(8, 4, n_kv_heads=2, rng=0)
    assert fused.in_proj.W.shape == (8, 8 + 2 * 4) and fused.in_proj.b.shape == (16,)
    mqa = MultiHeadAttention(8, 4, n_kv_heads=1, rng=0)
    assert mqa.in_proj.W.shape == (8, 12)
    assert mqa.num_parameters() < MultiHeadAttention(8, 4, rng=0).num_parameters()
    separate = MultiHeadAttention(8, 4, kdim=3, vdim=5, n_kv_heads=2, rng=0)
    assert separate.q_proj.W.shape == (8, 8)
    assert separate.k_proj.W.shape == (3, 4) and separate.v_proj.W.shape == (5, 4)
    assert "n_kv_heads=2" in repr(fused)


@pytest.mark.parametrize("mode", ["self", "cross", "kdim_vdim"])
@pytest.mark.parametrize("n_kv", [1, 2])
def test_float32_preserved(mode, n_kv):
    rng = np.random.default_rng(9)
    kdim, vdim = (3, 5) if mode == "kdim_vdim" else (None, None)
    mha = MultiHeadAttention(8, 4, dropout=0.2, kdim=kdim, vdim=vdim, rng=rng, n_kv_heads=n_kv)
    args, Tk = make_inputs(rng, mode, 2, 3, 4, 8, kdim, vdim, dtype=np.float32)
    kw = make_masks(rng, "both", 2, 3, Tk, 0.3)
    check_dtype_preserved(mha, *args, need_weights=True, **kw)


def test_core_sums_the_groups_gradients():
    """The reference core's dk, dv are the sums over each group of the gradients of
    the repeated keys and values (repeat_kv's backward)."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 6, 3, 4))
    k, v = rng.standard_normal((2, 2, 2, 5, 4))
    out, cache = F.scaled_dot_product_attention_forward(q, k, v)
    out2, cache2 = F.scaled_dot_product_attention_forward(q, F.repeat_kv(k, 3),
                                                          F.repeat_kv(v, 3))
    np.testing.assert_allclose(out, out2, rtol=1e-14)
    G = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(G, cache)
    dq2, dk2, dv2 = F.scaled_dot_product_attention_backward(G, cache2)
    np.testing.assert_allclose(dq, dq2, rtol=1e-14)
    np.testing.assert_allclose(dk, dk2.reshape(2, 2, 3, 5, 4).sum(2), rtol=1e-13)
    np.testing.assert_allclose(dv, dv2.reshape(2, 2, 3, 5, 4).sum(2), rtol=1e-13)
    assert F.repeat_kv(k, 1) is k and F.sum_kv_groups(dk, 2) is dk


def test_errors():
    with pytest.raises(ValueError, match="MultiHeadAttention: n_heads=4 is not divisible by "
                                         "n_kv_heads=3"):
        MultiHeadAttention(8, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="MultiHeadAttention: n_kv_heads must be >= 1, got 0"):
        MultiHeadAttention(8, 4, n_kv_heads=0)
    with pytest.raises(TypeError, match="MultiHeadAttention: n_kv_heads must be an int"):
        MultiHeadAttention(8, 4, n_kv_heads=2.0)
    mha = MultiHeadAttention(8, 4, n_kv_heads=2, rng=0)
    x = np.zeros((2, 1, 8), np.float32)
    with pytest.raises(ValueError, match=r"kv_cache has batch_size=2, n_heads=4, d_k=2; "
                                         r"expected 2, 2, 2"):
        mha.decode(x, KVCache(2, 4, 2))


@pytest.mark.parametrize("options, named", [
    (dict(n_kv_heads=1), "n_kv_heads < n_heads"),
    (dict(rotary={"layout": "interleaved"}), "rotary"),
    (dict(rotary=True, window=3), "rotary, window"), (dict(window=3), "window"),
    (dict(alibi=True), "alibi")])
def test_weight_exchange_refuses_what_torch_mha_cannot_hold(options, named):
    from numtransformer.interop.torch import parameter_map

    mha = MultiHeadAttention(8, 4, dtype=np.float64, rng=0, **options)
    with pytest.raises(TypeError, match=f"interop: this MultiHeadAttention uses {named}"):
        parameter_map(mha)


def test_rotate_half_attention_maps_onto_hugging_face_llama_attention():
    """With rotary embeddings in Hugging Face's layout (and grouped-query heads), the
    counterpart is transformers' LlamaAttention (interop/llama.py), not nn.MultiheadAttention."""
    from numtransformer.interop.torch import parameter_map

    mha = MultiHeadAttention(8, 4, bias=False, dtype=np.float64, rng=0, n_kv_heads=2,
                             rotary=True)
    names = {m.torch for m in parameter_map(mha)}
    assert names == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}
