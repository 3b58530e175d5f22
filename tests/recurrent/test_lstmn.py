"""LSTMN: gradients through the tape, the LSTM it reduces to, causality, attention, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer.gradcheck import gradcheck, numerical_gradient
from numtransformer.recurrent import LSTMN, RNN
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64


def sharpen(lstmn, scale=3.0):
    """Scale the attention parameters so the reads are far from uniform."""
    for p in (lstmn.W_h, lstmn.W_x, lstmn.W_ht, lstmn.v):
        p.data = p.data * scale
    return lstmn


@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 3), H=st.integers(1, 3),
       A=st.integers(1, 3), window=st.none() | st.integers(1, 3), seed=seeds)
def test_gradcheck(B, T, D, H, A, window, seed):
    rng = np.random.default_rng(seed)
    lstmn = sharpen(LSTMN(D, H, attention_size=A, window=window, dtype=F64, rng=rng))
    report = gradcheck(lstmn, rng.standard_normal((B, T, D)), seed=seed, max_entries=16)
    report.assert_passed()


def test_every_past_state_gets_gradient_from_later_reads():
    """Only the last step's h has an upstream gradient; it reaches x_0 through the
    read of slot 0 at the last step as well as step by step, and matches finite
    differences."""
    rng = np.random.default_rng(9)
    B, T, D, H = 2, 6, 3, 4
    x = rng.standard_normal((B, T, D))
    G = np.zeros((B, T, H))
    G[:, -1] = rng.standard_normal((B, H))
    lstmn = sharpen(LSTMN(D, H, dtype=F64, rng=1))
    (h, c, s), cache = lstmn.forward(x)
    dx = lstmn.backward((G, None, None), cache)
    assert np.all(s[:, -1, :-1] > 0)  # the last step reads every earlier slot
    first_step = [np.ravel_multi_index((b, 0, d), x.shape) for b in range(B) for d in range(D)]
    numeric = np.array([numerical_gradient(lambda: float(np.sum(lstmn(x)[0] * G)), x, index=i)
                        for i in first_step])
    assert np.abs(numeric).max() > 1e-4
    np.testing.assert_allclose(dx[:, 0].reshape(-1), numeric, rtol=1e-7,
                               atol=1e-9 * np.abs(numeric).max())


@given(B=st.integers(1, 3), T=st.integers(1, 7), D=st.integers(1, 4), H=st.integers(1, 5),
       seed=seeds)
@settings(max_examples=8)
def test_window_one_reduces_to_lstm(B, T, D, H, seed):
    """Attention forced onto the last state (window=1: s_t = 1 on slot t-1) is an
    LSTM: h~_t = h_{t-1}, c~_t = c_{t-1}.  Same outputs and gradients; the
    attention parameters get exactly zero gradient."""
    rng = np.random.default_rng(seed)
    lstm = RNN("lstm", D, H, dtype=F64, rng=rng)
    lstmn = LSTMN(D, H, window=1, dtype=F64, rng=rng)
    cell = lstm.cells[0]
    lstmn.W_ih.data = cell.W_ih.data.copy()
    lstmn.W_hh.data = cell.W_hh.data.copy()
    lstmn.b.data = cell.b_ih.data + cell.b_hh.data
    x = rng.standard_normal((B, T, D))
    G = rng.standard_normal((B, T, H))

    (y, h_n, c_n), cache = lstm.forward(x)
    dx = lstm.backward((G, None, None), cache)
    (h, c, s), cache_n = lstmn.forward(x)
    dx_n = lstmn.backward((G, None, None), cache_n)

    tol = dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, y, **tol)
    np.testing.assert_allclose(c[:, -1], c_n[0], **tol)
    np.testing.assert_array_equal(s[:, 1:], np.broadcast_to(np.eye(T, k=-1)[1:], (B, T - 1, T)))
    np.testing.assert_allclose(dx_n, dx, **tol)
    np.testing.assert_allclose(lstmn.W_ih.grad, cell.W_ih.grad, **tol)
    np.testing.assert_allclose(lstmn.W_hh.grad, cell.W_hh.grad, **tol)
    np.testing.assert_allclose(lstmn.b.grad, cell.b_ih.grad, **tol)
    for p in (lstmn.W_h, lstmn.W_x, lstmn.W_ht, lstmn.v):
        assert np.abs(p.grad).max() < 1e-14


@given(T=st.integers(1, 4), extra=st.integers(1, 3), window=st.none() | st.integers(1, 2),
       seed=seeds)
def test_causal_extra_steps_change_nothing_before_them(T, extra, window, seed):
    rng = np.random.default_rng(seed)
    lstmn = sharpen(LSTMN(2, 3, window=window, dtype=F64, rng=rng))
    x = rng.standard_normal((2, T + extra, 2))
    G = [rng.standard_normal((2, T, 3)), rng.standard_normal((2, T, 3)),
         rng.standard_normal((2, T, T))]
    out, cache = lstmn.forward(x[:, :T])
    dx = lstmn.backward(tuple(G), cache)
    grads = [p.grad.copy() for p in lstmn.parameters()]
    lstmn.zero_grad()
    out_l, cache_l = lstmn.forward(x)
    G_l = [np.zeros_like(o) for o in out_l]
    G_l[0][:, :T], G_l[1][:, :T], G_l[2][:, :T, :T] = G
    dx_l = lstmn.backward(tuple(G_l), cache_l)
    tol = dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out_l[0][:, :T], out[0], **tol)
    np.testing.assert_allclose(out_l[1][:, :T], out[1], **tol)
    np.testing.assert_allclose(out_l[2][:, :T, :T], out[2], **tol)
    np.testing.assert_allclose(dx_l[:, :T], dx, **tol)
    np.testing.assert_array_equal(dx_l[:, T:], 0)
    for p, g in zip(lstmn.parameters(), grads):
        np.testing.assert_allclose(p.grad, g, **tol)


@pytest.mark.parametrize("window", [None, 2])
def test_attention_weights(window):
    rng = np.random.default_rng(3)
    T = 6
    lstmn = sharpen(LSTMN(3, 4, window=window, rng=rng))
    _, _, s = lstmn(rng.standard_normal((2, T, 3)).astype(np.float32))
    assert s.shape == (2, T, T) and s.dtype == np.float32
    np.testing.assert_array_equal(s[:, 0], 0)  # t = 0: the tape is empty
    readable = np.tril(np.ones((T, T), bool), k=-1)
    if window is not None:
        readable &= ~np.tril(np.ones((T, T), bool), k=-window - 1)
    assert np.all(s[:, readable] > 0)
    np.testing.assert_array_equal(s[:, ~readable], 0)
    np.testing.assert_allclose(s[:, 1:].sum(axis=-1), 1, rtol=1e-6)


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    lstmn = LSTMN(3, 2, attention_size=4, window=2, rng=rng)
    check_dtype_preserved(lstmn, rng.standard_normal((2, 5, 3)).astype(np.float32))


def test_backward_accepts_partial_upstream():
    rng = np.random.default_rng(1)
    lstmn = LSTMN(2, 3, dtype=F64, rng=rng)
    x = rng.standard_normal((2, 4, 2))
    G = rng.standard_normal((2, 4, 3))
    _, cache = lstmn.forward(x)
    dx1 = lstmn.backward(G, cache)
    dx2 = lstmn.backward((G, None, None), cache)
    dx3 = lstmn.backward((G, np.zeros((2, 4, 3)), np.zeros((2, 4, 4))), cache)
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_allclose(dx1, dx3, rtol=1e-14, atol=1e-16)


def test_bad_inputs():
    lstmn = LSTMN(4, 3, rng=0)
    with pytest.raises(ValueError, match=r"LSTMN: x has last dim 5, expected input_size=4"):
        lstmn(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"LSTMN: x must have 3 dims, got shape \(3, 4\)"):
        lstmn(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match=r"LSTMN: x has dtype float64"):
        lstmn(np.zeros((2, 3, 4)))
    x = np.zeros((2, 3, 4), np.float32)
    x[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"LSTMN: x contains 1 NaN/inf"):
        lstmn(x)
    with pytest.raises(ValueError, match=r"LSTMN: x has no time steps"):
        lstmn(np.zeros((2, 0, 4), np.float32))
    out, cache = lstmn.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError,
                       match=r"LSTMN.backward: d_s has shape \(2, 3, 2\), expected \(2, 3, 3\)"):
        lstmn.backward((out[0], None, np.zeros((2, 3, 2), np.float32)), cache)
    with pytest.raises(ValueError, match=r"LSTMN: window must be >= 1, got 0"):
        LSTMN(4, 3, window=0)
    with pytest.raises(TypeError, match=r"LSTMN: attention_size must be an int"):
        LSTMN(4, 3, attention_size=2.5)
