"""Multi-head attention and its incremental-decoding (KV cache) path, with
grouped-query heads, rotary embeddings, sliding windows and ALiBi."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from .._init import uniform
from .._parallel import parallel_items
from .._validate import (as_rng, check_float, check_float_dtype, check_positive_int,
                         check_probability)
from ..functional.attention import ScaledDotProductCache, split_heads
from ..functional.flash import FlashAttentionCache, is_causal_mask
from ..functional.linear import LinearCache
from ..kernels import select
from ..layers.dropout import Dropout
from ..layers.linear import Linear
from ..module import Module, Parameter
from .masks import (alibi_bias, alibi_slopes, causal_mask, check_attn_mask,
                    check_key_padding_mask, sliding_window_mask)
from .rotary import RotaryEmbedding

__all__ = ["MultiHeadAttention", "MultiHeadAttentionCache", "KVCache"]


def _xavier_uniform(rng, fan_in: int, fan_out: int, shape, dtype) -> np.ndarray:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(rng, -bound, bound, shape, dtype)


class MultiHeadAttentionCache(NamedTuple):
    """What ``MultiHeadAttention.backward`` needs, named as in its docstring.

    The attention core's record (``core``: q_s, k, v, e, alpha, dropout,
    alpha_drop, context) belongs to the layer's own equations, so its fields
    read as the layer's: ``cache.alpha`` is ``cache.core.alpha``, and
    ``numtransformer trace`` prints them at the layer's path (``trace_inline``).
    """

    inputs: tuple  # Linear caches of the input projections: (in_proj's,) when one GEMM
    #                made Q, K and V for one input x; else one per argument (query, key, value)
    core: ScaledDotProductCache  # q_s, k, v, e, alpha, dropout, alpha_drop, context
    #                              (e is None from the fast kernels: see MultiHeadAttention)
    C: np.ndarray  # (B, Tq, E): merge(context), the input of out_proj
    out_proj: LinearCache  # the Linear cache of y = C W_o + b_o
    weights: str | None  # which weights forward returned: None, "mean" or "heads"
    one_input: bool = False  # self-attention through separate q/k/v projections: backward
    #                          returns the sum of the three input gradients

    trace_inline = ("core",)  # not a field: ``trace_lines`` prints core's fields here

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.core, name)


class KVCache:
    """Projected keys and values of the steps decoded so far, for incremental decoding.

    ``k``, ``v``: (B, H, T, d_k) views of preallocated buffers that double when
    full, so appending a step costs amortised O(1) copies, not a copy of the
    past.  H is the layer's number of key/value heads (``n_kv_heads``: with
    grouped-query attention the cache holds n_kv_heads heads, not n_heads
    copies), and with rotary embeddings the keys are stored rotated.  Create
    one with ``MultiHeadAttention.new_kv_cache`` (self-attention:
    ``decode`` appends each new step) or ``MultiHeadAttention.cache_memory``
    (cross-attention: a fixed, "static" memory projected once).
    """

    def __init__(self, batch_size: int, n_heads: int, d_k: int, *, dtype=np.float32,
                 capacity: int = 16):
        # 0 is allowed: decoding an empty batch gives empty logits, as forward does
        self.batch_size = check_positive_int(self, "batch_size", batch_size, minimum=0)
        self.n_heads = check_positive_int(self, "n_heads", n_heads)
        self.d_k = check_positive_int(self, "d_k", d_k)
        capacity = check_positive_int(self, "capacity", capacity)
        self.dtype = check_float_dtype(self, dtype)
        self._k = np.empty((batch_size, n_heads, capacity, d_k), self.dtype)
        self._v = np.empty_like(self._k)
        self.length = 0
        self.static = False

    @classmethod
    def from_memory(cls, k: np.ndarray, v: np.ndarray) -> "KVCache":
        """A static cache holding already projected (B, H, Tk, d_k) keys and values."""
        B, H, Tk, d_k = k.shape
        cache = cls(B, H, d_k, dtype=k.dtype, capacity=1)
        cache._k, cache._v, cache.length, cache.static = k, v, Tk, True
        return cache

    @property
    def k(self) -> np.ndarray:
        return self._k[:, :, : self.length]

    @property
    def v(self) -> np.ndarray:
        return self._v[:, :, : self.length]

    def append(self, k_new: np.ndarray, v_new: np.ndarray) -> None:
        """Append (B, H, T, d_k) keys and values of T new steps."""
        if self.static:
            raise ValueError("KVCache: a static (memory) cache cannot be appended to")
        start, stop = self.length, self.length + k_new.shape[2]
        if stop > self._k.shape[2]:
            capacity = max(stop, 2 * self._k.shape[2])
            for name in ("_k", "_v"):
                old = getattr(self, name)
                new = np.empty(old.shape[:2] + (capacity, self.d_k), self.dtype)
                new[:, :, :start] = old[:, :, :start]
                setattr(self, name, new)
        self._k[:, :, start:stop] = k_new
        self._v[:, :, start:stop] = v_new
        self.length = stop

    def truncate(self, length: int) -> None:
        """Forget every step after the first ``length`` (a chat that rewinds to a
        common prefix keeps the cache up to there and feeds only the rest)."""
        if self.static:
            raise ValueError("KVCache: a static (memory) cache cannot be truncated")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) \
                or not 0 <= length <= self.length:
            raise ValueError(f"KVCache: truncate needs 0 <= length <= {self.length}, got "
                             f"{length!r}")
        self.length = int(length)

    def select(self, rows) -> "KVCache":
        """A new cache holding batch rows ``rows`` (kept, reordered or repeated),
        as beam search needs when it keeps the best hypotheses."""
        rows = np.asarray(rows)
        out = KVCache(len(rows), self.n_heads, self.d_k, dtype=self.dtype, capacity=1)
        out._k, out._v = self._k[rows], self._v[rows]
        out.length, out.static = self.length, self.static
        return out

    def __repr__(self) -> str:
        return (f"KVCache(batch_size={self.batch_size}, n_heads={self.n_heads}, d_k={self.d_k}, "
                f"length={self.length}, static={self.static}, dtype={self.dtype})")


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention ("Attention Is All You Need",
    sec. 3.2.2, eq. 1 and the MultiHead equation), batch-first.

    Shapes: query (B, Tq, E) with E = d_model, key (B, Tk, kdim), value (B, Tk, vdim),
    H = n_heads, d_k = E / H; output y (B, Tq, E).
    Masks (boolean, True = blocked): key_padding_mask (B, Tk); attn_mask (Tq, Tk)
    or (B, Tq, Tk); both may be given and are ORed.

    Forward (``split`` reshapes (B, T, E) to (B, H, T, d_k); ``merge`` undoes it):
        Q = query W_q + b_q ;  K = key W_k + b_k ;  V = value W_v + b_v     (B, T, E)
        q, k, v    = split(Q), split(K), split(V)                         (B, H, T, d_k)
        q_s        = q / sqrt(d_k)        (scale folded into q: T*d_k multiplies, not T*T)
        e          = q_s k^T                                               (B, H, Tq, Tk)
        alpha      = softmax(e) over the unblocked keys (a row with none: 0)
        alpha_drop = dropout(alpha)
        context    = alpha_drop v                                          (B, H, Tq, d_k)
        C          = merge(context)                                        (B, Tq, E)
        y          = C W_o + b_o
    Backward (dweights: the gradient of the returned weights, if any):
        dC          = dy W_o^T ;  dW_o += C^T dy ;  db_o += sum dy          (out_proj)
        dcontext    = split(dC)
        dalpha_drop = dcontext v^T
        dv          = alpha_drop^T dcontext
        dalpha      = dropout.backward(dalpha_drop)  [+ dweights / H, or + dweights per head]
        de          = alpha * (dalpha - sum_j dalpha alpha)                 (softmax Jacobian)
        dk          = de^T q_s
        dq          = (de k) / sqrt(d_k)
        dQ, dK, dV  = merge(dq), merge(dk), merge(dv)
        dW_q += query^T dQ ;  db_q += sum dQ ;  dquery = dQ W_q^T         (likewise K, V)

    Kernels.  The lines from q_s to context (and back from dcontext to dq, dk,
    dv) are ``scaled_dot_product_attention_forward`` / ``_backward``, the one
    attention core that forward, backward and ``decode`` share (and the one
    place where a position transform of q and k goes); the projections are
    the linear kernels (on column blocks of ``in_proj`` where it is fused);
    ``split_heads`` / ``merge_heads`` change the layouts.  All come from
    ``select(dtype)``: the fast ones write the context and dq, dk, dv straight
    into their merged layouts, so merge is free there.

    Self-attention.  ``forward(x)`` (key and value omitted) is self-attention:
    Q, K and V come from ONE GEMM x [W_q | W_k | W_v], and backward returns the
    single gradient dx = [dQ | dK | dV] [W_q | W_k | W_v]^T (one GEMM).
    ``forward(x, x, x)`` with the very same array is also projected with one
    GEMM, but backward then returns three gradients (dquery, dkey, dvalue), one
    per argument, whose sum is dx.

    Parameters.  When kdim == vdim == d_model, the three input projections are
    one Linear ``in_proj`` (E, 3E) with columns [W_q | W_k | W_v] and bias
    [b_q | b_k | b_v]; otherwise they are ``q_proj`` (E, E), ``k_proj`` (kdim, E),
    ``v_proj`` (vdim, E).  The output projection is ``out_proj`` (E, E).
    Mapping to ``torch.nn.MultiheadAttention`` (our W is the transpose of torch's):
        in_proj.W  = in_proj_weight.T        in_proj.b = in_proj_bias
        q_proj.W   = q_proj_weight.T         q_proj.b  = in_proj_bias[:E]
        k_proj.W   = k_proj_weight.T         k_proj.b  = in_proj_bias[E:2E]
        v_proj.W   = v_proj_weight.T         v_proj.b  = in_proj_bias[2E:]
        out_proj.W = out_proj.weight.T       out_proj.b = out_proj.bias
    Init as PyTorch: input projections Xavier-uniform (the fused one with
    fan_in = E, fan_out = 3E), out_proj.W ~ U(-1/sqrt(E), 1/sqrt(E)), biases 0.

    The cache (``MultiHeadAttentionCache``) holds the projections' caches, the
    core's q_s, k, v, e, alpha, dropout mask, alpha_drop and context, the merged
    context C and out_proj's cache, under those names.  The fast kernels
    (float32 by default) keep e = None: they normalise the scores in place, as
    a (B, H, Tq, Tk) buffer per layer is worth saving; run the forward under
    ``use_kernels("reference")`` to inspect e (``numtransformer trace`` does).

    Returned weights.  ``need_weights=True`` makes forward return ``(y, weights)``
    with weights = alpha averaged over heads (B, Tq, Tk), or per head
    (B, H, Tq, Tk) when ``average_attn_weights=False``; backward then takes
    ``dout = (dy, dweights)`` (dweights may be None).  Differences from PyTorch:
    need_weights defaults to False (one output), the weights are alpha *before*
    dropout (PyTorch returns them after), a 3-D attn_mask is (B, Tq, Tk) shared
    by the heads (PyTorch's is (B*H, Tq, Tk)), and a fully blocked row gives 0,
    where PyTorch gives NaN.

    Incremental decoding (inference, no dropout): see ``new_kv_cache``,
    ``cache_memory`` and ``decode``.

    The modern decoder's options (keyword-only; the defaults are the layer above):

    ``n_kv_heads`` (default n_heads, must divide it): grouped-query attention
    (Ainslie et al. 2023; multi-query, Shazeer 2019, when 1).  K and V are
    projected to n_kv_heads heads of d_k (E_kv = n_kv_heads d_k columns), and
    query head h reads key/value head h // g, g = n_heads / n_kv_heads
    (Hugging Face's ``repeat_kv``):
        K = key W_k + b_k ;  V = value W_v + b_v                           (B, T, E_kv)
        k_r, v_r = repeat_kv(split(K), g), repeat_kv(split(V), g)          (B, H, T, d_k)
    and the core runs on k_r, v_r.  Backward: a kv head copied to g query
    heads gets the sum of their gradients (``sum_kv_groups``), then the
    projections' rules as above.  Parameters: the fused in_proj is (E, E +
    2 E_kv) with columns [W_q | W_k | W_v]; separate ones k_proj (kdim, E_kv),
    v_proj (vdim, E_kv).  The KV cache holds n_kv_heads heads: g times less
    memory.  With n_kv_heads = n_heads everything (parameters, state_dict
    keys, results bit for bit) is the layer without the option.

    ``rotary`` (None; True, a dict of ``base``/``layout``, or a
    ``RotaryEmbedding`` of dim d_k): rotary position embeddings (Su et al.
    2021) through the core's position seam: q' = R(m) q at query positions
    m = 0 .. Tq - 1, k' = R(n) k at key positions n = 0 .. Tk - 1; backward
    dq = R(m)^T dq', dk = R(n)^T dk' (``functional.rotary``).  ``decode``
    rotates the new keys once, at positions P .. P + T - 1 (P = steps
    cached), and stores them rotated; the new queries get the same positions.

    ``window`` (None or w >= 1): sliding-window causal attention, query at
    position t sees keys t - w + 1 .. t (``sliding_window_mask``; the window
    is causal by itself), ORed with the masks given; in ``decode`` with the
    cache offset, so keys older than the window are blocked.

    ``alibi`` (False): ALiBi (Press, Smith & Lewis 2022): the core adds the
    bias -m_h (t - j) to the scores of head h (slopes ``alibi_slopes``), a
    constant with no gradient: e = q_s k^T + bias.  Defined for causal
    attention: ``forward`` refuses it unless a window or ``attn_mask`` blocks
    every key after its query.

    All three relate query and key positions: with key and value given,
    queries sit at 0 .. Tq - 1 and keys at 0 .. Tk - 1; ``decode`` on a fixed
    memory (cross-attention) refuses them.

    ``attention_impl`` ("plain", the default, or "tiled"), ``block_q``,
    ``block_k`` (128 each): "tiled" computes the lines from q_s to context
    with ``flash_attention_forward`` / ``_backward`` (FlashAttention-2's
    online softmax and recomputing backward, ``functional.flash``) in tiles of
    block_q queries by block_k keys: the same function, never holding a
    (Tq, Tk) array per head; the cache keeps the context o and one
    log-sum-exp per query row (``FlashAttentionCache``) instead of e and
    alpha.  Masks go to it as structure: the key padding mask and the
    window as they are, an attn_mask equal to ``causal_mask(T)`` as
    ``causal``, any other attn_mask as a dense mask read tile by tile;
    ``decode`` passes causal with the cache offset.  Training forward,
    backward and ``decode`` all use it.  Not with it: ``need_weights`` (the
    weights are never formed), dropout on the weights in training mode, and
    ALiBi (refused with a message).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, *, dtype=np.float32,
                 rng=None, n_kv_heads: int | None = None, rotary=None,
                 window: int | None = None, alibi: bool = False,
                 attention_impl: str = "plain", block_q: int = 128, block_k: int = 128):
        d_model = check_positive_int(self, "d_model", d_model)
        n_heads = check_positive_int(self, "n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"MultiHeadAttention: d_model={d_model} is not divisible by "
                             f"n_heads={n_heads}")
        n_kv_heads = n_heads if n_kv_heads is None else check_positive_int(self, "n_kv_heads",
                                                                           n_kv_heads)
        if n_heads % n_kv_heads:
            raise ValueError(f"MultiHeadAttention: n_heads={n_heads} is not divisible by "
                             f"n_kv_heads={n_kv_heads} (each key/value head serves "
                             f"n_heads / n_kv_heads query heads)")
        window = None if window is None else check_positive_int(self, "window", window)
        if not isinstance(alibi, (bool, np.bool_)):
            raise TypeError(f"MultiHeadAttention: alibi must be True or False, got "
                            f"{type(alibi).__name__}")
        if attention_impl not in ("plain", "tiled"):
            raise ValueError(f"MultiHeadAttention: attention_impl must be 'plain' or 'tiled', "
                             f"got {attention_impl!r}")
        block_q = check_positive_int(self, "block_q", block_q)
        block_k = check_positive_int(self, "block_k", block_k)
        if attention_impl == "tiled" and alibi:
            raise ValueError("MultiHeadAttention: alibi is not supported with "
                             "attention_impl='tiled' (the tiled core adds no score bias); use "
                             "attention_impl='plain'")
        rotary = RotaryEmbedding.make("MultiHeadAttention", rotary, d_model // n_heads)
        kdim = d_model if kdim is None else check_positive_int(self, "kdim", kdim)
        vdim = d_model if vdim is None else check_positive_int(self, "vdim", vdim)
        p = check_probability(self, "dropout", dropout)
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        bias = bool(bias)
        self.d_model, self.n_heads, self.d_k = d_model, n_heads, d_model // n_heads
        self.kdim, self.vdim = kdim, vdim
        self.n_kv_heads, self.window, self.alibi = n_kv_heads, window, bool(alibi)
        self.attention_impl, self.block_q, self.block_k = attention_impl, block_q, block_k
        E, E_kv = d_model, n_kv_heads * self.d_k  # E_kv = E unless grouped-query
        self.in_proj = self.q_proj = self.k_proj = self.v_proj = None
        if kdim == E and vdim == E:
            out = E + 2 * E_kv
            self.in_proj = Linear(E, out, bias, dtype=dtype, rng=rng)
            self.in_proj.W.data = _xavier_uniform(rng, E, out, (E, out), dtype)
            projections = [self.in_proj]
        else:
            self.q_proj = Linear(E, E, bias, dtype=dtype, rng=rng)
            self.k_proj = Linear(kdim, E_kv, bias, dtype=dtype, rng=rng)
            self.v_proj = Linear(vdim, E_kv, bias, dtype=dtype, rng=rng)
            projections = [self.q_proj, self.k_proj, self.v_proj]
            for lin in projections:
                lin.W.data = _xavier_uniform(rng, lin.in_features, lin.W.shape[1], lin.W.shape,
                                             dtype)
        self.dropout = Dropout(p, rng=rng.spawn(1)[0])
        self.out_proj = Linear(E, E, bias, dtype=dtype, rng=rng)
        for lin in projections + [self.out_proj]:
            if lin.b is not None:
                lin.b.data[...] = 0
        self.rotary = rotary  # a RotaryEmbedding (no parameters) or None

    # -- helpers ------------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self.out_proj.W.dtype

    def _in_blocks(self):
        """[(W, b, dW, db)] of the Q, K and V projections, in that order.

        With a fused ``in_proj`` these are column blocks (views) of its weight,
        bias and their grads, so ``dW += ...`` accumulates into in_proj's grad.
        """
        if self.in_proj is not None:
            E, W, b = self.d_model, self.in_proj.W, self.in_proj.b
            E_kv = self.n_kv_heads * self.d_k
            cols = (slice(0, E), slice(E, E + E_kv), slice(E + E_kv, E + 2 * E_kv))
            return [(W.data[:, c], None if b is None else b.data[c],
                     W.grad[:, c], None if b is None else b.grad[c]) for c in cols]
        return [(lin.W.data, None if lin.b is None else lin.b.data,
                 lin.W.grad, None if lin.b is None else lin.b.grad)
                for lin in (self.q_proj, self.k_proj, self.v_proj)]

    @staticmethod
    def _project(kernels, lin, x):
        """(x W + b, cache) of one projection: the linear kernel on its weights (the layer
        has checked x: Linear.forward would scan it again), or, for a LoRA-wrapped
        projection, its own forward (base plus the low-rank update).  Backward is every
        projection's own ``backward`` (a plain Linear skips a frozen weight's gradient)."""
        if not isinstance(lin, Linear):  # a LoRALinear (layers never import attention)
            return lin.forward(x)
        return kernels.linear_forward(x, lin.W.data, None if lin.b is None else lin.b.data)

    def _qkv(self, kernels, x):
        """q (B, H, T, d_k) and k, v (B, H_kv, T, d_k) of one input x (B, T, E) by ONE
        GEMM x [W_q | W_k | W_v] + [b_q | b_k | b_v], and that linear cache (after
        ``split_in_proj``: three projections and their three caches)."""
        E, E_kv = self.d_model, self.n_kv_heads * self.d_k
        if self.in_proj is None:
            (Q, cq), (K, ck), (V, cv) = (self._project(kernels, lin, x) for lin in
                                         (self.q_proj, self.k_proj, self.v_proj))
            return (split_heads(Q, self.n_heads), split_heads(K, self.n_kv_heads),
                    split_heads(V, self.n_kv_heads), (cq, ck, cv))
        QKV, lin_cache = self._project(kernels, self.in_proj, x)  # (B, T, E + 2E_kv)
        q = split_heads(QKV[..., :E], self.n_heads)
        k = split_heads(QKV[..., E:E + E_kv], self.n_kv_heads)
        v = split_heads(QKV[..., E + E_kv:], self.n_kv_heads)
        return q, k, v, lin_cache

    def split_in_proj(self) -> None:
        """Replace the fused ``in_proj`` (E, E + 2 E_kv) by ``q_proj``, ``k_proj`` and
        ``v_proj`` holding its column blocks (the same numbers, and their gradients):
        the same function, three GEMMs instead of one, and three Linear children that
        ``apply_lora`` can wrap one by one (peft's q_proj/v_proj targets).  State-dict
        keys become q_proj.*, k_proj.*, v_proj.*; ``fuse_in_proj`` undoes it."""
        if self.in_proj is None:
            return
        if not isinstance(self.in_proj, Linear):
            raise TypeError("MultiHeadAttention: in_proj is wrapped (LoRA); remove the "
                            "wrapper before splitting it")
        E, E_kv = self.d_model, self.n_kv_heads * self.d_k
        W, b = self.in_proj.W, self.in_proj.b
        for name, cols in (("q_proj", slice(0, E)), ("k_proj", slice(E, E + E_kv)),
                           ("v_proj", slice(E + E_kv, E + 2 * E_kv))):
            lin = Linear(E, cols.stop - cols.start, b is not None, dtype=W.dtype, rng=0)
            lin.W = Parameter(W.data[:, cols], W.requires_grad)
            lin.W.grad[...] = W.grad[:, cols]
            if b is not None:
                lin.b = Parameter(b.data[cols], b.requires_grad)
                lin.b.grad[...] = b.grad[cols]
            setattr(self, name, lin)
        self.in_proj = None

    def fuse_in_proj(self) -> None:
        """Undo ``split_in_proj``: one ``in_proj`` with columns [W_q | W_k | W_v] (only
        when the three are plain Linear layers of width d_model in)."""
        lins = (self.q_proj, self.k_proj, self.v_proj)
        if self.in_proj is not None or self.kdim != self.d_model or self.vdim != self.d_model:
            return
        if not all(type(lin) is Linear for lin in lins):
            raise TypeError("MultiHeadAttention: q_proj, k_proj and v_proj must be plain "
                            "Linear layers (remove LoRA first) to be fused")
        E, bias = self.d_model, lins[0].b is not None
        fused = Linear(E, sum(lin.out_features for lin in lins), bias, dtype=self.dtype, rng=0)
        fused.W = Parameter(np.concatenate([lin.W.data for lin in lins], axis=1),
                            lins[0].W.requires_grad)
        fused.W.grad[...] = np.concatenate([lin.W.grad for lin in lins], axis=1)
        if bias:
            fused.b = Parameter(np.concatenate([lin.b.data for lin in lins]),
                                lins[0].b.requires_grad)
            fused.b.grad[...] = np.concatenate([lin.b.grad for lin in lins])
        self.in_proj, self.q_proj, self.k_proj, self.v_proj = fused, None, None, None

    def _check_inputs(self, query, key, value):
        """Returns (query, key, value, n_inputs, one_gemm)."""
        if (key is None) != (value is None):
            raise ValueError("MultiHeadAttention: pass both key and value (attention over "
                             "them) or neither (self-attention over query)")
        one_gemm = key is None or (query is key and key is value and self.in_proj is not None)
        query = check_float(self, "query", query, dtype=self.dtype, ndim=3,
                            last_dim=self.d_model, last_dim_name="d_model")
        if key is None:
            if self.kdim != self.d_model or self.vdim != self.d_model:
                raise ValueError(f"MultiHeadAttention: self-attention (key=value=None) needs "
                                 f"kdim == vdim == d_model, got kdim={self.kdim}, "
                                 f"vdim={self.vdim}, d_model={self.d_model}")
            return query, query, query, 1, True
        if one_gemm:
            return query, query, query, 3, True
        key = check_float(self, "key", key, dtype=self.dtype, ndim=3, last_dim=self.kdim,
                          last_dim_name="kdim")
        value = check_float(self, "value", value, dtype=self.dtype, ndim=3,
                            last_dim=self.vdim, last_dim_name="vdim")
        if key.shape[0] != query.shape[0]:
            raise ValueError(f"MultiHeadAttention: key has batch size {key.shape[0]} but "
                             f"query has {query.shape[0]}")
        if value.shape[:2] != key.shape[:2]:
            raise ValueError(f"MultiHeadAttention: value has shape {value.shape}, expected "
                             f"(B, Tk, vdim) with (B, Tk) = {key.shape[:2]} as the key")
        return query, key, value, 3, False

    def _blocked(self, key_padding_mask, attn_mask, B, Tq, Tk):
        """The union of both masks, broadcastable against (B, H, Tq, Tk), or None."""
        blocked = None
        if key_padding_mask is not None:
            kpm = check_key_padding_mask(self, "key_padding_mask", key_padding_mask, B, Tk)
            blocked = kpm[:, None, None, :]
        if attn_mask is not None:
            am = check_attn_mask(self, "attn_mask", attn_mask, B, Tq, Tk)[:, None]
            blocked = am if blocked is None else (blocked | am)
        return blocked

    def _check_causal(self, attn_mask, B, Tq, Tk):
        """ALiBi's bias -m (t - j) is positive for keys after the query (j > t): it
        is defined for causal attention, so attn_mask must block every such key."""
        future = np.arange(Tk)[None, :] > np.arange(Tq)[:, None]
        if attn_mask is None or not (check_attn_mask(self, "attn_mask", attn_mask, B, Tq, Tk)
                                     | ~future).all():
            raise ValueError("MultiHeadAttention: alibi is defined for causal attention (its "
                             "bias -m (t - j) grows for keys after the query); pass a causal "
                             "attn_mask (causal_mask(T)) or a window")

    def _positional(self, blocked, Tq, Tk, offset, dtype, rotate_keys=True):
        """The position options for queries at offset .. offset + Tq - 1 and keys at
        0 .. Tk - 1: (blocked ORed with the sliding window, the ALiBi bias or None,
        the rotary position pair or None)."""
        if self.window is not None:
            wm = sliding_window_mask(Tq, self.window, offset, Tk=Tk)[None, None]
            blocked = wm if blocked is None else (blocked | wm)
        bias = None
        if self.alibi:
            bias = alibi_bias(alibi_slopes(self.n_heads), Tq, offset, dtype, Tk=Tk)[None]
        position = None
        if self.rotary is not None:
            position = self.rotary.position(Tq, Tk if rotate_keys else None, dtype,
                                            q_offset=offset)
        return blocked, bias, position

    def _tiled(self, key_padding_mask, attn_mask, B, Tq, Tk, offset, dtype, *, causal=False,
               rotate_keys=True):
        """The tiled core's keyword arguments for queries at offset .. offset + Tq - 1
        and keys at 0 .. Tk - 1: the masks as structure (an attn_mask that is the
        causal pattern becomes ``causal``; another one stays dense), the window, the
        block sizes, the rotary position pair."""
        kpm = None
        if key_padding_mask is not None:
            kpm = check_key_padding_mask(self, "key_padding_mask", key_padding_mask, B, Tk)
        am = None
        if attn_mask is not None:
            am = check_attn_mask(self, "attn_mask", attn_mask, B, Tq, Tk)  # (1 or B, Tq, Tk)
            if am.shape[0] == 1 and is_causal_mask(am[0], offset):
                causal, am = True, None
            else:
                am = am[:, None]
        position = None
        if self.rotary is not None:
            position = self.rotary.position(Tq, Tk if rotate_keys else None, dtype,
                                            q_offset=offset)
        return dict(causal=causal, window=self.window, q_offset=offset, key_padding_mask=kpm,
                    attn_mask=am, position=position, block_q=self.block_q,
                    block_k=self.block_k)

    def _check_tiled(self, need_weights):
        if need_weights:
            raise ValueError("MultiHeadAttention: need_weights=True needs the attention "
                             "weights, which attention_impl='tiled' never forms; use "
                             "attention_impl='plain'")
        if self.dropout.training and self.dropout.p > 0:
            raise ValueError(f"MultiHeadAttention: attention_impl='tiled' applies no dropout to "
                             f"the attention weights, but dropout={self.dropout.p} and the "
                             f"layer is in training mode; use dropout=0, eval(), or "
                             f"attention_impl='plain'")

    # -- the contract ---------------------------------------------------------------------
    def forward(self, query, key=None, value=None, key_padding_mask=None, attn_mask=None,
                need_weights: bool = False, average_attn_weights: bool = True):
        """Returns ``(y, cache)``, or ``((y, weights), cache)`` with ``need_weights``.

        ``key``/``value`` omitted: self-attention over ``query`` (one GEMM, one
        input gradient).  Masks are boolean, True = blocked.
        """
        query, key, value, n_inputs, one_gemm = self._check_inputs(query, key, value)
        (B, Tq, _), Tk = query.shape, key.shape[1]
        if Tk == 0:
            arg = "query" if n_inputs == 1 else "key"  # self-attention: the keys are the query
            raise ValueError(f"MultiHeadAttention: {arg} has no positions (shape {key.shape}); "
                             f"attention needs at least one key")
        if self.attention_impl == "tiled":
            self._check_tiled(need_weights)
            tiles = self._tiled(key_padding_mask, attn_mask, B, Tq, Tk, 0, query.dtype)
        else:
            blocked = self._blocked(key_padding_mask, attn_mask, B, Tq, Tk)
            if self.alibi and self.window is None:
                self._check_causal(attn_mask, B, Tq, Tk)
            bias = position = None
            if self.window is not None or self.alibi or self.rotary is not None:
                blocked, bias, position = self._positional(blocked, Tq, Tk, 0, query.dtype)
        kernels = select(query.dtype)

        one_input = False
        if one_gemm and self.in_proj is not None:
            q, k, v, lin_cache = self._qkv(kernels, query)
            inputs = (lin_cache,) * n_inputs
        elif one_gemm:  # self-attention through split projections: three GEMMs on x
            q, k, v, inputs = self._qkv(kernels, query)
            one_input = n_inputs == 1
        else:
            if self.in_proj is not None and not isinstance(self.in_proj, Linear):
                raise ValueError("MultiHeadAttention: a LoRA-wrapped fused in_proj serves "
                                 "self-attention; for attention over other keys and values "
                                 "split it first (split_in_proj) and wrap q_proj, k_proj, "
                                 "v_proj")
            if self.in_proj is not None:  # column blocks of the fused projection
                projected = [kernels.linear_forward(x, W, b) for x, (W, b, _, _) in
                             zip((query, key, value), self._in_blocks())]
            else:
                projected = [self._project(kernels, lin, x) for x, lin in
                             zip((query, key, value), (self.q_proj, self.k_proj, self.v_proj))]
            heads = (self.n_heads, self.n_kv_heads, self.n_kv_heads)
            (q, k, v), inputs = zip(*((split_heads(X, h), c)
                                      for (X, c), h in zip(projected, heads)))
        if self.attention_impl == "tiled":
            context, core = kernels.flash_attention_forward(q, k, v, **tiles)
        else:
            p = self.dropout.p if self.dropout.training else 0.0
            # q is a view of this call's own projection: the kernel may scale it in place
            context, core = kernels.scaled_dot_product_attention_forward(
                q, k, v, blocked, p, self.dropout.rng, position, overwrite_q=True, bias=bias)
        C = kernels.merge_heads(context)
        y, out_cache = self._project(kernels, self.out_proj, C)

        weights = None
        if need_weights:
            weights = "mean" if average_attn_weights else "heads"
        cache = MultiHeadAttentionCache(inputs=tuple(inputs), core=core, C=C,
                                        out_proj=out_cache, weights=weights,
                                        one_input=one_input)
        if weights is None:
            return y, cache
        alpha = core.alpha
        return (y, alpha.mean(axis=1) if weights == "mean" else alpha), cache

    def backward(self, dout, cache: MultiHeadAttentionCache):
        if cache.weights is None:
            dy, dweights = dout, None
        else:
            dy, dweights = dout
        kernels = select(dy.dtype)
        dC = self.out_proj.backward(dy, cache.out_proj)
        dcontext = split_heads(dC, self.n_heads)
        dalpha = None
        if dweights is not None:
            dalpha = dweights[:, None] * (1.0 / self.n_heads) if cache.weights == "mean" \
                else dweights
        if isinstance(cache.core, FlashAttentionCache):  # attention_impl="tiled"
            dq, dk, dv = kernels.flash_attention_backward(dcontext, cache.core)
        else:
            dq, dk, dv = kernels.scaled_dot_product_attention_backward(dcontext, cache.core,
                                                                       dalpha)

        if len(cache.inputs) == 1:  # self-attention: dx = [dQ | dK | dV] [W_q | W_k | W_v]^T
            return self.in_proj.backward(kernels.merge_heads(dq, dk, dv), cache.inputs[0])
        if self.in_proj is None:  # split (or kdim/vdim) projections, each its own backward
            grads = tuple(lin.backward(kernels.merge_heads(d), c)
                          for d, c, lin in zip((dq, dk, dv), cache.inputs,
                                               (self.q_proj, self.k_proj, self.v_proj)))
            return grads[0] + grads[1] + grads[2] if cache.one_input else grads

        grads = []
        fused = self.in_proj
        for d, lin_cache, (W, b, W_grad, b_grad) in zip((dq, dk, dv), cache.inputs,
                                                        self._in_blocks()):
            dx, dW, db = kernels.linear_backward(kernels.merge_heads(d), lin_cache, W,
                                                 b is not None)
            if fused.W.requires_grad:  # a view: in_proj's column block
                W_grad += dW
            if b is not None and fused.b.requires_grad:
                b_grad += db
            grads.append(dx)
        return tuple(grads)

    # -- packed sequences (inference) -------------------------------------------------------
    def forward_packed(self, x, packing, causal: bool = False):
        """Self-attention over packed sequences, for inference (no cache, no dropout).

        x (N, E) holds the sequences of ``packing`` (an ``attention.packed.Packing``)
        end to end; returns y (N, E), row for row what ``forward`` gives each
        sequence alone (or in a padded batch with its key-padding mask).  ``causal``:
        each position sees its sequence's positions up to itself (``causal_mask``).

            QKV = x [W_q | W_k | W_v] + b                 one GEMM over all N rows
            for each group of packing: gather its rows of QKV into a (b, T, .) block
                (a view when its sequences are all T long), key-padding mask the rest,
                C[group's rows] = Attention(q, k, v) of the block
            y = C W_o + b_o                               one GEMM over all N rows

        Rotary embeddings, sliding windows and ALiBi apply per sequence (each block
        starts every sequence at position 0).  The attention core is the plain one
        whatever ``attention_impl`` says (the same function).  Projections wrapped in
        LoRA run their own forward."""
        x = check_float(self, "x", x, dtype=self.dtype, ndim=2, last_dim=self.d_model,
                        last_dim_name="d_model")
        if x.shape[0] != packing.n_rows:
            raise ValueError(f"MultiHeadAttention: x has {x.shape[0]} rows, the packing "
                             f"{packing.n_rows}")
        if self.alibi and self.window is None and not causal:
            raise ValueError("MultiHeadAttention: alibi is defined for causal attention; pass "
                             "causal=True (or set a window)")
        kernels = select(x.dtype)
        E, H = self.d_model, self.n_heads
        if self.in_proj is not None:
            QKV, _ = self._project(kernels, self.in_proj, x)
        else:
            QKV = np.concatenate([self._project(kernels, lin, x)[0] for lin in
                                  (self.q_proj, self.k_proj, self.v_proj)], axis=-1)
        C = np.empty((packing.n_rows, E), x.dtype)
        groups = packing.groups
        # the groups are independent: split over the threads by their scores' sizes
        parallel_items(lambda part: self._packed_groups(kernels, QKV, C, packing, part, causal),
                       [(stop - first) * H * T * T for first, stop, T in groups])
        y, _ = self._project(kernels, self.out_proj, C)
        return y

    def _packed_groups(self, kernels, QKV, C, packing, part, causal):
        """forward_packed's attention for the groups ``part`` (a slice) of the packing:
        their rows of C from their rows of QKV."""
        E, E_kv, H, H_kv = self.d_model, self.n_kv_heads * self.d_k, self.n_heads, self.n_kv_heads
        for g in range(part.start, part.stop):
            first, stop, T = packing.groups[g]
            start, rows, kpm, valid = packing.block(g)
            b = stop - first
            block = QKV[start:start + b * T].reshape(b, T, -1) if rows is None else QKV[rows]
            blocked = None if kpm is None else kpm[:, None, None, :]
            if causal:
                cm = causal_mask(T)[None, None]
                blocked = cm if blocked is None else (blocked | cm)
            bias = position = None
            if self.window is not None or self.alibi or self.rotary is not None:
                blocked, bias, position = self._positional(blocked, T, T, 0, QKV.dtype)
            # a view of QKV (rows None) must not be scaled in place; a gathered block is ours
            context, _ = kernels.scaled_dot_product_attention_forward(
                split_heads(block[..., :E], H), split_heads(block[..., E:E + E_kv], H_kv),
                split_heads(block[..., E + E_kv:], H_kv), blocked, 0.0, None, position,
                overwrite_q=rows is not None, bias=bias)
            out = kernels.merge_heads(context)  # (b, T, E)
            if rows is None:
                C[start:start + b * T] = out.reshape(b * T, E)
            else:
                C[rows[valid]] = out[valid]

    # -- incremental decoding (inference) ---------------------------------------------------
    def new_kv_cache(self, batch_size: int, capacity: int = 16) -> KVCache:
        """An empty cache for ``decode`` in causal self-attention."""
        if self.kdim != self.d_model or self.vdim != self.d_model:
            raise ValueError("MultiHeadAttention: incremental self-attention needs "
                             "kdim == vdim == d_model")
        return KVCache(batch_size, self.n_kv_heads, self.d_k, dtype=self.dtype,
                       capacity=capacity)

    def cache_memory(self, key, value) -> KVCache:
        """Project a fixed memory (the encoder output) once, for cross-attention ``decode``."""
        key = check_float(self, "key", key, dtype=self.dtype, ndim=3, last_dim=self.kdim,
                          last_dim_name="kdim")
        value = check_float(self, "value", value, dtype=self.dtype, ndim=3, last_dim=self.vdim,
                            last_dim_name="vdim")
        if value.shape[:2] != key.shape[:2] or key.shape[1] == 0:
            raise ValueError(f"MultiHeadAttention: key {key.shape} and value {value.shape} "
                             f"must share a non-empty (B, Tk)")
        kernels = select(key.dtype)
        if self.in_proj is None:
            (K, _), (V, _) = (self._project(kernels, lin, x) for lin, x in
                              ((self.k_proj, key), (self.v_proj, value)))
        else:
            self._check_fused_plain("cache_memory")
            _, (W_k, b_k, _, _), (W_v, b_v, _, _) = self._in_blocks()
            K, _ = kernels.linear_forward(key, W_k, b_k)
            V, _ = kernels.linear_forward(value, W_v, b_v)
        k, v = split_heads(K, self.n_kv_heads), split_heads(V, self.n_kv_heads)
        return KVCache.from_memory(np.ascontiguousarray(k), np.ascontiguousarray(v))

    def decode(self, x, kv_cache: KVCache, key_padding_mask=None):
        """Attention for T new query steps x (B, T, E), given the cached past; returns y (B, T, E).

        Self-attention (a cache from ``new_kv_cache``): the new steps' keys and
        values are appended to the cache, and new step i (absolute position
        P + i, P = steps cached before the call) attends to positions 0..P+i:
        the output equals ``forward(x_all, attn_mask=causal_mask(...))`` at
        those positions.  Cross-attention (a cache from ``cache_memory``): the
        steps attend to the whole memory, as ``forward(x, key, value)`` does.
        ``key_padding_mask``: (B, number of keys after the call), True = blocked.
        No dropout is applied (this is the inference path) and no cache for
        backward is kept.  The attention itself is forward's core kernel.
        With the position options, new step i sits at position P + i: rotary
        keys are rotated there before they are stored (the cache holds rotated
        keys; the queries are rotated through the core's position seam), the
        window blocks keys j <= P + i - window, ALiBi adds -m_h (P + i - j).
        """
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"MultiHeadAttention: kv_cache must be a KVCache, got "
                            f"{type(kv_cache).__name__}")
        x = check_float(self, "x", x, dtype=self.dtype, ndim=3, last_dim=self.d_model,
                        last_dim_name="d_model")
        B, T, _ = x.shape
        if T == 0:
            raise ValueError(f"MultiHeadAttention: x has no positions (shape {x.shape})")
        if (kv_cache.batch_size, kv_cache.n_heads, kv_cache.d_k) != (B, self.n_kv_heads,
                                                                     self.d_k):
            raise ValueError(f"MultiHeadAttention: kv_cache has batch_size="
                             f"{kv_cache.batch_size}, n_heads={kv_cache.n_heads}, "
                             f"d_k={kv_cache.d_k}; expected {B}, {self.n_kv_heads}, {self.d_k}")
        if kv_cache.dtype != self.dtype:
            raise TypeError(f"MultiHeadAttention: kv_cache has dtype {kv_cache.dtype} but the "
                            f"layer computes in {self.dtype}")
        kernels = select(x.dtype)
        bias = position = None
        if kv_cache.static:
            if self.window is not None or self.alibi or self.rotary is not None:
                raise ValueError("MultiHeadAttention: decode on a memory (cross-attention) "
                                 "cache with rotary, window or alibi: these relate query and "
                                 "key positions, which a fixed memory does not have")
            if self.in_proj is None:
                Q, _ = self._project(kernels, self.q_proj, x)
            else:
                self._check_fused_plain("decode on a memory")
                W_q, b_q, _, _ = self._in_blocks()[0]
                Q, _ = kernels.linear_forward(x, W_q, b_q)
            q = split_heads(Q, self.n_heads)
            blocked = None
        else:
            if self.kdim != self.d_model or self.vdim != self.d_model:
                raise ValueError("MultiHeadAttention: incremental self-attention needs "
                                 "kdim == vdim == d_model")
            q, k_new, v_new, _ = self._qkv(kernels, x)
            P = kv_cache.length
            if self.rotary is not None:  # the cache stores rotated keys: rotate once, here
                k_new = self.rotary.rotate(k_new, P)
            kv_cache.append(k_new, v_new)
            if self.attention_impl == "tiled":
                blocked = None  # causal from offset P, the window, rotary: _tiled, below
            elif self.window is None:
                # new step i sits at position P + i and may not see keys j > P + i
                blocked = (np.arange(P + T)[None, :] > (P + np.arange(T))[:, None])[None, None]
            else:  # the window's mask is causal too, and blocks keys j <= P + i - window
                blocked = None
            if self.attention_impl == "plain" and (self.window is not None or self.alibi
                                                   or self.rotary is not None):
                blocked, bias, position = self._positional(blocked, T, P + T, P, x.dtype,
                                                           rotate_keys=False)
        Tk = kv_cache.length
        if self.attention_impl == "tiled":
            tiles = self._tiled(key_padding_mask, None, B, T, Tk,
                                0 if kv_cache.static else Tk - T, x.dtype,
                                causal=not kv_cache.static, rotate_keys=False)
            context, _ = kernels.flash_attention_forward(q, kv_cache.k, kv_cache.v, **tiles)
        else:
            if key_padding_mask is not None:
                kpm = check_key_padding_mask(self, "key_padding_mask", key_padding_mask, B, Tk)
                kpm = kpm[:, None, None, :]
                blocked = kpm if blocked is None else (blocked | kpm)
            context, _ = kernels.scaled_dot_product_attention_forward(
                q, kv_cache.k, kv_cache.v, blocked, 0.0, None, position, overwrite_q=True,
                bias=bias)
        y, _ = self._project(kernels, self.out_proj, kernels.merge_heads(context))
        return y

    def _check_fused_plain(self, what: str) -> None:
        if not isinstance(self.in_proj, Linear):
            raise ValueError(f"MultiHeadAttention: {what} reads column blocks of in_proj, "
                             f"which is LoRA-wrapped; split it (split_in_proj) and wrap "
                             f"q_proj, k_proj, v_proj instead")

    def extra_repr(self) -> str:
        s = f"d_model={self.d_model}, n_heads={self.n_heads}, dropout={self.dropout.p}"
        if self.kdim != self.d_model or self.vdim != self.d_model:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        s += f", bias={self.out_proj.b is not None}"
        if self.n_kv_heads != self.n_heads:
            s += f", n_kv_heads={self.n_kv_heads}"
        if self.window is not None:
            s += f", window={self.window}"
        if self.attention_impl != "plain":
            s += (f", attention_impl={self.attention_impl!r}, block_q={self.block_q}, "
                  f"block_k={self.block_k}")
        return s + (", alibi=True" if self.alibi else "")


@contextmanager
def plain_attention(module: Module):
    """Run every ``MultiHeadAttention`` in ``module``'s tree with the plain core for
    the duration of the block (the tiled core never forms the weights alpha that an
    attention plot or a trace reads); the same parameters, the same function."""
    layers = [m for _, m in module.named_modules() if isinstance(m, MultiHeadAttention)]
    saved = [m.attention_impl for m in layers]
    for m in layers:
        m.attention_impl = "plain"
    try:
        yield module
    finally:
        for m, impl in zip(layers, saved):
            m.attention_impl = impl
