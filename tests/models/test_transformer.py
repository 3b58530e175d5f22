import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from numtransformer import CrossEntropyLoss, causal_mask, gradcheck
from numtransformer.gradcheck import relu_margin
from numtransformer.decoding import beam_search, greedy_decode, sample
from numtransformer.models import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerLM,
)
from numtransformer.optim import Adam
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64


def _pad_mask(rng, B, T):
    """Right padding with at least one real position per row."""
    lengths = rng.integers(1, T + 1, B)
    return np.arange(T)[None, :] >= lengths[:, None]


# The gradient checks draw their sizes, masks and seeds.  A draw whose ReLU inputs come
# within 2e-3 of the kink is rejected (see numtransformer.gradcheck.relu_margin).
RELU_MARGIN = 2e-3


def _clear_of_the_kink(module, *args, **kwargs):
    assume(relu_margin(module, *args, **kwargs) > RELU_MARGIN)


@given(B=st.integers(1, 2), T=st.integers(1, 4), heads=st.sampled_from([1, 2]),
       norm_first=st.booleans(), activation=st.sampled_from(["relu", "gelu"]),
       dropout=st.sampled_from([0.0, 0.2]), seed=seeds)
@settings(max_examples=8)
def test_gradcheck_encoder_layer(B, T, heads, norm_first, activation, dropout, seed):
    rng = np.random.default_rng(seed)
    layer = TransformerEncoderLayer(4, heads, 6, dropout, activation, norm_first=norm_first,
                                    dtype=F64, rng=rng)
    x, mask = rng.standard_normal((B, T, 4)), _pad_mask(rng, B, T)
    _clear_of_the_kink(layer, x, src_key_padding_mask=mask)
    gradcheck(layer, x, src_key_padding_mask=mask, seed=seed, max_entries=24).assert_passed()


@given(B=st.integers(1, 2), T=st.integers(1, 4), S=st.integers(1, 4), norm_first=st.booleans(),
       activation=st.sampled_from(["relu", "gelu"]), seed=seeds)
@settings(max_examples=8)
def test_gradcheck_decoder_layer(B, T, S, norm_first, activation, seed):
    rng = np.random.default_rng(seed)
    layer = TransformerDecoderLayer(4, 2, 6, 0.1, activation, norm_first=norm_first,
                                    dtype=F64, rng=rng)
    x, m = rng.standard_normal((B, T, 4)), rng.standard_normal((B, S, 4))
    kw = dict(tgt_mask=causal_mask(T), tgt_key_padding_mask=_pad_mask(rng, B, T),
              memory_key_padding_mask=_pad_mask(rng, B, S))
    _clear_of_the_kink(layer, x, m, **kw)
    gradcheck(layer, x, m, seed=seed, max_entries=24, **kw).assert_passed()


@given(B=st.integers(1, 2), T=st.integers(1, 4), S=st.integers(1, 5),
       layers=st.integers(1, 2), heads=st.sampled_from([1, 2]), norm_first=st.booleans(),
       activation=st.sampled_from(["relu", "gelu"]), seed=seeds)
@settings(max_examples=4)
def test_gradcheck_stacks(B, T, S, layers, heads, norm_first, activation, seed):
    rng = np.random.default_rng(seed)
    kw = dict(norm_first=norm_first, dtype=F64, rng=rng)
    enc = TransformerEncoder(layers, 4, heads, 6, 0.0, activation, **kw)
    dec = TransformerDecoder(layers, 4, heads, 6, 0.0, activation, final_norm=True, **kw)
    x, m = rng.standard_normal((B, T, 4)), rng.standard_normal((B, S, 4))
    src_mask, mem_mask = _pad_mask(rng, B, T), _pad_mask(rng, B, S)
    _clear_of_the_kink(enc, x, src_key_padding_mask=src_mask)
    _clear_of_the_kink(dec, x, m, tgt_mask=causal_mask(T), memory_key_padding_mask=mem_mask)
    gradcheck(enc, x, src_key_padding_mask=src_mask, seed=seed, max_entries=16).assert_passed()
    report = gradcheck(dec, x, m, tgt_mask=causal_mask(T), memory_key_padding_mask=mem_mask,
                       seed=seed, max_entries=16)
    report.assert_passed()
    assert {"input[0]", "input[1]", f"layers.{layers - 1}.cross_attn.in_proj.W",
            "norm.gamma"} <= set(report.errors)


