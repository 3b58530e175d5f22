"""PyTorch parity for the blocks of the modern (LLaMA-style) decoder: RMSNorm,
SiLU and the SwiGLU feed-forward.

As in test_core_torch: the same weights in both, the same float64 input and a
random upstream gradient G (never all ones); outputs and the gradients of
every input and parameter agree to

    err = max |ours - torch| / max(max |ours|, max |torch|)   <= 1e-10  (float64)

and the forward outputs once more in float32 (<= 1e-5, relative to at least 1).

Mappings: ``RMSNorm.gamma`` is ``torch.nn.RMSNorm.weight`` as it is;
``SwiGLUFeedForward.{gate,up,down}_proj.W`` is the transpose of the
``weight`` of Hugging Face ``LlamaMLP``'s ``gate_proj``, ``up_proj``,
``down_proj`` (built here by hand from three ``torch.nn.Linear``:
down_proj(silu(gate_proj(x)) * up_proj(x))).

torch is an optional test dependency: without it this file is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from numtransformer import RMSNorm, SiLU, SwiGLUFeedForward  # noqa: E402
from numtransformer.kernels import use_kernels  # noqa: E402
from tests.helpers import seeds  # noqa: E402
from tests.parity.test_core_torch import (  # noqa: E402
    TOL64,
    assert_close,
    assert_close32,
    copy_into,
    leaf,
    torch_linear,
    upstream,
)

lead_dims = st.lists(st.integers(1, 4), min_size=0, max_size=2)


# -- RMSNorm -----------------------------------------------------------------------


@given(lead=lead_dims, n=st.integers(1, 9), affine=st.booleans(),
       eps=st.sampled_from([None, 1e-6, 1e-5, 0.1]), seed=seeds)
def test_rmsnorm(lead, n, affine, eps, seed):
    rng = np.random.default_rng(seed)
    ours = RMSNorm(n, eps=eps, elementwise_affine=affine, dtype=np.float64)
    theirs = torch.nn.RMSNorm(n, eps=eps, elementwise_affine=affine, dtype=torch.float64)
    if affine:
        ours.gamma.data[...] = 1 + 0.5 * rng.standard_normal(n)
        copy_into(theirs.weight, ours.gamma.data)
    x = rng.standard_normal((*lead, n)) * 2 + 0.5

    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = theirs(xt)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    # One feature: x_hat = x / sqrt(x^2 + eps) is sign(x) up to eps, and
    # dx = r (dx_hat - x_hat^2 dx_hat) = eps r^3 dx_hat cancels to rounding noise
    # (~1e-16 r) on both sides; judge it against the O(1) scale of the inputs.
    floor = 1.0 if n == 1 else 0.0
    assert_close("dx", dx, xt.grad, TOL64, floor=floor)
    if affine:
        assert_close("dgamma", ours.gamma.grad, theirs.weight.grad, TOL64)

    ours.astype(np.float32)
    theirs = theirs.float()
    with torch.no_grad():
        y32t = theirs(torch.from_numpy(x.astype(np.float32)))
    for mode in ("reference", "fast"):
        with use_kernels(mode):
            assert_close32(f"y (float32, {mode})", ours(x.astype(np.float32)), y32t)


def test_rmsnorm_float32_follows_hugging_face_order():
    """Hugging Face's LlamaRMSNorm (modeling_llama.py): cast to float32, the mean
    of squares and rsqrt(ms + eps) in float32, x * rsqrt(...) cast back to the
    input dtype, then weight * that.  For float32 input it is our float32 path."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 64)).astype(np.float32) * 3
    w = (1 + 0.1 * rng.standard_normal(64)).astype(np.float32)
    ours = RMSNorm(64, eps=1e-6)
    ours.gamma.data[...] = w
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    h = xt.to(torch.float32)
    ms = h.pow(2).mean(-1, keepdim=True)
    hf = wt * (h * torch.rsqrt(ms + 1e-6)).to(xt.dtype)
    for mode in ("reference", "fast"):
        with use_kernels(mode):
            err = np.abs(ours(x) - hf.numpy()).max() / np.abs(hf.numpy()).max()
            assert err <= 4 * np.finfo(np.float32).eps, (mode, err)


# -- SiLU --------------------------------------------------------------------------


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       scale=st.sampled_from([1.0, 4.0, 40.0]), seed=seeds)
def test_silu(shape, scale, seed):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal(shape)
    y, cache = SiLU().forward(x)
    xt = leaf(x)
    yt = torch.nn.functional.silu(xt)
    assert_close("y", y, yt, TOL64)
    G = upstream(rng, y.shape)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", SiLU().backward(G, cache), xt.grad, TOL64)
    with torch.no_grad():
        y32t = torch.nn.functional.silu(torch.from_numpy(x.astype(np.float32)))
    for mode in ("reference", "fast"):
        with use_kernels(mode):
            assert_close32(f"y (float32, {mode})", SiLU()(x.astype(np.float32)), y32t)


# -- SwiGLU feed-forward -----------------------------------------------------------


class TorchSwiGLU(torch.nn.Module):
    """Hugging Face LlamaMLP's computation, by hand:
    down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, ours: SwiGLUFeedForward, dtype):
        super().__init__()
        self.gate_proj = torch_linear(ours.gate_proj, dtype)
        self.up_proj = torch_linear(ours.up_proj, dtype)
        self.down_proj = torch_linear(ours.down_proj, dtype)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


@given(lead=lead_dims, d_model=st.integers(1, 7), d_ff=st.integers(1, 9), bias=st.booleans(),
       seed=seeds)
def test_swiglu_feedforward(lead, d_model, d_ff, bias, seed):
    rng = np.random.default_rng(seed)
    ours = SwiGLUFeedForward(d_model, d_ff, bias=bias, dtype=np.float64, rng=rng)
    for _, p in ours.named_parameters():  # wider than the init: no entry is special
        p.data[...] = rng.standard_normal(p.shape)
    theirs = TorchSwiGLU(ours, torch.float64)
    x = rng.standard_normal((*lead, d_model))

    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = theirs(xt)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, TOL64)
    for name in ("gate_proj", "up_proj", "down_proj"):
        mine, torchs = getattr(ours, name), getattr(theirs, name)
        assert_close(f"d{name}.W", mine.W.grad, torchs.weight.grad.T, TOL64)
        if bias:
            assert_close(f"d{name}.b", mine.b.grad, torchs.bias.grad, TOL64)

    ours.astype(np.float32)
    theirs = theirs.float()
    with torch.no_grad():
        y32t = theirs(torch.from_numpy(x.astype(np.float32)))
    for mode in ("reference", "fast"):
        with use_kernels(mode):
            assert_close32(f"y (float32, {mode})", ours(x.astype(np.float32)), y32t)
