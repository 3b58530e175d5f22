"""Reference kernels: the affine map, its tied-weight form, the embedding lookup."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["LinearCache", "linear_forward", "linear_backward",
           "tied_linear_forward", "tied_linear_backward",
           "EmbeddingCache", "embedding_forward", "embedding_backward"]


class LinearCache(NamedTuple):
    x: np.ndarray  # (N, D_in): the input with its leading dims flattened
    lead_shape: tuple  # the leading dims of the input, restored on the way back


def linear_forward(x, W, b=None):
    """y = x W + b over the last axis of x, any leading dims.

    Shapes: x (..., D_in), W (D_in, D_out), b (D_out,) or None, y (..., D_out).

    Forward (the leading dims flattened into N rows: one GEMM):
        y = x W + b
    Returns (y, LinearCache).
    """
    lead_shape = x.shape[:-1]
    x2 = x.reshape(-1, W.shape[0])
    y = x2 @ W
    if b is not None:
        y = y + b
    return y.reshape(*lead_shape, W.shape[1]), LinearCache(x=x2, lead_shape=lead_shape)


def linear_backward(dy, cache: LinearCache, W, has_bias: bool = True):
    """The gradients of y = x W + b.

    Each output y_nk = sum_i x_ni W_ik + b_k, so (the matrix rules):
        dx = dy W^T          dx_ni = sum_k dy_nk W_ik          (..., D_in)
        dW = x^T dy          dW_ik = sum_n x_ni dy_nk          (D_in, D_out)
        db = sum_n dy_n      b is broadcast over the N rows: its gradient sums them
    Returns (dx, dW, db); db is None without a bias.
    """
    dy2 = dy.reshape(-1, W.shape[1])
    dx = dy2 @ W.T
    dW = cache.x.T @ dy2
    db = dy2.sum(axis=0) if has_bias else None
    return dx.reshape(*cache.lead_shape, W.shape[0]), dW, db


def tied_linear_forward(x, E, b=None):
    """y = x E^T + b: an output layer that reuses the (V, D) embedding table E.

    Shapes: x (..., D), E (V, D), b (V,) or None, y (..., V).
    Returns (y, LinearCache).
    """
    lead_shape = x.shape[:-1]
    x2 = x.reshape(-1, E.shape[1])
    y = x2 @ E.T
    if b is not None:
        y = y + b
    return y.reshape(*lead_shape, E.shape[0]), LinearCache(x=x2, lead_shape=lead_shape)


def tied_linear_backward(dy, cache: LinearCache, E, has_bias: bool = False):
    """The gradients of y = x E^T + b (the linear rules with W = E^T):
        dx = dy E            (..., D)
        dE = dy^T x          (V, D): the transpose of x^T dy
        db = sum_n dy_n
    Returns (dx, dE, db); db is None without a bias.
    """
    dy2 = dy.reshape(-1, E.shape[0])
    dx = dy2 @ E
    dE = dy2.T @ cache.x
    db = dy2.sum(axis=0) if has_bias else None
    return dx.reshape(*cache.lead_shape, E.shape[1]), dE, db


class EmbeddingCache(NamedTuple):
    ids: np.ndarray  # (...,) the integer ids that were looked up


def embedding_forward(ids, W):
    """y[p] = W[ids[p]] for every position p.

    Shapes: ids (...) integers in [0, V), W (V, D), y (..., D).
    Returns (y, EmbeddingCache).
    """
    y = W[ids]
    return y, EmbeddingCache(ids=ids)


def embedding_backward(dy, cache: EmbeddingCache, num_embeddings: int, padding_idx=None):
    """dW[v] = sum over the positions p with ids[p] == v of dy[p]   (scatter-add).

    y[p] = W[ids[p]] copies row ids[p]; a row looked up at several positions
    receives the sum of their gradients.  ``dW[ids] += dy`` would keep only one
    of the repeated ids (fancy-index assignment is not accumulated), so the sum
    is ``np.add.at``, which adds every position.  The ``padding_idx`` row gets
    no gradient (PyTorch's convention: it stays fixed in training).
    Ids get no gradient.  Returns dW (V, D).
    """
    ids = cache.ids.reshape(-1)
    dy2 = dy.reshape(ids.shape[0], dy.shape[-1])
    if padding_idx is not None:
        keep = ids != padding_idx
        ids = ids[keep]
        dy2 = dy2[keep]
    dW = np.zeros((num_embeddings, dy2.shape[1]), dy2.dtype)
    np.add.at(dW, ids, dy2)
    return dW