def _tiny(rng, **kw):
    cfg = dict(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=2,
               dim_feedforward=12, dropout=0.1, dtype=F64, rng=rng)
    cfg.update(kw)
    return Transformer(7, 7, **cfg)


def _ids(rng, B, T, V, pad):
    """Token ids in [3, V) (no specials), right-padded with 0 where ``pad`` (B, T)."""
    ids = rng.integers(3, V, (B, T))
    ids[pad] = 0
    return ids


OPTIONS = st.sampled_from([
    dict(),
    dict(norm_first=True, activation="gelu", tie_output=True, share_embeddings=True),
    dict(positional="learned", tie_output=True),
    dict(norm_first=True, activation="gelu_tanh", positional="learned"),
])


@given(B=st.integers(1, 2), S=st.integers(1, 4), T=st.integers(1, 4), kw=OPTIONS,
       heads=st.sampled_from([1, 2]), dropout=st.sampled_from([0.0, 0.1]), seed=seeds)
@settings(max_examples=4)
def test_gradcheck_whole_transformer(B, S, T, kw, heads, dropout, seed):
    rng = np.random.default_rng(seed)
    model = _tiny(rng, nhead=heads, dropout=dropout, **kw)
    src_pad, tgt_pad = _pad_mask(rng, B, S), _pad_mask(rng, B, T)
    src, tgt = _ids(rng, B, S, 7, src_pad), _ids(rng, B, T, 7, tgt_pad)
    _clear_of_the_kink(model, src, tgt, src_pad, tgt_pad)
    report = gradcheck(model, src, tgt, src_pad, tgt_pad, seed=seed, max_entries=12)
    report.assert_passed()
    names = set(report.errors)
    assert "decoder.layers.1.cross_attn.out_proj.W" in names and "src_embed.W" in names
    if kw.get("share_embeddings"):
        assert "tgt_embed.W" not in names and "generator.E" not in names  # one tensor, one row


@given(B=st.integers(1, 2), T=st.integers(1, 5), layers=st.integers(1, 2),
       heads=st.sampled_from([1, 2]), activation=st.sampled_from(["gelu", "relu"]),
       positional=st.sampled_from(["learned", "sinusoidal"]), tie=st.booleans(), seed=seeds)
@settings(max_examples=8)
def test_gradcheck_lm(B, T, layers, heads, activation, positional, tie, seed):
    rng = np.random.default_rng(seed)
    lm = TransformerLM(9, 8, heads, layers, 12, dropout=0.0, activation=activation,
                       positional=positional, tie_output=tie, dtype=F64, rng=rng)
    pad = _pad_mask(rng, B, T)
    ids = _ids(rng, B, T, 9, pad)
    _clear_of_the_kink(lm, ids, pad)
    report = gradcheck(lm, ids, pad, seed=seed, max_entries=12)
    report.assert_passed()
    assert "embed.W" in report.errors and f"blocks.{layers - 1}.ffn.linear2.W" in report.errors


def test_tied_weight_gradient_is_the_sum_of_both_uses():
    rng = np.random.default_rng(4)
    model = _tiny(rng, tie_output=True, dropout=0.0)
    assert model.generator.E is model.tgt_embed.W
    src, tgt = np.array([[3, 4]]), np.array([[1, 3, 5]])
    logits, cache = model.forward(src, tgt)
    g = rng.standard_normal(logits.shape)
    model.zero_grad()
    model.generator.backward(g, cache.generator)
    from_output = model.tgt_embed.W.grad.copy()
    model.zero_grad()
    model.backward(g, cache)
    total = model.tgt_embed.W.grad.copy()
    assert not np.allclose(total, from_output)  # the lookup contributed too
    assert np.abs(from_output).sum() > 0


@given(B=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(2, 6), kw=OPTIONS, seed=seeds)
@settings(max_examples=10)
def test_causality(B, S, T, kw, seed):
    """Changing target token t+1 never changes the logits at positions <= t (bit for bit:
    the causal mask removes the later keys before the softmax, it does not down-weight)."""
    rng = np.random.default_rng(seed)
    model = _tiny(rng, **kw).eval()
    src, tgt = rng.integers(3, 7, (B, S)), rng.integers(3, 7, (B, T))
    base = model(src, tgt)
    t = int(rng.integers(0, T - 1))
    changed = tgt.copy()
    changed[:, t + 1] = (changed[:, t + 1] - 2) % 4 + 3
    out = model(src, changed)
    np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
    assert not np.allclose(out[:, t + 1], base[:, t + 1])


