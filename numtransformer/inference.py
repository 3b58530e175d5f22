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

What it does not change: the outputs (up to the kernels' rounding), dropout
(``model.eval()`` turns it off, as in PyTorch), the parameters, and anything
outside the block.  Like ``use_kernels``, the mode is local to the thread or
task that enters it, and blocks nest.
"""

from __future__ import annotations

import contextlib

from . import _validate
from .kernels import use_kernels

__all__ = ["inference_mode", "is_inference_mode"]


@contextlib.contextmanager
def inference_mode():
    """``with inference_mode(): ...`` runs the block in inference mode (module docstring)."""
    token = _validate.ENTRY_CHECKS_ONLY.set(True)
    try:
        with use_kernels("fast"):
            yield
    finally:
        _validate.ENTRY_CHECKS_ONLY.reset(token)


def is_inference_mode() -> bool:
    """True inside ``inference_mode()``."""
    return _validate.ENTRY_CHECKS_ONLY.get()
