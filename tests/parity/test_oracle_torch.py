"""The oracle (``numtransformer.oracle``) against PyTorch autograd, float64, on
drawn shapes: every family it covers, through ``oracle.compare`` itself (the
torch side written as a candidate in the oracle protocol), to <= 1e-12
relative to each tensor's largest entry.

torch is an optional test dependency: without it this file is skipped.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

from numtransformer import oracle  # noqa: E402
from numtransformer.oracle import strategies  # noqa: E402

RTOL = 1e-12


def t(x, grad=True):
    return None if x is None else torch.tensor(np.asarray(x), dtype=torch.float64,
                                               requires_grad=grad)


def backward(outputs: dict, leaves: dict, dout):
    """Push dout through torch's graph; (outputs, grads) as NumPy, by name."""
    douts = dout if isinstance(dout, dict) else {next(iter(outputs)): dout}
    outs = [outputs[k] for k in douts]
    torch.autograd.backward(outs, [torch.tensor(douts[k]) for k in douts])
    grads = {k: (v.grad.numpy() if v.grad is not None else np.zeros(v.shape))
             for k, v in leaves.items() if v is not None}
    return {k: v.detach().numpy() for k, v in outputs.items()}, grads


def blocked_mask(B, Tq, Tk, key_padding_mask=None, attn_mask=None, is_causal=False,
                 window=None):
    """The combined boolean mask (B, 1, Tq, Tk), True = blocked, built in torch."""
    i = torch.arange(Tq)[:, None]
    j = torch.arange(Tk)[None, :]
    m = torch.zeros(B, 1, Tq, Tk, dtype=torch.bool)
    if key_padding_mask is not None:
        m = m | torch.tensor(key_padding_mask)[:, None, None, :]
    if attn_mask is not None and np.asarray(attn_mask).dtype == np.bool_:
        m = m | torch.tensor(attn_mask)
    if is_causal:
        m = m | (j > i)
    if window is not None:
        m = m | (j > i) | (j <= i - window)
    return m


def torch_sdpa(q, k, v, dout=None, *, key_padding_mask=None, attn_mask=None, is_causal=False,
               window=None, layout="bhtd", scale=None):
    """PyTorch's scaled_dot_product_attention (its boolean mask: True = takes part)."""
    leaves = {"q": t(q), "k": t(k), "v": t(v)}
    qq, kk, vv = (x if layout == "bhtd" else x.transpose(1, 2) for x in leaves.values())
    B, H, Tq, _ = qq.shape
    Tk = kk.shape[2]
    if attn_mask is not None and np.asarray(attn_mask).dtype != np.bool_:
        leaves["attn_mask"] = t(attn_mask)
        mask = leaves["attn_mask"]
    else:
        mask = ~blocked_mask(B, Tq, Tk, key_padding_mask, attn_mask, is_causal, window)
    out = TF.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=scale,
                                          enable_gqa=kk.shape[1] != H)
    if layout != "bhtd":
        out = out.transpose(1, 2)
    return backward({"out": out}, leaves, dout)


def torch_mha(query, key, value, W_q, W_k, W_v, W_o, b_q=None, b_k=None, b_v=None, b_o=None,
              dout=None, *, n_heads, n_kv_heads=None, key_padding_mask=None, attn_mask=None,
              is_causal=False, window=None):
    names = ["query", "key", "value", "W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o"]
    values = [query, key, value, W_q, W_k, W_v, W_o, b_q, b_k, b_v, b_o]
    L = {n: t(x) for n, x in zip(names, values)}
    n_kv = n_heads if n_kv_heads is None else n_kv_heads

    def heads(x, W, b, h):
        y = x @ W + (0 if b is None else b)
        B, T, E = y.shape
        return y.view(B, T, h, E // h).transpose(1, 2)

    q = heads(L["query"], L["W_q"], L["b_q"], n_heads)
    k = heads(L["key"], L["W_k"], L["b_k"], n_kv)
    v = heads(L["value"], L["W_v"], L["b_v"], n_kv)
    B, H, Tq, _ = q.shape
    if attn_mask is not None and np.asarray(attn_mask).dtype != np.bool_:
        L["attn_mask"] = t(attn_mask)
        mask = L["attn_mask"]
    else:
        mask = ~blocked_mask(B, Tq, k.shape[2], key_padding_mask, attn_mask, is_causal, window)
    c = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=n_kv != n_heads)
    C = c.transpose(1, 2).reshape(B, Tq, -1)
    out = C @ L["W_o"] + (0 if L["b_o"] is None else L["b_o"])
    return backward({"out": out}, L, dout)


