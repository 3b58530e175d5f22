"""Input checks shared by the public entry points.

Every message names the layer, the argument, what was expected and what came,
e.g. ``Linear: x has last dim 63, expected in_features=64``.  Shape and dtype
checks are O(1) and always run; the O(N) NaN/inf scan runs only in the
outermost forward (see ``numtransformer.module``).
"""

from __future__ import annotations

import contextvars
import sys

import numpy as np

from .module import _OUTERMOST, Module, _track_depth, is_outermost_call

# Set by ``numtransformer.inference_mode()`` (numtransformer/inference.py): True inside it.
# There the NaN/inf scan runs only at the entry: for an array the user's code handed to this
# very layer, never for one that our own code passes on (the layers a decode_step, an encode
# or a model's forward calls, even where each of them is an "outermost" forward); see
# ``_scans_here``.
ENTRY_CHECKS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "numtransformer_entry_checks_only", default=False)


_OURS: dict = {}  # code object -> whether it is numtransformer's


def _ours(code, frame) -> bool:
    mine = _OURS.get(code)
    if mine is None:
        name = frame.f_globals.get("__name__", "")
        mine = _OURS[code] = name == "numtransformer" or name.startswith("numtransformer.")
    return mine


def _scans_here(layer) -> bool:
    """Whether check_float scans its input for NaN/inf: in the outermost forward
    (numtransformer.module); inside inference_mode, only at the entry, where the code
    that called into numtransformer called this layer itself: its forward, or a method
    (such as decode) that checks the input directly."""
    if not is_outermost_call(layer):
        return False
    if not ENTRY_CHECKS_ONLY.get():
        return True
    first = frame = sys._getframe(2)  # the caller of check_float
    entry = None
    while frame is not None and _ours(frame.f_code, frame):
        entry, frame = frame, frame.f_back
    if entry is None or entry is first:
        return True
    return entry.f_code in _FORWARD_ENTRIES and _OUTERMOST.get() == id(layer)


# The dtypes layers compute in.  float16 is refused rather than half-supported:
# SciPy's erf/expit have no float16 loops and would silently promote it.
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _name(layer) -> str:
    return layer if isinstance(layer, str) else type(layer).__name__


