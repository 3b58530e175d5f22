"""Every gradient-check case of ``numtransformer gradcheck``, one module per part
of the layer tree:

    layers.py      numtransformer/layers/ and losses.py (the core layers)
    attention.py   numtransformer/attention/
    flash.py       functional/flash.py (the tiled kernel), tiled MultiHeadAttention
    recurrent.py   numtransformer/recurrent/
    transformer.py numtransformer/models/transformer.py, layers/residual.py
    seq2seq.py     numtransformer/models/seq2seq/
    memnn.py       numtransformer/models/memnn.py
    interop.py     numtransformer/interop/
    pretrained.py  numtransformer/pretrained/
    smollm2.py     a 2-block slice of the real SmolLM2 with LoRA (pretrained/smollm2.py, finetune.py)

Each module holds ``CASES``, a list of ``Case(name, build)`` (the type lives in
``numtransformer.gradcheck``): ``build(rng) -> (module, inputs, kwargs)`` makes a
float64 module and its inputs at small sizes.  A new layer adds its case to the
module of its part of the tree.  These modules import the layers they build;
no layer imports them, and none of them imports the runner
(``numtransformer.selfcheck``).
"""

from __future__ import annotations

from ..gradcheck import Case
from . import (attention, flash, interop, layers, memnn, pretrained, recurrent, seq2seq,
               smollm2, transformer)

__all__ = ["Case", "all_cases"]

# In the order of the table that ``numtransformer gradcheck`` prints.
_PARTS = (layers, attention, flash, recurrent, transformer, seq2seq, memnn, interop, pretrained,
          smollm2)


def all_cases() -> list[Case]:
    """Every case, the core layers first, then each part of the tree in turn."""
    return [case for part in _PARTS for case in part.CASES]
