"""Weight exchange with Hugging Face transformers' Llama (``from_torch`` / ``to_torch``).

transformers and torch are imported inside the functions that need them.

Pairs covered (Hugging Face <-> numtransformer):

    LlamaForCausalLM   <-> models.TransformerLM with the modern options (norm="rmsnorm",
                           positional="rotary", activation="swiglu", n_kv_heads, bias)
    LlamaDecoderLayer  <-> models.TransformerEncoderLayer(norm="rmsnorm", norm_first=True,
                           activation="swiglu", attention={n_kv_heads, rotary})
    LlamaAttention     <-> attention.MultiHeadAttention(n_kv_heads=..., rotary={"layout":
                           "half", "base": rope_theta})
    LlamaMLP           <-> layers.SwiGLUFeedForward
    LlamaRMSNorm       <-> layers.RMSNorm

Layout rules, one line per kind of tensor (ours <- Hugging Face):

    embeddings    embed.W = model.embed_tokens.weight
    attention     self_attn.in_proj.W[:, 0:E]            = q_proj.weight.T
                  self_attn.in_proj.W[:, E:E+E_kv]       = k_proj.weight.T
                  self_attn.in_proj.W[:, E+E_kv:E+2E_kv] = v_proj.weight.T
                  (biases, with attention_bias, the same column blocks of in_proj.b)
                  self_attn.out_proj.W = o_proj.weight.T
    MLP           ffn.gate_proj.W = mlp.gate_proj.weight.T  (up_proj, down_proj alike)
    norms         norm1.gamma = input_layernorm.weight
                  norm2.gamma = post_attention_layernorm.weight
                  norm.gamma  = model.norm.weight
    blocks        blocks.{i}.* = model.layers.{i}.*
    output        generator.W = lm_head.weight.T  (tie_word_embeddings: none; the
                  output reuses embed.W, as lm_head reuses embed_tokens)

Hyper-parameters that travel: hidden_size = d_model, num_attention_heads =
nhead, num_key_value_heads = n_kv_heads, intermediate_size = dim_feedforward,
num_hidden_layers = num_layers, rms_norm_eps = layer_norm_eps, rope_theta =
rope_base, max_position_embeddings = max_len, tie_word_embeddings =
tie_output, attention_bias / mlp_bias = bias, attention_dropout = the
attention's dropout, and the train/eval mode.

Refused, each by name: rope scaling other than "default", hidden_act other
than "silu", head_dim other than hidden_size / num_attention_heads,
attention_bias != mlp_bias, pretraining_tp > 1, a Llama module class not
in the list above (LlamaModel: take LlamaForCausalLM).  To Hugging Face:
the interleaved rotary layout, sliding windows, ALiBi, LayerNorm, a learned
or sinusoidal position table, LoRA wrappers, and (in train mode) residual or
feed-forward dropout, which Llama does not have.

Numerics.  Hugging Face's ``LlamaRMSNorm`` computes in float32 whatever the
input dtype (it casts the input to float32 and the result back), and
``LlamaRotaryEmbedding`` forms its angles in float32; numtransformer computes
in the model's dtype.  A float64 Llama therefore agrees with ours to float32
rounding only; the parity tests name the two casts and show agreement to
1e-10 once they are removed (``tests/parity/test_llama_hf.py``).
"""

from __future__ import annotations

from ..attention import MultiHeadAttention
from ..layers import RMSNorm, SwiGLUFeedForward
from ..models.llama import lm_kwargs_from_hf_config
from ..models.transformer import TransformerEncoderLayer, TransformerLM

__all__ = ["HF_LLAMA_CLASSES", "is_hf_llama", "lm_kwargs_from_hf_config", "llama_config",
           "maps_onto_llama", "parameter_map", "from_hf", "to_hf", "state_aliases"]

HF_LLAMA_CLASSES = ("LlamaForCausalLM", "LlamaDecoderLayer", "LlamaAttention", "LlamaMLP",
                    "LlamaRMSNorm")


