"""The tiled attention kernel (functional/flash.py) is the plain attention core, in tiles.

Output and every gradient equal ``scaled_dot_product_attention_forward`` /
``_backward`` run with the same masks as one dense matrix: <= 1e-12 relative
in float64, within float32 rounding in float32 (no farther from the float64
result than the plain kernel in float32 is), on hypothesis-drawn shapes,
heads (grouped-query included), block sizes (larger and smaller than the
lengths, dividing them or not), causal / window / padding / dense masks,
fully blocked rows and query offsets."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer import functional as F
from numtransformer.cases.flash import CASES
from numtransformer.functional import flash
from tests.helpers import seeds
from tests.kernels.equal import F32_ULPS, same

HEADS = [(1, 1), (2, 1), (2, 2), (3, 1), (4, 2)]
LENGTHS = [1, 2, 7, 33, 64, 257]


def dense_blocked(B, Tq, Tk, *, causal=False, window=None, q_offset=0, key_padding_mask=None,
                  attn_mask=None):
    """The same masks as one (B, 1 or H, Tq, Tk) matrix, for the plain kernel."""
    t = q_offset + np.arange(Tq)[:, None]
    j = np.arange(Tk)[None, :]
    blocked = np.zeros((B, 1, Tq, Tk), dtype=bool)
    if causal or window is not None:
        blocked |= j > t
    if window is not None:
        blocked |= j <= t - window
    if key_padding_mask is not None:
        blocked |= key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        blocked = blocked | attn_mask
    return blocked


@st.composite
def problems(draw):
    H, n_kv = draw(st.sampled_from(HEADS))
    Tq = draw(st.sampled_from(LENGTHS))
    Tk = draw(st.sampled_from([Tq, Tq, Tq + 5] + LENGTHS))
    long = max(Tq, Tk) > 40  # blocks of 1 or 2 over 257 rows are slow, not different
    sizes = [8, 16, 64, 100, 512] if long else [1, 2, 3, 8, 64]
    return dict(
        B=draw(st.integers(1, 2)), H=H, n_kv=n_kv, Tq=Tq, Tk=Tk,
        d=draw(st.sampled_from([1, 2, 4, 5])), d_v=draw(st.sampled_from([1, 3, 4])),
        block_q=draw(st.sampled_from(sizes)), block_k=draw(st.sampled_from(sizes)),
        causal=draw(st.booleans()), window=draw(st.sampled_from([None, None, 1, 3, 40])),
        q_offset=draw(st.sampled_from([0, 0, max(Tk - Tq, 0), 3])),
        padding=draw(st.sampled_from([None, "random", "one sequence all padding"])),
        dense=draw(st.booleans()), rotary=draw(st.booleans()),
        seed=draw(seeds))


def make(p, dtype):
    rng = np.random.default_rng(p["seed"])
    B, H, n_kv, Tq, Tk = p["B"], p["H"], p["n_kv"], p["Tq"], p["Tk"]
    d = p["d"] + (p["d"] % 2 if p["rotary"] else 0)  # rotary pairs need an even width
    q = rng.standard_normal((B, H, Tq, d)).astype(dtype)
    k = rng.standard_normal((B, n_kv, Tk, d)).astype(dtype)
    v = rng.standard_normal((B, n_kv, Tk, p["d_v"])).astype(dtype)
    do = rng.standard_normal((B, H, Tq, p["d_v"])).astype(dtype)
    masks = dict(causal=p["causal"], window=p["window"], q_offset=p["q_offset"])
    if p["padding"] is not None:
        kpm = rng.random((B, Tk)) < 0.3
        if p["padding"] != "random":
            kpm[-1] = True
        masks["key_padding_mask"] = kpm
    if p["dense"]:  # per head, with one fully blocked row
        am = rng.random((B, H, Tq, Tk)) < 0.25
        am[0, -1, Tq // 2] = True
        masks["attn_mask"] = am
    position = None
    if p["rotary"]:
        position = F.rope_position(p["q_offset"] + np.arange(Tq), np.arange(Tk), d, 100.0,
                                   "half", dtype)
    return (q, k, v), do, masks, position


def _tolerate_blas_invalid_flag():
    """OpenBLAS's GEMM kernels can raise the FE_INVALID flag on finite inputs with a
    finite result (numpy/numpy#24067, OpenMathLib/OpenBLAS#1924), and numpy turns it
    into "invalid value encountered in matmul" at random: that one warning is not the
    kernel's; the tests check every result for NaN themselves."""
    warnings.filterwarnings("ignore", message="invalid value encountered in matmul",
                            category=RuntimeWarning)


def both(p, dtype):
    """(tiled (o, dq, dk, dv), plain (o, dq, dk, dv), tiled cache, scales)."""
    (q, k, v), do, masks, position = make(p, dtype)
    saved = [a.copy() for a in (q, k, v, do)]
    o, cache = F.flash_attention_forward(q, k, v, position=position, block_q=p["block_q"],
                                         block_k=p["block_k"], **masks)
    tiled = (o,) + F.flash_attention_backward(do, cache)
    for a, s in zip((q, k, v, do), saved):
        np.testing.assert_array_equal(a, s)  # nothing written into an input
    blocked = dense_blocked(p["B"], p["Tq"], p["Tk"], **masks)
    o2, cache2 = F.scaled_dot_product_attention_forward(q, k, v, blocked, position=position)
    plain = (o2,) + F.scaled_dot_product_attention_backward(do, cache2)
    return tiled, plain, cache, scales(q, k, v, do)


def scales(q, k, v, do):
    """The natural size of o, dq, dk, dv: where an exact result is 0 (dq and dk of a
    softmax over one key), the rounding of the tiles is judged against it."""
    mq, mk, mv, mdo = (float(np.abs(a).max(initial=0.0)) for a in (q, k, v, do))
    return mv, mdo * mv * mk, mdo * mv * mq, mdo


def error(a, b, scale) -> float:
    """max |a - b| over the larger of max |a|, max |b| and the natural scale."""
    if a.size == 0:
        return 0.0
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    size = max(float(np.abs(a).max()), float(np.abs(b).max()), scale)
    return 0.0 if diff == 0 else diff / size


NAMES = ("o", "dq", "dk", "dv")


@given(problems())
def test_tiled_equals_plain_in_float64(p):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, invalid value or divide-by-zero warning
        _tolerate_blas_invalid_flag()
        tiled, plain, cache, scale = both(p, np.float64)
    for name, a, b, sc in zip(NAMES, tiled, plain, scale):
        assert a.dtype == np.float64 and a.shape == b.shape, name
        assert np.isfinite(a).all(), name
        assert error(a, b, sc) <= 1e-12, (name, error(a, b, sc))
    assert np.isfinite(cache.lse).all()


@given(problems())
def test_tiled_equals_plain_in_float32(p):
    """No farther from the float64 result than the plain kernel in float32 is (twice
    its error plus a few ulps of the tensor's size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _tolerate_blas_invalid_flag()
        tiled, plain, cache, scale = both(p, np.float32)
    oracle, _, _, _ = both(p, np.float64)
    assert cache.lse.dtype == np.float32 and cache.q_s.dtype == np.float32
    floor = F32_ULPS * float(np.finfo(np.float32).eps)
    for name, a, b, o, sc in zip(NAMES, tiled, plain, oracle, scale):
        assert a.dtype == np.float32, name  # no float64 promotion
        assert np.isfinite(a).all(), name
        assert error(a, o, sc) <= 2 * error(b, o, sc) + floor, \
            (name, error(a, o, sc), error(b, o, sc))


@given(problems(), st.sampled_from([np.float64, np.float32]))
def test_fast_kernels_equal_the_reference(p, dtype):
    """numtransformer.fast's tiled kernels (in-place tiles) against these."""
    (q, k, v), do, masks, position = make(p, dtype)
    o, cache = same("flash_attention_forward", q, k, v, position=position,
                    block_q=p["block_q"], block_k=p["block_k"], **masks)
    same("flash_attention_backward", do, cache)


def _p(Tq, Tk, bq, bk, H=2, n_kv=1, causal=False, window=None, q_offset=0, padding=None,
       dense=False, rotary=False, B=2, d=4, d_v=3):
    return dict(B=B, H=H, n_kv=n_kv, Tq=Tq, Tk=Tk, d=d, d_v=d_v, block_q=bq, block_k=bk,
                causal=causal, window=window, q_offset=q_offset, padding=padding, dense=dense,
                rotary=rotary, seed=Tq * 1000 + Tk)


# the sizes of the brief, each mask, blocks smaller and larger than T, ragged last tiles
FIXED = {
    "T=257 causal GQA padding, blocks 64x32": _p(257, 257, 64, 32, H=4, n_kv=2, causal=True,
                                                  padding="random"),
    "T=257 window 40, one block larger than T": _p(257, 257, 300, 300, window=40),
    "T=257 blocks 100x48, rotary, fully padded sequence": _p(257, 257, 100, 48, causal=True,
                                                             rotary=True, padding="all"),
    "T=33 dense mask and padding, blocks 8x5": _p(33, 33, 8, 5, dense=True, padding="random"),
    "T=7 causal rotary, blocks 3x2": _p(7, 7, 3, 2, H=3, n_kv=3, causal=True, rotary=True),
    "T=1": _p(1, 1, 64, 64, causal=True),
    "decode 7 steps after 33, causal": _p(7, 40, 4, 16, causal=True, q_offset=33),
    "decode 1 step after 32, window 5": _p(1, 33, 1, 8, window=5, q_offset=32, padding="random"),
    "cross 7 x 33, no mask": _p(7, 33, 4, 16, H=4, n_kv=1),
    "cross 33 x 7 with padding, blocks larger": _p(33, 7, 64, 64, padding="all"),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(FIXED))
def test_tiled_equals_plain_on_fixed_problems(name, dtype):
    if dtype == np.float64:
        test_tiled_equals_plain_in_float64.hypothesis.inner_test(FIXED[name])
    else:
        test_tiled_equals_plain_in_float32.hypothesis.inner_test(FIXED[name])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(FIXED))
