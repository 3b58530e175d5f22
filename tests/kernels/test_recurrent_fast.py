"""The fast kernels of the recurrent family equal their reference kernels, float64
and float32, forward and backward, on drawn shapes; with and without the options
an unrolled loop passes (a contiguous W_hh^T, da_x written into a buffer)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import _parallel, fast
from numtransformer import functional as F
from numtransformer.fast import recurrent as fast_recurrent
from numtransformer.fast.recurrent import column_blocks, transposed_copy
from numtransformer.recurrent import RNN

from ..helpers import seeds
from .equal import assert_same, same, to_float64

dtypes = st.sampled_from([np.float64, np.float32])
dims = st.integers(1, 9)
CELLS = {"rnn": (1, 1), "lstm": (4, 2), "gru": (3, 1)}  # kernel: (gates G, states)


def _draw(rng, kind, B, H, dtype, scale=1.0):
    G, n_states = CELLS[kind]
    xw = (rng.standard_normal((B, G * H)) * scale).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(n_states)]
    W_hh = (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype)
    b_hh = rng.standard_normal(G * H).astype(dtype)
    dstates = [rng.standard_normal((B, H)).astype(dtype) for _ in range(n_states)]
    return xw, states, W_hh, b_hh, dstates


@pytest.mark.parametrize("kind", list(CELLS))
@given(B=st.integers(0, 6), H=dims, dtype=dtypes, seed=seeds)
def test_step_kernels(kind, B, H, dtype, seed):
    rng = np.random.default_rng(seed)
    xw, states, W_hh, b_hh, dstates = _draw(rng, kind, B, H, dtype, scale=3.0)
    forward, backward = f"{kind}_step_forward", f"{kind}_step_backward"
    _, cache = same(forward, xw, *states, W_hh, b_hh)
    same(backward, *dstates, cache, W_hh)


@pytest.mark.parametrize("kind", list(CELLS))
@given(B=st.integers(1, 6), T=st.integers(1, 4), H=dims, dtype=dtypes, seed=seeds)
def test_step_kernels_with_the_loop_options(kind, B, T, H, dtype, seed):
    """W_hh_T (a contiguous W_hh^T) and out= (a strided view of a (B, T, G*H)
    buffer) give the reference's numbers, and out receives da_x, nothing else."""
    rng = np.random.default_rng(seed)
    xw, states, W_hh, b_hh, dstates = _draw(rng, kind, B, H, dtype, scale=3.0)
    G = CELLS[kind][0]
    forward, backward = f"{kind}_step_forward", f"{kind}_step_backward"
    W_hh_T = transposed_copy(W_hh)
    ref = getattr(F, forward)(xw, *states, W_hh, b_hh)
    oracle = getattr(F, forward)(*to_float64((xw, *states, W_hh, b_hh)))
    assert_same(getattr(fast, forward)(xw, *states, W_hh, b_hh), ref, forward,
                oracle=to_float64(oracle))
    cache = ref[1]
    buf = np.full((B, T, G * H), np.nan, dtype)
    t = T - 1
    got = getattr(fast, backward)(*dstates, cache, W_hh, W_hh_T=W_hh_T, out=buf[:, t])
    ref = getattr(F, backward)(*dstates, cache, W_hh)
    oracle = getattr(F, backward)(*to_float64((*dstates, cache, W_hh)))
    assert_same(got, ref, backward, oracle=to_float64(oracle))
    assert np.shares_memory(got[0], buf)
    np.testing.assert_array_equal(buf[:, t], got[0])
    assert np.isnan(buf[:, :t]).all()  # only its own time step is written


@contextlib.contextmanager
def one_thread_small_blocks():
    """One thread and a block limit of 64 multiply-adds, so drawn shapes get blocks."""
    saved = fast_recurrent.SMALL_GEMM, fast_recurrent.MIN_BLOCK_COLUMNS
    fast_recurrent.SMALL_GEMM, fast_recurrent.MIN_BLOCK_COLUMNS = 64, 1
    _parallel.set_num_threads(1)
    try:
        yield
    finally:
        fast_recurrent.SMALL_GEMM, fast_recurrent.MIN_BLOCK_COLUMNS = saved
        _parallel.set_num_threads(None)


