"""What the encoder, the decoders and the model share: the names of the
choices, ``make_score`` (a score of ``numtransformer.attention`` by name) and
the argument checks."""

from __future__ import annotations

import numpy as np

from ..._validate import _name, check_mask
from ...attention import (AdditiveScore, CosineScore, DotScore, GeneralScore, LocationScore,
                          ScaledDotScore)

__all__ = ["SCORES", "make_score"]

SCORES = ("dot", "scaled_dot", "general", "additive", "concat", "cosine", "location")
_RNN_CELLS = ("rnn", "gru", "lstm")
_ATTENTIONS = ("luong", "bahdanau", "none")


def make_score(name: str, d_query: int, d_key: int, *, attn_size: int | None = None,
               max_src_len: int | None = None, options: dict | None = None,
               dtype=np.float32, rng=None, owner: str = "make_score"):
    """Build a score of ``numtransformer.attention`` by name for queries of width
    ``d_query`` (the decoder state) and keys of width ``d_key`` (the memory).

    dot, scaled_dot, cosine need d_query == d_key; additive (alias concat) uses
    ``attn_size`` (default d_query); location needs ``max_src_len``;
    ``options`` go to the score's constructor (e.g. {"beta": 5.0} for cosine).
    """
    options = dict(options or {})
    if name not in SCORES:
        raise ValueError(f"{owner}: score must be one of {list(SCORES)} or None, got {name!r}")
    if name in ("dot", "scaled_dot", "cosine") and d_query != d_key:
        raise ValueError(f"{owner}: score={name!r} needs the decoder hidden size ({d_query}) to "
                         f"equal the memory width ({d_key}); use score='general' or change the "
                         f"sizes")
    if name == "dot":
        return DotScore(**options)
    if name == "scaled_dot":
        return ScaledDotScore(**options)
    if name == "cosine":
        return CosineScore(**options)
    if name == "general":
        return GeneralScore(d_query, d_key, dtype=dtype, rng=rng, **options)
    if name in ("additive", "concat"):
        return AdditiveScore(d_query, d_key, attn_size or d_query, dtype=dtype, rng=rng,
                             **options)
    if max_src_len is None:
        raise ValueError(f"{owner}: score='location' needs max_src_len (the longest source "
                         f"it will see)")
    return LocationScore(d_query, max_src_len, dtype=dtype, rng=rng, **options)


def _check_cell(owner, cell, allowed):
    if cell not in allowed:
        raise ValueError(f"{_name(owner)}: cell must be one of {list(allowed)}, got {cell!r}")
    return cell


def _lengths_from_mask(owner, src_pad_mask, B: int, S: int) -> np.ndarray:
    """Source lengths (B,) from a right-padding mask (True = padding)."""
    if src_pad_mask is None:
        return np.full(B, S, dtype=np.intp)
    mask = check_mask(owner, "src_pad_mask", src_pad_mask, (B, S))
    lengths = S - mask.sum(axis=1)
    if B and lengths.min() < 1:
        b = int(np.argmin(lengths))
        raise ValueError(f"{_name(owner)}: src_pad_mask marks every position of row {b} "
                         f"as padding; each source needs at least one real token")
    if not np.array_equal(mask, np.arange(S)[None, :] >= lengths[:, None]):
        raise ValueError(f"{_name(owner)}: src_pad_mask must be right padding (True "
                         f"only on a suffix of each row)")
    return lengths.astype(np.intp)
