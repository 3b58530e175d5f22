"""The norm factory: which normalisation a Transformer or BERT layer uses, by name.

Every layer that normalises (the residual sublayer connections of
``TransformerEncoderLayer``, ``TransformerDecoderLayer`` and the BERT layers,
the stacks' final norms, ``TransformerLM``'s last norm, BERT's embedding norm)
builds its norm here, from one argument ``norm="layernorm"``.  Adding a norm
is one line in ``_NORMS``: a builder ``(d_model, eps, dtype) -> Module``.

A norm is a ``Module`` over the last axis of width ``d_model``:
``forward(x) -> (y, cache)`` with y the shape and dtype of x,
``backward(dy, cache) -> dx`` (its parameter gradients added to ``p.grad``),
and the attributes ``dtype`` and ``eps``.
"""

from __future__ import annotations

from .layernorm import LayerNorm
from .rmsnorm import RMSNorm

__all__ = ["make_norm", "check_norm", "NORM_KINDS"]

# kind -> builder(d_model, eps, dtype)
_NORMS = {
    "layernorm": lambda d_model, eps, dtype: LayerNorm(d_model, eps, dtype=dtype),
    "rmsnorm": lambda d_model, eps, dtype: RMSNorm(d_model, eps, dtype=dtype),
}

NORM_KINDS = tuple(_NORMS)  # the names ``make_norm`` accepts


def check_norm(owner, kind) -> str:
    """Return ``kind`` if ``make_norm`` knows it, else raise a ValueError naming
    ``owner`` (a layer, or a string) and the allowed kinds."""
    if not isinstance(kind, str) or kind not in _NORMS:
        who = owner if isinstance(owner, str) else type(owner).__name__
        allowed = ", ".join(repr(k) for k in _NORMS)
        raise ValueError(f"{who}: norm must be one of {allowed}, got {kind!r}")
    return kind


def make_norm(kind: str, d_model: int, eps: float, *, dtype):
    """A new norm of the given ``kind`` over the last axis of width ``d_model``.

    ``kind``: one of ``NORM_KINDS`` ("layernorm": ``LayerNorm(d_model, eps)``,
    gamma = 1, beta = 0; "rmsnorm": ``RMSNorm(d_model, eps)``, gamma = 1, no
    beta).  ``eps`` is added to the variance (the mean square for RMSNorm)
    inside the square root; ``dtype`` is the dtype of the norm's parameters
    and work.
    """
    return _NORMS[check_norm("make_norm", kind)](d_model, eps, dtype)
