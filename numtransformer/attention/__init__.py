"""Attention: score functions, Attention (score + masked softmax + weighted sum),
MultiHeadAttention (with a KV cache for incremental decoding) and masks."""

from .attention import Attention, AttentionCache
from .masks import causal_mask
from .multihead import KVCache, MultiHeadAttention, MultiHeadAttentionCache
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
    "MultiHeadAttentionCache", "KVCache", "causal_mask",
]
