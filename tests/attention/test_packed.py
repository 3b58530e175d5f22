"""Packed sequences (``attention.packed.Packing``) and the packed inference forwards.

``Packing``'s bookkeeping on hand examples and drawn lengths; then
``MultiHeadAttention.forward_packed``, ``TransformerEncoderLayer.forward_packed``,
``BertModel.forward_packed`` and ``SentenceEncoder.encode_packed`` against the
padded ``forward`` of the same sequences (key-padding mask, and ``causal_mask(T)``
when causal), compared on the real rows only: float64 <= 1e-13 relative, float32
within a few ulps of the tensor's largest entry."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numtransformer as nt
from numtransformer import _parallel
from numtransformer.attention.masks import causal_mask
from numtransformer.attention.multihead import MultiHeadAttention
from numtransformer.attention.packed import Packing
from numtransformer.layers.lora import apply_lora
from numtransformer.models.transformer import TransformerEncoderLayer
from numtransformer.pretrained.bert import BertModel, SentenceEncoder

from ..helpers import on_threads, seeds
from ..kernels.equal import relative_error

lengths_st = st.lists(st.integers(1, 9), min_size=1, max_size=12)
max_groups = st.integers(1, 5)
max_pads = st.sampled_from([0.0, 0.1, 0.5])
dtypes = [np.float64, np.float32]
EPS32 = float(np.finfo(np.float32).eps)


def close(got, want, dtype, ulps: float = 16):
    """float64: <= 1e-13 relative; float32: within ``ulps`` ulps of the largest entry."""
    assert got.dtype == want.dtype == dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = relative_error(got, want)
    bound = 1e-13 if dtype == np.float64 else ulps * EPS32
    assert err <= bound, f"relative error {err:.3g} > {bound:.3g}"


def padded(xs, pad_value=0.0):
    """(B, T, D) batch of the (L_i, D) arrays xs, and its key-padding mask."""
    T = max(len(x) for x in xs)
    X = np.full((len(xs), T) + xs[0].shape[1:], pad_value, xs[0].dtype)
    kpm = np.ones((len(xs), T), bool)
    for i, x in enumerate(xs):
        X[i, :len(x)] = x
        kpm[i, :len(x)] = False
    return X, kpm


def real_rows(Y, lengths):
    """The real rows of a padded (B, T, D) Y, packed end to end: (N, D)."""
    return np.concatenate([Y[i, :L] for i, L in enumerate(lengths)])


def randomize(module, rng, scale=0.5):
    """Every parameter drawn afresh (biases are zero and LoRA's B is zero at init)."""
    for _, p in module.named_parameters():
        p.data[...] = (rng.standard_normal(p.data.shape) * scale).astype(p.data.dtype)




def in_mode(mode):
    """'plain': as is; 'inference': inside inference_mode(); 'threads': inside it on
    two threads with the groups split over them."""
    if mode == "plain":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    if mode == "threads":
        stack.enter_context(on_threads(2))
    stack.enter_context(nt.inference_mode())
    return stack


modes = st.sampled_from(["plain", "inference", "threads"])


# -- Packing -------------------------------------------------------------------------------

def test_packing_hand_example():
    p = Packing([5, 5, 4, 2])
    assert len(p) == 4 and p.n_rows == 16
    np.testing.assert_array_equal(p.lengths, [5, 5, 4, 2])
    assert p.lengths.dtype == np.int64 and p.offsets.dtype == np.int64
    np.testing.assert_array_equal(p.offsets, [0, 5, 10, 14, 16])
    np.testing.assert_array_equal(p.positions, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1])
    # 4 < 0.9 * 5: the third sequence starts a group of its own at the default max_pad
    assert p.groups == [(0, 2, 5), (2, 3, 4), (3, 4, 2)]
    assert Packing([5, 5, 4, 2], max_pad=0.2).groups == [(0, 3, 5), (3, 4, 2)]
    assert Packing([5, 5, 4, 2], max_pad=0.5, max_group=2).groups == [(0, 2, 5), (2, 4, 4)]
    assert Packing([5, 5, 4, 2], max_group=1).groups == [(0, 1, 5), (1, 2, 5), (2, 3, 4),
                                                         (3, 4, 2)]
    # a longer sequence after a shorter one starts a new group
    assert Packing([2, 3, 3], max_pad=0.5).groups == [(0, 1, 2), (1, 3, 3)]
    assert "sequences=4" in repr(p) and "rows=16" in repr(p)


