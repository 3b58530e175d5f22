"""Rotary position embeddings: the kernels against the paper's matrix form and
Hugging Face's rotate_half, the two layouts and their permutation, the
backward as the transposed rotation, the relative-position property, offsets,
the module and MultiHeadAttention(rotary=...)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer import functional as F
from numtransformer.attention import MultiHeadAttention, RotaryEmbedding, causal_mask
from tests.helpers import check_dtype_preserved, seeds

layouts = st.sampled_from(["half", "interleaved"])
half_dims = st.integers(1, 4)  # d = 2 * half_dim
bases = st.sampled_from([10000.0, 500000.0, 10.0])


def paper_rotation(m, d, base):
    """The paper's R(m) (RoFormer eq. 15/34): block diagonal, 2x2 rotations on
    coordinates (2i, 2i+1) by m theta_i; y = R x."""
    R = np.zeros((d, d))
    for i in range(d // 2):
        a = m * base ** (-2 * i / d)
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return R


def hf_rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 5), h=half_dims,
       offset=st.integers(0, 50), base=bases, seed=seeds)
def test_interleaved_is_the_papers_block_rotation(B, H, T, h, offset, base, seed):
    d = 2 * h
    x = np.random.default_rng(seed).standard_normal((B, H, T, d))
    y, _ = F.rope_forward(x, offset + np.arange(T), base, "interleaved")
    for t in range(T):
        R = paper_rotation(offset + t, d, base)
        np.testing.assert_allclose(y[:, :, t], x[:, :, t] @ R.T, rtol=1e-12, atol=1e-12)


@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 5), h=half_dims,
       offset=st.integers(0, 50), base=bases, seed=seeds)
def test_half_is_hugging_face_rotate_half(B, H, T, h, offset, base, seed):
    """Hugging Face Llama: q * cos + rotate_half(q) * sin, cos = cat(freqs, freqs)."""
    d = 2 * h
    x = np.random.default_rng(seed).standard_normal((B, H, T, d))
    inv_freq = 1.0 / (base ** (np.arange(0, d, 2) / d))
    freqs = (offset + np.arange(T))[:, None] * inv_freq
    emb = np.concatenate([freqs, freqs], axis=-1)
    expected = x * np.cos(emb) + hf_rotate_half(x) * np.sin(emb)
    y, _ = F.rope_forward(x, offset + np.arange(T), base, "half")
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-14)


@given(T=st.integers(1, 5), h=half_dims, offset=st.integers(0, 20), seed=seeds)
def test_the_layouts_differ_by_the_permutation(T, h, offset, seed):
    d = 2 * h
    P = F.rope_permutation(d)
    assert sorted(P) == list(range(d))
    x = np.random.default_rng(seed).standard_normal((2, 3, T, d))
    pos = offset + np.arange(T)
    half, _ = F.rope_forward(x[..., P], pos, layout="half")
    inter, _ = F.rope_forward(x, pos, layout="interleaved")
    np.testing.assert_array_equal(half, inter[..., P])
    # and back: the inverse permutation
    Pinv = np.argsort(P)
    np.testing.assert_array_equal(half[..., Pinv], inter)


@given(h=half_dims, H=st.integers(1, 2), T=st.integers(1, 4), seed=seeds)
def test_permuting_wq_wk_columns_moves_a_model_between_layouts(h, H, T, seed):
    """An interleaved-layout layer equals a half-layout layer whose W_q, W_k (and
    b_q, b_k) columns are permuted per head by P: the Llama conversion's permutation."""
    rng = np.random.default_rng(seed)
    d = 2 * h
    E = H * d
    inter = MultiHeadAttention(E, H, rotary={"layout": "interleaved"}, dtype=np.float64, rng=rng)
    for p in inter.parameters():
        p.data = 0.5 * rng.standard_normal(p.shape)
    half = MultiHeadAttention(E, H, rotary={"layout": "half"}, dtype=np.float64, rng=rng)
    P = F.rope_permutation(d)
    cols = np.concatenate([np.concatenate([hd * d + P for hd in range(H)]) + blk * E
                           for blk in range(2)] + [np.arange(2 * E, 3 * E)])
    half.in_proj.W.data = inter.in_proj.W.data[:, cols]
    half.in_proj.b.data = inter.in_proj.b.data[cols]
    half.out_proj.W.data, half.out_proj.b.data = inter.out_proj.W.data, inter.out_proj.b.data
    x = rng.standard_normal((2, T, E))
    np.testing.assert_allclose(half(x, attn_mask=causal_mask(T)),
                               inter(x, attn_mask=causal_mask(T)), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@given(h=half_dims, m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(-50, 500),
       base=bases, seed=seeds)
def test_scores_depend_only_on_the_relative_position(layout, h, m, n, shift, base, seed):
    """q_m . k_n = q^T R(n - m) k: shifting both positions changes nothing."""
    d = 2 * h
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, 1, 1, d))
    shift = max(shift, -min(m, n))  # positions stay >= 0

    def score(m, n):
        qm, _ = F.rope_forward(q, np.array([m]), base, layout)
        kn, _ = F.rope_forward(k, np.array([n]), base, layout)
        return float(np.sum(qm * kn))

    scale = np.linalg.norm(q) * np.linalg.norm(k)
    assert abs(score(m + shift, n + shift) - score(m, n)) <= 1e-12 * scale * max(1, m + n + shift)
    # and at distance 0 the rotation cancels: q_m . k_m = q . k
    assert abs(score(m, m) - float(np.sum(q * k))) <= 1e-12 * scale * max(1, m)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@given(B=st.integers(1, 2), T=st.integers(1, 5), h=half_dims, offset=st.integers(0, 30),
       per_sequence=st.booleans(), seed=seeds)
