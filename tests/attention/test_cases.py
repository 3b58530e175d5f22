"""The attention package's cases for ``numtransformer gradcheck``
(``numtransformer.cases.attention``)."""

import numpy as np
import pytest

from numtransformer import gradcheck
from numtransformer.cases.attention import CASES


def test_names_are_unique_and_cover_the_package():
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    for needed in ("DotScore", "ScaledDotScore", "GeneralScore", "AdditiveScore", "CosineScore",
                   "LocationScore", "Attention(", "MultiHeadAttention(self", "(cross)",
                   "kdim=", "both masks", "dropout"):
        assert any(needed in n for n in names), needed


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_passes(case):
    module, inputs, kwargs = case.build(np.random.default_rng([0, 1]))
    assert all(p.dtype == np.float64 for p in module.parameters())
    assert all(x.dtype == np.float64 for x in inputs if x.dtype.kind == "f")
    gradcheck(module, *inputs, **kwargs).assert_passed()
