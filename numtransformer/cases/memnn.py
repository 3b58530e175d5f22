"""Gradient-check cases of the End-To-End Memory Network (``numtransformer/models/memnn.py``):
1 and 3 hops, adjacent and layer-wise tying, with and without the map H, and
under linear start."""

from __future__ import annotations

import numpy as np

from ..gradcheck import Case
from ..models import MemN2N


def _story(rng, V):
    """Three stories of up to 4 sentences of up to 4 words: one full-length
    story with a short sentence, one with two padding slots, one with none."""
    story = rng.integers(1, V, (3, 4, 4))
    story[0, 1, 2:] = 0  # a two-word sentence
    story[1, 2:] = 0  # two padding slots
    story[2] = 0  # no sentence at all: attention 0, never NaN
    query = rng.integers(1, V, (3, 3))
    query[1, 2] = 0
    return story, query


def _memnn(hops, tying, use_H=None, linear_start=False):
    def build(r):
        model = MemN2N(9, 5, hops, memory_size=6, tying=tying, use_H=use_H,
                       init_std=0.5, dtype=np.float64, rng=r)
        story, query = _story(r, 9)
        return model, (story, query), {"linear_start": linear_start}
    return build


CASES: list[Case] = [
    *[Case(f"MemN2N({tying}, hops={hops})", _memnn(hops, tying))
      for tying in ("adjacent", "layerwise") for hops in (1, 3)],
    Case("MemN2N(adjacent, hops=3, H)", _memnn(3, "adjacent", use_H=True)),
    Case("MemN2N(layerwise, hops=2, no H)", _memnn(2, "layerwise", use_H=False)),
    Case("MemN2N(adjacent, hops=3, linear start)", _memnn(3, "adjacent", linear_start=True)),
]
