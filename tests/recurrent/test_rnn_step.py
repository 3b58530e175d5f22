"""RNN.step / RNN.step_backward: stepping a stacked RNN one time step at a time
equals forward over the T steps, outputs and gradients; its backward passes a
gradient check of its own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer.gradcheck import gradcheck
from numtransformer.module import Module
from numtransformer.recurrent import RNN
from tests.helpers import seeds

F64 = np.float64
CELL_TYPES = ["rnn", "lstm", "gru"]


def n_states(cell_type):
    return 2 if cell_type == "lstm" else 1


class Stepped(Module):
    """An RNN run by hand, T calls of ``step``: forward(x, h0[, c0]) ->
    (output (B, T, H), h_n[, c_n]) in ``RNN.forward``'s format."""

    def __init__(self, rnn: RNN):
        self.rnn = rnn

    def forward(self, x, *states0):
        L = self.rnn.num_layers
        states = [tuple(s[layer] for s in states0) for layer in range(L)] if states0 else None
        ys, caches = [], []
        for t in range(x.shape[1]):
            y, states, cache = self.rnn.step(x[:, t], states)
            ys.append(y)
            caches.append(cache)
        out = (np.stack(ys, axis=1),) + tuple(np.stack([s[j] for s in states])
                                              for j in range(len(states[0])))
        return out, (caches, len(states0))

    def backward(self, dout, cache):
        caches, n_given = cache
        d_output, *d_final = dout
        L = self.rnn.num_layers
        dstates = [tuple(d[layer] for d in d_final) for layer in range(L)]
        dxs = []
        for t in reversed(range(len(caches))):
            dx, dstates = self.rnn.step_backward(d_output[:, t], dstates, caches[t])
            dxs.append(dx)
        dx = np.stack(dxs[::-1], axis=1)
        if not n_given:
            return dx
        d0 = tuple(np.stack([dstates[layer][j] for layer in range(L)]) for j in range(n_given))
        return (dx,) + d0


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@given(B=st.integers(1, 4), T=st.integers(1, 5), D=st.integers(1, 4), H=st.integers(1, 4),
       num_layers=st.integers(1, 3), with_states=st.booleans(),
       dtype=st.sampled_from([np.float64, np.float32]), seed=seeds)
def test_stepping_T_times_equals_forward(cell_type, B, T, D, H, num_layers, with_states, dtype,
                                         seed):
    rng = np.random.default_rng(seed)
    a = RNN(cell_type, D, H, num_layers=num_layers, dtype=dtype, rng=seed)
    b = RNN(cell_type, D, H, num_layers=num_layers, dtype=dtype, rng=seed)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    states0 = tuple(rng.standard_normal((num_layers, B, H)).astype(dtype)
                    for _ in range(n_states(cell_type))) if with_states else ()
    G = [rng.standard_normal((B, T, H)).astype(dtype)] + \
        [rng.standard_normal((num_layers, B, H)).astype(dtype)
         for _ in range(n_states(cell_type))]

    out_a, cache_a = a.forward(x, *states0)
    grads_a = a.backward(tuple(G), cache_a)
    stepped = Stepped(b)
    out_b, cache_b = stepped.forward(x, *states0)
    grads_b = stepped.backward(tuple(G), cache_b)

    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=2e-5, atol=2e-6)
    for o_a, o_b in zip(out_a, out_b):
        assert o_b.dtype == dtype
        np.testing.assert_allclose(o_b, o_a, **tol)
    grads_a = grads_a if isinstance(grads_a, tuple) else (grads_a,)
    grads_b = grads_b if isinstance(grads_b, tuple) else (grads_b,)
    assert len(grads_a) == len(grads_b) == 1 + len(states0)
    for g_a, g_b in zip(grads_a, grads_b):
        np.testing.assert_allclose(g_b, g_a, **tol)
    for (name, p_a), (_, p_b) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(p_b.grad, p_a.grad, err_msg=name, **tol)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@given(B=st.integers(1, 3), T=st.integers(1, 4), num_layers=st.integers(1, 2),
       dropout=st.sampled_from([0.0, 0.4]), seed=seeds)
def test_step_gradcheck(cell_type, B, T, num_layers, dropout, seed):
    """The step API's own backward (dropout between layers included) against
    finite differences, for the inputs, the initial states and every parameter."""
    rng = np.random.default_rng(seed)
    rnn = RNN(cell_type, 3, 2, num_layers=num_layers, dropout=dropout, dtype=F64, rng=rng)
    states0 = [rng.standard_normal((num_layers, B, 2)) for _ in range(n_states(cell_type))]
    gradcheck(Stepped(rnn), rng.standard_normal((B, T, 3)), *states0, seed=seed,
              max_entries=12).assert_passed()


def test_step_defaults_and_errors():
    rnn = RNN("lstm", 3, 2, num_layers=2, dtype=F64, rng=0)
    x = np.random.default_rng(0).standard_normal((4, 3))
    h, states, cache = rnn.step(x)  # states None: zeros
    zeros = [(np.zeros((4, 2)), np.zeros((4, 2)))] * 2
    h2, states2, _ = rnn.step(x, zeros)
    np.testing.assert_array_equal(h, h2)
    assert len(states) == 2 and all(len(s) == 2 for s in states)
    dx, dprev = rnn.step_backward(np.ones((4, 2)), None, cache)  # dstates None: zeros
    dx2, _ = rnn.step_backward(np.ones((4, 2)), [(None, None), None], cache)
    np.testing.assert_array_equal(dx, dx2)
    assert dx.shape == (4, 3) and len(dprev) == 2
    with pytest.raises(ValueError, match="RNN.step: a bidirectional RNN"):
        RNN("gru", 3, 2, bidirectional=True).step(x.astype(np.float32))


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@given(B=st.integers(1, 3), T=st.integers(1, 5), num_layers=st.integers(1, 3),
       dtype=st.sampled_from([np.float64, np.float32]), seed=seeds)
def test_deferred_step_grads_equal_per_step_grads(cell_type, B, T, num_layers, dtype, seed):
    """step_backward(..., grads=...) + add_step_grads gives the per-step gradients
    (the same sums in another order): dx and the carried states exactly, the
    weight gradients to rounding."""
    rng = np.random.default_rng(seed)
    rnn = RNN(cell_type, 3, 4, num_layers=num_layers, dtype=dtype, rng=seed)
    x = rng.standard_normal((B, T, 3)).astype(dtype)
    dh = rng.standard_normal((B, T, 4)).astype(dtype)
    results = []
    for defer in (False, True):
        rnn.zero_grad()
        caches, states = [], None
        for t in range(T):
            _, states, cache = rnn.step(x[:, t], states)
            caches.append(cache)
        grads = rnn.new_step_grads() if defer else None
        dstates, dxs = None, []
        for t in reversed(range(T)):
            dx, dstates = rnn.step_backward(dh[:, t], dstates, caches[t], grads=grads)
            dxs.append(dx)
        if defer:
            rnn.add_step_grads(grads)
            assert all(not rows for rows in grads.layers)  # consumed
        results.append((dxs, [d for layer in dstates for d in layer],
                        [p.grad.copy() for p in rnn.parameters()]))
    (dx0, ds0, g0), (dx1, ds1, g1) = results
    for a, b in zip(dx0 + ds0, dx1 + ds1):
        np.testing.assert_array_equal(a, b)
    tol = 1e-13 if dtype == np.float64 else 1e-5
    for a, b in zip(g0, g1):
        assert b.dtype == dtype
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * max(1.0, float(np.abs(a).max())))
