import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import CrossEntropyLoss, gradcheck
from tests.helpers import seeds


@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=2), V=st.integers(1, 7),
       smoothing=st.sampled_from([0.0, 0.1, 0.5]), reduction=st.sampled_from(["mean", "sum", "none"]),
       p_ignore=st.sampled_from([0.0, 0.3, 1.0]), seed=seeds)
def test_gradcheck(lead, V, smoothing, reduction, p_ignore, seed):
    rng = np.random.default_rng(seed)
    logits = 2 * rng.standard_normal((*lead, V))
    targets = rng.integers(0, V, lead)
    targets = np.where(rng.random(lead) < p_ignore, -100, targets)
    loss = CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)
    gradcheck(loss, logits, targets, seed=seed).assert_passed()


def test_known_value():
    # logits [0, ln 3] -> p = [1/4, 3/4]
    logits = np.array([[0.0, math.log(3)], [math.log(3), 0.0]])
    loss = CrossEntropyLoss()(logits, np.array([1, 1]))
    assert abs(float(loss) - (-(math.log(0.75) + math.log(0.25)) / 2)) < 1e-12
    # label smoothing eps = 0.2, V = 2: q = [0.1, 0.9]
    ls = CrossEntropyLoss(label_smoothing=0.2)(logits[:1], np.array([1]))
    assert abs(float(ls) - -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))) < 1e-12


def test_backward_is_softmax_minus_target():
    logits = np.random.default_rng(0).standard_normal((3, 5))
    targets = np.array([4, 0, -100])
    ce = CrossEntropyLoss()
    _, cache = ce.forward(logits, targets)
    dz = ce.backward(1.0, cache)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = (p - np.eye(5)[[4, 0, 0]]) / 2
    expected[2] = 0
    np.testing.assert_allclose(dz, expected, rtol=1e-12)


def test_all_ignored_gives_zero_loss_and_zero_gradient():
    ce = CrossEntropyLoss(label_smoothing=0.1)
    loss, cache = ce.forward(np.ones((2, 3, 4), np.float32), np.full((2, 3), -100))
    dz = ce.backward(1.0, cache)
    assert float(loss) == 0.0 and not dz.any() and np.isfinite(dz).all()


def test_huge_logits_are_finite_with_smoothing():
    ce = CrossEntropyLoss(label_smoothing=0.1)
    logits = np.array([[1e4, -1e4, 0.0]], np.float32)
    loss, cache = ce.forward(logits, np.array([1]))
    dz = ce.backward(1.0, cache)
    assert np.isfinite(loss) and np.isfinite(dz).all()
    assert loss.dtype == np.float32 and dz.dtype == np.float32


def test_float32_preserved_every_reduction():
    logits = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    targets = np.array([[0, 1, -100], [4, 4, 2]])
    for reduction in ("mean", "sum", "none"):
        ce = CrossEntropyLoss(reduction=reduction, label_smoothing=0.1)
        loss, cache = ce.forward(logits, targets)
        dout = 1.0 if reduction != "none" else np.ones((2, 3), np.float32)
        assert loss.dtype == np.float32 and ce.backward(dout, cache).dtype == np.float32


def test_inputs_not_mutated():
    logits = np.random.default_rng(0).standard_normal((4, 3))
    targets = np.array([0, -100, 2, 1])
    l0, t0 = logits.copy(), targets.copy()
    ce = CrossEntropyLoss()
    _, cache = ce.forward(logits, targets)
    ce.backward(1.0, cache)
    assert np.array_equal(logits, l0) and np.array_equal(targets, t0)


def test_bad_input():
    ce = CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: targets contains id 5, expected ids in \[0, 5\)"):
        ce(np.zeros((2, 5)), np.array([0, 5]))
    with pytest.raises(ValueError, match="contains id -3"):
        ce(np.zeros((2, 5)), np.array([0, -3]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: targets has shape \(3,\), expected \(2,\)"):
        ce(np.zeros((2, 5)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        ce(np.zeros((2, 5)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="logits contains 1 NaN"):
        ce(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)


def test_backward_checks_dout():
    ce = CrossEntropyLoss(reduction="none")
    _, cache = ce.forward(np.zeros((2, 3, 4)), np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"dout has shape \(3,\), expected \(2, 3\)"):
        ce.backward(np.ones(3), cache)
    ce = CrossEntropyLoss()
    _, cache = ce.forward(np.zeros((2, 4)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="dout must be a scalar"):
        ce.backward(np.ones(2), cache)
    assert ce.backward(np.array([2.0]), cache).shape == (2, 4)
