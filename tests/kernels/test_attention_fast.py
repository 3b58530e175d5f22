"""The fast kernels of the attention family equal their reference kernels, float64
and float32, forward and backward: every score kernel, the attention step, the
multi-head core (with masks, fully masked rows, Tq or Tk = 1, dropout, the
position transform, grouped-query heads, an additive bias, rotary embeddings)
and the head layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import fast
from numtransformer import functional as F

from ..helpers import seeds
from .equal import assert_same, row_blocks, same, to_float64

CORE = "scaled_dot_product_attention_forward"

dtypes = st.sampled_from([np.float64, np.float32])
lengths = st.integers(1, 6)  # Tq or Tk = 1 included
widths = st.integers(1, 5)

blocks = pytest.fixture(autouse=True, params=["one block", "row blocks"])(row_blocks)

MASKS = ["none", "key padding", "causal", "3-D", "per head", "fully masked rows", "all blocked"]


def _mask(rng, kind, B, H, Tq, Tk, heads: bool):
    """A boolean mask of ``kind`` broadcastable to (B, [H,] Tq, Tk), True = blocked."""
    lead = (B, 1) if heads else (B,)
    one = (1, 1) if heads else (1,)
    if kind == "none":
        return None
    if kind == "key padding":
        return (rng.random((B, Tk)) < 0.4).reshape(*lead, 1, Tk)
    if kind == "causal":  # query i sees keys j <= i + (Tk - Tq): the decoding offset
        return (np.arange(Tk)[None, :] > np.arange(Tq)[:, None] + (Tk - Tq)).reshape(*one, Tq, Tk)
    if kind == "3-D":
        return (rng.random((B, Tq, Tk)) < 0.4).reshape(*lead, Tq, Tk)
    if kind == "per head" and heads:
        return rng.random((B, H, Tq, Tk)) < 0.4
    if kind == "all blocked":
        return np.ones((*lead, Tq, Tk), bool)
    mask = rng.random((B, H, Tq, Tk) if heads else (B, Tq, Tk)) < 0.3
    mask[..., 0, :] = True  # query 0 sees nothing
    return mask


@given(B=st.integers(1, 3), Tq=lengths, Tk=lengths, Dq=widths, Dk=widths, A=widths,
       zero_rows=st.booleans(), dtype=dtypes, seed=seeds)
def test_score_kernels(B, Tq, Tk, Dq, Dk, A, zero_rows, dtype, seed):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((B, Tq, Dq)).astype(dtype)
    h = rng.standard_normal((B, Tk, Dk)).astype(dtype)
    h_same = rng.standard_normal((B, Tk, Dq)).astype(dtype)  # for the equal-width scores
    if zero_rows:  # the cosine score's eps path: a zero query and a zero key
        s[0, 0] = 0
        h_same[-1, -1] = 0
    de = rng.standard_normal((B, Tq, Tk)).astype(dtype)
    for name in ("dot_score", "scaled_dot_score"):
        _, cache = same(f"{name}_forward", s, h_same)
        same(f"{name}_backward", de, cache)
    _, cache = same("cosine_score_forward", s, h_same, 2.5, 1e-3 if zero_rows else 1e-8)
    same("cosine_score_backward", de, cache, 2.5)
    W_a = rng.standard_normal((Dq, Dk)).astype(dtype)
    _, cache = same("general_score_forward", s, h, W_a)
    same("general_score_backward", de, cache, W_a)
    W_q = rng.standard_normal((Dq, A)).astype(dtype)
    W_k = rng.standard_normal((Dk, A)).astype(dtype)
    v_a = rng.standard_normal(A).astype(dtype)
    _, cache = same("additive_score_forward", s, h, W_q, W_k, v_a)
    same("additive_score_backward", de, cache, W_q, W_k)
    W_loc = rng.standard_normal((Dq, Tk + 2)).astype(dtype)  # max_len > Tk: unused columns
    _, cache = same("location_score_forward", s, h, W_loc)
    ds, dh, dW = same("location_score_backward", de, cache, W_loc)
    assert not dh.any() and not dW[:, Tk:].any()


@given(B=st.integers(1, 3), Tq=lengths, Tk=lengths, A=widths, dtype=dtypes, seed=seeds)
def test_additive_energy(B, Tq, Tk, A, dtype, seed):
    rng = np.random.default_rng(seed)
    sq = (rng.standard_normal((B, Tq, A)) * 2).astype(dtype)
    hk = (rng.standard_normal((B, Tk, A)) * 2).astype(dtype)
    v_a = rng.standard_normal(A).astype(dtype)
    _, cache = same("additive_energy_forward", sq, hk, v_a)
    same("additive_energy_backward", rng.standard_normal((B, Tq, Tk)).astype(dtype), cache)


@given(B=st.integers(1, 3), Tq=lengths, Tk=lengths, Dv=widths, mask=st.sampled_from(MASKS),
       dtype=dtypes, seed=seeds)
def test_attention_step(B, Tq, Tk, Dv, mask, dtype, seed):
    rng = np.random.default_rng(seed)
    e = (rng.standard_normal((B, Tq, Tk)) * 3).astype(dtype)
    v = rng.standard_normal((B, Tk, Dv)).astype(dtype)
    m = _mask(rng, mask, B, 1, Tq, Tk, heads=False)
    c, cache = same("attention_forward", e, v, m)
    if m is not None:  # a query with every key blocked: zero weights, zero context
        dead = np.broadcast_to(m, e.shape).all(axis=-1)
        assert not cache.alpha[dead].any() and not c[dead].any()
    de, dv = same("attention_backward", rng.standard_normal((B, Tq, Dv)).astype(dtype), cache)
    assert np.isfinite(de).all() and np.isfinite(dv).all()


def same_core(*args, **kwargs):
    """``same`` for the multi-head core's forward, whose fast cache keeps no scores
    (e = None: it normalises them in place): every other output and cache field
    must equal the reference's; returns the reference's result."""
    saved = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    f_out, f_cache = getattr(fast, CORE)(*args, **kwargs)
    r_out, r_cache = getattr(F, CORE)(*args, **kwargs)
    for a, s in zip(args, saved):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, s, err_msg="the core changed an input")
    assert f_cache.e is None and r_cache.e is not None
    o_out, o_cache = getattr(F, CORE)(*to_float64(args), **kwargs)
    assert_same((f_out, f_cache._replace(e=None)), (r_out, r_cache._replace(e=None)), CORE,
                oracle=to_float64((o_out, o_cache._replace(e=None))))
    return r_out, r_cache


def _qkv(rng, B, H, Tq, Tk, d_k, d_v, dtype, fused):
    """q, k, v (B, H, T, d): fused = views of one (B, T, 3E) projection, as MHA's."""
    if fused:
        QKV = rng.standard_normal((B, Tq, 3 * H * d_k)).astype(dtype)
        return [F.split_heads(QKV[..., i * H * d_k:(i + 1) * H * d_k], H) for i in range(3)]
    return [rng.standard_normal(shape).astype(dtype)
            for shape in ((B, H, Tq, d_k), (B, H, Tk, d_k), (B, H, Tk, d_v))]


