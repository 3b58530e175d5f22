import math

import numpy as np
import pytest

from numtransformer import Linear, Parameter
from numtransformer.kernels import use_kernels
from numtransformer.optim import (
    SGD,
    Adam,
    AdamW,
    ConstantSchedule,
    NoamSchedule,
    WarmupCosineSchedule,
    clip_grad_norm,
    global_grad_norm,
)


def _param(values, grad):
    p = Parameter(np.array(values, dtype=np.float64))
    p.grad[...] = grad
    return p


def test_sgd_plain_and_weight_decay_by_hand():
    p = _param([1.0, -2.0], [0.5, 0.5])
    SGD([p], lr=0.1, weight_decay=0.2).step()
    # g = [0.5 + 0.2, 0.5 - 0.4]
    np.testing.assert_allclose(p.data, [1 - 0.07, -2 - 0.01])


def test_sgd_momentum_and_nesterov_by_hand():
    p = _param([0.0], [1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()  # b = 1, p = -0.1
    opt.step()  # b = 0.9 + 1 = 1.9, p = -0.1 - 0.19
    np.testing.assert_allclose(p.data, [-0.29])
    q = _param([0.0], [1.0])
    opt = SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    opt.step()  # b = 1, g = 1 + 0.9 = 1.9
    opt.step()  # b = 1.9, g = 1 + 1.71 = 2.71
    np.testing.assert_allclose(q.data, [-0.19 - 0.271])


def test_adam_by_hand_with_bias_correction_per_step():
    p = _param([1.0, 1.0], [0.1, -0.3])
    opt = Adam([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    opt.step()
    # step 1: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps)
    np.testing.assert_allclose(p.data, [1 - 0.01 * 0.1 / (0.1 + 1e-8), 1 + 0.01 * 0.3 / (0.3 + 1e-8)])
    p.grad[...] = [0.2, 0.2]
    opt.step()
    m = 0.9 * 0.1 * 0.1 + 0.1 * 0.2  # m after two steps, first coordinate
    v = 0.99 * 0.01 * 0.01 + 0.01 * 0.04
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.99**2)
    expected0 = 1 - 0.01 * 0.1 / (0.1 + 1e-8) - 0.01 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert abs(p.data[0] - expected0) < 1e-14
    assert opt.step_count == 2


kernel_modes = pytest.mark.parametrize("mode", ["reference", "fast"])


@kernel_modes
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_count_is_per_step_not_per_tensor(mode, dtype):
    # Classic bug: a counter advanced once per tensor makes bias correction
    # depend on the number of tensors.  Ten tensors, one step: all see t = 1.
    ps = [Parameter(np.zeros(1, dtype)) for _ in range(10)]
    for p in ps:
        p.grad[...] = 1.0
    opt = Adam(ps, lr=0.1)
    with use_kernels(mode):
        opt.step()
    assert opt.step_count == 1
    for p in ps:
        np.testing.assert_allclose(p.data, [-0.1], rtol=1e-6)  # m_hat/sqrt(v_hat) = 1 at t = 1
    with use_kernels(mode):
        opt.step()
    assert opt.step_count == 2  # once per step, whatever the number of tensors


@kernel_modes
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_bias_correction_uses_the_step_count_not_the_layer_index(mode, cls):
    # Classic bug: bias correction fed the index of the tensor in the parameter
    # list.  Five tensors with the same values and gradients must stay equal to
    # each other and to a lone tensor stepped by itself, step after step.
    grads = [np.random.default_rng(t).standard_normal(3) for t in range(4)]
    ps = [_param([0.5, -1.0, 2.0], 0.0) for _ in range(5)]
    alone = _param([0.5, -1.0, 2.0], 0.0)
    many, one = cls(ps, lr=0.05, betas=(0.8, 0.9)), cls([alone], lr=0.05, betas=(0.8, 0.9))
    for g in grads:
        for p in ps + [alone]:
            p.grad[...] = g
        with use_kernels(mode):
            many.step()
            one.step()
    for p in ps:
        np.testing.assert_array_equal(p.data, alone.data)
    expected = _adam_by_hand([0.5, -1.0, 2.0], grads, 0.05, 0.8, 0.9, 1e-8,
                             0.01 if cls is AdamW else 0.0)
    np.testing.assert_allclose(alone.data, expected, rtol=0, atol=1e-13)


def test_adamw_decays_the_weights_not_the_gradient():
    p = _param([2.0], [0.0])
    AdamW([p], lr=0.1, weight_decay=0.5).step()
    # zero gradient: the Adam part is 0 / (0 + eps) = 0; the decay is p *= 1 - lr * wd
    np.testing.assert_allclose(p.data, [2.0 * (1 - 0.05)])
    q = _param([2.0], [0.0])
    Adam([q], lr=0.1, weight_decay=0.5).step()
    # Adam's L2 penalty enters the gradient: g = 1, the step is lr * sign = 0.1
    np.testing.assert_allclose(q.data, [1.9], rtol=1e-6)


def test_float32_stays_float32():
    lin = Linear(3, 2, rng=0)
    for p in lin.parameters():
        p.grad[...] = 0.1
    for opt in (SGD(lin, lr=0.1, momentum=0.9, weight_decay=0.1), Adam(lin), AdamW(lin)):
        opt.step()
        opt.step()
        assert all(p.dtype == np.float32 for p in lin.parameters())
        assert all(b.dtype == np.float32 for kind in opt.state.values() for b in kind.values())


def test_state_dict_resume_is_bit_exact():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(6)]

    def run(split):
        lin = Linear(4, 3, rng=0)
        opt = AdamW(lin, lr=0.01)
        for i, g in enumerate(grads):
            if i == split:
                saved_params, saved_opt = lin.state_dict(), opt.state_dict()
                lin = Linear(4, 3, rng=99)
                lin.load_state_dict(saved_params)
                opt = AdamW(lin, lr=123.0)
                opt.load_state_dict(saved_opt)
            lin.W.grad[...] = g
            opt.step()
        return lin.W.data

    assert np.array_equal(run(split=None), run(split=3))


def test_state_dict_keys_use_parameter_names():
    lin = Linear(2, 2, rng=0)
    opt = Adam(lin)
    opt.step()
    assert set(opt.state_dict()) == {"step_count", "lr", "m.W", "m.b", "v.W", "v.b"}
    bad = opt.state_dict()
    bad["m.W"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"m.W has shape \(3, 3\), expected \(2, 2\)"):
        Adam(lin).load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected key 'm.nope'"):
        Adam(lin).load_state_dict({"step_count": 1, "m.nope": np.zeros(1)})


def test_tied_parameters_are_stepped_once():
    p = _param([1.0], [1.0])
    opt = SGD([p, p], lr=0.5)
    opt.step()
    np.testing.assert_allclose(p.data, [0.5])


def test_clip_grad_norm():
    a, b = _param([0, 0], [3.0, 0.0]), _param([0], [4.0])
    assert global_grad_norm([a, b]) == 5.0
    norm = clip_grad_norm([a, b], 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(global_grad_norm([a, b]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(a.grad, [0.6, 0], rtol=1e-6)
    c = _param([0], [0.5])
    clip_grad_norm([c], 1.0)
    assert c.grad[0] == 0.5  # below the limit: untouched
    d = _param([0], [np.inf])
    assert clip_grad_norm([d], 1.0) == math.inf


def test_noam_values_at_known_steps():
    s = NoamSchedule(d_model=512, warmup=4000)
    assert abs(s(1) - 512**-0.5 * 4000**-1.5) < 1e-15
    assert abs(s(4000) - 512**-0.5 * 4000**-0.5) < 1e-15  # the peak
    assert abs(s(16000) - 512**-0.5 * 16000**-0.5) < 1e-15
    assert s(3999) < s(4000) > s(4001)
    assert abs(NoamSchedule(64, 100, factor=2.0)(50) - 2 * 64**-0.5 * 50 * 100**-1.5) < 1e-15


def test_warmup_cosine_and_constant():
    s = WarmupCosineSchedule(1.0, warmup=10, total=110, min_lr=0.1)
    assert s(5) == 0.5 and s(10) == 1.0
    assert abs(s(60) - (0.1 + 0.9 * 0.5)) < 1e-12
    assert abs(s(110) - 0.1) < 1e-12 and abs(s(500) - 0.1) < 1e-12
    assert ConstantSchedule(0.3)(7) == 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="lr"):
        SGD([_param([0], [0])], lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Adam([_param([0], [0])], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        Adam([])
    with pytest.raises(ValueError, match="nesterov"):
        SGD([_param([0], [0])], lr=0.1, nesterov=True)


def _adam_by_hand(values, grads, lr, b1, b2, eps, wd):
    """Reference AdamW in float64, one parameter at a time, as the docstring writes it."""
    p = np.array(values, dtype=np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


@kernel_modes
def test_flat_buffers_follow_rebound_arrays(mode):
    """The fast AdamW packs every parameter into one flat buffer; rebinding p.data
    or p.grad (load_state_dict, astype, assignment) between steps must not lose an
    update.  The reference path (one parameter at a time) gives the same numbers."""
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (3,), (2, 5)]
    params = [Parameter(rng.standard_normal(s)) for s in shapes]
    start = [p.data.copy() for p in params]
    grads = [[rng.standard_normal(s) for _ in range(6)] for s in shapes]
    opt = AdamW(params, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for step in range(6):
        if step == 2:
            params[0].data = params[0].data.copy()  # rebound: no longer a view of the buffer
        if step == 3:
            params[2].grad = np.zeros(shapes[2])
        if step == 4:
            opt.load_state_dict(opt.state_dict())  # the moments rebound too
        for p, g in zip(params, grads):
            p.grad[...] = g[step]
        with use_kernels(mode):
            opt.step()
            opt.zero_grad()
        assert all(not p.grad.any() for p in params)
        assert opt._flat.is_packed() == (mode == "fast")
    for p, s, g in zip(params, start, grads):
        expected = _adam_by_hand(s, g, 0.01, 0.9, 0.99, 1e-8, 0.1)
        np.testing.assert_allclose(p.data, expected, rtol=0, atol=1e-13)


def test_mixed_dtypes_are_updated_one_by_one_in_their_own_dtype():
    rng = np.random.default_rng(1)
    p32 = Parameter(rng.standard_normal(5).astype(np.float32))
    p64 = Parameter(rng.standard_normal(3))
    start32, start64 = p32.data.astype(np.float64), p64.data.copy()
    g32 = [rng.standard_normal(5).astype(np.float32) for _ in range(4)]
    g64 = [rng.standard_normal(3) for _ in range(4)]
    opt = Adam([p32, p64], lr=0.01)
    for a, b in zip(g32, g64):
        p32.grad[...], p64.grad[...] = a, b
        opt.step()
    assert p32.dtype == np.float32 and p64.dtype == np.float64
    np.testing.assert_allclose(p64.data, _adam_by_hand(start64, g64, 0.01, 0.9, 0.999, 1e-8, 0),
                               atol=1e-13)
    np.testing.assert_allclose(p32.data, _adam_by_hand(start32, [g.astype(np.float64) for g in g32],
                                                       0.01, 0.9, 0.999, 1e-8, 0), atol=1e-5)


def test_keep_freed_memory_is_idempotent():
    from numtransformer._malloc import keep_freed_memory

    first = keep_freed_memory()
    assert isinstance(first, bool) and keep_freed_memory() is first


@kernel_modes
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: Adam(ps, lr=0.1), lambda ps: AdamW(ps, lr=0.1)])
def test_updates_land_in_the_parameters_own_arrays(mode, make):
    """The kernels return new arrays; the optimizer copies them into the arrays
    the parameter and its state already own, so whoever holds those arrays (a
    view, a tied layer) sees the update, and the state keeps its identity."""
    p = _param([1.0, -2.0, 3.0], [0.5, -0.5, 0.25])
    q = _param([4.0], [1.0])
    opt = make([p, q, p])  # p twice: tied, stepped once
    with use_kernels(mode):
        opt.step()
    data, state = p.data, {k: dict(v) for k, v in opt.state.items()}
    view = data[1:]
    with use_kernels(mode):
        opt.step()
    assert p.data is data and not np.array_equal(view, [-2.0, 3.0])
    np.testing.assert_array_equal(view, p.data[1:])
    for kind, bufs in opt.state.items():
        assert all(bufs[name] is state[kind][name] for name in bufs)
    ref = _param([1.0, -2.0, 3.0], [0.5, -0.5, 0.25])
    other = make([ref])
    with use_kernels(mode):
        other.step()
        other.step()
    np.testing.assert_allclose(p.data, ref.data, rtol=1e-15, atol=0)


# -- frozen parameters (requires_grad=False) are skipped -----------------------------------


optimizers = pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.1)], ids=["SGD", "Adam", "AdamW"])


@kernel_modes
@optimizers
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frozen_parameters_given_explicitly_are_skipped(mode, make, dtype):
    """Skipped silently, as torch.optim skips a tensor without a gradient: no
    update (no weight decay either), no state; the others step as without them,
    on the fast flat-buffer path too, where the frozen ones are not packed."""
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (3,), (2, 5), (5,)]
    starts = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]
    ps = [Parameter(s) for s in starts]
    ps[1].requires_grad_(False)
    ps[3].requires_grad_(False)
    alone = [Parameter(starts[0]), Parameter(starts[2])]
    opt, ref = make(ps), make(alone)
    frozen_arrays = [(ps[i].data, ps[i].grad) for i in (1, 3)]
    for g in grads:
        for p, gi in zip(ps, g):
            p.grad[...] = gi  # a frozen grad that is not zero must be ignored too
        alone[0].grad[...], alone[1].grad[...] = g[0], g[2]
        with use_kernels(mode):
            opt.step()
            ref.step()
    for i in (1, 3):
        assert ps[i].data.tobytes() == starts[i].tobytes()
        data, grad = frozen_arrays[i // 2]
        assert ps[i].data is data and ps[i].grad is grad  # never packed, never rebound
    assert ps[0].data.tobytes() == alone[0].data.tobytes()
    assert ps[2].data.tobytes() == alone[1].data.tobytes()
    for kind in opt.state.values():
        assert set(kind) <= {"0", "2"}
    assert opt.step_count == 4 and len(opt.params) == 4
    assert [n for n, _ in opt.trainable()] == ["0", "2"]
    with use_kernels(mode):
        opt.zero_grad()
    assert all(not p.grad.any() for p in ps)  # every grad it holds, frozen ones too


@kernel_modes
def test_freezing_and_unfreezing_between_steps(mode):
    """A parameter frozen mid-run stops moving and keeps its moments; one unfrozen
    is trained from then on with fresh zero moments; the flat buffers are packed
    again each time the trainable set changes, and the numbers equal the
    reference path's."""
    rng = np.random.default_rng(1)
    shapes = [(3, 2), (4,), (2, 2)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]

    def run(kernel_mode):
        ps = [Parameter(np.linspace(-1, 1, int(np.prod(s))).reshape(s)) for s in shapes]
        ps[2].requires_grad_(False)
        opt = AdamW(ps, lr=0.05, weight_decay=0.1)
        history = []
        for step, g in enumerate(grads):
            if step == 2:
                ps[0].requires_grad_(False)
            if step == 4:
                ps[2].requires_grad_(True)
                ps[0].requires_grad_(True)
            for p, gi in zip(ps, g):
                p.grad[...] = gi
            with use_kernels(kernel_mode):
                opt.step()
            history.append([p.data.copy() for p in ps])
        return history, opt

    fast_run, opt = run(mode)
    ref_run, _ = run("reference")
    for a, b in zip(fast_run, ref_run):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(fast_run[1][0], fast_run[3][0])  # frozen at steps 3, 4
    assert not np.array_equal(fast_run[3][0], fast_run[4][0])
    np.testing.assert_array_equal(fast_run[0][2], np.linspace(-1, 1, 4).reshape(2, 2))
    np.testing.assert_array_equal(fast_run[3][2], fast_run[0][2])
    assert not np.array_equal(fast_run[4][2], fast_run[3][2])  # unfrozen at step 5
    assert set(opt.state["m"]) == {"0", "1", "2"}


@kernel_modes
def test_all_frozen_steps_nothing(mode):
    p = _param([1.0, 2.0], [1.0, 1.0])
    p.requires_grad_(False)
    opt = AdamW([p], lr=0.1)
    with use_kernels(mode):
        opt.step()
        opt.zero_grad()
    assert opt.step_count == 1 and opt.state == {"m": {}, "v": {}}
    np.testing.assert_array_equal(p.data, [1.0, 2.0])
    assert not p.grad.any()


def test_flat_adam_refuses_to_pack_a_frozen_parameter():
    from numtransformer.fast import FlatAdam

    p, q = _param([1.0], [1.0]), _param([2.0], [1.0])
    q.requires_grad_(False)
    with pytest.raises(ValueError, match=r"FlatAdam.pack: frozen parameters \(requires_grad="
                                         r"False\) are not packed or updated, got q"):
        FlatAdam().pack([("p", p), ("q", q)], {}, {})


def test_clip_and_norm_skip_frozen_parameters():
    p = _param([3.0, 4.0], [3.0, 4.0])
    q = _param([1.0], [100.0])
    q.requires_grad_(False)
    assert global_grad_norm([p, q]) == 5.0
    norm = clip_grad_norm([p, q], 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(np.linalg.norm(p.grad), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(q.grad, [100.0])  # neither counted nor scaled


@kernel_modes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_resume_with_frozen_parameters_is_bit_exact(mode, dtype):
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(s).astype(dtype) for s in ((4, 3), (3,))] for _ in range(6)]

    def build(seed):
        lin = Linear(4, 3, dtype=dtype, rng=seed)
        lin.b.requires_grad_(False)
        return lin

    def run(split):
        lin = build(0)
        opt = AdamW(lin, lr=0.01)
        for i, (gW, gb) in enumerate(grads):
            if i == split:
                saved_params, saved_opt = lin.state_dict(), opt.state_dict()
                assert set(saved_opt) == {"step_count", "lr", "m.W", "v.W"}  # no state for b
                assert "b" in saved_params
                lin = build(99)
                lin.load_state_dict(saved_params)
                opt = AdamW(lin, lr=123.0)
                opt.load_state_dict(saved_opt)
            lin.W.grad[...] = gW
            lin.b.grad[...] = gb
            with use_kernels(mode):
                opt.step()
        return lin

    whole, resumed = run(None), run(3)
    assert whole.W.data.tobytes() == resumed.W.data.tobytes()
    assert whole.b.data.tobytes() == resumed.b.data.tobytes() == build(0).b.data.tobytes()
