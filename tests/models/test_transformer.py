import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer import CrossEntropyLoss, causal_mask, gradcheck
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


@given(B=st.integers(1, 2), T=st.integers(1, 4), heads=st.sampled_from([1, 2]),
       norm_first=st.booleans(), activation=st.sampled_from(["relu", "gelu"]),
       dropout=st.sampled_from([0.0, 0.2]), seed=seeds)
@settings(max_examples=8)
def test_gradcheck_encoder_layer(B, T, heads, norm_first, activation, dropout, seed):
    rng = np.random.default_rng(seed)
    layer = TransformerEncoderLayer(4, heads, 6, dropout, activation, norm_first=norm_first,
                                    dtype=F64, rng=rng)
    x = rng.standard_normal((B, T, 4))
    gradcheck(layer, x, src_key_padding_mask=_pad_mask(rng, B, T), seed=seed,
              max_entries=24).assert_passed()


@given(B=st.integers(1, 2), T=st.integers(1, 4), S=st.integers(1, 4), norm_first=st.booleans(),
       activation=st.sampled_from(["relu", "gelu"]), seed=seeds)
@settings(max_examples=8)
def test_gradcheck_decoder_layer(B, T, S, norm_first, activation, seed):
    rng = np.random.default_rng(seed)
    layer = TransformerDecoderLayer(4, 2, 6, 0.1, activation, norm_first=norm_first,
                                    dtype=F64, rng=rng)
    x, m = rng.standard_normal((B, T, 4)), rng.standard_normal((B, S, 4))
    gradcheck(layer, x, m, tgt_mask=causal_mask(T), tgt_key_padding_mask=_pad_mask(rng, B, T),
              memory_key_padding_mask=_pad_mask(rng, B, S), seed=seed,
              max_entries=24).assert_passed()


@pytest.mark.parametrize("norm_first", [False, True])
def test_gradcheck_stacks(norm_first):
    rng = np.random.default_rng(1)
    enc = TransformerEncoder(2, 4, 2, 6, 0.0, norm_first=norm_first, dtype=F64, rng=rng)
    dec = TransformerDecoder(2, 4, 2, 6, 0.0, norm_first=norm_first, final_norm=True,
                             dtype=F64, rng=rng)
    x, m = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    gradcheck(enc, x, src_key_padding_mask=_pad_mask(rng, 2, 3), max_entries=16).assert_passed()
    report = gradcheck(dec, x, m, tgt_mask=causal_mask(3), max_entries=16)
    report.assert_passed()
    assert {"input[0]", "input[1]", "layers.1.cross_attn.in_proj.W", "norm.gamma"} <= set(
        report.errors)


def _tiny(rng, **kw):
    cfg = dict(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=2,
               dim_feedforward=12, dropout=0.1, dtype=F64, rng=rng)
    cfg.update(kw)
    return Transformer(7, 7, **cfg)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(norm_first=True, activation="gelu", tie_output=True, share_embeddings=True),
    dict(positional="learned", tie_output=True),
])
def test_gradcheck_whole_transformer(kw):
    rng = np.random.default_rng(2)
    model = _tiny(rng, **kw)
    src = np.array([[3, 4, 5, 0], [2, 6, 1, 6]])
    tgt = np.array([[1, 3, 4], [1, 5, 0]])
    report = gradcheck(model, src, tgt, src == 0, tgt == 0, max_entries=12)
    report.assert_passed()
    names = set(report.errors)
    assert "decoder.layers.1.cross_attn.out_proj.W" in names and "src_embed.W" in names
    if kw.get("share_embeddings"):
        assert "tgt_embed.W" not in names and "generator.E" not in names  # one tensor, one row


def test_gradcheck_lm():
    rng = np.random.default_rng(3)
    lm = TransformerLM(9, 8, 2, 2, 12, dropout=0.1, dtype=F64, rng=rng)
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])
    report = gradcheck(lm, ids, ids == 0, max_entries=12)
    report.assert_passed()
    assert "embed.W" in report.errors and "blocks.1.ffn.linear2.W" in report.errors


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


def test_causality():
    rng = np.random.default_rng(5)
    model = _tiny(rng).eval()
    src = rng.integers(3, 7, (2, 5))
    tgt = rng.integers(3, 7, (2, 6))
    base = model(src, tgt)
    for t in range(5):
        changed = tgt.copy()
        changed[:, t + 1] = (changed[:, t + 1] - 2) % 4 + 3
        out = model(src, changed)
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])


def test_padding_the_source_does_not_change_the_decoder():
    rng = np.random.default_rng(6)
    model = _tiny(rng).eval()
    src = rng.integers(3, 7, (2, 4))
    tgt = rng.integers(3, 7, (2, 3))
    base = model(src, tgt, src == 0)
    padded = np.concatenate([src, np.zeros((2, 3), np.int64)], axis=1)
    np.testing.assert_allclose(model(padded, tgt, padded == 0), base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm_first", [False, True])
def test_incremental_decoding_equals_full_recompute(norm_first):
    rng = np.random.default_rng(7)
    model = _tiny(rng, norm_first=norm_first).eval()
    src = np.array([[3, 4, 5, 0, 0], [6, 5, 4, 3, 6]])
    tgt = rng.integers(3, 7, (2, 6))
    full = model(src, tgt, src == 0)
    state = model.start_decoding(src, src == 0)
    for t in range(6):
        step = model.decode_step(state, tgt[:, t])
        np.testing.assert_allclose(step, full[:, t], rtol=1e-10, atol=1e-10)
    lm = TransformerLM(9, 8, 2, 2, 12, dropout=0.1, dtype=F64, rng=rng).eval()
    ids = rng.integers(0, 9, (2, 7))
    full = lm(ids)
    st_ = lm.start_decoding(2)
    np.testing.assert_allclose(lm.decode_step(st_, ids[:, :3]), full[:, 2], rtol=1e-10,
                               atol=1e-10)
    for t in range(3, 7):
        np.testing.assert_allclose(lm.decode_step(st_, ids[:, t]), full[:, t], rtol=1e-10,
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
