"""The row-parallel elementwise passes (numtransformer._parallel): the same
bits as one thread, whatever the split; errors come through; small work and
nested calls stay on one thread."""

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numtransformer as nt
from numtransformer import _parallel
from numtransformer._parallel import column_sum
from numtransformer.fast import softmax, softmax_backward
from numtransformer.kernels import set_kernels


@pytest.fixture(autouse=True)
def fast_kernels():
    """The row blocks live in the fast kernels: every test here runs on them."""
    set_kernels("fast")
    yield
    set_kernels(None)


@pytest.fixture
def threads(monkeypatch):
    """Run a function with 1 thread, then with n threads and blocks of 1
    entry (so even tiny arrays are split), and return both results."""
    def run(f, n=3):
        monkeypatch.setattr(_parallel, "MIN_BLOCK", 1)
        _parallel.set_num_threads(1)
        one = f()
        monkeypatch.setattr(_parallel, "_cores", lambda: 8)
        _parallel.set_num_threads(n)
        try:
            many = f()
        finally:
            _parallel.set_num_threads(None)
        return one, many
    yield run
    _parallel.set_num_threads(None)


def _same(a, b):
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)


def test_row_blocks_cover_the_rows_in_order(monkeypatch):
    monkeypatch.setattr(_parallel, "_cores", lambda: 8)
    _parallel.set_num_threads(3)
    try:
        monkeypatch.setattr(_parallel, "MIN_BLOCK", 1)
        assert _parallel.row_blocks(10, 5) == [slice(0, 3), slice(3, 6), slice(6, 10)]
        assert _parallel.row_blocks(2, 5) == [slice(0, 1), slice(1, 2)]  # no more blocks than rows
        assert _parallel.row_blocks(0, 5) == [slice(0, 0)]
        monkeypatch.setattr(_parallel, "MIN_BLOCK", 100)
        assert _parallel.row_blocks(10, 5) == [slice(0, 10)]  # 50 entries: not worth a hand-off
        assert _parallel.row_blocks(10, 20) == [slice(0, 5), slice(5, 10)]
    finally:
        _parallel.set_num_threads(None)


