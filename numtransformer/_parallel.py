"""Large elementwise passes on every configured core, in contiguous row blocks.

BLAS spreads each GEMM over its threads, but each NumPy ufunc runs on one
core, so with two cores the softmax, layer norm, activations, loss and
optimizer of a training step would leave the second core idle.  Where rows are
independent (a softmax row, a layer-norm row, a row of logits, a chunk of the
optimizer's flat buffers), ``parallel_rows`` cuts the rows into one contiguous
block per thread and runs the blocks at once: NumPy releases the GIL inside
its loops, so the blocks really run side by side.

Each row is computed by the same NumPy calls, at the same addresses, whatever
the split, so the results are the same bit for bit as with one thread (the
tests check it).  Reductions *across* rows (a bias gradient, a column sum) are
left to the caller, on one thread, so their summation order never depends on
the thread count.

The thread count follows the BLAS configuration: the first of the environment
variables NUMTRANSFORMER_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
OMP_NUM_THREADS that is set, else the cores this process may run on; at most
that many cores.  ``set_num_threads`` overrides it.  Small passes stay on the
calling thread: a block is worth a hand-off (~20-30 us, and the other
core's cache does not hold the rows yet) only above ``MIN_BLOCK`` entries;
2^17 measured best of 2^15, 2^17 and 2^19 on the benchmark's configs.
"""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["get_num_threads", "set_num_threads", "parallel_rows", "row_blocks", "add_rows",
           "column_sum", "cost_blocks", "parallel_items", "parallel_matmul", "SPLIT_GEMMS"]

MIN_BLOCK = 1 << 17  # entries per block below which a pass stays on one thread

_ENV = ("NUMTRANSFORMER_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
        "OMP_NUM_THREADS")
_lock = threading.Lock()
_state = {"threads": None, "pool": None, "pid": None, "workers": None}
_local = threading.local()  # .inside: this thread is running a block (no nesting)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _from_env() -> int:
    for var in _ENV:
        text = os.environ.get(var, "").strip()
        if text:
            try:
                n = int(text.split(",")[0])  # OMP allows a list per nesting level
            except ValueError:
                continue
            if n >= 1:
                return min(n, _cores())
    return _cores()


def get_num_threads() -> int:
    """The number of threads large elementwise passes use."""
    if _state["threads"] is None:
        _state["threads"] = _from_env()
    return _state["threads"]


def set_num_threads(n: int | None) -> None:
    """Use ``n`` threads for large elementwise passes (None: back to the environment's)."""
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"set_num_threads: n must be a positive int or None, got {n!r}")
    with _lock:
        _state["threads"] = n
        pool, _state["pool"] = _state["pool"], None
    if pool is not None:
        pool.shutdown(wait=True)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _state["pool"]
        # a forked child inherits the object but not its threads: start a new one
        if pool is None or _state["pid"] != os.getpid() or _state["workers"] != workers:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="numtransformer")
            _state.update(pool=pool, pid=os.getpid(), workers=workers)
        return pool