def _pm():
    from .torch import ParamMap  # the one map record; torch.py imports this module lazily
    return ParamMap


# -- our modules -> a Hugging Face config ------------------------------------------------------
def llama_config(module, who: str = "to_torch"):
    """A Hugging Face ``LlamaConfig`` describing our ``module`` (a Llama-style
    TransformerLM, decoder layer, attention, SwiGLU FFN or RMSNorm)."""
    from transformers import LlamaConfig
    kw = dict(num_hidden_layers=1, vocab_size=1, max_position_embeddings=2048,
              tie_word_embeddings=False, hidden_act="silu", attention_dropout=0.0,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if isinstance(module, TransformerLM):
        c = module.config
        layer = module.blocks[0]
        kw.update(vocab_size=c["vocab_size"], num_hidden_layers=c["num_layers"],
                  max_position_embeddings=c["max_len"], tie_word_embeddings=c["tie_output"])
    else:
        layer = module
    if isinstance(layer, TransformerEncoderLayer):
        _check_llama_layer(layer, who)
        attn, ffn, norm = layer.self_attn, layer.ffn, layer.norm1
    else:
        attn = layer if isinstance(layer, MultiHeadAttention) else None
        ffn = layer if isinstance(layer, SwiGLUFeedForward) else None
        norm = layer if isinstance(layer, RMSNorm) else None
    if attn is not None:
        _check_llama_attention(attn, who)
        kw.update(hidden_size=attn.d_model, num_attention_heads=attn.n_heads,
                  num_key_value_heads=attn.n_kv_heads, head_dim=attn.d_k,
                  attention_bias=attn.out_proj.b is not None,
                  attention_dropout=float(attn.dropout.p),
                  rope_parameters={"rope_type": "default", "rope_theta": attn.rotary.base})
    if ffn is not None:
        kw.update(hidden_size=ffn.d_model, intermediate_size=ffn.d_ff,
                  mlp_bias=ffn.gate_proj.b is not None)
        kw.setdefault("num_attention_heads", 1)
    if norm is not None:
        kw.update(rms_norm_eps=float(norm.eps), hidden_size=norm.normalized_shape[-1])
        kw.setdefault("num_attention_heads", 1)
    cfg = LlamaConfig(**kw)
    cfg._attn_implementation = "sdpa"  # float64 throughout (eager takes the softmax in float32)
    return cfg


def _check_llama_attention(m: MultiHeadAttention, who: str) -> None:
    if m.rotary is None or m.rotary.layout != "half":
        got = "no rotary embedding" if m.rotary is None else f"the {m.rotary.layout} layout"
        raise TypeError(f"{who}: LlamaAttention rotates q and k in the 'half' layout; this "
                        f"MultiHeadAttention has {got}")
    for name, on in (("window", m.window is not None), ("alibi", m.alibi),
                     ("kdim/vdim != d_model", m.in_proj is None)):
        if on:
            raise TypeError(f"{who}: this MultiHeadAttention uses {name}; LlamaAttention "
                            f"has no counterpart")


def _check_llama_layer(layer: TransformerEncoderLayer, who: str) -> None:
    if not (layer.norm_first and isinstance(layer.norm1, RMSNorm)
            and isinstance(layer.ffn, SwiGLUFeedForward)):
        raise TypeError(f"{who}: a LlamaDecoderLayer is a pre-norm layer with RMSNorm and a "
                        f"SwiGLU feed-forward (norm='rmsnorm', norm_first=True, "
                        f"activation='swiglu'); this layer is not")
    if layer.training and max(layer.dropout1.p, layer.dropout2.p, layer.ffn.dropout.p) > 0:
        raise ValueError(f"{who}: LlamaDecoderLayer has no residual or feed-forward dropout; "
                         f"this layer has p = {layer.dropout1.p} (call .eval() to export it "
                         f"for inference, or build it with dropout=0)")
    if (layer.self_attn.out_proj.b is None) != (layer.ffn.gate_proj.b is None):
        raise ValueError(f"{who}: attention and MLP biases differ; not supported")


# -- our parameter names <-> Hugging Face's -----------------------------------------------------
def maps_onto_llama(module) -> bool:
    """Whether ``module`` has a Hugging Face Llama counterpart rather than a torch.nn one."""
    if isinstance(module, (TransformerLM, RMSNorm, SwiGLUFeedForward)):
        return True
    if isinstance(module, TransformerEncoderLayer):
        return isinstance(module.ffn, SwiGLUFeedForward) or isinstance(module.norm1, RMSNorm)
    if isinstance(module, MultiHeadAttention):  # LlamaAttention: rotate-half, no window/alibi
        return (module.rotary is not None and module.rotary.layout == "half"
                and module.window is None and not module.alibi)
    return False


def _linear(ours: str, theirs: str, lin, cols=None):
    P = _pm()
    maps = [P(f"{ours}.W", f"{theirs}.weight", True, None, cols)]
    if lin.b is not None:
        maps.append(P(f"{ours}.b", f"{theirs}.bias", False, None, cols))
    return maps


def _attention_map(m: MultiHeadAttention, who: str):
    _check_llama_attention(m, who)
    E, E_kv = m.d_model, m.n_kv_heads * m.d_k
    blocks = (("q_proj", (0, E)), ("k_proj", (E, E + E_kv)), ("v_proj", (E + E_kv, E + 2 * E_kv)))
    maps = []
    for name, cols in blocks:
        maps += _linear("in_proj", name, m.in_proj, cols)
    return maps + _linear("out_proj", "o_proj", m.out_proj)


def _mlp_map(f: SwiGLUFeedForward):
    return [m for name in ("gate_proj", "up_proj", "down_proj")
            for m in _linear(name, name, getattr(f, name))]


def _norm_map(n, who: str):
    if not isinstance(n, RMSNorm):
        raise TypeError(f"{who}: Llama's norms are RMSNorm; this one is {type(n).__name__}")
    if n.gamma is None or len(n.normalized_shape) != 1:
        raise ValueError(f"{who}: LlamaRMSNorm has a weight over one axis; this RMSNorm has "
                         f"normalized_shape={n.normalized_shape}, elementwise_affine="
                         f"{n.gamma is not None}")
    return [_pm()("gamma", "weight", False, None)]


def _prefix(maps, ours: str, theirs: str):
    return [m._replace(ours=ours + m.ours, torch=theirs + m.torch) for m in maps]


def _layer_map(layer: TransformerEncoderLayer, who: str):
    _check_llama_layer(layer, who)
    return (_prefix(_attention_map(layer.self_attn, who), "self_attn.", "self_attn.")
            + _prefix(_mlp_map(layer.ffn), "ffn.", "mlp.")
            + _prefix(_norm_map(layer.norm1, who), "norm1.", "input_layernorm.")
            + _prefix(_norm_map(layer.norm2, who), "norm2.", "post_attention_layernorm."))


def _lm_map(lm: TransformerLM, who: str):
    c = lm.config
    if c["positional"] != "rotary":
        raise TypeError(f"{who}: this TransformerLM adds a {c['positional']} position table; "
                        f"LlamaForCausalLM has none (positional='rotary')")
    P = _pm()
    maps = [P("embed.W", "model.embed_tokens.weight", False, None)]
    for i, block in enumerate(lm.blocks):
        maps += _prefix(_layer_map(block, f"{who}.blocks.{i}"), f"blocks.{i}.",
                        f"model.layers.{i}.")
    maps += _prefix(_norm_map(lm.norm, who), "norm.", "model.norm.")
    if not c["tie_output"]:
        if lm.generator.b is not None:
            raise ValueError(f"{who}: Llama's lm_head has no bias; this TransformerLM's "
                             f"output layer has one (build it with output_bias=False)")
        maps += _linear("generator", "lm_head", lm.generator)
    return maps


def parameter_map(module, who: str = "interop") -> list:
    """Where each of ``module``'s parameters lives in its Hugging Face Llama counterpart."""
    if isinstance(module, TransformerLM):
        return _lm_map(module, who)
    if isinstance(module, TransformerEncoderLayer):
        return _layer_map(module, who)
    if isinstance(module, MultiHeadAttention):
        return _attention_map(module, who)
    if isinstance(module, SwiGLUFeedForward):
        return _mlp_map(module)
    return _norm_map(module, who)


# -- Hugging Face -> numtransformer -------------------------------------------------------------
def is_hf_llama(t) -> bool:
    """Whether ``t`` is a module of transformers' Llama implementation."""
    return type(t).__module__.startswith("transformers.models.llama.")


def from_hf(t, who: str, dtype):
    """A new numtransformer module shaped like the Hugging Face Llama module ``t``
    (weights are copied by the caller, through ``parameter_map``)."""
    name = type(t).__name__
    if name not in HF_LLAMA_CLASSES:
        raise TypeError(f"from_torch: {who} is a {name}, which has no numtransformer "
                        f"counterpart; supported Llama classes: {', '.join(HF_LLAMA_CLASSES)}")
    if name == "LlamaRMSNorm":
        return RMSNorm(t.weight.shape[0], float(t.variance_epsilon), dtype=dtype)
    cfg = t.config if hasattr(t, "config") else t.self_attn.config  # a decoder layer has none
    kw = lm_kwargs_from_hf_config(cfg, f"from_torch: {who}")
    if name == "LlamaForCausalLM":
        return TransformerLM(**kw, dtype=dtype)
    if name == "LlamaMLP":
        return SwiGLUFeedForward(kw["d_model"], kw["dim_feedforward"], bias=kw["bias"],
                                 dtype=dtype)
    attention = dict(n_kv_heads=kw["n_kv_heads"],
                     rotary={"base": kw["rope_base"], "layout": "half"})
    p_attn = float(cfg.attention_dropout)
    if name == "LlamaAttention":
        return MultiHeadAttention(kw["d_model"], kw["nhead"], p_attn, bias=kw["bias"],
                                  dtype=dtype, **attention)
    eps = float(t.input_layernorm.variance_epsilon)
    layer = TransformerEncoderLayer(kw["d_model"], kw["nhead"], kw["dim_feedforward"], 0.0,
                                    "swiglu", eps, norm_first=True,
                                    norm="rmsnorm", bias=kw["bias"], attention=attention,
                                    dtype=dtype)
    layer.self_attn.dropout.p = p_attn
    return layer


# -- numtransformer -> Hugging Face -------------------------------------------------------------
def to_hf(m, dtype):
    """A new Hugging Face Llama module shaped like ours (weights copied by the caller)."""
    from transformers.models.llama import modeling_llama as hf
    cfg = llama_config(m)
    if isinstance(m, TransformerLM):
        t = hf.LlamaForCausalLM(cfg)
    elif isinstance(m, TransformerEncoderLayer):
        t = hf.LlamaDecoderLayer(cfg, layer_idx=0)
    elif isinstance(m, MultiHeadAttention):
        t = hf.LlamaAttention(cfg, layer_idx=0)
    elif isinstance(m, SwiGLUFeedForward):
        t = hf.LlamaMLP(cfg)
    else:
        t = hf.LlamaRMSNorm(m.normalized_shape[-1], eps=float(m.eps))
    return t.to(dtype)


def state_aliases(t) -> set:
    """Names in ``t.state_dict()`` that alias another entry (tied embeddings)."""
    seen, aliases = {}, set()
    for name, v in t.state_dict(keep_vars=True).items():
        key = id(v)
        if key in seen:
            aliases.add(name)
        seen[key] = name
    return aliases
