"""Numerical extremes (issue 10): logits of +-1e4, -inf entries, fully masked
rows, constant and 1e6-sized LayerNorm rows, cross-entropy at 1e4 and with
every target ignored, GELU and sigmoid at +-1e3, recurrences over 500 steps.

Forward and backward must stay finite (no silent NaN/inf) and agree with the
closed form where there is one; where the function is smooth, the float64
gradient check still passes at these extremes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import numtransformer as nt
from numtransformer.gradcheck import gradcheck, numerical_gradient
from numtransformer.layers import log_softmax, softmax

from .tally import NOTES

FLOATS = [np.float32, np.float64]


def _passes(name: str, report) -> None:
    """Assert a gradcheck passed; keep its worst error for the summary."""
    report.assert_passed()
    NOTES.setdefault("gradcheck max error at extremes (float64)", {})[name] = report.max_error


def _finite(*arrays):
    for a in arrays:
        if a is None:
            continue
        for x in (a if isinstance(a, tuple) else (a,)):
            if x is not None:
                assert np.isfinite(x).all(), "non-finite values"


def _backward(module, out, cache, seed=0):
    rng = np.random.default_rng(seed)
    outs = out if isinstance(out, tuple) else (out,)
    douts = tuple(rng.standard_normal(np.shape(o)).astype(o.dtype) for o in outs)
    module.zero_grad()
    grads = module.backward(douts if isinstance(out, tuple) else douts[0], cache)
    _finite(grads)
    for name, p in module.named_parameters():
        assert np.isfinite(p.grad).all(), name
    return grads


# -- softmax and attention at +-1e4 ----------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_at_1e4_minus_inf_and_fully_masked_rows(dtype):
    x = np.array([[1e4, -1e4, 0.0, 1e4],       # two tied maxima: 1/2, 0, 0, 1/2
                  [-1e4, -1e4, -1e4, -1e4],    # a constant row: uniform
                  [1e4, -np.inf, -np.inf, 0.0],  # -inf entries get weight 0
                  [-np.inf] * 4,                 # an all -inf row: zeros, never NaN
                  [3.0, 1e4, -1e4, 2.0]], dtype)
    y = softmax(x)
    _finite(y)
    expected = np.array([[.5, 0, 0, .5], [.25] * 4, [1, 0, 0, 0], [0] * 4, [0, 1, 0, 0]])
    np.testing.assert_array_equal(y, expected.astype(dtype))
    assert y.dtype == dtype
    lp = log_softmax(x[[0, 1, 4]])
    _finite(lp)
    np.testing.assert_allclose(lp[0], [-math.log(2), -2e4 - math.log(2), -1e4 - math.log(2),
                                       -math.log(2)], rtol=1e-6)

    # the module: a mask of blocked entries (with a fully masked row) instead of -inf
    sm = nt.Softmax()
    xm = np.where(np.isinf(x), 0, x).astype(dtype)
    mask = np.isinf(x)
    y2, cache = sm.forward(xm, mask=mask)
    np.testing.assert_array_equal(y2, expected.astype(dtype))
    dx = _backward(sm, y2, cache)
    assert not dx[3].any() and not dx[mask].any()  # blocked entries and the dead row: 0
    with pytest.raises(ValueError, match=r"Softmax: x contains \d+ NaN/inf"):
        sm.forward(x)  # -inf as an input value is refused; use the mask


def test_softmax_gradcheck_at_1e4_where_smooth():
    x = np.array([[1e4, 1e4 + 0.5, -1e4, 1e4 - 1.0],
                  [-1e4, -1e4 + 0.25, -1e4 - 0.5, -1e4]])
    _passes("Softmax, logits +-1e4", gradcheck(nt.Softmax(), x))
    mask = np.array([[False, False, True, False], [True, True, True, True]])
    _passes("Softmax, logits +-1e4, fully masked row", gradcheck(nt.Softmax(), x, mask=mask))


def _attention_inputs(dtype, scale, rng):
    """Unit-norm queries and keys times ``scale``: DotScore logits of size ~scale^2."""
    q = rng.standard_normal((2, 3, 4))
    k = rng.standard_normal((2, 5, 4))
    q *= scale / np.linalg.norm(q, axis=-1, keepdims=True)
    k *= scale / np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((2, 5, 3))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_attention_with_logits_of_1e4_and_fully_masked_rows(dtype):
    rng = np.random.default_rng(0)
    q, k, v = _attention_inputs(dtype, 100.0, rng)  # |e| up to 1e4
    mask = np.zeros((2, 3, 5), bool)
    mask[0, 1] = True  # query 1 of sequence 0 may see nothing
    att = nt.Attention(nt.DotScore())
    ctx, cache = att.forward(q, k, v, mask=mask)
    assert np.abs(cache.e).max() > 5e3
    _finite(ctx, cache.alpha)
    sums = cache.alpha.sum(-1)
    np.testing.assert_allclose(np.delete(sums.reshape(-1), 1), 1, rtol=1e-5)
    assert sums[0, 1] == 0 and not ctx[0, 1].any()
    dq, dk, dv = _backward(att, ctx, cache)
    assert not dq[0, 1].any()
    assert ctx.dtype == dtype and dq.dtype == dtype


@pytest.mark.parametrize("dtype", FLOATS)
def test_multihead_attention_with_logits_of_1e4_and_fully_masked_rows(dtype):
    rng = np.random.default_rng(1)
    mha = nt.MultiHeadAttention(8, 2, dtype=dtype, rng=rng)
    mha.in_proj.W.data *= 60  # q.k / sqrt(d_k) of order 1e4
    x = rng.standard_normal((2, 4, 8)).astype(dtype)
    kpm = np.array([[False, False, True, True], [True, True, True, True]])  # row 1: all pad
    (y, w), cache = mha.forward(x, key_padding_mask=kpm, need_weights=True)
    scores = cache.q_s @ cache.k.swapaxes(-1, -2)
    assert np.abs(scores).max() > 1e3
    _finite(y, w)
    assert not w[1].any()  # every key blocked: weights 0
    rng2 = np.random.default_rng(2)
    dx = mha.backward((rng2.standard_normal(y.shape).astype(dtype),
                       rng2.standard_normal(w.shape).astype(dtype)), cache)
    _finite(dx)
    for name, p in mha.named_parameters():
        assert np.isfinite(p.grad).all(), name


def test_attention_gradcheck_at_large_logits():
    """Scores of +-9800, yet a tie between the first two keys keeps the softmax smooth
    (and its gradient sizeable: k_1 - k_2 = (0.5, -0.5) is what the query moves)."""
    rng = np.random.default_rng(3)
    q = np.full((1, 2, 2), 70.0)
    k = np.array([[[70.0, 70.0], [70.5, 69.5], [-70.0, -70.0]]])  # e = 9800, 9800, -9800
    v = rng.standard_normal((1, 3, 2))
    mask = np.array([[[False, False, False], [True, True, True]]])
    _passes("Attention(dot), scores +-9800, fully masked row",
            gradcheck(nt.Attention(nt.DotScore()), q, k, v, mask=mask))
    mha = nt.MultiHeadAttention(4, 2, dtype=np.float64, rng=rng)
    x = 30 * rng.standard_normal((2, 3, 4))
    kpm = np.array([[False, False, True], [True, True, True]])
    _passes("MultiHeadAttention, inputs x30, fully masked row",
            gradcheck(mha, x, key_padding_mask=kpm))


# -- LayerNorm --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_layernorm_on_constant_rows_and_rows_of_1e6(dtype):
    rng = np.random.default_rng(4)
    ln = nt.LayerNorm(6, dtype=dtype)
    ln.gamma.data[:] = rng.uniform(0.5, 2, 6)
    ln.beta.data[:] = rng.standard_normal(6)
    x = np.stack([np.zeros(6), np.full(6, 1e6), np.full(6, -3.25),   # constant rows
                  1e6 * rng.standard_normal(6),                      # rows of scale 1e6
                  1e6 + rng.standard_normal(6)]).astype(dtype)        # 1e6 + O(1) noise
    y, cache = ln.forward(x[None])
    y = y[0]
    _finite(y)
    # a constant row has x_hat = 0, so y = beta, exactly
    np.testing.assert_array_equal(y[:3], np.broadcast_to(ln.beta.data, (3, 6)))
    # the 1e6-scale row normalises like any row
    x_hat = (y[3] - ln.beta.data) / ln.gamma.data
    np.testing.assert_allclose([x_hat.mean(), x_hat.std()], [0, 1], atol=1e-4)
    ref = x[4].astype(np.float64)
    ref_hat = (ref - ref.mean()) / np.sqrt(ref.var() + ln.eps)
    tol = 1e-9 if dtype == np.float64 else 0.2  # float32 cancellation at 1e6: ulp(1e6) = 0.06
    np.testing.assert_allclose((y[4] - ln.beta.data) / ln.gamma.data, ref_hat, atol=tol)
    dx = _backward(ln, y[None], cache)
    assert dx.dtype == dtype


def test_layernorm_gradcheck_on_constant_and_huge_rows():
    rng = np.random.default_rng(5)
    ln = nt.LayerNorm(5, dtype=np.float64)
    ln.gamma.data[:] = rng.uniform(0.5, 2, 5)
    x = np.stack([np.full(5, 2.0), np.full(5, 1e6), 1e6 * rng.standard_normal(5),
                  rng.standard_normal(5)])
    _passes("LayerNorm, constant rows and rows of 1e6", gradcheck(ln, x))


# -- cross-entropy ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_at_logits_of_1e4(dtype, smoothing):
    logits = np.array([[1e4, 0.0, -1e4]] * 3, dtype)
    targets = np.array([0, 1, 2])
    ce = nt.CrossEntropyLoss(label_smoothing=smoothing, reduction="none")
    loss, cache = ce.forward(logits, targets)
    _finite(loss)
    nll = np.array([0.0, 1e4, 2e4])
    mean_nll = np.mean([0.0, 1e4, 2e4])
    np.testing.assert_allclose(loss, (1 - smoothing) * nll + smoothing * mean_nll, rtol=1e-6)
    dz = ce.backward(np.array([0.3, -1.2, 0.7], dtype), cache)
    _finite(dz)
    onehot_p = np.array([1.0, 0, 0])  # softmax of every row, to the last digit
    q = (1 - smoothing) * np.eye(3) + smoothing / 3
    np.testing.assert_allclose(dz, (onehot_p - q) * np.array([[0.3], [-1.2], [0.7]]),
                               atol=1e-6)
    assert loss.dtype == dtype and dz.dtype == dtype


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_every_target_ignored(reduction):
    logits = np.random.default_rng(6).standard_normal((2, 3, 5)) * 1e4
    targets = np.full((2, 3), -100)
    for smoothing in (0.0, 0.2):
        ce = nt.CrossEntropyLoss(label_smoothing=smoothing, reduction=reduction)
        loss, cache = ce.forward(logits, targets)
        assert not np.any(loss) and np.isfinite(loss).all()
        dout = np.ones((2, 3)) * 0.5 if reduction == "none" else 0.5
        dz = ce.backward(dout, cache)
        assert dz.shape == logits.shape and not dz.any()


def test_cross_entropy_gradcheck_at_1e4():
    logits = np.array([[1e4, 1e4 + 0.5, -1e4], [3.0, -1e4, 1e4 - 1.0]])
    for smoothing in (0.0, 0.1):
        _passes(f"CrossEntropyLoss(label_smoothing={smoothing}), logits 1e4",
                gradcheck(nt.CrossEntropyLoss(label_smoothing=smoothing), logits,
                          np.array([1, 0])))


# -- activations at +-1e3 ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_activations_at_plus_minus_1e3(dtype):
    x = np.array([-1e3, -1e2, -40.0, 40.0, 1e2, 1e3], dtype)
    cases = {
        "gelu": (nt.GELU(), np.where(x > 0, x, 0), (x > 0).astype(float)),
        "gelu_tanh": (nt.GELU("tanh"), np.where(x > 0, x, 0), (x > 0).astype(float)),
        "sigmoid": (nt.Sigmoid(), (x > 0).astype(float), np.zeros(6)),
        "tanh": (nt.Tanh(), np.sign(x), np.zeros(6)),
    }
    dy = np.linspace(-1, 1, 6).astype(dtype)
    for name, (act, y_ref, dydx) in cases.items():
        y, cache = act.forward(x)
        dx = act.backward(dy, cache)
        _finite(y, dx)
        assert y.dtype == dtype and dx.dtype == dtype, name
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(dx, dy * dydx, atol=1e-12, err_msg=name)


def test_activation_gradcheck_at_1e3():
    x = np.array([[-1e3, 1e3, -999.5, 999.5, 0.3]])
    for act in (nt.GELU(), nt.GELU("tanh"), nt.Sigmoid(), nt.Tanh()):
        _passes(f"{act!r} at +-1e3", gradcheck(act, x))


# -- recurrences over 500 steps ------------------------------------------------------------------
def _directional_check(module, x, rng, **kw):
    """Every tensor (the input and each parameter) along a random direction: a . d
    against the fourth-order stencil of L(t) = sum(out(x + t d) * G) (the gradcheck
    stencil, one derivative per tensor instead of one per entry)."""
    out, cache = module.forward(x, **kw)
    outs = out if isinstance(out, tuple) else (out,)
    G = [rng.standard_normal(o.shape) for o in outs]
    module.zero_grad()
    dx = module.backward(tuple(G) if isinstance(out, tuple) else G[0], cache)
    dx = dx[0] if isinstance(dx, tuple) else dx

    def loss():
        o, _ = module.forward(x, **kw)
        o = o if isinstance(o, tuple) else (o,)
        return sum(float(np.sum(a * g)) for a, g in zip(o, G))

    tensors = [("x", x, dx)] + [(n, p.data, p.grad.copy()) for n, p in module.named_parameters()]
    errors = {}
    for name, t, grad in tensors:
        d = rng.standard_normal(t.shape)
        d /= np.linalg.norm(d)
        analytic = float(np.sum(grad * d))
        numeric = numerical_gradient(loss, t, direction=d)
        errors[name] = abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-12)
    return errors


RECURRENT = {
    "rnn": lambda dt, r: nt.RNN("rnn", 3, 5, dtype=dt, rng=r),
    "gru": lambda dt, r: nt.RNN("gru", 3, 5, dtype=dt, rng=r),
    "lstm": lambda dt, r: nt.RNN("lstm", 3, 5, num_layers=2, bidirectional=True, dtype=dt,
                                 rng=r),
    "lstmn": lambda dt, r: nt.LSTMN(3, 5, dtype=dt, rng=r),
}


@pytest.mark.parametrize("kind", sorted(RECURRENT))
@pytest.mark.parametrize("dtype", FLOATS)
def test_recurrences_over_500_steps_stay_finite(kind, dtype):
    rng = np.random.default_rng(7)
    model = RECURRENT[kind](dtype, rng)
    for scale in (1.0, 50.0):  # ordinary inputs, and inputs that saturate every gate
        x = (scale * rng.standard_normal((2, 500, 3))).astype(dtype)
        out, cache = model.forward(x)
        _finite(out)
        grads = _backward(model, out, cache)
        dx = grads[0] if isinstance(grads, tuple) else grads
        assert dx.shape == x.shape and dx.dtype == dtype
        # gradients reach the first step (not vanished to exactly zero everywhere)
        assert np.abs(dx[:, 0]).max() > 0 or kind == "lstmn"


@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrences_over_500_steps_pass_a_directional_gradient_check(kind):
    rng = np.random.default_rng(8)
    model = (nt.RNN("lstm", 3, 4, bidirectional=True, dtype=np.float64, rng=rng)
             if kind == "lstm" else RECURRENT[kind](np.float64, rng))  # (one layer: time)
    x = rng.standard_normal((1, 500, 3))
    errors = _directional_check(model, x, rng)
    NOTES.setdefault("directional derivative check over 500 steps (max rel error)", {})[
        kind] = max(errors.values())
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm", "lstmn"])
def test_recurrences_over_500_steps_pass_gradcheck(kind):
    """The library's own gradcheck (threshold 1e-7) over 500 steps: random entries of
    every tensor plus a directional derivative (max_entries=2 keeps it to seconds)."""
    rng = np.random.default_rng(9)
    model = {"rnn": lambda: nt.RNN("rnn", 2, 3, dtype=np.float64, rng=rng),
             "gru": lambda: nt.RNN("gru", 2, 3, dtype=np.float64, rng=rng),
             "lstm": lambda: nt.RNN("lstm", 2, 3, bidirectional=True, dtype=np.float64,
                                    rng=rng),
             "lstmn": lambda: nt.LSTMN(2, 3, dtype=np.float64, rng=rng)}[kind]()
    x = rng.standard_normal((1, 500, 2))
    _passes(f"{type(model).__name__}({kind}), 500 steps", gradcheck(model, x, max_entries=2))
