import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer import CrossEntropyLoss, gradcheck
from numtransformer.data.tokenizers import EOS_ID
from numtransformer.decoding import beam_search, greedy_decode
from numtransformer.models.seq2seq import (BahdanauDecoder, Encoder, LuongDecoder, Seq2Seq,
                                           Seq2SeqState)
from numtransformer.optim import Adam
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64
SCORES = ["dot", "scaled_dot", "general", "additive", "cosine", "location", None]


def _randomized(module, rng, scale=0.5):
    """N(0, 0.5^2) parameters: no bias at 0, attention neither uniform nor saturated."""
    for p in module.parameters():
        p.data = scale * rng.standard_normal(p.shape)
    return module


def _right_pad_mask(rng, B, S):
    """Right padding, at least one real position per row, some row padded when S > 1."""
    lengths = rng.integers(1, S + 1, B)
    if S > 1:
        lengths[0] = int(rng.integers(1, S))
    return np.arange(S)[None, :] >= lengths[:, None]


def _decoder_inputs(rng, B, T, S, D, H, L, cell, V=7):
    y = rng.integers(0, V, (B, T))
    M = rng.standard_normal((B, S, D))
    h0 = rng.standard_normal((L, B, H))
    c0 = rng.standard_normal((L, B, H)) if cell == "lstm" else None
    return y, M, h0, c0, _right_pad_mask(rng, B, S)


# -- gradient checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("score", SCORES)
@given(B=st.integers(1, 2), T=st.integers(1, 3), S=st.integers(1, 4), L=st.integers(1, 2),
       cell=st.sampled_from(["lstm", "gru"]), input_feeding=st.booleans(),
       dropout=st.sampled_from([0.0, 0.25]), seed=seeds)
@settings(max_examples=3)
def test_gradcheck_luong_decoder(score, B, T, S, L, cell, input_feeding, dropout, seed):
    rng = np.random.default_rng(seed)
    H = 4
    D = H if score in ("dot", "scaled_dot", "cosine") else 5
    dec = LuongDecoder(7, 3, H, D, L, cell, score, input_feeding, attn_size=3, max_src_len=5,
                       score_options={"beta": 2.0} if score == "cosine" else None,
                       dropout=dropout, dtype=F64, rng=rng)
    inputs = _decoder_inputs(rng, B, T, S, D, H, L, cell)
    report = gradcheck(_randomized(dec, rng), *inputs, seed=seed, max_entries=8)
    report.assert_passed()
    assert {"input[1]", "input[2]", "W_c.W", "W_s.W", "embed.W"} <= set(report.errors)
    if cell == "lstm":
        assert "input[3]" in report.errors


@given(B=st.integers(1, 2), T=st.integers(1, 3), S=st.integers(1, 4), L=st.integers(1, 2),
       cell=st.sampled_from(["lstm", "gru", "rnn"]), dropout=st.sampled_from([0.0, 0.25]),
       seed=seeds)
@settings(max_examples=6)
def test_gradcheck_bahdanau_decoder(B, T, S, L, cell, dropout, seed):
    rng = np.random.default_rng(seed)
    dec = BahdanauDecoder(7, 3, 4, 6, L, cell, attn_size=3, dropout=dropout, dtype=F64, rng=rng)
    inputs = _decoder_inputs(rng, B, T, S, 6, 4, L, cell)
    report = gradcheck(_randomized(dec, rng), *inputs, seed=seed, max_entries=8)
    report.assert_passed()
    assert {"score.W_q", "score.W_k", "score.v_a", "W_o.W"} <= set(report.errors)


@given(B=st.integers(1, 3), S=st.integers(1, 4), cell=st.sampled_from(["rnn", "gru", "lstm"]),
       L=st.integers(1, 2), bidirectional=st.booleans(), seed=seeds)
@settings(max_examples=6)
def test_gradcheck_encoder(B, S, cell, L, bidirectional, seed):
    rng = np.random.default_rng(seed)
    enc = Encoder(6, 3, 2, L, cell, bidirectional, dropout=0.2, decoder_hidden_size=3,
                  dtype=F64, rng=rng)
    src = rng.integers(0, 6, (B, S))
    mask = _right_pad_mask(rng, B, S)
    report = gradcheck(_randomized(enc, rng), src, mask, seed=seed, max_entries=8)
    report.assert_passed()
    assert ("bridge_c.W" in report.errors) == (cell == "lstm")