def test_backward_is_the_transposed_rotation(layout, B, T, h, offset, per_sequence, seed):
    """<R x, dy> = <x, R^T dy> (the adjoint), and R^T R = I (orthogonal)."""
    d = 2 * h
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((2, B, 2, T, d))
    pos = offset + np.arange(T)
    if per_sequence:  # (B, T) positions: each sequence its own offset
        pos = pos[None] + rng.integers(0, 5, (B, 1))
    y, cache = F.rope_forward(x, pos, layout=layout)
    dx = F.rope_backward(dy, cache)
    assert abs(np.sum(y * dy) - np.sum(x * dx)) <= 1e-12 * np.abs(x).sum() * np.abs(dy).max()
    np.testing.assert_allclose(F.rope_backward(y, cache), x, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1),
                               rtol=1e-12)


@given(T=st.integers(1, 6), split=st.integers(0, 6), h=half_dims, layout=layouts, seed=seeds)
def test_offsets_continue_the_sequence(T, split, h, layout, seed):
    """Rotating steps split.. at offset ``split`` = the same steps of the whole sequence."""
    split = split % T
    d = 2 * h
    rope = RotaryEmbedding(d, layout=layout)
    x = np.random.default_rng(seed).standard_normal((2, 3, T, d))
    whole = rope(x)
    np.testing.assert_array_equal(rope(x[:, :, split:], offset=split), whole[:, :, split:])
    np.testing.assert_array_equal(rope.rotate(x[:, :, split:], split), whole[:, :, split:])


@given(T=st.integers(1, 4), h=st.integers(1, 3), offset=st.integers(0, 100), layout=layouts,
       base=bases, seed=seeds)
def test_module_gradcheck(T, h, offset, layout, base, seed):
    rope = RotaryEmbedding(2 * h, base, layout)
    x = np.random.default_rng(seed).standard_normal((2, 2, T, 2 * h))
    gradcheck(rope, x, offset=offset, seed=seed).assert_passed()


def _rotary_mha(rng, E, H, layout, n_kv_heads=None, **kw):
    mha = MultiHeadAttention(E, H, rotary={"layout": layout, "base": 100.0}, dtype=np.float64,
                             rng=rng, n_kv_heads=n_kv_heads, **kw)
    for p in mha.parameters():
        p.data = 0.5 * rng.standard_normal(p.shape)
    return mha


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@given(H=st.integers(1, 3), h=st.integers(1, 2), T=st.integers(1, 4), kv=st.sampled_from(
    ["all", "one"]), mode=st.sampled_from(["self", "cross"]), padded=st.booleans(),
       dropout=st.sampled_from([0.0, 0.3]), seed=seeds)