def test_fast_kernels_equal_the_reference_on_fixed_problems(name, dtype):
    test_fast_kernels_equal_the_reference.hypothesis.inner_test(FIXED[name], dtype)


def test_fully_blocked_rows_give_zeros_and_the_finite_sentinel():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 5, 3)) for _ in range(3))
    kpm = np.zeros((2, 5), dtype=bool)
    kpm[1] = True  # sequence 1: every key padding
    am = np.zeros((1, 1, 5, 5), dtype=bool)
    am[0, 0, 2] = True  # query 2 blocked everywhere
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _tolerate_blas_invalid_flag()
        o, cache = F.flash_attention_forward(q, k, v, key_padding_mask=kpm, attn_mask=am,
                                             block_q=2, block_k=2)
        dq, dk, dv = F.flash_attention_backward(rng.standard_normal(o.shape), cache)
    assert (o[1] == 0).all() and (o[0, :, 2] == 0).all() and (o[0, :, 1] != 0).all()
    assert (cache.lse[1] == F.lse_blocked(np.float64)).all()
    assert (cache.lse[0, :, 2] == np.finfo(np.float64).max).all()
    assert np.isfinite(cache.lse).all()
    assert (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (dq[0, :, 2] == 0).all()


def test_lse_is_the_log_sum_exp_of_the_scores():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 9, 4)) for _ in range(3))
    o, cache = F.flash_attention_forward(q, k, v, causal=True, block_q=4, block_k=3)
    e = (q / 2.0) @ k.swapaxes(-1, -2)
    e = np.where(np.triu(np.ones((9, 9), dtype=bool), 1), -np.inf, e)
    np.testing.assert_allclose(cache.lse, np.log(np.exp(e).sum(-1)), rtol=1e-14)


