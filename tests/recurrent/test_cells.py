"""RNNCell, LSTMCell, GRUCell: gradients, gates, state carrying, dtype and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer.gradcheck import gradcheck, numerical_gradient
from numtransformer.recurrent import RNN, GRUCell, LSTMCell, RNNCell
from numtransformer.recurrent.cells import transposed_copy
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64
CELLS = [RNNCell, LSTMCell, GRUCell]
N_STATES = {RNNCell: 1, LSTMCell: 2, GRUCell: 1}
GATES = {RNNCell: ["tanh"], LSTMCell: ["i", "f", "g", "o"], GRUCell: ["r", "z", "n"]}
CELL_TYPE = {RNNCell: "rnn", LSTMCell: "lstm", GRUCell: "gru"}


def _loss_of(outs, G):
    outs = outs if isinstance(outs, tuple) else (outs,)
    return float(sum(np.sum(o * g) for o, g in zip(outs, G)))


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
@given(B=st.integers(1, 3), D=st.integers(1, 4), H=st.integers(1, 4),
       given_states=st.lists(st.booleans(), min_size=2, max_size=2), seed=seeds)
def test_gradcheck(cls, B, D, H, given_states, seed):
    rng = np.random.default_rng(seed)
    cell = cls(D, H, dtype=F64, rng=rng)
    states = [rng.standard_normal((B, H)) if g else None
              for g in given_states[:N_STATES[cls]]]
    report = gradcheck(cell, rng.standard_normal((B, D)), *states, seed=seed)
    report.assert_passed()


@pytest.mark.parametrize("bias", ["b_ih", "b_hh"])
@pytest.mark.parametrize("cls,k", [(c, k) for c in CELLS for k in range(len(GATES[c]))],
                         ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_bias_gradient_of_each_gate(cls, k, bias):
    """Each gate's bias block gets its own gate's gradient (not a neighbour's)."""
    rng = np.random.default_rng(100 + k)
    B, D, H = 3, 2, 3
    cell = cls(D, H, dtype=F64, rng=rng)
    x = rng.standard_normal((B, D))
    states = [rng.standard_normal((B, H)) for _ in range(N_STATES[cls])]
    G = [rng.standard_normal((B, H)) for _ in states]
    out, cache = cell.forward(x, *states)
    cell.backward(tuple(G) if len(G) > 1 else G[0], cache)
    b = getattr(cell, bias)
    block = slice(k * H, (k + 1) * H)
    analytic = b.grad[block]
    numeric = np.array([numerical_gradient(lambda: _loss_of(cell(x, *states), G), b.data,
                                           index=k * H + j) for j in range(H)])
    assert np.abs(numeric).max() > 1e-3, "gate not exercised"
    err = np.abs(analytic - numeric).max() / np.abs(numeric).max()
    assert err < 1e-7, f"{cls.__name__} gate {GATES[cls][k]} {bias}: error {err:.2e}"


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_states_carried_between_steps(cls):
    """Chaining the cell by hand (dh_next, dc_next carried) equals the unrolled RNN."""
    rng = np.random.default_rng(3)
    B, T, D, H = 2, 4, 3, 2
    n = N_STATES[cls]
    rnn = RNN(CELL_TYPE[cls], D, H, dtype=F64, rng=rng)
    cell = rnn.cells[0]
    x = rng.standard_normal((B, T, D))
    states0 = [rng.standard_normal((B, H)) for _ in range(n)]
    G_out = rng.standard_normal((B, T, H))
    G_n = [rng.standard_normal((B, H)) for _ in range(n)]

    out, cache = rnn.forward(x, *(s[None] for s in states0))
    dx_rnn, *dstates_rnn = rnn.backward((G_out, *(g[None] for g in G_n)), cache)
    grads_rnn = [p.grad.copy() for p in cell.parameters()]
    rnn.zero_grad()

    states, caches, hs = list(states0), [], []
    for t in range(T):
        new, c = cell.forward(x[:, t], *states)
        states = list(new) if n == 2 else [new]
        caches.append(c)
        hs.append(states[0])
    np.testing.assert_allclose(np.stack(hs, axis=1), out[0], rtol=1e-13, atol=1e-14)
    dstates, dxs = list(G_n), []
    for t in reversed(range(T)):
        dstates[0] = dstates[0] + G_out[:, t]
        dx_t, *dstates = cell.backward(tuple(dstates) if n == 2 else dstates[0], caches[t])
        dxs.append(dx_t)
    np.testing.assert_allclose(np.stack(dxs[::-1], axis=1), dx_rnn, rtol=1e-12, atol=1e-13)
    for a, b in zip(dstates, dstates_rnn):
        np.testing.assert_allclose(a, b[0], rtol=1e-12, atol=1e-13)
    for p, g in zip(cell.parameters(), grads_rnn):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_float32_stays_float32(cls):
    rng = np.random.default_rng(0)
    cell = cls(3, 2, rng=rng)
    states = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(N_STATES[cls])]
    check_dtype_preserved(cell, rng.standard_normal((4, 3)).astype(np.float32), *states)


