"""The fast optimizer kernels equal the reference update rules, float64 and
float32: one step from drawn states, several steps chained, and the flat-buffer
Adam/AdamW (``fast.FlatAdam``, chunks on threads) against the reference rule
applied tensor by tensor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import Parameter, fast
from numtransformer import functional as F
from numtransformer.kernels import use_kernels
from numtransformer.optim import SGD, Adam, AdamW

from ..helpers import seeds
from .equal import assert_same, row_blocks, same, to_float64

dtypes = st.sampled_from([np.float64, np.float32])
shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3)  # 0-d: see the optimizer tests
adam_options = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 0.05]),
    "beta1": st.sampled_from([0.0, 0.9]),
    "beta2": st.sampled_from([0.98, 0.999]),
    "eps": st.sampled_from([1e-8, 1e-3]),
    "weight_decay": st.sampled_from([0.0, 0.1]),
    "decoupled": st.booleans(),
})

blocks = pytest.fixture(autouse=True, params=["one block", "row blocks"])(row_blocks)


def _adam_args(o):
    return (o["lr"], o["beta1"], o["beta2"], o["eps"], o["weight_decay"], o["decoupled"])


@given(shapes, st.integers(1, 30), adam_options, dtypes, seeds)
def test_adam_update_one_step(shape, t, o, dtype, seed):
    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    v = rng.random(shape).astype(dtype) * 0.1
    same("adam_update", p, g, m, v, t, *_adam_args(o))


@given(shapes, adam_options, dtypes, seeds)
def test_adam_update_several_steps(shape, o, dtype, seed):
    """Five steps from zero moments, each family feeding itself: the rounding
    differences do not grow past a few ulps."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(5)]
    states = {K: (p0, np.zeros_like(p0), np.zeros_like(p0)) for K in (fast, F)}
    oracle = (p0.astype(np.float64), np.zeros(shape), np.zeros(shape))
    for t, g in enumerate(grads, 1):
        for K in states:
            states[K] = K.adam_update(*states[K][:1], g, *states[K][1:], t, *_adam_args(o))
        oracle = F.adam_update(oracle[0], g.astype(np.float64), oracle[1], oracle[2], t,
                               *_adam_args(o))
    assert_same(states[fast], states[F], "adam_update x5", oracle=oracle)


@given(shapes, dtypes, seeds)
def test_adam_update_writes_into_out(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    v = rng.random(shape).astype(dtype)
    expected = fast.adam_update(p, g, m, v, 3, 0.01, 0.9, 0.99, 1e-8, 0.1, True)
    out = (p.copy(), m.copy(), v.copy())
    got = fast.adam_update(*out[:1], g, *out[1:], 3, 0.01, 0.9, 0.99, 1e-8, 0.1, True, out=out)
    assert all(a is b for a, b in zip(got, out))  # in place
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@given(shapes, st.sampled_from([0.0, 0.9]), st.sampled_from([0.0, 0.5]),
       st.sampled_from([0.0, 0.1]), st.booleans(), st.booleans(), dtypes, seeds)
def test_sgd_update(shape, momentum, dampening, weight_decay, nesterov, first, dtype, seed):
    nesterov = nesterov and momentum > 0 and dampening == 0
    rng = np.random.default_rng(seed)
    p, g, b = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    p_new, b_new = same("sgd_update", p, g, b, 0.1, momentum, dampening, weight_decay,
                        nesterov, first)
    assert p_new.dtype == dtype and (b_new is None) == (momentum == 0)


def _params(rng, shapes, dtype):
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


param_sets = st.lists(st.lists(st.integers(1, 7), min_size=0, max_size=3), min_size=1,
                      max_size=5)


@given(param_sets, st.sampled_from([Adam, AdamW]), adam_options, st.sampled_from([1, 5, 64]),
       dtypes, seeds)
def test_flat_adam_equals_the_reference_rule_per_tensor(shapes, cls, o, chunk, dtype, seed):
    """The optimizer on the fast kernels (flat buffers, chunks of ``chunk``
    entries on the threads) against the reference kernel tensor by tensor,
    four steps, with a rebinding (model load) between steps 2 and 3."""
    rng = np.random.default_rng(seed)
    params = {mode: _params(np.random.default_rng(seed), shapes, dtype)
              for mode in ("fast", "reference")}
    params["oracle"] = [Parameter(p.data.astype(np.float64)) for p in params["reference"]]
    kwargs = dict(lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                  weight_decay=o["weight_decay"])
    opts = {mode: cls(ps, **kwargs) for mode, ps in params.items()}
    opts["fast"]._chunk = chunk
    for step in range(4):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        if step == 2:
            p = params["fast"][0]
            p.data = p.data.copy()  # no longer a view of the flat buffer: packed again
        for mode, ps in params.items():
            for p, g in zip(ps, grads):
                p.grad[...] = g
            with use_kernels("reference" if mode == "oracle" else mode):
                opts[mode].step()
                opts[mode].zero_grad()
    assert opts["fast"]._flat.is_packed() and not opts["reference"]._flat.is_packed()
    for i, p in enumerate(params["reference"]):
        name = str(i)
        got = (params["fast"][i].data, opts["fast"].state["m"][name],
               opts["fast"].state["v"][name])
        ref = (p.data, opts["reference"].state["m"][name], opts["reference"].state["v"][name])
        oracle = (params["oracle"][i].data, opts["oracle"].state["m"][name],
                  opts["oracle"].state["v"][name])
        assert_same(got, ref, f"{cls.__name__} param {i}", oracle=to_float64(oracle))


@given(param_sets, st.booleans(), dtypes, seeds)
def test_sgd_optimizer_fast_equals_reference(shapes, nesterov, dtype, seed):
    rng = np.random.default_rng(seed)
    params = {mode: _params(np.random.default_rng(seed), shapes, dtype)
              for mode in ("fast", "reference")}
    opts = {mode: SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
            for mode, ps in params.items()}
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for mode, ps in params.items():
            for p, g in zip(ps, grads):
                p.grad[...] = g
            with use_kernels(mode):
                opts[mode].step()
    for a, b in zip(params["fast"], params["reference"]):
        np.testing.assert_array_equal(a.data, b.data)  # SGD has one rule for both


@given(param_sets, st.sampled_from([Adam, AdamW]), dtypes, seeds)
def test_flat_adam_gives_the_same_bits_on_any_thread_count(shapes, cls, dtype, seed):
    """The flat update is elementwise: chunks of 3 entries on one thread or in
    blocks on three threads give the same bits."""
    from numtransformer import _parallel

    def run():
        rng = np.random.default_rng(seed)
        params = _params(rng, shapes, dtype)
        opt = cls(params, lr=0.01, weight_decay=0.1)
        opt._chunk = 3
        for _ in range(3):
            for p in params:
                p.grad[...] = rng.standard_normal(p.shape)
            with use_kernels("fast"):
                opt.step()
                opt.zero_grad()
        assert opt._flat.is_packed()
        return [p.data.copy() for p in params] + [b.copy() for b in opt._flat.buffers]

    _parallel.set_num_threads(1)
    one = run()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_parallel, "MIN_BLOCK", 1)
        mp.setattr(_parallel, "_cores", lambda: 8)
        _parallel.set_num_threads(3)
        try:
            many = run()
        finally:
            _parallel.set_num_threads(None)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
