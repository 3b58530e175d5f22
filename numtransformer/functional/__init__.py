"""Reference kernels: the math of every layer, once, as plain functions.

Each family is a pair ``*_forward(...) -> (out, cache)`` and
``*_backward(dout, cache, ...) -> grads``: one statement per line of the
docstring's equations, with the docstring's symbols as names; no threads, no
``out=`` buffers, no in-place updates of anything but a fresh local, no einsum.
They are what a student reads beside the equations and what the float64
gradient oracle runs.  The layers (``numtransformer.layers``, ``attention``,
``recurrent``, ...) are thin: parameters, input checks, one kernel call each
way, ``p.grad += ...``.

``numtransformer.fast`` has kernels with the same names, signatures and cache
records, proven equal to these; ``numtransformer.kernels`` chooses between the
two.  Backward kernels *return* parameter gradients; adding them to
``p.grad`` is the module's job.
"""

from . import (activations, attention, dropout, flash, linear, lora, losses, memnn, norm, optim,
               recurrent, rotary)
from .activations import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .flash import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .lora import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .memnn import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .recurrent import *  # noqa: F401,F403
from .rotary import *  # noqa: F401,F403

__all__ = [name for m in (activations, attention, dropout, flash, linear, lora, losses, memnn,
                          norm, optim, recurrent, rotary) for name in m.__all__]