@given(rows=st.integers(1, 6), K=st.integers(1, 12), N=st.integers(1, 40), f32=st.booleans(),
       seed=seeds)
def test_column_blocks_are_the_columns_of_w(rows, K, N, f32, seed):
    """blocks[j] = W[:, j nb:(j+1) nb] (of W^T with transpose=True), each block's product
    at most SMALL_GEMM multiply-adds, nb a power-of-two split of N; None when the
    whole product is within the limit or no split reaches it."""
    W = np.random.default_rng(seed).standard_normal((K, N)).astype(np.float32 if f32 else
                                                                      np.float64)
    for transpose, full in ((False, W), (True, W.T)):
        with one_thread_small_blocks():
            blocks = column_blocks(W, rows, transpose=transpose)
        KK, NN = full.shape
        if rows * KK * NN <= 64:
            assert blocks is None
            continue
        if blocks is None:  # no power-of-two split of N brings a block within the limit
            nb = NN
            while nb % 2 == 0:
                nb //= 2
            assert rows * KK * nb > 64
            continue
        n, k, nb = blocks.shape
        assert blocks.flags.c_contiguous and blocks.dtype == W.dtype
        assert k == KK and n * nb == NN and rows * KK * nb <= 64 and NN % nb == 0
        assert nb == NN or rows * KK * 2 * nb > 64  # the widest such split
        for j in range(n):
            np.testing.assert_array_equal(blocks[j], full[:, j * nb:(j + 1) * nb])
        a = np.random.default_rng(seed + 1).standard_normal((rows, KK)).astype(W.dtype)
        got = fast_recurrent._product(a, blocks)
        assert got.shape == (rows, NN) and got.dtype == W.dtype
        np.testing.assert_allclose(got, a @ full, rtol=1e-5, atol=1e-5)


def test_column_blocks_only_on_one_thread(monkeypatch):
    """On several BLAS threads the whole product is the faster one: no blocks."""
    W = np.ones((256, 1024), np.float32)
    monkeypatch.setattr(_parallel, "_cores", lambda: 8)
    try:
        _parallel.set_num_threads(2)
        assert column_blocks(W, 16) is None
        _parallel.set_num_threads(1)
        assert column_blocks(W, 16).shape == (8, 256, 128)  # 16 x 256 x 128 = 2^19
        assert column_blocks(W, 16, transpose=True).shape == (8, 1024, 32)
        assert column_blocks(W, 2) is None  # 2 x 256 x 1024 = 2^19: whole
        assert column_blocks(W, 64, transpose=True) is None  # blocks of 8 columns: too narrow
    finally:
        _parallel.set_num_threads(None)


@pytest.mark.parametrize("kind", list(CELLS))
@given(B=st.integers(1, 6), H=dims, dtype=dtypes, seed=seeds)
def test_step_kernels_on_column_blocks(kind, B, H, dtype, seed):
    """W_hh_blocks (forward) and the column blocks of W_hh^T (backward) give the
    reference's numbers."""
    rng = np.random.default_rng(seed)
    xw, states, W_hh, b_hh, dstates = _draw(rng, kind, B, H, dtype, scale=3.0)
    forward, backward = f"{kind}_step_forward", f"{kind}_step_backward"
    with one_thread_small_blocks():
        blocks = column_blocks(W_hh, B)
        blocks_T = column_blocks(W_hh, B, transpose=True)
    ref = getattr(F, forward)(xw, *states, W_hh, b_hh)
    oracle = getattr(F, forward)(*to_float64((xw, *states, W_hh, b_hh)))
    assert_same(getattr(fast, forward)(xw, *states, W_hh, b_hh, W_hh_blocks=blocks), ref,
                forward, oracle=to_float64(oracle))
    cache = ref[1]
    got = getattr(fast, backward)(*dstates, cache, W_hh, W_hh_T=blocks_T)
    ref = getattr(F, backward)(*dstates, cache, W_hh)
    oracle = getattr(F, backward)(*to_float64((*dstates, cache, W_hh)))
    assert_same(got, ref, backward, oracle=to_float64(oracle))