@given(B=st.integers(1, 3), H=st.integers(1, 3), Tq=lengths, Tk=lengths, d_k=widths,
       d_v=widths, fused=st.booleans(), mask=st.sampled_from(MASKS),
       dalpha=st.sampled_from([None, "mean", "heads"]), dtype=dtypes, seed=seeds)
def test_multihead_core(B, H, Tq, Tk, d_k, d_v, fused, mask, dalpha, dtype, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, B, H, Tq, Tk, d_k, d_v, dtype, fused)
    m = _mask(rng, mask, B, H, q.shape[2], k.shape[2], heads=True)
    context, cache = same_core(q, k, v, m)
    dcontext = rng.standard_normal(context.shape).astype(dtype)
    extra = {None: None, "mean": rng.standard_normal((B, 1) + cache.alpha.shape[2:]),
             "heads": rng.standard_normal(cache.alpha.shape)}[dalpha]
    extra = None if extra is None else extra.astype(dtype)
    dq, dk, dv = same("scaled_dot_product_attention_backward", dcontext, cache, extra)
    if m is not None:  # a query with no key: no gradient reaches it
        dead = np.broadcast_to(m, cache.alpha.shape).all(axis=-1)
        assert not context[dead].any() and not dq[dead].any()

    # the heads' layouts: merging the fast kernel's outputs equals the reference,
    # and is free where the layout allows (self-attention's [dQ | dK | dV])
    # (last: overwrite_q lets the fast kernel scale q in place, as MHA does)
    f_context, f_cache = fast.scaled_dot_product_attention_forward(q, k, v, m, overwrite_q=True)
    f_grads = fast.scaled_dot_product_attention_backward(dcontext, f_cache, extra)
    merged = same("merge_heads", f_context)
    assert merged.shape == (B, q.shape[2], H * v.shape[-1])
    np.testing.assert_array_equal(F.split_heads(merged, H), f_context)
    for g in f_grads:
        np.testing.assert_array_equal(F.split_heads(same("merge_heads", g), H), g)
    if q.shape[2] == k.shape[2]:  # one length: [dQ | dK | dV] as one array
        all3 = same("merge_heads", *f_grads)
        assert all3.shape == (B, q.shape[2], H * (2 * d_k + v.shape[-1]))
        if fused:  # q, k, v of one projection: their gradients fill one buffer
            assert np.shares_memory(fast.merge_heads(*f_grads), f_grads[0])


