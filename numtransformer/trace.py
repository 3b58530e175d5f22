"""Print every named intermediate of a forward pass: the cache is the trace.

Each layer's cache is a small record whose fields carry the names of the
symbols in its docstring's equations (``q_s``, ``alpha``, ``x_hat``, ``rstd``
...), nested as the layers are.  ``trace_lines`` walks that tree in field order
(the order the forward computed them) and prints each array's path, shape and
first values, so a student can follow the equations through a whole model.
A record may name, in a class attribute ``trace_inline``, fields holding a
record whose symbols are its own (multi-head attention's kernel core: q_s, e,
alpha, ...): their fields print at the record's path (``self_attn.alpha``,
not ``self_attn.core.alpha``).  Run the forward with ``reference_forward``
to see every symbol: the fast kernels may leave one out (multi-head
attention's scores e).
"""

from __future__ import annotations

import numpy as np

from .kernels import use_kernels

__all__ = ["trace_lines", "reference_forward"]


def reference_forward(model, *args, **kwargs):
    """``model.forward(*args, **kwargs)`` on the reference kernels, whose caches keep
    every symbol of the equations (the fast multi-head kernel, for one, keeps no
    scores e: it normalises them in place into alpha).  Returns (out, cache)."""
    with use_kernels("reference"):
        return model.forward(*args, **kwargs)


def _is_record(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def _preview(a: np.ndarray, n: int) -> str:
    flat = a.reshape(-1)[:n]
    if a.dtype == np.bool_:
        body = " ".join("T" if v else "." for v in flat)
    elif np.issubdtype(a.dtype, np.integer):
        body = " ".join(str(int(v)) for v in flat)
    else:
        body = " ".join(f"{float(v):+.3f}" for v in flat)
    return body + (" ..." if a.size > n else "")


def trace_lines(cache, name: str = "", n_values: int = 4) -> list[str]:
    """One line per array in the cache tree: ``path  shape  dtype  first values``."""
    lines: list[str] = []

    def walk(obj, path):
        if isinstance(obj, np.ndarray):
            shape = "x".join(map(str, obj.shape)) or "scalar"
            lines.append(f"{path:<58} {shape:<14} {str(obj.dtype):<8} {_preview(obj, n_values)}")
        elif _is_record(obj):
            inline = getattr(type(obj), "trace_inline", ())
            for field in obj._fields:
                value = getattr(obj, field)
                if field in inline and _is_record(value):
                    walk(value, path)
                else:
                    walk(value, f"{path}.{field}" if path else field)
        elif isinstance(obj, tuple) and all(isinstance(v, int) for v in obj):
            lines.append(f"{path:<58} {'':<14} {'shape':<8} {obj!r}")
        elif isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                walk(item, f"{path}[{i}]")
        elif isinstance(obj, (int, float, str)) and path:
            lines.append(f"{path:<58} {'':<14} {type(obj).__name__:<8} {obj!r}")

    walk(cache, name)
    return lines