def test_lstm_backward_accepts_missing_upstream():
    rng = np.random.default_rng(1)
    cell = LSTMCell(2, 3, dtype=F64, rng=rng)
    x, h, c = rng.standard_normal((2, 2)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    G = rng.standard_normal((2, 3))
    _, cache = cell.forward(x, h, c)
    dx1, dh1, dc1 = cell.backward((G, None), cache)
    dx2, dh2, dc2 = cell.backward((G, np.zeros((2, 3))), cache)
    dx3, dh3, dc3 = cell.backward(G, cache)
    for a, b, c_ in ((dx1, dx2, dx3), (dh1, dh2, dh3), (dc1, dc2, dc3)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c_)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_bad_inputs(cls):
    cell = cls(4, 3, rng=0)
    x = np.zeros((2, 4), np.float32)
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"{name}: x has last dim 5, expected input_size=4"):
        cell(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=rf"{name}: x must have 2 dims"):
        cell(np.zeros((2, 1, 4), np.float32))
    with pytest.raises(TypeError, match=rf"{name}: x has dtype float64"):
        cell(np.zeros((2, 4)))
    with pytest.raises(TypeError, match=rf"{name}: x must be a floating-point array"):
        cell(np.zeros((2, 4), np.int64))
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=rf"{name}: x contains 1 NaN/inf"):
        cell(bad)
    with pytest.raises(ValueError, match=rf"{name}: h has shape \(3, 3\), expected \(2, 3\)"):
        cell(x, np.zeros((3, 3), np.float32))
    h = np.zeros((2, 3), np.float32)
    h[0, 0] = np.inf
    with pytest.raises(ValueError, match=rf"{name}: h contains 1 NaN/inf"):
        cell(x, h)


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="LSTMCell: hidden_size must be >= 1, got 0"):
        LSTMCell(3, 0)
    with pytest.raises(TypeError, match="GRUCell: input_size must be an int"):
        GRUCell(3.0, 2)
    with pytest.raises(TypeError, match="RNNCell: dtype must be float32 or float64"):
        RNNCell(3, 2, dtype=np.int32)


def test_float32_lstm_with_one_hidden_unit_matches_float64():
    """The gates are computed in place on column views of one array; with H = 1 those
    views are strided single columns (numpy 2.4 once miscomputed an in-place negative
    on such views, which the sigmoid avoids)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 2))
    rnn64 = RNN("lstm", 2, 1, dtype=np.float64, rng=0)
    rnn32 = RNN("lstm", 2, 1, dtype=np.float32, rng=0)
    rnn32.load_state_dict({k: v.astype(np.float32) for k, v in rnn64.state_dict().items()})
    y64 = rnn64(x)[0]
    y32 = rnn32(x.astype(np.float32))[0]
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=1e-6)


@given(rows=st.integers(0, 40), cols=st.integers(0, 70), f32=st.booleans(), seed=seeds)
def test_transposed_copy_is_a_contiguous_transpose(rows, cols, f32, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(
        np.float32 if f32 else F64)
    wt = transposed_copy(w)
    assert wt.flags.c_contiguous and wt.dtype == w.dtype
    np.testing.assert_array_equal(wt, w.T)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_step_with_transposed_weights_and_out_matches_plain_step(cls):
    """The unrolled RNN passes a contiguous W_hh^T to step_backward and has
    da_x written into a strided view of its (B, T, G*H) buffer."""
    rng = np.random.default_rng(3)
    B, D, H, T = 4, 3, 5, 2
    cell = cls(D, H, dtype=F64, rng=rng)
    xw = rng.standard_normal((B, cell.n_gates * H))
    states = [rng.standard_normal((B, H)) for _ in range(N_STATES[cls])]
    douts = [rng.standard_normal((B, H)) for _ in range(N_STATES[cls])]
    W_hh_T = transposed_copy(cell.W_hh.data)
    _, step_a = cell.step(xw, *states)
    buf = np.full((B, T, cell.n_gates * H), np.nan)
    da_x, da_h, prev = cell.step_backward(*douts, step_a)
    da_x2, da_h2, prev2 = cell.step_backward(*douts, step_a, W_hh_T=W_hh_T, out=buf[:, 1])
    assert da_x2 is buf[:, 1] or np.shares_memory(da_x2, buf)
    assert np.isnan(buf[:, 0]).all()  # only its own time step is written
    for a, b in zip((da_x, da_h) + tuple(prev), (buf[:, 1], da_h2) + tuple(prev2)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
