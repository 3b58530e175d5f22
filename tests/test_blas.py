"""numtransformer._blas (the BLAS's own thread count held to one, counted) and the
GEMM split of numtransformer._parallel (``parallel_matmul``, ``SPLIT_GEMMS``,
``cost_blocks``, ``parallel_items``): the BLAS count is 1 inside every open
block and back when the last closes; a split product equals ``a @ W`` (float64
<= 1e-13 relative, float32 within rounding); cost blocks are contiguous, cover
every item and hold about equal cost."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numtransformer as nt
from numtransformer import _blas, _parallel
from numtransformer._parallel import SPLIT_GEMMS, cost_blocks, parallel_items, parallel_matmul

from .kernels.equal import assert_same, relative_error

needs_blas = pytest.mark.skipif(not _blas.available(),
                                reason="the BLAS thread count cannot be changed here")


def counts():
    return [get() for get, _ in _blas._controls()]


@contextlib.contextmanager
def blas_threads(n):
    """Every BLAS control set to n threads for the block, then back to what it was;
    yields the counts the controls then report (a BLAS may cap n)."""
    saved = [(put, get()) for get, put in _blas._controls()]
    for _, put in _blas._controls():
        put(n)
    try:
        yield counts()
    finally:
        for put, m in saved:
            put(m)


@contextlib.contextmanager
def split(n_threads=2, enabled=True):
    """SPLIT_GEMMS set and n threads, both restored afterwards."""
    token = SPLIT_GEMMS.set(enabled)
    _parallel.set_num_threads(n_threads)
    try:
        yield
    finally:
        _parallel.set_num_threads(None)
        SPLIT_GEMMS.reset(token)


@pytest.fixture
def blocks_run(monkeypatch):
    """The block lists _parallel._run_blocks is given (one list per split call)."""
    seen = []
    real = _parallel._run_blocks

    def spy(kernel, blocks):
        seen.append(list(blocks))
        return real(kernel, blocks)

    monkeypatch.setattr(_parallel, "_run_blocks", spy)
    return seen


# -- _blas -------------------------------------------------------------------------------------

def test_available_is_a_bool():
    assert isinstance(_blas.available(), bool)
    assert _blas.available() == bool(_blas._controls())


@needs_blas
def test_single_threaded_sets_one_and_restores():
    with blas_threads(2) as before:
        if max(before) < 2:
            pytest.skip("this BLAS keeps one thread: nothing to restore")
        with _blas.single_threaded():
            assert counts() == [1] * len(counts())
        assert counts() == before
        assert _blas._state["depth"] == 0


@needs_blas
def test_single_threaded_restores_after_an_exception():
    with blas_threads(2) as before:
        with pytest.raises(RuntimeError):
            with _blas.single_threaded():
                raise RuntimeError("inside")
        assert counts() == before
        assert _blas._state["depth"] == 0


@needs_blas
def test_single_threaded_nested():
    with blas_threads(2) as before:
        with _blas.single_threaded():
            with _blas.single_threaded():
                assert counts() == [1] * len(counts())
            assert counts() == [1] * len(counts())  # the outer block is still open
        assert counts() == before


@needs_blas
def test_single_threaded_concurrent_blocks_restore_when_the_last_closes():
    """Thread A opens, thread B opens, A closes (still 1: B's block is open), B closes
    (back to 2)."""
    a_in, b_in, a_out, b_may_close = (threading.Event() for _ in range(4))
    seen = {}

    def a():
        with _blas.single_threaded():
            a_in.set()
            b_in.wait(10)
            seen["a inside"] = counts()
        a_out.set()

    def b():
        a_in.wait(10)
        with _blas.single_threaded():
            b_in.set()
            b_may_close.wait(10)
            seen["b after a closed"] = counts()

    with blas_threads(2) as before:
        ta, tb = threading.Thread(target=a), threading.Thread(target=b)
        ta.start()
        tb.start()
        assert a_out.wait(10)
        seen["main after a closed"] = counts()
        b_may_close.set()
        ta.join(10)
        tb.join(10)
        n = len(counts())
        assert seen["a inside"] == [1] * n
        assert seen["main after a closed"] == [1] * n
        assert seen["b after a closed"] == [1] * n
        assert counts() == before
        assert _blas._state["depth"] == 0


# -- parallel_matmul ---------------------------------------------------------------------------

def check_product(y, a, W):
    want = a @ W
    assert y.dtype == want.dtype and y.shape == want.shape
    if y.dtype == np.float64:
        assert relative_error(y, want) <= 1e-13
    else:
        oracle = a.astype(np.float64) @ W.astype(np.float64)
        assert_same(y, want, "parallel_matmul", oracle=oracle)


CASES = {  # (M, K, N, transposed W)
    "rows": (64, 40, 50, False),
    "rows, W a transposed view": (64, 40, 50, True),
    "columns": (1, 40, 300, False),
    "columns, W a transposed view": (1, 40, 300, True),
    "few rows, columns": (5, 20, 33, False),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_matmul_split_equals_matmul(case, dtype, monkeypatch, blocks_run):
    M, K, N, transposed = CASES[case]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype).T if transposed else \
        rng.standard_normal((K, N)).astype(dtype)
    assert W.flags.c_contiguous != transposed
    a_before, W_before = a.copy(), W.copy()
    monkeypatch.setattr(_parallel, "MIN_SPLIT_FLOPS", 1)
    monkeypatch.setattr(_parallel, "MIN_SPLIT_GEMV", 1)
    with split(2):
        y = parallel_matmul(a, W)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(W, W_before)
    check_product(y, a, W)
    assert len(blocks_run) == 1 and len(blocks_run[0]) == 2  # one block per thread
    lo, hi = blocks_run[0]
    extent = M if M >= 8 * 2 else N  # by rows when there are enough, else by columns
    assert lo.start == 0 and lo.stop == hi.start and hi.stop == extent


@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 40), st.booleans(),
       st.sampled_from([2, 3]), st.sampled_from([np.float64, np.float32]))
def test_parallel_matmul_drawn_shapes(M, K, N, transposed, n_threads, dtype):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype).T if transposed else \
        rng.standard_normal((K, N)).astype(dtype)
    saved = _parallel.MIN_SPLIT_FLOPS, _parallel.MIN_SPLIT_GEMV
    _parallel.MIN_SPLIT_FLOPS = _parallel.MIN_SPLIT_GEMV = 1
    try:
        with split(n_threads):
            y = parallel_matmul(a, W)
    finally:
        _parallel.MIN_SPLIT_FLOPS, _parallel.MIN_SPLIT_GEMV = saved
    check_product(y, a, W)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parallel_matmul_stays_whole(dtype, monkeypatch, blocks_run):
    """Below MIN_SPLIT_FLOPS, without SPLIT_GEMMS, on one thread or inside a worker:
    one BLAS call, the bits of a @ W."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 40)).astype(dtype)
    W = rng.standard_normal((40, 50)).astype(dtype)
    monkeypatch.setattr(_parallel, "MIN_SPLIT_FLOPS", 64 * 40 * 50 + 1)
    with split(2):
        np.testing.assert_array_equal(parallel_matmul(a, W), a @ W)  # just below
    monkeypatch.setattr(_parallel, "MIN_SPLIT_FLOPS", 1)
    with split(2, enabled=False):
        np.testing.assert_array_equal(parallel_matmul(a, W), a @ W)
    with split(1):
        np.testing.assert_array_equal(parallel_matmul(a, W), a @ W)
    with split(2):
        _parallel._local.inside = True
        try:
            np.testing.assert_array_equal(parallel_matmul(a, W), a @ W)
        finally:
            _parallel._local.inside = False
    assert blocks_run == []
    monkeypatch.setattr(_parallel, "MIN_SPLIT_FLOPS", 64 * 40 * 50)  # at the threshold: split
    with split(2):
        check_product(parallel_matmul(a, W), a, W)
    assert len(blocks_run) == 1
    # one row (split by columns): its own threshold, MIN_SPLIT_GEMV
    v = a[:1]
    monkeypatch.setattr(_parallel, "MIN_SPLIT_FLOPS", 1)
    monkeypatch.setattr(_parallel, "MIN_SPLIT_GEMV", 40 * 50 + 1)
    with split(2):
        np.testing.assert_array_equal(parallel_matmul(v, W), v @ W)
    assert len(blocks_run) == 1
    monkeypatch.setattr(_parallel, "MIN_SPLIT_GEMV", 40 * 50)
    with split(2):
        check_product(parallel_matmul(v, W), v, W)
    assert len(blocks_run) == 2


def test_split_gemms_in_own_threads():
    from numtransformer.inference import own_threads
    assert SPLIT_GEMMS.get() is False
    _parallel.set_num_threads(2)
    try:
        with nt.inference_mode():  # the mode alone leaves the BLAS and the GEMMs as they are
            assert SPLIT_GEMMS.get() is False
        with own_threads():
            assert SPLIT_GEMMS.get() is _blas.available()
            if _blas.available():
                assert counts() == [1] * len(counts())
        assert SPLIT_GEMMS.get() is False
    finally:
        _parallel.set_num_threads(None)
    _parallel.set_num_threads(1)
    try:
        with own_threads():
            assert SPLIT_GEMMS.get() is False
    finally:
        _parallel.set_num_threads(None)


@needs_blas
def test_own_threads_restores_the_blas_count():
    from numtransformer.inference import own_threads
    with blas_threads(2) as before:
        _parallel.set_num_threads(2)
        try:
            with own_threads():
                with own_threads():  # nested
                    assert counts() == [1] * len(counts())
                assert counts() == [1] * len(counts())
            assert counts() == before
        finally:
            _parallel.set_num_threads(None)


# -- cost_blocks, parallel_items ---------------------------------------------------------------

def check_blocks(blocks, costs, n):
    """Contiguous, covering, non-empty slices, at most n of them (n: the intended count,
    min(threads, items, total // MIN_BLOCK)); with n > 1 each item sits in block
    floor(middle of its cost * n / total) (empty blocks dropped)."""
    k = len(costs)
    assert blocks[0].start == 0 and blocks[-1].stop == k
    for lo, hi in zip(blocks[:-1], blocks[1:]):
        assert lo.stop == hi.start  # contiguous
    assert all(b.stop > b.start for b in blocks) or k == 0
    assert len(blocks) <= max(1, n)
    if n > 1 and len(blocks) > 1:
        costs = np.asarray(costs, np.float64)
        middle = np.cumsum(costs) - costs / 2
        owner = np.minimum((middle * n / costs.sum()).astype(np.int64), n - 1)
        first = [int(owner[b.start]) for b in blocks]
        assert first == sorted(set(first))  # each block its own, increasing, owner
        for b in blocks:
            assert (owner[b] == owner[b.start]).all()


@pytest.mark.parametrize("n_threads", [2, 3])
def test_cost_blocks_one_per_thread_when_large(n_threads):
    _parallel.set_num_threads(n_threads)
    try:
        costs = [_parallel.MIN_BLOCK] * 10
        blocks = cost_blocks(costs)
        assert len(blocks) == n_threads
        check_blocks(blocks, costs, n_threads)
        # one huge item first: it fills a block, the rest share the others
        costs = [10 * _parallel.MIN_BLOCK] + [_parallel.MIN_BLOCK] * 9
        blocks = cost_blocks(costs)
        check_blocks(blocks, costs, n_threads)
        assert blocks[0] == slice(0, 1)
    finally:
        _parallel.set_num_threads(None)


def test_cost_blocks_single_when_small_or_inside_a_worker():
    _parallel.set_num_threads(2)
    try:
        assert cost_blocks([10, 20, 30]) == [slice(0, 3)]  # below MIN_BLOCK in all
        assert cost_blocks([_parallel.MIN_BLOCK - 1]) == [slice(0, 1)]
        assert cost_blocks([]) == [slice(0, 0)]
        big = [_parallel.MIN_BLOCK] * 4
        assert len(cost_blocks(big)) == 2
        _parallel._local.inside = True
        try:
            assert cost_blocks(big) == [slice(0, 4)]
        finally:
            _parallel._local.inside = False
    finally:
        _parallel.set_num_threads(None)
    _parallel.set_num_threads(1)
    try:
        assert cost_blocks([_parallel.MIN_BLOCK] * 4) == [slice(0, 4)]
    finally:
        _parallel.set_num_threads(None)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.sampled_from([1, 2, 3, 4]),
       st.sampled_from([1, 7, 100]))
