"""Fast kernels: the reference kernels' names, signatures and caches, faster.

This namespace holds every kernel of ``numtransformer.functional``: where a
faster version exists it replaces the reference one, elsewhere the reference
one is used as it is.  What makes them fast: large elementwise passes in row
blocks on the configured threads (``numtransformer._parallel``; the same bits
at any thread count), in-place buffers, einsum row sums, one GEMV for the
sums over rows, sparse scatter-adds.  Each is tested equal to its reference
(tests/kernels/test_*_fast.py).  ``numtransformer.kernels`` chooses the family.
"""

from ..functional import *  # noqa: F401,F403  (the reference kernels, where no fast one exists)
from ..functional import __all__ as _reference
from .activations import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .flash import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .recurrent import *  # noqa: F401,F403

__all__ = list(_reference)
