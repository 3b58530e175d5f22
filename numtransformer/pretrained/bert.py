"""A BERT-style encoder assembled from the library's own layers, and sentence pooling.

BERT (Devlin et al., 2019) is the Transformer encoder of "Attention Is All You
Need" with learned positions, a token-type (segment) embedding, a LayerNorm on
the embeddings, exact GELU, and no final norm (post-LN layers already end in
one).  Every piece here is a numtransformer Module with a hand-written
backward, so the whole model can be gradient-checked and fine-tuned.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import (as_rng, check_float, check_float_dtype, check_ids, check_positive_int,
                         check_probability)
from ..attention.packed import Packing
from ..inference import is_inference_mode
from ..layers import Dropout, Embedding
from ..layers.norms import check_norm, make_norm
from ..models.transformer import TransformerEncoderLayer
from ..module import Module

__all__ = ["BertEmbeddings", "BertModel", "MeanPooling", "L2Normalize", "SentenceEncoder",
           "load_hf_bert_weights", "hf_bert_name_map"]

_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                   "relu": "relu"}


def _check_attention_mask(layer, attention_mask, shape) -> np.ndarray:
    """A (B, T) 0/1 (or boolean) mask, 1/True = a real token; returned as bool."""
    who = type(layer).__name__
    if not isinstance(attention_mask, np.ndarray):
        raise TypeError(f"{who}: attention_mask must be a numpy array, got "
                        f"{type(attention_mask).__name__}")
    if attention_mask.shape != tuple(shape):
        raise ValueError(f"{who}: attention_mask has shape {attention_mask.shape}, expected "
                         f"{tuple(shape)} (the shape of input_ids)")
    if attention_mask.dtype == np.bool_:
        return attention_mask
    if not np.issubdtype(attention_mask.dtype, np.integer) or not np.isin(
            attention_mask, (0, 1)).all():
        raise ValueError(f"{who}: attention_mask must hold 0/1 (1 = real token) or booleans")
    return attention_mask.astype(bool)


# -- embeddings ----------------------------------------------------------------------------------
class BertEmbeddingsCache(NamedTuple):
    word: tuple  # Embedding caches of the three lookups
    position: tuple
    token_type: tuple
    norm: tuple  # h = norm(e)
    dropout: tuple


class BertEmbeddings(Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (BERT, sec. 3, fig. 2).

    Shapes: input_ids, token_type_ids (B, T) ints; W_word (V, D), W_pos (P, D),
    W_type (G, D); output (B, T, D); T <= P.

    Forward:
        e = W_word[input_ids] + W_pos[0..T-1] + W_type[token_type_ids]
        h = norm(e)                 LayerNorm; ``norm`` (a ``make_norm`` kind) chooses it
        y = dropout(h)
    Backward:
        dh = dropout.backward(dy)
        de = norm.backward(dh)
        dW_word[input_ids] += de ;  dW_pos[t] += sum_b de[b, t] ;  dW_type[token_type_ids] += de
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, layer_norm_eps: float = 1e-12, dropout: float = 0.1,
                 *, norm: str = "layernorm", dtype=np.float32, rng=None):
        check_norm(self, norm)
        rng = as_rng(rng)
        self.word = Embedding(vocab_size, hidden_size, dtype=dtype, rng=rng)
        self.position = Embedding(max_position_embeddings, hidden_size, dtype=dtype, rng=rng)
        self.token_type = Embedding(type_vocab_size, hidden_size, dtype=dtype, rng=rng)
        for emb in (self.word, self.position, self.token_type):  # BERT's N(0, 0.02^2)
            emb.W.data *= 0.02
        self.norm = make_norm(norm, hidden_size, layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(dropout, rng=rng.spawn(1)[0])
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings

    def forward(self, input_ids, token_type_ids=None):
        ids = check_ids(self, "input_ids", input_ids, self.word.num_embeddings)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"BertEmbeddings: input_ids must be (B, T) with T >= 1, got shape "
                             f"{ids.shape}")
        B, T = ids.shape
        if T > self.max_position_embeddings:
            raise ValueError(f"BertEmbeddings: sequence length {T} exceeds "
                             f"max_position_embeddings={self.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = np.zeros_like(ids)
        tt = check_ids(self, "token_type_ids", token_type_ids, self.token_type.num_embeddings)
        if tt.shape != ids.shape:
            raise ValueError(f"BertEmbeddings: token_type_ids has shape {tt.shape}, expected "
                             f"{ids.shape}")
        w, c_w = self.word.forward(ids)
        p, c_p = self.position.forward(np.arange(T))
        t, c_t = self.token_type.forward(tt)
        e = w + p + t
        h, c_n = self.norm.forward(e)
        y, c_d = self.dropout.forward(h)
        return y, BertEmbeddingsCache(c_w, c_p, c_t, c_n, c_d)

    def backward(self, dy, cache: BertEmbeddingsCache):
        dh = self.dropout.backward(dy, cache.dropout)
        de = self.norm.backward(dh, cache.norm)
        self.word.backward(de, cache.word)
        self.position.backward(de.sum(axis=0), cache.position)
        self.token_type.backward(de, cache.token_type)
        return None


# -- the encoder ---------------------------------------------------------------------------------
class BertModelCache(NamedTuple):
    embeddings: tuple
    layers: list | None  # one TransformerEncoderLayer cache per layer (None: inference mode)


class BertModel(Module):
    """The BERT encoder: embeddings, then N post-LN Transformer encoder layers.

    Shapes: input_ids (B, T) ints; attention_mask (B, T) 1 = real token, 0 =
    padding (optional); token_type_ids (B, T) (optional, default 0);
    last hidden state x_N (B, T, D).

    Forward:
        x_0 = BertEmbeddings(input_ids, token_type_ids)
        kpm = (attention_mask == 0)                      key padding mask, True = padding
        x_l = EncoderLayer_l(x_{l-1}, src_key_padding_mask=kpm)     l = 1..N
    where each EncoderLayer is TransformerEncoderLayer(norm_first=False,
    activation="gelu" (exact, erf)), i.e. BERT's layer, two post-norm
    residual sublayer connections (``SublayerConnection``):
        h = LayerNorm(x + dropout(SelfAttn(x)))
        y = LayerNorm(h + dropout(W2 gelu(W1 h + b1) + b2))
    ``norm`` (a ``make_norm`` kind, default "layernorm") chooses the norm of
    the embeddings and of every layer by one argument.
    Backward:
        dx_{l-1} = EncoderLayer_l.backward(dx_l)          l = N..1
        BertEmbeddings.backward(dx_0)                     (ids get no gradient)

    Dropout as BERT: on the attention weights and on both residual branches,
    not on the FFN's hidden activation (each layer's ffn.dropout is p = 0).
    Padded positions attend normally and get hidden states, which pooling
    ignores; a padded position is never attended to.
    In ``inference_mode()`` the layers' caches are not kept (the returned cache
    holds the embeddings' alone, and ``backward`` refuses it): the peak memory is
    one layer's temporaries, not every layer's.
    Weight names: see ``hf_bert_name_map``.
    """

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768,
                 num_hidden_layers: int = 12, num_attention_heads: int = 12,
                 intermediate_size: int = 3072, hidden_act: str = "gelu",
                 max_position_embeddings: int = 512, type_vocab_size: int = 2,
                 layer_norm_eps: float = 1e-12, hidden_dropout_prob: float = 0.1,
                 attention_probs_dropout_prob: float = 0.1, *, norm: str = "layernorm",
                 dtype=np.float32, rng=None):
        check_positive_int(self, "num_hidden_layers", num_hidden_layers)
        check_norm(self, norm)
        check_probability(self, "hidden_dropout_prob", hidden_dropout_prob)
        check_probability(self, "attention_probs_dropout_prob", attention_probs_dropout_prob)
        if hidden_act not in _HF_ACTIVATIONS:
            raise ValueError(f"BertModel: hidden_act must be one of {sorted(_HF_ACTIVATIONS)}, "
                             f"got {hidden_act!r}")
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        self.config = dict(vocab_size=vocab_size, hidden_size=hidden_size,
                           num_hidden_layers=num_hidden_layers,
                           num_attention_heads=num_attention_heads,
                           intermediate_size=intermediate_size, hidden_act=hidden_act,
                           max_position_embeddings=max_position_embeddings,
                           type_vocab_size=type_vocab_size, layer_norm_eps=layer_norm_eps,
                           hidden_dropout_prob=hidden_dropout_prob,
                           attention_probs_dropout_prob=attention_probs_dropout_prob,
                           norm=norm)
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_position_embeddings,
                                         type_vocab_size, layer_norm_eps, hidden_dropout_prob,
                                         norm=norm, dtype=dtype, rng=rng)
        self.layers = []
        for _ in range(num_hidden_layers):
            layer = TransformerEncoderLayer(hidden_size, num_attention_heads, intermediate_size,
                                            dropout=hidden_dropout_prob,
                                            activation=_HF_ACTIVATIONS[hidden_act],
                                            layer_norm_eps=layer_norm_eps, norm_first=False,
                                            norm=norm, dtype=dtype, rng=rng)
            layer.self_attn.dropout.p = float(attention_probs_dropout_prob)
            layer.ffn.dropout.p = 0.0
            self.layers.append(layer)
        self.hidden_size = hidden_size

    @classmethod
    def from_config(cls, config: dict, *, dtype=np.float32, rng=None) -> "BertModel":
        """Build from a Hugging Face ``config.json`` dict (model_type "bert"), or from
        a BertModel's own ``config`` (which also names its ``norm``)."""
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BertModel: position_embedding_type "
                             f"{config['position_embedding_type']!r} is not supported (only "
                             f"'absolute')")
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "max_position_embeddings",
                "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "norm")
        missing = [k for k in keys[:5] if k not in config]
        if missing:
            raise ValueError(f"BertModel: config lacks {', '.join(missing)}")
        return cls(**{k: config[k] for k in keys if k in config}, dtype=dtype, rng=rng)

    @property
    def dtype(self):
        return self.embeddings.norm.dtype

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        x, c_e = self.embeddings.forward(input_ids, token_type_ids)
        kpm = None
        if attention_mask is not None:
            keep = _check_attention_mask(self, attention_mask, np.shape(input_ids))
            kpm = ~keep
            if not kpm.any():
                kpm = None  # nothing is padding: skip the masking work
        if is_inference_mode():  # no backward: each layer's cache is dropped as it returns
            for layer in self.layers:
                x = layer(x, src_key_padding_mask=kpm)
            return x, BertModelCache(c_e, None)
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x, src_key_padding_mask=kpm)
            caches.append(c)
        return x, BertModelCache(c_e, caches)

    def forward_packed(self, sequences, packing=None):
        """The last hidden states of several sequences packed end to end, for inference
        (no dropout, no cache): ``sequences`` is a list of n id lists (token type 0),
        the result (h (N, D), packing) with sequence i at rows packing.offsets[i] ..
        packing.offsets[i+1] - 1, row for row what ``forward`` gives each sequence
        (in a padded batch, its real positions).  Every sublayer but attention
        runs as one pass over all N rows, with no padding rows; attention runs per
        group of similar lengths (``attention.packed.Packing``; pass one to choose
        the groups, its lengths those of the sequences).  Sort the sequences by
        length, longest first, for few and large groups.

            e = W_word[ids] + W_pos[position in its sequence] + W_type[0]
            x_0 = LayerNorm(e);   x_l = EncoderLayer_l.forward_packed(x_{l-1})
        """
        emb = self.embeddings
        lengths = [len(s) for s in sequences]
        if not lengths or min(lengths) < 1:
            raise ValueError("BertModel: forward_packed needs at least one sequence, each "
                             "of at least one token")
        if max(lengths) > emb.max_position_embeddings:
            raise ValueError(f"BertModel: sequence length {max(lengths)} exceeds "
                             f"max_position_embeddings={emb.max_position_embeddings}")
        if packing is None:
            packing = Packing(np.array(lengths))
        elif list(packing.lengths) != lengths:
            raise ValueError("BertModel: the packing's lengths are not the sequences'")
        ids = check_ids(self, "sequences", np.concatenate(
            [np.asarray(s, dtype=np.int64) for s in sequences]), emb.word.num_embeddings)
        W_word, W_pos, W_type = emb.word.W.data, emb.position.W.data, emb.token_type.W.data
        e = W_word[ids]
        e += W_pos[packing.positions]
        e += W_type[0]
        x = emb.norm(e)
        for layer in self.layers:
            x = layer.forward_packed(x, packing)
        return x, packing

    def backward(self, dx, cache: BertModelCache):
        if cache.layers is None:
            raise ValueError("BertModel: this cache comes from a forward in inference_mode(), "
                             "which keeps no layer caches; run the forward outside "
                             "inference_mode() to backpropagate")
        for layer, c in zip(reversed(self.layers), reversed(cache.layers)):
            dx = layer.backward(dx, c)
        self.embeddings.backward(dx, cache.embeddings)
        return None

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden_size={c['hidden_size']}, layers={c['num_hidden_layers']}, "
                f"heads={c['num_attention_heads']}, vocab_size={c['vocab_size']}")


