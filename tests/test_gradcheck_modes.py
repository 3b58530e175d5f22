"""gradcheck's other modes: fast mode (random projections v^T J u), the JVP
check, and the structural checks (causality, padding); gradcheck on a
function in the oracle protocol."""

from __future__ import annotations

import time

import numpy as np
import pytest

from numtransformer import oracle
from numtransformer.attention import MultiHeadAttention
from numtransformer.attention.masks import causal_mask
from numtransformer.gradcheck import (check_causality, check_padding, gradcheck, gradcheck_fast,
                                      jvp_check)
from numtransformer.layers import Linear
from numtransformer.models.transformer import TransformerEncoder
from numtransformer.module import Module


class TransposedWeightGrad(Linear):
    """A Linear whose dW is (x^T dy) transposed back wrong: a square W hides the shape."""

    def backward(self, dy, cache):
        dx = dy @ self.W.data.T
        self.W.grad += (cache.x.T @ dy.reshape(-1, self.out_features)).T
        self.b.grad += dy.reshape(-1, self.out_features).sum(0)
        return dx


class OverwritesGrad(Linear):
    def backward(self, dy, cache):
        dx = dy @ self.W.data.T
        self.W.grad = cache.x.T @ dy.reshape(-1, self.out_features)
        self.b.grad += dy.reshape(-1, self.out_features).sum(0)
        return dx


class Stack(Module):
    def __init__(self, *layers):
        self.layers = list(layers)  # parameters named layers.0.W, layers.1.W, ...

    def forward(self, x):
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x)
            caches.append(c)
        return x, caches

    def backward(self, dy, caches):
        for layer, c in zip(reversed(self.layers), reversed(caches)):
            dy = layer.backward(dy, c)
        return dy


def _model_100k(rng):
    m = TransformerEncoder(2, 64, 4, dim_feedforward=256, dropout=0.0, activation="gelu",
                           rng=rng)  # smooth: no ReLU kink for the stencil to cross
    assert 99_000 < sum(p.data.size for p in m.parameters()) < 110_000
    return m


def test_fast_mode_passes_a_100k_parameter_model_in_under_a_second():
    rng = np.random.default_rng(0)
    m = _model_100k(rng)
    x = rng.standard_normal((2, 16, 64))
    gradcheck_fast(m, x)  # warm up
    t0 = time.perf_counter()
    report = gradcheck_fast(m, x)
    seconds = time.perf_counter() - t0
    report.assert_passed()
    print(f"fast mode, {sum(p.data.size for p in m.parameters())} parameters: {seconds:.3f} s")
    assert seconds < 2.0  # 1 s measured on an idle machine; this one is shared


def test_fast_mode_finds_and_names_a_transposed_weight_gradient():
    rng = np.random.default_rng(1)
    m = Stack(Linear(6, 6, rng=rng), TransposedWeightGrad(6, 6, rng=rng))
    x = rng.standard_normal((4, 6))
    report = gradcheck_fast(m, x)
    assert not report.passed
    assert report.failures == [report.tensors[0].name, "layers.1.W"], str(report)
    full = gradcheck(m, x)
    assert full.failures == ["layers.1.W"]


def test_fast_mode_reports_an_overwritten_gradient():
    rng = np.random.default_rng(2)
    m = Stack(OverwritesGrad(5, 3, rng=rng))
    report = gradcheck_fast(m, rng.standard_normal((4, 5)))
    assert any("overwrites" in p for p in report.problems)


def test_fast_mode_on_a_function_target():
    case = oracle.examples.attention_case(mask="blocked_rows", seed=3)
    gradcheck_fast(oracle.scaled_dot_product_attention, **case, per_tensor=True).assert_passed()


def test_gradcheck_accepts_a_function_and_names_tensors_by_keyword():
    case = oracle.examples.norm_case((3, 4), seed=4)
    report = gradcheck(oracle.layer_norm, **case)
    report.assert_passed()
    assert [t.name for t in report.tensors] == ["x", "gamma", "beta"]

    def wrong_dbeta(x, gamma, beta, dout=None):
        outs, grads = oracle.layer_norm(x, gamma, beta, dout)
        if dout is not None:
            grads["beta"] = grads["beta"] * 2.0
        return outs, grads

    assert gradcheck(wrong_dbeta, **case).failures == ["beta"]
    assert gradcheck_fast(wrong_dbeta, **case).failures[-1] == "beta"


def test_jvp_check_against_vjps_and_a_user_jvp():
    rng = np.random.default_rng(5)
    m = Stack(Linear(4, 3, rng=rng))
    x = rng.standard_normal((2, 4))
    jvp_check(m, x).assert_passed()
    assert not jvp_check(Stack(TransposedWeightGrad(4, 4, rng=rng)), x).passed
    W, b = m.layers[0].W.data, m.layers[0].b.data

    def jvp(t):  # y = x W + b is linear: J u = u_x W + x u_W + u_b
        return t["input[0]"] @ W + x @ t["layers.0.W"] + t["layers.0.b"]

    report = jvp_check(m, x, jvp=jvp)
    report.assert_passed()
    assert any("vs jvp" in t.name for t in report.tensors)

    def wrong_jvp(t):
        return t["input[0]"] @ W + t["layers.0.b"]

    assert not jvp_check(m, x, jvp=wrong_jvp).passed


def _mha(**kw):
    return MultiHeadAttention(8, 2, rng=np.random.default_rng(6), **kw).astype(np.float64)


def test_causality_check():
    x = np.random.default_rng(7).standard_normal((2, 5, 8))
    check_causality(_mha(), x, x, x, attn_mask=causal_mask(5)).assert_passed()
    check_causality(_mha(window=2), x, x, x).assert_passed()
    leaky = check_causality(_mha(), x, x, x)
    assert not leaky.passed
    assert any(v.startswith("backward: output 0") for v in leaky.violations)
    assert any(v.startswith("forward: outputs 0..0") for v in leaky.violations)
    # an off-by-one causal mask (each query also sees the next key) leaks by one step
    off = np.triu(np.ones((5, 5), bool), k=2)
    assert not check_causality(_mha(), x, x, x, attn_mask=off).passed


def test_padding_check():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5, 8))
    pad = np.zeros((2, 5), bool)
    pad[1, 2:] = True
    check_padding(_mha(), x, x, x, padding_mask=pad, key_padding_mask=pad).assert_passed()
    leaky = check_padding(_mha(), x, x, x, padding_mask=pad)
    assert not leaky.passed
    assert any("padded position" in v for v in leaky.violations)
    assert any(v.startswith("forward") for v in leaky.violations)
    enc = TransformerEncoder(1, 8, 2, dim_feedforward=16, dropout=0.0,
                             rng=rng).astype(np.float64)
    check_padding(enc, x, padding_mask=pad, src_key_padding_mask=pad).assert_passed()


def test_structural_checks_refuse_bad_arguments():
    x = np.zeros((2, 5, 8))
    with pytest.raises(ValueError, match="padding_mask must be a"):
        check_padding(_mha(), x, x, x, padding_mask=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="no float input 'input\\[7\\]'"):
        check_causality(_mha(), x, x, x, causal_inputs=[7])
    with pytest.raises(TypeError, match="by keyword"):
        gradcheck_fast(oracle.layer_norm, x)
