"""BERT-style encoder, pooling and normalisation: gradchecks, dtypes, errors, and parity
with an independent PyTorch re-implementation of BERT loaded from the same
Hugging Face-named weights (which checks ``load_hf_bert_weights`` too).

These tests need no pretrained package: the models are small and random.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.pretrained.bert import (BertEmbeddings, BertModel, L2Normalize, MeanPooling,
                                            SentenceEncoder, hf_bert_name_map,
                                            load_hf_bert_weights)
from numtransformer.pretrained.safetensors import load_safetensors, save_safetensors
from tests.helpers import check_dtype_preserved, seeds


def small_config(rng, **kw):
    heads = int(rng.integers(1, 3))
    cfg = dict(vocab_size=11, hidden_size=heads * int(rng.integers(2, 4)),
               num_hidden_layers=int(rng.integers(1, 3)), num_attention_heads=heads,
               intermediate_size=int(rng.integers(1, 6)), hidden_act="gelu",
               max_position_embeddings=7, type_vocab_size=2, layer_norm_eps=1e-12,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    return cfg


def randomize(model, rng, scale=0.3):
    """Move every parameter off its init (LayerNorm gamma = 1, beta = 0 hide mistakes)."""
    for p in model.parameters():
        p.data = p.data + scale * rng.standard_normal(p.shape).astype(p.dtype)


def draw_batch(rng, B, T, V, type_vocab=2):
    ids = rng.integers(0, V, size=(B, T))
    mask = (rng.random((B, T)) < 0.75).astype(np.int64)
    mask[:, 0] = 1  # [CLS] is always a real token
    tt = rng.integers(0, type_vocab, size=(B, T))
    return ids, mask, tt


# -- gradchecks --------------------------------------------------------------------------------
@given(B=st.integers(1, 2), T=st.integers(1, 6), seed=seeds)
def test_gradcheck_embeddings(B, T, seed):
    rng = np.random.default_rng(seed)
    emb = BertEmbeddings(9, 5, max_position_embeddings=6, dropout=0.0, dtype=np.float64,
                         rng=rng)
    randomize(emb, rng)
    ids, _, tt = draw_batch(rng, B, min(T, 6), 9)
    gradcheck(emb, ids, tt, seed=seed).assert_passed()


@settings(max_examples=8)  # each example checks ~20 tensors of a whole model
@given(B=st.integers(1, 2), T=st.integers(1, 5), act=st.sampled_from(["gelu", "gelu_new"]),
       with_mask=st.booleans(), seed=seeds)
def test_gradcheck_bert_model(B, T, act, with_mask, seed):
    rng = np.random.default_rng(seed)
    model = BertModel(**small_config(rng, hidden_act=act), dtype=np.float64, rng=rng)
    randomize(model, rng)
    ids, mask, tt = draw_batch(rng, B, T, 11)
    kw = {"attention_mask": mask} if with_mask else {}
    gradcheck(model, ids, token_type_ids=tt, seed=seed, max_entries=6, **kw).assert_passed()


@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 4), seed=seeds)
def test_gradcheck_mean_pooling(B, T, D, seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((B, T)) < 0.6).astype(np.int64)  # fully padded rows allowed: s = 0
    gradcheck(MeanPooling(), rng.standard_normal((B, T, D)), mask, seed=seed).assert_passed()


@given(B=st.integers(1, 3), D=st.integers(1, 5), seed=seeds)
def test_gradcheck_l2_normalize(B, D, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, D))
    x[np.linalg.norm(x, axis=1) < 0.1] += 0.5  # away from the eps clamp
    gradcheck(L2Normalize(), x, seed=seed).assert_passed()


@settings(max_examples=8)
@given(B=st.integers(1, 3), T=st.integers(1, 5), normalize=st.booleans(), seed=seeds)
def test_gradcheck_sentence_encoder(B, T, normalize, seed):
    rng = np.random.default_rng(seed)
    bert = BertModel(**small_config(rng, num_hidden_layers=1), dtype=np.float64, rng=rng)
    enc = SentenceEncoder(bert, normalize=normalize)
    randomize(enc, rng)
    ids, mask, _ = draw_batch(rng, B, T, 11)
    gradcheck(enc, ids, mask, seed=seed, max_entries=8).assert_passed()


def test_l2_normalize_clamps_tiny_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    y, cache = L2Normalize().forward(x)
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0]])
    dx = L2Normalize().backward(np.array([[1.0, 0.0], [2.0, -1.0]]), cache)
    np.testing.assert_allclose(dx[0], [0.64 / 5, -0.48 / 5])
    np.testing.assert_allclose(dx[1], [2e12, -1e12])  # r = eps is a constant there


# -- float32 -----------------------------------------------------------------------------------
def test_float32_in_float32_out():
    rng = np.random.default_rng(0)
    enc = SentenceEncoder(BertModel(**small_config(rng, hidden_dropout_prob=0.1,
                                                   attention_probs_dropout_prob=0.1), rng=rng))
    ids, mask, _ = draw_batch(rng, 2, 5, 11)
    check_dtype_preserved(enc, ids, mask)
    check_dtype_preserved(enc.bert, ids, mask)
    check_dtype_preserved(MeanPooling(), rng.standard_normal((2, 3, 4)).astype(np.float32),
                          np.ones((2, 3), np.int64))
    check_dtype_preserved(L2Normalize(), rng.standard_normal((2, 3)).astype(np.float32))


def test_bert_dropout_placement():
    """Dropout on attention weights and both residual branches, none inside the FFN (as BERT)."""
    model = BertModel(**small_config(np.random.default_rng(0), hidden_dropout_prob=0.2,
                                     attention_probs_dropout_prob=0.3), rng=0)
    layer = model.layers[0]
    assert layer.self_attn.dropout.p == 0.3
    assert layer.dropout1.p == layer.dropout2.p == 0.2 == model.embeddings.dropout.p
    assert layer.ffn.dropout.p == 0.0
    assert layer.norm1.eps == 1e-12 and not layer.norm_first


# -- errors ------------------------------------------------------------------------------------
def test_errors_are_named():
    rng = np.random.default_rng(0)
    model = BertModel(**small_config(rng), rng=rng)
    ids = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="sequence length 8 exceeds max_position_embeddings=7"):
        model(np.zeros((1, 8), np.int64))
    with pytest.raises(ValueError, match="input_ids contains id 11"):
        model(np.full((1, 2), 11))
    with pytest.raises(ValueError, match="input_ids must be \\(B, T\\)"):
        model(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="attention_mask has shape \\(2, 2\\)"):
        model(ids, np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="0/1"):
        model(ids, np.full((2, 3), 2))
    with pytest.raises(TypeError, match="attention_mask must be a numpy array"):
        model(ids, [[1, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="token_type_ids contains id 2"):
        model(ids, token_type_ids=np.full((2, 3), 2))
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(ids, token_type_ids=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        BertModel(**small_config(rng, hidden_act="swish"))
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        BertModel.from_config({**small_config(rng), "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="config lacks hidden_size"):
        BertModel.from_config({"vocab_size": 3})
    with pytest.raises(TypeError, match="bert must be a BertModel"):
        SentenceEncoder(object())


def test_bool_and_int_masks_agree():
    rng = np.random.default_rng(3)
    model = BertModel(**small_config(rng), rng=rng)
    ids, mask, _ = draw_batch(rng, 2, 5, 11)
    np.testing.assert_array_equal(model(ids, mask), model(ids, mask.astype(bool)))


# -- Hugging Face weights and a torch re-implementation of BERT --------------------------------
def hf_state(model: BertModel, rng) -> dict:
    """Random HF-named weights of the right shapes (with an unused pooler, as real files have)."""
    state = {}
    for ours, (src, how) in hf_bert_name_map(model).items():
        p = dict(model.named_parameters())[ours]
        names = src if isinstance(src, tuple) else (src,)
        shape = p.shape[::-1] if how == "T" else p.shape
        if how == "qkv.T":
            shape = (p.shape[1] // 3, p.shape[0])
        elif how == "qkv":
            shape = (p.shape[0] // 3,)
        for n in names:
            state[n] = 0.3 * rng.standard_normal(shape)
            if n.endswith("LayerNorm.weight"):
                state[n] += 1.0
    D = model.hidden_size
    state["pooler.dense.weight"] = rng.standard_normal((D, D))
    state["embeddings.position_ids"] = np.arange(model.embeddings.max_position_embeddings)[None]
    return state


def test_load_hf_weights_via_safetensors_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    cfg = small_config(rng)
    model = BertModel(**cfg, dtype=np.float64, rng=rng)
    state = hf_state(model, rng)
    path = tmp_path / "model.safetensors"
    save_safetensors(path, {("bert." + k if k.startswith("enc") else k): v
                            for k, v in state.items()})
    other = BertModel(**cfg, dtype=np.float32, rng=rng)
    skipped = load_hf_bert_weights(other, load_safetensors(path))
    assert skipped == ["embeddings.position_ids", "pooler.dense.weight"]
    assert other.layers[0].self_attn.in_proj.W.dtype == np.float32
    q = state["encoder.layer.0.attention.self.query.weight"]
    np.testing.assert_allclose(other.layers[0].self_attn.in_proj.W.data[:, :q.shape[0]], q.T,
                               rtol=1e-6)
    del state["encoder.layer.0.output.dense.bias"]
    with pytest.raises(ValueError, match="missing encoder.layer.0.output.dense.bias"):
        load_hf_bert_weights(other, state)
    state["encoder.layer.0.output.dense.bias"] = np.zeros(3 + cfg["hidden_size"])
    with pytest.raises(ValueError, match="output.dense.bias gives layers.0.ffn.linear2.b shape"):
        load_hf_bert_weights(other, state)


def torch_bert(p: dict, ids, mask, tt, cfg, torch):
    """BERT and mean pooling + normalisation, written directly with torch ops (autograd oracle)."""
    F = torch.nn.functional
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    d_k, eps = D // H, cfg["layer_norm_eps"]
    B, T = ids.shape
    x = (p["embeddings.word_embeddings.weight"][ids] + p["embeddings.position_embeddings.weight"][
        :T] + p["embeddings.token_type_embeddings.weight"][tt])
    x = F.layer_norm(x, (D,), p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"],
                     eps)
    blocked = (mask == 0)[:, None, None, :]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"encoder.layer.{i}."

        def lin(z, name):
            return F.linear(z, p[pre + name + ".weight"], p[pre + name + ".bias"])

        def heads(z):
            return z.reshape(B, T, H, d_k).transpose(1, 2)

        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d_k)).masked_fill(blocked, float("-inf"))
        ctx = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, T, D)
        h = F.layer_norm(x + lin(ctx, "attention.output.dense"), (D,),
                         p[pre + "attention.output.LayerNorm.weight"],
                         p[pre + "attention.output.LayerNorm.bias"], eps)
        f = lin(F.gelu(lin(h, "intermediate.dense")), "output.dense")
        x = F.layer_norm(h + f, (D,), p[pre + "output.LayerNorm.weight"],
                         p[pre + "output.LayerNorm.bias"], eps)
    m = mask[..., None].to(x.dtype)
    pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return x, F.normalize(pooled, p=2, dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_reimplementation_and_gradients(seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    cfg = small_config(rng)
    enc = SentenceEncoder(BertModel(**cfg, dtype=np.float64, rng=rng))
    state = hf_state(enc.bert, rng)
    load_hf_bert_weights(enc.bert, state)
    ids, mask, tt = draw_batch(rng, 3, 6, 11)

    (y, cache) = enc.forward(ids, mask, tt)
    hidden = enc.bert(ids, mask, tt)
    G = rng.standard_normal(y.shape)
    enc.backward(G, cache)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in state.items()
          if not k.startswith(("pooler", "embeddings.position_ids"))}
    th, ty = torch_bert(tp, torch.from_numpy(ids), torch.from_numpy(mask),
                        torch.from_numpy(tt), cfg, torch)
    (ty * torch.from_numpy(G)).sum().backward()

    def rel(a, b):
        b = b.detach().numpy()
        return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)

    assert rel(hidden, th) < 1e-12
    assert rel(y, ty) < 1e-12
    params = dict(enc.bert.named_parameters())
    # a gradient that is zero in exact arithmetic (the key bias: softmax ignores a shift
    # shared by a row) is judged against the model's gradient scale, not its own noise
    floor = 1e-3 * max(float(np.abs(t.grad.numpy()).max()) for t in tp.values())
    worst = 0.0
    for ours, (src, how) in hf_bert_name_map(enc.bert).items():
        g = params[ours].grad
        names = src if isinstance(src, tuple) else (src,)
        if how == "T":
            parts = [g.T]
        elif how == "qkv.T":
            parts = [b.T for b in np.split(g, 3, axis=1)]
        elif how == "qkv":
            parts = np.split(g, 3)
        else:
            parts = [g]
        for n, part in zip(names, parts):
            scale = max(float(np.abs(tp[n].grad.numpy()).max()), floor)
            err = np.abs(part - tp[n].grad.numpy()).max() / scale
            worst = max(worst, err)
            assert err < 1e-10, (ours, n, err)
    assert worst < 1e-10


def test_gradcheck_cli_cases_build():
    """The cases numtransformer.pretrained offers to ``numtransformer gradcheck`` (the same
    classes are gradient-checked above; here: each case builds and runs forward)."""
    from numtransformer.cases.pretrained import CASES

    names = []
    for i, case in enumerate(CASES):
        module, inputs, kwargs = case.build(np.random.default_rng(i))
        kwargs = {k: v for k, v in kwargs.items() if k != "max_entries"}
        out = module(*inputs, **kwargs)
        assert out.dtype == np.float64 and np.isfinite(out).all(), case.name
        names.append(case.name)
    assert names == ["BertEmbeddings", "BertModel", "MeanPooling", "L2Normalize",
                     "SentenceEncoder"]


def test_norm_argument_and_parameter_names():
    """``norm`` chooses the embedding norm and every layer's; the parameter names
    (and so the Hugging Face name map) are those of before the residual connection."""
    from numtransformer.layers import LayerNorm

    rng = np.random.default_rng(0)
    model = BertModel(**small_config(rng, num_hidden_layers=2), norm="layernorm", rng=rng)
    assert model.config["norm"] == "layernorm"
    assert sorted(BertModel.from_config(model.config).state_dict()) == sorted(model.state_dict())
    assert set(hf_bert_name_map(model)) == set(model.state_dict())
    assert {"embeddings.norm.gamma", "layers.1.norm1.beta", "layers.1.norm2.gamma"} <= set(
        model.state_dict())
    assert sum(isinstance(m, LayerNorm) for _, m in model.named_modules()) == 1 + 2 * 2
    with pytest.raises(ValueError, match="^BertModel: norm must be one of 'layernorm', 'rmsnorm', got 'rms'"):
        BertModel(**small_config(rng), norm="rms")
    with pytest.raises(ValueError, match="^BertEmbeddings: norm must be one of"):
        BertEmbeddings(11, 4, norm="rms")
