"""The oracle protocol, shared by every family.

Every oracle function takes plain arrays by keyword (plus options) and an
optional upstream gradient ``dout``, and returns an ``OracleResult``::

    outputs, grads = family(**inputs, dout=dout, **options)

``outputs`` is a dict of the named outputs (``"out"`` for a single one);
``grads`` a dict with the gradient of every float input that was given (by
its argument name), empty when ``dout`` is None.  ``dout`` is an array for a
family with one output, or a dict keyed like ``outputs`` (a missing entry
counts as zero) when it has several.  All work is float64: float inputs are
copied to float64, the caller's arrays are never written.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class OracleResult(NamedTuple):
    """``(outputs, grads)``: dicts of float64 arrays, by name."""

    outputs: dict
    grads: dict


def f64(name: str, who: str, x, allow_none: bool = False):
    """x as a fresh C-contiguous float64 array (None passes when allowed)."""
    if x is None:
        if allow_none:
            return None
        raise ValueError(f"{who}: {name} is required")
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{who}: {name} must be a float array, got dtype {a.dtype}")
    a = np.array(a, dtype=np.float64, order="C", copy=True)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{who}: {name} contains NaN or inf")
    return a


def bool_mask(name: str, who: str, m):
    if m is None:
        return None
    a = np.asarray(m)
    if a.dtype != np.bool_:
        raise TypeError(f"{who}: {name} must be a boolean array (True = blocked), "
                        f"got dtype {a.dtype}")
    return a


def douts(who: str, dout, outputs: dict) -> dict | None:
    """The upstream gradient of every output, as float64 arrays (zeros where not given)."""
    if dout is None:
        return None
    names = list(outputs)
    if not isinstance(dout, dict):
        if len(names) != 1 and not isinstance(dout, (tuple, list)):
            raise TypeError(f"{who}: dout must be a dict keyed by {names} (or a tuple in "
                            f"that order): this family has several outputs")
        items = dout if isinstance(dout, (tuple, list)) else (dout,)
        if len(items) > len(names):
            raise ValueError(f"{who}: dout has {len(items)} entries, outputs are {names}")
        dout = dict(zip(names, items))
    unknown = set(dout) - set(names)
    if unknown:
        raise ValueError(f"{who}: dout has unknown keys {sorted(unknown)}; outputs are {names}")
    result = {}
    for n in names:
        g = dout.get(n)
        if g is None:
            result[n] = np.zeros(outputs[n].shape)
            continue
        g = f64(f"dout[{n!r}]", who, g)
        if g.shape != outputs[n].shape:
            raise ValueError(f"{who}: dout[{n!r}] has shape {g.shape}, expected "
                             f"{outputs[n].shape} (the shape of output {n!r})")
        result[n] = g
    return result


def permute_blocks(W, order: str, canonical: str, axis: int):
    """Reorder the len(order) equal column blocks of W (along ``axis``) from the
    caller's gate order to ``canonical``."""
    blocks = np.split(W, len(order), axis=axis)
    return np.concatenate([blocks[order.index(c)] for c in canonical], axis=axis)


def check_gate_order(who: str, order: str, canonical: str) -> str:
    if sorted(order) != sorted(canonical) or len(order) != len(canonical):
        raise ValueError(f"{who}: gate_order must be a permutation of {canonical!r}, "
                         f"got {order!r}")
    return order
