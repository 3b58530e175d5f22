"""Attention: score functions, Attention (score + masked softmax + weighted sum),
MultiHeadAttention (with a KV cache for incremental decoding; grouped-query
heads, rotary embeddings, sliding windows, ALiBi), masks and biases."""

from .attention import Attention, AttentionCache
from .masks import alibi_bias, alibi_slopes, causal_mask, sliding_window_mask
from .multihead import KVCache, MultiHeadAttention, MultiHeadAttentionCache, plain_attention
from .rotary import RotaryEmbedding
from .scores import (
    AdditiveScore,
    ConcatScore,
    CosineScore,
    DotScore,
    GeneralScore,
    LocationScore,
    ScaledDotScore,
    Score,
)

__all__ = [
    "Score", "DotScore", "ScaledDotScore", "GeneralScore", "AdditiveScore", "ConcatScore",
    "CosineScore", "LocationScore", "Attention", "AttentionCache", "MultiHeadAttention",
    "MultiHeadAttentionCache", "KVCache", "causal_mask", "sliding_window_mask", "alibi_slopes",
    "alibi_bias", "RotaryEmbedding", "plain_attention",
]
