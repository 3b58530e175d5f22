"""Boolean attention masks (True = may NOT attend, as in PyTorch).

Two kinds of mask exist, and an attention layer ORs them together:

* a key-padding mask ``(B, Tk)``: key j of sequence b is padding, so no query
  of that sequence may look at it;
* an attention mask ``(Tq, Tk)`` (shared by the batch) or ``(B, Tq, Tk)``:
  query i may not look at key j (the causal mask of a decoder is one).

A query row whose keys are all blocked gets all-zero weights (see
``numtransformer.layers.softmax``), hence a zero context and zero gradients.

Position-dependent masks and biases of causal self-attention, built for
queries at positions offset .. offset + Tq - 1 (incremental decoding passes
the number of cached steps as the offset) and keys at 0 .. offset + Tq - 1:

* ``causal_mask(T)``: query i sees keys j <= i;
* ``sliding_window_mask(T, window, offset)``: local attention, query at
  position t sees keys t - window + 1 .. t (Beltagy et al. 2020, Longformer's
  causal sliding window; Mistral 7B);
* ``alibi_slopes(n_heads)`` and ``alibi_bias(slopes, T, offset)``: ALiBi's
  linear biases -m_h (t - j) added to the scores (Press, Smith & Lewis 2022).
"""

from __future__ import annotations

import numpy as np

from .._validate import _name, check_positive_int

__all__ = ["causal_mask", "sliding_window_mask", "alibi_slopes", "alibi_bias",
           "check_key_padding_mask", "check_attn_mask"]


def causal_mask(T: int) -> np.ndarray:
    """The ``(T, T)`` mask that is True above the diagonal: step i sees steps 0..i only.

    >>> causal_mask(3).astype(int)
    array([[0, 1, 1],
           [0, 0, 1],
           [0, 0, 0]])
    """
    T = check_positive_int("causal_mask", "T", T)
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def sliding_window_mask(T: int, window: int, offset: int = 0, *, Tk: int | None = None
                        ) -> np.ndarray:
    """The ``(T, Tk)`` causal sliding-window mask, True = blocked (Tk = offset + T
    unless given).

    Query i sits at position t = offset + i and sees the keys j with
    t - window + 1 <= j <= t: itself and the window - 1 steps before it.
    window = 1 sees only itself; window >= offset + T is ``causal_mask``.

    >>> sliding_window_mask(4, 2).astype(int)
    array([[0, 1, 1, 1],
           [0, 0, 1, 1],
           [1, 0, 0, 1],
           [1, 1, 0, 0]])
    """
    T = check_positive_int("sliding_window_mask", "T", T)
    window = check_positive_int("sliding_window_mask", "window", window)
    offset = check_positive_int("sliding_window_mask", "offset", offset, minimum=0)
    Tk = offset + T if Tk is None else check_positive_int("sliding_window_mask", "Tk", Tk)
    t = offset + np.arange(T)[:, None]  # the queries' positions
    j = np.arange(Tk)[None, :]
    return (j > t) | (j <= t - window)


def _geometric_slopes(n: int) -> list:
    # m_k = (2^(-8/n))^k = 2^(-8k/n), k = 1 .. n, as one power each (exact for n | 8k)
    return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi's head-specific slopes m_h (Press, Smith & Lewis 2022, "Train Short,
    Test Long", sec. 3), float64 of shape (n_heads,).

    For n heads, n a power of two: the geometric sequence that starts at
    2^(-8/n) with ratio 2^(-8/n) (8 heads: 1/2, 1/4, .., 1/256).  Otherwise
    (the rule of the paper's code, as Hugging Face's BLOOM and MPT use): take
    the n0 = 2^floor(log2 n) slopes for n0 heads, then the first n - n0 of
    every other slope for 2 n0 heads (the ones that interleave with the first).

    >>> alibi_slopes(4)
    array([0.25      , 0.0625    , 0.015625  , 0.00390625])
    """
    n = check_positive_int("alibi_slopes", "n_heads", n_heads)
    n0 = 1 << (n.bit_length() - 1)
    slopes = _geometric_slopes(n0)
    if n0 < n:
        slopes += _geometric_slopes(2 * n0)[0::2][:n - n0]
    return np.array(slopes)


def alibi_bias(slopes, T: int, offset: int = 0, dtype=np.float64, *, Tk: int | None = None
               ) -> np.ndarray:
    """ALiBi's bias ``(H, T, Tk)``: b_h[i, j] = -m_h (t - j), t = offset + i (Tk =
    offset + T unless given).

    Added to the scores q_t . k_j / sqrt(d) of head h before the softmax: a
    key d steps in the past is penalised by m_h d.  (Keys in the future, j >
    t, get a positive bias: ALiBi is meant for causal attention, whose mask
    blocks them.)  Hugging Face's BLOOM adds m_h j instead, which differs by
    m_h t, a constant per query row, which the softmax ignores.
    """
    T = check_positive_int("alibi_bias", "T", T)
    offset = check_positive_int("alibi_bias", "offset", offset, minimum=0)
    slopes = np.asarray(slopes, dtype=np.float64)
    Tk = offset + T if Tk is None else check_positive_int("alibi_bias", "Tk", Tk)
    j_minus_t = np.arange(Tk)[None, :] - (offset + np.arange(T))[:, None]
    return (slopes[:, None, None] * j_minus_t).astype(dtype)  # -m_h (t - j), without -0.0


def _bool_array(who: str, arg: str, mask) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{who}: {arg} must be a boolean numpy array, got {type(mask).__name__}")
    if mask.dtype != np.bool_:
        raise TypeError(f"{who}: {arg} must be boolean (True = blocked), got dtype {mask.dtype}")
    return mask


def check_key_padding_mask(layer, arg: str, mask, B: int, Tk: int) -> np.ndarray:
    """A ``(B, Tk)`` boolean mask; returned as ``(B, Tk)``."""
    who = _name(layer)
    mask = _bool_array(who, arg, mask)
    if mask.shape != (B, Tk):
        raise ValueError(f"{who}: {arg} has shape {mask.shape}, expected (B, Tk) = {(B, Tk)}")
    return mask


def check_attn_mask(layer, arg: str, mask, B: int, Tq: int, Tk: int,
                    *, allow_2d: bool = True, allow_key_padding: bool = False) -> np.ndarray:
    """An attention mask, returned broadcastable against ``(B, Tq, Tk)``.

    Accepted shapes: ``(B, Tq, Tk)``; ``(Tq, Tk)`` when ``allow_2d``; ``(B, Tk)``
    (a key-padding mask, read as ``(B, 1, Tk)``) when ``allow_key_padding``.
    When two readings fit the same 2-D shape (B == Tq), key padding wins.
    """
    who = _name(layer)
    mask = _bool_array(who, arg, mask)
    if mask.shape == (B, Tq, Tk):
        return mask
    if allow_key_padding and mask.shape == (B, Tk):
        return mask[:, None, :]
    if allow_2d and mask.shape == (Tq, Tk):
        return mask[None]
    shapes = [f"(B, Tq, Tk) = {(B, Tq, Tk)}"]
    if allow_key_padding:
        shapes.insert(0, f"(B, Tk) = {(B, Tk)}")
    if allow_2d:
        shapes.insert(0, f"(Tq, Tk) = {(Tq, Tk)}")
    raise ValueError(f"{who}: {arg} has shape {mask.shape}, expected " + " or ".join(shapes))