def test_mha_gradcheck(layout, H, h, T, kv, mode, padded, dropout, seed):
    rng = np.random.default_rng(seed)
    d_k = 2 * h
    E = H * d_k
    mha = _rotary_mha(rng, E, H, layout, None if kv == "all" else 1, dropout=dropout)
    x = rng.standard_normal((2, T, E))
    args = (x,) if mode == "self" else (x, rng.standard_normal((2, T + 1, E)),
                                        rng.standard_normal((2, T + 1, E)))
    Tk = T if mode == "self" else T + 1
    kw = {"attn_mask": causal_mask(T)} if mode == "self" else {}
    if padded:  # sequence 1 is all padding: fully blocked rows
        kpm = np.zeros((2, Tk), bool)
        kpm[1] = True
        kw["key_padding_mask"] = kpm
    gradcheck(mha, *args, seed=seed, max_entries=24, **kw).assert_passed()


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_mha_rotary_is_the_core_with_rotated_q_and_k(layout):
    """MHA(rotary) = the plain core on q, k rotated at positions 0..T-1."""
    rng = np.random.default_rng(0)
    B, T, E, H = 2, 5, 8, 2
    mha = _rotary_mha(rng, E, H, layout)
    plain = MultiHeadAttention(E, H, dtype=np.float64, rng=0)
    plain.load_state_dict(mha.state_dict())
    assert list(plain.state_dict()) == list(mha.state_dict())  # rotary adds no parameter
    x = rng.standard_normal((B, T, E))
    y, cache = mha.forward(x, attn_mask=causal_mask(T))
    QKV = x @ mha.in_proj.W.data + mha.in_proj.b.data
    q, k, v = (F.split_heads(QKV[..., i * E:(i + 1) * E], H) for i in range(3))
    qr, _ = F.rope_forward(q, np.arange(T), 100.0, layout)
    kr, _ = F.rope_forward(k, np.arange(T), 100.0, layout)
    np.testing.assert_allclose(cache.k, kr, rtol=1e-13, atol=1e-15)  # the cache holds k'
    context, _ = F.scaled_dot_product_attention_forward(qr, kr, v, causal_mask(T))
    expected = F.merge_heads(context) @ mha.out_proj.W.data + mha.out_proj.b.data
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)
    assert not np.allclose(y, plain(x, attn_mask=causal_mask(T)))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("mode", ["self", "cross"])
def test_float32_preserved(layout, mode):
    rng = np.random.default_rng(1)
    mha = MultiHeadAttention(8, 2, dropout=0.1, rotary={"layout": layout}, rng=rng,
                             n_kv_heads=1)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    args = (x,) if mode == "self" else (x, x[:, :2].copy(), x[:, :2].copy())
    check_dtype_preserved(mha, *args, need_weights=True)
    rope = RotaryEmbedding(4)
    check_dtype_preserved(rope, rng.standard_normal((2, 2, 3, 4)).astype(np.float32), offset=7)
    kv = mha.new_kv_cache(2)
    assert mha.decode(x, kv).dtype == np.float32 and kv.k.dtype == np.float32
    tables = F.rope_tables(np.arange(3), 4, dtype=np.float32)
    assert tables.cos.dtype == tables.sin.dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="RotaryEmbedding: dim must be even"):
        RotaryEmbedding(5)
    with pytest.raises(ValueError, match="RotaryEmbedding: layout must be one of 'half', "
                                         "'interleaved', got 'gptj'"):
        RotaryEmbedding(4, layout="gptj")
    with pytest.raises(ValueError, match="RotaryEmbedding: base must be a finite number > 0"):
        RotaryEmbedding(4, base=-1.0)
    with pytest.raises(ValueError, match="RotaryEmbedding: offset must be >= 0"):
        RotaryEmbedding(4)(np.zeros((1, 1, 2, 4)), offset=-1)
    with pytest.raises(ValueError, match="RotaryEmbedding: x has last dim 3, expected dim=4"):
        RotaryEmbedding(4)(np.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="MultiHeadAttention: rotary embeddings need an even "
                                         "head dimension .* got d_k=3"):
        MultiHeadAttention(6, 2, rotary=True)
    with pytest.raises(ValueError, match="MultiHeadAttention: rotary has dim=4, expected the "
                                         "head dimension d_k=2"):
        MultiHeadAttention(4, 2, rotary=RotaryEmbedding(4))
    with pytest.raises(ValueError, match="rotary accepts the keys 'base' and 'layout', got "
                                         "'theta'"):
        MultiHeadAttention(4, 2, rotary={"theta": 10.0})
    with pytest.raises(TypeError, match="MultiHeadAttention: rotary must be None, True, a dict "
                                        "or a RotaryEmbedding, got str"):
        MultiHeadAttention(4, 2, rotary="half")
    mha = MultiHeadAttention(4, 2, rotary=True, rng=0)
    memory = mha.cache_memory(np.zeros((1, 3, 4), np.float32), np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match="MultiHeadAttention: decode on a memory"):
        mha.decode(np.zeros((1, 1, 4), np.float32), memory)