@pytest.mark.parametrize("B", [8, 16])
def test_lstm_on_one_thread_with_real_blocks_equals_reference(B):
    """The benchmark's LSTM layer (H = 256) on one thread, where the unrolled loop
    really cuts W_hh into blocks (16 x 256 x 1024 -> 8 x 128 columns): output and
    every gradient equal the reference kernels' (float32, ulps of the oracle)."""
    from numtransformer.kernels import use_kernels
    rng = np.random.default_rng(B)
    x = rng.standard_normal((B, 5, 32)).astype(np.float32)
    dy = rng.standard_normal((B, 5, 256)).astype(np.float32)
    results = {}
    _parallel.set_num_threads(1)
    try:
        assert column_blocks(np.zeros((256, 1024), np.float32), B) is not None
        for mode in ("fast", "reference"):
            rnn = RNN("lstm", 32, 256, dtype=np.float32, rng=0)
            with use_kernels(mode):
                (y, h, c), cache = rnn.forward(x)
                dx = rnn.backward(dy, cache)
            results[mode] = (y, dx) + tuple(p.grad for p in rnn.parameters())
    finally:
        _parallel.set_num_threads(None)
    rnn64 = RNN("lstm", 32, 256, dtype=np.float64, rng=0)
    with use_kernels("reference"):
        (y, h, c), cache = rnn64.forward(x.astype(np.float64))
        dx = rnn64.backward(dy.astype(np.float64), cache)
    oracle = (y, dx) + tuple(p.grad for p in rnn64.parameters())
    assert_same(results["fast"], results["reference"], "LSTM on blocks", oracle=oracle)


@given(N=st.integers(0, 40), D=dims, GH=st.integers(1, 30), bias=st.booleans(), dtype=dtypes,
       seed=seeds)