@given(B=st.integers(1, 2), H=st.integers(1, 3), T=lengths, d_k=widths, dtype=dtypes,
       seed=seeds)
def test_multihead_core_may_scale_q_in_place_when_allowed(B, H, T, d_k, dtype, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, B, H, T, T, d_k, d_k, dtype, fused=True)
    ref, ref_cache = F.scaled_dot_product_attention_forward(q.copy(), k, v)
    out, cache = fast.scaled_dot_product_attention_forward(q, k, v, overwrite_q=True)
    assert_same(out, ref, "context", oracle=to_float64(
        F.scaled_dot_product_attention_forward(*to_float64((q.copy(), k, v)))[0]))
    assert np.shares_memory(cache.q_s, q)  # the fast kernel took the hint
    q2 = rng.standard_normal(q.shape).astype(dtype)
    saved = q2.copy()
    F.scaled_dot_product_attention_forward(q2, k, v, overwrite_q=True)
    np.testing.assert_array_equal(q2, saved)  # the reference never writes into q


class _FixedDraws:
    """A stand-in for the dropout Generator: ``random`` returns the same values
    in any dtype (multiples of 1/64, exact in float32), so the float32 and
    float64 runs drop the same entries."""

    def __init__(self, seed, shape):
        self.u = np.random.default_rng(seed).integers(0, 64, shape) / 64.0

    def random(self, shape, dtype=np.float64):
        assert shape == self.u.shape
        return self.u.astype(dtype)


@given(B=st.integers(1, 2), H=st.integers(1, 3), Tq=lengths, Tk=lengths, d_k=widths,
       p=st.sampled_from([0.3, 1.0]), mask=st.sampled_from(MASKS), dtype=dtypes, seed=seeds)
def test_multihead_core_dropout(B, H, Tq, Tk, d_k, p, mask, dtype, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, B, H, Tq, Tk, d_k, d_k, dtype, fused=False)
    m = _mask(rng, mask, B, H, Tq, Tk, heads=True)
    draws = _FixedDraws(seed, (B, H, Tq, Tk))
    context, cache = same_core(q, k, v, m, p, draws)
    assert cache.dropout.mask is not None
    np.testing.assert_array_equal(cache.alpha_drop, cache.alpha * cache.dropout.mask)
    dcontext = rng.standard_normal(context.shape).astype(dtype)
    same("scaled_dot_product_attention_backward", dcontext, cache)


def _rotation(d, seed):
    """A position map (forward, backward): q' = q R, k' = k R for an orthogonal R,
    whose vector-Jacobian product is dq = dq' R^T (a stand-in for rotary embeddings)."""
    R, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))

    def forward(q, k):
        return q @ R.astype(q.dtype), k @ R.astype(k.dtype)

    def backward(dq, dk):
        return dq @ R.T.astype(dq.dtype), dk @ R.T.astype(dk.dtype)

    return forward, backward


@given(B=st.integers(1, 2), H=st.integers(1, 3), Tq=lengths, Tk=lengths, d_k=widths,
       mask=st.sampled_from(MASKS), dtype=dtypes, seed=seeds)
def test_multihead_core_with_a_position_map(B, H, Tq, Tk, d_k, mask, dtype, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, B, H, Tq, Tk, d_k, d_k, dtype, fused=False)
    m = _mask(rng, mask, B, H, Tq, Tk, heads=True)
    position = _rotation(d_k, seed)
    context, cache = same_core(q, k, v, m, 0.0, None, position)
    dcontext = rng.standard_normal(context.shape).astype(dtype)
    same("scaled_dot_product_attention_backward", dcontext, cache)


