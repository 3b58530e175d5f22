"""MultiHeadAttention(attention_impl="tiled"): the layer with the tiled core
(functional/flash.py) computes what the plain layer computes, in training
forward/backward and in decode with a KV cache, and says clearly what it does
not do (the weights, their dropout, ALiBi)."""

import copy
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.attention import MultiHeadAttention, causal_mask
from numtransformer.cases.flash import CASES
from numtransformer.functional.flash import FlashAttentionCache
from tests.helpers import check_dtype_preserved, seeds
from tests.kernels.equal import F32_ULPS


def pair(E, H, dtype=np.float64, seed=0, block_q=3, block_k=2, **options):
    """The plain and the tiled layer with the same parameters."""
    plain = MultiHeadAttention(E, H, dtype=dtype, rng=seed, **options)
    tiled = MultiHeadAttention(E, H, dtype=dtype, rng=seed, attention_impl="tiled",
                               block_q=block_q, block_k=block_k, **options)
    rng = np.random.default_rng(seed)
    for p, p2 in zip(plain.parameters(), tiled.parameters()):
        p.data = (0.5 * rng.standard_normal(p.shape)).astype(dtype)
        p2.data = p.data.copy()
    return plain, tiled


def error(a, b) -> float:
    scale = max(float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)), 1e-30)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0)) / scale


def run(layer, args, kwargs, G):
    layer.zero_grad()
    y, cache = layer.forward(*args, **kwargs)
    dx = layer.backward(G, cache)
    dx = dx if isinstance(dx, tuple) else (dx,)
    return (y,) + dx + tuple(p.grad.copy() for p in layer.parameters()), cache


@st.composite
def problems(draw):
    H, n_kv = draw(st.sampled_from([(2, 2), (2, 1), (4, 2), (3, 1)]))
    return dict(H=H, n_kv=n_kv, d_k=draw(st.sampled_from([2, 4])),
                mode=draw(st.sampled_from(["self", "self", "cross"])),
                T=draw(st.sampled_from([1, 2, 7, 33])), Tk_extra=draw(st.integers(0, 5)),
                block_q=draw(st.sampled_from([1, 3, 8, 64])),
                block_k=draw(st.sampled_from([2, 5, 16, 64])),
                mask=draw(st.sampled_from([None, "causal", "dense"])),
                padding=draw(st.sampled_from([None, "random", "one sequence all padding"])),
                rotary=draw(st.booleans()), window=draw(st.sampled_from([None, 1, 4])),
                seed=draw(seeds))


def make(p, dtype):
    rng = np.random.default_rng(p["seed"])
    H, E, B, T = p["H"], p["H"] * p["d_k"], 2, p["T"]
    options = dict(n_kv_heads=p["n_kv"], rotary=p["rotary"] or None, window=p["window"])
    plain, tiled = pair(E, H, dtype, p["seed"] % 1000, p["block_q"], p["block_k"], **options)
    x = rng.standard_normal((B, T, E)).astype(dtype)
    if p["mode"] == "self":
        args, Tk = (x,), T
    else:
        Tk = T + p["Tk_extra"]
        args = (x, rng.standard_normal((B, Tk, E)).astype(dtype),
                rng.standard_normal((B, Tk, E)).astype(dtype))
    kwargs = {}
    if p["mask"] == "causal":
        kwargs["attn_mask"] = np.arange(Tk)[None, :] > np.arange(T)[:, None]
    elif p["mask"] == "dense":
        am = rng.random((B, T, Tk)) < 0.3
        am[0, T // 2] = True  # one fully blocked row
        kwargs["attn_mask"] = am
    if p["padding"] is not None:
        kpm = rng.random((B, Tk)) < 0.3
        if p["padding"] != "random":
            kpm[1] = True
        kwargs["key_padding_mask"] = kpm
    G = rng.standard_normal((B, T, E)).astype(dtype)
    return plain, tiled, args, kwargs, G


@given(problems())
def test_tiled_layer_equals_plain_layer_in_float64(p):
    plain, tiled, args, kwargs, G = make(p, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, cache = run(tiled, args, kwargs, G)
    want, _ = run(plain, args, kwargs, G)
    assert isinstance(cache.core, FlashAttentionCache)
    if p["mask"] == "causal" and p["mode"] == "self":
        assert cache.core.masks.causal and cache.core.masks.attn_mask is None
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == np.float64 and np.isfinite(a).all()
        # y, the input grads, the parameter grads: a tensor whose exact value is 0
        # (a key bias's gradient) is judged against the output's size
        assert np.abs(a - b).max(initial=0) <= 1e-12 * max(np.abs(b).max(initial=0),
                                                           np.abs(want[0]).max()), i


@given(problems())
def test_tiled_layer_is_within_float32_rounding(p):
    plain, tiled, args, kwargs, G = make(p, np.float32)
    oracle = copy.deepcopy(plain).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, _ = run(tiled, args, kwargs, G)
    want, _ = run(plain, args, kwargs, G)
    best, _ = run(oracle, tuple(a.astype(np.float64) for a in args), kwargs,
                  G.astype(np.float64))
    floor = F32_ULPS * float(np.finfo(np.float32).eps)
    for i, (a, b, o) in enumerate(zip(got, want, best)):
        assert a.dtype == np.float32, i
        scale = max(np.abs(o).max(initial=0), np.abs(best[0]).max())
        err_tiled = np.abs(a - o).max(initial=0) / scale
        err_plain = np.abs(b - o).max(initial=0) / scale
        assert err_tiled <= 2 * err_plain + floor, (i, err_tiled, err_plain)


@pytest.mark.parametrize("options", [{}, {"n_kv_heads": 1}, {"rotary": True, "n_kv_heads": 2},
                                     {"window": 3}, {"rotary": True, "window": 5}])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decode_with_the_kv_cache_equals_the_plain_layer(options, dtype):
    plain, tiled = pair(8, 4, dtype, block_q=2, block_k=3, **options)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 12, 8)).astype(dtype)
    kpm = np.zeros((2, 12), dtype=bool)
    kpm[1, :2] = True
    c1, c2 = plain.new_kv_cache(2), tiled.new_kv_cache(2)
    tol = 1e-13 if dtype == np.float64 else 1e-5
    for t0, t1 in [(0, 5), (5, 6), (6, 7), (7, 12)]:
        y1 = plain.decode(x[:, t0:t1], c1, key_padding_mask=kpm[:, :t1])
        y2 = tiled.decode(x[:, t0:t1], c2, key_padding_mask=kpm[:, :t1])
        assert y2.dtype == dtype and error(y2, y1) <= tol, (t0, error(y2, y1))
    # and decoding step by step is the training forward with the causal mask
    y = tiled(x, attn_mask=causal_mask(12), key_padding_mask=kpm)
    assert error(y[:, 7:], y2) <= tol