def test_packing_blocks_hand_example():
    p = Packing([3, 3, 2, 1], max_pad=0.5)
    assert p.groups == [(0, 3, 3), (3, 4, 1)]
    start, rows, kpm, valid = p.block(0)
    assert start == 0
    np.testing.assert_array_equal(rows, [[0, 1, 2], [3, 4, 5], [6, 7, 7]])
    np.testing.assert_array_equal(kpm, [[0, 0, 0], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(valid, ~kpm)
    assert p.block(1) == (8, None, None, None)  # equal lengths: a reshape of rows 8..8
    assert p.block(0) is p.block(0)  # built once


def test_packing_segment_mean_and_unpack_hand_example():
    p = Packing([2, 1, 3])
    h = np.arange(12, dtype=np.float32).reshape(6, 2)
    s = p.segment_mean(h)
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, [[1, 2], [4, 5], [8, 9]])
    u = p.unpack(h, fill=-1.0)
    assert u.shape == (3, 3, 2) and u.dtype == np.float32
    np.testing.assert_array_equal(u[0], [[0, 1], [2, 3], [-1, -1]])
    np.testing.assert_array_equal(u[1], [[4, 5], [-1, -1], [-1, -1]])
    np.testing.assert_array_equal(u[2], [[6, 7], [8, 9], [10, 11]])


@given(lengths_st, max_groups, max_pads, seeds)
def test_packing_drawn(lengths, max_group, max_pad, seed):
    p = Packing(np.array(lengths), max_group=max_group, max_pad=max_pad)
    L = np.array(lengths)
    n, N = len(L), int(L.sum())
    assert len(p) == n and p.n_rows == N
    np.testing.assert_array_equal(p.offsets, np.concatenate([[0], np.cumsum(L)]))
    for i in range(n):
        np.testing.assert_array_equal(p.positions[p.offsets[i]:p.offsets[i + 1]], np.arange(L[i]))
    # groups: consecutive, covering, within the limits, each as long as the rules allow
    assert p.groups[0][0] == 0 and p.groups[-1][1] == n
    for (f0, s0, _), (f1, _, _) in zip(p.groups[:-1], p.groups[1:]):
        assert s0 == f1
    for g, (first, stop, T) in enumerate(p.groups):
        assert 1 <= stop - first <= max_group
        assert T == L[first]
        assert (L[first:stop] <= T).all() and (L[first:stop] >= (1 - max_pad) * T).all()
        if stop < n:
            assert (stop - first == max_group or L[stop] > T or L[stop] < (1 - max_pad) * T)
        start, rows, kpm, valid = p.block(g)
        assert start == p.offsets[first]
        b = stop - first
        if (L[first:stop] == T).all():
            assert rows is None and kpm is None and valid is None
        else:
            assert rows.shape == kpm.shape == valid.shape == (b, T)
            np.testing.assert_array_equal(valid, ~kpm)
            for k in range(b):
                Lk, o = L[first + k], p.offsets[first + k]
                np.testing.assert_array_equal(valid[k], np.arange(T) < Lk)
                np.testing.assert_array_equal(rows[k, :Lk], o + np.arange(Lk))
                np.testing.assert_array_equal(rows[k, Lk:], o + Lk - 1)  # a real, finite row
    # segment_mean and unpack against the per-sequence slices
    rng = np.random.default_rng(seed)
    for dtype in dtypes:
        h = rng.standard_normal((N, 3)).astype(dtype)
        s = p.segment_mean(h)
        assert s.dtype == dtype and s.shape == (n, 3)
        want = np.stack([h[p.offsets[i]:p.offsets[i + 1]].mean(axis=0) for i in range(n)])
        close(s, want.astype(dtype), dtype, ulps=8)
        u = p.unpack(h, fill=7.0)
        assert u.shape == (n, L.max(), 3) and u.dtype == dtype
        for i in range(n):
            np.testing.assert_array_equal(u[i, :L[i]], h[p.offsets[i]:p.offsets[i + 1]])
            assert (u[i, L[i]:] == 7.0).all()
        np.testing.assert_array_equal(real_rows(u, L), h)


@pytest.mark.parametrize("kwargs", [
    dict(lengths=[1.0, 2.0]), dict(lengths=[[1, 2]]), dict(lengths=np.int64(3)),
    dict(lengths=["a"]), dict(lengths=[2, 0]), dict(lengths=[3, -1]),
    dict(lengths=[2], max_group=0), dict(lengths=[2], max_group=True),
    dict(lengths=[2], max_group=False), dict(lengths=[2], max_group=2.0),
    dict(lengths=[2], max_group=-3), dict(lengths=[2], max_pad=-0.1),
    dict(lengths=[2], max_pad=1.0), dict(lengths=[2], max_pad=1.5),
    dict(lengths=[2], max_pad=float("nan")),
])
def test_packing_bad_arguments(kwargs):
    lengths = kwargs.pop("lengths")
    with pytest.raises(ValueError, match="Packing"):
        Packing(lengths, **kwargs)


# -- MultiHeadAttention.forward_packed -------------------------------------------------------

OPTIONS = ["plain", "gqa", "rotary", "window", "alibi", "no_bias", "split", "lora_in_proj",
           "lora_qv", "tiled"]


def make_mha(option, heads, d_k, kv_div, dtype, rng):
    kwargs = {}
    if option == "gqa":
        kwargs["n_kv_heads"] = max(1, heads // kv_div)
    elif option == "rotary":
        kwargs["rotary"] = True
    elif option == "window":
        kwargs["window"] = 2
    elif option == "alibi":
        kwargs["alibi"] = True
    elif option == "no_bias":
        kwargs["bias"] = False
    elif option == "tiled":
        kwargs.update(attention_impl="tiled", block_q=2, block_k=3)
    mha = MultiHeadAttention(heads * d_k, heads, dtype=dtype, rng=rng, **kwargs)
    if option == "split":
        mha.split_in_proj()
    elif option == "lora_in_proj":
        apply_lora(mha, ["in_proj", "out_proj"], r=2, rng=rng)
    elif option == "lora_qv":
        apply_lora(mha, ["q_proj", "v_proj"], r=2, rng=rng)
    randomize(mha, rng)
    return mha.eval()


def _check_mha(option, lengths, heads, d_k, kv_div, causal, max_group, max_pad, mode, dtype,
               seed):
    rng = np.random.default_rng(seed)
    if option in ("window", "alibi"):
        causal = True
    mha = make_mha(option, heads, d_k, kv_div, dtype, rng)
    xs = [rng.standard_normal((L, heads * d_k)).astype(dtype) for L in lengths]
    X, kpm = padded(xs)
    T = X.shape[1]
    want, _ = mha.forward(X, key_padding_mask=kpm, attn_mask=causal_mask(T) if causal else None)
    want = real_rows(want, lengths)
    packing = Packing(np.array(lengths), max_group=max_group, max_pad=max_pad)
    x = np.concatenate(xs)
    x_before = x.copy()
    with in_mode(mode):
        got = mha.forward_packed(x, packing, causal)
    np.testing.assert_array_equal(x, x_before)  # the input is not written
    close(got, want, dtype)


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("option", OPTIONS)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.sampled_from([1, 2, 4]),
       st.sampled_from([2, 4]), st.sampled_from([1, 2, 4]), st.booleans(), max_groups,
       max_pads, st.booleans(), modes, seeds)
def test_mha_forward_packed_equals_padded_forward(option, dtype, lengths, heads, d_k, kv_div,
                                                  causal, max_group, max_pad, sort, mode, seed):
    if sort:  # the order encode uses: longest first, so groups are large
        lengths = sorted(lengths, reverse=True)
    _check_mha(option, lengths, heads, d_k, kv_div, causal, max_group, max_pad, mode, dtype,
               seed)


@pytest.mark.parametrize("dtype", dtypes)
def test_mha_forward_packed_groups_run_on_two_threads(dtype, monkeypatch):
    """With 2 threads and MIN_BLOCK lowered, the groups really are split: the group
    kernel runs on two distinct threads, and the result is still the padded one."""
    rng = np.random.default_rng(5)
    mha = make_mha("plain", 2, 4, 1, dtype, rng)
    lengths = [7, 7, 6, 5, 3, 3, 2, 1]
    packing = Packing(np.array(lengths), max_group=2, max_pad=0.2)
    assert len(packing.groups) >= 4
    seen = set()
    original = MultiHeadAttention._packed_groups

    def spy(self, *args):
        seen.add(threading.get_ident())
        return original(self, *args)

    monkeypatch.setattr(MultiHeadAttention, "_packed_groups", spy)
    monkeypatch.setattr(_parallel, "MIN_BLOCK", 1)
    _parallel.set_num_threads(2)
    try:
        xs = [rng.standard_normal((L, 8)).astype(dtype) for L in lengths]
        X, kpm = padded(xs)
        want = real_rows(mha.forward(X, key_padding_mask=kpm)[0], lengths)
        with nt.inference_mode():
            got = mha.forward_packed(np.concatenate(xs), packing)
        assert len(seen) == 2
        assert _parallel.MIN_BLOCK == 1 and _parallel.get_num_threads() == 2
    finally:
        _parallel.set_num_threads(None)
    close(got, want, dtype)


def test_mha_forward_packed_bad_input():
    rng = np.random.default_rng(0)
    mha = MultiHeadAttention(8, 2, dtype=np.float64, rng=rng)
    packing = Packing([3, 2])
    with pytest.raises(ValueError, match="MultiHeadAttention.*rows"):
        mha.forward_packed(np.zeros((4, 8)), packing)
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        mha.forward_packed(np.zeros((5, 7)), packing)  # wrong d_model
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        mha.forward_packed(np.zeros((1, 5, 8)), packing)  # not (N, E)
    bad = np.zeros((5, 8))
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        mha.forward_packed(bad, packing)
    alibi = MultiHeadAttention(8, 2, dtype=np.float64, rng=rng, alibi=True)
    with pytest.raises(ValueError, match="MultiHeadAttention.*causal"):
        alibi.forward_packed(np.zeros((5, 8)), packing)
    with pytest.raises(ValueError, match="MultiHeadAttention.*causal"):
        alibi.forward_packed(np.zeros((5, 8)), packing, causal=False)
    alibi.forward_packed(np.zeros((5, 8)), packing, causal=True)  # fine


# -- TransformerEncoderLayer.forward_packed ------------------------------------------------

@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.sampled_from([1, 2, 4]),
       st.booleans(), max_groups, max_pads, modes, seeds)
