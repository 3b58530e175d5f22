"""Oracle: layer norm, RMSNorm, softmax cross-entropy, rotary embeddings.

Each runs the reference kernel of ``numtransformer.functional`` in float64
(``layer_norm_*``, ``rms_norm_*``, ``cross_entropy_*``, ``rope_*``) and
returns ``(outputs, grads)`` by name (see ``numtransformer.oracle``).
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ._core import OracleResult, douts, f64

__all__ = ["layer_norm", "rms_norm", "cross_entropy", "rotary_embedding"]


def layer_norm(x, gamma=None, beta=None, dout=None, *, eps: float = 1e-5) -> OracleResult:
    """Layer norm over the last axis, as ``torch.nn.functional.layer_norm(x, (n,),
    gamma, beta, eps)``: biased variance, eps inside the square root.

    Shapes: x (..., n); gamma, beta (n,), both or neither.  Output ``"out"``;
    grads ``"x"`` (and ``"gamma"``, ``"beta"``).
    """
    who = "oracle.layer_norm"
    x = f64("x", who, x)
    if (gamma is None) != (beta is None):
        raise ValueError(f"{who}: give both gamma and beta, or neither")
    gamma, beta = f64("gamma", who, gamma, True), f64("beta", who, beta, True)
    y, cache = F.layer_norm_forward(x, gamma, beta, float(eps))
    outputs = {"out": y}
    g = douts(who, dout, outputs)
    if g is None:
        return OracleResult(outputs, {})
    dx, dgamma, dbeta = F.layer_norm_backward(g["out"], cache, gamma)
    grads = {"x": dx}
    if gamma is not None:
        grads.update(gamma=dgamma, beta=dbeta)
    return OracleResult(outputs, grads)


def rms_norm(x, gamma=None, dout=None, *, eps: float = 1e-6) -> OracleResult:
    """RMSNorm over the last axis, ``y = gamma * x / sqrt(mean(x^2) + eps)`` (as
    ``torch.nn.functional.rms_norm(x, (n,), gamma, eps)`` and LLaMA in float32
    and wider).  Shapes: x (..., n), gamma (n,) or None.  Output ``"out"``;
    grads ``"x"`` (and ``"gamma"``).
    """
    who = "oracle.rms_norm"
    x = f64("x", who, x)
    gamma = f64("gamma", who, gamma, True)
    y, cache = F.rms_norm_forward(x, gamma, float(eps))
    outputs = {"out": y}
    g = douts(who, dout, outputs)
    if g is None:
        return OracleResult(outputs, {})
    dx, dgamma = F.rms_norm_backward(g["out"], cache, gamma)
    grads = {"x": dx}
    if gamma is not None:
        grads["gamma"] = dgamma
    return OracleResult(outputs, grads)


def cross_entropy(logits, targets, dout=None, *, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean",
                  layout: str = "last") -> OracleResult:
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy`` with
    ``ignore_index``, ``label_smoothing`` (the smoothing mass eps / V goes to all
    V classes, the target included) and ``reduction`` ("mean": over the
    targets that are not ignored; a batch with none gives 0, not NaN).

    ``layout="last"``: logits (..., V), targets (...).  ``layout="torch"``:
    logits (N, V, d1, ...) with the classes on axis 1, targets (N, d1, ...).
    Output ``"loss"`` (a scalar, or the targets' shape for "none"); grads
    ``"logits"`` (in the layout given).  ``dout`` is the gradient of the loss
    (a scalar for "mean" and "sum").
    """
    who = "oracle.cross_entropy"
    if layout not in ("last", "torch"):
        raise ValueError(f"{who}: layout must be 'last' or 'torch', got {layout!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{who}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    z = f64("logits", who, logits)
    y = np.asarray(targets)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{who}: targets must be integer class ids, got dtype {y.dtype}")
    if layout == "torch" and z.ndim > 1:
        z = np.moveaxis(z, 1, -1)
    if z.shape[:-1] != y.shape:
        raise ValueError(f"{who}: targets have shape {y.shape}, expected {z.shape[:-1]}")
    V = z.shape[-1]
    bad = (y != ignore_index) & ((y < 0) | (y >= V))
    if bad.any():
        raise ValueError(f"{who}: target ids must be in [0, {V}) or ignore_index "
                         f"({ignore_index}), got {y[bad].ravel()[0]}")
    loss, cache = F.cross_entropy_forward(np.ascontiguousarray(z), y, ignore_index,
                                          float(label_smoothing), reduction)
    outputs = {"loss": np.asarray(loss, dtype=np.float64)}
    g = douts(who, dout, outputs)
    if g is None:
        return OracleResult(outputs, {})
    dz = F.cross_entropy_backward(g["loss"], cache, float(label_smoothing), reduction)
    if layout == "torch" and dz.ndim > 1:
        dz = np.moveaxis(dz, -1, 1)
    return OracleResult(outputs, {"logits": np.ascontiguousarray(dz)})


def rotary_embedding(x, positions=None, dout=None, *, base: float = 10000.0,
                     layout: str = "half", seq_axis: int = -2) -> OracleResult:
    """Rotary position embedding (RoFormer): pair i of each head vector turned by
    m theta_i, theta_i = base^(-2i/d).

    Shapes: x (B, H, T, d) with d even (``seq_axis=-2``; for (B, T, H, d), as
    Hugging Face's ``apply_rotary_pos_emb(..., unsqueeze_dim=2)``, pass
    ``seq_axis=1``); positions (T,) or (B, T) integers, default 0 .. T - 1.
    ``layout="half"``: pairs (x_i, x_{i+d/2}) (Hugging Face's rotate_half,
    GPT-NeoX); ``"interleaved"``: pairs (x_2i, x_2i+1) (the paper, GPT-J).
    Output ``"out"``; grads ``"x"``.
    """
    who = "oracle.rotary_embedding"
    if layout not in F.ROPE_LAYOUTS:
        raise ValueError(f"{who}: layout must be one of {F.ROPE_LAYOUTS}, got {layout!r}")
    x = f64("x", who, x)
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"{who}: x must be 4-d with an even last axis, got {x.shape}")
    xs = np.moveaxis(x, seq_axis, 2)
    T = xs.shape[2]
    pos = np.arange(T) if positions is None else np.asarray(positions)
    if pos.shape not in ((T,), (xs.shape[0], T)):
        raise ValueError(f"{who}: positions must be (T,) or (B, T) = {(xs.shape[0], T)}, "
                         f"got {pos.shape}")
    y, cache = F.rope_forward(np.ascontiguousarray(xs), pos, float(base), layout)
    outputs = {"out": np.ascontiguousarray(np.moveaxis(y, 2, seq_axis))}
    g = douts(who, dout, outputs)
    if g is None:
        return OracleResult(outputs, {})
    dx = F.rope_backward(np.ascontiguousarray(np.moveaxis(g["out"], seq_axis, 2)), cache)
    return OracleResult(outputs, {"x": np.ascontiguousarray(np.moveaxis(dx, 2, seq_axis))})