@given(B=st.integers(1, 3), T=st.integers(2, 7), layers=st.integers(1, 2), seed=seeds)
@settings(max_examples=8)
def test_lm_causality(B, T, layers, seed):
    rng = np.random.default_rng(seed)
    lm = TransformerLM(9, 8, 2, layers, 12, dropout=0.0, dtype=F64, rng=rng).eval()
    ids = rng.integers(3, 9, (B, T))
    base = lm(ids)
    t = int(rng.integers(0, T - 1))
    changed = ids.copy()
    changed[:, t + 1] = (changed[:, t + 1] - 2) % 6 + 3
    np.testing.assert_array_equal(lm(changed)[:, : t + 1], base[:, : t + 1])


@given(B=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(1, 5), extra=st.integers(1, 4),
       kw=OPTIONS, seed=seeds)
@settings(max_examples=10)
def test_padding_the_source_does_not_change_the_decoder(B, S, T, extra, kw, seed):
    rng = np.random.default_rng(seed)
    model = _tiny(rng, **kw).eval()
    src_pad = _pad_mask(rng, B, S)
    src, tgt = _ids(rng, B, S, 7, src_pad), rng.integers(3, 7, (B, T))
    base = model(src, tgt, src_pad)
    padded = np.concatenate([src, np.zeros((B, extra), np.int64)], axis=1)
    np.testing.assert_allclose(model(padded, tgt, padded == 0), base, rtol=1e-12, atol=1e-12)


@given(B=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(1, 7), kw=OPTIONS, seed=seeds)
@settings(max_examples=10)
def test_incremental_decoding_equals_full_recompute(B, S, T, kw, seed):
    rng = np.random.default_rng(seed)
    model = _tiny(rng, **kw).eval()
    src_pad = _pad_mask(rng, B, S)
    src, tgt = _ids(rng, B, S, 7, src_pad), rng.integers(3, 7, (B, T))
    full = model(src, tgt, src_pad)
    state = model.start_decoding(src, src_pad)
    for t in range(T):
        step = model.decode_step(state, tgt[:, t])
        np.testing.assert_allclose(step, full[:, t], rtol=1e-10, atol=1e-10)


@given(B=st.integers(1, 3), T=st.integers(2, 8), prefix=st.integers(1, 4),
       positional=st.sampled_from(["learned", "sinusoidal"]), seed=seeds)
@settings(max_examples=10)
def test_lm_incremental_decoding_equals_full_recompute(B, T, prefix, positional, seed):
    """A prompt of ``prefix`` tokens in one call, then one token per call."""
    rng = np.random.default_rng(seed)
    lm = TransformerLM(9, 8, 2, 2, 12, dropout=0.1, positional=positional, dtype=F64,
                       rng=rng).eval()
    ids = rng.integers(0, 9, (B, T))
    prefix = min(prefix, T)
    full = lm(ids)
    state = lm.start_decoding(B)
    np.testing.assert_allclose(lm.decode_step(state, ids[:, :prefix]), full[:, prefix - 1],
                               rtol=1e-10, atol=1e-10)
    for t in range(prefix, T):
        np.testing.assert_allclose(lm.decode_step(state, ids[:, t]), full[:, t], rtol=1e-10,
                                   atol=1e-10)


def test_greedy_equals_beam_of_one_and_beam_finds_higher_scores():
    rng = np.random.default_rng(8)
    model = _tiny(rng, d_model=16, dim_feedforward=24).eval()
    src = rng.integers(3, 7, (3, 5))
    greedy = greedy_decode(model, src, max_len=8)
    assert beam_search(model, src, beam_size=1, max_len=8, alpha=0.0) == greedy
    hyps = beam_search(model, src, beam_size=4, max_len=8, alpha=0.0, return_all=True)
    assert all(h[0].score >= h[-1].score for h in hyps)


def _overfit(model, src, tgt_in, tgt_out, steps, lr=3e-3):
    loss_fn = CrossEntropyLoss(ignore_index=0)
    opt = Adam(model, lr=lr)
    for _ in range(steps):
        logits, cache = model.forward(src, tgt_in, src == 0, tgt_in == 0)
        loss, lcache = loss_fn.forward(logits, tgt_out)
        model.zero_grad()
        model.backward(loss_fn.backward(1.0, lcache), cache)
        opt.step()
    return float(loss)


