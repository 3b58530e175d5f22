"""Attention score functions: how well does query i match key j?

Each score is a Module mapping a query sequence ``s`` ``(B, Tq, Dq)`` and a key
sequence ``h`` ``(B, Tk, Dk)`` to the scores ``e`` ``(B, Tq, Tk)``; ``Attention``
turns them into weights with a (masked) softmax.  ``backward(de, cache)``
returns ``(ds, dh)`` and adds the parameter gradients.

The names follow the RNN-attention papers: ``s`` is the decoder state that asks
(the query), ``h`` the encoder states that answer (the keys).

=================  ===========================================  ====================
score              e_ij                                         source
=================  ===========================================  ====================
DotScore           s_i . h_j                                    Luong et al. 2015, eq. 8
ScaledDotScore     s_i . h_j / sqrt(Dk)                         Vaswani et al. 2017, eq. 1
GeneralScore       s_i^T W_a h_j                                Luong et al. 2015, eq. 8
AdditiveScore      v_a^T tanh(W_q^T s_i + W_k^T h_j)            Bahdanau et al. 2015, A.1.2
CosineScore        beta cos(s_i, h_j)                           Graves et al. 2014, eqs. 5-6
LocationScore      (W_a^T s_i)_j, independent of h              Luong et al. 2015, eq. 9
=================  ===========================================  ====================

The math of each lives in its kernels, ``numtransformer.functional``'s
``*_score_forward`` / ``*_score_backward`` (the docstrings there derive the
backward line by line); the modules hold the parameters, check the inputs and
call the kernels of ``select(dtype)``.
"""

from __future__ import annotations

import math

import numpy as np

from .._init import uniform
from .._validate import _name, as_rng, check_float, check_float_dtype, check_positive_int
from ..functional.attention import (AdditiveScoreCache, CosineScoreCache, DotScoreCache,
                                    GeneralScoreCache, LocationScoreCache)
from ..kernels import select
from ..module import Module, Parameter

__all__ = ["Score", "DotScore", "ScaledDotScore", "GeneralScore", "AdditiveScore",
           "ConcatScore", "CosineScore", "LocationScore"]


def _uniform(rng, fan_in: int, shape, dtype) -> np.ndarray:
    bound = 1.0 / math.sqrt(fan_in)
    return uniform(rng, -bound, bound, shape, dtype)


class Score(Module):
    """Base class of the score functions (see the module docstring).

    Class attributes describe the accepted inputs, so that ``Attention`` can
    check them under its own name: ``d_query`` / ``d_key`` the required widths
    of s and h (None: any), ``same_width`` whether s and h must be equally wide.
    """

    d_query: int | None = None
    d_key: int | None = None
    same_width: bool = False

    def param_dtype(self):
        """The dtype of the parameters, or None for a parameter-free score."""
        params = self.parameters()
        return params[0].dtype if params else None

    def check_inputs(self, s, h, *, who=None, s_arg: str = "s", h_arg: str = "h"):
        """Validate ``s`` (B, Tq, Dq) and ``h`` (B, Tk, Dk); errors are named after
        ``who`` (the calling module, e.g. an Attention; default: this score)."""
        layer = who if who is not None else self  # the object: it decides the NaN scan
        who = _name(layer)
        s = check_float(layer, s_arg, s, dtype=self.param_dtype(), ndim=3,
                        last_dim=self.d_query, last_dim_name="d_query")
        h = check_float(layer, h_arg, h, dtype=s.dtype, ndim=3,
                        last_dim=self.d_key, last_dim_name="d_key")
        if h.shape[0] != s.shape[0]:
            raise ValueError(f"{who}: {h_arg} has batch size {h.shape[0]} but {s_arg} has "
                             f"{s.shape[0]}")
        if h.shape[1] == 0:
            raise ValueError(f"{who}: {h_arg} has no positions (shape {h.shape}); "
                             f"attention needs at least one key")
        if self.same_width and s.shape[-1] != h.shape[-1]:
            raise ValueError(f"{who}: {s_arg} has last dim {s.shape[-1]} but {h_arg} has "
                             f"{h.shape[-1]}; {type(self).__name__} needs equal widths")
        return s, h