def torch_layer_norm(x, gamma=None, beta=None, dout=None, *, eps=1e-5):
    L = {"x": t(x), "gamma": t(gamma), "beta": t(beta)}
    out = TF.layer_norm(L["x"], (L["x"].shape[-1],), L["gamma"], L["beta"], eps)
    return backward({"out": out}, L, dout)


def torch_rms_norm(x, gamma=None, dout=None, *, eps=1e-6):
    L = {"x": t(x), "gamma": t(gamma)}
    out = TF.rms_norm(L["x"], (L["x"].shape[-1],), L["gamma"], eps)
    return backward({"out": out}, L, dout)


def torch_cross_entropy(logits, targets, dout=None, *, ignore_index=-100, label_smoothing=0.0,
                        reduction="mean"):
    L = {"logits": t(logits)}
    z = L["logits"]
    if z.ndim > 2:
        z = z.movedim(-1, 1)
    loss = TF.cross_entropy(z, torch.tensor(targets), ignore_index=ignore_index,
                            label_smoothing=label_smoothing, reduction=reduction)
    return backward({"loss": loss}, L, dout)


def _rnn_module(kind, W_ih, W_hh, b_ih, b_hh, sequence):
    D, GH = np.shape(W_ih)
    H = GH // (4 if kind == "lstm" else 3)
    cls = {("lstm", False): torch.nn.LSTMCell, ("gru", False): torch.nn.GRUCell,
           ("lstm", True): torch.nn.LSTM, ("gru", True): torch.nn.GRU}[kind, sequence]
    kw = {"batch_first": True} if sequence else {}
    m = cls(D, H, bias=b_ih is not None, dtype=torch.float64, **kw)
    sfx = "_l0" if sequence else ""
    with torch.no_grad():
        getattr(m, "weight_ih" + sfx).copy_(torch.tensor(np.asarray(W_ih).T))
        getattr(m, "weight_hh" + sfx).copy_(torch.tensor(np.asarray(W_hh).T))
        if b_ih is not None:
            getattr(m, "bias_ih" + sfx).copy_(torch.tensor(b_ih))
            getattr(m, "bias_hh" + sfx).copy_(torch.tensor(b_hh))
    params = {"W_ih": getattr(m, "weight_ih" + sfx), "W_hh": getattr(m, "weight_hh" + sfx)}
    if b_ih is not None:
        params.update(b_ih=getattr(m, "bias_ih" + sfx), b_hh=getattr(m, "bias_hh" + sfx))
    return m, params


def _param_grads(grads, params):
    for n, p in params.items():
        grads[n] = p.grad.numpy().T if n.startswith("W") else p.grad.numpy()
    return grads


def torch_lstm_step(x, h_prev, c_prev, W_ih, W_hh, b_ih=None, b_hh=None, dout=None):
    m, params = _rnn_module("lstm", W_ih, W_hh, b_ih, b_hh, False)
    L = {"x": t(x), "h_prev": t(h_prev), "c_prev": t(c_prev)}
    h, c = m(L["x"], (L["h_prev"], L["c_prev"]))
    outs, grads = backward({"h": h, "c": c}, L, dout)
    return outs, _param_grads(grads, params)


def torch_gru_step(x, h_prev, W_ih, W_hh, b_ih=None, b_hh=None, dout=None):
    m, params = _rnn_module("gru", W_ih, W_hh, b_ih, b_hh, False)
    L = {"x": t(x), "h_prev": t(h_prev)}
    h = m(L["x"], L["h_prev"])
    outs, grads = backward({"h": h}, L, dout)
    return outs, _param_grads(grads, params)