def test_a_tiny_transformer_overfits_a_few_sequences():
    rng = np.random.default_rng(9)
    model = Transformer(8, 8, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                        dim_feedforward=32, dropout=0.0, rng=rng)
    src = rng.integers(3, 8, (4, 5))
    tgt_out = np.concatenate([src[:, ::-1], np.full((4, 1), 2)], axis=1)  # reverse + <eos>
    tgt_in = np.concatenate([np.ones((4, 1), np.int64), src[:, ::-1]], axis=1)
    assert _overfit(model, src, tgt_in, tgt_out, 150, lr=1e-2) < 0.05
    model.eval()
    assert greedy_decode(model, src, max_len=7) == [list(r) for r in src[:, ::-1]]
    assert beam_search(model, src, beam_size=3, max_len=7) == [list(r) for r in src[:, ::-1]]


def test_lm_sampling_shapes_and_greedy_sampling():
    rng = np.random.default_rng(10)
    lm = TransformerLM(9, 8, 2, 1, 12, dropout=0.0, rng=rng).eval()
    out = sample(lm, np.array([[1, 2], [3, 4]]), 5, temperature=0.8, top_k=3, rng=0)
    assert out.shape == (2, 7) and (out[:, :2] == [[1, 2], [3, 4]]).all()
    a = sample(lm, np.array([[1, 2]]), 4, temperature=0)
    b = sample(lm, np.array([[1, 2]]), 4, temperature=0)
    assert np.array_equal(a, b)


def test_float32_preserved():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    m = rng.standard_normal((2, 4, 8)).astype(np.float32)
    check_dtype_preserved(TransformerEncoderLayer(8, 2, 16, 0.1, rng=rng), x)
    check_dtype_preserved(TransformerDecoderLayer(8, 2, 16, 0.1, "gelu", rng=rng), x, m,
                          tgt_mask=causal_mask(3))
    model = Transformer(7, 7, 8, 2, 1, 1, 16, rng=rng)
    logits, cache = model.forward(np.array([[3, 4]]), np.array([[1, 5, 6]]))
    assert logits.dtype == np.float32
    model.backward(rng.standard_normal(logits.shape).astype(np.float32), cache)
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_bad_input():
    rng = np.random.default_rng(12)
    model = Transformer(7, 9, 8, 2, 1, 1, 16, rng=rng)
    with pytest.raises(ValueError, match=r"Transformer: src_ids contains id 7, expected ids in \[0, 7\)"):
        model(np.array([[7]]), np.array([[1]]))
    with pytest.raises(ValueError, match="tgt_in_ids must be"):
        model(np.array([[3]]), np.array([[1], [1]]))
    with pytest.raises(ValueError, match="src_pad_mask has shape"):
        model(np.array([[3, 4]]), np.array([[1]]), np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="not divisible"):
        TransformerEncoderLayer(10, 3)
    with pytest.raises(ValueError, match="TransformerEncoderLayer: src has last dim 7, expected d_model=8"):
        TransformerEncoderLayer(8, 2, rng=0)(np.zeros((1, 2, 7), np.float32))
    with pytest.raises(ValueError, match="share_embeddings"):
        Transformer(5, 6, 8, 2, share_embeddings=True)
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(8, 2, activation="swish")


# -- the residual connections and the norm factory ----------------------------------------
ENCODER_LAYER_KEYS = ["ffn.linear1.W", "ffn.linear1.b", "ffn.linear2.W", "ffn.linear2.b",
                      "norm1.beta", "norm1.gamma", "norm2.beta", "norm2.gamma",
                      "self_attn.in_proj.W", "self_attn.in_proj.b", "self_attn.out_proj.W",
                      "self_attn.out_proj.b"]
DECODER_LAYER_KEYS = sorted(ENCODER_LAYER_KEYS + [
    "cross_attn.in_proj.W", "cross_attn.in_proj.b", "cross_attn.out_proj.W",
    "cross_attn.out_proj.b", "norm3.beta", "norm3.gamma"])


