"""The library's own gradient check: every layer at small random sizes.

``numtransformer gradcheck`` runs ``run_all()`` and prints one row per checked
tensor.  The cases are ``numtransformer.cases.all_cases()``: named factories
``Case(name, build)`` (``numtransformer.gradcheck.Case``), ``build(rng) ->
(module, inputs, kwargs)`` building a float64 module and its inputs.  This
module is only the runner; ``Case``, ``CASES`` (the core layers' cases) and
``all_cases`` are re-exported here for code that imported them from it.
"""

from __future__ import annotations

import inspect

import numpy as np

from .cases import all_cases
from .cases.layers import CASES
from .gradcheck import Case, GradcheckReport, gradcheck, relu_margin

__all__ = ["run_all", "RELU_MARGIN", "Case", "CASES", "all_cases"]


def run_all(seed: int = 0, threshold: float = 1e-7, only: str | None = None,
            progress=None) -> list[tuple[str, GradcheckReport]]:
    """Run every case (or those whose name contains ``only``).

    ``progress(k, n, name)``, if given, is called before each case is checked: the
    k-th (from 1) of the n selected, by its name (``numtransformer gradcheck``
    reports it on stderr)."""
    results = []
    selected = [(i, case) for i, case in enumerate(all_cases())
                if not only or only.lower() in case.name.lower()]
    for number, (i, case) in enumerate(selected, 1):
        if progress is not None:
            progress(number, len(selected), case.name)
        for attempt in range(_MAX_DRAWS):
            rng = np.random.default_rng([seed, i] + ([attempt] if attempt else []))
            module, inputs, kwargs = case.build(rng)
            forward_kwargs = {k: v for k, v in kwargs.items() if k not in _GRADCHECK_OPTIONS}
            if relu_margin(module, *inputs, **forward_kwargs) > RELU_MARGIN:
                break  # else: this draw sits on a ReLU kink; draw the case again
        results.append((case.name, gradcheck(module, *inputs, threshold=threshold,
                                             seed=seed, **kwargs)))
    return results


# A case whose ReLU inputs come within RELU_MARGIN of 0 is drawn again (see relu_margin).
RELU_MARGIN = 2e-3
_MAX_DRAWS = 50
_GRADCHECK_OPTIONS = tuple(name for name, p in inspect.signature(gradcheck).parameters.items()
                           if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not p.empty)
