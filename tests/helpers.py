"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib

import numpy as np
from hypothesis import strategies as st

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def away_from_zero(rng: np.random.Generator, shape, margin: float = 0.05) -> np.ndarray:
    """Normal draws pushed at least ``margin`` away from 0 (clear of the ReLU kink)."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


def check_dtype_preserved(module, *inputs, **kwargs):
    """float32 in -> float32 out (and float32 input grads) for a float32 module."""
    out, cache = module.forward(*inputs, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        assert o.dtype == np.float32, f"{type(module).__name__}: output dtype {o.dtype}"
    rng = np.random.default_rng(0)  # a random upstream gradient, never all ones
    douts = tuple(rng.standard_normal(o.shape).astype(o.dtype) for o in outs)
    dout = douts if isinstance(out, tuple) else douts[0]
    grads = module.backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for g in grads:
        if g is not None:
            assert g.dtype == np.float32, f"{type(module).__name__}: grad dtype {g.dtype}"
    for name, p in module.named_parameters():
        assert p.grad.dtype == np.float32, f"{name}: grad dtype {p.grad.dtype}"



def hf_llama_in_float64(monkeypatch) -> None:
    """Hugging Face Llama's two float32 casts removed for a float64 comparison:
    ``LlamaRMSNorm.forward`` and ``LlamaRotaryEmbedding.forward`` computed in the
    input's dtype (the same equations; every other line of their code as shipped).
    See tests/parity/test_llama_model_hf.py for why."""
    import torch
    from transformers.models.llama import modeling_llama as hf

    def rms_forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        cfg = self.config
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta = cfg.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    monkeypatch.setattr(hf.LlamaRMSNorm, "forward", rms_forward)
    monkeypatch.setattr(hf.LlamaRotaryEmbedding, "forward", rope_forward)


@contextlib.contextmanager
def on_threads(n: int):
    """numtransformer's pool on n threads, with row blocks forced even for tiny work
    (``_parallel.MIN_BLOCK = 1``); both restored afterwards."""
    from numtransformer import _parallel
    saved = _parallel.MIN_BLOCK
    _parallel.set_num_threads(n)
    _parallel.MIN_BLOCK = 1
    try:
        yield
    finally:
        _parallel.MIN_BLOCK = saved
        _parallel.set_num_threads(None)