def test_a_shared_rotary_object_and_the_repr():
    rope = RotaryEmbedding(4, base=500000.0, layout="interleaved")
    a = MultiHeadAttention(8, 2, rotary=rope, rng=0)
    assert a.rotary is rope
    assert "RotaryEmbedding(dim=4, base=500000, layout='interleaved')" in repr(a)
    assert [n for n, _ in a.named_parameters()] == ["in_proj.W", "in_proj.b", "out_proj.W",
                                                    "out_proj.b"]


@given(B=st.integers(1, 2), H_kv=st.integers(1, 2), g=st.integers(1, 2), Tq=st.integers(1, 3),
       Tk=st.integers(1, 3), h=st.integers(1, 2), q_offset=st.integers(0, 60),
       k_offset=st.integers(0, 60), layout=layouts, seed=seeds)
def test_core_gradcheck_with_the_rotary_position_pair(B, H_kv, g, Tq, Tk, h, q_offset, k_offset,
                                                      layout, seed):
    """The reference core with ``rope_position`` at offsets (and grouped heads): its
    backward (R^T on dq' and dk', the group sums) against central differences."""
    rng = np.random.default_rng(seed)
    d = 2 * h
    q = rng.standard_normal((B, H_kv * g, Tq, d))
    k, v = rng.standard_normal((2, B, H_kv, Tk, d))
    position = F.rope_position(q_offset + np.arange(Tq), k_offset + np.arange(Tk), d, 100.0,
                               layout)
    G = rng.standard_normal((B, H_kv * g, Tq, d))

    def loss(q, k, v):
        return float(np.sum(F.scaled_dot_product_attention_forward(
            q, k, v, position=position)[0] * G))

    _, cache = F.scaled_dot_product_attention_forward(q, k, v, position=position)
    grads = F.scaled_dot_product_attention_backward(G, cache)
    step = 1e-6
    for which, (x, grad) in enumerate(zip((q, k, v), grads)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [q, k, v]
            plus, minus = x.copy(), x.copy()
            plus[idx] += step
            minus[idx] -= step
            args[which] = plus
            up = loss(*args)
            args[which] = minus
            numeric[idx] = (up - loss(*args)) / (2 * step)
        scale = max(np.abs(numeric).max(), np.abs(grad).max(), 1e-12)
        assert np.abs(numeric - grad).max() / scale < 1e-7, "qkv"[which]


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_the_kv_cache_stores_rotated_keys(layout):
    """decode rotates each new step's keys once, at offset = the cache length, and
    stores them rotated: the cache equals the full forward's k' (the core's cache)."""
    rng = np.random.default_rng(5)
    mha = _rotary_mha(rng, 8, 4, layout, n_kv_heads=2)
    x = rng.standard_normal((2, 6, 8))
    _, cache = mha.forward(x, attn_mask=causal_mask(6))
    kv = mha.new_kv_cache(2)
    for t0, t1 in ((0, 1), (1, 4), (4, 6)):
        mha.decode(x[:, t0:t1], kv)
        np.testing.assert_allclose(kv.k, cache.k[:, :, :t1], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(kv.v, cache.v, rtol=1e-14, atol=1e-15)
    assert kv.k.shape == (2, 2, 6, 2)