def test_cost_blocks_drawn(costs, n_threads, min_block):
    saved = _parallel.MIN_BLOCK
    _parallel.MIN_BLOCK = min_block
    _parallel.set_num_threads(n_threads)
    try:
        blocks = cost_blocks(costs)
        total = sum(costs)
        n = min(n_threads, len(costs), max(1, total // min_block))
        check_blocks(blocks, costs, n)
        if total < min_block or n_threads == 1:
            assert blocks == [slice(0, len(costs))]
        seen = []
        lock = threading.Lock()

        def kernel(part):
            with lock:
                seen.append((part, threading.get_ident()))

        parallel_items(kernel, costs)
        parts = sorted((p for p, _ in seen), key=lambda s: s.start)
        assert parts == blocks  # every item once
        threads_used = {t for _, t in seen}
        assert (len(threads_used) >= 2) == (len(blocks) > 1)  # the pool runs the others
    finally:
        _parallel.MIN_BLOCK = saved
        _parallel.set_num_threads(None)


def test_parallel_items_reraises():
    _parallel.set_num_threads(2)
    try:
        def kernel(part):
            if part.start > 0:
                raise KeyError("second block")

        with pytest.raises(KeyError, match="second block"):
            parallel_items(kernel, [_parallel.MIN_BLOCK] * 4)
    finally:
        _parallel.set_num_threads(None)