DotCache = DotScoreCache  # the names these records had before the kernels
GeneralCache = GeneralScoreCache
AdditiveCache = AdditiveScoreCache
CosineCache = CosineScoreCache
LocationCache = LocationScoreCache


class DotScore(Score):
    """Dot-product score (Luong, Pham & Manning 2015, eq. 8, "dot").

    Shapes: s (B, Tq, D), h (B, Tk, D), e (B, Tq, Tk).

    Forward:
        e = s h^T                  e_ij = s_i . h_j
    Backward:
        ds = de h
        dh = de^T s
    Kernels: ``dot_score_forward`` / ``dot_score_backward``.
    """

    same_width = True

    def forward(self, s, h):
        s, h = self.check_inputs(s, h)
        return select(s.dtype).dot_score_forward(s, h)

    def backward(self, de, cache: DotScoreCache):
        return select(de.dtype).dot_score_backward(de, cache)


class ScaledDotScore(Score):
    """Scaled dot-product score ("Attention Is All You Need", eq. 1).

    Shapes: s (B, Tq, D), h (B, Tk, D), e (B, Tq, Tk).

    Forward (the scale keeps the score variance ~1 when the entries are ~N(0, 1)):
        e = s h^T / sqrt(D)
    Backward:
        ds = de h / sqrt(D)
        dh = de^T s / sqrt(D)
    Kernels: ``scaled_dot_score_forward`` / ``scaled_dot_score_backward``.
    """

    same_width = True

    def forward(self, s, h):
        s, h = self.check_inputs(s, h)
        return select(s.dtype).scaled_dot_score_forward(s, h)

    def backward(self, de, cache: DotScoreCache):
        return select(de.dtype).scaled_dot_score_backward(de, cache)


class GeneralScore(Score):
    """Bilinear ("general") score (Luong, Pham & Manning 2015, eq. 8).

    Shapes: s (B, Tq, Dq), h (B, Tk, Dk), W_a (Dq, Dk), e (B, Tq, Tk).

    Forward:
        u = s W_a                  (B, Tq, Dk): one GEMM over the B*Tq rows
        e = u h^T                  e_ij = s_i^T W_a h_j
    Backward:
        du   = de h
        dh   = de^T u
        dW_a += s^T du             (summed over the B*Tq rows)
        ds   = du W_a^T

    With W_a = I this is DotScore.  Init: W_a ~ U(-1/sqrt(Dq), 1/sqrt(Dq)).
    Kernels: ``general_score_forward`` / ``general_score_backward``.
    """

    def __init__(self, d_query: int, d_key: int, *, dtype=np.float32, rng=None):
        self.d_query = check_positive_int(self, "d_query", d_query)
        self.d_key = check_positive_int(self, "d_key", d_key)
        dtype = check_float_dtype(self, dtype)
        self.W_a = Parameter(_uniform(as_rng(rng), d_query, (d_query, d_key), dtype))

    def forward(self, s, h):
        s, h = self.check_inputs(s, h)
        return select(s.dtype).general_score_forward(s, h, self.W_a.data)

    def backward(self, de, cache: GeneralScoreCache):
        ds, dh, dW_a = select(de.dtype).general_score_backward(de, cache, self.W_a.data)
        self.W_a.grad += dW_a
        return ds, dh

    def extra_repr(self) -> str:
        return f"d_query={self.d_query}, d_key={self.d_key}"


