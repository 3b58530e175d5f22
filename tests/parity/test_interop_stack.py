"""TransformerStack (the counterpart of nn.Transformer) on its own, and interop without torch.

These tests need no torch: the stack's backward is checked against finite
differences like every other layer, and importing numtransformer,
numtransformer.interop or numtransformer.pretrained must not import torch.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.attention import causal_mask
from numtransformer.interop import TransformerStack
from numtransformer.models import TransformerDecoder, TransformerEncoder
from tests.helpers import check_dtype_preserved, seeds


# The layers and stacks have their own gradchecks (tests/models); this checks the wiring
# (memory gradient summed over decoder layers, then the encoder), so a few examples suffice.
@settings(max_examples=6)
@given(B=st.integers(1, 2), S=st.integers(1, 4), T=st.integers(1, 3), nhead=st.integers(1, 2),
       d_k=st.integers(2, 3), d_ff=st.integers(1, 4), two_decoder_layers=st.booleans(),
       norm_first=st.booleans(), final_norm=st.booleans(),
       act=st.sampled_from(["gelu", "gelu_tanh"]), masks=st.booleans(), seed=seeds)
def test_gradcheck(B, S, T, nhead, d_k, d_ff, two_decoder_layers, norm_first, final_norm, act,
                   masks, seed):
    rng = np.random.default_rng(seed)
    d_model = nhead * d_k
    n_dec = 2 if two_decoder_layers else 1
    stack = TransformerStack(d_model, nhead, 1, n_dec, d_ff, dropout=0.0, activation=act,
                             norm_first=norm_first, final_norm=final_norm, dtype=np.float64,
                             rng=rng)
    for p in stack.parameters():  # LayerNorm's gamma = 1, beta = 0 would hide a swap
        p.data = p.data + 0.2 * rng.standard_normal(p.shape)
    kw = {"tgt_mask": causal_mask(T)}
    if masks:  # fully padded rows allowed: they give zeros, forward and backward
        kw["src_key_padding_mask"] = rng.random((B, S)) < 0.3
        kw["tgt_key_padding_mask"] = rng.random((B, T)) < 0.3
        kw["memory_key_padding_mask"] = kw["src_key_padding_mask"]
        kw["src_mask"] = rng.random((B, S, S)) < 0.3
    src = rng.standard_normal((B, S, d_model))
    tgt = rng.standard_normal((B, T, d_model))
    gradcheck(stack, src, tgt, seed=seed, max_entries=8, **kw).assert_passed()


def test_float32_in_float32_out():
    rng = np.random.default_rng(0)
    stack = TransformerStack(6, 2, 1, 1, 8, dropout=0.1, rng=rng)
    src = rng.standard_normal((2, 3, 6)).astype(np.float32)
    tgt = rng.standard_normal((2, 4, 6)).astype(np.float32)
    check_dtype_preserved(stack, src, tgt, tgt_mask=causal_mask(4))


def test_backward_shapes_and_zero_gradient():
    """backward returns (dsrc, dtgt) shaped like the inputs; dy = 0 gives zeros."""
    rng = np.random.default_rng(1)
    stack = TransformerStack(4, 2, 2, 1, 6, dropout=0.0, dtype=np.float64, rng=rng)
    src, tgt = rng.standard_normal((3, 5, 4)), rng.standard_normal((3, 2, 4))
    y, cache = stack.forward(src, tgt)
    assert y.shape == tgt.shape
    dsrc, dtgt = stack.backward(np.zeros_like(y), cache)
    assert dsrc.shape == src.shape and dtgt.shape == tgt.shape
    assert not dsrc.any() and not dtgt.any()


def test_from_stacks_shares_parameters_and_checks_parts():
    enc = TransformerEncoder(1, 4, 2, 6, rng=0)
    dec = TransformerDecoder(1, 4, 2, 6, rng=1)
    stack = TransformerStack.from_stacks(enc, dec)
    assert stack.encoder is enc and stack.decoder is dec
    names = [n for n, _ in stack.named_parameters()]
    assert names[0].startswith("encoder.layers.0.") and "decoder.layers.0.cross_attn.in_proj.W" \
        in names
    with pytest.raises(TypeError, match="encoder must be a TransformerEncoder"):
        TransformerStack.from_stacks(dec, dec)
    with pytest.raises(TypeError, match="decoder must be a TransformerDecoder"):
        TransformerStack.from_stacks(enc, enc)
    with pytest.raises(ValueError, match="d_model=4 differs from decoder d_model=6"):
        TransformerStack.from_stacks(enc, TransformerDecoder(1, 6, 2, 6))
    with pytest.raises(TypeError, match="dtype"):
        TransformerStack.from_stacks(enc, TransformerDecoder(1, 4, 2, 6, dtype=np.float64))


def test_bad_inputs_are_named():
    stack = TransformerStack(4, 2, 1, 1, 6, rng=0)
    src = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="TransformerStack: tgt has last dim 5, expected "
                                         "d_model=4"):
        stack(src, np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match="src has batch size 2, tgt has 3"):
        stack(src, np.zeros((3, 3, 4), np.float32))
    with pytest.raises(TypeError, match="src has dtype float64"):
        stack(src.astype(np.float64), src)
    with pytest.raises(ValueError, match="NaN"):
        stack(src, np.full((2, 3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="num_encoder_layers must be >= 1"):
        TransformerStack(4, 2, 0, 1)


def test_importing_the_package_never_imports_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now fails\n"
        "import numtransformer, numtransformer.interop, numtransformer.pretrained\n"
        "from numtransformer.interop import from_torch, TransformerStack\n"
        "TransformerStack(4, 2, 1, 1, 8)\n"
        "try:\n"
        "    from_torch(None)\n"
        "except ImportError as e:\n"
        "    assert 'needs PyTorch' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('from_torch without torch did not raise')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_gradcheck_cli_cases_build():
    """The cases numtransformer.interop offers to ``numtransformer gradcheck`` (the same
    classes are gradient-checked above; here: each case builds and runs forward)."""
    from numtransformer.cases.interop import CASES

    for i, case in enumerate(CASES):
        module, inputs, kwargs = case.build(np.random.default_rng(i))
        kwargs = {k: v for k, v in kwargs.items() if k != "max_entries"}
        out = module(*inputs, **kwargs)
        assert out.dtype == np.float64 and np.isfinite(out).all(), case.name
