"""The fuzz registry: every public layer and model, built small, with the
arguments its public entry point takes.

Each ``Spec`` says how to build the module (for a dtype), and lists its
arguments: kind (float / ids / mask / ...), symbolic shape over the sizes
``B`` (batch), ``T`` (length), ``S`` (source length), and where the batch axis
is.  ``robustness.fuzz`` draws valid arguments from it, then breaks one of
them (dtype, NaN, rank, range, shape, ...), calls the entry point and judges
the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import numtransformer as nt
from numtransformer import models as ntm
from numtransformer.interop import TransformerStack
from numtransformer.module import Parameter
from numtransformer.pretrained import (BertEmbeddings, BertModel, L2Normalize, MeanPooling,
                                       SentenceEncoder)


@dataclass
class Arg:
    name: str
    kind: str  # float | ids | mask | amask (0/1 ints) | lengths | offset | count
    shape: tuple  # ints and the symbols "B", "T", "S"
    vocab: int = 0  # ids: valid ids are [0, vocab)
    batch_axis: int | None = 0
    optional: bool = False  # may be omitted (None)
    gen: Callable | None = None  # custom valid generator (rng, shape) -> array
    scale: float = 1.0  # float draws: N(0, scale^2)


@dataclass
class Spec:
    name: str  # what the fuzz reports and names in failures
    owner: str  # the class name an error message must carry
    build: Callable  # (dtype) -> module (or a (module, extra) pair for methods)
    args: list
    call: Callable | None = None  # (built, kwargs) -> (out, cache); default forward(**kwargs)
    backward: bool = True  # call backward and check the gradients
    sizes: dict = field(default_factory=dict)  # symbol -> (min, max) allowed by the draw
    out_batch_axes: tuple | None = None  # per output; default 0 for each; None entries skip
    batch_consistent: bool = True  # row b of the output depends on row b of the inputs only
    float_only: bool = False  # parameter-free: computes in the input's dtype
    state_names: tuple = ()  # decoding state the call builds (an error may name it)


def _right_padding(rng, shape):
    """A (B, S) right-padding mask with at least one real token per row."""
    B, S = shape
    lengths = rng.integers(1, S + 1, B) if S else np.zeros(B, int)
    return np.arange(S)[None, :] >= lengths[:, None]


def _bool_mask(rng, shape):
    """Random True entries, and now and then a fully blocked row."""
    m = rng.random(shape) < 0.3
    if m.ndim >= 2 and m.size and rng.random() < 0.5:
        m[(0,) * (m.ndim - 1)] = True  # row 0 of the last axis fully blocked
    return m


def _causal_or_random(rng, shape):
    T1, T2 = shape
    if rng.random() < 0.5 and T1 == T2 and T1 > 0:
        return nt.causal_mask(T1)
    return _bool_mask(rng, shape)


def _amask(rng, shape):
    m = (rng.random(shape) < 0.8).astype(np.int64)
    if m.size:
        m[:, 0] = 1
    return m


def F(name, shape, **kw):
    return Arg(name, "float", shape, **kw)


def I(name, shape, vocab, **kw):  # noqa: E743 - reads like the other two
    return Arg(name, "ids", shape, vocab=vocab, **kw)


def M(name, shape, gen=_bool_mask, **kw):
    return Arg(name, "mask", shape, gen=gen, optional=kw.pop("optional", True), **kw)


R = np.random.default_rng  # constructors take a seed


# -- decode-method specs: the state is built from a valid source, the fuzz feeds tokens --------
def _transformer_decode(dtype):
    model = nt.Transformer(7, 6, d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=8, dropout=0.0, max_len=8, dtype=dtype, rng=R(0))
    return model


def _call_transformer_decode(model, kw):
    state = model.start_decoding(np.array([[3, 4, 5], [2, 1, 0]]),
                                 np.array([[False, False, False], [False, False, True]]))
    return model.decode_step(state, kw["tokens"]), None


def _call_lm_decode(model, kw):
    state = model.start_decoding(2)
    return model.decode_step(state, kw["tokens"]), None


def _call_seq2seq_decode(model, kw):
    state = model.start_decoding(np.array([[3, 4, 5], [2, 1, 0]]),
                                 np.array([[False, False, False], [False, False, True]]))
    return model.decode_step(state, kw["tokens"]), None


def _call_start_decoding(model, kw):
    """start_decoding on the fuzzed source, then one step from <bos> (id 1)."""
    state = model.start_decoding(kw["src_ids"], kw.get("src_pad_mask"))
    return model.decode_step(state, np.full(state.batch_size, 1)), None


def _call_lm_start(model, kw):
    state = model.start_decoding(kw["batch_size"])
    return model.decode_step(state, np.ones(state.batch_size, np.int64)), None


def _call_encode(model, kw):
    return model.encode(**kw), None


def _call_need_weights(mha, kw):
    return mha.forward(**kw, need_weights=True, average_attn_weights=False)


def _mha_decode(dtype):
    return nt.MultiHeadAttention(4, 2, dtype=dtype, rng=R(0))


def _mha_modern(dtype):
    """Grouped-query (4 query heads, 2 key/value heads), rotary, window 2."""
    return nt.MultiHeadAttention(8, 4, dtype=dtype, rng=R(0), n_kv_heads=2, rotary=True,
                                 window=2)


def _llama_lm(dtype):
    return nt.llama_lm(7, d_model=8, nhead=4, n_kv_heads=2, num_layers=1, dim_feedforward=8,
                       window=3, max_len=6, dtype=dtype, rng=R(0))


def _call_mha_decode(mha, kw):
    kv = mha.new_kv_cache(2)
    return mha.decode(kw["x"], kv, key_padding_mask=kw.get("key_padding_mask")), None


def _call_mha_cross_decode(mha, kw):
    mem = np.linspace(-1, 1, 2 * 3 * 4).reshape(2, 3, 4).astype(mha.dtype)
    kv = mha.cache_memory(mem, mem)
    return mha.decode(kw["x"], kv, key_padding_mask=kw.get("key_padding_mask")), None


def _seq2seq(**kw):
    def build(dtype):
        return nt.Seq2Seq(7, 6, embed_dim=4, hidden_size=4, dtype=dtype, rng=R(0), **kw)
    return build


def _stack_call(module, kw):
    return module.forward(**kw)


def _lora_linear(dtype):
    lora = nt.LoRALinear(nt.Linear(4, 3, dtype=dtype, rng=R(0)), 2, alpha=4.0, rng=R(1))
    lora.B.data[...] = R(2).standard_normal(lora.B.shape)  # the adapter path matters
    return lora


def specs() -> list[Spec]:
    D = 4
    x3 = F("x", ("B", "T", D))
    out = []

    def add(name, build, args, owner=None, **kw):
        out.append(Spec(name, owner or name.split("(")[0].split(".")[0], build, args, **kw))

    # -- layers ------------------------------------------------------------------------------
    add("Linear", lambda dt: nt.Linear(D, 3, dtype=dt, rng=R(0)), [x3])
    add("TiedLinear", lambda dt: nt.TiedLinear(Parameter(R(0).standard_normal((5, D))
                                                         .astype(dt))), [x3])
    add("Embedding", lambda dt: nt.Embedding(7, D, padding_idx=0, dtype=dt, rng=R(0)),
        [I("ids", ("B", "T"), 7)])
    for act in ("ReLU", "Tanh", "Sigmoid"):
        add(act, lambda dt, a=act: getattr(nt, a)(), [x3], float_only=True)
    add("GELU", lambda dt: nt.GELU(), [x3], float_only=True)
    add("GELU(tanh)", lambda dt: nt.GELU("tanh"), [x3], float_only=True)
    add("Softmax", lambda dt: nt.Softmax(), [x3, M("mask", ("B", "T", D))], float_only=True)
    add("causal_mask()", lambda dt: None, [Arg("T", "count", (), batch_axis=None)],
        owner="causal_mask", call=lambda _, kw: (nt.causal_mask(kw["T"]), None),
        backward=False, batch_consistent=False)
    add("Dropout", lambda dt: nt.Dropout(0.5, rng=R(0)), [x3], float_only=True,
        batch_consistent=False)
    add("LayerNorm", lambda dt: nt.LayerNorm(D, dtype=dt), [x3])
    add("RMSNorm", lambda dt: nt.RMSNorm(D, dtype=dt), [x3])
    add("SiLU", lambda dt: nt.SiLU(), [x3], float_only=True)
    add("SwiGLUFeedForward", lambda dt: nt.SwiGLUFeedForward(D, 6, dtype=dt, rng=R(0)), [x3])
    add("RotaryEmbedding", lambda dt: nt.RotaryEmbedding(D, base=100.0),
        [F("x", ("B", 2, "T", D)), Arg("offset", "offset", (), batch_axis=None,
                                        optional=True)], float_only=True)
    add("PositionwiseFeedForward",
        lambda dt: nt.PositionwiseFeedForward(D, 8, "gelu", 0.0, dtype=dt, rng=R(0)), [x3])
    add("LoRALinear", _lora_linear, [x3])
    add("SinusoidalPositionalEncoding", lambda dt: nt.SinusoidalPositionalEncoding(D, 6),
        [x3, Arg("offset", "offset", (), optional=True, batch_axis=None)], float_only=True)
    add("LearnedPositionalEmbedding",
        lambda dt: nt.LearnedPositionalEmbedding(6, D, dtype=dt, rng=R(0)),
        [x3, Arg("offset", "offset", (), optional=True, batch_axis=None)])
    for ls, ign in ((0.0, -100), (0.1, 0)):
        add(f"CrossEntropyLoss(ls={ls})",
            lambda dt, ls=ls, ign=ign: nt.CrossEntropyLoss(ignore_index=ign, label_smoothing=ls),
            [F("logits", ("B", "T", 5), scale=3.0), I("targets", ("B", "T"), 5)],
            float_only=True, out_batch_axes=(None,), batch_consistent=False)
    add("CrossEntropyLoss(none)", lambda dt: nt.CrossEntropyLoss(reduction="none"),
        [F("logits", ("B", "T", 5)), I("targets", ("B", "T"), 5)], float_only=True)

    # -- attention -----------------------------------------------------------------------------
    sh = [F("s", ("B", "T", D)), F("h", ("B", "S", D))]
    sh3 = [F("s", ("B", "T", D)), F("h", ("B", "S", 3))]
    add("DotScore", lambda dt: nt.DotScore(), sh, float_only=True)
    add("ScaledDotScore", lambda dt: nt.ScaledDotScore(), sh, float_only=True)
    add("CosineScore", lambda dt: nt.CosineScore(beta=2.0), sh, float_only=True)
    add("GeneralScore", lambda dt: nt.GeneralScore(D, 3, dtype=dt, rng=R(0)), sh3)
    add("AdditiveScore", lambda dt: nt.AdditiveScore(D, 3, 5, dtype=dt, rng=R(0)), sh3)
    add("ConcatScore", lambda dt: nt.ConcatScore(D, 3, 5, dtype=dt, rng=R(0)), sh3,
        owner="AdditiveScore")
    add("LocationScore", lambda dt: nt.LocationScore(D, 5, dtype=dt, rng=R(0)), sh3)
    qkv = [F("query", ("B", "T", D)), F("keys", ("B", "S", 3)), F("values", ("B", "S", 2)),
           M("mask", ("B", "S"))]
    add("Attention(general)",
        lambda dt: nt.Attention(nt.GeneralScore(D, 3, dtype=dt, rng=R(0))), qkv)
    add("Attention(location)",
        lambda dt: nt.Attention(nt.LocationScore(D, 5, dtype=dt, rng=R(0))), qkv)
    add("Attention(dot)", lambda dt: nt.Attention(nt.DotScore()),
        [F("query", ("B", "T", D)), F("keys", ("B", "S", D)), F("values", ("B", "S", 2)),
         M("mask", ("B", "T", "S"))], float_only=True)
    add("MultiHeadAttention(self)", lambda dt: nt.MultiHeadAttention(D, 2, dtype=dt, rng=R(0)),
        [F("query", ("B", "T", D)), M("key_padding_mask", ("B", "T")),
         M("attn_mask", ("T", "T"), gen=_causal_or_random, batch_axis=None)])
    add("MultiHeadAttention(need_weights)",
        lambda dt: nt.MultiHeadAttention(D, 2, dtype=dt, rng=R(0)),
        [F("query", ("B", "T", D)), F("key", ("B", "S", D)), F("value", ("B", "S", D)),
         M("key_padding_mask", ("B", "S"))], owner="MultiHeadAttention",
        call=_call_need_weights)
    add("MultiHeadAttention(cross)",
        lambda dt: nt.MultiHeadAttention(D, 2, kdim=3, vdim=5, dtype=dt, rng=R(0)),
        [F("query", ("B", "T", D)), F("key", ("B", "S", 3)), F("value", ("B", "S", 5)),
         M("key_padding_mask", ("B", "S")), M("attn_mask", ("B", "T", "S"))])
    add("MultiHeadAttention(gqa, rotary, window)", _mha_modern,
        [F("query", ("B", "T", 2 * D)), M("key_padding_mask", ("B", "T")),
         M("attn_mask", ("T", "T"), gen=_causal_or_random, batch_axis=None)],
        owner="MultiHeadAttention")
    add("MultiHeadAttention(alibi, window)",
        lambda dt: nt.MultiHeadAttention(D, 2, dtype=dt, rng=R(0), alibi=True, window=3),
        [F("query", ("B", "T", D)), M("key_padding_mask", ("B", "T"))],
        owner="MultiHeadAttention")
    add("MultiHeadAttention.decode(gqa, rotary, window)", _mha_modern,
        [F("x", (2, "T", 2 * D)), M("key_padding_mask", (2, "T"))],
        owner="MultiHeadAttention", call=_call_mha_decode, backward=False,
        state_names=("kv_cache",), batch_consistent=False)
    add("MultiHeadAttention.decode(self)", _mha_decode,
        [F("x", (2, "T", D)), M("key_padding_mask", (2, "T"))],
        owner="MultiHeadAttention", call=_call_mha_decode, backward=False,
        state_names=("kv_cache",), batch_consistent=False)
    add("MultiHeadAttention.decode(cross)", _mha_decode,
        [F("x", (2, "T", D)), M("key_padding_mask", (2, 3))],
        owner="MultiHeadAttention", call=_call_mha_cross_decode, backward=False,
        state_names=("kv_cache",),
        batch_consistent=False)

    # -- recurrent -----------------------------------------------------------------------------
    for cell in ("RNNCell", "GRUCell"):
        add(cell, lambda dt, c=cell: getattr(nt, c)(3, D, dtype=dt, rng=R(0)),
            [F("x", ("B", 3)), F("h", ("B", D), optional=True)])
    add("LSTMCell", lambda dt: nt.LSTMCell(3, D, dtype=dt, rng=R(0)),
        [F("x", ("B", 3)), F("h", ("B", D), optional=True), F("c", ("B", D), optional=True)])
    lengths = Arg("lengths", "lengths", ("B",), optional=True)
    add("RNN(lstm, 2 layers, bidirectional)",
        lambda dt: nt.RNN("lstm", 3, D, num_layers=2, bidirectional=True, dtype=dt, rng=R(0)),
        [F("x", ("B", "T", 3)), F("h0", (4, "B", D), batch_axis=1, optional=True),
         F("c0", (4, "B", D), batch_axis=1, optional=True), lengths],
        out_batch_axes=(0, 1, 1))
    add("RNN(gru)", lambda dt: nt.RNN("gru", 3, D, dtype=dt, rng=R(0)),
        [F("x", ("B", "T", 3)), F("h0", (1, "B", D), batch_axis=1, optional=True), lengths],
        out_batch_axes=(0, 1))
    add("RNN(rnn)", lambda dt: nt.RNN("rnn", 3, D, dtype=dt, rng=R(0)),
        [F("x", ("B", "T", 3)), F("h0", (1, "B", D), batch_axis=1, optional=True), lengths],
        out_batch_axes=(0, 1))
    add("LSTMN", lambda dt: nt.LSTMN(3, D, dtype=dt, rng=R(0)), [F("x", ("B", "T", 3))])
    add("LSTMN(window=2)", lambda dt: nt.LSTMN(3, D, window=2, dtype=dt, rng=R(0)),
        [F("x", ("B", "T", 3))])

    # -- Transformer pieces ----------------------------------------------------------------------
    tkw = dict(dim_feedforward=8, dropout=0.0)
    add("TransformerEncoderLayer",
        lambda dt: ntm.TransformerEncoderLayer(D, 2, **tkw, dtype=dt, rng=R(0)),
        [F("src", ("B", "T", D)), M("src_key_padding_mask", ("B", "T")),
         M("src_mask", ("T", "T"), gen=_causal_or_random, batch_axis=None)])
    add("TransformerEncoderLayer(pre-LN)",
        lambda dt: ntm.TransformerEncoderLayer(D, 2, **tkw, norm_first=True, dtype=dt, rng=R(0)),
        [F("src", ("B", "T", D)), M("src_key_padding_mask", ("B", "T"))])
    dec_args = [F("tgt", ("B", "T", D)), F("memory", ("B", "S", D)),
                M("tgt_mask", ("T", "T"), gen=_causal_or_random, batch_axis=None),
                M("tgt_key_padding_mask", ("B", "T")), M("memory_key_padding_mask", ("B", "S"))]
    add("TransformerDecoderLayer",
        lambda dt: ntm.TransformerDecoderLayer(D, 2, **tkw, dtype=dt, rng=R(0)), dec_args)
    add("TransformerEncoder",
        lambda dt: ntm.TransformerEncoder(2, D, 2, **tkw, norm_first=True, dtype=dt, rng=R(0)),
        [F("src", ("B", "T", D)), M("src_key_padding_mask", ("B", "T")),
         M("mask", ("T", "T"), gen=_causal_or_random, batch_axis=None)])
    add("TransformerDecoder",
        lambda dt: ntm.TransformerDecoder(2, D, 2, **tkw, dtype=dt, rng=R(0)), dec_args)
    add("TransformerStack",
        lambda dt: TransformerStack(D, 2, 1, 1, 8, dropout=0.0, dtype=dt, rng=R(0)),
        [F("src", ("B", "S", D)), F("tgt", ("B", "T", D)),
         M("src_mask", ("S", "S"), batch_axis=None),
         M("tgt_mask", ("T", "T"), gen=_causal_or_random, batch_axis=None),
         M("src_key_padding_mask", ("B", "S")), M("tgt_key_padding_mask", ("B", "T")),
         M("memory_key_padding_mask", ("B", "S"))])

    # -- models --------------------------------------------------------------------------------
    s2s_args = [I("src_ids", ("B", "S"), 7), I("tgt_in_ids", ("B", "T"), 6),
                M("src_pad_mask", ("B", "S"), gen=_right_padding),
                M("tgt_pad_mask", ("B", "T"))]
    tr_args = [I("src_ids", ("B", "S"), 7), I("tgt_in_ids", ("B", "T"), 6),
               M("src_pad_mask", ("B", "S")), M("tgt_pad_mask", ("B", "T"))]
    add("Transformer", lambda dt: nt.Transformer(7, 6, d_model=D, nhead=2, num_encoder_layers=1,
                                                 num_decoder_layers=1, max_len=6, **tkw,
                                                 dtype=dt, rng=R(0)), tr_args)
    add("Transformer(shared, tied, learned)",
        lambda dt: nt.Transformer(7, 7, d_model=D, nhead=2, num_encoder_layers=1,
                                  num_decoder_layers=1, max_len=6, share_embeddings=True,
                                  tie_output=True, positional="learned", **tkw, dtype=dt,
                                  rng=R(0)),
        [I("src_ids", ("B", "S"), 7), I("tgt_in_ids", ("B", "T"), 7),
         M("src_pad_mask", ("B", "S")), M("tgt_pad_mask", ("B", "T"))])
    add("TransformerLM", lambda dt: nt.TransformerLM(7, d_model=D, nhead=2, num_layers=1,
                                                     max_len=6, **tkw, dtype=dt, rng=R(0)),
        [I("ids", ("B", "T"), 7), M("pad_mask", ("B", "T"))])
    add("TransformerLM(llama)", _llama_lm,
        [I("ids", ("B", "T"), 7), M("pad_mask", ("B", "T"))], owner="TransformerLM")
    add("TransformerLM.decode_step(llama)", _llama_lm,
        [I("tokens", (2, "T"), 7)], owner="TransformerLM",
        call=_call_lm_decode, backward=False, batch_consistent=False)
    add("Transformer.decode_step", _transformer_decode,
        [I("tokens", (2,), 6)], owner="Transformer",
        call=_call_transformer_decode, backward=False, batch_consistent=False)
    add("TransformerLM.decode_step",
        lambda dt: nt.TransformerLM(7, d_model=D, nhead=2, num_layers=1, max_len=6, **tkw,
                                    dtype=dt, rng=R(0)),
        [I("tokens", (2, "T"), 7)], owner="TransformerLM",
        call=_call_lm_decode, backward=False, batch_consistent=False)
    add("Transformer.encode", _transformer_decode,
        [I("src_ids", ("B", "S"), 7), M("src_pad_mask", ("B", "S"))], owner="Transformer",
        call=_call_encode, backward=False)
    add("Transformer.start_decoding", _transformer_decode,
        [I("src_ids", ("B", "S"), 7), M("src_pad_mask", ("B", "S"))], owner="Transformer",
        call=_call_start_decoding, backward=False)
    add("TransformerLM.start_decoding",
        lambda dt: nt.TransformerLM(7, d_model=D, nhead=2, num_layers=1, max_len=6, **tkw,
                                    dtype=dt, rng=R(0)),
        [Arg("batch_size", "count", (), batch_axis=None)], owner="TransformerLM",
        call=_call_lm_start, backward=False, batch_consistent=False)
    add("Seq2Seq.start_decoding", _seq2seq(cell="gru", attention="bahdanau"),
        [I("src_ids", ("B", "S"), 7), M("src_pad_mask", ("B", "S"), gen=_right_padding)],
        owner="Seq2Seq", call=_call_start_decoding, backward=False)
    add("Seq2Seq(luong, general)", _seq2seq(), s2s_args)
    add("Seq2Seq(luong, location, bidirectional gru)",
        _seq2seq(cell="gru", bidirectional=True, score="location", max_src_len=5), s2s_args)
    add("Seq2Seq(bahdanau)", _seq2seq(attention="bahdanau", cell="gru"), s2s_args)
    add("Seq2Seq(none)", _seq2seq(attention="none", cell="rnn"), s2s_args)
    add("Seq2Seq(lstmn encoder)", _seq2seq(encoder_cell="lstmn", score="dot"), s2s_args)
    add("Seq2Seq.decode_step", _seq2seq(score="additive"),
        [I("tokens", (2,), 6)], owner="LuongDecoder",
        call=_call_seq2seq_decode, backward=False, batch_consistent=False)
    add("Encoder", lambda dt: ntm.Encoder(7, D, 3, cell="gru", bidirectional=True,
                                         decoder_hidden_size=D, dtype=dt, rng=R(0)),
        [I("src_ids", ("B", "S"), 7), M("src_pad_mask", ("B", "S"), gen=_right_padding)],
        out_batch_axes=(0, 1))
    add("LuongDecoder", lambda dt: ntm.LuongDecoder(6, D, D, 3, cell="lstm", dtype=dt, rng=R(0)),
        [I("tgt_ids", ("B", "T"), 6), F("memory", ("B", "S", 3)),
         F("h0", (1, "B", D), batch_axis=1), F("c0", (1, "B", D), batch_axis=1),
         M("src_pad_mask", ("B", "S"))])
    add("BahdanauDecoder",
        lambda dt: ntm.BahdanauDecoder(6, D, D, 3, cell="gru", dtype=dt, rng=R(0)),
        [I("tgt_ids", ("B", "T"), 6), F("memory", ("B", "S", 3)),
         F("h0", (1, "B", D), batch_axis=1), M("src_pad_mask", ("B", "S"))])
    add("MemN2N", lambda dt: nt.MemN2N(9, 4, 2, memory_size=5, dtype=dt, rng=R(0)),
        [I("story", ("B", "S", "T"), 9), I("query", ("B", "T"), 9),
         M("story_pad_mask", ("B", "S")),
         Arg("time", "ids", ("B", "S"), vocab=5, optional=True)],
        sizes={"S": (0, 5)})
    add("MemN2N(layerwise, BoW)",
        lambda dt: nt.MemN2N(9, 4, 3, memory_size=5, tying="layerwise", position_encoding=False,
                             temporal=False, dtype=dt, rng=R(0)),
        [I("story", ("B", "S", "T"), 9), I("query", ("B", "T"), 9),
         M("story_pad_mask", ("B", "S"))])

    # -- pretrained / interop ------------------------------------------------------------------
    bert = dict(vocab_size=9, hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=8, max_position_embeddings=6, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    bert_args = [I("input_ids", ("B", "T"), 9),
                 Arg("attention_mask", "amask", ("B", "T"), gen=_amask, optional=True),
                 Arg("token_type_ids", "ids", ("B", "T"), vocab=2, optional=True)]
    add("BertEmbeddings", lambda dt: BertEmbeddings(9, D, 6, dropout=0.0, dtype=dt, rng=R(0)),
        [bert_args[0], bert_args[2]])
    add("BertModel", lambda dt: BertModel(**bert, dtype=dt, rng=R(0)), bert_args)
    add("SentenceEncoder", lambda dt: SentenceEncoder(BertModel(**bert, dtype=dt, rng=R(0))),
        bert_args)
    add("MeanPooling", lambda dt: MeanPooling(),
        [F("h", ("B", "T", D)), Arg("attention_mask", "amask", ("B", "T"), gen=_amask)],
        float_only=True)
    add("L2Normalize", lambda dt: L2Normalize(), [F("x", ("B", D))], float_only=True)
    return out


__all__ = ["Arg", "Spec", "specs"]
