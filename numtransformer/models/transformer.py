"""The Transformer ("Attention Is All You Need", Vaswani et al., 2017).

Layers (constructor arguments mirror PyTorch's layers of the same name):
``TransformerEncoderLayer``, ``TransformerDecoderLayer``, the stacks
``TransformerEncoder`` / ``TransformerDecoder``, the encoder-decoder model
``Transformer`` and the decoder-only causal language model ``TransformerLM``.

Residual sublayers, post-LN (the paper, sec. 3.1; the default) and pre-LN
(``norm_first=True``; Xiong et al., 2020), each a ``SublayerConnection``
(``numtransformer.layers.residual``, where the backward is derived):

    post-LN:  x <- Norm(x + Dropout(Sublayer(x)))
    pre-LN:   x <- x + Dropout(Sublayer(Norm(x)))

Backward of a residual sublayer (the identity path adds its gradient):

    post-LN:  dr = norm.backward(dy);  dx = dr + sublayer.backward(dropout.backward(dr))
    pre-LN:   dx = dy + norm.backward(sublayer.backward(dropout.backward(dy)))

Norm is LayerNorm by default; ``norm=`` (a kind of ``layers.norms.make_norm``)
chooses it in every layer and final norm of a model by one argument.

Incremental decoding: ``start_decoding`` / ``decode_step`` run one new target
position at a time against key/value caches (cost O(t) per step, not a full
recompute); ``numtransformer.decoding`` builds greedy and beam search on them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._validate import (as_rng, check_float, check_float_dtype, check_ids, check_mask,
                         check_positive_int, check_probability, check_source_target)
from ..attention import KVCache, MultiHeadAttention, causal_mask
from ..attention.masks import check_attn_mask, check_key_padding_mask
from ..layers import (Dropout, Embedding, LearnedPositionalEmbedding, Linear,
                      PositionwiseFeedForward, SinusoidalPositionalEncoding, SwiGLUFeedForward,
                      TiedLinear)
from ..fast.norm import add_layer_norm_inplace
from ..layers.layernorm import LayerNorm
from ..layers.norms import check_norm, make_norm
from ..layers.residual import SublayerConnection, SublayerConnectionCache
from ..module import Module

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerDecoder", "Transformer", "TransformerLM", "DecoderState", "LMState"]

_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu")


def _check_layer_args(owner, d_model, nhead, dim_feedforward, dropout, activation,
                      layer_norm_eps, norm="layernorm"):
    who = type(owner).__name__
    check_positive_int(owner, "d_model", d_model)
    check_positive_int(owner, "nhead", nhead)
    check_positive_int(owner, "dim_feedforward", dim_feedforward)
    check_probability(owner, "dropout", dropout)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{who}: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if d_model % nhead:
        raise ValueError(f"{who}: d_model={d_model} is not divisible by nhead={nhead}")
    if not layer_norm_eps > 0:
        raise ValueError(f"{who}: layer_norm_eps must be > 0, got {layer_norm_eps}")
    check_norm(owner, norm)


_ATTENTION_OPTIONS = ("n_kv_heads", "rotary", "window", "alibi", "attention_impl", "block_q",
                      "block_k")


def _check_attention_options(owner, attention) -> dict:
    """The dict of MultiHeadAttention options a layer passes on (None: none)."""
    if attention is None:
        return {}
    if not isinstance(attention, dict):
        raise TypeError(f"{type(owner).__name__}: attention must be a dict of "
                        f"{', '.join(_ATTENTION_OPTIONS)}, got {type(attention).__name__}")
    unknown = sorted(set(attention) - set(_ATTENTION_OPTIONS))
    if unknown:
        raise ValueError(f"{type(owner).__name__}: unknown attention option(s) {unknown}; "
                         f"allowed: {', '.join(_ATTENTION_OPTIONS)}")
    return dict(attention)


def _make_ffn(d_model, d_ff, activation, dropout, bias, dtype, rng):
    """The position-wise FFN of a layer: SwiGLU's three projections for
    activation="swiglu", else linear2(dropout(act(linear1(x))))."""
    if activation == "swiglu":
        return SwiGLUFeedForward(d_model, d_ff, bias=bias, dropout=dropout, dtype=dtype,
                                 rng=rng)
    return PositionwiseFeedForward(d_model, d_ff, activation, dropout, bias=bias, dtype=dtype,
                                   rng=rng)


def _blocks(cache, n: int) -> list:
    """A layer's cache holds its n residual blocks' caches side by side, four fields
    each (norm_i, sublayer, dropout_i, residual_norm_i): split it back."""
    return [SublayerConnectionCache._make(cache[4 * i:4 * i + 4]) for i in range(n)]


def check_sequences(owner, x_arg: str, x, masks=(), mem_arg: str = "", memory=None) -> None:
    """Raise, under the caller's name and argument names, what MultiHeadAttention
    would otherwise report under its own (``key_padding_mask`` could be any of
    three masks).  ``masks``: (arg, mask, kind) with kind "self_kpm" (B, T),
    "self_attn" (T, T) or (B, T, T), "mem_kpm" (B, S).  With ``memory``, also
    that it has x's batch size and positions.  O(1) shape/dtype checks."""
    who = type(owner).__name__
    B, T = x.shape[:2]
    if T == 0:
        raise ValueError(f"{who}: {x_arg} has no positions (shape {x.shape})")
    if memory is not None:
        if memory.shape[0] != B:
            raise ValueError(f"{who}: {mem_arg} has batch size {memory.shape[0]}, {x_arg} "
                             f"has {B}")
        if memory.shape[1] == 0:
            raise ValueError(f"{who}: {mem_arg} has no positions (shape {memory.shape})")
    for arg, mask, kind in masks:
        if mask is None:
            continue
        if kind == "self_attn":
            check_attn_mask(owner, arg, mask, B, T, T)
        else:
            check_key_padding_mask(owner, arg, mask, B, T if kind == "self_kpm"
                                   else memory.shape[1])


