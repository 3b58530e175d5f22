"""Print every named intermediate of a forward pass: the cache is the trace.

Each layer's cache is a small record whose fields carry the names of the
symbols in its docstring's equations (``q_s``, ``alpha``, ``x_hat``, ``rstd``
...), nested as the layers are.  ``trace_lines`` walks that tree in field order
(the order the forward computed them) and prints each array's path, shape and
first values, so a student can follow the equations through a whole model.
"""

from __future__ import annotations

import numpy as np

__all__ = ["trace_lines"]


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
            for field in obj._fields:
                walk(getattr(obj, field), f"{path}.{field}" if path else field)
        elif isinstance(obj, tuple) and all(isinstance(v, int) for v in obj):
            lines.append(f"{path:<58} {'':<14} {'shape':<8} {obj!r}")
        elif isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                walk(item, f"{path}[{i}]")
        elif isinstance(obj, (int, float, str)) and path:
            lines.append(f"{path:<58} {'':<14} {type(obj).__name__:<8} {obj!r}")

    walk(cache, name)
    return lines