@given(B=st.integers(1, 2), S=st.integers(1, 4), seed=seeds)
@settings(max_examples=3)
def test_gradcheck_lstmn_encoder(B, S, seed):
    rng = np.random.default_rng(seed)
    enc = _randomized(Encoder(6, 3, 3, cell="lstmn", decoder_hidden_size=4, dtype=F64,
                              rng=rng), rng)
    for p in (enc.rnn.W_h, enc.rnn.W_x, enc.rnn.W_ht, enc.rnn.v):
        p.data = 3 * p.data  # sharper intra-attention, so its gradients are not tiny
    src = rng.integers(0, 6, (B, S))
    gradcheck(enc, src, _right_pad_mask(rng, B, S), seed=seed, max_entries=8).assert_passed()


MODELS = {
    "luong-lstm-bi-feed": dict(bidirectional=True, score="general"),
    "luong-gru-2layers-nofeed": dict(cell="gru", num_layers=2, score="dot",
                                     input_feeding=False),
    "bahdanau-gru-bi": dict(attention="bahdanau", cell="gru", bidirectional=True),
    "bahdanau-lstm-bi": dict(attention="bahdanau", cell="lstm", bidirectional=True),
    "none-lstm-bi": dict(attention="none", bidirectional=True),
    "none-gru-nofeed": dict(attention="none", cell="gru", input_feeding=False),
    "lstmn-encoder": dict(encoder_cell="lstmn", score="additive"),
}


def _tiny(rng, **kw):
    return Seq2Seq(7, 9, embed_dim=4, hidden_size=4, dropout=0.1, dtype=F64, rng=rng, **kw)


def _batch(rng, B, S, T):
    """Right-padded source (ids 1..6) and target input (<bos> then ids 3..8) of drawn sizes."""
    src_pad, tgt_pad = _right_pad_mask(rng, B, S), _right_pad_mask(rng, B, T)
    src, tgt = rng.integers(1, 7, (B, S)), rng.integers(3, 9, (B, T))
    tgt[:, 0] = 1
    src[src_pad], tgt[tgt_pad] = 0, 0
    return src, tgt, src_pad, tgt_pad


@pytest.mark.parametrize("name", sorted(MODELS))
@given(B=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(1, 4), seed=seeds)
@settings(max_examples=3)
def test_gradcheck_full_models(name, B, S, T, seed):
    rng = np.random.default_rng(seed)
    model = _randomized(_tiny(rng, **MODELS[name]), rng)
    src, tgt, src_pad, tgt_pad = _batch(rng, B, S, T)
    report = gradcheck(model, src, tgt, src_pad, tgt_pad, seed=seed, max_entries=6)
    report.assert_passed()
    names = set(report.errors)
    assert {"encoder.embed.W", "encoder.bridge_h.W", "decoder.embed.W", "decoder.W_s.W"} <= names


# -- properties -----------------------------------------------------------------------------------


def _loss_and_grads(model, src, tgt_in, tgt_out):
    loss_fn = CrossEntropyLoss(ignore_index=0)
    logits, cache = model.forward(src, tgt_in, src == 0, tgt_in == 0)
    loss, lcache = loss_fn.forward(logits, tgt_out)
    model.zero_grad()
    model.backward(loss_fn.backward(1.0, lcache), cache)
    return float(loss), logits, {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(MODELS))
@given(B=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(1, 4), extra_src=st.integers(1, 3),
       extra_tgt=st.integers(1, 3), seed=seeds)