# ----------------------------------------------------------------------------------------
class EncoderLayerCache(NamedTuple):
    """The two residual blocks' caches (``SublayerConnectionCache``) side by side."""
    norm1: tuple | None  # pre-LN: n1 = norm1(x)
    self_attn: tuple  # a = SelfAttention(x or n1)
    dropout1: tuple
    residual_norm1: tuple | None  # post-LN: h = norm1(x + drop(a))
    norm2: tuple | None  # pre-LN: n2 = norm2(h)
    ffn: tuple  # f = FFN(h or n2)
    dropout2: tuple
    residual_norm2: tuple | None  # post-LN: y = norm2(h + drop(f))


class TransformerEncoderLayer(Module):
    """Self-attention + position-wise FFN, each in a residual block (sec. 3.1).

    Shapes: src x (B, T, D); src_key_padding_mask (B, T); src_mask (T, T) or
    (B, T, T); masks True = blocked.  Returns y (B, T, D).

    Forward, post-LN (norm_first=False):
        a = SelfAttn(x);     h = norm1(x + dropout1(a))
        f = FFN(h);          y = norm2(h + dropout2(f))
    Forward, pre-LN (norm_first=True):
        a = SelfAttn(norm1(x));  h = x + dropout1(a)
        f = FFN(norm2(h));       y = h + dropout2(f)
    Backward, post-LN:
        dr2 = norm2.backward(dy);   dh = dr2 + FFN.backward(dropout2.backward(dr2))
        dr1 = norm1.backward(dh);   dx = dr1 + SelfAttn.backward(dropout1.backward(dr1))
    Backward, pre-LN:
        dh = dy + norm2.backward(FFN.backward(dropout2.backward(dy)))
        dx = dh + norm1.backward(SelfAttn.backward(dropout1.backward(dh)))

    Each line is one ``SublayerConnection`` (``residual1``: self_attn, norm1,
    dropout1; ``residual2``: ffn, norm2, dropout2), built on demand around the
    layer's own modules.  ``norm`` chooses norm1 and norm2 (``make_norm``;
    default "layernorm").

    FFN(x) = linear2(dropout(act(linear1(x)))) with its own dropout, as PyTorch.
    Parameter names: self_attn.*, ffn.linear1.*, ffn.linear2.*, norm1.*, norm2.*.

    The modern decoder's options (keyword-only; the defaults are the layer above):
    ``activation="swiglu"`` makes the FFN a ``SwiGLUFeedForward``
    (ffn.gate_proj.*, ffn.up_proj.*, ffn.down_proj.*); ``bias=False`` drops
    every bias of the attention and the FFN (LLaMA has none); ``attention``
    (a dict) passes ``n_kv_heads``, ``rotary``, ``window``, ``alibi`` and the
    tiled core's ``attention_impl``, ``block_q``, ``block_k`` to
    ``MultiHeadAttention``.  With ``norm="rmsnorm"`` and ``norm_first=True``
    this is LLaMA's decoder layer (Hugging Face's ``LlamaDecoderLayer``:
    input_layernorm = norm1, post_attention_layernorm = norm2, mlp = ffn).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 norm_first: bool = False, *, norm: str = "layernorm", bias: bool = True,
                 attention: dict | None = None, dtype=np.float32, rng=None):
        _check_layer_args(self, d_model, nhead, dim_feedforward, dropout, activation,
                          layer_norm_eps, norm)
        attention = _check_attention_options(self, attention)
        rng = as_rng(rng)
        self.d_model, self.nhead, self.norm_first = d_model, nhead, bool(norm_first)
        self.norm_kind = norm
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout, bias=bias, dtype=dtype,
                                            rng=rng, **attention)
        self.ffn = _make_ffn(d_model, dim_feedforward, activation, dropout, bias, dtype, rng)
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, dtype=dtype)
        self.dropout1 = Dropout(dropout, rng=rng.spawn(1)[0])
        self.dropout2 = Dropout(dropout, rng=rng.spawn(1)[0])

    @property
    def dtype(self):
        return self.norm1.dtype

    @property
    def residual1(self) -> SublayerConnection:
        """x -> the self-attention block (self_attn, norm1, dropout1)."""
        return SublayerConnection(self.self_attn, self.norm1, self.dropout1, self.norm_first)

    @property
    def residual2(self) -> SublayerConnection:
        """h -> the feed-forward block (ffn, norm2, dropout2)."""
        return SublayerConnection(self.ffn, self.norm2, self.dropout2, self.norm_first)

    def forward(self, src, src_key_padding_mask=None, src_mask=None):
        x = check_float(self, "src", src, dtype=self.dtype, ndim=3, last_dim=self.d_model,
                        last_dim_name="d_model")
        check_sequences(self, "src", x, [
            ("src_key_padding_mask", src_key_padding_mask, "self_kpm"),
            ("src_mask", src_mask, "self_attn")])
        h, c1 = self.residual1.forward(x, key_padding_mask=src_key_padding_mask,
                                       attn_mask=src_mask)
        y, c2 = self.residual2.forward(h)
        return y, EncoderLayerCache(*c1, *c2)

    def backward(self, dy, cache: EncoderLayerCache):
        c1, c2 = _blocks(cache, 2)
        dh = self.residual2.backward(dy, c2)
        return self.residual1.backward(dh, c1)

    def decode(self, x, kv_cache: KVCache, key_padding_mask=None):
        """Causal incremental step(s) for a decoder-only model (inference, no dropout):
        x (B, T_new, D) attends to the cached past plus itself."""
        h = self.residual1.apply(x, lambda n: self.self_attn.decode(n, kv_cache,
                                                                    key_padding_mask))
        return self.residual2.apply(h)

    def forward_packed(self, x, packing, causal: bool = False):
        """The layer over packed sequences, for inference (no dropout, no cache): x (N, D)
        holds the sequences of ``packing`` (``attention.packed.Packing``) end to end;
        row for row what ``forward`` gives each sequence.  Every sublayer but the
        attention acts on rows, so it runs on all N rows at once; the attention is
        ``MultiHeadAttention.forward_packed`` (``causal``: each position sees its
        sequence up to itself)."""
        x = check_float(self, "x", x, dtype=self.dtype, ndim=2, last_dim=self.d_model,
                        last_dim_name="d_model")
        if not self.norm_first and all(type(n) is LayerNorm and n.normalized_shape ==
                                       (self.d_model,) for n in (self.norm1, self.norm2)):
            # post-LN (BERT's): each residual add and its norm in one pass
            a = self.self_attn.forward_packed(x, packing, causal)
            h = _add_norm(a, x, self.norm1)
            return _add_norm(self.ffn(h), h, self.norm2)
        h = self.residual1.apply(x, lambda n: self.self_attn.forward_packed(n, packing, causal))
        return self.residual2.apply(h)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nhead={self.nhead}, norm_first={self.norm_first}"


def _add_norm(y, x, norm):
    """norm(x + y) in place in y (a fresh array of the caller's): post-LN's residual add
    and LayerNorm in one pass over cache-sized chunks of rows."""
    gamma = None if norm.gamma is None else norm.gamma.data
    beta = None if norm.beta is None else norm.beta.data
    return add_layer_norm_inplace(y, x, gamma, beta, norm.eps)


# ----------------------------------------------------------------------------------------
class DecoderLayerCache(NamedTuple):
    """The three residual blocks' caches (``SublayerConnectionCache``) side by side."""
    norm1: tuple | None
    self_attn: tuple
    dropout1: tuple
    residual_norm1: tuple | None
    norm2: tuple | None
    cross_attn: tuple
    dropout2: tuple
    residual_norm2: tuple | None
    norm3: tuple | None
    ffn: tuple
    dropout3: tuple
    residual_norm3: tuple | None


class TransformerDecoderLayer(Module):
    """Masked self-attention, encoder-decoder (cross) attention, FFN (sec. 3.1).

    Shapes: tgt x (B, T, D); memory m (B, S, D); tgt_mask (T, T) or (B, T, T)
    (usually ``causal_mask(T)``); tgt_key_padding_mask (B, T);
    memory_key_padding_mask (B, S).  Returns y (B, T, D).

    Forward, post-LN:
        h1 = norm1(x  + dropout1(SelfAttn(x)))
        h2 = norm2(h1 + dropout2(CrossAttn(h1, m, m)))     (K, V from the encoder output)
        y  = norm3(h2 + dropout3(FFN(h2)))
    Forward, pre-LN:
        h1 = x  + dropout1(SelfAttn(norm1(x)))
        h2 = h1 + dropout2(CrossAttn(norm2(h1), m, m))
        y  = h2 + dropout3(FFN(norm3(h2)))
    Backward: each block as in TransformerEncoderLayer, in reverse order; the
    cross-attention block returns (dh1, dkey, dvalue) and dm = dkey + dvalue.
    backward returns (dx, dm).

    Each line is one ``SublayerConnection`` (``residual1``: self_attn, norm1,
    dropout1; ``residual2``: cross_attn, norm2, dropout2, given m as key and
    value; ``residual3``: ffn, norm3, dropout3), built on demand around the
    layer's own modules.  ``norm`` chooses norm1..norm3 (``make_norm``).

    Parameter names: self_attn.*, cross_attn.* (PyTorch: multihead_attn),
    ffn.linear1.*, ffn.linear2.*, norm1.*, norm2.*, norm3.*.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 norm_first: bool = False, *, norm: str = "layernorm", dtype=np.float32,
                 rng=None):
        _check_layer_args(self, d_model, nhead, dim_feedforward, dropout, activation,
                          layer_norm_eps, norm)
        rng = as_rng(rng)
        self.d_model, self.nhead, self.norm_first = d_model, nhead, bool(norm_first)
        self.norm_kind = norm
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout, dtype=dtype, rng=rng)
        self.cross_attn = MultiHeadAttention(d_model, nhead, dropout, dtype=dtype, rng=rng)
        self.ffn = PositionwiseFeedForward(d_model, dim_feedforward, activation, dropout,
                                           dtype=dtype, rng=rng)
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, dtype=dtype)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, dtype=dtype)
        self.norm3 = make_norm(norm, d_model, layer_norm_eps, dtype=dtype)
        self.dropout1 = Dropout(dropout, rng=rng.spawn(1)[0])
        self.dropout2 = Dropout(dropout, rng=rng.spawn(1)[0])
        self.dropout3 = Dropout(dropout, rng=rng.spawn(1)[0])

    @property
    def dtype(self):
        return self.norm1.dtype

    @property
    def residual1(self) -> SublayerConnection:
        """x -> the masked self-attention block (self_attn, norm1, dropout1)."""
        return SublayerConnection(self.self_attn, self.norm1, self.dropout1, self.norm_first)

    @property
    def residual2(self) -> SublayerConnection:
        """h1, m -> the cross-attention block (cross_attn, norm2, dropout2)."""
        return SublayerConnection(self.cross_attn, self.norm2, self.dropout2, self.norm_first)

    @property
    def residual3(self) -> SublayerConnection:
        """h2 -> the feed-forward block (ffn, norm3, dropout3)."""
        return SublayerConnection(self.ffn, self.norm3, self.dropout3, self.norm_first)

    def forward(self, tgt, memory, tgt_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        x = check_float(self, "tgt", tgt, dtype=self.dtype, ndim=3, last_dim=self.d_model,
                        last_dim_name="d_model")
        m = check_float(self, "memory", memory, dtype=self.dtype, ndim=3,
                        last_dim=self.d_model, last_dim_name="d_model")
        check_sequences(self, "tgt", x, [
            ("tgt_mask", tgt_mask, "self_attn"),
            ("tgt_key_padding_mask", tgt_key_padding_mask, "self_kpm"),
            ("memory_key_padding_mask", memory_key_padding_mask, "mem_kpm")], "memory", m)
        h1, c1 = self.residual1.forward(x, key_padding_mask=tgt_key_padding_mask,
                                        attn_mask=tgt_mask)
        h2, c2 = self.residual2.forward(h1, m, m, key_padding_mask=memory_key_padding_mask)
        y, c3 = self.residual3.forward(h2)
        return y, DecoderLayerCache(*c1, *c2, *c3)

    def backward(self, dy, cache: DecoderLayerCache):
        c1, c2, c3 = _blocks(cache, 3)
        dh2 = self.residual3.backward(dy, c3)
        dh1, dm_k, dm_v = self.residual2.backward(dh2, c2)
        dx = self.residual1.backward(dh1, c1)
        return dx, dm_k + dm_v

    def decode(self, x, self_cache: KVCache, memory_cache: KVCache,
               memory_key_padding_mask=None):
        """Incremental step(s) (inference, no dropout): x (B, T_new, D) attends
        causally to the cached target steps and to the whole (cached) memory."""
        mkpm = memory_key_padding_mask
        h1 = self.residual1.apply(x, lambda n: self.self_attn.decode(n, self_cache))
        h2 = self.residual2.apply(h1, lambda n: self.cross_attn.decode(n, memory_cache, mkpm))
        return self.residual3.apply(h2)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nhead={self.nhead}, norm_first={self.norm_first}"


# ----------------------------------------------------------------------------------------
class StackCache(NamedTuple):
    layers: list  # one cache per layer
    norm: tuple | None  # the final norm's cache


def _layer_kwargs(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                  norm_first, norm, dtype):
    return dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                dropout=dropout, activation=activation, layer_norm_eps=layer_norm_eps,
                norm_first=norm_first, norm=norm, dtype=dtype)


class TransformerEncoder(Module):
    """N encoder layers, each with its own weights, and an optional final norm.

        x_0 = src;  x_l = layer_l(x_{l-1});  y = norm(x_N)  (final_norm)
    Backward: dx_N = norm.backward(dy); dx_{l-1} = layer_l.backward(dx_l).

    ``final_norm`` defaults to ``norm_first``: a pre-LN stack needs a last
    normalisation, a post-LN stack already ends with one (``nn.Transformer``
    adds it in both cases: pass final_norm=True to match it).  ``norm`` (a
    ``make_norm`` kind, default "layernorm") chooses every layer's norms and
    the final one.
    """

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 norm_first: bool = False, final_norm: bool | None = None, *,
                 norm: str = "layernorm", dtype=np.float32, rng=None):
        check_positive_int(self, "num_layers", num_layers)
        check_norm(self, norm)
        rng = as_rng(rng)
        kw = _layer_kwargs(d_model, nhead, dim_feedforward, dropout, activation,
                           layer_norm_eps, norm_first, norm, dtype)
        self.layers = [TransformerEncoderLayer(**kw, rng=rng) for _ in range(num_layers)]
        final_norm = norm_first if final_norm is None else final_norm
        self.norm = make_norm(norm, d_model, layer_norm_eps, dtype=dtype) if final_norm else None
        self.d_model = d_model

    def forward(self, src, src_key_padding_mask=None, mask=None):
        x = check_float(self, "src", src, dtype=self.layers[0].dtype, ndim=3,
                        last_dim=self.d_model, last_dim_name="d_model")
        check_sequences(self, "src", x, [
            ("src_key_padding_mask", src_key_padding_mask, "self_kpm"),
            ("mask", mask, "self_attn")])
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x, src_key_padding_mask=src_key_padding_mask, src_mask=mask)
            caches.append(c)
        c_norm = None
        if self.norm is not None:
            x, c_norm = self.norm.forward(x)
        return x, StackCache(caches, c_norm)

    def backward(self, dy, cache: StackCache):
        if self.norm is not None:
            dy = self.norm.backward(dy, cache.norm)
        for layer, c in zip(reversed(self.layers), reversed(cache.layers)):
            dy = layer.backward(dy, c)
        return dy


class TransformerDecoder(Module):
    """N decoder layers and an optional final norm (see TransformerEncoder).

        x_0 = tgt;  x_l = layer_l(x_{l-1}, m);  y = norm(x_N)
    Backward: every layer reads the same memory m, so dm = sum_l dm_l.
    Returns (dtgt, dmemory).
    """

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 norm_first: bool = False, final_norm: bool | None = None, *,
                 norm: str = "layernorm", dtype=np.float32, rng=None):
        check_positive_int(self, "num_layers", num_layers)
        check_norm(self, norm)
        rng = as_rng(rng)
        kw = _layer_kwargs(d_model, nhead, dim_feedforward, dropout, activation,
                           layer_norm_eps, norm_first, norm, dtype)
        self.layers = [TransformerDecoderLayer(**kw, rng=rng) for _ in range(num_layers)]
        final_norm = norm_first if final_norm is None else final_norm
        self.norm = make_norm(norm, d_model, layer_norm_eps, dtype=dtype) if final_norm else None
        self.d_model = d_model

    def forward(self, tgt, memory, tgt_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        dtype = self.layers[0].dtype
        x = check_float(self, "tgt", tgt, dtype=dtype, ndim=3, last_dim=self.d_model,
                        last_dim_name="d_model")
        memory = check_float(self, "memory", memory, dtype=dtype, ndim=3,
                             last_dim=self.d_model, last_dim_name="d_model")
        check_sequences(self, "tgt", x, [
            ("tgt_mask", tgt_mask, "self_attn"),
            ("tgt_key_padding_mask", tgt_key_padding_mask, "self_kpm"),
            ("memory_key_padding_mask", memory_key_padding_mask, "mem_kpm")], "memory", memory)
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x, memory, tgt_mask=tgt_mask,
                                 tgt_key_padding_mask=tgt_key_padding_mask,
                                 memory_key_padding_mask=memory_key_padding_mask)
            caches.append(c)
        c_norm = None
        if self.norm is not None:
            x, c_norm = self.norm.forward(x)
        return x, StackCache(caches, c_norm)

    def backward(self, dy, cache: StackCache):
        if self.norm is not None:
            dy = self.norm.backward(dy, cache.norm)
        dmemory = None
        for layer, c in zip(reversed(self.layers), reversed(cache.layers)):
            dy, dm = layer.backward(dy, c)
            dmemory = dm if dmemory is None else dmemory + dm
        return dy, dmemory


# ----------------------------------------------------------------------------------------
def _positional(kind, d_model, max_len, dtype, rng, kinds=("sinusoidal", "learned")):
    if kind == "sinusoidal" and kind in kinds:
        return SinusoidalPositionalEncoding(d_model, max_len)
    if kind == "learned" and kind in kinds:
        return LearnedPositionalEmbedding(max_len, d_model, dtype=dtype, rng=rng)
    if kind == "rotary" and kind in kinds:
        return _NoPositions(d_model, max_len)
    allowed = " or ".join(repr(k) for k in kinds)
    raise ValueError(f"positional must be {allowed}, got {kind!r}")


class _NoPositions(Module):
    """The embedding's positional term when positions live in the attention
    (rotary): p = e, dp passes through; ``offset`` is only checked."""

    def __init__(self, d_model: int, max_len: int):
        self.d_model, self.max_len = d_model, max_len

    def forward(self, x, offset: int = 0):
        if offset + x.shape[-2] > self.max_len:
            raise ValueError(f"TransformerLM: positions {offset}..{offset + x.shape[-2] - 1} "
                             f"exceed max_len={self.max_len}")
        return x, None

    def backward(self, dy, cache):
        return dy


class TransformerCache(NamedTuple):
    src_embed: tuple
    src_pos: tuple
    src_dropout: tuple
    encoder: tuple
    tgt_embed: tuple
    tgt_pos: tuple
    tgt_dropout: tuple
    decoder: tuple
    generator: tuple


class DecoderState:
    """What incremental decoding carries between steps, for a batch of rows:
    per decoder layer a growing self-attention KV cache and a fixed memory KV
    cache, the source padding mask, and the number of target steps so far.
    ``select(rows)`` keeps / reorders / repeats rows (beam search)."""

    def __init__(self, self_caches, memory_caches, memory_key_padding_mask, step=0):
        self.self_caches = self_caches
        self.memory_caches = memory_caches
        self.memory_key_padding_mask = memory_key_padding_mask
        self.step = step

    @property
    def batch_size(self) -> int:
        return self.memory_caches[0].batch_size

    def select(self, rows) -> "DecoderState":
        rows = np.asarray(rows)
        mkpm = self.memory_key_padding_mask
        return DecoderState([c.select(rows) for c in self.self_caches],
                            [c.select(rows) for c in self.memory_caches],
                            None if mkpm is None else mkpm[rows], self.step)


class Transformer(Module):
    """The encoder-decoder Transformer for sequence-to-sequence tasks.

    Shapes: src_ids (B, S), tgt_in_ids (B, T) integer ids (teacher forcing: the
    target shifted right, starting with <bos>); pad masks (B, S), (B, T), True =
    padding.  Returns logits (B, T, V_tgt).

    Forward:
        x   = dropout(PE(E_src[src] * sqrt(D)))                 (sec. 3.4, 3.5)
        m   = Encoder(x, src_pad_mask)
        y   = dropout(PE(E_tgt[tgt_in] * sqrt(D)))
        h   = Decoder(y, m, causal_mask(T), tgt_pad_mask, src_pad_mask)
        z   = h W_out + b_out     or, tied,   z = h E_tgt^T
    Backward:
        dh     = generator.backward(dz)                 (tied: adds to E_tgt's grad)
        dy, dm = Decoder.backward(dh)
        E_tgt  <- embed.backward(dropout/PE backward(dy) * sqrt(D))
        dx     = Encoder.backward(dm)
        E_src  <- embed.backward(dropout/PE backward(dx) * sqrt(D))
    With ``share_embeddings`` E_src and E_tgt are one Parameter (one vocabulary)
    and with ``tie_output`` the output projection reuses E_tgt: a shared
    weight's gradient is the sum over its uses, because every backward adds
    to the same ``.grad``.

    Embeddings are initialised N(0, 1/D), so after the sqrt(D) scale their
    entries have mean square 1: the same order as the positional encoding's,
    whose sinusoid entries have mean square 1/2.  ``norm`` (a
    ``make_norm`` kind, default "layernorm") chooses the norm of every layer and
    of the stacks' final norms.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 512, nhead: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation: str = "relu",
                 layer_norm_eps: float = 1e-5, norm_first: bool = False,
                 positional: str = "sinusoidal", max_len: int = 512,
                 share_embeddings: bool = False, tie_output: bool = False,
                 final_norm: bool | None = None, pad_id: int = 0, *, norm: str = "layernorm",
                 dtype=np.float32, rng=None):
        check_positive_int(self, "src_vocab", src_vocab)
        check_positive_int(self, "tgt_vocab", tgt_vocab)
        dtype = check_float_dtype(self, dtype)
        check_norm(self, norm)
        if share_embeddings and src_vocab != tgt_vocab:
            raise ValueError(f"Transformer: share_embeddings needs src_vocab == tgt_vocab, got "
                             f"{src_vocab} and {tgt_vocab}")
        rng = as_rng(rng)
        self.config = dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, d_model=d_model,
                           nhead=nhead, num_encoder_layers=num_encoder_layers,
                           num_decoder_layers=num_decoder_layers,
                           dim_feedforward=dim_feedforward, dropout=dropout,
                           activation=activation, layer_norm_eps=layer_norm_eps,
                           norm_first=norm_first, positional=positional, max_len=max_len,
                           share_embeddings=share_embeddings, tie_output=tie_output,
                           final_norm=final_norm, pad_id=pad_id, norm=norm)
        self.d_model, self.pad_id = d_model, pad_id
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.embed_scale = math.sqrt(d_model)
        # No padding_idx: padded positions are masked as keys and ignored by the
        # loss, so the pad row's true gradient is already zero.
        self.src_embed = Embedding(src_vocab, d_model, dtype=dtype, rng=rng)
        self.src_embed.W.data *= 1.0 / math.sqrt(d_model)
        if share_embeddings:
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = Embedding(tgt_vocab, d_model, dtype=dtype, rng=rng)
            self.tgt_embed.W.data *= 1.0 / math.sqrt(d_model)
        self.src_pos = _positional(positional, d_model, max_len, dtype, rng)
        self.tgt_pos = (self.src_pos if positional == "sinusoidal"
                        else _positional(positional, d_model, max_len, dtype, rng))
        self.src_dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        self.tgt_dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        stack = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                     dropout=dropout, activation=activation, layer_norm_eps=layer_norm_eps,
                     norm_first=norm_first, final_norm=final_norm, norm=norm, dtype=dtype)
        self.encoder = TransformerEncoder(num_encoder_layers, **stack, rng=rng)
        self.decoder = TransformerDecoder(num_decoder_layers, **stack, rng=rng)
        if tie_output:
            self.generator = TiedLinear(self.tgt_embed.W)
        else:
            self.generator = Linear(d_model, tgt_vocab, dtype=dtype, rng=rng)
        self.max_len = max_len

    @property
    def dtype(self):
        return self.src_embed.W.dtype

    def _check(self, src_ids, tgt_in_ids, src_pad_mask, tgt_pad_mask):
        return check_source_target(self, src_ids, tgt_in_ids, src_pad_mask, tgt_pad_mask,
                                   self.src_vocab, self.tgt_vocab)

    def _embed_src(self, src):
        e, c_e = self.src_embed.forward(src)
        p, c_p = self.src_pos.forward(e * self.embed_scale)
        x, c_d = self.src_dropout.forward(p)
        return x, (c_e, c_p, c_d)

    def forward(self, src_ids, tgt_in_ids, src_pad_mask=None, tgt_pad_mask=None):
        if tgt_in_ids is None:
            raise TypeError("Transformer: tgt_in_ids is required (use encode() to run the "
                            "encoder alone)")
        src, tgt = self._check(src_ids, tgt_in_ids, src_pad_mask, tgt_pad_mask)
        x, (c_se, c_sp, c_sd) = self._embed_src(src)
        memory, c_enc = self.encoder.forward(x, src_key_padding_mask=src_pad_mask)
        e, c_te = self.tgt_embed.forward(tgt)
        p, c_tp = self.tgt_pos.forward(e * self.embed_scale)
        y, c_td = self.tgt_dropout.forward(p)
        h, c_dec = self.decoder.forward(y, memory, tgt_mask=causal_mask(tgt.shape[1]),
                                        tgt_key_padding_mask=tgt_pad_mask,
                                        memory_key_padding_mask=src_pad_mask)
        logits, c_gen = self.generator.forward(h)
        return logits, TransformerCache(c_se, c_sp, c_sd, c_enc, c_te, c_tp, c_td, c_dec, c_gen)

    def backward(self, dlogits, cache: TransformerCache):
        dh = self.generator.backward(dlogits, cache.generator)
        dy, dmemory = self.decoder.backward(dh, cache.decoder)
        dp = self.tgt_pos.backward(self.tgt_dropout.backward(dy, cache.tgt_dropout),
                                   cache.tgt_pos)
        self.tgt_embed.backward(dp * self.embed_scale, cache.tgt_embed)
        dx = self.encoder.backward(dmemory, cache.encoder)
        dp = self.src_pos.backward(self.src_dropout.backward(dx, cache.src_dropout),
                                   cache.src_pos)
        self.src_embed.backward(dp * self.embed_scale, cache.src_embed)
        return None

    # -- incremental decoding (inference) ----------------------------------------------
    def encode(self, src_ids, src_pad_mask=None):
        """The encoder output m (B, S, D) (inference: no cache kept)."""
        src, _ = self._check(src_ids, None, src_pad_mask, None)
        x, _ = self._embed_src(src)
        return self.encoder(x, src_key_padding_mask=src_pad_mask)

    def start_decoding(self, src_ids, src_pad_mask=None) -> DecoderState:
        """Encode the source once and project its keys/values for every layer."""
        memory = self.encode(src_ids, src_pad_mask)
        B = memory.shape[0]
        self_caches = [layer.self_attn.new_kv_cache(B) for layer in self.decoder.layers]
        memory_caches = [layer.cross_attn.cache_memory(memory, memory)
                         for layer in self.decoder.layers]
        return DecoderState(self_caches, memory_caches, src_pad_mask)

    def decode_step(self, state: DecoderState, tokens) -> np.ndarray:
        """Feed the previous target token of every row (B,), return next-token
        logits (B, V); the state advances by one step."""
        tokens = check_ids(self, "tokens", np.asarray(tokens), self.tgt_vocab)
        if tokens.shape != (state.batch_size,):
            raise ValueError(f"Transformer: tokens has shape {tokens.shape}, expected "
                             f"({state.batch_size},): one token per row of the state")
        if state.step >= self.max_len:
            raise ValueError(f"Transformer: decoding past max_len={self.max_len}")
        e = self.tgt_embed(tokens[:, None])
        y = self.tgt_pos(e * self.embed_scale, offset=state.step)
        for layer, sc, mc in zip(self.decoder.layers, state.self_caches, state.memory_caches):
            y = layer.decode(y, sc, mc, state.memory_key_padding_mask)
        if self.decoder.norm is not None:
            y = self.decoder.norm(y)
        state.step += 1
        return self.generator(y)[:, 0]