class AdditiveScore(Score):
    """Additive (Bahdanau) score (Bahdanau, Cho & Bengio 2015, appendix A.1.2;
    Luong et al. 2015, eq. 8, call it "concat").

    Shapes: s (B, Tq, Dq), h (B, Tk, Dk), W_q (Dq, A), W_k (Dk, A), v_a (A,),
    e (B, Tq, Tk); A = d_attn.

    Forward:
        sq   = s W_q                        (B, Tq, A)
        hk   = h W_k                        (B, Tk, A)
        t_ij = tanh(sq_i + hk_j)            (B, Tq, Tk, A): every pair (i, j)
        e_ij = t_ij . v_a
    Backward:
        dv_a += sum_{b,i,j} de_ij t_ij
        dt_ij = de_ij v_a
        dz_ij = dt_ij (1 - t_ij^2)          (z = sq_i + hk_j, tanh' = 1 - tanh^2)
        dsq_i = sum_j dz_ij
        dhk_j = sum_i dz_ij
        dW_q += s^T dsq ;  ds = dsq W_q^T
        dW_k += h^T dhk ;  dh = dhk W_k^T

    The concat form e_ij = v_a^T tanh(W_a [s_i; h_j]) is the same map: stacking
    W_a = [W_q; W_k] (Dq + Dk, A) gives [s_i; h_j] W_a = s_i W_q + h_j W_k.
    Computing the two halves separately costs B(Tq + Tk) projections instead of
    B Tq Tk.  ``concat_weight()`` returns that stacked W_a.

    Init: W_q ~ U(+-1/sqrt(Dq)), W_k ~ U(+-1/sqrt(Dk)), v_a ~ U(+-1/sqrt(A)).
    Kernels: ``additive_score_forward`` / ``additive_score_backward`` (on the
    shared ``additive_energy_forward`` / ``additive_energy_backward``).
    """

    def __init__(self, d_query: int, d_key: int, d_attn: int, *, dtype=np.float32, rng=None):
        self.d_query = check_positive_int(self, "d_query", d_query)
        self.d_key = check_positive_int(self, "d_key", d_key)
        self.d_attn = check_positive_int(self, "d_attn", d_attn)
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        self.W_q = Parameter(_uniform(rng, d_query, (d_query, d_attn), dtype))
        self.W_k = Parameter(_uniform(rng, d_key, (d_key, d_attn), dtype))
        self.v_a = Parameter(_uniform(rng, d_attn, (d_attn,), dtype))

    def concat_weight(self) -> np.ndarray:
        """W_a = [W_q; W_k] of the concat form v_a^T tanh(W_a [s; h])."""
        return np.concatenate([self.W_q.data, self.W_k.data], axis=0)

    def forward(self, s, h):
        s, h = self.check_inputs(s, h)
        return select(s.dtype).additive_score_forward(s, h, self.W_q.data, self.W_k.data,
                                                      self.v_a.data)

    def backward(self, de, cache: AdditiveScoreCache):
        ds, dh, dW_q, dW_k, dv_a = select(de.dtype).additive_score_backward(
            de, cache, self.W_q.data, self.W_k.data)
        self.W_q.grad += dW_q
        self.W_k.grad += dW_k
        self.v_a.grad += dv_a
        return ds, dh

    def extra_repr(self) -> str:
        return f"d_query={self.d_query}, d_key={self.d_key}, d_attn={self.d_attn}"


ConcatScore = AdditiveScore  # Luong's name for the same map (see AdditiveScore)