# -- pooling -------------------------------------------------------------------------------------
class MeanPoolingCache(NamedTuple):
    m: np.ndarray  # (B, T, 1) the mask as floats, 1 = real token
    n: np.ndarray  # (B, 1) max(number of real tokens, 1e-9)


class MeanPooling(Module):
    """Mean of the hidden states over the real (unpadded) tokens (Sentence-BERT,
    Reimers & Gurevych, 2019, sec. 3: the MEAN strategy).

    Shapes: h (B, T, D), attention_mask (B, T) 1 = real token; s (B, D).

    Forward:
        m = attention_mask (as floats);   n = max(sum_t m_t, 1e-9)
        s = sum_t m_t h_t / n
    Backward:
        dh_t = m_t ds / n
    """

    def forward(self, h, attention_mask):
        h = check_float(self, "h", h, ndim=3)
        keep = _check_attention_mask(self, attention_mask, h.shape[:2])
        m = keep.astype(h.dtype)[:, :, None]
        n = np.maximum(m.sum(axis=1), 1e-9).astype(h.dtype)
        s = (h * m).sum(axis=1) / n
        return s, MeanPoolingCache(m=m, n=n)

    def backward(self, ds, cache: MeanPoolingCache):
        return cache.m * (ds / cache.n)[:, None, :]