@settings(max_examples=4)
def test_padding_leaves_loss_and_gradients_unchanged(name, B, S, T, extra_src, extra_tgt, seed):
    rng = np.random.default_rng(seed)
    model = _tiny(rng, **MODELS[name]).eval()
    src, tgt_in, _, tgt_pad = _batch(rng, B, S, T)
    tgt_out = np.concatenate([tgt_in[:, 1:], np.zeros((B, 1), tgt_in.dtype)], axis=1)
    tgt_out[np.arange(B), (~tgt_pad).sum(axis=1) - 1] = 2  # <eos> after the last real token
    loss, logits, grads = _loss_and_grads(model, src, tgt_in, tgt_out)

    def pad(a, n):
        return np.concatenate([a, np.zeros((a.shape[0], n), a.dtype)], axis=1)

    loss2, logits2, grads2 = _loss_and_grads(model, pad(src, extra_src), pad(tgt_in, extra_tgt),
                                             pad(tgt_out, extra_tgt))
    assert abs(loss - loss2) < 1e-12
    real = tgt_out != 0
    np.testing.assert_allclose(logits2[:, :T][real], logits[real], rtol=1e-12, atol=1e-12)
    for n in grads:
        np.testing.assert_allclose(grads2[n], grads[n], rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("name", sorted(MODELS))
@given(B=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(1, 6), seed=seeds)
@settings(max_examples=4)
def test_incremental_decoding_equals_teacher_forcing(name, B, S, T, seed):
    rng = np.random.default_rng(seed)
    model = _tiny(rng, **MODELS[name]).eval()
    src, _, _, _ = _batch(rng, B, S, 1)
    tgt = rng.integers(3, 9, (B, T))
    full = model(src, tgt, src == 0)
    state = model.start_decoding(src, src == 0)
    for t in range(tgt.shape[1]):
        step = model.decode_step(state, tgt[:, t])
        np.testing.assert_allclose(step, full[:, t], rtol=1e-10, atol=1e-10)
    alpha = model.attention_weights(src, tgt, src == 0)
    if MODELS[name].get("attention") == "none":
        assert alpha is None and state.attention == []
        return
    assert alpha.shape == (B, T, S) and len(state.attention) == T
    np.testing.assert_allclose(np.stack(state.attention, axis=1), alpha, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(alpha.sum(-1), 1.0)
    assert (alpha[np.broadcast_to((src == 0)[:, None, :], alpha.shape)] == 0).all()


def test_state_select_reorders_rows_and_attention():
    rng = np.random.default_rng(22)
    model = _tiny(rng, bidirectional=True).eval()
    src = np.array([[3, 4, 5, 0], [2, 6, 1, 6]])
    tgt = rng.integers(3, 9, (2, 4))
    state = model.start_decoding(src, src == 0)
    for t in range(2):
        model.decode_step(state, tgt[:, t])
    rows = np.array([1, 0, 1])
    picked = state.select(rows)
    assert isinstance(picked, Seq2SeqState) and picked.batch_size == 3
    ref = model.start_decoding(src[rows], (src == 0)[rows])
    for t in range(4):
        a = model.decode_step(ref, tgt[rows, t])
        if t >= 2:
            np.testing.assert_allclose(model.decode_step(picked, tgt[rows, t]), a, atol=1e-12)
    for a, b in zip(picked.attention, ref.attention):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_equals_beam_of_one(name):
    # <eos> is kept out of reach: beam search also weighs an <eos> ranked second
    # (it looks at 2k candidates), which greedy never does.
    rng = np.random.default_rng(23)
    model = _tiny(rng, **MODELS[name]).eval()
    model.decoder.W_s.b.data[EOS_ID] = -50.0
    src = rng.integers(3, 7, (3, 5))
    src[0, 3:] = 0
    greedy = greedy_decode(model, src, src == 0, max_len=6)
    assert beam_search(model, src, src == 0, beam_size=1, max_len=6, alpha=0.0) == greedy


def test_attention_free_decoder_ignores_the_memory():
    rng = np.random.default_rng(24)
    dec = LuongDecoder(7, 3, 4, 5, score=None, dtype=F64, rng=rng)
    y, M, h0, c0, mask = _decoder_inputs(rng, 2, 3, 4, 5, 4, 1, "lstm")
    out = dec(y, M, h0, c0, mask)
    np.testing.assert_array_equal(dec(y, 10 * M + 1, h0, c0, mask), out)
    assert not np.allclose(dec(y, M, h0 + 0.5, c0, mask), out)  # the bridged state is the context


def test_config_rebuilds_the_model():
    rng = np.random.default_rng(25)
    model = Seq2Seq(7, 9, embed_dim=4, hidden_size=6, bidirectional=True, attention="luong",
                    score="cosine", score_options={"beta": 3.0}, rng=rng)
    config = json.loads(json.dumps(model.config))
    clone = Seq2Seq.from_config(config, rng=1)
    clone.load_state_dict(model.state_dict())
    src, tgt = np.array([[3, 4, 0]]), np.array([[1, 5, 6]])
    np.testing.assert_array_equal(clone(src, tgt, src == 0), model(src, tgt, src == 0))
    assert clone.decoder.attention.score.beta == 3.0


def test_decode_with_attention_for_plotting():
    rng = np.random.default_rng(26)
    model = _tiny(rng, attention="bahdanau", bidirectional=True)
    src = np.array([[3, 4, 5, 0], [2, 6, 1, 6]])
    out = model.decode_with_attention(src, src == 0, max_len=4)
    assert model.training  # the mode is restored
    for (tokens, weights), n_src in zip(out, (3, 4)):
        assert weights.shape[1] == n_src and len(tokens) <= weights.shape[0] <= len(tokens) + 1
        np.testing.assert_allclose(weights.sum(-1), 1.0)
    assert greedy_decode(model.eval(), src, src == 0, max_len=4) == [t for t, _ in out]


# -- learning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, steps", [
    (dict(score="general"), 60),
    (dict(cell="gru", score="dot", input_feeding=False), 60),
    (dict(attention="bahdanau", cell="gru", bidirectional=True), 60),
    (dict(attention="none"), 80),
    (dict(encoder_cell="lstmn", score="additive"), 60),
])
def test_each_model_overfits_a_few_sequences(kw, steps):
    rng = np.random.default_rng(27)
    model = Seq2Seq(8, 8, embed_dim=16, hidden_size=32, rng=rng, **kw)
    src = rng.integers(3, 8, (4, 5))
    src[1, 4:] = 0
    rev = [list(r[r != 0][::-1]) for r in src]
    tgt_out = np.array([r + [2] + [0] * (5 - len(r)) for r in rev])
    tgt_in = np.array([[1] + r + [0] * (5 - len(r)) for r in rev])
    loss_fn, opt = CrossEntropyLoss(ignore_index=0), Adam(model, lr=2e-2)
    for _ in range(steps):
        logits, cache = model.forward(src, tgt_in, src == 0, tgt_in == 0)
        loss, lcache = loss_fn.forward(logits, tgt_out)
        model.zero_grad()
        model.backward(loss_fn.backward(1.0, lcache), cache)
        opt.step()
    assert float(loss) < 0.05
    model.eval()
    assert greedy_decode(model, src, src == 0, max_len=7) == rev
    assert beam_search(model, src, src == 0, beam_size=1, alpha=0.0, max_len=7) == rev
    assert beam_search(model, src, src == 0, beam_size=3, max_len=7) == rev


