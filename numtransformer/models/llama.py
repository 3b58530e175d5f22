"""The LLaMA-style decoder-only model (Touvron et al. 2023, "LLaMA: Open and
Efficient Foundation Language Models"; the architecture of Llama 2/3, SmolLM2,
TinyLlama): ``TransformerLM`` with its modern options, built by one call.

    x_0      = E[ids]                               no position table
    h_l      = x_{l-1} + Attn_l(RMSNorm(x_{l-1}))   rotary q, k; n_kv_heads K/V heads;
                                                    optional sliding window
    x_l      = h_l + SwiGLU_l(RMSNorm(h_l))          down(silu(x W_gate) * (x W_up))
    logits   = RMSNorm(x_N) W_out                   W_out = E^T when tied
    no biases anywhere (Llama's attention_bias = mlp_bias = False)

Each block's forward equations and backward derivation are in the layers it is
made of: ``layers.RMSNorm``, ``attention.RotaryEmbedding`` and
``MultiHeadAttention`` (grouped-query heads, windows), ``layers.SwiGLUFeedForward``,
``layers.residual.SublayerConnection`` (pre-norm), ``models.TransformerLM``
(embedding, final norm, output).  ``lm_kwargs_from_hf_config`` maps a Hugging
Face ``LlamaConfig`` onto the constructor; ``interop.from_torch`` copies a
``LlamaForCausalLM``'s weights too.
"""

from __future__ import annotations

import numpy as np

from .transformer import TransformerLM

__all__ = ["llama_lm", "lm_kwargs_from_hf_config", "from_hf_config"]


def llama_lm(vocab_size: int, d_model: int = 128, nhead: int = 4,
             n_kv_heads: int | None = None, num_layers: int = 4,
             dim_feedforward: int | None = None, *, window: int | None = None,
             max_len: int = 2048, tie_output: bool = True, rope_base: float = 10000.0,
             eps: float = 1e-6, dropout: float = 0.0, attention_impl: str = "plain",
             dtype=np.float32, rng=None) -> TransformerLM:
    """A LLaMA-style ``TransformerLM``: RMSNorm (``eps``), rotary embeddings (base
    ``rope_base``, Hugging Face's rotate-half layout), SwiGLU (``dim_feedforward``;
    default LLaMA's 8/3 d_model rounded up to a multiple of 8), ``n_kv_heads``
    key/value heads, an optional sliding ``window``, no biases; ``attention_impl``
    "tiled" for FlashAttention-style tiles."""
    if dim_feedforward is None:
        dim_feedforward = -(-8 * d_model // 3 // 8) * 8
    return TransformerLM(vocab_size, d_model, nhead, num_layers, dim_feedforward, dropout,
                         "swiglu", eps, "rotary", max_len, tie_output, norm="rmsnorm",
                         n_kv_heads=n_kv_heads, window=window, rope_base=rope_base, bias=False,
                         attention_impl=attention_impl, dtype=dtype, rng=rng)


def _rope(cfg, who: str) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"{who}: rope_type={kind!r} (rope scaling) is not supported; only "
                         f"the default rotary embedding is")
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise ValueError(f"{who}: the config has no rope_theta")
    return float(theta)


def lm_kwargs_from_hf_config(cfg, who: str = "from_torch") -> dict:
    """``TransformerLM`` keyword arguments equivalent to a Hugging Face ``LlamaConfig``.

    Refuses, by name, what the model cannot represent (see the module docstring)."""
    H, E = cfg.num_attention_heads, cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or E // H
    if head_dim * H != E:
        raise ValueError(f"{who}: head_dim={head_dim} with {H} heads is not hidden_size={E}; "
                         f"numtransformer's attention has d_k = d_model / n_heads")
    if cfg.hidden_act != "silu":
        raise ValueError(f"{who}: hidden_act={cfg.hidden_act!r} is not supported; Llama's MLP "
                         f"maps onto SwiGLU, which uses 'silu'")
    if bool(cfg.attention_bias) != bool(cfg.mlp_bias):
        raise ValueError(f"{who}: attention_bias={cfg.attention_bias} with mlp_bias="
                         f"{cfg.mlp_bias} is not supported; numtransformer's bias= sets both")
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        raise ValueError(f"{who}: pretraining_tp={cfg.pretraining_tp} is not supported")
    n_kv = cfg.num_key_value_heads or H
    return dict(vocab_size=cfg.vocab_size, d_model=E, nhead=H,
                num_layers=cfg.num_hidden_layers, dim_feedforward=cfg.intermediate_size,
                dropout=0.0, activation="swiglu", layer_norm_eps=float(cfg.rms_norm_eps),
                positional="rotary", max_len=cfg.max_position_embeddings,
                tie_output=bool(cfg.tie_word_embeddings), norm="rmsnorm",
                n_kv_heads=None if n_kv == H else n_kv, rope_base=_rope(cfg, who),
                bias=bool(cfg.attention_bias), output_bias=False)


def from_hf_config(cfg, *, dtype=np.float32, rng=None) -> TransformerLM:
    """A new ``TransformerLM`` shaped as the Hugging Face ``LlamaConfig`` ``cfg``
    says (random weights; ``interop.from_torch(model)`` also copies them)."""
    return TransformerLM(**lm_kwargs_from_hf_config(cfg, "from_hf_config"), dtype=dtype, rng=rng)