class L2NormalizeCache(NamedTuple):
    y: np.ndarray  # (B, D) the output
    r: np.ndarray  # (B, 1) max(||x||, eps)
    clamped: np.ndarray  # (B, 1) bool: ||x|| < eps (then r = eps is a constant)


class L2Normalize(Module):
    """Scale each row to unit Euclidean length, as ``torch.nn.functional.normalize``.

    Shapes: x (B, D); y (B, D).

    Forward:
        r = max(||x||_2, eps)
        y = x / r
    Backward (r = ||x||: dr/dx = y; clamped rows: r is the constant eps):
        dx = (dy - y (y . dy)) / r          (unclamped rows)
        dx = dy / eps                        (clamped rows)
    """

    def __init__(self, eps: float = 1e-12):
        self.eps = float(eps)

    def forward(self, x):
        x = check_float(self, "x", x, ndim=2)
        norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
        clamped = norm < self.eps
        r = np.maximum(norm, self.eps).astype(x.dtype)
        y = x / r
        return y, L2NormalizeCache(y=y, r=r, clamped=clamped)

    def backward(self, dy, cache: L2NormalizeCache):
        y, r = cache.y, cache.r
        radial = np.where(cache.clamped, 0, np.sum(y * dy, axis=-1, keepdims=True))
        return (dy - y * radial) / r

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class SentenceEncoderCache(NamedTuple):
    bert: tuple
    pool: tuple
    normalize: tuple | None