def row_blocks(n_rows: int, row_size: int) -> list:
    """Contiguous slices covering range(n_rows): one per thread, each of at
    least MIN_BLOCK entries (a single slice for small work or one thread)."""
    total = n_rows * max(row_size, 1)
    n = min(get_num_threads(), n_rows, max(1, total // MIN_BLOCK))
    if n <= 1 or getattr(_local, "inside", False):
        return [slice(0, n_rows)]
    bounds = [n_rows * k // n for k in range(n + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _run(kernel, rows):
    _local.inside = True
    try:
        kernel(rows)
    finally:
        _local.inside = False


def parallel_rows(kernel, n_rows: int, row_size: int) -> None:
    """Call ``kernel(rows)`` for the slices of ``row_blocks(n_rows, row_size)``,
    the first on this thread and the others at the same time on the pool.

    The kernel must touch only its own rows of its outputs.  Returns when every
    block has finished; the first exception raised by a block is re-raised.
    """
    _run_blocks(kernel, row_blocks(n_rows, row_size))


def cost_blocks(costs) -> list:
    """Contiguous slices of range(len(costs)), one per thread, of about equal total
    cost (each item goes to the block holding the middle of its cost), or a single
    slice when the total is below MIN_BLOCK (costs: entries of work per item)."""
    costs = np.asarray(costs, dtype=np.float64)
    total = float(costs.sum())
    n = min(get_num_threads(), len(costs), max(1, int(total // MIN_BLOCK)))
    if n <= 1 or getattr(_local, "inside", False):
        return [slice(0, len(costs))]
    middle = np.cumsum(costs) - costs / 2
    owner = np.minimum((middle * n / total).astype(np.int64), n - 1)
    bounds = np.searchsorted(owner, np.arange(n + 1), side="left")
    return [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def parallel_items(kernel, costs) -> None:
    """``parallel_rows`` for items of unequal cost: ``kernel(items)`` on the slices of
    ``cost_blocks(costs)`` at the same time (the first on this thread)."""
    _run_blocks(kernel, cost_blocks(costs))


def _run_blocks(kernel, blocks) -> None:
    if len(blocks) == 1:
        kernel(blocks[0])
        return
    pool = _pool(get_num_threads() - 1)
    futures = [pool.submit(_run, kernel, rows) for rows in blocks[1:]]
    error = None
    try:
        _run(kernel, blocks[0])
    except BaseException as exc:  # still wait: no block may run on after we return
        error = exc
    for f in futures:
        exc = f.exception()
        if error is None and exc is not None:
            error = exc
    if error is not None:
        raise error


# Set by ``inference.own_threads()`` while it holds the BLAS to one thread (``_blas``): large
# GEMMs are then split over this module's threads by ``parallel_matmul``.
SPLIT_GEMMS = contextvars.ContextVar("numtransformer_split_gemms", default=False)
MIN_SPLIT_FLOPS = 1 << 22  # multiply-adds below which a GEMM stays whole (a hand-off ~20-30 us)
MIN_SPLIT_GEMV = 1 << 18  # weights below which a product of fewer than 8 rows per thread stays
# whole: such a product is memory-bound (each weight read once; 2^18 float32 weights, 1 MiB,
# stream from memory in ~0.1 ms)


def parallel_matmul(a, W):
    """a @ W for a 2-D a (M, K) and W (K, N).  Inside ``inference.own_threads()`` on several
    threads (``SPLIT_GEMMS``: the BLAS then runs on one), a large product is cut
    into one block per thread, by rows of a, or by columns of W when a has fewer
    rows than threads (a decoding step's one row), and the blocks run at once; a
    row of the result is the same BLAS call on the same row either way.  Else one
    BLAS call."""
    M, K = a.shape
    N = W.shape[1]
    n = get_num_threads()
    rows = M >= 8 * n
    if not SPLIT_GEMMS.get() or n <= 1 or getattr(_local, "inside", False) \
            or (M * K * N < MIN_SPLIT_FLOPS if rows else K * N < MIN_SPLIT_GEMV):
        return a @ W
    y = np.empty((M, N), np.result_type(a, W))
    if rows:
        bounds = [M * k // n for k in range(n + 1)]
        _run_blocks(lambda r: np.matmul(a[r], W, out=y[r]),
                    [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])])
        return y
    bounds = [N * k // n for k in range(n + 1)]

    def columns(c):
        y[:, c] = a @ W[:, c]

    _run_blocks(columns, [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])])
    return y


def add_rows(y, b) -> None:
    """y += b in place for a 2-D y and a vector b (a bias on every row), in row blocks."""
    parallel_rows(lambda r: np.add(y[r], b, out=y[r]), y.shape[0], y.shape[1])


def column_sum(a) -> np.ndarray:
    """The sum over the rows of a 2-D a, ``a.sum(axis=0)``, as one matrix-vector
    product 1^T a (a bias gradient, layer norm's dgamma and dbeta).

    BLAS's GEMV makes it 2-4x faster than NumPy's reduction for the (B*T, d)
    gradients of a training step (2048 x 64 float32: 16 us against 62,
    measured), gives the same bits at any BLAS thread count (measured for
    OpenBLAS, which splits a GEMV by columns), and in float32 was as accurate
    or more (relative error 4-6e-8 against 5-22e-8 on 2048 rows).
    """
    return np.ones(a.shape[0], a.dtype) @ a
