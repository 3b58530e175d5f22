"""LoRA (Hu et al., 2021): the kernel pair, LoRALinear, apply_lora and the adapters'
state; the base stays frozen (a Parameter with requires_grad=False: no gradient, not
updated by the optimizer, bytes unchanged, but in the state_dict)."""

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numtransformer as nt
from numtransformer import (AdamW, CrossEntropyLoss, Linear, LoRALinear, MultiHeadAttention,
                            PositionwiseFeedForward, SwiGLUFeedForward, TiedLinear,
                            TransformerLM, adapter_state_dict, apply_lora, gradcheck,
                            load_adapter_state_dict, lora_parameters, remove_lora)
from numtransformer import functional as F
from numtransformer.functional.lora import LoRACache
from numtransformer.kernels import use_kernels
from tests.helpers import check_dtype_preserved, seeds


def make_lora(d_in, d_out, r, *, bias=True, alpha=None, dropout=0.0, dtype=np.float64, seed=0,
              random_b=True):
    """A LoRALinear whose B is drawn too (B = 0 at init would make dA = 0 and hide it)."""
    rng = np.random.default_rng(seed)
    lora = LoRALinear(Linear(d_in, d_out, bias=bias, dtype=dtype, rng=seed), r, alpha, dropout,
                      rng=seed + 1)
    if random_b:
        lora.B.data[...] = rng.standard_normal(lora.B.shape).astype(dtype)
    return lora


@st.composite
def shapes(draw):
    d_in, d_out = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    r = draw(st.integers(1, min(d_in, d_out)))
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    return lead, d_in, d_out, r


# -- gradients -------------------------------------------------------------------------------


@given(shape=shapes(), bias=st.booleans(), alpha=st.sampled_from([None, 0.5, 16.0]),
       dropout=st.sampled_from([0.0, 0.4]), seed=seeds)
