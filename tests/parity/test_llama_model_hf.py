"""Parity with Hugging Face transformers' Llama, whole modules (float64):
``LlamaRMSNorm``, ``LlamaMLP``, ``LlamaDecoderLayer`` and ``LlamaForCausalLM``
against RMSNorm, SwiGLUFeedForward, the Llama-style TransformerEncoderLayer and
TransformerLM, built by ``from_torch`` and exported by ``to_torch``: outputs and
every input and parameter gradient to <= 1e-10.

Two casts in Hugging Face's code make a float64 Llama compute partly in
float32: ``LlamaRMSNorm.forward`` casts its input to float32 and back, and
``LlamaRotaryEmbedding.forward`` forms the angles in float32.  The float64
comparisons remove exactly those two casts (``float64_llama``: the same
equations in the input's dtype) and check everything else as shipped; the
casts themselves are checked separately, against the unmodified classes, to
float32 rounding.  Attention runs as "sdpa" (torch's
scaled_dot_product_attention, float64 throughout; "eager" takes its softmax
in float32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama import modeling_llama as hf  # noqa: E402

from numtransformer.attention import causal_mask  # noqa: E402
from numtransformer.interop import from_torch, to_torch, torch_state_dict  # noqa: E402
from numtransformer.models.transformer import TransformerLM  # noqa: E402
from tests.helpers import hf_llama_in_float64  # noqa: E402

TOL = 1e-10


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


@pytest.fixture
def float64_llama(monkeypatch):
    """Hugging Face's RMSNorm and rotary tables computed in the input's dtype."""
    hf_llama_in_float64(monkeypatch)


def config(H=4, n_kv=2, head_dim=4, layers=2, vocab=23, d_ff=12, tie=False, bias=False,
           theta=10000.0, eps=1e-5):
    cfg = LlamaConfig(hidden_size=H * head_dim, num_attention_heads=H, num_key_value_heads=n_kv,
                      head_dim=head_dim, intermediate_size=d_ff, num_hidden_layers=layers,
                      vocab_size=vocab, max_position_embeddings=64, rms_norm_eps=eps,
                      rope_parameters={"rope_type": "default", "rope_theta": theta},
                      tie_word_embeddings=tie, attention_bias=bias, mlp_bias=bias,
                      attention_dropout=0.0)
    cfg._attn_implementation = "sdpa"
    return cfg


def randomize(module, seed):
    """Weights away from the default init (norm weights away from 1, biases nonzero)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if name.endswith("layernorm.weight") or name.endswith("norm.weight") else 0
            p.copy_(torch.from_numpy(base + 0.3 * rng.standard_normal(tuple(p.shape))))
    return module


def hf_grads(t):
    return {name: p.grad.numpy() for name, p in t.named_parameters()}


def check_grads(ours, t):
    theirs = hf_grads(t)
    mine = torch_state_dict(ours, grad=True)
    assert set(mine) == set(theirs)
    for name, g in theirs.items():
        assert rel(mine[name], g) <= TOL, name


