"""Oracle: scaled dot-product attention and multi-head / grouped-query attention.

Conventions (both functions):

* batch first; boolean masks mean what PyTorch's ``nn.MultiheadAttention``
  masks mean: **True = blocked** (may not attend / is padding).  Note that
  ``torch.nn.functional.scaled_dot_product_attention`` reads a *boolean*
  ``attn_mask`` the other way round (True = takes part): pass it ``~mask``.
* ``key_padding_mask`` (B, Tk): key j of sequence b is padding.
* ``attn_mask``: boolean, broadcastable to (B, H, Tq, Tk) (a (Tq, Tk) mask is
  shared by the batch and the heads), True = query i may not see key j; or a
  float array of the same broadcast shape, *added* to the scores (a bias,
  as PyTorch's float masks, with its gradient).
* ``is_causal``: query i sees keys j <= i (top-left aligned, as PyTorch's
  ``is_causal`` when Tq != Tk).  ``window`` = w: causal sliding window,
  query i sees keys i - w + 1 .. i.
* All blocks are ORed.  A query whose keys are all blocked gets all-zero
  weights, a zero output and zero gradients (never NaN).
* Grouped-query attention: H_kv key/value heads, H_kv dividing H; query head
  h reads key/value head h // (H / H_kv) (PyTorch's ``enable_gqa=True``,
  Hugging Face's ``repeat_kv``).

The math is ``numtransformer.functional.scaled_dot_product_attention_forward``
and ``_backward`` (and the linear kernels for the projections): this module
only converts layouts and builds masks.
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ._core import OracleResult, bool_mask, douts, f64

__all__ = ["ATTENTION_LAYOUTS", "attention_mask", "scaled_dot_product_attention",
           "multi_head_attention"]

ATTENTION_LAYOUTS = ("bhtd", "bthd")


def attention_mask(B: int, H: int, Tq: int, Tk: int, key_padding_mask=None, attn_mask=None,
                   is_causal: bool = False, window: int | None = None):
    """The combined boolean mask (B, H, Tq, Tk), True = blocked, or None when
    nothing is blocked; and the float bias (a float ``attn_mask``) or None.

        blocked[b, h, i, j] = key_padding_mask[b, j] or attn_mask[.., i, j]
                              or (is_causal and j > i)
                              or (window and (j > i or j <= i - window))
    """
    who = "oracle.attention_mask"
    blocked = np.zeros((B, H, Tq, Tk), dtype=bool)
    bias = None
    i = np.arange(Tq)[:, None]
    j = np.arange(Tk)[None, :]
    if key_padding_mask is not None:
        kpm = bool_mask("key_padding_mask", who, key_padding_mask)
        if kpm.shape != (B, Tk):
            raise ValueError(f"{who}: key_padding_mask has shape {kpm.shape}, expected "
                             f"(B, Tk) = {(B, Tk)}")
        blocked = blocked | kpm[:, None, None, :]
    if attn_mask is not None:
        am = np.asarray(attn_mask)
        try:
            np.broadcast_shapes(am.shape, (B, H, Tq, Tk))
        except ValueError:
            raise ValueError(f"{who}: attn_mask has shape {am.shape}, not broadcastable to "
                             f"(B, H, Tq, Tk) = {(B, H, Tq, Tk)}") from None
        if am.dtype == np.bool_:
            blocked = blocked | am
        elif np.issubdtype(am.dtype, np.floating):
            bias = f64("attn_mask", who, am)
        else:
            raise TypeError(f"{who}: attn_mask must be boolean (True = blocked) or float "
                            f"(added to the scores), got dtype {am.dtype}")
    if is_causal:
        blocked = blocked | (j > i)
    if window is not None:
        if int(window) < 1:
            raise ValueError(f"{who}: window must be >= 1, got {window}")
        blocked = blocked | (j > i) | (j <= i - int(window))
    return (blocked if blocked.any() else None), bias


def _bias_grad(dcontext, cache, dalpha, shape):
    """The gradient of a float attn_mask (added to the scores): de, summed over
    the axes it was broadcast along (PyTorch gives a float mask a gradient too).

        dalpha = dcontext v_r^T [+ dalpha]       de = softmax_backward(dalpha, alpha)
    """
    g = cache.q_s.shape[1] // cache.v.shape[1]
    dalpha_total = dcontext @ F.repeat_kv(cache.v, g).swapaxes(-1, -2)
    if dalpha is not None:
        dalpha_total = dalpha_total + dalpha
    de = F.softmax_backward(dalpha_total, cache.alpha, axis=-1)
    lead = de.ndim - len(shape)
    de = de.sum(axis=tuple(range(lead))) if lead else de
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and de.shape[i] != 1)
    return np.ascontiguousarray(de.sum(axis=axes, keepdims=True) if axes else de)


def _to_bhtd(x, layout):
    return x if layout == "bhtd" else x.transpose(0, 2, 1, 3)


def scaled_dot_product_attention(q, k, v, dout=None, *, key_padding_mask=None, attn_mask=None,
                                 is_causal: bool = False, window: int | None = None,
                                 scale: float | None = None, layout: str = "bhtd",
                                 return_weights: bool = False) -> OracleResult:
    """Scaled dot-product attention, ``out = softmax(q k^T * scale [+ bias]) v``.

    Shapes (``layout="bhtd"``, PyTorch's ``scaled_dot_product_attention``):
    q (B, H, Tq, d), k (B, H_kv, Tk, d), v (B, H_kv, Tk, d_v), out (B, H, Tq, d_v).
    ``layout="bthd"`` (FlashAttention's): q (B, Tq, H, d), k and v (B, Tk, H_kv, .),
    out (B, Tq, H, d_v); gradients come back in the layout of their inputs.
    ``scale`` defaults to 1 / sqrt(d).  Masks: see the module docstring.

    Outputs: ``"out"``; with ``return_weights`` also ``"weights"`` (B, H, Tq, Tk),
    the softmax weights (a ``dout["weights"]`` is back-propagated too).
    Grads: ``"q"``, ``"k"``, ``"v"`` (and ``"attn_mask"`` for a float mask, in its
    own shape: the gradient of the scores summed over its broadcast axes).
    """
    who = "oracle.scaled_dot_product_attention"
    if layout not in ATTENTION_LAYOUTS:
        raise ValueError(f"{who}: layout must be one of {ATTENTION_LAYOUTS}, got {layout!r}")
    q, k, v = (_to_bhtd(f64(n, who, a), layout) for n, a in (("q", q), ("k", k), ("v", v)))
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{who}: q, k, v must be 4-d ({layout}), got ndim "
                         f"{q.ndim}, {k.ndim}, {v.ndim}")
    B, H, Tq, d = q.shape
    H_kv, Tk = k.shape[1], k.shape[2]
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"{who}: k {k.shape} and v {v.shape} do not match q {q.shape} "
                         f"(as {layout})")
    if H_kv < 1 or H % H_kv:
        raise ValueError(f"{who}: the {H_kv} key/value heads must divide the {H} query heads")
    mask, bias = attention_mask(B, H, Tq, Tk, key_padding_mask, attn_mask, is_causal, window)
    # the kernel scales by 1/sqrt(d): another scale is a factor on q (and on dq)
    factor = 1.0 if scale is None else float(scale) * math.sqrt(d)
    q_in = q if factor == 1.0 else q * factor
    context, cache = F.scaled_dot_product_attention_forward(q_in, k, v, mask=mask, bias=bias)
    outputs = {"out": _to_bhtd(context, layout)}
    if return_weights:
        outputs["weights"] = cache.alpha
    g = douts(who, dout, outputs)
    if g is None:
        return OracleResult(outputs, {})
    dalpha = g.get("weights")
    dq, dk, dv = F.scaled_dot_product_attention_backward(_to_bhtd(g["out"], layout), cache,
                                                         dalpha)
    if factor != 1.0:
        dq = dq * factor
    grads = {"q": _to_bhtd(dq, layout), "k": _to_bhtd(dk, layout), "v": _to_bhtd(dv, layout)}
    if bias is not None:
        grads["attn_mask"] = _bias_grad(_to_bhtd(g["out"], layout), cache, dalpha, bias.shape)
    return OracleResult(outputs, {n: np.ascontiguousarray(a) for n, a in grads.items()})


def multi_head_attention(query, key, value, W_q, W_k, W_v, W_o, b_q=None, b_k=None, b_v=None,
                         b_o=None, dout=None, *, n_heads: int, n_kv_heads: int | None = None,
                         key_padding_mask=None, attn_mask=None, is_causal: bool = False,
                         window: int | None = None, layout: str = "numtransformer",
                         return_weights: bool = False) -> OracleResult:
    """Multi-head (n_kv_heads = n_heads or None) or grouped-query attention with
    its projections:

        Q = query W_q + b_q    split into n_heads heads of d = Dq / n_heads
        K = key W_k + b_k      split into n_kv_heads heads of d
        V = value W_v + b_v    split into n_kv_heads heads of d_v
        C = sdpa(Q, K, V, masks)     merged back: (B, Tq, n_heads d_v)
        out = C W_o + b_o

    Shapes: query (B, Tq, D), key (B, Tk, D_k), value (B, Tk, D_v), out (B, Tq, D_out).
    Head h is columns h d .. (h + 1) d - 1 of Q (PyTorch's and Hugging Face's split).
    ``layout="numtransformer"``: weights stored (D_in, D_out), the math reads
    ``x W``.  ``layout="torch"``: weights as ``nn.Linear`` stores them,
    (D_out, D_in) (``nn.MultiheadAttention``'s ``in_proj_weight`` is
    [W_q; W_k; W_v] stacked on axis 0 in that form); gradients come back in
    the form given.  Biases are optional (None: no bias, no gradient).
    Masks: see the module docstring.  Outputs ``"out"`` (and ``"weights"``,
    (B, H, Tq, Tk), with ``return_weights``); grads: every float argument given.
    """
    who = "oracle.multi_head_attention"
    if layout not in ("numtransformer", "torch"):
        raise ValueError(f"{who}: layout must be 'numtransformer' or 'torch', got {layout!r}")
    xs = {n: f64(n, who, a) for n, a in (("query", query), ("key", key), ("value", value))}
    Ws = {n: f64(n, who, a) for n, a in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v),
                                        ("W_o", W_o))}
    if layout == "torch":
        Ws = {n: np.ascontiguousarray(W.T) for n, W in Ws.items()}
    bs = {n: f64(n, who, a, allow_none=True) for n, a in (("b_q", b_q), ("b_k", b_k),
                                                          ("b_v", b_v), ("b_o", b_o))}
    H = int(n_heads)
    H_kv = H if n_kv_heads is None else int(n_kv_heads)
    if H < 1 or H_kv < 1 or H % H_kv:
        raise ValueError(f"{who}: n_kv_heads={H_kv} must divide n_heads={H}")
    for n in ("query", "key", "value"):
        if xs[n].ndim != 3:
            raise ValueError(f"{who}: {n} must be (B, T, D), got shape {xs[n].shape}")
    if Ws["W_q"].shape[1] % H or Ws["W_k"].shape[1] % H_kv or Ws["W_v"].shape[1] % H_kv:
        raise ValueError(f"{who}: the projections' widths must split into the heads")
    lin = {}
    Q, lin["q"] = F.linear_forward(xs["query"], Ws["W_q"], bs["b_q"])
    K, lin["k"] = F.linear_forward(xs["key"], Ws["W_k"], bs["b_k"])
    V, lin["v"] = F.linear_forward(xs["value"], Ws["W_v"], bs["b_v"])
    q, k, v = F.split_heads(Q, H), F.split_heads(K, H_kv), F.split_heads(V, H_kv)
    B, _, Tq, _ = q.shape
    mask, bias = attention_mask(B, H, Tq, k.shape[2], key_padding_mask, attn_mask, is_causal,
                                window)
    context, core = F.scaled_dot_product_attention_forward(q, k, v, mask=mask, bias=bias)
    C = F.merge_heads(context)
    y, lin["o"] = F.linear_forward(C, Ws["W_o"], bs["b_o"])
    outputs = {"out": y}
    if return_weights:
        outputs["weights"] = core.alpha
    g = douts(who, dout, outputs)
    if g is None:
        return OracleResult(outputs, {})
    grads = {}
    dC, grads["W_o"], db_o = F.linear_backward(g["out"], lin["o"], Ws["W_o"],
                                               has_bias=bs["b_o"] is not None)
    dcontext = F.split_heads(dC, H)
    dq, dk, dv = F.scaled_dot_product_attention_backward(np.ascontiguousarray(dcontext), core,
                                                         g.get("weights"))
    for part, x_name, W_name, b_name, d_heads in (("q", "query", "W_q", "b_q", dq),
                                                  ("k", "key", "W_k", "b_k", dk),
                                                  ("v", "value", "W_v", "b_v", dv)):
        dx, grads[W_name], db = F.linear_backward(F.merge_heads(d_heads), lin[part], Ws[W_name],
                                                  has_bias=bs[b_name] is not None)
        grads[x_name] = dx
        if db is not None:
            grads[b_name] = db
    if db_o is not None:
        grads["b_o"] = db_o
    if bias is not None:
        grads["attn_mask"] = _bias_grad(dcontext, core, g.get("weights"), bias.shape)
    if layout == "torch":
        grads.update({n: grads[n].T for n in Ws})
    order = ["query", "key", "value", "W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o",
             "attn_mask"]
    return OracleResult(outputs, {n: np.ascontiguousarray(grads[n]) for n in order if n in grads})