def test_gradcheck_sees_A_and_B_and_the_base_gets_nothing(shape, bias, alpha, dropout, seed):
    lead, d_in, d_out, r = shape
    lora = make_lora(d_in, d_out, r, bias=bias, alpha=alpha, dropout=dropout, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    lora.A.data[...] = rng.standard_normal(lora.A.shape)
    x = rng.standard_normal((*lead, d_in))
    report = gradcheck(lora, x, seed=seed)
    report.assert_passed()
    assert [t.name for t in report.tensors] == ["input[0]", "A", "B"]
    # the frozen base: a parameter that no forward/backward writes or gives a gradient
    W0, b0 = lora.W.data.copy(), None if lora.b is None else lora.b.data.copy()
    y, cache = lora.forward(x)
    lora.backward(rng.standard_normal(y.shape), cache)
    assert lora.W.data.tobytes() == W0.tobytes() and not lora.W.grad.any()
    assert b0 is None or (lora.b.data.tobytes() == b0.tobytes() and not lora.b.grad.any())
    assert [n for n, _ in lora.named_parameters(trainable_only=True)] == ["A", "B"]
    assert [n for n, _ in lora.named_parameters()] == (["W", "b", "A", "B"] if bias
                                                       else ["W", "A", "B"])
    assert not lora.W.requires_grad and (lora.b is None or not lora.b.requires_grad)


@given(d_model=st.integers(1, 5), d_ff=st.integers(1, 6), r=st.integers(1, 3),
       activation=st.sampled_from(["gelu", "tanh"]), dropout=st.sampled_from([0.0, 0.3]),
       swiglu=st.booleans(), seed=seeds)
def test_lora_feedforward_gradchecks(d_model, d_ff, r, activation, dropout, swiglu, seed):
    r = min(r, d_model, d_ff)
    rng = np.random.default_rng(seed)
    if swiglu:
        ffn = SwiGLUFeedForward(d_model, d_ff, bias=True, dropout=dropout, dtype=np.float64,
                                rng=seed)
        targets = ("gate_proj", "up_proj", "down_proj")
    else:
        ffn = PositionwiseFeedForward(d_model, d_ff, activation, dropout, dtype=np.float64,
                                      rng=seed)
        targets = ("linear1", "linear2")
    assert apply_lora(ffn, targets, r=r, alpha=2.0, dropout=dropout, rng=seed) == list(targets)
    for _, p in ffn.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    names = [n for n, _ in ffn.named_parameters(trainable_only=True)]
    assert names == [f"{t}.{ab}" for t in targets for ab in "AB"]
    assert [n for n, _ in ffn.named_parameters()] == [f"{t}.{p}" for t in targets
                                                      for p in "WbAB"]
    x = rng.standard_normal((2, d_model))
    gradcheck(ffn, x, seed=seed).assert_passed()


# -- the kernel is the equations -----------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_kernel_forward_and_backward_are_the_equations(p):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5))
    W0, b0 = rng.standard_normal((5, 4)), rng.standard_normal(4)
    A, B = rng.standard_normal((5, 2)), rng.standard_normal((2, 4))
    s = 0.75
    y, cache = F.lora_forward(x, W0, b0, A, B, s, p, np.random.default_rng(1))
    assert isinstance(cache, LoRACache)
    mask = np.ones((6, 5)) if cache.dropout.mask is None else cache.dropout.mask
    xd = x.reshape(6, 5) * mask
    np.testing.assert_allclose(y.reshape(6, 4), x.reshape(6, 5) @ W0 + b0 + s * xd @ A @ B,
                               rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    dx, dA, dB = F.lora_backward(dy, cache, W0, A, B, s)
    dy2 = dy.reshape(6, 4)
    np.testing.assert_allclose(dB, s * (xd @ A).T @ dy2, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dA, s * xd.T @ dy2 @ B.T, rtol=1e-13, atol=1e-13)
    expect_dx = dy2 @ W0.T + (s * dy2 @ B.T @ A.T) * mask  # the mask on the adapter path only
    np.testing.assert_allclose(dx.reshape(6, 5), expect_dx, rtol=1e-13, atol=1e-13)
    if p:
        assert (mask == 0).any() and (mask != 0).any()


def test_starts_equal_to_its_base_and_dropout_touches_the_adapter_only():
    rng = np.random.default_rng(0)
    base = Linear(6, 4, dtype=np.float64, rng=0)
    lora = LoRALinear(base, 3, alpha=8.0, dropout=0.5, rng=1)
    assert not lora.B.data.any() and lora.A.data.any()
    x = rng.standard_normal((5, 6))
    np.testing.assert_array_equal(lora(x), base(x))  # B = 0: the base, even with dropout on
    lora.B.data[...] = rng.standard_normal(lora.B.shape)
    y, cache = lora.forward(x)
    delta = (lora.scale * (x * cache.dropout.mask) @ lora.A.data) @ lora.B.data
    np.testing.assert_allclose(y - base(x), delta, rtol=1e-12, atol=1e-12)
    lora.eval()
    y_eval, cache = lora.forward(x)
    assert cache.dropout.mask is None
    np.testing.assert_allclose(y_eval, base(x) + 8.0 / 3 * x @ lora.A.data @ lora.B.data,
                               rtol=1e-12, atol=1e-12)


def test_init_options():
    base = Linear(400, 300, rng=0)
    g = LoRALinear(base, 4, rng=0)
    assert abs(g.A.data.std() - 1 / 4) < 0.01  # N(0, 1/r^2), peft's "gaussian"
    k = LoRALinear(base, 4, init="kaiming", rng=0)
    assert np.abs(k.A.data).max() <= 1 / 20 and np.abs(k.A.data).max() > 0.049
    assert g.alpha == 4.0 and g.scale == 1.0  # alpha defaults to r
    assert not g.B.data.any() and not k.B.data.any()


# -- parameters, dtype, errors ---------------------------------------------------------------


@given(shape=shapes(), bias=st.booleans())
def test_trainable_parameter_count(shape, bias):
    _, d_in, d_out, r = shape
    lora = LoRALinear(Linear(d_in, d_out, bias=bias, rng=0), r, rng=0)
    assert lora.num_parameters(trainable_only=True) == r * (d_in + d_out)
    assert lora.num_parameters() == r * (d_in + d_out) + d_in * d_out + bias * d_out
    assert lora.A.shape == (d_in, r) and lora.B.shape == (r, d_out)
    assert list(lora.state_dict()) == (["W", "b", "A", "B"] if bias else ["W", "A", "B"])
    assert list(lora.adapter_state_dict()) == ["A", "B"]


def test_trainable_count_of_a_lora_model():
    lm = TransformerLM(11, d_model=8, nhead=2, num_layers=2, dim_feedforward=12, dropout=0.0,
                       max_len=6, tie_output=False, rng=0)
    total = lm.num_parameters()
    wrapped = apply_lora(lm, ("linear1", "linear2", "generator"), r=2, rng=0)
    assert wrapped == ["blocks.0.ffn.linear1", "blocks.0.ffn.linear2",
                       "blocks.1.ffn.linear1", "blocks.1.ffn.linear2", "generator"]
    adapters = sum(p.size for _, p in lora_parameters(lm))
    assert adapters == 2 * 2 * ((8 + 12) + (12 + 8)) + 2 * (8 + 11)
    frozen = 2 * (8 * 12 + 12 + 12 * 8 + 8) + (8 * 11 + 11)
    assert lm.num_parameters(trainable_only=True) == total - frozen + adapters
    assert lm.num_parameters() == total + adapters  # the bases are still parameters
    assert sum(p.size for _, p in lm.trainable_parameters()) == total - frozen + adapters


def test_dtype_preserved_float32():
    rng = np.random.default_rng(0)
    lora = make_lora(5, 3, 2, dtype=np.float32, dropout=0.2)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    check_dtype_preserved(lora, x)
    assert lora.A.grad.dtype == np.float32 and lora.B.grad.dtype == np.float32
    assert lora.W.dtype == np.float32 and lora.dtype == np.float32
    lora.merge()
    check_dtype_preserved(lora, x)
    assert lora.W.data.dtype == np.float32 and lora.W.grad.dtype == np.float32


def test_astype_casts_the_frozen_base_too():
    lora = make_lora(4, 3, 2, dtype=np.float32)
    ffn = PositionwiseFeedForward(4, 5, rng=0)
    apply_lora(ffn, ["linear1"], r=2)
    for m in (lora, ffn):
        m.astype(np.float64)
    assert lora.W.dtype == lora.b.dtype == lora.A.dtype == np.float64
    assert ffn.linear1.W.dtype == ffn.linear1.dtype == np.float64
    assert not ffn.linear1.W.requires_grad  # the cast keeps the flag
    x = np.random.default_rng(0).standard_normal((2, 4))
    assert ffn(x).dtype == np.float64
    clone = copy.deepcopy(lora)
    assert clone.W is not lora.W and np.array_equal(clone.W.data, lora.W.data)
    assert not clone.W.requires_grad and clone.A.requires_grad


def test_named_errors():
    base = Linear(4, 3, rng=0)
    with pytest.raises(ValueError, match="LoRALinear: r must be >= 1, got 0"):
        LoRALinear(base, 0)
    with pytest.raises(ValueError, match=r"r must be <= min\(in_features, out_features\) = 3"):
        LoRALinear(base, 4)
    with pytest.raises(TypeError, match="LoRALinear: r must be an int"):
        LoRALinear(base, 2.0)
    for alpha in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="LoRALinear: alpha must be a finite number > 0"):
            LoRALinear(base, 2, alpha)
    with pytest.raises(TypeError, match="LoRALinear: alpha must be a number"):
        LoRALinear(base, 2, "8")
    with pytest.raises(ValueError, match=r"LoRALinear: dropout must be in \[0, 1\]"):
        LoRALinear(base, 2, dropout=1.5)
    with pytest.raises(ValueError, match="LoRALinear: init must be one of"):
        LoRALinear(base, 2, init="zeros")
    emb = nt.Embedding(5, 4, rng=0)
    for not_linear in (TiedLinear(emb.W), LoRALinear(base, 2), emb):
        with pytest.raises(TypeError, match="LoRALinear: base must be a Linear, got "
                           + type(not_linear).__name__):
            LoRALinear(not_linear, 1)
    lora = LoRALinear(base, 2)
    with pytest.raises(ValueError, match="LoRALinear: x has last dim 5, expected in_features=4"):
        lora(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="already merged"):
        lora.merge().merge()
    with pytest.raises(ValueError, match="not merged"):
        lora.unmerge().unmerge()


def test_apply_lora_errors_and_nothing_changes_on_error():
    ffn = PositionwiseFeedForward(4, 6, rng=0)
    with pytest.raises(ValueError, match=r"apply_lora: no child named 'q_proj' "
                                         r"\(Linear children: linear1, linear2\)"):
        apply_lora(ffn, ("linear1", "q_proj"), r=2)
    assert type(ffn.linear1) is Linear  # refused before any change
    with pytest.raises(TypeError, match="apply_lora: 'act' is a ReLU, not a Linear"):
        apply_lora(ffn, ["act"], r=1)
    apply_lora(ffn, "linear1", r=2)
    with pytest.raises(ValueError, match="apply_lora: 'linear1' is already a LoRALinear"):
        apply_lora(ffn, "linear1", r=2)
    with pytest.raises(ValueError, match="apply_lora: targets must be a non-empty list"):
        apply_lora(ffn, [], r=2)
    with pytest.raises(ValueError, match="LoRALinear: r must be <= min"):
        apply_lora(ffn, "linear2", r=5)
    lm = TransformerLM(7, d_model=4, nhead=2, num_layers=1, dim_feedforward=6, max_len=4, rng=0)
    with pytest.raises(TypeError, match="apply_lora: 'generator' is a TiedLinear, not a Linear"):
        apply_lora(lm, ["generator"], r=1)


class _Shared(nt.Module):
    def __init__(self, lin):
        self.a = lin
        self.b = Linear(3, 3, rng=1)
        self.b.W = lin.W  # a tied weight


def test_apply_lora_refuses_a_tied_weight():
    m = _Shared(Linear(3, 3, rng=0))
    with pytest.raises(ValueError, match=r"apply_lora: a\.W is tied to b\.W"):
        apply_lora(m, ["a"], r=1)


@pytest.mark.parametrize("targets", [["out_proj"], ["in_proj", "out_proj"],
                                     ["q_proj", "v_proj"], ["k_proj", "out_proj"]])
def test_attention_projections_take_lora(targets):
    """MultiHeadAttention runs a wrapped projection through its forward/backward: the
    adapters learn (gradcheck, float64), the frozen bases get no gradient, and q/k/v
    targets split the fused in_proj first (the same function), fused again by
    remove_lora."""
    rng = np.random.default_rng(1)
    mha = MultiHeadAttention(8, 4, dtype=np.float64, rng=0, n_kv_heads=2, rotary=True)
    x = rng.standard_normal((2, 5, 8))
    before = mha(x)
    wrapped = apply_lora(mha, targets, r=2, rng=3)
    assert len(wrapped) == len(targets)
    np.testing.assert_allclose(mha(x), before, rtol=0, atol=1e-14)  # B = 0 at the start
    for _, p in lora_parameters(mha):
        if p.data.shape[0] == 2:  # B
            p.data[...] = 0.5 * rng.standard_normal(p.shape)
    report = gradcheck(mha, x)
    report.assert_passed()
    for path in wrapped:  # the adapters checked, the frozen bases skipped
        assert f"{path}.A" in report.errors and f"{path}.B" in report.errors
        assert f"{path}.W" not in report.errors
    kv = mha.new_kv_cache(2)  # decoding runs the adapters too
    mask = nt.causal_mask(5)
    np.testing.assert_allclose(np.concatenate([mha.decode(x[:, t:t + 1], kv) for t in range(5)],
                                              axis=1), mha(x, attn_mask=mask), atol=1e-12)
    adapted = mha(x)
    remove_lora(mha, merge=True)
    assert mha.in_proj is not None and mha.q_proj is None  # fused again
    np.testing.assert_allclose(mha(x), adapted, rtol=0, atol=1e-12)


def test_a_wrapped_fused_projection_serves_self_attention_only():
    mha = MultiHeadAttention(8, 2, dtype=np.float64, rng=0)
    apply_lora(mha, ["in_proj"], r=2, rng=0)
    x, m = np.ones((1, 3, 8)), np.zeros((1, 4, 8))
    mha(x)
    with pytest.raises(ValueError, match="LoRA-wrapped fused in_proj serves self-attention"):
        mha(x, m, m)


def test_split_in_proj_is_the_same_layer():
    rng = np.random.default_rng(2)
    mha = MultiHeadAttention(8, 4, dtype=np.float64, rng=0, n_kv_heads=1)
    x = rng.standard_normal((2, 4, 8))
    y, c = mha.forward(x)
    g = rng.standard_normal(y.shape)
    mha.zero_grad()
    dx = mha.backward(g, c)
    fused_grad = mha.in_proj.W.grad.copy()
    mha.split_in_proj()
    assert [n for n, _ in mha.named_parameters()][:3] == ["q_proj.W", "q_proj.b", "k_proj.W"]
    y2, c2 = mha.forward(x)
    mha.zero_grad()
    np.testing.assert_allclose(y2, y, rtol=0, atol=1e-14)
    np.testing.assert_allclose(mha.backward(g, c2), dx, rtol=0, atol=1e-13)
    mha.fuse_in_proj()
    np.testing.assert_allclose(mha.in_proj.W.grad, fused_grad, rtol=0, atol=1e-13)


# -- merge / unmerge -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_merge_unmerge_round_trip(dtype):
    rng = np.random.default_rng(5)
    lora = make_lora(9, 7, 3, alpha=6.0, dropout=0.3, dtype=dtype, seed=2)
    lora.eval()  # merged forward has no dropout: compare with the eval forward
    x = rng.standard_normal((4, 9)).astype(dtype)
    y_unmerged = lora(x)
    W0 = lora.W.data.copy()
    data = lora.W.data
    delta = lora.delta()
    lora.merge()
    assert lora.merged
    assert lora.W.data is data  # written into the Parameter's own array
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(lora.W.data, W0 + delta, rtol=0, atol=0)
    sd = lora.state_dict()  # a merged layer's state holds the merged weight
    np.testing.assert_array_equal(sd["W"], W0 + delta)
    np.testing.assert_allclose(lora(x), y_unmerged, rtol=0, atol=50 * eps * max(1, np.abs(
        y_unmerged).max()))
    lora.unmerge()
    assert not lora.merged
    # one rounding of W0 + D, one of (W0 + D) - D: half an ulp of |W0| + |D| each
    bound = eps * (np.abs(W0) + np.abs(delta))
    assert (np.abs(lora.W.data - W0) <= bound).all()
    np.testing.assert_allclose(lora(x), y_unmerged, rtol=0,
                               atol=50 * eps * max(1, np.abs(y_unmerged).max()))


def test_merged_backward_gives_dx_and_no_adapter_gradient():
    rng = np.random.default_rng(1)
    lora = make_lora(5, 4, 2, seed=3)
    lora.eval()
    x = rng.standard_normal((3, 5))
    y, cache = lora.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = lora.backward(dy, cache)
    lora.zero_grad()
    lora.merge()
    ym, cm = lora.forward(x)
    np.testing.assert_allclose(ym, y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(lora.backward(dy, cm), dx, rtol=1e-13, atol=1e-13)
    assert not lora.A.grad.any() and not lora.B.grad.any()


def test_remove_lora_merges_into_plain_linears_with_the_old_keys():
    rng = np.random.default_rng(2)
    ffn = PositionwiseFeedForward(4, 6, activation="gelu", dtype=np.float64, rng=0)
    keys = list(ffn.state_dict())
    apply_lora(ffn, ["linear1", "linear2"], r=2, rng=1)
    for _, p in lora_parameters(ffn):
        p.data[...] = rng.standard_normal(p.shape)
    x = rng.standard_normal((3, 4))
    y = ffn(x)
    unmerged = copy.deepcopy(ffn)
    ffn.linear2.merge()  # a merged one is folded as it is
    assert remove_lora(ffn) == ["linear1", "linear2"]
    assert type(ffn.linear1) is Linear and list(ffn.state_dict()) == keys
    np.testing.assert_allclose(ffn(x), y, rtol=1e-12, atol=1e-12)
    remove_lora(unmerged, merge=False)
    base = PositionwiseFeedForward(4, 6, activation="gelu", dtype=np.float64, rng=0)
    for k, v in base.state_dict().items():
        np.testing.assert_array_equal(unmerged.state_dict()[k], v)


# -- the adapters' state ---------------------------------------------------------------------


def test_adapter_state_dict_round_trip():
    rng = np.random.default_rng(4)

    def build():
        ffn = PositionwiseFeedForward(4, 6, dtype=np.float64, rng=0)  # the same base
        apply_lora(ffn, ["linear1", "linear2"], r=2, rng=rng.integers(1 << 30))
        return ffn

    trained = build()
    for _, p in lora_parameters(trained):
        p.data[...] = rng.standard_normal(p.shape)
    sd = adapter_state_dict(trained)
    assert list(sd) == ["linear1.A", "linear1.B", "linear2.A", "linear2.B"]
    assert trained.linear1.adapter_state_dict().keys() == {"A", "B"}
    fresh = build()
    x = rng.standard_normal((2, 4))
    assert not np.allclose(fresh(x), trained(x))
    fresh.linear2.merge()  # loading into a merged layer re-merges the new update
    assert load_adapter_state_dict(fresh, sd) == {"missing_keys": [], "unexpected_keys": []}
    assert fresh.linear2.merged
    np.testing.assert_allclose(fresh(x), trained(x), rtol=1e-12, atol=1e-12)
    sd["linear1.A"][0, 0] += 1.0  # a copy: the model is untouched
    assert trained.linear1.A.data[0, 0] != sd["linear1.A"][0, 0]
    bad = dict(sd)
    del bad["linear2.B"]
    bad["linear1.A"] = np.zeros((4, 3))
    bad["extra.A"] = np.zeros(2)
    with pytest.raises(ValueError, match=r"missing keys: linear2\.B; unexpected keys: "
                                         r"extra\.A; linear1\.A: expected shape \(4, 2\), "
                                         r"got \(4, 3\)"):
        load_adapter_state_dict(fresh, bad)
    with pytest.raises(ValueError, match="holds no LoRALinear"):
        load_adapter_state_dict(Linear(2, 2), {})
    lora = trained.linear1
    lora.load_adapter_state_dict({"A": np.ones((4, 2)), "B": np.ones((2, 6))})
    assert (lora.A.data == 1).all() and lora.A.dtype == np.float64


# -- training moves the adapters alone -----------------------------------------------------


@pytest.mark.parametrize("mode", ["reference", "fast"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("given", ["parameters", "module"])
def test_adamw_on_a_lora_ffn_changes_only_A_and_B(mode, dtype, given):
    """The frozen bases are given to AdamW (explicitly in a list, or with the
    module): it skips them, decay included, on the reference path and on the
    fast flat-buffer path alike; only A and B change and get optimizer state."""
    rng = np.random.default_rng(0)
    ffn = PositionwiseFeedForward(6, 10, activation="gelu", dropout=0.1, dtype=dtype, rng=0)
    apply_lora(ffn, ["linear1", "linear2"], r=2, alpha=4.0, dropout=0.1, rng=1)
    frozen = {n: (m.W.data.tobytes(), m.b.data.tobytes()) for n, m in
              (("linear1", ffn.linear1), ("linear2", ffn.linear2))}
    frozen_arrays = [(p, p.data, p.grad) for p in ffn.parameters() if not p.requires_grad]
    start = adapter_state_dict(ffn)
    params = ffn.parameters() if given == "parameters" else ffn
    opt = AdamW(params, lr=1e-2, weight_decay=0.1)  # decay would move W if seen
    assert len(opt.params) == 8 and len(opt.trainable()) == 4
    x = rng.standard_normal((8, 6)).astype(dtype)
    target = rng.standard_normal((8, 6)).astype(dtype)
    losses = []
    with use_kernels(mode):
        for _ in range(20):
            opt.zero_grad()
            y, cache = ffn.forward(x)
            losses.append(float(((y - target) ** 2).mean()))
            ffn.backward((2.0 / y.size) * (y - target), cache)
            opt.step()
    assert losses[-1] < losses[0]
    assert opt._flat.is_packed() == (mode == "fast")
    for n, m in (("linear1", ffn.linear1), ("linear2", ffn.linear2)):
        assert (m.W.data.tobytes(), m.b.data.tobytes()) == frozen[n]
        assert not m.W.grad.any() and not m.b.grad.any()
    for p, data, grad in frozen_arrays:  # never packed into the flat buffers
        assert p.data is data and p.grad is grad
    for k, v in adapter_state_dict(ffn).items():
        assert not np.array_equal(v, start[k]), k
    assert len(opt.state["m"]) == len(opt.state["v"]) == 4  # no state for the bases
    for p in ffn.parameters(trainable_only=True):
        assert p.dtype == dtype


def test_adamw_on_lora_parameters_of_a_language_model():
    """Only the adapters are given to the optimizer: every other parameter of the
    model and every frozen base keeps its bytes, and the loss goes down."""
    rng = np.random.default_rng(1)
    lm = TransformerLM(11, d_model=8, nhead=2, num_layers=1, dim_feedforward=16, dropout=0.0,
                       max_len=8, tie_output=False, rng=0)
    apply_lora(lm, ["linear1", "linear2", "generator"], r=2, alpha=4.0, rng=2)
    lora_names = {n for n, _ in lora_parameters(lm)}
    before = lm.state_dict()
    bases = {n: m.W.data.tobytes() for n, m in lm.named_modules() if isinstance(m, LoRALinear)}
    opt = AdamW(lora_parameters(lm), lr=3e-2)
    loss_fn = CrossEntropyLoss()
    ids = rng.integers(0, 11, (4, 8))
    losses = []
    for _ in range(15):
        lm.zero_grad()
        logits, cache = lm.forward(ids[:, :-1])
        loss, lcache = loss_fn.forward(logits, ids[:, 1:])
        losses.append(float(loss))
        lm.backward(loss_fn.backward(1.0, lcache), cache)
        opt.step()
    assert losses[-1] < losses[0]
    after = lm.state_dict()
    for name, value in before.items():
        if name in lora_names:
            assert not np.array_equal(after[name], value), name
        else:
            assert after[name].tobytes() == value.tobytes(), name
    for n, m in lm.named_modules():
        if isinstance(m, LoRALinear):
            assert m.W.data.tobytes() == bases[n]


# -- the frozen base is a Parameter: whole-model state -------------------------------------


def _lora_lm(seed, adapters_seed):
    lm = TransformerLM(11, d_model=8, nhead=2, num_layers=2, dim_feedforward=12, dropout=0.0,
                       max_len=6, tie_output=False, dtype=np.float64, rng=seed)
    apply_lora(lm, ("linear1", "linear2", "generator"), r=2, alpha=4.0, rng=adapters_seed)
    rng = np.random.default_rng(adapters_seed)
    for _, p in lora_parameters(lm):
        p.data[...] = rng.standard_normal(p.shape)
    return lm


def test_a_lora_models_whole_state_dict_round_trips_strictly():
    trained, fresh = _lora_lm(0, 1), _lora_lm(5, 6)  # other bases, other adapters
    plain = TransformerLM(11, d_model=8, nhead=2, num_layers=2, dim_feedforward=12,
                          dropout=0.0, max_len=6, tie_output=False, dtype=np.float64, rng=0)
    sd = trained.state_dict()
    adapters = [n for n, _ in lora_parameters(trained)]
    # the base model's keys, in place, plus path.A and path.B after each wrapped W, b
    assert [k for k in sd if k not in adapters] == list(plain.state_dict())
    assert "generator.W" in sd and "blocks.0.ffn.linear1.b" in sd
    assert sd.keys() >= set(adapters) and len(adapters) == 10
    ids = np.random.default_rng(2).integers(0, 11, (2, 6))
    assert not np.allclose(fresh(ids), trained(ids))
    assert fresh.load_state_dict(sd) == {"missing_keys": [], "unexpected_keys": []}
    np.testing.assert_array_equal(fresh(ids), trained(ids))
    for (n1, p1), (n2, p2) in zip(trained.named_parameters(), fresh.named_parameters()):
        assert n1 == n2 and p1.data.tobytes() == p2.data.tobytes()
        assert p1.requires_grad == p2.requires_grad  # loading keeps each flag
    # the base model's checkpoint loads into a LoRA'd model: only the adapters are missing
    with pytest.raises(ValueError, match=r"missing keys: blocks\.0\.ffn\.linear1\.A, "
                                         r"blocks\.0\.ffn\.linear1\.B, "):
        fresh.load_state_dict(plain.state_dict())
    result = fresh.load_state_dict(plain.state_dict(), strict=False)
    assert result == {"missing_keys": adapters, "unexpected_keys": []}
    np.testing.assert_array_equal(fresh.generator.W.data, plain.generator.W.data)
    # plain has trained's base (rng=0): the base's checkpoint plus the adapters alone
    # make the trained LoRA model
    fresh.load_state_dict(_lora_lm(5, 6).state_dict())
    fresh.load_state_dict(plain.state_dict(), strict=False)
    assert not np.allclose(fresh(ids), trained(ids))
    load_adapter_state_dict(fresh, adapter_state_dict(trained))
    np.testing.assert_array_equal(fresh(ids), trained(ids))


def test_a_lora_models_checkpoint_and_optimizer_resume_bit_for_bit(tmp_path):
    from numtransformer.checkpoint import load_checkpoint, save_checkpoint

    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 11, (3, 6)) for _ in range(6)]
    loss_fn = CrossEntropyLoss()

    def step(lm, opt, ids):
        lm.zero_grad()
        logits, cache = lm.forward(ids[:, :-1])
        _, lcache = loss_fn.forward(logits, ids[:, 1:])
        lm.backward(loss_fn.backward(1.0, lcache), cache)
        opt.step()

    def run(split):
        lm = _lora_lm(0, 1)
        opt = AdamW(lm, lr=1e-2, weight_decay=0.1)  # the frozen bases given too
        for i, ids in enumerate(batches):
            if i == split:
                save_checkpoint(str(tmp_path / "ck.npz"), lm, {}, optimizer=opt)
                ck = load_checkpoint(str(tmp_path / "ck.npz"))
                # the optimizer's state: the trainable parameters' moments alone
                trainable = {n for n, _ in lm.trainable_parameters()}
                assert {k.partition(".")[2] for k in ck.optim if k.startswith("m.")} == trainable
                assert "generator.W" in ck.params and "generator.W" not in trainable
                lm = _lora_lm(7, 8)
                opt = AdamW(lm, lr=5.0, weight_decay=0.1)
                lm.load_state_dict(ck.params)
                opt.load_state_dict(ck.optim)
            step(lm, opt, ids)
        return lm.state_dict()

    with use_kernels("fast"):
        whole, resumed = run(None), run(3)
    assert list(whole) == list(resumed)
    for k in whole:
        assert whole[k].tobytes() == resumed[k].tobytes(), k
    base = _lora_lm(0, 1).state_dict()
    for k, v in whole.items():  # the bases never moved
        if k.endswith((".A", ".B")):
            assert not np.array_equal(v, base[k]), k
        elif any(k.startswith(p) for p in ("generator.", "blocks.0.ffn.linear")):
            assert v.tobytes() == base[k].tobytes(), k


def test_the_base_is_the_linears_own_parameter_frozen():
    base = Linear(5, 4, rng=0)
    W, b = base.W, base.b
    lora = LoRALinear(base, 2, rng=0)
    assert lora.W is W and lora.b is b  # not copies: the same Parameter objects
    assert not W.requires_grad and not b.requires_grad and lora.A.requires_grad
    assert not hasattr(lora, "W0") and not hasattr(lora, "b0")
    assert repr(W).endswith("requires_grad=False)")
    # the base must stay frozen: a backward that would skip its gradient refuses
    x = np.ones((2, 5), np.float32)
    y, cache = lora.forward(x)
    lora.W.requires_grad_(True)
    with pytest.raises(ValueError, match=r"LoRALinear: the base W must stay frozen"):
        lora.backward(y, cache)
    lora.requires_grad_(True)  # the whole subtree: W, b, A, B
    with pytest.raises(ValueError, match=r"LoRALinear: the base W and b must stay frozen"):
        lora.backward(y, cache)
    lora.W.requires_grad_(False)
    lora.b.requires_grad_(False)
    lora.backward(y, cache)
    # frozen adapters get nothing either (the model frozen after training)
    lora.B.data[...] = 1.0
    lora.zero_grad()
    lora.A.requires_grad_(False)
    lora.B.requires_grad_(False)
    y, cache = lora.forward(x)
    lora.backward(y, cache)
    assert not lora.A.grad.any() and not lora.B.grad.any()


def test_merged_backward_kernel_is_dy_W_transposed():
    rng = np.random.default_rng(6)
    x, W, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    y, cache = F.linear_forward(x, W, b)
    dy = rng.standard_normal(y.shape)
    dx_ref, _, _ = F.linear_backward(dy, cache, W, True)
    np.testing.assert_array_equal(F.frozen_linear_backward(dy, cache, W), dx_ref)


def test_peft_style_freeze_then_wrap():
    """peft freezes the whole model, then adds the adapters: requires_grad_(False)
    before apply_lora leaves exactly the adapters trainable."""
    lm = TransformerLM(11, d_model=8, nhead=2, num_layers=1, dim_feedforward=12, dropout=0.0,
                       max_len=6, tie_output=False, rng=0)
    lm.requires_grad_(False)
    apply_lora(lm, ("linear1", "linear2"), r=2, rng=0)
    assert [n for n, _ in lm.trainable_parameters()] == [n for n, _ in lora_parameters(lm)]
    assert lm.num_parameters(trainable_only=True) == 2 * ((8 + 12) + (12 + 8))


def test_weight_exchange_refuses_a_lora_model_by_path():
    """The adapters have no place in a torch module: exporting a LoRA'd model
    is refused by the wrapper's path, never done without them."""
    from numtransformer.interop.torch import parameter_map
    from numtransformer.layers import PositionwiseFeedForward, apply_lora

    ffn = PositionwiseFeedForward(6, 10, dtype=np.float64, rng=0)
    apply_lora(ffn, ["linear1"], r=2, rng=1)
    with pytest.raises(TypeError, match="interop: linear1 is a LoRALinear; fold the adapters"):
        parameter_map(ffn)


def test_splitting_many_attention_layers_is_not_taken_for_tied_weights():
    """apply_lora records which parameters each name owns after the split: a freed
    fused weight's id reused by a new projection is not a tie."""
    lm = nt.llama_lm(11, d_model=16, nhead=4, n_kv_heads=2, num_layers=6, dtype=np.float64,
                     rng=0)
    x = np.random.default_rng(0).integers(0, 11, (1, 5))
    before = lm(x)
    wrapped = apply_lora(lm, ["q_proj", "v_proj"], r=2, rng=1)
    assert len(wrapped) == 12
    np.testing.assert_allclose(lm(x), before, rtol=0, atol=1e-13)


def test_a_frozen_model_forms_no_frozen_gradient():
    """requires_grad_(False) then LoRA on some projections: after backward every frozen
    parameter's grad is still zero in every layer kind of the LLaMA-style model (tied
    output, embedding, RMSNorm, attention with unwrapped projections, SwiGLU), and
    gradcheck (which reports a frozen parameter that received a gradient) passes."""
    lm = nt.llama_lm(11, d_model=8, nhead=4, n_kv_heads=2, num_layers=2, dim_feedforward=12,
                     dtype=np.float64, rng=0)
    lm.requires_grad_(False)
    apply_lora(lm, ["q_proj", "up_proj"], r=2, rng=1)
    for _, p in lora_parameters(lm):
        p.data[...] = 0.3 * np.random.default_rng(2).standard_normal(p.shape)
    ids = np.array([[1, 2, 3, 4], [5, 6, 0, 0]])
    logits, cache = lm.forward(ids, ids == 0)
    lm.zero_grad()
    lm.backward(np.ones_like(logits), cache)
    frozen = [(n, p) for n, p in lm.named_parameters() if not p.requires_grad]
    assert frozen and all(not p.grad.any() for _, p in frozen)
    gradcheck(lm, ids, ids == 0, max_entries=8).assert_passed()