# -- LlamaRMSNorm ---------------------------------------------------------------------------------
def test_rmsnorm_float64(float64_llama):
    rng = np.random.default_rng(0)
    t = randomize(hf.LlamaRMSNorm(8, eps=1e-5).double(), 1)
    ours = from_torch(t)
    assert ours.eps == 1e-5 and ours.dtype == np.float64
    x, G = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8))
    tx = torch.tensor(x, requires_grad=True)
    y_t = t(tx)
    (y_t * torch.from_numpy(G)).sum().backward()
    y, c = ours.forward(x)
    assert rel(y, y_t.detach().numpy()) <= TOL
    ours.zero_grad()
    assert rel(ours.backward(G, c), tx.grad.numpy()) <= TOL
    check_grads(ours, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rmsnorm_as_shipped_computes_in_float32(dtype):
    """The unmodified class: its float32 arithmetic, whatever the input dtype."""
    rng = np.random.default_rng(1)
    t = randomize(hf.LlamaRMSNorm(16, eps=1e-6), 2).to(dtype)
    ours = from_torch(t, dtype=np.float32)
    x = rng.standard_normal((3, 16))
    with torch.no_grad():
        y_t = t(torch.tensor(x, dtype=dtype)).numpy()
    assert rel(ours(x.astype(np.float32)), y_t) <= 4e-7


# -- LlamaMLP -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_mlp_float64(bias):
    rng = np.random.default_rng(3)
    t = randomize(hf.LlamaMLP(config(bias=bias)).double(), 4)
    ours = from_torch(t)
    x, G = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 5, 16))
    tx = torch.tensor(x, requires_grad=True)
    (t(tx) * torch.from_numpy(G)).sum().backward()
    y, c = ours.forward(x)
    with torch.no_grad():
        assert rel(y, t(torch.from_numpy(x)).numpy()) <= TOL
    ours.zero_grad()
    assert rel(ours.backward(G, c), tx.grad.numpy()) <= TOL
    check_grads(ours, t)


# -- LlamaDecoderLayer ----------------------------------------------------------------------------
@pytest.mark.parametrize("H,n_kv", [(4, 1), (4, 2), (4, 4)])
def test_decoder_layer_float64(float64_llama, H, n_kv):
    rng = np.random.default_rng(H + n_kv)
    cfg = config(H=H, n_kv=n_kv)
    t = randomize(hf.LlamaDecoderLayer(cfg, layer_idx=0).double(), 5)
    ours = from_torch(t)
    B, T, E = 2, 7, cfg.hidden_size
    x, G = rng.standard_normal((B, T, E)), rng.standard_normal((B, T, E))
    tx = torch.tensor(x, requires_grad=True)
    rope = hf.LlamaRotaryEmbedding(cfg)
    pos = torch.arange(T)[None]
    y_t = t(tx, attention_mask=None, position_ids=pos,
            position_embeddings=rope(tx, pos))  # no mask: sdpa's is_causal
    (y_t * torch.from_numpy(G)).sum().backward()
    y, c = ours.forward(x, src_mask=causal_mask(T))
    assert rel(y, y_t.detach().numpy()) <= TOL
    ours.zero_grad()
    assert rel(ours.backward(G, c), tx.grad.numpy()) <= TOL
    check_grads(ours, t)


# -- LlamaForCausalLM -----------------------------------------------------------------------------
@pytest.mark.parametrize("tie,bias,n_kv", [(False, False, 2), (True, False, 1),
                                           (False, True, 4)])
def test_causal_lm_float64(float64_llama, tie, bias, n_kv):
    rng = np.random.default_rng(n_kv)
    cfg = config(n_kv=n_kv, tie=tie, bias=bias)
    t = randomize(hf.LlamaForCausalLM(cfg).double(), 6)
    ours = from_torch(t)
    assert isinstance(ours, TransformerLM) and ours.dtype == np.float64
    B, T, V = 3, 9, cfg.vocab_size
    ids = rng.integers(0, V, (B, T))
    lengths = np.array([T, 6, 1])  # right padding; a one-token row
    pad = np.arange(T)[None] >= lengths[:, None]
    G = rng.standard_normal((B, T, V)) * ~pad[..., None]  # no loss at padded positions
    out = t(torch.from_numpy(ids), attention_mask=torch.from_numpy((~pad).astype(np.int64)))
    (out.logits * torch.from_numpy(G)).sum().backward()
    logits, c = ours.forward(ids, pad_mask=pad)
    assert rel(logits[~pad], out.logits.detach().numpy()[~pad]) <= TOL
    ours.zero_grad()
    ours.backward(G, c)
    check_grads(ours, t)


