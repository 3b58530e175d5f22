"""PyTorch parity for LoRA (Hu et al., 2021): ``LoRALinear`` against a LoRA layer
written by hand in torch the way Hugging Face ``peft`` writes it
(``tuners/lora/layer.py``, ``Linear.forward``):

    result = base(x) + lora_B(lora_A(dropout(x))) * scaling,  scaling = alpha / r

with the base's weight and bias frozen (``requires_grad=False``, in torch as here,
where the base is the Parameters ``W`` and ``b``).  Mapping: our A (D_in, r) is
``lora_A.weight.T``, our B (r, D_out) is ``lora_B.weight.T``, our W (W0) is
``base.weight.T``, our b is ``base.bias``.  The dropout mask is ours (the two RNGs
differ), applied in torch as a multiplication, so the comparison covers the mask's
place: the adapter branch only.

The same weights in both, the same float64 input, a random upstream gradient G:
the output and dx, dA, dB agree to <= 1e-10 (relative to the largest entry); the
frozen base gets no gradient in either; the float32 forward once more (<= 1e-5).

torch is an optional test dependency: without it this file is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from numtransformer import Linear, LoRALinear, PositionwiseFeedForward, apply_lora  # noqa: E402
from tests.helpers import seeds  # noqa: E402
from tests.parity.test_core_torch import (  # noqa: E402
    TOL64,
    assert_close,
    assert_close32,
    copy_into,
    leaf,
    upstream,
)


class TorchLoRALinear(torch.nn.Module):
    """peft's LoRA Linear, by hand: a frozen nn.Linear plus lora_B(lora_A(dropout(x)))."""

    def __init__(self, ours: LoRALinear, dtype):
        super().__init__()
        self.base = torch.nn.Linear(ours.in_features, ours.out_features,
                                    bias=ours.b is not None, dtype=dtype)
        self.lora_A = torch.nn.Linear(ours.in_features, ours.r, bias=False, dtype=dtype)
        self.lora_B = torch.nn.Linear(ours.r, ours.out_features, bias=False, dtype=dtype)
        copy_into(self.base.weight, ours.W.data.T)
        if ours.b is not None:
            copy_into(self.base.bias, ours.b.data)
        copy_into(self.lora_A.weight, ours.A.data.T)
        copy_into(self.lora_B.weight, ours.B.data.T)
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scaling = ours.alpha / ours.r

    def forward(self, x, mask=None):
        x_d = x if mask is None else x * mask
        return self.base(x) + self.lora_B(self.lora_A(x_d)) * self.scaling


def draw_lora(rng, d_in, d_out, r, bias, alpha, dropout, dtype=np.float64):
    ours = LoRALinear(Linear(d_in, d_out, bias=bias, dtype=dtype, rng=rng), r, alpha, dropout,
                      rng=rng)
    ours.A.data[...] = rng.standard_normal(ours.A.shape)  # B drawn too: dA != 0
    ours.B.data[...] = rng.standard_normal(ours.B.shape)
    return ours


@st.composite
def shapes(draw):
    d_in, d_out = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    r = draw(st.integers(1, min(d_in, d_out)))
    lead = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    return lead, d_in, d_out, r


@given(shape=shapes(), bias=st.booleans(), alpha=st.sampled_from([None, 1.0, 16.0]),
       dropout=st.sampled_from([0.0, 0.25]), seed=seeds)
def test_lora_linear(shape, bias, alpha, dropout, seed):
    lead, d_in, d_out, r = shape
    rng = np.random.default_rng(seed)
    ours = draw_lora(rng, d_in, d_out, r, bias, alpha, dropout)
    theirs = TorchLoRALinear(ours, torch.float64)
    x = rng.standard_normal((*lead, d_in))

    y, cache = ours.forward(x)
    mask = cache.dropout.mask
    xt = leaf(x)
    mask_t = None if mask is None else torch.from_numpy(mask.reshape(x.shape))
    yt = theirs(xt, mask_t)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, TOL64)
    assert_close("dA", ours.A.grad, theirs.lora_A.weight.grad.T, TOL64)
    assert_close("dB", ours.B.grad, theirs.lora_B.weight.grad.T, TOL64)
    assert theirs.base.weight.grad is None  # frozen in torch ...
    assert not ours.W.grad.any() and (ours.b is None or not ours.b.grad.any())  # ... and here
    assert [n for n, _ in ours.named_parameters(trainable_only=True)] == ["A", "B"]
    trainable_t = [n for n, p in theirs.named_parameters() if p.requires_grad]
    assert trainable_t == ["lora_A.weight", "lora_B.weight"]
    # the same parameter counts: all, and trainable
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert ours.num_parameters(trainable_only=True) == sum(
        p.numel() for p in theirs.parameters() if p.requires_grad)

    ours.eval()
    ours.astype(np.float32)
    theirs = theirs.float()
    x32 = x.astype(np.float32)
    with torch.no_grad():
        y32t = theirs(torch.from_numpy(x32))
    y32 = ours(x32)
    assert ours.W.dtype == np.float32 and not ours.W.requires_grad
    assert_close32("y (float32)", y32, y32t)


@given(d_model=st.integers(1, 5), d_ff=st.integers(1, 6), r=st.integers(1, 3), seed=seeds)
def test_lora_feedforward(d_model, d_ff, r, seed):
    """A LoRA'd PositionwiseFeedForward against torch's two LoRA linears around GELU."""
    r = min(r, d_model, d_ff)
    rng = np.random.default_rng(seed)
    ours = PositionwiseFeedForward(d_model, d_ff, "gelu", dtype=np.float64, rng=seed)
    apply_lora(ours, ["linear1", "linear2"], r=r, alpha=4.0, rng=seed)
    for _, p in ours.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    t1 = TorchLoRALinear(ours.linear1, torch.float64)
    t2 = TorchLoRALinear(ours.linear2, torch.float64)
    x = rng.standard_normal((2, 3, d_model))
    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = t2(torch.nn.functional.gelu(t1(xt)))
    assert_close("y", y, yt, TOL64)
    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, TOL64)
    for name, ours_lin, t in (("linear1", ours.linear1, t1), ("linear2", ours.linear2, t2)):
        assert_close(f"{name}.A", ours_lin.A.grad, t.lora_A.weight.grad.T, TOL64)
        assert_close(f"{name}.B", ours_lin.B.grad, t.lora_B.weight.grad.T, TOL64)


def test_merged_weight_is_torchs_merged_weight():
    """merge() gives W0 + scale A B: peft's merge, W + (lora_B.weight @ lora_A.weight)
    * scaling, transposed to our layout."""
    rng = np.random.default_rng(0)
    ours = draw_lora(rng, 6, 5, 3, True, 8.0, 0.0)
    theirs = TorchLoRALinear(ours, torch.float64)
    with torch.no_grad():
        merged_t = theirs.base.weight + (theirs.lora_B.weight @ theirs.lora_A.weight) * \
            theirs.scaling
    ours.merge()
    assert_close("merged W", ours.W.data, merged_t.T, TOL64)
    assert_close("merged W (state_dict)", ours.state_dict()["W"], merged_t.T, TOL64)
