"""Token embedding lookup."""

from __future__ import annotations

import numpy as np

from .._init import normal
from .._validate import as_rng, check_float_dtype, check_ids, check_positive_int
from ..functional.linear import EmbeddingCache
from ..kernels import select
from ..module import Module, Parameter

__all__ = ["Embedding", "EmbeddingCache"]


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``.

    Shapes: ids (...) integers in [0, V), W (V, D), y (..., D).

    Forward:
        y[...] = W[ids[...]]

    Backward (ids get no gradient; backward returns None):
        dW[v] += sum over positions p with ids[p] == v of dy[p]
    The scatter-add must sum repeated ids (``W.grad[ids] += dy`` would keep
    only one of them): ``functional.embedding_backward`` (``np.add.at``; the
    fast kernel is a sparse matrix product, the same sums).

    ``padding_idx`` (as PyTorch): that row starts at zero and never receives
    gradient, so it stays fixed during training; the lookup itself still
    returns the row.  That zero gradient is a convention, not the derivative:
    a finite-difference check with padding ids in the input sees the row's true
    effect and disagrees on that row, by design.  Init as PyTorch: W ~ N(0, 1).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 *, dtype=np.float32, rng=None):
        self.num_embeddings = check_positive_int(self, "num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int(self, "embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
                raise TypeError(f"Embedding: padding_idx must be an int or None, "
                                f"got {type(padding_idx).__name__}")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be in [-{num_embeddings}, "
                                 f"{num_embeddings}), got {padding_idx}")
            padding_idx = int(padding_idx) % num_embeddings
        self.padding_idx = padding_idx
        dtype = check_float_dtype(self, dtype)
        W = normal(as_rng(rng), (num_embeddings, embedding_dim), dtype)
        if padding_idx is not None:
            W[padding_idx] = 0
        self.W = Parameter(W)

    def forward(self, ids):
        ids = check_ids(self, "ids", ids, self.num_embeddings)
        return select(self.W.dtype).embedding_forward(ids, self.W.data)

    def backward(self, dy, cache: EmbeddingCache):
        if self.W.requires_grad:  # a frozen table: no scatter-add, its grad stays zero
            self.W.grad += select(dy.dtype).embedding_backward(dy, cache, self.num_embeddings,
                                                               self.padding_idx)
        return None

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
