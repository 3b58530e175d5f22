"""The recurrent cases of ``numtransformer gradcheck`` all pass."""

from __future__ import annotations

import numpy as np
import pytest

from numtransformer.gradcheck import gradcheck
from numtransformer.cases.recurrent import CASES


def test_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_passes(case):
    module, inputs, kwargs = case.build(np.random.default_rng([0, 1]))
    assert all(p.dtype == np.float64 for p in module.parameters())
    gradcheck(module, *inputs, **kwargs).assert_passed()