@given(B=st.integers(1, 2), H=st.integers(1, 2), Tq=lengths, Tk=lengths, d_k=st.integers(1, 3),
       mask=st.sampled_from(MASKS), rotate=st.booleans(), seed=seeds)
def test_multihead_core_gradcheck(B, H, Tq, Tk, d_k, mask, rotate, seed):
    """The reference core's backward against central differences (float64), with
    and without a position map, on L = sum(context * G)."""
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, B, H, Tq, Tk, d_k, d_k, np.float64, fused=False)
    m = _mask(rng, mask, B, H, Tq, Tk, heads=True)
    position = _rotation(d_k, seed) if rotate else None
    G = rng.standard_normal((B, H, Tq, d_k))
    dalpha = rng.standard_normal((B, H, Tq, Tk))

    def loss(q, k, v):
        c, cache = F.scaled_dot_product_attention_forward(q, k, v, m, position=position)
        return float(np.sum(c * G) + np.sum(cache.alpha * dalpha))

    _, cache = F.scaled_dot_product_attention_forward(q, k, v, m, position=position)
    grads = F.scaled_dot_product_attention_backward(G, cache, dalpha)
    h = 1e-6
    for which, (x, g) in enumerate(zip((q, k, v), grads)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [q, k, v]
            plus, minus = x.copy(), x.copy()
            plus[idx] += h
            minus[idx] -= h
            args[which] = plus
            up = loss(*args)
            args[which] = minus
            numeric[idx] = (up - loss(*args)) / (2 * h)
        scale = max(np.abs(numeric).max(), np.abs(g).max(), 1e-12)
        assert np.abs(numeric - g).max() / scale < 1e-7, ("q", "k", "v")[which]


def _grouped_qkv(rng, B, H_kv, g, Tq, Tk, d_k, d_v, dtype, fused):
    """q (B, H_kv g, Tq, d_k), k (B, H_kv, Tk, d_k), v (B, H_kv, Tk, d_v); fused (Tq = Tk,
    d_v = d_k): views of one (B, T, (H + 2 H_kv) d_k) projection, as a GQA layer's."""
    H = H_kv * g
    if fused:
        E, E_kv = H * d_k, H_kv * d_k
        QKV = rng.standard_normal((B, Tq, E + 2 * E_kv)).astype(dtype)
        return (F.split_heads(QKV[..., :E], H), F.split_heads(QKV[..., E:E + E_kv], H_kv),
                F.split_heads(QKV[..., E + E_kv:], H_kv))
    return [rng.standard_normal(shape).astype(dtype)
            for shape in ((B, H, Tq, d_k), (B, H_kv, Tk, d_k), (B, H_kv, Tk, d_v))]


@given(B=st.integers(1, 2), H_kv=st.integers(1, 2), g=st.integers(1, 3), Tq=lengths,
       Tk=lengths, d_k=widths, d_v=widths, fused=st.booleans(), mask=st.sampled_from(MASKS),
       bias=st.sampled_from([None, "alibi", "drawn"]),
       rotary=st.sampled_from([None, "half", "interleaved"]),
       dalpha=st.sampled_from([None, "mean", "heads"]), p=st.sampled_from([0.0, 0.3]),
       dtype=dtypes, seed=seeds)
def test_multihead_core_grouped_biased_rotary(B, H_kv, g, Tq, Tk, d_k, d_v, fused, mask, bias,
                                              rotary, dalpha, p, dtype, seed):
    """The core with H_kv key/value heads shared by g query heads each, an additive
    bias and a rotary position map (at offsets), forward and backward."""
    from numtransformer.attention import alibi_bias, alibi_slopes

    rng = np.random.default_rng(seed)
    H = H_kv * g
    if rotary is not None:
        d_k = 2 * d_k
    if fused:
        Tk, d_v = Tq, d_k
    q, k, v = _grouped_qkv(rng, B, H_kv, g, Tq, Tk, d_k, d_v, dtype, fused)
    m = _mask(rng, mask, B, H, Tq, Tk, heads=True)
    extra_bias = {None: None,
                  "alibi": alibi_bias(alibi_slopes(H), Tq, Tk - Tq, dtype, Tk=Tk)[None]
                  if Tk >= Tq else None,
                  "drawn": rng.standard_normal((B, H, Tq, Tk)).astype(dtype)}[bias]
    position = None
    if rotary is not None:
        offset = int(rng.integers(0, 40))
        position = F.rope_position(offset + np.arange(Tq), np.arange(Tk), d_k, 100.0, rotary,
                                   dtype)
    draws = _FixedDraws(seed, (B, H, Tq, Tk)) if p else None
    context, cache = same_core(q, k, v, m, p, draws, position, bias=extra_bias)
    assert cache.k.shape[1] == H_kv and cache.v.shape[1] == H_kv
    dcontext = rng.standard_normal(context.shape).astype(dtype)
    extra = {None: None, "mean": rng.standard_normal((B, 1, Tq, Tk)),
             "heads": rng.standard_normal((B, H, Tq, Tk))}[dalpha]
    extra = None if extra is None else extra.astype(dtype)
    dq, dk, dv = same("scaled_dot_product_attention_backward", dcontext, cache, extra)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    assert dq.dtype == dk.dtype == dv.dtype == dtype
    if m is not None:  # a query with no key: no gradient reaches it
        dead = np.broadcast_to(m, cache.alpha.shape).all(axis=-1)
        assert not context[dead].any() and not dq[dead].any()
    # the fast kernel may scale q in place (MHA's overwrite_q): same results
    f_context, _ = fast.scaled_dot_product_attention_forward(q.copy(), k, v, m, p, draws, position,
                                                             overwrite_q=True, bias=extra_bias)
    np.testing.assert_array_equal(f_context, fast.scaled_dot_product_attention_forward(
        q, k, v, m, p, draws, position, bias=extra_bias)[0])


@given(B=st.integers(1, 2), H=st.integers(1, 3), T=lengths, h=st.integers(1, 3),
       offset=st.integers(0, 100), layout=st.sampled_from(["half", "interleaved"]),
       per_sequence=st.booleans(), view=st.sampled_from(["fused", "contiguous", "strided"]),
       dtype=dtypes, seed=seeds)
def test_rope_kernels(B, H, T, h, offset, layout, per_sequence, view, dtype, seed):
    """The fast rotary kernels (one complex multiplication per pair) equal the
    reference, forward and backward, on q of a fused projection (a view), on
    contiguous arrays and on arrays whose last axis is strided; so do the
    position pairs of the two families."""
    rng = np.random.default_rng(seed)
    d = 2 * h
    if view == "fused":
        x = F.split_heads(rng.standard_normal((B, T, 3 * H * d)).astype(dtype)[..., :H * d], H)
    elif view == "strided":
        x = rng.standard_normal((B, H, T, 2 * d)).astype(dtype)[..., ::2]
    else:
        x = rng.standard_normal((B, H, T, d)).astype(dtype)
    pos = offset + np.arange(T)
    if per_sequence:
        pos = pos[None] + rng.integers(0, 9, (B, 1))
    y, cache = same("rope_forward", x, pos, 500.0, layout)
    assert y.dtype == dtype and cache.cos.dtype == dtype
    dy = rng.standard_normal(y.shape).astype(dtype)
    if view == "strided":
        dy = np.repeat(dy, 2, axis=-1)[..., ::2]
    dx = same("rope_backward", dy, cache)
    assert dx.dtype == dtype and dx.shape == x.shape
    k = rng.standard_normal((B, 1, T + 1, d)).astype(dtype)
    pairs = [family.rope_position(np.arange(T) + offset, np.arange(T + 1), d, 500.0, layout,
                                  dtype) for family in (fast, F)]
    oracle = F.rope_position(np.arange(T) + offset, np.arange(T + 1), d, 500.0, layout)
    assert_same(pairs[0][0](x, k), pairs[1][0](x, k), "position.forward",
                oracle=oracle[0](*to_float64((x, k))))
    assert_same(pairs[0][1](dy, k), pairs[1][1](dy, k), "position.backward",
                oracle=oracle[1](*to_float64((dy, k))))
    assert pairs[0][0](x, k)[1] is not k  # the keys rotated; with k_positions=None: as given
    assert fast.rope_position(pos, None, d, 500.0, layout, dtype)[0](x, k)[1] is k