def check_float(
    layer,
    arg: str,
    x,
    *,
    dtype=None,
    ndim=None,
    min_ndim: int = 0,
    last_dim: int | None = None,
    last_dim_name: str = "",
    finite: bool = True,
) -> np.ndarray:
    """Check that ``x`` is a floating-point array of the expected rank/width/dtype.

    ``dtype``: the dtype the layer computes in (its parameters'); a different
    float dtype is a TypeError rather than a silent promotion.
    """
    who = _name(layer)
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple, float, int, np.generic)):
            x = np.asarray(x)
        else:
            raise TypeError(f"{who}: {arg} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        kind = "a float32 or float64 array" if np.issubdtype(x.dtype, np.floating) else \
            "a floating-point array (float32 or float64)"
        raise TypeError(f"{who}: {arg} must be {kind}, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{who}: {arg} has dtype {x.dtype} but the layer computes in {np.dtype(dtype)}; "
            f"cast the input (x.astype(...)) or the layer (.astype(...))"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{who}: {arg} must have {want} dims, got shape {x.shape}")
    if x.ndim < min_ndim:
        raise ValueError(f"{who}: {arg} must have at least {min_ndim} dims, got shape {x.shape}")
    if last_dim is not None and (x.ndim == 0 or x.shape[-1] != last_dim):
        got = x.shape[-1] if x.ndim else "none (a scalar)"
        label = f"{last_dim_name}={last_dim}" if last_dim_name else str(last_dim)
        raise ValueError(f"{who}: {arg} has last dim {got}, expected {label}")
    if finite and _scans_here(layer) and not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{who}: {arg} contains {bad} NaN/inf value(s)")
    return x


# how user code enters a forward: m(...) or m.forward(...) (every forward's wrapper)
_FORWARD_ENTRIES = (Module.__call__.__code__, _track_depth(lambda self: None).__code__)


def check_ids(layer, arg: str, ids, num: int, *, min_ndim: int = 0) -> np.ndarray:
    """Check integer token ids in ``[0, num)``."""
    who = _name(layer)
    if not isinstance(ids, np.ndarray):
        if isinstance(ids, (list, tuple, int, np.integer)):
            ids = np.asarray(ids)
        else:
            raise TypeError(f"{who}: {arg} must be an integer numpy array, got {type(ids).__name__}")
    if not np.issubdtype(ids.dtype, np.integer) or ids.dtype == np.bool_:
        raise TypeError(f"{who}: {arg} must be an integer array, got dtype {ids.dtype}")
    if ids.ndim < min_ndim:
        raise ValueError(f"{who}: {arg} must have at least {min_ndim} dims, got shape {ids.shape}")
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{who}: {arg} contains id {bad}, expected ids in [0, {num})")
    return ids


def check_mask(layer, arg: str, mask, shape: tuple) -> np.ndarray:
    """Check a boolean mask of exactly ``shape`` (True = blocked / padding)."""
    who = _name(layer)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{who}: {arg} must be a boolean numpy array, got {type(mask).__name__}")
    if mask.dtype != np.bool_:
        raise TypeError(
            f"{who}: {arg} must be boolean (True = blocked), got dtype {mask.dtype}"
        )
    if mask.shape != tuple(shape):
        raise ValueError(f"{who}: {arg} has shape {mask.shape}, expected {tuple(shape)}")
    return mask


def check_source_target(layer, src_ids, tgt_in_ids, src_pad_mask, tgt_pad_mask,
                        src_vocab: int, tgt_vocab: int) -> tuple:
    """The inputs of an encoder-decoder's forward: src_ids (B, S) with S >= 1,
    tgt_in_ids None or (B, T) with T >= 1, the two optional padding masks of
    those shapes.  Returns (src, tgt) as checked arrays (tgt None when absent)."""
    who = _name(layer)
    src = check_ids(layer, "src_ids", src_ids, src_vocab)
    if src.ndim != 2 or src.shape[1] == 0:
        raise ValueError(f"{who}: src_ids must be (B, S) with S >= 1, got shape {src.shape}")
    if src_pad_mask is not None:
        check_mask(layer, "src_pad_mask", src_pad_mask, src.shape)
    if tgt_in_ids is None:
        return src, None
    tgt = check_ids(layer, "tgt_in_ids", tgt_in_ids, tgt_vocab)
    if tgt.ndim != 2 or tgt.shape[0] != src.shape[0] or tgt.shape[1] == 0:
        raise ValueError(f"{who}: tgt_in_ids must be (B, T) with B = {src.shape[0]} and "
                         f"T >= 1, got shape {tgt.shape}")
    if tgt_pad_mask is not None:
        check_mask(layer, "tgt_pad_mask", tgt_pad_mask, tgt.shape)
    return src, tgt


def check_normalized_shape(layer, normalized_shape) -> tuple:
    """A norm's trailing shape: an int or a tuple of positive ints, as a tuple."""
    who = _name(layer)
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        normalized_shape = (int(normalized_shape),)
    try:
        normalized_shape = tuple(int(s) for s in normalized_shape)
    except TypeError as exc:
        raise TypeError(f"{who}: normalized_shape must be an int or a tuple of ints, "
                        f"got {normalized_shape!r}") from exc
    if not normalized_shape or any(s < 1 for s in normalized_shape):
        raise ValueError(f"{who}: normalized_shape must be positive sizes, got {normalized_shape}")
    return normalized_shape


def check_positive_int(layer, arg: str, value, *, minimum: int = 1) -> int:
    who = _name(layer)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{who}: {arg} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{who}: {arg} must be >= {minimum}, got {value}")
    return int(value)


def check_probability(layer, arg: str, value, *, allow_one: bool = True) -> float:
    who = _name(layer)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{who}: {arg} must be a float, got {type(value).__name__}")
    value = float(value)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (0.0 <= value and upper_ok):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{who}: {arg} must be in {bound}, got {value}")
    return value


def check_float_dtype(layer, dtype) -> np.dtype:
    who = _name(layer)
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{who}: dtype {dtype!r} is not a numpy dtype") from exc
    if dt not in _FLOATS:
        raise TypeError(f"{who}: dtype must be float32 or float64, got {dt}")
    return dt


def as_rng(seed) -> np.random.Generator:
    """A ``np.random.Generator`` from a seed, a Generator (used as is) or None."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)