@pytest.mark.parametrize("env, expected", [
    ({"NUMTRANSFORMER_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}, 2),
    ({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "4"}, 1),
    ({"OMP_NUM_THREADS": "3,2"}, 3),
    ({"OMP_NUM_THREADS": "64"}, 4),  # at most the cores
    ({"OPENBLAS_NUM_THREADS": "x", "MKL_NUM_THREADS": "2"}, 2),  # unreadable: skipped
    ({}, 4),
])
def test_the_thread_count_follows_the_blas_environment(monkeypatch, env, expected):
    for var in _parallel._ENV:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(_parallel, "_cores", lambda: 4)
    _parallel.set_num_threads(None)
    try:
        assert _parallel.get_num_threads() == expected
    finally:
        monkeypatch.undo()
        _parallel.set_num_threads(None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_non_positive_ints(bad):
    with pytest.raises(ValueError, match="set_num_threads: n must be a positive int"):
        _parallel.set_num_threads(bad)


def test_an_error_in_any_block_is_raised_after_every_block_ends(threads):
    done = []

    def kernel(r):
        if r.start <= 1 < r.stop:
            raise RuntimeError("block 1 failed")
        done.append(r.start)

    def run():
        done.clear()
        with pytest.raises(RuntimeError, match="block 1 failed"):
            _parallel.parallel_rows(kernel, 3, 1)
        return sorted(done)

    one, many = threads(run)
    assert one == [] and many == [0, 2]  # one thread: the single block fails whole


def test_blocks_run_on_other_threads_and_nested_calls_stay_on_theirs(threads):
    seen = []

    def inner(r):
        seen.append((threading.current_thread().name, "inner", r))

    def outer(r):
        seen.append((threading.current_thread().name, "outer", r))
        _parallel.parallel_rows(inner, 4, 1)

    threads(lambda: _parallel.parallel_rows(outer, 2, 1), n=2)
    outer_names = {name for name, kind, _ in seen if kind == "outer"}
    assert any(name.startswith("numtransformer") for name in outer_names)
    # inside a block, the nested call is one block on that block's thread
    assert [r for _, kind, r in seen if kind == "inner"][-2:] == [slice(0, 4)] * 2


@given(st.integers(1, 7), st.integers(1, 4), st.integers(1, 9), st.sampled_from(["none", "keys", "full", "row"]),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_softmax_and_its_backward_are_the_same_bits_on_any_thread_count(B, H, T, mask_kind, dtype,
                                                                        seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, H, T)).astype(dtype)
    dy = rng.standard_normal((B, H, T)).astype(dtype)
    mask = {"none": None, "keys": rng.random((B, 1, T)) < 0.3, "full": rng.random((B, H, T)) < 0.3,
            "row": rng.random(T) < 0.3}[mask_kind]
    with pytest.MonkeyPatch.context() as mp:
        def run():
            y = softmax(x, mask=mask)
            y2 = softmax(x.copy(), mask=mask, out=None)
            z = x.copy()
            softmax(z, mask=mask, out=z)  # in place
            return y, y2, z, softmax_backward(dy, y), softmax(x, axis=1)

        mp.setattr(_parallel, "MIN_BLOCK", 1)
        _parallel.set_num_threads(1)
        one = run()
        mp.setattr(_parallel, "_cores", lambda: 8)
        _parallel.set_num_threads(3)
        try:
            many = run()
        finally:
            _parallel.set_num_threads(None)
    _same(one, many)
    np.testing.assert_array_equal(one[0], one[2])


def test_layernorm_loss_relu_and_adamw_are_the_same_bits_on_any_thread_count(threads):
    def run():
        rng = np.random.default_rng(0)
        model = nt.Transformer(11, 13, d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1,
                               num_decoder_layers=1, dropout=0.0, dtype=np.float64,
                               rng=np.random.default_rng(1))
        opt = nt.AdamW(model, lr=1e-2)
        opt._chunk = 64  # many chunks of the flat buffers, so the blocks split them
        src, tgt = rng.integers(1, 11, (5, 7)), rng.integers(1, 13, (5, 6))
        out = []
        for eps in (0.0, 0.1):
            loss_fn = nt.CrossEntropyLoss(ignore_index=0, label_smoothing=eps)
            logits, cache = model.forward(src, tgt)
            loss, lcache = loss_fn.forward(logits, tgt)
            model.backward(loss_fn.backward(1.0, lcache), cache)
            opt.step()
            opt.zero_grad()
            out.append(loss)
        out += [p.data.copy() for p in model.parameters()]
        ln = nt.LayerNorm(6, elementwise_affine=False, dtype=np.float32)
        x = rng.standard_normal((4, 3, 6)).astype(np.float32)
        y, c = ln.forward(x)
        none = nt.CrossEntropyLoss(reduction="none")
        l_none, lc = none.forward(x.reshape(12, 6), rng.integers(0, 6, 12))
        relu_y, rc = nt.ReLU().forward(x)
        out += [y, ln.backward(x, c), l_none, none.backward(np.ones(12, np.float32), lc),
                relu_y, nt.ReLU().backward(x, rc)]
        return tuple(out)

    one, many = threads(run)
    _same(one, many)


@given(rows=st.integers(0, 50), cols=st.integers(0, 9), f32=st.booleans(), seed=st.integers(0, 99))
def test_column_sum_is_the_sum_over_rows(rows, cols, f32, seed):
    dtype = np.float32 if f32 else np.float64
    a = np.random.default_rng(seed).standard_normal((rows, cols)).astype(dtype)
    s = column_sum(a)
    assert s.dtype == dtype and s.shape == (cols,)
    np.testing.assert_allclose(s, a.astype(np.float64).sum(axis=0),
                               rtol=1e-5 if f32 else 1e-12, atol=1e-5 if f32 else 1e-12)