def torch_lstm(x, h0=None, c0=None, W_ih=None, W_hh=None, b_ih=None, b_hh=None, dout=None):
    m, params = _rnn_module("lstm", W_ih, W_hh, b_ih, b_hh, True)
    L = {"x": t(x), "h0": t(h0), "c0": t(c0)}
    state = None if h0 is None else (L["h0"][None], L["c0"][None])
    out, (h_n, c_n) = m(L["x"], state)
    outs, grads = backward({"out": out, "h_n": h_n[0], "c_n": c_n[0]}, L, dout)
    return outs, _param_grads(grads, params)


def torch_gru(x, h0=None, W_ih=None, W_hh=None, b_ih=None, b_hh=None, dout=None):
    m, params = _rnn_module("gru", W_ih, W_hh, b_ih, b_hh, True)
    L = {"x": t(x), "h0": t(h0)}
    out, h_n = m(L["x"], None if h0 is None else L["h0"][None])
    outs, grads = backward({"out": out, "h_n": h_n[0]}, L, dout)
    return outs, _param_grads(grads, params)


def torch_rotary(x, positions=None, dout=None, *, base=10000.0, layout="half"):
    """RoPE written in torch from the paper's formula (pair i turned by m theta_i)."""
    L = {"x": t(x)}
    X = L["x"]
    d = X.shape[-1]
    m = torch.arange(X.shape[-2], dtype=torch.float64) if positions is None else \
        torch.tensor(np.asarray(positions), dtype=torch.float64)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = m[:, None] * theta
    cos, sin = torch.cos(angle), torch.sin(angle)
    if layout == "half":
        a, b = X[..., : d // 2], X[..., d // 2:]
        out = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    else:
        a, b = X[..., 0::2], X[..., 1::2]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return backward({"out": out}, L, dout)


def check(candidate, family, case):
    oracle.compare(candidate, family, [case], rtol=RTOL, verbose=False).assert_passed()


@given(strategies.attention_cases())
def test_sdpa_matches_torch(case):
    check(torch_sdpa, "scaled_dot_product_attention", case)


@given(strategies.attention_cases(layout="bthd", masks=("none", "causal", "key_padding")))
def test_sdpa_bthd_layout_matches_torch(case):
    check(torch_sdpa, "scaled_dot_product_attention", case)


def test_sdpa_custom_scale_matches_torch():
    case = oracle.examples.attention_case(B=2, H=4, H_kv=2, Tq=3, Tk=5, d=4, mask="window", seed=3)
    case["scale"] = 0.37
    check(torch_sdpa, "scaled_dot_product_attention", case)


@given(strategies.mha_cases())
def test_mha_and_gqa_match_torch(case):
    check(torch_mha, "multi_head_attention", case)


def test_mha_torch_layout_matches_nn_multihead_attention():
    """layout="torch": nn.MultiheadAttention's own weights and gradients."""
    torch.manual_seed(0)
    E, H, B, T = 8, 2, 2, 4
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, E))
    pad = np.array([[False] * T, [False, False, True, True]])
    X = t(x)
    out, _ = mha(X, X, X, key_padding_mask=torch.tensor(pad), need_weights=False)
    G = rng.standard_normal(out.shape)
    out.backward(torch.tensor(G))
    Wq, Wk, Wv = (w.detach().numpy() for w in mha.in_proj_weight.chunk(3))
    bq, bk, bv = (b.detach().numpy() for b in mha.in_proj_bias.chunk(3))
    res = oracle.multi_head_attention(
        x, x, x, Wq, Wk, Wv, mha.out_proj.weight.detach().numpy(), bq, bk, bv,
        mha.out_proj.bias.detach().numpy(), G, n_heads=H, key_padding_mask=pad, layout="torch")
    scale = np.abs(res.outputs["out"]).max()
    assert np.abs(res.outputs["out"] - out.detach().numpy()).max() <= RTOL * scale
    dx = res.grads["query"] + res.grads["key"] + res.grads["value"]
    assert np.abs(dx - X.grad.numpy()).max() <= RTOL * np.abs(dx).max()
    dW_in = np.concatenate([res.grads["W_q"], res.grads["W_k"], res.grads["W_v"]])
    assert np.abs(dW_in - mha.in_proj_weight.grad.numpy()).max() <= RTOL * np.abs(dW_in).max()
    dW_o = mha.out_proj.weight.grad.numpy()
    assert np.abs(res.grads["W_o"] - dW_o).max() <= RTOL * np.abs(dW_o).max()