def test_the_cache_holds_no_tq_by_tk_array():
    rng = np.random.default_rng(2)
    T, d = 200, 4
    q, k, v = (rng.standard_normal((1, 2, T, d)) for _ in range(3))
    _, cache = F.flash_attention_forward(q, k, v, causal=True, block_q=16, block_k=16)
    sizes = [a.size for a in cache if isinstance(a, np.ndarray)]
    assert max(sizes) == 2 * T * d and cache.lse.shape == (1, 2, T)


@pytest.mark.parametrize("tile, expected", [
    ((0, 4, 4, 8), "skip"),  # causal: keys 4..7 after queries 0..3
    ((4, 8, 0, 4), None),  # below the diagonal: nothing blocked
    ((0, 4, 0, 4), "some"),  # on the diagonal
])
def test_causal_tiles_above_the_diagonal_are_skipped(tile, expected):
    masks = flash.TileMasks(causal=True, window=None, q_offset=0, key_padding_mask=None,
                            attn_mask=None)
    got = flash._tile_blocked(masks, *tile)
    if expected == "skip":
        assert got is flash._SKIP
    elif expected is None:
        assert got is None
    else:
        assert got.shape == (4, 4) and got.any() and not got.all()


def test_window_padding_and_offset_skip_tiles():
    kpm = np.zeros((2, 8), dtype=bool)
    kpm[:, 4:] = True
    masks = flash.TileMasks(causal=False, window=2, q_offset=10, key_padding_mask=kpm,
                            attn_mask=None)
    assert flash._tile_blocked(masks, 0, 2, 0, 4) is flash._SKIP  # keys 0..3: older than 10-1
    masks = masks._replace(window=None)
    assert flash._tile_blocked(masks, 0, 2, 4, 8) is flash._SKIP  # every sequence pads 4..7
    assert flash._tile_blocked(masks, 0, 2, 0, 4) is None