# -- dtypes and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_preserved(name):
    rng = np.random.default_rng(28)
    model = Seq2Seq(7, 9, embed_dim=4, hidden_size=4, dropout=0.1, rng=rng, **MODELS[name])
    src, tgt = np.array([[3, 4, 0], [5, 6, 2]]), np.array([[1, 5, 6], [1, 3, 0]])
    logits, cache = model.forward(src, tgt, src == 0, tgt == 0)
    assert logits.dtype == np.float32
    model.backward(rng.standard_normal(logits.shape).astype(np.float32), cache)
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    state = model.eval().start_decoding(src, src == 0)
    assert model.decode_step(state, np.array([1, 1])).dtype == np.float32
    assert all(a.dtype == np.float32 for a in state.attention)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float32_preserved_decoders_and_encoder(cell):
    rng = np.random.default_rng(29)
    y, M, h0, c0, mask = _decoder_inputs(rng, 2, 3, 4, 4, 4, 2, cell)
    M, h0 = M.astype(np.float32), h0.astype(np.float32)
    c0 = None if c0 is None else c0.astype(np.float32)
    for score in SCORES:
        for feed in (True, False):
            dec = LuongDecoder(7, 3, 4, 4, 2, cell, score, feed, max_src_len=4, dropout=0.1,
                               rng=rng)
            check_dtype_preserved(dec, y, M, h0, c0, mask)
    check_dtype_preserved(BahdanauDecoder(7, 3, 4, 4, 2, cell, dropout=0.1, rng=rng),
                          y, M, h0, c0, mask)
    enc = Encoder(7, 3, 2, 2, cell, True, 0.1, decoder_hidden_size=4, rng=rng)
    src = np.array([[3, 4, 0], [5, 6, 2]])
    out, cache = enc.forward(src, src == 0)
    assert all(o is None or o.dtype == np.float32 for o in out)
    enc.backward(tuple(None if o is None else np.ones_like(o) * 0.3 for o in out), cache)
    assert all(p.grad.dtype == np.float32 for p in enc.parameters())


