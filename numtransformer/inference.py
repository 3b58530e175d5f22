"""``numtransformer.inference_mode()``: run models for their outputs alone, fast.

In the spirit of ``torch.inference_mode()``::

    with numtransformer.inference_mode():
        logits = model(src_ids, tgt_in_ids)          # or encode, decode_step, greedy_decode ...

Inside the block:

* the fast kernels run (``numtransformer.kernels.use_kernels("fast")``), for float64
  work as well: the same math as the reference kernels, proven equal to them
  (float64 <= 1e-13 relative, float32 within a few ulps; tests/kernels);
* the O(N) NaN/inf scan of float inputs runs once, at the entry: for the arrays
  the caller hands to the module it calls, not for the arrays numtransformer's
  own code passes between layers (a forward already scans only at its entry;
  what the mode adds is that ``decode_step``, ``encode`` and the decoding loops,
  whose layer calls each look like an entry, no longer rescan);
* nothing needs a backward: call modules as ``m(x)`` (which drops the cache)
  or keep ``forward``'s cache only to read it.

``own_threads()`` is the companion for large GEMMs: on several threads it holds
the BLAS to one thread and splits each large GEMM by rows (or, for one row, by
columns) over numtransformer's own threads (``_parallel.parallel_matmul``), so
no BLAS worker spins on a core the elementwise passes need
(``numtransformer._blas`` explains; OpenBLAS on Linux, elsewhere nothing
changes).  The BLAS setting is the process's: while a block is open, GEMMs of
other threads run on one BLAS thread too.  ``SentenceModel.encode`` uses both.

What it does not change: the outputs (up to the kernels' rounding), dropout
(``model.eval()`` turns it off, as in PyTorch), the parameters, and anything
outside the block.  Like ``use_kernels``, the mode is local to the thread or
task that enters it, and blocks nest.
"""

from __future__ import annotations

import contextlib

from . import _blas, _validate
from ._parallel import SPLIT_GEMMS, get_num_threads
from .kernels import use_kernels

__all__ = ["inference_mode", "is_inference_mode", "own_threads"]


@contextlib.contextmanager
def inference_mode():
    """``with inference_mode(): ...`` runs the block in inference mode (module docstring)."""
    token = _validate.ENTRY_CHECKS_ONLY.set(True)
    try:
        with use_kernels("fast"):
            yield
    finally:
        _validate.ENTRY_CHECKS_ONLY.reset(token)


@contextlib.contextmanager
def own_threads():
    """``with own_threads(): ...``: on several threads, hold the BLAS to one thread and
    split each large GEMM over numtransformer's own threads (``_parallel.parallel_matmul``)
    inside the block; nothing changes on one thread or where the BLAS's thread count
    cannot be set (``_blas.available()``).  For work of large GEMMs with elementwise
    passes between them (``SentenceModel.encode`` enters it): no BLAS worker then spins
    on a core the passes need (``numtransformer._blas`` explains).  Small GEMMs
    (decoding a small model step by step) are better left to the BLAS, whose spinning
    workers take them up at once."""
    split = get_num_threads() > 1 and _blas.available()
    if not split:
        yield
        return
    token = SPLIT_GEMMS.set(True)
    try:
        with _blas.single_threaded():
            yield
    finally:
        SPLIT_GEMMS.reset(token)


def is_inference_mode() -> bool:
    """True inside ``inference_mode()``."""
    return _validate.ENTRY_CHECKS_ONLY.get()
