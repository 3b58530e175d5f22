"""The library's own gradient check: every layer at small random sizes.

``numtransformer gradcheck`` runs ``run_all()`` and prints one row per checked
tensor.  Each case is a named factory ``f(rng) -> (module, inputs, kwargs)``
building a float64 module and its inputs; later layers add their cases to
``CASES`` (here, or in a ``gradcheck_cases()`` function of their package that
``all_cases`` collects).
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

import numpy as np

from .gradcheck import GradcheckReport, gradcheck, relu_margin
from .layers import (
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    PositionwiseFeedForward,
    ReLU,
    RMSNorm,
    Sigmoid,
    SiLU,
    SinusoidalPositionalEncoding,
    Softmax,
    SwiGLUFeedForward,
    Tanh,
    TiedLinear,
)
from .losses import CrossEntropyLoss
from .module import Parameter

F64 = np.float64


class Case(NamedTuple):
    name: str
    build: Callable[[np.random.Generator], tuple]  # rng -> (module, inputs, kwargs)


def _away_from_zero(rng, shape, margin=0.05):
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


def _x(rng, *shape):
    return rng.standard_normal(shape)


CASES: list[Case] = [
    Case("Linear", lambda r: (Linear(5, 3, dtype=F64, rng=r), (_x(r, 2, 3, 5),), {})),
    Case("Linear(bias=False)", lambda r: (Linear(4, 6, bias=False, dtype=F64, rng=r),
                                           (_x(r, 7, 4),), {})),
    Case("TiedLinear(bias=True)", lambda r: (
        TiedLinear(Parameter(r.standard_normal((9, 5))), bias=True), (_x(r, 2, 3, 5),), {})),
    Case("Embedding", lambda r: (Embedding(9, 4, dtype=F64, rng=r),
                                 (r.integers(0, 9, (3, 5)),), {})),
    Case("ReLU", lambda r: (ReLU(), (_away_from_zero(r, (3, 7)),), {})),
    Case("GELU", lambda r: (GELU(), (_x(r, 3, 7),), {})),
    Case("GELU(tanh)", lambda r: (GELU("tanh"), (_x(r, 3, 7),), {})),
    Case("Tanh", lambda r: (Tanh(), (_x(r, 3, 7),), {})),
    Case("Sigmoid", lambda r: (Sigmoid(), (_x(r, 3, 7),), {})),
    Case("Softmax", lambda r: (Softmax(), (_x(r, 3, 7),), {})),
    Case("Softmax(masked)", lambda r: (Softmax(), (_x(r, 3, 5),),
                                       {"mask": np.array([[0, 1, 0, 0, 1], [1] * 5, [0] * 5],
                                                         dtype=bool)})),
    Case("Dropout(p=0.3)", lambda r: (Dropout(0.3, rng=r.spawn(1)[0]), (_x(r, 4, 6),), {})),
    Case("LayerNorm", lambda r: (LayerNorm(6, dtype=F64), (_x(r, 2, 3, 6),), {})),
    Case("LayerNorm(no affine)", lambda r: (LayerNorm(5, elementwise_affine=False, dtype=F64),
                                            (_x(r, 4, 5),), {})),
    Case("PositionwiseFeedForward", lambda r: (
        PositionwiseFeedForward(6, 10, activation="gelu", dropout=0.2, dtype=F64, rng=r),
        (_x(r, 2, 3, 6),), {})),
    Case("SinusoidalPositionalEncoding", lambda r: (SinusoidalPositionalEncoding(7, max_len=16),
                                                    (_x(r, 2, 5, 7),), {"offset": 3})),
    Case("LearnedPositionalEmbedding", lambda r: (
        LearnedPositionalEmbedding(12, 6, dtype=F64, rng=r), (_x(r, 2, 5, 6),), {"offset": 2})),
    Case("CrossEntropyLoss", lambda r: (
        CrossEntropyLoss(ignore_index=0, label_smoothing=0.1),
        (_x(r, 3, 4, 7), r.integers(0, 7, (3, 4))), {})),
    Case("SiLU", lambda r: (SiLU(), (2 * _x(r, 3, 7),), {})),
    Case("RMSNorm", lambda r: (RMSNorm(6, dtype=F64), (_x(r, 2, 3, 6),), {})),
    Case("RMSNorm(no affine)", lambda r: (RMSNorm(5, elementwise_affine=False, dtype=F64),
                                          (_x(r, 4, 5),), {})),
    Case("SwiGLUFeedForward", lambda r: (SwiGLUFeedForward(6, 10, dtype=F64, rng=r),
                                         (_x(r, 2, 3, 6),), {})),
    Case("SwiGLUFeedForward(bias, dropout)", lambda r: (
        SwiGLUFeedForward(5, 7, bias=True, dropout=0.2, dtype=F64, rng=r), (_x(r, 3, 5),), {})),
]


def all_cases() -> list[Case]:
    """The core cases plus those of every package that registers its own."""
    cases = list(CASES)
    for package in _CASE_PROVIDERS:
        cases.extend(package())
    return cases


def _attention_cases() -> list[Case]:
    from .attention.cases import gradcheck_cases

    return gradcheck_cases()


def _recurrent_cases() -> list[Case]:
    from .recurrent.cases import gradcheck_cases

    return gradcheck_cases()


def _model_cases() -> list[Case]:
    from .models.cases import gradcheck_cases

    return gradcheck_cases()


def _seq2seq_cases() -> list[Case]:
    from .models.seq2seq_cases import gradcheck_cases

    return gradcheck_cases()


def _interop_cases() -> list[Case]:
    from .interop.cases import gradcheck_cases

    return gradcheck_cases()


def _pretrained_cases() -> list[Case]:
    from .pretrained.cases import gradcheck_cases

    return gradcheck_cases()


def _memnn_cases() -> list[Case]:
    from .models.memnn_cases import gradcheck_cases

    return gradcheck_cases()


# Functions returning a list of Case, one per package above the core layers.
_CASE_PROVIDERS: list[Callable[[], list[Case]]] = [_attention_cases, _recurrent_cases,
                                                   _model_cases, _seq2seq_cases,
                                                   _memnn_cases, _interop_cases,
                                                   _pretrained_cases]


def run_all(seed: int = 0, threshold: float = 1e-7,
            only: str | None = None) -> list[tuple[str, GradcheckReport]]:
    """Run every case (or those whose name contains ``only``)."""
    results = []
    for i, case in enumerate(all_cases()):
        if only and only.lower() not in case.name.lower():
            continue
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