def test_skipped_tiles_are_not_computed(monkeypatch):
    """Causal, T = 8 in tiles of 2: 10 of the 16 tiles are computed (4 + 3 + 2 + 1)."""
    calls = []
    real = flash._tile_blocked

    def spy(*args):
        out = real(*args)
        calls.append(out is not flash._SKIP)
        return out

    monkeypatch.setattr(flash, "_tile_blocked", spy)
    q = np.random.default_rng(3).standard_normal((1, 1, 8, 2))
    F.flash_attention_forward(q, q, q, causal=True, block_q=2, block_k=2)
    assert len(calls) == 16 and sum(calls) == 10


def test_is_causal_mask():
    from numtransformer.attention import causal_mask
    assert flash.is_causal_mask(causal_mask(300))
    assert not flash.is_causal_mask(~causal_mask(5))
    assert not flash.is_causal_mask(causal_mask(5)[None])
    assert flash.is_causal_mask(np.arange(6)[None, :] > 3 + np.arange(2)[:, None], 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_q=0), "block_q must be an int >= 1"),
    (dict(block_k=2.5), "block_k must be an int >= 1"),
    (dict(window=0), "window must be an int >= 1 or None"),
    (dict(q_offset=-1), "q_offset must be an int >= 0"),
    (dict(key_padding_mask=np.zeros((2, 3), dtype=bool)), r"key_padding_mask must be boolean"),
    (dict(attn_mask=np.zeros((4, 4))), "attn_mask must be boolean"),
])
def test_bad_arguments_are_named(kwargs, match):
    q = np.zeros((1, 2, 4, 3))
    with pytest.raises(ValueError, match="flash_attention_forward: " + match):
        F.flash_attention_forward(q, q, q, **kwargs)


def test_heads_must_group():
    q, k = np.zeros((1, 3, 4, 2)), np.zeros((1, 2, 4, 2))
    with pytest.raises(ValueError, match="H_kv dividing H = 3"):
        F.flash_attention_forward(q, k, k)


@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith("flash_attention")],
                         ids=lambda c: c.name)
def test_gradcheck_case_passes(case):
    module, inputs, kwargs = case.build(np.random.default_rng([0, 1]))
    gradcheck(module, *inputs, **kwargs).assert_passed()
