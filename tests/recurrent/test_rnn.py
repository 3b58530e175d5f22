"""RNN: BPTT gradients, lengths, stacking, bidirectionality, dropout, dtype and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer.gradcheck import gradcheck, numerical_gradient
from numtransformer.recurrent import RNN
from numtransformer.recurrent.rnn import reverse_index
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64
CELL_TYPES = ["rnn", "lstm", "gru"]


def n_states(cell_type):
    return 2 if cell_type == "lstm" else 1


def reverse_within(x, lengths):
    """Reverse each sequence of x (B, T, ...) within its own length (padding stays put)."""
    out = x.copy()
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n][::-1]
    return out


def loss(out, G):
    return float(sum(np.sum(o * g) for o, g in zip(out, G)))


# -- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 3), H=st.integers(1, 3),
       num_layers=st.integers(1, 2), bidirectional=st.booleans(), with_states=st.booleans(),
       dropout=st.sampled_from([0.0, 0.3]), data=st.data(), seed=seeds)
def test_gradcheck(cell_type, B, T, D, H, num_layers, bidirectional, with_states, dropout,
                   data, seed):
    rng = np.random.default_rng(seed)
    rnn = RNN(cell_type, D, H, num_layers=num_layers, bidirectional=bidirectional,
              dropout=dropout, dtype=F64, rng=rng)
    S = num_layers * (2 if bidirectional else 1)
    states = [rng.standard_normal((S, B, H)) for _ in range(n_states(cell_type))] \
        if with_states else []
    lengths = data.draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    kwargs = {} if lengths is None else {"lengths": np.array(lengths)}
    report = gradcheck(rnn, rng.standard_normal((B, T, D)), *states, seed=seed,
                       max_entries=12, **kwargs)
    report.assert_passed()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_gradcheck_long_sequence(cell_type):
    """T = 6 with initial states and upstream gradients on every output and on
    the final states: a dropped dh_next/dc_next fails here."""
    rng = np.random.default_rng(8)
    rnn = RNN(cell_type, 2, 3, dtype=F64, rng=rng)
    states = [rng.standard_normal((1, 2, 3)) for _ in range(n_states(cell_type))]
    gradcheck(rnn, rng.standard_normal((2, 6, 2)), *states).assert_passed()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_gradient_reaches_first_step(cell_type):
    """dh_next (and dc_next) must be carried back: with upstream gradient on the
    last output only, dx at t = 0 is nonzero and matches finite differences."""
    rng = np.random.default_rng(5)
    B, T, D, H = 2, 5, 3, 3
    rnn = RNN(cell_type, D, H, dtype=F64, rng=rng)
    x = rng.standard_normal((B, T, D))
    G = np.zeros((B, T, H))
    G[:, -1] = rng.standard_normal((B, H))
    out, cache = rnn.forward(x)
    dx = rnn.backward((G, None), cache)
    first_step = [np.ravel_multi_index((b, 0, d), x.shape) for b in range(B) for d in range(D)]
    numeric = np.array([numerical_gradient(lambda: float(np.sum(rnn(x)[0] * G)), x, index=i)
                        for i in first_step])
    analytic = dx[:, 0].reshape(-1)
    assert np.abs(numeric).max() > 1e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9 * np.abs(numeric).max())


# -- lengths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 3), H=st.integers(1, 3),
       extra=st.integers(0, 3), seed=seeds)
@settings(max_examples=4)
def test_padding_leaves_real_steps_unchanged(cell_type, num_layers, bidirectional, B, T, D, H,
                                             extra, seed):
    """Each sequence of a padded batch gives the outputs, final states and
    gradients it gives alone, whatever is in (or flows into) the padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T  # the longest sequence fills the T real columns; `extra` pads them all
    rnn = RNN(cell_type, D, H, num_layers=num_layers, bidirectional=bidirectional,
              dtype=F64, rng=rng)
    S, dirs = rnn.num_layers * rnn.num_directions, rnn.num_directions
    k = n_states(cell_type)
    x = rng.standard_normal((B, T + extra, D)) * 3  # padding holds garbage
    states = [rng.standard_normal((S, B, H)) for _ in range(k)]
    G = rng.standard_normal((B, T + extra, dirs * H))  # upstream on padding is ignored
    G_n = [rng.standard_normal((S, B, H)) for _ in range(k)]

    out, cache = rnn.forward(x, *states, lengths=lengths)
    dx, *dstates = rnn.backward((G, *G_n), cache)
    batch_grads = [p.grad.copy() for p in rnn.parameters()]
    for b, n in enumerate(lengths):
        assert np.all(out[0][b, n:] == 0), "outputs at padded steps must be zero"
        assert np.all(dx[b, n:] == 0), "padded steps must receive no gradient"

    rnn.zero_grad()
    for b, n in enumerate(lengths):
        out_b, cache_b = rnn.forward(x[b:b + 1, :n], *(s[:, b:b + 1] for s in states))
        dx_b, *dstates_b = rnn.backward((G[b:b + 1, :n], *(g[:, b:b + 1] for g in G_n)), cache_b)
        np.testing.assert_allclose(out[0][b, :n], out_b[0][0], rtol=1e-12, atol=1e-14)
        for o, o_b in zip(out[1:], out_b[1:]):
            np.testing.assert_allclose(o[:, b], o_b[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dx[b, :n], dx_b[0], rtol=1e-12, atol=1e-14)
        for d, d_b in zip(dstates, dstates_b):
            np.testing.assert_allclose(d[:, b], d_b[:, 0], rtol=1e-12, atol=1e-14)
    for p, g in zip(rnn.parameters(), batch_grads):  # summed over the sequences
        np.testing.assert_allclose(p.grad, g, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_extra_padding_steps_change_nothing(cell_type):
    rng = np.random.default_rng(12)
    B, T, D, H = 2, 3, 2, 3
    lengths = np.array([3, 2])
    rnn = RNN(cell_type, D, H, bidirectional=True, dtype=F64, rng=rng)
    x = rng.standard_normal((B, T, D))
    x_long = np.concatenate([x, rng.standard_normal((B, 4, D))], axis=1)
    G = rng.standard_normal((B, T + 4, 2 * H))
    G_n = [rng.standard_normal((2, B, H)) for _ in range(n_states(cell_type))]
    out, cache = rnn.forward(x, lengths=lengths)
    dx = rnn.backward((G[:, :T], *G_n), cache)
    grads = [p.grad.copy() for p in rnn.parameters()]
    rnn.zero_grad()
    out_long, cache_long = rnn.forward(x_long, lengths=lengths)
    dx_long = rnn.backward((G, *G_n), cache_long)
    np.testing.assert_array_equal(out_long[0][:, T:], 0)
    np.testing.assert_allclose(out_long[0][:, :T], out[0], rtol=1e-13, atol=1e-15)
    for a, b in zip(out_long[1:], out[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(dx_long[:, T:], 0)
    np.testing.assert_allclose(dx_long[:, :T], dx, rtol=1e-12, atol=1e-14)
    for p, g in zip(rnn.parameters(), grads):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-14)


def test_zero_length_sequence_keeps_its_initial_state():
    rng = np.random.default_rng(2)
    rnn = RNN("lstm", 2, 3, dtype=F64, rng=rng)
    x = rng.standard_normal((2, 3, 2))
    h0, c0 = rng.standard_normal((1, 2, 3)), rng.standard_normal((1, 2, 3))
    G, Gh, Gc = (rng.standard_normal(s) for s in ((2, 3, 3), (1, 2, 3), (1, 2, 3)))
    (y, h_n, c_n), cache = rnn.forward(x, h0, c0, lengths=np.array([3, 0]))
    dx, dh0, dc0 = rnn.backward((G, Gh, Gc), cache)
    np.testing.assert_array_equal(y[1], 0)
    np.testing.assert_array_equal(h_n[:, 1], h0[:, 1])
    np.testing.assert_array_equal(c_n[:, 1], c0[:, 1])
    np.testing.assert_array_equal(dx[1], 0)
    np.testing.assert_array_equal(dh0[:, 1], Gh[:, 1])
    np.testing.assert_array_equal(dc0[:, 1], Gc[:, 1])


# -- bidirectional ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 3), H=st.integers(1, 3),
       data=st.data(), seed=seeds)
def test_bidirectional_is_forward_plus_reversed(cell_type, B, T, D, H, data, seed):
    """bi(x) = [fwd(x); rev(bwd(rev(x)))], rev reversing each sequence within its
    length; the same holds for the final states and all gradients."""
    rng = np.random.default_rng(seed)
    lengths = np.array(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    bi = RNN(cell_type, D, H, bidirectional=True, dtype=F64, rng=rng)
    fwd = RNN(cell_type, D, H, dtype=F64, rng=0)
    bwd = RNN(cell_type, D, H, dtype=F64, rng=0)
    fwd.load_state_dict({"cells.0." + k: v for k, v in bi.cells[0].state_dict().items()})
    bwd.load_state_dict({"cells.0." + k: v for k, v in bi.cells[1].state_dict().items()})
    k = n_states(cell_type)
    x = rng.standard_normal((B, T, D))
    states = [rng.standard_normal((2, B, H)) for _ in range(k)]
    G = rng.standard_normal((B, T, 2 * H))
    G_n = [rng.standard_normal((2, B, H)) for _ in range(k)]

    out, cache = bi.forward(x, *states, lengths=lengths)
    dx, *dstates = bi.backward((G, *G_n), cache)

    out_f, cache_f = fwd.forward(x, *(s[:1] for s in states), lengths=lengths)
    dx_f, *dstates_f = fwd.backward((G[..., :H], *(g[:1] for g in G_n)), cache_f)
    x_r = reverse_within(x, lengths)
    out_b, cache_b = bwd.forward(x_r, *(s[1:] for s in states), lengths=lengths)
    dx_b, *dstates_b = bwd.backward((reverse_within(G[..., H:], lengths), *(g[1:] for g in G_n)),
                                    cache_b)

    tol = dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out[0], np.concatenate(
        [out_f[0], reverse_within(out_b[0], lengths)], axis=-1), **tol)
    for o, o_f, o_b in zip(out[1:], out_f[1:], out_b[1:]):
        np.testing.assert_allclose(o, np.concatenate([o_f, o_b]), **tol)
    np.testing.assert_allclose(dx, dx_f + reverse_within(dx_b, lengths), **tol)
    for d, d_f, d_b in zip(dstates, dstates_f, dstates_b):
        np.testing.assert_allclose(d, np.concatenate([d_f, d_b]), **tol)
    for cell, single in ((bi.cells[0], fwd.cells[0]), (bi.cells[1], bwd.cells[0])):
        for p, q in zip(cell.parameters(), single.parameters()):
            np.testing.assert_allclose(p.grad, q.grad, **tol)


def test_final_states_are_the_last_real_outputs():
    rng = np.random.default_rng(4)
    lengths = np.array([5, 2, 4])
    rnn = RNN("gru", 3, 4, num_layers=2, bidirectional=True, dtype=F64, rng=rng)
    y, h_n = rnn(rng.standard_normal((3, 5, 3)), lengths=lengths)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(h_n[2, b], y[b, n - 1, :4])  # last layer, forward
        np.testing.assert_array_equal(h_n[3, b], y[b, 0, 4:])  # last layer, backward


def test_reverse_index_is_an_involution():
    lengths = np.array([4, 0, 2, 1])
    rev = reverse_index(lengths, 4)
    np.testing.assert_array_equal(rev, [[3, 2, 1, 0], [0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(np.take_along_axis(rev, rev, axis=1),
                                  np.tile(np.arange(4), (4, 1)))


# -- dropout -----------------------------------------------------------------------------------


def test_dropout_between_layers_only():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    x2 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    one = RNN("lstm", 4, 3, dropout=1.0, rng=0)  # no layer after the only one: no dropout
    ref = RNN("lstm", 4, 3, rng=0)
    np.testing.assert_array_equal(one(x)[0], ref(x)[0])
    two = RNN("lstm", 4, 3, num_layers=2, dropout=1.0, rng=0)  # layer 2 sees zeros
    np.testing.assert_array_equal(two(x)[0], two(x2)[0])
    assert np.abs(two(x)[0]).max() > 0
    two.eval()
    assert not np.array_equal(two(x)[0], two(x2)[0])


def test_dropout_masks_differ_per_layer_and_call():
    rnn = RNN("gru", 3, 4, num_layers=3, dropout=0.5, dtype=F64, rng=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 3))
    _, cache = rnn.forward(x)
    m0, m1 = (layer.dropout.mask for layer in cache.layers[:2])
    assert cache.layers[2].dropout is None
    assert not np.array_equal(m0, m1)
    _, cache2 = rnn.forward(x)
    assert not np.array_equal(m0, cache2.layers[0].dropout.mask)


# -- dtype and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_float32_stays_float32(cell_type):
    rng = np.random.default_rng(0)
    rnn = RNN(cell_type, 3, 2, num_layers=2, bidirectional=True, dropout=0.2, rng=rng)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    h0 = rng.standard_normal((4, 2, 2)).astype(np.float32)
    states = (h0, h0.copy()) if cell_type == "lstm" else (h0,)
    check_dtype_preserved(rnn, x, *states, lengths=np.array([4, 2]))


def test_bad_inputs():
    rnn = RNN("lstm", 4, 3, num_layers=2, rng=0)
    x = np.zeros((2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"RNN: x has last dim 3, expected input_size=4"):
        rnn(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"RNN: x must have 3 dims, got shape \(5, 4\)"):
        rnn(np.zeros((5, 4), np.float32))
    with pytest.raises(TypeError, match=r"RNN: x has dtype float64"):
        rnn(np.zeros((2, 5, 4)))
    bad = x.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"RNN: x contains 1 NaN/inf"):
        rnn(bad)
    with pytest.raises(ValueError,
                       match=r"RNN: h0 has shape \(1, 2, 3\), expected \(2, 2, 3\)"):
        rnn(x, np.zeros((1, 2, 3), np.float32))
    c0 = np.zeros((2, 2, 3), np.float32)
    c0[1, 0, 2] = np.inf
    with pytest.raises(ValueError, match=r"RNN: c0 contains 1 NaN/inf"):
        rnn(x, None, c0)
    with pytest.raises(ValueError,
                       match=r"RNN: lengths contains 6, expected lengths in \[0, 5\]"):
        rnn(x, lengths=np.array([6, 2]))
    with pytest.raises(ValueError, match=r"lengths contains -1"):
        rnn(x, lengths=np.array([3, -1]))
    with pytest.raises(ValueError, match=r"lengths has shape \(3,\), expected \(2,\)"):
        rnn(x, lengths=np.array([1, 2, 3]))
    with pytest.raises(TypeError, match=r"lengths must be an integer array, got dtype float64"):
        rnn(x, lengths=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"x has no time steps"):
        rnn(np.zeros((2, 0, 4), np.float32))
    gru = RNN("gru", 4, 3, rng=0)
    with pytest.raises(ValueError, match=r"RNN: c0 is only for cell_type='lstm'"):
        gru(x, np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.float32))
    out, cache = gru.forward(x)
    with pytest.raises(ValueError, match=r"d_output has shape \(2, 4, 3\), expected \(2, 5, 3\)"):
        gru.backward(np.zeros((2, 4, 3), np.float32), cache)
    with pytest.raises(ValueError, match=r"got 3 upstream gradients, expected at most 2"):
        gru.backward((out[0], out[1], out[1]), cache)


def test_bad_constructor_args():
    with pytest.raises(ValueError, match=r"RNN: cell_type must be one of \['gru', 'lstm', 'rnn'\]"):
        RNN("LSTM", 3, 2)
    with pytest.raises(ValueError, match=r"RNN: num_layers must be >= 1, got 0"):
        RNN("gru", 3, 2, num_layers=0)
    with pytest.raises(ValueError, match=r"RNN: dropout must be in \[0, 1\], got 1.5"):
        RNN("gru", 3, 2, dropout=1.5)
    with pytest.raises(TypeError, match=r"RNN: bidirectional must be a bool"):
        RNN("gru", 3, 2, bidirectional="yes")


def test_parameter_names_follow_layer_and_direction():
    rnn = RNN("gru", 3, 2, num_layers=2, bidirectional=True, rng=0)
    names = [n for n, _ in rnn.named_parameters()]
    assert names[:4] == ["cells.0.W_ih", "cells.0.W_hh", "cells.0.b_ih", "cells.0.b_hh"]
    assert len(names) == 16
    assert rnn.cells[2].W_ih.shape == (4, 6)  # layer 1 reads [forward; backward] of layer 0
