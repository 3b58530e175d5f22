"""Boolean attention masks (True = may NOT attend, as in PyTorch).

Two kinds of mask exist, and an attention layer ORs them together:

* a key-padding mask ``(B, Tk)``: key j of sequence b is padding, so no query
  of that sequence may look at it;
* an attention mask ``(Tq, Tk)`` (shared by the batch) or ``(B, Tq, Tk)``:
  query i may not look at key j (the causal mask of a decoder is one).

A query row whose keys are all blocked gets all-zero weights (see
``numtransformer.layers.softmax``), hence a zero context and zero gradients.
"""

from __future__ import annotations

import numpy as np

from .._validate import _name, check_positive_int

__all__ = ["causal_mask", "check_key_padding_mask", "check_attn_mask"]


def causal_mask(T: int) -> np.ndarray:
    """The ``(T, T)`` mask that is True above the diagonal: step i sees steps 0..i only.

    >>> causal_mask(3).astype(int)
    array([[0, 1, 1],
           [0, 0, 1],
           [0, 0, 0]])
    """
    T = check_positive_int("causal_mask", "T", T)
    return np.triu(np.ones((T, T), dtype=bool), k=1)


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