def test_encoder_layer_forward_packed_equals_forward(dtype, norm_first, norm, activation,
                                                     lengths, heads, causal, max_group,
                                                     max_pad, mode, seed):
    rng = np.random.default_rng(seed)
    D = 4 * heads
    layer = TransformerEncoderLayer(D, heads, 12, dropout=0.3, activation=activation,
                                    norm_first=norm_first, norm=norm, dtype=dtype, rng=rng)
    randomize(layer, rng)
    layer.eval()
    xs = [rng.standard_normal((L, D)).astype(dtype) for L in lengths]
    X, kpm = padded(xs)
    T = X.shape[1]
    want = real_rows(layer.forward(X, src_key_padding_mask=kpm,
                                   src_mask=causal_mask(T) if causal else None)[0], lengths)
    x = np.concatenate(xs)
    x_before = x.copy()
    packing = Packing(np.array(lengths), max_group=max_group, max_pad=max_pad)
    with in_mode(mode):
        got = layer.forward_packed(x, packing, causal)
    np.testing.assert_array_equal(x, x_before)
    close(got, want, dtype)


def test_encoder_layer_forward_packed_bad_input():
    layer = TransformerEncoderLayer(8, 2, 12, dtype=np.float64, rng=0).eval()
    packing = Packing([3, 2])
    with pytest.raises(ValueError, match="MultiHeadAttention.*rows"):
        layer.forward_packed(np.zeros((6, 8)), packing)
    with pytest.raises(ValueError, match="TransformerEncoderLayer"):
        layer.forward_packed(np.zeros((5, 7)), packing)
    with pytest.raises(ValueError, match="TransformerEncoderLayer"):
        layer.forward_packed(np.zeros((1, 5, 8)), packing)


