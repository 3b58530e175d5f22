"""The recurrent modules give the same outputs and gradients on the reference
kernels and on the fast ones (the module's two paths: W_hh^T and out= only on
the fast one), float64 and float32, with padding, stacking and both directions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer.kernels import use_kernels
from numtransformer.recurrent import LSTMN, RNN, GRUCell, LSTMCell, RNNCell
from tests.helpers import seeds

TOL = {np.float64: dict(rtol=1e-11, atol=1e-12), np.float32: dict(rtol=1e-4, atol=2e-5)}
dtypes = st.sampled_from([np.float64, np.float32])


def _run(module, inputs, G, mode, **kwargs):
    module.zero_grad()
    with use_kernels(mode):
        out, cache = module.forward(*inputs, **kwargs)
        grads = module.backward(G, cache)
    out = out if isinstance(out, tuple) else (out,)
    grads = grads if isinstance(grads, tuple) else (grads,)
    params = {name: p.grad.copy() for name, p in module.named_parameters()}
    return out, grads, params


def _compare(a, b, dtype):
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert x.dtype == y.dtype == dtype
        np.testing.assert_allclose(x, y, **TOL[dtype])
    for name in a[2]:
        np.testing.assert_allclose(a[2][name], b[2][name], err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@given(B=st.integers(1, 4), T=st.integers(1, 5), H=st.integers(1, 6),
       num_layers=st.integers(1, 2), bidirectional=st.booleans(), padded=st.booleans(),
       dtype=dtypes, seed=seeds)
def test_rnn_fast_equals_reference(cell_type, B, T, H, num_layers, bidirectional, padded,
                                   dtype, seed):
    rng = np.random.default_rng(seed)
    rnn = RNN(cell_type, 3, H, num_layers=num_layers, bidirectional=bidirectional,
              dtype=dtype, rng=seed)
    S = num_layers * (2 if bidirectional else 1)
    n = 2 if cell_type == "lstm" else 1
    states = [rng.standard_normal((S, B, H)).astype(dtype) for _ in range(n)]
    x = rng.standard_normal((B, T, 3)).astype(dtype)
    G = (rng.standard_normal((B, T, H * S // num_layers)).astype(dtype),) + \
        tuple(rng.standard_normal((S, B, H)).astype(dtype) for _ in range(n))
    kwargs = {"lengths": rng.integers(0, T + 1, B)} if padded else {}
    _compare(_run(rnn, (x, *states), G, "fast", **kwargs),
             _run(rnn, (x, *states), G, "reference", **kwargs), dtype)


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell, GRUCell], ids=lambda c: c.__name__)
@given(B=st.integers(1, 4), H=st.integers(1, 6), dtype=dtypes, seed=seeds)
def test_cells_fast_equal_reference(cls, B, H, dtype, seed):
    rng = np.random.default_rng(seed)
    cell = cls(3, H, dtype=dtype, rng=seed)
    n = len(cell.state_names)
    inputs = (rng.standard_normal((B, 3)).astype(dtype),) + \
        tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(n))
    G = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(n))
    G = G[0] if n == 1 else G
    _compare(_run(cell, inputs, G, "fast"), _run(cell, inputs, G, "reference"), dtype)


@given(B=st.integers(1, 3), T=st.integers(1, 6), H=st.integers(1, 4),
       window=st.none() | st.integers(1, 3), dtype=dtypes, seed=seeds)
def test_lstmn_fast_equals_reference(B, T, H, window, dtype, seed):
    rng = np.random.default_rng(seed)
    lstmn = LSTMN(2, H, attention_size=H + 1, window=window, dtype=dtype, rng=seed)
    x = rng.standard_normal((B, T, 2)).astype(dtype)
    G = (rng.standard_normal((B, T, H)).astype(dtype), rng.standard_normal((B, T, H)).astype(dtype),
         rng.standard_normal((B, T, T)).astype(dtype))
    _compare(_run(lstmn, (x,), G, "fast"), _run(lstmn, (x,), G, "reference"), dtype)