@given(strategies.norm_cases("layer_norm", min_features=2))
def test_layer_norm_matches_torch(case):
    # n = 1 is left out: x - mean(x) is exactly 0 here, and torch's rounding
    # of it (~1e-16), times rstd = 1/sqrt(eps), is all its dgamma holds
    check(torch_layer_norm, "layer_norm", case)


@given(strategies.norm_cases("rms_norm"))
def test_rms_norm_matches_torch(case):
    check(torch_rms_norm, "rms_norm", case)


@given(strategies.cross_entropy_cases())
def test_cross_entropy_matches_torch(case):
    valid = case["targets"] != -100
    if case["reduction"] == "mean" and not valid.any():
        # torch's mean over zero targets is 0/0 = NaN; the oracle's is 0 (documented)
        res = oracle.cross_entropy(**case, dout=np.float64(1.0))
        assert res.outputs["loss"] == 0.0 and not res.grads["logits"].any()
        return
    check(torch_cross_entropy, "cross_entropy", case)


@given(strategies.recurrent_cases("lstm_step"))
def test_lstm_step_matches_torch(case):
    check(torch_lstm_step, "lstm_step", case)


@given(strategies.recurrent_cases("gru_step"))
def test_gru_step_matches_torch(case):
    check(torch_gru_step, "gru_step", case)


@given(strategies.recurrent_cases("lstm"))
def test_lstm_matches_torch(case):
    check(torch_lstm, "lstm", case)


@given(strategies.recurrent_cases("gru"))
def test_gru_matches_torch(case):
    check(torch_gru, "gru", case)


def test_recurrent_torch_layout_and_gate_order():
    """layout="torch" takes nn.LSTM's weights as stored; a permuted gate order
    is the same function with the blocks moved."""
    case = oracle.examples.recurrent_case("lstm", B=2, T=3, D=3, H=2, seed=4)
    rng = np.random.default_rng(1)
    dout = {"out": rng.standard_normal((2, 3, 2)), "h_n": rng.standard_normal((2, 2))}
    ref = oracle.lstm(**case, dout=dout)
    tcase = dict(case, W_ih=case["W_ih"].T, W_hh=case["W_hh"].T)
    got = oracle.lstm(**tcase, dout=dout, layout="torch")
    assert np.array_equal(ref.outputs["out"], got.outputs["out"])
    assert np.allclose(got.grads["W_ih"], ref.grads["W_ih"].T, rtol=0, atol=0)
    perm = [0, 1, 3, 2]  # "ifog": the blocks of g and o swapped

    def swap(a):
        blocks = np.split(a, 4, axis=-1)
        return np.concatenate([blocks[i] for i in perm], axis=-1)

    pcase = {k: (swap(v) if k in ("W_ih", "W_hh", "b_ih", "b_hh") else v) for k, v in case.items()}
    got = oracle.lstm(**pcase, dout=dout, gate_order="ifog")
    assert np.array_equal(ref.outputs["out"], got.outputs["out"])
    for n in ("W_ih", "W_hh", "b_ih", "b_hh"):
        assert np.array_equal(swap(ref.grads[n]), got.grads[n])


@given(strategies.rotary_cases())
def test_rotary_matches_torch(case):
    check(torch_rotary, "rotary_embedding", case)


def test_report_names_the_broken_tensor():
    """compare flags a kernel whose dv is wrong, and names dv alone."""

    def broken(**kw):
        outs, grads = torch_sdpa(**kw)
        grads["v"] = grads["v"] * 1.001
        return outs, grads

    rep = oracle.compare(broken, "scaled_dot_product_attention", n=5, verbose=False)
    assert rep.failed_tensors == ["dv"], str(rep)
    assert math.isfinite(rep.tensors["dq"].max_rel)