class SentenceEncoder(Module):
    """A sentence embedding: BERT, mean pooling over real tokens, L2 normalisation
    (the all-MiniLM-L6-v2 pipeline: Transformer -> Pooling(mean) -> Normalize).

    Shapes: input_ids, attention_mask (B, T); embeddings (B, D).

    Forward:
        x = BertModel(input_ids, attention_mask, token_type_ids)      (B, T, D)
        s = MeanPooling(x, attention_mask)
        y = L2Normalize(s)                                             (normalize=True)
    Backward: the same chain in reverse.
    """

    def __init__(self, bert: BertModel, normalize: bool = True):
        if not isinstance(bert, BertModel):
            raise TypeError(f"SentenceEncoder: bert must be a BertModel, got "
                            f"{type(bert).__name__}")
        self.bert = bert
        self.pool = MeanPooling()
        self.normalize = L2Normalize() if normalize else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = np.ones(np.shape(input_ids), dtype=np.int64)
        x, c_b = self.bert.forward(input_ids, attention_mask, token_type_ids)
        s, c_p = self.pool.forward(x, attention_mask)
        c_n = None
        if self.normalize is not None:
            s, c_n = self.normalize.forward(s)
        return s, SentenceEncoderCache(c_b, c_p, c_n)

    def encode_packed(self, sequences, packing=None):
        """Embeddings (n, D) of n id lists, in their order, for inference: the
        sequences packed end to end (``BertModel.forward_packed``), mean pooling
        over each one's rows, L2 normalisation; row for row what ``forward``
        gives them in a padded batch."""
        h, packing = self.bert.forward_packed(sequences, packing)
        s = packing.segment_mean(h)
        if self.normalize is not None:
            s = self.normalize(s)
        return s

    def backward(self, dy, cache: SentenceEncoderCache):
        if self.normalize is not None:
            dy = self.normalize.backward(dy, cache.normalize)
        dx = self.pool.backward(dy, cache.pool)
        return self.bert.backward(dx, cache.bert)


