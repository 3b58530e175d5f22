"""The seq2seq cases of ``numtransformer gradcheck`` all pass."""

from __future__ import annotations

import numpy as np
import pytest

from numtransformer.gradcheck import gradcheck
from numtransformer.cases.seq2seq import CASES


def test_names_are_unique_and_cover_every_score():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    for score in ("dot", "scaled_dot", "general", "additive", "cosine", "location",
                  "no attention"):
        assert any(n.startswith(f"LuongDecoder({score},") for n in names), score
    assert any(n.startswith("BahdanauDecoder") for n in names)
    assert sum(n.startswith("Seq2Seq(") for n in names) >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_passes(case):
    module, inputs, kwargs = case.build(np.random.default_rng([0, 1]))
    assert all(p.dtype == np.float64 for p in module.parameters())
    gradcheck(module, *inputs, **kwargs).assert_passed()