class CosineScore(Score):
    """Content-based (cosine) score with sharpness beta (Graves, Wayne & Danihelka
    2014, "Neural Turing Machines", eqs. 5-6: K[u, v] = u.v / (|u| |v|), scaled
    by the key strength beta before the softmax).

    Shapes: s (B, Tq, D), h (B, Tk, D), e (B, Tq, Tk).

    Forward (eps inside the norm: a zero vector has s_hat = 0, so e = 0, never NaN):
        n_s   = sqrt(|s_i|^2 + eps^2) ;  s_hat = s / n_s
        n_h   = sqrt(|h_j|^2 + eps^2) ;  h_hat = h / n_h
        e     = beta s_hat h_hat^T
    Backward (d(x / n)/dx = (I - x_hat x_hat^T) / n for n = sqrt(|x|^2 + eps^2),
    exact for this forward, eps included):
        ds_hat = beta de h_hat
        dh_hat = beta de^T s_hat
        ds     = (ds_hat - s_hat (s_hat . ds_hat)) / n_s
        dh     = (dh_hat - h_hat (h_hat . dh_hat)) / n_h

    beta is a fixed constant (a hyper-parameter); eps (default 1e-8) only
    matters for vectors with |x| ~ eps.
    Kernels: ``cosine_score_forward`` / ``cosine_score_backward``.
    """

    same_width = True

    def __init__(self, beta: float = 1.0, eps: float = 1e-8):
        if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)):
            raise TypeError(f"CosineScore: beta must be a float, got {type(beta).__name__}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
            raise TypeError(f"CosineScore: eps must be a float, got {type(eps).__name__}")
        self.beta = float(beta)
        self.eps = float(eps)
        if not math.isfinite(self.beta):
            raise ValueError(f"CosineScore: beta must be finite, got {self.beta}")
        if not self.eps > 0:
            raise ValueError(f"CosineScore: eps must be > 0, got {self.eps}")

    def forward(self, s, h):
        s, h = self.check_inputs(s, h)
        return select(s.dtype).cosine_score_forward(s, h, self.beta, self.eps)

    def backward(self, de, cache: CosineScoreCache):
        return select(de.dtype).cosine_score_backward(de, cache, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, eps={self.eps}"


class LocationScore(Score):
    """Location-based score (Luong, Pham & Manning 2015, eq. 9: a_t = softmax(W_a h_t),
    with h_t the decoder state: our query s).

    The weights come from the query alone: W_a maps a query to one score per
    source *position* 0..max_len-1; the keys only say how many positions exist.

    Shapes: s (B, Tq, Dq), h (B, Tk, Dk) with Tk <= max_len, W_a (Dq, max_len),
    e (B, Tq, Tk).

    Forward:
        e = (s W_a)[:, :, :Tk]       only the first Tk columns are computed
    Backward:
        dW_a[:, :Tk] += s^T de        (summed over the B*Tq rows; columns >= Tk get 0)
        ds = de W_a[:, :Tk]^T
        dh = 0                         (the score does not depend on the keys' values)

    Positions beyond the actual length are masked: the softmax in ``Attention``
    runs over the Tk existing positions only, which is the softmax over all
    max_len positions with positions >= Tk blocked.  Shorter sequences inside a
    padded batch are masked by ``Attention``'s key-padding mask.
    Init: W_a ~ U(-1/sqrt(Dq), 1/sqrt(Dq)).
    Kernels: ``location_score_forward`` / ``location_score_backward``.
    """

    def __init__(self, d_query: int, max_len: int, *, dtype=np.float32, rng=None):
        self.d_query = check_positive_int(self, "d_query", d_query)
        self.max_len = check_positive_int(self, "max_len", max_len)
        dtype = check_float_dtype(self, dtype)
        self.W_a = Parameter(_uniform(as_rng(rng), d_query, (d_query, max_len), dtype))

    def check_inputs(self, s, h, *, who=None, s_arg: str = "s", h_arg: str = "h"):
        s, h = super().check_inputs(s, h, who=who, s_arg=s_arg, h_arg=h_arg)
        if h.shape[1] > self.max_len:
            raise ValueError(f"{_name(who if who is not None else self)}: {h_arg} has "
                             f"{h.shape[1]} positions, more than max_len={self.max_len}")
        return s, h

    def forward(self, s, h):
        s, h = self.check_inputs(s, h)
        return select(s.dtype).location_score_forward(s, h, self.W_a.data)

    def backward(self, de, cache: LocationScoreCache):
        ds, dh, dW_a = select(de.dtype).location_score_backward(de, cache, self.W_a.data)
        self.W_a.grad += dW_a
        return ds, dh

    def extra_repr(self) -> str:
        return f"d_query={self.d_query}, max_len={self.max_len}"
