"""The LLaMA-style decoder: TransformerLM with norm="rmsnorm", positional="rotary",
activation="swiglu", n_kv_heads, window and bias=False.  Gradient checks on drawn
sizes (n_kv_heads in {1, 2, n_heads}, windows shorter and longer than the
sequence, right padding, a one-token row), incremental decoding against the full
pass (<= 1e-12), causality, float32, the saved config and the clear errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.checkpoint import load_checkpoint, save_checkpoint
from numtransformer.models import TransformerLM
from numtransformer.models.llama import llama_lm
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64


def _lm(rng, n_kv, window, tie=False, layers=2, heads=4, dtype=F64, **kw):
    return TransformerLM(13, 8, heads, layers, 12, dropout=0.0, activation="swiglu",
                         positional="rotary", tie_output=tie, norm="rmsnorm", n_kv_heads=n_kv,
                         window=window, bias=False, dtype=dtype, rng=rng, **kw)


def _pad(rng, B, T):
    lengths = rng.integers(1, T + 1, B)
    return np.arange(T)[None, :] >= lengths[:, None]


@given(B=st.integers(1, 2), T=st.integers(1, 6), layers=st.integers(1, 2),
       n_kv=st.sampled_from([1, 2, 4]), window=st.sampled_from([None, 1, 2, 9]),
       tie=st.booleans(), seed=seeds)
@settings(max_examples=8)
def test_gradcheck_llama_lm(B, T, layers, n_kv, window, tie, seed):
    rng = np.random.default_rng(seed)
    lm = _lm(rng, n_kv, window, tie, layers)
    # a 0.02-sized embedding table makes the finite-difference step tiny and its noise
    # large (see numtransformer/cases/transformer.py's _llama); N(0, 0.5^2) here
    lm.embed.W.data[...] = 0.5 * rng.standard_normal(lm.embed.W.shape)
    for name, p in lm.named_parameters():
        if name.endswith("gamma"):
            p.data[...] = 1 + 0.3 * rng.standard_normal(p.shape)
    pad = _pad(rng, B, T)
    ids = np.where(pad, 0, rng.integers(1, 13, (B, T)))
    report = gradcheck(lm, ids, pad, seed=seed, max_entries=12)
    report.assert_passed()
    assert f"blocks.{layers - 1}.ffn.gate_proj.W" in report.errors
    assert "blocks.0.self_attn.in_proj.b" not in dict(lm.named_parameters())


@given(B=st.integers(1, 3), T=st.integers(2, 9), prefix=st.integers(1, 4),
       n_kv=st.sampled_from([1, 2, 4]), window=st.sampled_from([None, 1, 3, 20]), seed=seeds)
@settings(max_examples=10)
def test_incremental_decoding_equals_full_pass(B, T, prefix, n_kv, window, seed):
    """A prompt at once, then one token per call: the GQA cache holds n_kv heads, the
    rotary offsets advance, the window slides (<= 1e-12 float64)."""
    rng = np.random.default_rng(seed)
    lm = _lm(rng, n_kv, window).eval()
    ids = rng.integers(0, 13, (B, T))
    prefix = min(prefix, T)
    full = lm(ids)
    state = lm.start_decoding(B)
    steps = [lm.decode_step(state, ids[:, :prefix])]
    steps += [lm.decode_step(state, ids[:, t]) for t in range(prefix, T)]
    np.testing.assert_allclose(np.stack(steps, 1), full[:, prefix - 1:], rtol=0, atol=1e-12)
    assert state.caches[0].k.shape[1] == n_kv


@given(T=st.integers(2, 8), window=st.sampled_from([None, 1, 3]), seed=seeds)
@settings(max_examples=6)
def test_causality_and_window(T, window, seed):
    """Changing token t+1 never changes logits <= t; with one layer and a window w,
    changing token s changes no logits at t >= s + w (bit for bit)."""
    rng = np.random.default_rng(seed)
    lm = _lm(rng, 2, window, layers=1).eval()
    ids = rng.integers(1, 13, (2, T))
    base = lm(ids)
    t = int(rng.integers(0, T - 1))
    changed = ids.copy()
    changed[:, t + 1] = changed[:, t + 1] % 12 + 1
    out = lm(changed)
    np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
    if window is not None and t + 1 + window < T:
        np.testing.assert_array_equal(out[:, t + 1 + window:], base[:, t + 1 + window:])


def test_float32_preserved():
    rng = np.random.default_rng(0)
    lm = _lm(rng, 2, 3, dtype=np.float32)
    ids = rng.integers(0, 13, (2, 5))
    check_dtype_preserved(lm, ids)


def test_n_kv_heads_equal_to_heads_is_plain_multi_head_attention():
    a = _lm(np.random.default_rng(1), None, None)
    b = _lm(np.random.default_rng(1), 4, None)
    ids = np.random.default_rng(2).integers(0, 13, (2, 6))
    assert np.array_equal(a(ids), b(ids))


def test_config_round_trips_through_a_checkpoint(tmp_path):
    lm = _lm(np.random.default_rng(3), 2, 5, tie=True, rope_base=500000.0)
    for key, value in dict(n_kv_heads=2, window=5, bias=False, rope_base=500000.0,
                           rope_layout="half", positional="rotary").items():
        assert lm.config[key] == value
    path = str(tmp_path / "m.npz")
    save_checkpoint(path, lm, {"model_config": lm.config})
    ck = load_checkpoint(path)
    back = TransformerLM(**ck.config["model_config"], dtype=F64)
    back.load_state_dict(ck.params)
    ids = np.random.default_rng(4).integers(0, 13, (2, 7))
    assert np.array_equal(back(ids), lm(ids))


def test_gpt_style_config_is_unchanged():
    lm = TransformerLM(9, 8, 2, 1, 12)
    assert set(lm.config) == {"vocab_size", "d_model", "nhead", "num_layers",
                              "dim_feedforward", "dropout", "activation", "layer_norm_eps",
                              "positional", "max_len", "tie_output", "norm"}


def test_llama_lm_builder_defaults():
    lm = llama_lm(100, d_model=32, nhead=4, n_kv_heads=2, num_layers=2, dim_feedforward=64)
    c = lm.config
    assert (c["norm"], c["positional"], c["activation"], c["bias"]) == (
        "rmsnorm", "rotary", "swiglu", False)
    assert c["layer_norm_eps"] == 1e-6 and c["dropout"] == 0.0


@pytest.mark.parametrize("kw,needle", [
    (dict(nhead=4, n_kv_heads=3), "n_kv_heads"),
    (dict(nhead=4, d_model=12), "rotary"),  # d_k = 3: odd rotary dimension
    (dict(window=0), "window"),
    (dict(positional="absolute"), "positional"),
    (dict(activation="swish"), "activation"),
])
def test_bad_options_are_named(kw, needle):
    args = dict(vocab_size=13, d_model=8, nhead=4, num_layers=1, dim_feedforward=12,
                activation="swiglu", positional="rotary", norm="rmsnorm", bias=False)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=needle):
        TransformerLM(**args)


@pytest.mark.parametrize("window", [None, 3])
def test_tiled_attention_is_the_same_model(window):
    """attention_impl="tiled" (FlashAttention-style) changes no number that matters:
    the same logits, gradients and incremental decoding (<= 1e-12, float64)."""
    rng = np.random.default_rng(5)
    plain = _lm(np.random.default_rng(6), 2, window)
    tiled = _lm(np.random.default_rng(6), 2, window, attention_impl="tiled", block_size=2)
    assert tiled.config["attention_impl"] == "tiled" and tiled.config["block_size"] == 2
    pad = _pad(rng, 3, 7)
    ids = np.where(pad, 0, rng.integers(1, 13, (3, 7)))
    (a, ca), (b, cb) = plain.forward(ids, pad), tiled.forward(ids, pad)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    g = rng.standard_normal(a.shape)
    plain.zero_grad(), tiled.zero_grad()
    plain.backward(g, ca), tiled.backward(g, cb)
    for (name, p), (_, q) in zip(plain.named_parameters(), tiled.named_parameters()):
        np.testing.assert_allclose(q.grad, p.grad, rtol=0, atol=1e-12, err_msg=name)
    state = tiled.eval().start_decoding(3)
    steps = [tiled.decode_step(state, ids[:, t]) for t in range(7)]
    np.testing.assert_allclose(np.stack(steps, 1), plain.eval()(ids), rtol=0, atol=1e-12)


def test_tiled_attention_refuses_dropout_by_name():
    with pytest.raises(ValueError, match="tiled.*dropout"):
        TransformerLM(13, 8, 4, 1, 12, dropout=0.1, attention_impl="tiled")


def test_plain_attention_gives_the_weights_of_a_tiled_model():
    from numtransformer.attention import plain_attention

    lm = _lm(np.random.default_rng(7), 2, None, attention_impl="tiled")
    ids = np.random.default_rng(8).integers(0, 13, (1, 5))
    with plain_attention(lm):
        _, cache = lm.forward(ids)
    assert cache.blocks[0].self_attn.alpha.shape == (1, 4, 5, 5)
    assert all(b.self_attn.attention_impl == "tiled" for b in lm.blocks)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_at_selected_positions(tie):
    """forward(ids, logits_at=mask) gives the selected rows of the full logits, and
    backward from them equals the full backward with dlogits zero elsewhere."""
    rng = np.random.default_rng(9)
    lm = _lm(np.random.default_rng(10), 2, None, tie=tie)
    ids = rng.integers(0, 13, (2, 6))
    at = rng.random((2, 6)) < 0.5
    at[0, 0] = True
    full, c_full = lm.forward(ids)
    part, c_part = lm.forward(ids, logits_at=at)
    np.testing.assert_allclose(part, full[at], rtol=0, atol=1e-13)
    g = rng.standard_normal(part.shape)
    G = np.zeros(full.shape)
    G[at] = g
    lm.zero_grad()
    lm.backward(G, c_full)
    want = {n: p.grad.copy() for n, p in lm.named_parameters()}
    lm.zero_grad()
    lm.backward(g, c_part)
    for n, p in lm.named_parameters():
        np.testing.assert_allclose(p.grad, want[n], rtol=0, atol=1e-12, err_msg=n)
