"""Parity through ``from_torch`` for the layers below the Transformer.

tests/parity/test_core_torch.py, test_attention_torch.py and
test_recurrent_torch.py already compare these layers with torch using weights
copied by hand; here the copy is ``from_torch`` itself, so the weight map (the
transposes, the in_proj_bias slices, the ``_l{l}_reverse`` names) is what is
under test.  Same method and tolerances as tests/parity/test_transformer_torch.py:
float64 outputs, input gradients and every parameter gradient to 1e-10
relative; float32 forward to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from tests.helpers import seeds  # noqa: E402
from tests.parity.test_transformer_torch import (_report, check_forward32,  # noqa: E402,F401
                                                 check_pair, key_padding, perturb)


# -- core layers -------------------------------------------------------------------------------
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=3), D_in=st.integers(1, 5),
       D_out=st.integers(1, 5), bias=st.booleans(), seed=seeds)
def test_linear(lead, D_in, D_out, bias, seed):
    torch.manual_seed(seed)
    t = torch.nn.Linear(D_in, D_out, bias=bias, dtype=torch.float64)
    inputs = {"x": np.random.default_rng(seed).standard_normal((*lead, D_in))}
    check_pair("Linear", t, inputs, lambda m, x: m.forward(x), lambda m, x: m(x), seed)
    check_forward32("Linear", t, inputs, lambda m, x: m.forward(x), lambda m, x: m(x))


@given(V=st.integers(1, 6), D=st.integers(1, 4), shape=st.lists(st.integers(1, 3), min_size=1,
       max_size=2), pad=st.booleans(), seed=seeds)
def test_embedding(V, D, shape, pad, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t = torch.nn.Embedding(V, D, padding_idx=(V - 1) if pad else None, dtype=torch.float64)
    ids = rng.integers(0, V, size=shape)
    tids = torch.from_numpy(ids)
    check_pair("Embedding", t, {}, lambda m: m.forward(ids), lambda m: m(tids), seed)
    check_forward32("Embedding", t, {}, lambda m: m.forward(ids), lambda m: m(tids))


@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=2), affine=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-3, 1e-12]), seed=seeds)
def test_layernorm(lead, shape, affine, eps, seed):
    if np.prod(shape) < 3:  # at n <= 2 the normalised output is constant: zero gradients
        shape = [3] + shape[1:]
    torch.manual_seed(seed)
    t = torch.nn.LayerNorm(shape, eps=eps, elementwise_affine=affine, dtype=torch.float64)
    perturb(t, seed)
    inputs = {"x": np.random.default_rng(seed).standard_normal((*lead, *shape))}
    check_pair("LayerNorm", t, inputs, lambda m, x: m.forward(x), lambda m, x: m(x), seed)
    check_forward32("LayerNorm", t, inputs, lambda m, x: m.forward(x), lambda m, x: m(x))


@given(B=st.integers(1, 3), Tq=st.integers(1, 4), Tk=st.integers(1, 4), nhead=st.integers(1, 3),
       d_k=st.integers(1, 3), kdim=st.none() | st.integers(1, 4),
       vdim=st.none() | st.integers(1, 4), bias=st.booleans(), use_kpm=st.booleans(),
       self_attention=st.booleans(), seed=seeds)
def test_multihead_attention(B, Tq, Tk, nhead, d_k, kdim, vdim, bias, use_kpm, self_attention,
                             seed):
    E = nhead * d_k
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if self_attention:
        kdim = vdim = None
        Tk = Tq
    t = torch.nn.MultiheadAttention(E, nhead, bias=bias, kdim=kdim, vdim=vdim, batch_first=True,
                                    dtype=torch.float64)
    perturb(t, seed)
    kpm = key_padding(rng, B, Tk) if use_kpm else None
    tkpm = None if kpm is None else torch.from_numpy(kpm)
    q = rng.standard_normal((B, Tq, E))
    if self_attention and kdim is None and vdim is None:
        inputs = {"x": q}
        ours_call = lambda m, x: m.forward(x, key_padding_mask=kpm)  # noqa: E731
        torch_call = lambda m, x: m(x, x, x, key_padding_mask=tkpm, need_weights=False)  # noqa
    else:
        inputs = {"query": q, "key": rng.standard_normal((B, Tk, kdim or E)),
                  "value": rng.standard_normal((B, Tk, vdim or E))}
        ours_call = lambda m, q, k, v: m.forward(q, k, v, key_padding_mask=kpm)  # noqa: E731
        torch_call = lambda m, q, k, v: m(q, k, v, key_padding_mask=tkpm,  # noqa: E731
                                          need_weights=False)
    first = lambda out: (out[0],)  # noqa: E731  torch returns (y, None)
    check_pair("MultiheadAttention", t, inputs, ours_call, torch_call, seed,
               ours_outputs=lambda out: (out,), torch_outputs=first)
    check_forward32("MultiheadAttention", t, inputs, ours_call, torch_call,
                    ours_outputs=lambda out: (out,), torch_outputs=first)


# -- recurrent ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
@given(B=st.integers(1, 3), D=st.integers(1, 4), H=st.integers(1, 4), with_state=st.booleans(),
       seed=seeds)
def test_cells(kind, B, D, H, with_state, seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t = getattr(torch.nn, kind)(D, H, dtype=torch.float64)
    lstm = kind == "LSTMCell"
    inputs = {"x": rng.standard_normal((B, D))}
    if with_state:
        inputs["h"] = rng.standard_normal((B, H))
        if lstm:
            inputs["c"] = rng.standard_normal((B, H))

    def torch_call(m, x, *states):
        if not states:
            return m(x)
        return m(x, tuple(states) if lstm else states[0])

    check_pair(kind, t, inputs, lambda m, *a: m.forward(*a), torch_call, seed)
    check_forward32(kind, t, inputs, lambda m, *a: m.forward(*a), torch_call)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@given(B=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(1, 3), H=st.integers(1, 3),
       num_layers=st.integers(1, 2), bidirectional=st.booleans(), batch_first=st.booleans(),
       with_state=st.booleans(), seed=seeds)
def test_rnn_layers(kind, B, T, D, H, num_layers, bidirectional, batch_first, with_state, seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t = getattr(torch.nn, kind)(D, H, num_layers=num_layers, bidirectional=bidirectional,
                                batch_first=batch_first, dtype=torch.float64)
    lstm = kind == "LSTM"
    S = num_layers * (2 if bidirectional else 1)
    inputs = {"x": rng.standard_normal((B, T, D))}
    if with_state:
        inputs["h0"] = rng.standard_normal((S, B, H))
        if lstm:
            inputs["c0"] = rng.standard_normal((S, B, H))

    def torch_call(m, x, *states):
        if not m.batch_first:  # ours is (B, T, D) whatever torch's layout is
            x = x.transpose(0, 1)
        hx = None if not states else (tuple(states) if lstm else states[0])
        y, hn = m(x, hx)
        if not m.batch_first:
            y = y.transpose(0, 1)
        return (y,) + (tuple(hn) if lstm else (hn,))

    name = f"{kind}(layers, bidirectional, batch_first)"
    check_pair(name, t, inputs, lambda m, *a: m.forward(*a), torch_call, seed)
    check_forward32(name, t, inputs, lambda m, *a: m.forward(*a), torch_call)