def test_causal_lm_to_torch_and_back(float64_llama):
    rng = np.random.default_rng(7)
    ours = TransformerLM(31, 24, 6, 2, 20, 0.0, "swiglu", 1e-6, "rotary", 32, False,
                         norm="rmsnorm", n_kv_heads=3, bias=False, rope_base=500000.0,
                         dtype=np.float64, rng=0)
    t = to_torch(ours)
    assert type(t).__name__ == "LlamaForCausalLM"
    assert t.config.num_key_value_heads == 3
    assert t.config.rope_parameters["rope_theta"] == 500000.0
    ids = rng.integers(0, 31, (2, 8))
    with torch.no_grad():
        assert rel(ours(ids), t(torch.from_numpy(ids)).logits.numpy()) <= TOL
    back = from_torch(t)
    assert back.config == ours.config
    assert np.array_equal(back(ids), ours(ids))


def test_float32_model_as_shipped():
    """Unmodified Hugging Face code in float32 against ours in float32."""
    rng = np.random.default_rng(8)
    t = randomize(hf.LlamaForCausalLM(config(tie=True)), 9).eval()
    ours = from_torch(t)
    assert ours.dtype == np.float32
    ids = rng.integers(0, 23, (2, 9))
    with torch.no_grad():
        assert rel(ours(ids), t(torch.from_numpy(ids)).logits.numpy()) <= 1e-5


def test_incremental_decoding_matches_hf(float64_llama):
    rng = np.random.default_rng(10)
    t = randomize(hf.LlamaForCausalLM(config(n_kv=1)).double(), 11).eval()
    ours = from_torch(t).eval()
    ids = rng.integers(0, 23, (2, 10))
    with torch.no_grad():
        ref = t(torch.from_numpy(ids)).logits.numpy()
    state = ours.start_decoding(2)
    steps = [ours.decode_step(state, ids[:, :4])]
    steps += [ours.decode_step(state, ids[:, i]) for i in range(4, 10)]
    assert rel(np.stack(steps, 1), ref[:, 3:]) <= TOL


# -- refusals, each by name -----------------------------------------------------------------------
@pytest.mark.parametrize("change,needle", [
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
     "rope_type"),
    (dict(head_dim=8), "head_dim"),
    (dict(attention_bias=True, mlp_bias=False), "attention_bias"),
])
def test_from_torch_refuses_by_name(change, needle):
    kw = dict(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
              intermediate_size=12, num_hidden_layers=1, vocab_size=11,
              max_position_embeddings=32)
    kw.update(change)
    t = hf.LlamaForCausalLM(LlamaConfig(**kw))
    with pytest.raises((ValueError, TypeError), match=needle):
        from_torch(t)


def test_from_torch_refuses_llama_model_by_name():
    t = hf.LlamaModel(config())
    with pytest.raises(TypeError, match="LlamaModel.*LlamaForCausalLM"):
        from_torch(t)


@pytest.mark.parametrize("kw,needle", [
    (dict(rope_layout="interleaved"), "interleaved"),
    (dict(window=4), "window"),
    (dict(norm="layernorm"), "RMSNorm"),
])
def test_to_torch_refuses_by_name(kw, needle):
    base = dict(norm="rmsnorm", bias=False)
    base.update(kw)
    m = TransformerLM(11, 16, 4, 1, 12, 0.0, "swiglu", 1e-6, "rotary", 32, True,
                      dtype=np.float64, rng=0, **base)
    with pytest.raises((TypeError, ValueError), match=needle):
        to_torch(m)


def test_to_torch_refuses_residual_dropout_in_train_mode():
    m = TransformerLM(11, 16, 4, 1, 12, 0.1, "swiglu", 1e-6, "rotary", 32, True,
                      norm="rmsnorm", bias=False, dtype=np.float64, rng=0)
    with pytest.raises(ValueError, match="dropout"):
        to_torch(m)
    assert type(to_torch(m.eval())).__name__ == "LlamaForCausalLM"
