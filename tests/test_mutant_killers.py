"""Tests added because a mutant of ``benchmarks/mutation.py`` survived the
gradient checks.

A gradient check proves a backward consistent with its forward; it cannot see
a forward that computes the wrong function consistently.  The mask builders
are such code: ``causal_mask`` with k=0 (a query blind to itself) or a sliding
window one step too wide still give gradients that match finite differences.
These tests pin the *semantics* against the oracle's independent mask
definition (``numtransformer.oracle.attention_mask``: query i sees key j iff
j <= i, and j > i - w in a window w) and a layer against the oracle end to
end.  Every test here takes no arguments, so the mutation script runs them
too.
"""

from __future__ import annotations

import numpy as np
import pytest

from numtransformer import oracle
from numtransformer.attention import MultiHeadAttention
from numtransformer.attention.masks import causal_mask, sliding_window_mask


def _oracle_blocked(Tq, Tk, **kw):
    mask, _ = oracle.attention_mask(1, 1, Tq, Tk, **kw)
    return np.zeros((Tq, Tk), bool) if mask is None else mask[0, 0]


def test_causal_mask_is_the_oracles():
    for T in range(1, 7):
        assert np.array_equal(causal_mask(T), _oracle_blocked(T, T, is_causal=True)), T


def test_sliding_window_mask_is_the_oracles():
    """Queries at offset .. offset + T - 1: the last T rows of the oracle's mask
    for offset + T queries; keys 0 .. Tk - 1 (Tk = offset + T unless given)."""
    for T in range(1, 5):
        for window in range(1, 6):
            for offset in range(0, 4):
                for Tk in (None, offset + T + 2, max(1, offset + T - 1)):
                    want = _oracle_blocked(offset + T, offset + T if Tk is None else Tk,
                                           window=window)[offset:]
                    got = sliding_window_mask(T, window, offset, Tk=Tk)
                    assert np.array_equal(got, want), (T, window, offset, Tk)


def test_sliding_window_mask_refuses_a_negative_offset():
    with pytest.raises(ValueError, match="offset"):
        sliding_window_mask(3, 2, -1)


def _layer_against_oracle(window=None, causal=False, n_kv_heads=None):
    rng = np.random.default_rng(5)
    layer = MultiHeadAttention(8, 4, rng=rng, n_kv_heads=n_kv_heads,
                               window=window).astype(np.float64)
    for p in layer.parameters():  # biases are zero at init: make them count
        p.data = p.data + 0.1 * rng.standard_normal(p.shape)
    x = rng.standard_normal((2, 5, 8))
    mask = causal_mask(5) if causal else None
    y, cache = layer.forward(x, attn_mask=mask)
    G = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(G, cache)
    dx = sum(dx) if isinstance(dx, tuple) else dx
    E_kv = layer.in_proj.W.shape[1] - 8
    W_q, W_k, W_v = np.split(layer.in_proj.W.data, [8, 8 + E_kv // 2], axis=1)
    b_q, b_k, b_v = np.split(layer.in_proj.b.data, [8, 8 + E_kv // 2])
    res = oracle.multi_head_attention(x, x, x, W_q, W_k, W_v, layer.out_proj.W.data, b_q, b_k,
                                      b_v, layer.out_proj.b.data, G, n_heads=4,
                                      n_kv_heads=n_kv_heads, is_causal=causal, window=window)
    assert np.allclose(y, res.outputs["out"], rtol=0, atol=1e-12)
    want_dx = res.grads["query"] + res.grads["key"] + res.grads["value"]
    assert np.allclose(dx, want_dx, rtol=0, atol=1e-12)
    want_dW = np.concatenate([res.grads["W_q"], res.grads["W_k"], res.grads["W_v"]], axis=1)
    assert np.allclose(layer.in_proj.W.grad, want_dW, rtol=0, atol=1e-12)


def test_causal_attention_layer_is_the_oracles():
    _layer_against_oracle(causal=True)


def test_sliding_window_attention_layer_is_the_oracles():
    for w in (1, 2, 4):
        _layer_against_oracle(window=w)


def test_grouped_query_window_layer_is_the_oracles():
    _layer_against_oracle(window=3, n_kv_heads=2)


def test_embedding_padding_row_gets_no_gradient():
    """PyTorch's convention, which finite differences cannot see: the padding_idx
    row is used by the forward (it is zero) but receives no gradient, and every
    other row gets the sum over the positions that looked it up."""
    from numtransformer.layers import Embedding

    emb = Embedding(5, 3, padding_idx=1, rng=np.random.default_rng(0)).astype(np.float64)
    ids = np.array([[1, 2, 1, 4], [0, 1, 2, 2]])
    dy = np.random.default_rng(1).standard_normal((2, 4, 3))
    out, cache = emb.forward(ids)
    emb.zero_grad()
    emb.backward(dy, cache)
    want = np.zeros((5, 3))
    for pos, i in np.ndenumerate(ids):
        if i != 1:
            want[i] += dy[pos]
    assert np.array_equal(emb.W.grad, want)


def test_merged_lora_layer_input_gradient():
    """A merged LoRA layer runs ``frozen_linear_backward`` (dx = dy W^T, no weight
    gradients); no layer case of ``numtransformer gradcheck`` merges one."""
    from numtransformer.gradcheck import gradcheck
    from numtransformer.layers import Linear, LoRALinear

    rng = np.random.default_rng(2)
    layer = LoRALinear(Linear(5, 4, rng=rng, dtype=np.float64), r=2, rng=rng)
    layer.B.data = rng.standard_normal(layer.B.shape)
    layer.merge()
    gradcheck(layer, rng.standard_normal((3, 2, 5))).assert_passed()
