"""Root mean square layer normalisation (RMSNorm), LLaMA's norm."""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_float, check_float_dtype, check_normalized_shape
from ..functional.norm import RMSNormCache
from ..kernels import select
from ..module import Module, Parameter

__all__ = ["RMSNorm", "RMSNormCache"]


class RMSNorm(Module):
    """RMS normalisation (Zhang & Sennrich, 2019, eq. 4; LLaMA's form) over the
    trailing dims S.

    Shapes: x (..., *S) with S = normalized_shape; gamma (*S,).
    Let n = prod(S) and the mean/sum below run over the axes of S.

    Forward:
        ms    = mean(x^2)
        r     = 1 / sqrt(ms + eps)          eps inside the square root
        x_hat = x * r
        y     = gamma * x_hat               no centring, no bias

    Backward:
        dgamma += sum over the leading dims of dy * x_hat
        dx_hat  = dy * gamma
        dx      = r * (dx_hat - x_hat * mean(dx_hat * x_hat))
    The last line is the Jacobian r (I - x_hat x_hat^T / n) of x_hat applied
    to dx_hat; ``functional.rms_norm_backward`` derives it and says why there
    is no mean(dx_hat) term (layer norm has one: it centres, RMSNorm does not).

    The constructor mirrors ``torch.nn.RMSNorm(normalized_shape, eps,
    elementwise_affine)``.  The scale is named ``gamma``, as ``LayerNorm``'s
    is here: torch's ``RMSNorm.weight`` and Hugging Face's
    ``LlamaRMSNorm.weight`` are ``gamma`` as it is (no transpose).  Init as
    both: gamma = 1.  ``elementwise_affine=False`` drops gamma (y = x_hat).

    eps: default 1e-6, Hugging Face's ``LlamaRMSNorm`` default and
    ``LlamaConfig.rms_norm_eps``'s; Llama 2 checkpoints and SmolLM2 set 1e-5,
    so pass a checkpoint's own value.  ``eps=None`` is torch's default: the
    machine epsilon of the input's dtype (``np.finfo(dtype).eps``: 1.19e-7 in
    float32, 2.2e-16 in float64), resolved at each call.

    Precision: the work is in x's dtype throughout (float32 or float64).
    Hugging Face's ``LlamaRMSNorm`` casts its input to float32, computes
    mean(x^2), rsqrt(ms + eps) and x * rsqrt(...) in float32, casts that back
    to the input dtype, and then multiplies by the weight; for float32 inputs
    that is exactly the order here (it also runs a float64 input in float32,
    which this layer does not).
    """

    def __init__(self, normalized_shape, eps: float | None = 1e-6,
                 elementwise_affine: bool = True, *, dtype=np.float32):
        normalized_shape = check_normalized_shape(self, normalized_shape)
        if eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
                raise TypeError(f"RMSNorm: eps must be a float or None, got {type(eps).__name__}")
            eps = float(eps)
            if not (eps > 0 and math.isfinite(eps)):
                raise ValueError(f"RMSNorm: eps must be > 0 and finite (or None), got {eps}")
        self.normalized_shape = normalized_shape
        self.eps = eps
        dtype = check_float_dtype(self, dtype)
        self.gamma = Parameter(np.ones(normalized_shape, dtype)) if elementwise_affine else None
        self.dtype = dtype

    def _eps(self, dtype) -> float:
        return float(np.finfo(dtype).eps) if self.eps is None else self.eps

    def forward(self, x):
        k = len(self.normalized_shape)
        x = check_float(self, "x", x, dtype=self.dtype, min_ndim=k)
        if x.shape[-k:] != self.normalized_shape:
            raise ValueError(f"RMSNorm: x has trailing shape {x.shape[-k:]}, "
                             f"expected normalized_shape={self.normalized_shape}")
        n = math.prod(self.normalized_shape)
        lead = x.shape[:x.ndim - k]
        gamma = None if self.gamma is None else self.gamma.data.reshape(n)
        y, cache = select(x.dtype).rms_norm_forward(x.reshape(*lead, n), gamma, self._eps(x.dtype))
        # the cache in x's shape (r: one per normalised group, broadcastable)
        cache = RMSNormCache(x_hat=cache.x_hat.reshape(x.shape), r=cache.r.reshape(lead + (1,) * k))
        return y.reshape(x.shape), cache

    def backward(self, dy, cache: RMSNormCache):
        n = math.prod(self.normalized_shape)
        lead = dy.shape[:dy.ndim - len(self.normalized_shape)]
        rows = RMSNormCache(x_hat=cache.x_hat.reshape(*lead, n), r=cache.r.reshape(*lead, 1))
        gamma = None if self.gamma is None else self.gamma.data.reshape(n)
        dx, dgamma = select(dy.dtype).rms_norm_backward(dy.reshape(*lead, n), rows, gamma)
        if self.gamma is not None and self.gamma.requires_grad:
            self.gamma.grad += dgamma.reshape(self.normalized_shape)
        return dx.reshape(dy.shape)

    def extra_repr(self) -> str:
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"{shape}, eps={self.eps}, elementwise_affine={self.gamma is not None}"