def test_bad_input():
    rng = np.random.default_rng(30)
    model = Seq2Seq(7, 9, embed_dim=4, hidden_size=4, rng=rng)
    with pytest.raises(ValueError,
                       match=r"Seq2Seq: src_ids contains id 7, expected ids in \[0, 7\)"):
        model(np.array([[7]]), np.array([[1]]))
    with pytest.raises(TypeError, match="Seq2Seq: src_ids must be an integer array"):
        model(np.array([[1.0]]), np.array([[1]]))
    with pytest.raises(ValueError, match="Seq2Seq: tgt_in_ids must be"):
        model(np.array([[3]]), np.array([[1], [1]]))
    with pytest.raises(ValueError, match="Seq2Seq: src_pad_mask has shape"):
        model(np.array([[3, 4]]), np.array([[1]]), np.zeros((1, 3), bool))
    with pytest.raises(TypeError, match="src_pad_mask must be boolean"):
        model(np.array([[3, 4]]), np.array([[1]]), np.zeros((1, 2), int))
    with pytest.raises(ValueError, match="Encoder: src_pad_mask must be right padding"):
        model(np.array([[3, 4]]), np.array([[1]]), np.array([[True, False]]))
    with pytest.raises(ValueError, match="Encoder: src_pad_mask marks every position of row 1"):
        model(np.array([[3, 4], [3, 4]]), np.array([[1], [1]]),
              np.array([[False, False], [True, True]]))
    with pytest.raises(ValueError, match="Seq2Seq: tgt_pad_mask has shape"):
        model(np.array([[3]]), np.array([[1, 2]]), None, np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="tokens contains id 9"):
        model.decode_step(model.start_decoding(np.array([[3]])), np.array([9]))
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2Seq(7, 9, attention="global")
    with pytest.raises(ValueError, match="cell must be one of"):
        Seq2Seq(7, 9, cell="lstmn")
    with pytest.raises(ValueError, match="score must be one of"):
        Seq2Seq(7, 9, score="bilinear")
    with pytest.raises(ValueError, match=r"score='dot' needs the decoder hidden size \(4\) to "
                                         r"equal the memory width \(8\)"):
        Seq2Seq(7, 9, hidden_size=4, encoder_hidden_size=4, bidirectional=True, score="dot")
    with pytest.raises(ValueError, match="score='location' needs max_src_len"):
        Seq2Seq(7, 9, score="location")
    with pytest.raises(ValueError, match="make it even"):
        Seq2Seq(7, 9, hidden_size=5, bidirectional=True)
    with pytest.raises(ValueError, match="a decoder LSTM needs an initial cell state"):
        Seq2Seq(7, 9, cell="lstm", encoder_cell="gru")
    with pytest.raises(ValueError, match="cell='lstmn' is one layer in one direction"):
        Seq2Seq(7, 9, encoder_cell="lstmn", bidirectional=True)
    with pytest.raises(ValueError, match="LuongDecoder: memory has 4 positions, more than "
                                         "max_src_len=3 of the location score"):
        Seq2Seq(7, 9, score="location", max_src_len=3)(np.array([[3, 4, 5, 6]]),
                                                        np.array([[1]]))
    dec = LuongDecoder(7, 3, 4, 5, cell="lstm", rng=rng)
    y, M, h0, c0 = np.array([[1, 2]]), np.zeros((1, 3, 5), np.float32), \
        np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32)
    with pytest.raises(ValueError,
                       match="LuongDecoder: memory has last dim 6, expected memory_size=5"):
        dec(y, np.zeros((1, 3, 6), np.float32), h0, c0)
    with pytest.raises(ValueError, match=r"LuongDecoder: h0 has shape \(2, 1, 4\), expected"):
        dec(y, M, np.zeros((2, 1, 4), np.float32), c0)
    with pytest.raises(ValueError, match="LuongDecoder: c0 is required"):
        dec(y, M, h0)
    with pytest.raises(TypeError, match="LuongDecoder: memory has dtype float64"):
        dec(y, M.astype(F64), h0, c0)
    with pytest.raises(ValueError, match="LuongDecoder: memory contains 1 NaN"):
        M2 = M.copy()
        M2[0, 0, 0] = np.nan
        dec(y, M2, h0, c0)
    with pytest.raises(ValueError, match="c0 is only for cell='lstm'"):
        BahdanauDecoder(7, 3, 4, 5, cell="gru", rng=rng)(y, M, h0, c0)


def test_make_score_builds_every_score_by_name_and_names_a_wrong_one():
    from numtransformer.attention import AdditiveScore, CosineScore, DotScore, LocationScore
    from numtransformer.models.seq2seq.common import make_score

    assert isinstance(make_score("dot", 4, 4), DotScore)
    assert isinstance(make_score("concat", 3, 5), AdditiveScore)
    assert isinstance(make_score("cosine", 4, 4, options={"beta": 5.0}), CosineScore)
    assert isinstance(make_score("location", 4, 6, max_src_len=9), LocationScore)
    with pytest.raises(ValueError, match="make_score"):
        make_score("bilinear", 4, 4)