def test_cross_attention_decode_on_a_memory():
    plain, tiled = pair(8, 2, block_q=1, block_k=4, n_kv_heads=1)
    rng = np.random.default_rng(6)
    memory, x = rng.standard_normal((2, 9, 8)), rng.standard_normal((2, 3, 8))
    kpm = np.zeros((2, 9), dtype=bool)
    kpm[0, 5:] = True
    y1 = plain.decode(x, plain.cache_memory(memory, memory), key_padding_mask=kpm)
    y2 = tiled.decode(x, tiled.cache_memory(memory, memory), key_padding_mask=kpm)
    assert error(y2, y1) <= 1e-13


def test_parameters_state_dict_and_the_plain_default_are_unchanged():
    plain, tiled = pair(8, 2)
    assert list(plain.state_dict()) == list(tiled.state_dict())
    assert MultiHeadAttention(8, 2).attention_impl == "plain"
    assert "attention_impl" not in repr(plain)
    assert "attention_impl='tiled', block_q=3, block_k=2" in repr(tiled)


def test_float32_stays_float32():
    _, tiled = pair(8, 2, np.float32, n_kv_heads=1, rotary=True)
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    check_dtype_preserved(tiled, x, attn_mask=causal_mask(5))


def test_dropout_in_eval_is_fine_in_training_it_is_refused():
    tiled = MultiHeadAttention(8, 2, dropout=0.1, attention_impl="tiled", rng=0)
    x = np.zeros((1, 3, 8), np.float32)
    with pytest.raises(ValueError, match="MultiHeadAttention: attention_impl='tiled' applies no "
                                         "dropout.*dropout=0.1.*training mode"):
        tiled(x)
    tiled.eval()
    assert tiled(x).shape == (1, 3, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attention_impl="flash"), "attention_impl must be 'plain' or 'tiled', got 'flash'"),
    (dict(attention_impl="tiled", block_q=0), "block_q must be >= 1"),
    (dict(attention_impl="tiled", block_k=-3), "block_k must be >= 1"),
    (dict(attention_impl="tiled", alibi=True), "alibi is not supported with attention_impl="),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match="MultiHeadAttention: " + match):
        MultiHeadAttention(8, 2, **kwargs)


def test_need_weights_is_refused():
    tiled = MultiHeadAttention(8, 2, attention_impl="tiled", rng=0)
    with pytest.raises(ValueError, match="need_weights=True needs the attention weights"):
        tiled.forward(np.zeros((1, 3, 8), np.float32), need_weights=True)


def test_bad_masks_are_named_as_in_the_plain_layer():
    tiled = MultiHeadAttention(8, 2, attention_impl="tiled", rng=0)
    x = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: key_padding_mask has shape"):
        tiled(x, key_padding_mask=np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: attn_mask has shape"):
        tiled(x, attn_mask=np.zeros((4, 4), dtype=bool))


@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith("MultiHeadAttention")],
                         ids=lambda c: c.name)
def test_gradcheck_case_passes(case):
    module, inputs, kwargs = case.build(np.random.default_rng([0, 1]))
    gradcheck(module, *inputs, **kwargs).assert_passed()