def test_projection_grads(N, D, GH, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(dtype)
    da = rng.standard_normal((N, GH)).astype(dtype)
    same("projection_grads", x, da, bias)


@given(B=st.integers(1, 4), n=st.integers(0, 5), D=dims, H=dims, A=dims, upstream_ds=st.booleans(),
       dtype=dtypes, seed=seeds)
def test_lstmn_step(B, n, D, H, A, upstream_ds, dtype, seed):
    """The LSTMN step (the fast namespace runs it on the fast LSTM step where it has one)."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    args = (r(B, A), r(B, 4 * H), r(B, n, A), r(B, n, H), r(B, n, H), r(B, H),
            r(H, A), r(A), r(H, 4 * H) * (1.0 / H ** 0.5), r(H, A))
    (h, c, k), cache = same("lstmn_step_forward", *args)
    assert h.dtype == c.dtype == k.dtype == dtype
    W_ht, W_hh, W_h = args[6], args[8], args[9]
    bargs = (r(B, H), r(B, H), r(B, A), r(B, H), r(B, n) if upstream_ds else None, cache,
             W_ht, W_hh, W_h)
    # dq, dv, dk_mem and dh_tilde_prev are linear in da = softmax_backward(ds, s), whose
    # sum over the slots is 0: they cancel, so their rounding is bounded by the size of
    # their terms (|da_i| |u_i| ...), not by the result's, and either kernel may land
    # 10x off the other there.  They are checked against the float64 oracle within
    # 256 eps of that size (a wrong formula errs by about the size itself); the rest
    # (dz, dh_mem, dc_mem) must pass assert_same.
    got = fast.lstmn_step_backward(*bargs)
    ref = F.lstmn_step_backward(*bargs)
    oracle = to_float64(F.lstmn_step_backward(*to_float64(bargs)))
    if dtype == np.float64:
        oracle = ref
    plain = [0, 3, 4]  # dz, dh_mem, dc_mem
    assert_same([got[j] for j in plain], [ref[j] for j in plain], "lstmn_step_backward",
                oracle=[oracle[j] for j in plain])
    c64, (dh, dc, dk, dh_next, ds, _, W_ht64, W_hh64, W_h64) = to_float64(cache), to_float64(bargs)
    dz, _, (_, dc_tilde) = F.lstm_step_backward(dh + dk @ W_h64.T, dc, c64.lstm, W_hh64)
    dh_tilde_abs = np.abs(dz) @ np.abs(W_hh64.T) + np.abs(dh_next)
    ds_abs = (np.abs(c64.h_mem) @ dh_tilde_abs[:, :, None])[:, :, 0] + \
        (np.abs(c64.c_mem) @ np.abs(dc_tilde)[:, :, None])[:, :, 0] + \
        (0.0 if ds is None else np.abs(ds))
    da_abs = c64.s * (ds_abs + (c64.s * ds_abs).sum(axis=-1, keepdims=True))
    u = c64.energy.t[:, 0]  # (B, n, A) tanh(k_i + q)
    dk_bound = da_abs[:, :, None] * np.abs(c64.energy.v_a) * (1.0 - u * u)
    dq_bound = dk_bound.sum(axis=1)
    bounds = {1: dq_bound, 2: (da_abs[:, :, None] * np.abs(u)).sum(axis=(0, 1)),
              5: dk_bound, 6: dq_bound @ np.abs(W_ht64.T)}
    eps = float(np.finfo(dtype).eps)
    for j, bound in bounds.items():
        for name, x in (("fast", got[j]), ("reference", ref[j])):
            assert x.dtype == dtype and x.shape == oracle[j].shape
            scale = np.abs(oracle[j]).max(initial=0.0)
            assert np.all(np.abs(x - oracle[j]) <= 256 * eps * bound + 8 * eps * scale), (name, j)


def test_float32_lstm_candidate_g_near_zero_is_tanh_to_the_ulp():
    """The fast LSTM takes g = tanh(a_g) with np.tanh, as the reference.  The
    former 2 sigmoid(2 a_g) - 1 cancels near a_g = 0: its float32 relative error
    of g reached 1.18 for |a_g| < 1e-7 (an absolute error ~6e-8 on a g ~ a_g).
    Measured here against float64: a few ulps of g itself, at every scale."""
    rng = np.random.default_rng(0)
    B, H = 8, 64
    W_hh = np.zeros((H, 4 * H), np.float32)
    h = np.zeros((B, H), np.float32)
    c = np.zeros((B, H), np.float32)
    a_g = np.concatenate([rng.uniform(-1, 1, (B, H // 4)) * 10.0 ** -e
                          for e in (1, 4, 7, 10)], axis=1).astype(np.float32)
    xw = np.zeros((B, 4 * H), np.float32)
    xw[:, 2 * H:3 * H] = a_g
    (h_new, c_new), cache = fast.lstm_step_forward(xw, h, c, W_hh, None)
    g = cache.g
    exact = np.tanh(a_g.astype(np.float64))
    rel = np.abs(g.astype(np.float64) - exact) / np.abs(exact)
    eps = float(np.finfo(np.float32).eps)
    assert rel.max() <= 2 * eps, rel.max()
    np.testing.assert_array_equal(g, F.lstm_step_forward(xw, h, c, W_hh, None)[1].g)
    # c = f * 0 + i * g inherits g's relative accuracy
    rel_c = np.abs(c_new.astype(np.float64) - 0.5 * exact) / np.abs(0.5 * exact)
    assert rel_c.max() <= 4 * eps, rel_c.max()


def test_fast_step_kernels_leave_their_inputs_alone():
    """The fast kernels work in place only on arrays they made (same() checks
    it too; this pins the LSTM's gates made in place on its own GEMM output)."""
    rng = np.random.default_rng(1)
    xw, states, W_hh, b_hh, dstates = _draw(rng, "lstm", 3, 5, np.float32)
    saved = [a.copy() for a in (xw, *states, W_hh, b_hh)]
    (h, c), cache = fast.lstm_step_forward(xw, *states, W_hh, b_hh)
    for a, s in zip((xw, *states, W_hh, b_hh), saved):
        np.testing.assert_array_equal(a, s)
    gates = cache.gates.copy()
    fast.lstm_step_backward(*dstates, cache, W_hh)
    np.testing.assert_array_equal(cache.gates, gates)