# -- BertModel.forward_packed, SentenceEncoder.encode_packed -------------------------------

def small_bert(dtype, seed, hidden_act="gelu"):
    rng = np.random.default_rng(seed)
    bert = BertModel(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=24, hidden_act=hidden_act, max_position_embeddings=10,
                     dtype=dtype, rng=rng)
    for _, p in bert.named_parameters():
        p.data += (rng.standard_normal(p.data.shape) * 0.1).astype(dtype)
    return bert.eval()


def padded_ids(sequences):
    T = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), T), np.int64)
    mask = np.zeros((len(sequences), T), np.int64)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


@pytest.mark.parametrize("dtype", dtypes)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=7), st.booleans(), max_groups,
       max_pads, st.sampled_from(["gelu", "gelu_new", "relu"]), modes, seeds)
def test_bert_forward_packed_equals_forward(dtype, lengths, given_packing, max_group, max_pad,
                                            hidden_act, mode, seed):
    bert = small_bert(dtype, seed % 1000, hidden_act)
    rng = np.random.default_rng(seed)
    sequences = [list(rng.integers(1, 40, L)) for L in lengths]
    ids, mask = padded_ids(sequences)
    want = real_rows(bert.forward(ids, mask)[0], lengths)
    encoder = SentenceEncoder(bert)
    want_s = encoder.forward(ids, mask)[0]
    packing = (Packing(np.array(lengths), max_group=max_group, max_pad=max_pad)
               if given_packing else None)
    with in_mode(mode):
        got, p = bert.forward_packed(sequences, packing)
        got_s = encoder.encode_packed(sequences, packing)
    if given_packing:
        assert p is packing
    np.testing.assert_array_equal(p.lengths, lengths)
    close(got, want, dtype)
    close(got_s, want_s, dtype)