@pytest.mark.parametrize("norm_first", [False, True])
def test_parameter_names_are_the_layers_own(norm_first):
    """The residual connections own nothing: checkpoints and the PyTorch interop
    keep reading norm1.gamma, self_attn.in_proj.W, ..."""
    enc = TransformerEncoderLayer(8, 2, 16, norm_first=norm_first, rng=0)
    dec = TransformerDecoderLayer(8, 2, 16, norm_first=norm_first, rng=0)
    assert sorted(enc.state_dict()) == ENCODER_LAYER_KEYS
    assert sorted(dec.state_dict()) == DECODER_LAYER_KEYS
    model = Transformer(7, 9, 8, 2, 1, 2, 16, norm_first=norm_first, rng=0)
    keys = model.state_dict()
    assert ("encoder.norm.gamma" in keys) == norm_first == ("decoder.norm.beta" in keys)
    assert sorted(k[len("decoder.layers.1."):] for k in keys
                  if k.startswith("decoder.layers.1.")) == DECODER_LAYER_KEYS
    lm = TransformerLM(11, 8, 2, 2, 16, rng=0)
    assert {"norm.gamma", "norm.beta", "blocks.1.norm2.gamma"} <= set(lm.state_dict())


def test_the_norm_argument_reaches_every_norm(monkeypatch):
    """One argument chooses the norm of every layer and final norm (a norm kind
    added to the factory's table, as RMSNorm will be)."""
    from numtransformer.layers import LayerNorm, norms

    class ProbeNorm(LayerNorm):
        pass

    monkeypatch.setitem(norms._NORMS, "probe",
                        lambda d, eps, dtype: ProbeNorm(d, eps, dtype=dtype))
    models = [Transformer(7, 9, 8, 2, 1, 2, 16, norm_first=True, norm="probe", rng=0),
              TransformerLM(11, 8, 2, 2, 16, norm="probe", rng=0),
              TransformerDecoder(2, 8, 2, 16, final_norm=True, norm="probe", rng=0)]
    for model in models:
        kinds = {type(m) for _, m in model.named_modules() if isinstance(m, LayerNorm)}
        assert kinds == {ProbeNorm}, type(model).__name__
    assert models[0].config["norm"] == models[1].config["norm"] == "probe"
    default = Transformer(7, 9, 8, 2, 1, 2, 16, norm_first=True, rng=0)
    assert sorted(default.state_dict()) == sorted(models[0].state_dict())
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(default(ids, ids), models[0](ids, ids))


def test_bad_norm_is_named():
    for build, who in [(lambda: TransformerEncoderLayer(8, 2, norm="batchnorm"),
                        "TransformerEncoderLayer"),
                       (lambda: TransformerDecoderLayer(8, 2, norm="batchnorm"),
                        "TransformerDecoderLayer"),
                       (lambda: TransformerEncoder(1, 8, 2, norm="batchnorm"), "TransformerEncoder"),
                       (lambda: Transformer(5, 5, 8, 2, norm="batchnorm"), "Transformer"),
                       (lambda: TransformerLM(5, 8, 2, norm="batchnorm"), "TransformerLM")]:
        with pytest.raises(ValueError, match=f"^{who}: norm must be one of 'layernorm', "
                                             f"'rmsnorm', got 'batchnorm'"):
            build()


@pytest.mark.parametrize("norm_first", [False, True])
def test_modules_replaced_after_construction_are_used(norm_first):
    """The layer builds its residual connections on demand around its own modules
    (the interop replaces self_attn; a user may replace a norm)."""
    from numtransformer.attention import MultiHeadAttention
    from numtransformer.layers import LayerNorm

    rng = np.random.default_rng(5)
    layer = TransformerEncoderLayer(8, 2, 16, 0.0, norm_first=norm_first, rng=rng)
    layer.self_attn = MultiHeadAttention(8, 2, rng=rng)
    layer.norm1 = LayerNorm(8)
    layer.norm1.beta.data[...] = 0.5
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    a, n1, n2, ffn = layer.self_attn, layer.norm1, layer.norm2, layer.ffn
    if norm_first:
        h = x + a(n1(x))
        want = h + ffn(n2(h))
    else:
        h = n1(x + a(x))
        want = n2(h + ffn(h))
    np.testing.assert_allclose(layer(x), want, rtol=1e-6, atol=1e-6)
    _, cache = layer.forward(x)
    layer.zero_grad()
    layer.backward(np.ones_like(x), cache)
    assert layer.norm1.beta.grad.any() and layer.self_attn.in_proj.W.grad.any()
