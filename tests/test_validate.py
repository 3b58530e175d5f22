"""The shared input checks (numtransformer._validate): each names the layer, the
argument, what was expected and what came."""

import numpy as np
import pytest

from numtransformer import Linear
from numtransformer._validate import (as_rng, check_float, check_float_dtype, check_ids,
                                      check_mask, check_positive_int, check_probability)


def test_check_float_accepts_and_names_what_is_wrong():
    x = np.zeros((2, 3), np.float32)
    assert check_float("Layer", "x", x, dtype=np.float32, ndim=2, last_dim=3) is x
    assert check_float("Layer", "x", [1.0, 2.0]).dtype == np.float64  # a list becomes an array
    cases = [
        (dict(x="text"), TypeError, "Layer: x must be a numpy array, got str"),
        (dict(x=np.zeros(2, np.int64)), TypeError, "must be a floating-point array .* int64"),
        (dict(x=np.zeros(2, np.float16)), TypeError, "must be a float32 or float64 array"),
        (dict(x=x, dtype=np.float64), TypeError, "has dtype float32 but the layer computes in "
                                                 "float64"),
        (dict(x=x, ndim=(3, 4)), ValueError, r"must have 3 or 4 dims, got shape \(2, 3\)"),
        (dict(x=x, min_ndim=3), ValueError, "must have at least 3 dims"),
        (dict(x=x, last_dim=4, last_dim_name="d_model"), ValueError,
         "x has last dim 3, expected d_model=4"),
        (dict(x=np.float64(1.0), last_dim=4), ValueError, r"last dim none \(a scalar\)"),
        (dict(x=np.array([1.0, np.nan, np.inf])), ValueError, "x contains 2 NaN/inf value"),
    ]
    for kw, error, message in cases:
        with pytest.raises(error, match=message):
            check_float("Layer", "x", kw.pop("x"), **kw)
    check_float("Layer", "x", np.array([np.nan]), finite=False)  # the scan can be turned off


def test_a_module_is_named_by_its_class():
    with pytest.raises(ValueError, match="Linear: x has last dim 2, expected in_features=3"):
        Linear(3, 1)(np.zeros((1, 2), np.float32))


def test_check_ids_mask_ints_probabilities_dtypes_and_rngs():
    assert check_ids("Emb", "ids", [1, 2], 3).tolist() == [1, 2]
    for ids, error, message in ((np.array([0.5]), TypeError, "integer array, got dtype float64"),
                                (np.array([True]), TypeError, "dtype bool"),
                                (np.array([3]), ValueError, r"contains id 3, expected ids in \[0, 3\)"),
                                (np.array([-1]), ValueError, "contains id -1"),
                                ("1", TypeError, "got str")):
        with pytest.raises(error, match=message):
            check_ids("Emb", "ids", ids, 3)
    check_ids("Emb", "ids", np.zeros((0,), np.int64), 3)  # empty: nothing to range-check
    m = np.zeros((2, 3), bool)
    assert check_mask("MHA", "mask", m, (2, 3)) is m
    with pytest.raises(TypeError, match="must be boolean .* got dtype int64"):
        check_mask("MHA", "mask", m.astype(np.int64), (2, 3))
    with pytest.raises(ValueError, match=r"has shape \(2, 3\), expected \(3, 2\)"):
        check_mask("MHA", "mask", m, (3, 2))
    assert check_positive_int("L", "n", np.int64(2)) == 2
    for bad, error in ((True, TypeError), (2.0, TypeError), (0, ValueError)):
        with pytest.raises(error, match="L: n must be"):
            check_positive_int("L", "n", bad)
    assert check_probability("D", "p", 1) == 1.0
    with pytest.raises(ValueError, match=r"must be in \[0, 1\), got 1.0"):
        check_probability("D", "p", 1.0, allow_one=False)
    with pytest.raises(TypeError, match="must be a float, got bool"):
        check_probability("D", "p", True)
    assert check_float_dtype("L", "float32") == np.float32
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        check_float_dtype("L", np.float16)
    g = np.random.default_rng(0)
    assert as_rng(g) is g and isinstance(as_rng(3), np.random.Generator)


def test_check_source_target_names_the_model_and_the_argument():
    from numtransformer._validate import check_source_target

    src, tgt = check_source_target("Seq2Seq", np.array([[1, 2]]), None, None, None, 5, 5)
    assert tgt is None and src.shape == (1, 2)
    with pytest.raises(ValueError, match=r"^Seq2Seq: src_ids must be \(B, S\) with S >= 1"):
        check_source_target("Seq2Seq", np.zeros((2, 0), int), None, None, None, 5, 5)
    with pytest.raises(ValueError, match=r"^Transformer: tgt_in_ids must be \(B, T\) with B = 1"):
        check_source_target("Transformer", np.array([[1]]), np.array([[1], [2]]), None, None,
                            5, 5)
    with pytest.raises(ValueError, match="tgt_pad_mask"):
        check_source_target("Transformer", np.array([[1]]), np.array([[1, 2]]), None,
                            np.zeros((1, 3), bool), 5, 5)