def test_sentence_encoder_encode_packed_without_normalize():
    bert = small_bert(np.float64, 3)
    encoder = SentenceEncoder(bert, normalize=False)
    sequences = [[5, 6, 7], [1], [2, 3]]
    ids, mask = padded_ids(sequences)
    close(encoder.encode_packed(sequences), encoder.forward(ids, mask)[0], np.float64)


def test_bert_forward_packed_bad_input():
    bert = small_bert(np.float64, 0)
    encoder = SentenceEncoder(bert)
    for f in (bert.forward_packed, encoder.encode_packed):
        with pytest.raises(ValueError, match="BertModel"):
            f([])
        with pytest.raises(ValueError, match="BertModel"):
            f([[1, 2], []])
        with pytest.raises(ValueError, match="BertModel.*max_position_embeddings"):
            f([[1] * 11])
        with pytest.raises(ValueError, match="BertModel.*packing"):
            f([[1, 2], [3]], Packing([2, 2]))
        with pytest.raises(ValueError, match="BertModel.*packing"):
            f([[1, 2], [3]], Packing([2]))
        with pytest.raises(ValueError, match="BertModel"):
            f([[1, 40]])  # a token id out of range


# -- SentenceModel.encode: packed runs of sorted sentences, in the caller's order -----------

def tiny_sentence_model(dtype, seed):
    from numtransformer.pretrained.minilm import SentenceModel
    from numtransformer.pretrained.tokenizer import WordPieceTokenizer

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "##s", "big", "red"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    bert = BertModel(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=12, max_position_embeddings=12,
                     dtype=dtype, rng=np.random.default_rng(seed))
    for _, p in bert.named_parameters():
        p.data += (np.random.default_rng(seed + 1).standard_normal(p.data.shape)
                   * 0.1).astype(dtype)
    return SentenceModel(WordPieceTokenizer(vocab), SentenceEncoder(bert), max_seq_length=12)


SENTENCES = ["the cat sat on the mat", "a dog", "dogs ran far", "the big red dog ran far far",
             "cat", "", "the cats sat on a big red mat and the dog ran", "a cat", "red"]


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("batch_size, max_tokens", [(32, 4096), (2, 4096), (3, 10), (1, 1)])
def test_sentence_model_encode_equals_forward_in_order(dtype, batch_size, max_tokens):
    model = tiny_sentence_model(dtype, 7)
    got = model.encode(SENTENCES, batch_size=batch_size, max_tokens=max_tokens)
    assert got.shape == (len(SENTENCES), 8) and got.dtype == dtype
    for i, s in enumerate(SENTENCES):  # each sentence alone through the padded forward
        ids, mask = model.tokenize([s])
        close(got[i:i + 1], model.encoder.forward(ids, mask)[0], dtype)
    ids, mask = model.tokenize(SENTENCES)  # and all of them in one padded batch
    close(got, model.encoder.forward(ids, mask)[0], dtype)


def test_sentence_model_encode_bad_max_tokens():
    model = tiny_sentence_model(np.float64, 0)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="SentenceModel.encode.*max_tokens"):
            model.encode(["a cat"], max_tokens=bad)
    assert model.encode([]).shape == (0, 8)