# -- Hugging Face weights ------------------------------------------------------------------------
def hf_bert_name_map(model: BertModel) -> dict[str, tuple]:
    """{our parameter name: (Hugging Face tensor name(s), how)} for a BertModel.

    how = "T": ours is the torch Linear weight transposed; "=": the same array;
    "qkv.T": ours (in_proj.W) is [query.T | key.T | value.T] side by side;
    "qkv": ours (in_proj.b) is [query | key | value] concatenated.
    """
    if model.config.get("norm", "layernorm") != "layernorm":
        raise ValueError(f"hf_bert_name_map: BERT's checkpoints hold LayerNorm weights and "
                         f"biases; this model was built with norm={model.config['norm']!r}")
    m = {"embeddings.word.W": ("embeddings.word_embeddings.weight", "="),
         "embeddings.position.W": ("embeddings.position_embeddings.weight", "="),
         "embeddings.token_type.W": ("embeddings.token_type_embeddings.weight", "="),
         "embeddings.norm.gamma": ("embeddings.LayerNorm.weight", "="),
         "embeddings.norm.beta": ("embeddings.LayerNorm.bias", "=")}
    for i in range(len(model.layers)):
        hf, ours = f"encoder.layer.{i}.", f"layers.{i}."
        qkv = tuple(f"{hf}attention.self.{n}" for n in ("query", "key", "value"))
        m[ours + "self_attn.in_proj.W"] = (tuple(q + ".weight" for q in qkv), "qkv.T")
        m[ours + "self_attn.in_proj.b"] = (tuple(q + ".bias" for q in qkv), "qkv")
        pairs = (("self_attn.out_proj", "attention.output.dense"),
                 ("ffn.linear1", "intermediate.dense"), ("ffn.linear2", "output.dense"))
        for o, h in pairs:
            m[f"{ours}{o}.W"] = (f"{hf}{h}.weight", "T")
            m[f"{ours}{o}.b"] = (f"{hf}{h}.bias", "=")
        for o, h in (("norm1", "attention.output.LayerNorm"), ("norm2", "output.LayerNorm")):
            m[f"{ours}{o}.gamma"] = (f"{hf}{h}.weight", "=")
            m[f"{ours}{o}.beta"] = (f"{hf}{h}.bias", "=")
    return m


def load_hf_bert_weights(model: BertModel, tensors: dict) -> list[str]:
    """Copy a Hugging Face BERT state (e.g. from ``load_safetensors``) into ``model``.

    Accepts the names with or without a leading "bert." and the old
    LayerNorm.gamma/beta spelling.  Tensors the encoder does not use (the
    pooler, position_ids, task heads) are skipped and returned; a missing or
    misshapen tensor is a ValueError naming it.
    """
    def canonical(name):
        name = name[5:] if name.startswith("bert.") else name
        return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias")

    table = {canonical(k): v for k, v in tensors.items()}
    params = dict(model.named_parameters())
    used, new, problems = set(), {}, []
    for ours, (src, how) in hf_bert_name_map(model).items():
        names = src if isinstance(src, tuple) else (src,)
        absent = [n for n in names if n not in table]
        if absent:
            problems.append("missing " + ", ".join(absent))
            continue
        used.update(names)
        arrays = [np.asarray(table[n]) for n in names]
        if how == "T":
            value = arrays[0].T
        elif how == "qkv.T":
            value = np.concatenate([a.T for a in arrays], axis=1)
        elif how == "qkv":
            value = np.concatenate(arrays)
        else:
            value = arrays[0]
        if value.shape != params[ours].shape:
            problems.append(f"{names[0]} gives {ours} shape {value.shape}, expected "
                            f"{params[ours].shape}")
            continue
        if value.dtype.kind != "f":  # an int or bool tensor here is another file's
            problems.append(f"{names[0]} has dtype {value.dtype}, expected floating point")
            continue
        if not np.isfinite(value).all():
            problems.append(f"{names[0]} contains NaN/inf")
            continue
        new[ours] = value
    if problems:
        raise ValueError("load_hf_bert_weights: " + "; ".join(problems))
    for name, value in new.items():
        p = params[name]
        p.data = np.array(value, dtype=p.dtype, order="C", copy=True)
    return sorted(set(table) - used)
