"""Hypothesis strategies for your own kernel tests (hypothesis is needed only here).

    from hypothesis import given
    from numtransformer import oracle
    from numtransformer.oracle import strategies

    @given(strategies.attention_cases(gqa=True))
    def test_my_attention(case):
        oracle.compare(my_attention, "scaled_dot_product_attention", [case],
                       verbose=False).assert_passed()

Each strategy draws a few integers (shapes, a mask kind, a seed) and builds
the arrays from them with NumPy (``numtransformer.oracle.examples``), so a
failing example shrinks to small shapes and a simple mask.  Shapes include
length-1 sequences, and the masks include fully blocked query rows and fully
padded sequences.
"""

from __future__ import annotations

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - hypothesis is a test dependency
    raise ImportError(
        "numtransformer.oracle.strategies needs hypothesis, a test dependency: "
        "pip install hypothesis (or pip install 'numtransformer[test]')") from exc

from . import examples as C

__all__ = ["attention_shapes", "attention_masks", "attention_cases", "mha_cases",
           "norm_cases", "cross_entropy_cases", "recurrent_cases", "rotary_cases", "cases_for"]

_SEEDS = st.integers(0, 2**31 - 1)


@st.composite
def attention_shapes(draw, max_batch=3, max_heads=4, max_len=6, max_dim=8, gqa=True):
    """A dict B, H, H_kv, Tq, Tk, d, d_v: H_kv divides H (H_kv = H without ``gqa``);
    lengths from 1 (a single query or key) to ``max_len``."""
    H = draw(st.integers(1, max_heads))
    divisors = [g for g in range(1, H + 1) if H % g == 0]
    H_kv = draw(st.sampled_from(divisors)) if gqa else H
    return {"B": draw(st.integers(1, max_batch)), "H": H, "H_kv": H_kv,
            "Tq": draw(st.integers(1, max_len)), "Tk": draw(st.integers(1, max_len)),
            "d": draw(st.integers(1, max_dim)), "d_v": draw(st.integers(1, max_dim))}


def attention_masks(kinds=C.MASK_KINDS):
    """A mask kind of ``examples.MASK_KINDS`` (none, key padding with fully padded
    sequences, causal, sliding window, random, fully blocked rows, a float bias)."""
    return st.sampled_from(tuple(kinds))


@st.composite
def attention_cases(draw, max_batch=3, max_heads=4, max_len=6, max_dim=8, gqa=True,
                    masks=C.MASK_KINDS, layout="bhtd"):
    """Keyword arguments of ``oracle.scaled_dot_product_attention``."""
    shape = draw(attention_shapes(max_batch, max_heads, max_len, max_dim, gqa))
    return C.attention_case(**shape, mask=draw(attention_masks(masks)), seed=draw(_SEEDS),
                            layout=layout)


@st.composite
def mha_cases(draw, max_batch=2, max_len=5, max_head_dim=3, max_heads=4, gqa=True,
              masks=C.MASK_KINDS):
    """Keyword arguments of ``oracle.multi_head_attention`` (numtransformer layout)."""
    H = draw(st.integers(1, max_heads))
    H_kv = draw(st.sampled_from([g for g in range(1, H + 1) if H % g == 0])) if gqa else H
    return C.mha_case(B=draw(st.integers(1, max_batch)), Tq=draw(st.integers(1, max_len)),
                      Tk=draw(st.integers(1, max_len)),
                      D=H * draw(st.integers(1, max_head_dim)), n_heads=H, n_kv_heads=H_kv,
                      mask=draw(attention_masks(masks)), bias=draw(st.booleans()),
                      seed=draw(_SEEDS))


@st.composite
def norm_cases(draw, kind="layer_norm", max_rank=3, max_size=4, max_features=8,
               min_features=1):
    """Keyword arguments of ``oracle.layer_norm`` (or ``rms_norm``: kind="rms_norm")."""
    lead = draw(st.lists(st.integers(1, max_size), max_size=max_rank - 1))
    shape = tuple(lead) + (draw(st.integers(min_features, max_features)),)
    return C.norm_case(shape, draw(st.booleans()), kind, draw(_SEEDS))


@st.composite
def cross_entropy_cases(draw, max_rows=5, max_classes=7):
    """Keyword arguments of ``oracle.cross_entropy``: ignored targets, smoothing,
    every reduction (a batch whose targets are all ignored included)."""
    return C.cross_entropy_case(
        N=draw(st.integers(1, max_rows)), V=draw(st.integers(1, max_classes)),
        T=draw(st.none() | st.integers(1, 3)),
        ignore_frac=draw(st.sampled_from([0.0, 0.3, 1.0])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1, 0.5])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])), seed=draw(_SEEDS))


@st.composite
def recurrent_cases(draw, kind="lstm", max_batch=3, max_len=4, max_dim=4, max_hidden=4):
    """Keyword arguments of ``oracle.lstm``, ``gru``, ``lstm_step`` or ``gru_step``
    (``kind``)."""
    return C.recurrent_case(kind, draw(st.integers(1, max_batch)), draw(st.integers(1, max_len)),
                            draw(st.integers(1, max_dim)), draw(st.integers(1, max_hidden)),
                            draw(st.booleans()), draw(st.booleans()), draw(_SEEDS))


@st.composite
def rotary_cases(draw, max_len=6, max_pairs=4):
    """Keyword arguments of ``oracle.rotary_embedding`` (both layouts, offsets)."""
    return C.rotary_case(draw(st.integers(1, 2)), draw(st.integers(1, 2)),
                         draw(st.integers(1, max_len)), 2 * draw(st.integers(1, max_pairs)),
                         draw(st.sampled_from(["half", "interleaved"])), draw(_SEEDS),
                         draw(st.integers(0, 100)))


def cases_for(family: str):
    """The default strategy of an oracle family, by its name."""
    table = {"scaled_dot_product_attention": attention_cases(),
             "multi_head_attention": mha_cases(),
             "layer_norm": norm_cases("layer_norm"), "rms_norm": norm_cases("rms_norm"),
             "cross_entropy": cross_entropy_cases(),
             "lstm": recurrent_cases("lstm"), "gru": recurrent_cases("gru"),
             "lstm_step": recurrent_cases("lstm_step"), "gru_step": recurrent_cases("gru_step"),
             "rotary_embedding": rotary_cases()}
    if family not in table:
        raise ValueError(f"cases_for: unknown family {family!r}; expected one of {sorted(table)}")
    return table[family]
