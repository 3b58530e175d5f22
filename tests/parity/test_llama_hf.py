"""Parity with Hugging Face transformers' Llama (float64): the rotary embedding
(``LlamaRotaryEmbedding`` and ``apply_rotary_pos_emb``) and ``LlamaAttention``
with grouped-query heads against MultiHeadAttention(n_kv_heads=...,
rotary={"layout": "half"}): outputs and every input and parameter gradient.

Hugging Face forms the rotary angles in float32 whatever the model's dtype
(``LlamaRotaryEmbedding.forward`` casts inv_freq and the positions with
``.float()``), so its tables agree with ours (float64 angles) to float32
rounding only; the float64 comparisons feed both sides the same float64
tables (LlamaAttention takes them as ``position_embeddings``).  Its eager
attention takes the softmax in float32 too, so the float64 check runs the
"sdpa" implementation (torch's scaled_dot_product_attention, float64
throughout)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.llama.configuration_llama import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import (LlamaAttention,  # noqa: E402
                                                      LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb)

from numtransformer import functional as F  # noqa: E402
from numtransformer.attention import MultiHeadAttention, causal_mask  # noqa: E402

TOL = 1e-10


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def config(H, n_kv, head_dim, theta, bias=False):
    cfg = LlamaConfig(hidden_size=H * head_dim, num_attention_heads=H,
                      num_key_value_heads=n_kv, head_dim=head_dim, intermediate_size=8,
                      num_hidden_layers=1, vocab_size=11, max_position_embeddings=256,
                      rope_theta=theta, attention_bias=bias, attention_dropout=0.0)
    cfg._attn_implementation = "sdpa"
    return cfg


def hf_tables(positions, d, theta):
    """Our float64 tables in Hugging Face's layout: cos = cat(cos, cos), (B, T, d)."""
    tables = F.rope_tables(positions, d, theta, "half", np.float64)
    cos = np.concatenate([tables.cos, tables.cos], -1)
    sin = np.concatenate([tables.sin, tables.sin], -1)
    return torch.from_numpy(cos)[None], torch.from_numpy(sin)[None]


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("offset", [0, 37])
def test_llama_rotary_embedding_tables(theta, offset):
    d, T = 8, 9
    rope = LlamaRotaryEmbedding(config(2, 1, d, theta))
    x = torch.zeros(1, T, d, dtype=torch.float64)
    cos, sin = rope(x, torch.arange(offset, offset + T)[None])
    ours = F.rope_tables(offset + np.arange(T), d, theta, "half")
    # float32 angles on their side: |error| <= a few float32 ulps of the angle
    tol = 4e-7 * (offset + T) + 1e-7
    np.testing.assert_allclose(cos[0].numpy(), np.concatenate([ours.cos] * 2, -1), atol=tol)
    np.testing.assert_allclose(sin[0].numpy(), np.concatenate([ours.sin] * 2, -1), atol=tol)


@pytest.mark.parametrize("offset", [0, 5, 120])
def test_apply_rotary_pos_emb_and_its_gradient(offset):
    rng = np.random.default_rng(offset)
    B, H, H_kv, T, d, theta = 2, 4, 2, 6, 8, 10000.0
    q, k = rng.standard_normal((B, H, T, d)), rng.standard_normal((B, H_kv, T, d))
    Gq, Gk = rng.standard_normal(q.shape), rng.standard_normal(k.shape)
    tq, tk = torch.tensor(q, requires_grad=True), torch.tensor(k, requires_grad=True)
    cos, sin = hf_tables(offset + np.arange(T), d, theta)
    q_hf, k_hf = apply_rotary_pos_emb(tq, tk, cos, sin)
    (q_hf * torch.from_numpy(Gq)).sum().add((k_hf * torch.from_numpy(Gk)).sum()).backward()
    pos = offset + np.arange(T)
    q_ours, cq = F.rope_forward(q, pos, theta, "half")
    k_ours, ck = F.rope_forward(k, pos, theta, "half")
    assert rel(q_ours, q_hf.detach().numpy()) <= 1e-13
    assert rel(k_ours, k_hf.detach().numpy()) <= 1e-13
    assert rel(F.rope_backward(Gq, cq), tq.grad.numpy()) <= 1e-13
    assert rel(F.rope_backward(Gk, ck), tk.grad.numpy()) <= 1e-13


@pytest.mark.parametrize("H,n_kv", [(4, 1), (4, 2), (4, 4), (6, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_llama_attention_with_gqa(H, n_kv, bias):
    rng = np.random.default_rng(H * 10 + n_kv)
    d, B, T, theta = 4, 2, 7, 10000.0
    E = H * d
    torch.manual_seed(0)
    hf = LlamaAttention(config(H, n_kv, d, theta, bias), layer_idx=0).double()
    with torch.no_grad():  # weights away from the default init, biases nonzero
        for p in hf.parameters():
            p.copy_(torch.from_numpy(0.3 * rng.standard_normal(tuple(p.shape))))
    ours = MultiHeadAttention(E, H, bias=bias, dtype=np.float64, rng=0, n_kv_heads=n_kv,
                              rotary={"base": theta, "layout": "half"})
    ours.in_proj.W.data = np.concatenate(
        [hf.q_proj.weight.detach().numpy().T, hf.k_proj.weight.detach().numpy().T,
         hf.v_proj.weight.detach().numpy().T], axis=1)
    ours.out_proj.W.data = hf.o_proj.weight.detach().numpy().T.copy()
    if bias:
        ours.in_proj.b.data = np.concatenate([hf.q_proj.bias.detach().numpy(),
                                              hf.k_proj.bias.detach().numpy(),
                                              hf.v_proj.bias.detach().numpy()])
        ours.out_proj.b.data = hf.o_proj.bias.detach().numpy().copy()

    x = rng.standard_normal((B, T, E))
    G = rng.standard_normal((B, T, E))
    tx = torch.tensor(x, requires_grad=True)
    y_hf, _ = hf(tx, position_embeddings=hf_tables(np.arange(T), d, theta),
                 attention_mask=None)
    (y_hf * torch.from_numpy(G)).sum().backward()

    y, cache = ours.forward(x, attn_mask=causal_mask(T))
    assert rel(y, y_hf.detach().numpy()) <= TOL
    ours.zero_grad()
    dx = ours.backward(G, cache)
    assert rel(dx, tx.grad.numpy()) <= TOL
    E_kv = n_kv * d
    dW = ours.in_proj.W.grad
    for block, lin in zip((slice(0, E), slice(E, E + E_kv), slice(E + E_kv, E + 2 * E_kv)),
                          (hf.q_proj, hf.k_proj, hf.v_proj)):
        assert rel(dW[:, block], lin.weight.grad.numpy().T) <= TOL
        if bias:
            assert rel(ours.in_proj.b.grad[block], lin.bias.grad.numpy()) <= TOL
    assert rel(ours.out_proj.W.grad, hf.o_proj.weight.grad.numpy().T) <= TOL
    if bias:
        assert rel(ours.out_proj.b.grad, hf.o_proj.bias.grad.numpy()) <= TOL

    # incremental decoding with the GQA cache gives Hugging Face's outputs too
    kv = ours.new_kv_cache(B)
    steps = np.concatenate([ours.decode(x[:, t:t + 2], kv) for t in range(0, T, 2)], axis=1)
    assert kv.k.shape[1] == n_kv
    assert rel(steps, y_hf.detach().numpy()) <= TOL