# ----------------------------------------------------------------------------------------
class LMCache(NamedTuple):
    embed: tuple
    pos: tuple
    dropout: tuple
    blocks: list
    norm: tuple
    generator: tuple
    logits_at: np.ndarray | None = None  # (B, T) bool: the positions that got logits


class LMState:
    """Incremental decoding state of a TransformerLM: one KV cache per block."""

    def __init__(self, caches, step=0):
        self.caches, self.step = caches, step

    @property
    def batch_size(self) -> int:
        return self.caches[0].batch_size

    def select(self, rows) -> "LMState":
        rows = np.asarray(rows)
        return LMState([c.select(rows) for c in self.caches], self.step)

    def truncate(self, step: int) -> None:
        """Rewind to the state after the first ``step`` tokens (every layer's cache)."""
        for c in self.caches:
            c.truncate(step)
        self.step = int(step)


class TransformerLM(Module):
    """Decoder-only causal language model (GPT-style, pre-LN).

    Shapes: ids (B, T); pad_mask (B, T) True = padding; logits (B, T, V).
    E (V, D) the embedding table (embed.W); P (max_len, D) the learned
    positions (pos.P; or the fixed sinusoid table); N = num_layers.  No
    sqrt(D) scale on the embeddings (as GPT-2; unlike ``Transformer``).

    Forward (the cache field of each line in brackets):
        e        = E[ids]                           (B, T, D)  [embed]
        p        = e + P[0..T-1]                    (B, T, D)  [pos]
        x_0      = dropout(p)                       (B, T, D)  [dropout]
        x_l      = Block_l(x_{l-1}, pad_mask, causal_mask(T)),  l = 1..N   [blocks]
                   (pre-LN TransformerEncoderLayer: self-attention that sees
                   positions <= t only, then the FFN, each in a residual block)
        h        = norm(x_N)                        (B, T, D)  [norm] final norm (LayerNorm;
                   ``norm=`` chooses it and the blocks' norms)
        logits   = h E^T                            (B, T, V)  [generator] tied output
                   (tie_output=False: logits = h W + b, a Linear)
    Backward (dlogits (B, T, V)), in the order the code computes it:
        dh       = dlogits E;  dE += dlogits^T h    (B, T, D)  generator.backward
                   (untied: dh = dlogits W^T;  dW += h^T dlogits;  db += sum dlogits)
        dx_N     = norm.backward(dh)                (B, T, D)  dgamma, dbeta added
        dx_{l-1} = Block_l.backward(dx_l),  l = N..1           (B, T, D)  pre-LN
                   residual backward, see TransformerEncoderLayer
        dp       = pos.backward(dropout.backward(dx_0))        (B, T, D)  = dx_0 * mask;
                   learned: dP[t] += sum_b dp[b, t]; e + P passes dp on to e unchanged
        dE      += embed.backward(dp)               (V, D)     dE[v] += sum of dp[b, t]
                   over the positions with ids[b, t] == v (a scatter-add)
    With tie_output E is one Parameter used twice: its ``.grad`` receives the
    output projection's term first and the lookup's second, so its gradient
    is the sum over both uses.  backward returns None (ids get no gradient).

    The LLaMA-style decoder (Touvron et al. 2023) is this model with the
    modern options (keyword-only; ``numtransformer.models.llama`` builds it
    from a Hugging Face ``LlamaConfig``):
        norm="rmsnorm"          RMSNorm in every block and at the end
        positional="rotary"     no position table (p = e); rotary embeddings
                                rotate q and k in every attention layer
                                (``rope_base`` theta, ``rope_layout``)
        activation="swiglu"     the FFN is SwiGLU (dim_feedforward = d_ff)
        n_kv_heads              grouped-query attention (None: nhead)
        window                  sliding-window causal attention (None: off)
        attention_impl="tiled"  FlashAttention-style tiles (``functional.flash``): the
                                same function without a (T, T) array per head;
                                needs dropout=0 (``block_size`` queries and keys
                                per tile, default 128)
        bias=False              no bias in attention, FFN and untied output
                                (``output_bias``, default ``bias``, sets the last
                                alone: Llama's lm_head never has one)
        tie_output              tied (SmolLM2) or an untied lm_head (LLaMA)
    The forward and backward equations above hold with P = 0, the rotations
    inside Block_l (``MultiHeadAttention``'s ``rotary``) and SwiGLU's FFN.
    """

    def __init__(self, vocab_size: int, d_model: int = 128, nhead: int = 4,
                 num_layers: int = 4, dim_feedforward: int = 512, dropout: float = 0.1,
                 activation: str = "gelu", layer_norm_eps: float = 1e-5,
                 positional: str = "learned", max_len: int = 512, tie_output: bool = True,
                 *, norm: str = "layernorm", n_kv_heads: int | None = None,
                 window: int | None = None, rope_base: float = 10000.0,
                 rope_layout: str = "half", bias: bool = True, output_bias: bool | None = None,
                 attention_impl: str = "plain", block_size: int = 128, dtype=np.float32,
                 rng=None):
        check_positive_int(self, "vocab_size", vocab_size)
        check_positive_int(self, "num_layers", num_layers)
        dtype = check_float_dtype(self, dtype)
        check_norm(self, norm)
        rng = as_rng(rng)
        bias = bool(bias)
        self.config = dict(vocab_size=vocab_size, d_model=d_model, nhead=nhead,
                           num_layers=num_layers, dim_feedforward=dim_feedforward,
                           dropout=dropout, activation=activation,
                           layer_norm_eps=layer_norm_eps, positional=positional,
                           max_len=max_len, tie_output=tie_output, norm=norm)
        # the modern options only where they differ from the GPT-style defaults, so
        # the configs (and checkpoints) of GPT-style models read as before
        output_bias = bias if output_bias is None else bool(output_bias)
        if attention_impl == "tiled" and dropout > 0:
            raise ValueError(f"TransformerLM: attention_impl='tiled' applies no dropout to the "
                             f"attention weights; build it with dropout=0 (got {dropout})")
        defaults = dict(n_kv_heads=None, window=None, bias=True, output_bias=bias,
                        attention_impl="plain", block_size=128)
        given = dict(n_kv_heads=n_kv_heads, window=window, bias=bias, output_bias=output_bias,
                     attention_impl=attention_impl, block_size=block_size)
        self.config.update({k: v for k, v in given.items() if v != defaults[k]})
        if positional == "rotary":
            self.config.update(rope_base=float(rope_base), rope_layout=rope_layout)
        self.vocab_size, self.d_model, self.max_len = vocab_size, d_model, max_len
        self.embed = Embedding(vocab_size, d_model, dtype=dtype, rng=rng)
        self.embed.W.data *= 0.02  # GPT-2's N(0, 0.02^2)
        self.pos = _positional(positional, d_model, max_len, dtype, rng,
                               kinds=("learned", "sinusoidal", "rotary"))
        self.dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        attention = dict(n_kv_heads=n_kv_heads, window=window, attention_impl=attention_impl,
                         block_q=block_size, block_k=block_size)
        if positional == "rotary":
            attention["rotary"] = {"base": rope_base, "layout": rope_layout}
        self.blocks = [TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                               activation, layer_norm_eps, norm_first=True,
                                               norm=norm, bias=bias, attention=attention,
                                               dtype=dtype, rng=rng)
                       for _ in range(num_layers)]
        self.norm = make_norm(norm, d_model, layer_norm_eps, dtype=dtype)
        self.generator = (TiedLinear(self.embed.W) if tie_output
                          else Linear(d_model, vocab_size, bias=output_bias, dtype=dtype,
                                      rng=rng))

    @property
    def dtype(self):
        return self.embed.W.dtype

    def forward(self, ids, pad_mask=None, logits_at=None):
        """logits (B, T, V); with ``logits_at`` (B, T) bool, only the N selected
        positions' logits, (N, V) in row-major order (h[logits_at] E^T: a loss on
        answer tokens alone skips the output GEMM of every other position; backward
        then takes dlogits (N, V) and puts dh back at those positions, zero elsewhere)."""
        ids = check_ids(self, "ids", ids, self.vocab_size)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"TransformerLM: ids must be (B, T) with T >= 1, got {ids.shape}")
        if pad_mask is not None:
            check_mask(self, "pad_mask", pad_mask, ids.shape)
        if logits_at is not None:
            logits_at = check_mask(self, "logits_at", logits_at, ids.shape)
        e, c_e = self.embed.forward(ids)
        p, c_p = self.pos.forward(e)
        x, c_d = self.dropout.forward(p)
        mask = causal_mask(ids.shape[1])
        caches = []
        for block in self.blocks:
            x, c = block.forward(x, src_key_padding_mask=pad_mask, src_mask=mask)
            caches.append(c)
        h, c_n = self.norm.forward(x)
        logits, c_g = self.generator.forward(h if logits_at is None else h[logits_at])
        return logits, LMCache(c_e, c_p, c_d, caches, c_n, c_g, logits_at)

    def backward(self, dlogits, cache: LMCache):
        dh = self.generator.backward(dlogits, cache.generator)
        if cache.logits_at is not None:  # the other positions' dh is 0
            dh_all = np.zeros(cache.logits_at.shape + dh.shape[-1:], dh.dtype)
            dh_all[cache.logits_at] = dh
            dh = dh_all
        dx = self.norm.backward(dh, cache.norm)
        for block, c in zip(reversed(self.blocks), reversed(cache.blocks)):
            dx = block.backward(dx, c)
        dp = self.pos.backward(self.dropout.backward(dx, cache.dropout), cache.pos)
        self.embed.backward(dp, cache.embed)
        return None

    def start_decoding(self, batch_size: int) -> LMState:
        batch_size = check_positive_int(self, "batch_size", batch_size, minimum=0)
        return LMState([b.self_attn.new_kv_cache(batch_size) for b in self.blocks])

    def decode_step(self, state: LMState, tokens) -> np.ndarray:
        """Feed tokens (B,) or (B, T_new) (a prompt at once); returns the logits
        of the last fed position (B, V)."""
        tokens = check_ids(self, "tokens", np.asarray(tokens), self.vocab_size)
        if tokens.ndim == 1:
            tokens = tokens[:, None]
        if tokens.ndim != 2 or tokens.shape[0] != state.batch_size or tokens.shape[1] == 0:
            raise ValueError(f"TransformerLM: tokens has shape {np.shape(tokens)}, expected "
                             f"(B,) or (B, T) with B = {state.batch_size} and T >= 1")
        T = tokens.shape[1]
        if state.step + T > self.max_len:
            raise ValueError(f"TransformerLM: decoding past max_len={self.max_len}")
        x = self.pos(self.embed(tokens), offset=state.step)
        for block, kv in zip(self.blocks, state.caches):
            x = block.decode(x, kv)
        state.step += T
        return self.generator(self.norm(x[:, -1:]))[:, 0]
