"""The gradient oracle (``numtransformer.oracle``): every family against finite
differences on drawn shapes, its masking and layout conventions, ``compare``
and its report, the hypothesis strategies.  (Against PyTorch:
tests/parity/test_oracle_torch.py.)"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from hypothesis import find, given

from numtransformer import oracle
from numtransformer.gradcheck import check_causality, check_padding, gradcheck
from numtransformer.oracle import strategies
from numtransformer.oracle.examples import attention_case, sample_cases


@pytest.mark.parametrize("family", sorted(oracle.FUNCTIONS))
def test_every_family_passes_gradcheck_on_drawn_cases(family):
    fn = oracle.FUNCTIONS[family]
    for case in sample_cases(family, 6, seed=11):
        gradcheck(fn, **case).assert_passed()


@given(strategies.attention_cases())
def test_attention_gradcheck_on_hypothesis_cases(case):
    gradcheck(oracle.scaled_dot_product_attention, **case).assert_passed()


@given(strategies.mha_cases())
def test_mha_gradcheck_on_hypothesis_cases(case):
    gradcheck(oracle.multi_head_attention, **case).assert_passed()


def test_results_are_float64_and_inputs_untouched():
    case = attention_case(mask="key_padding", seed=1)
    case32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                  else v) for k, v in case.items()}
    saved = {k: np.copy(v) for k, v in case32.items() if isinstance(v, np.ndarray)}
    dout = np.random.default_rng(0).standard_normal((2, 2, 3, 4)).astype(np.float32)
    outs, grads = oracle.scaled_dot_product_attention(**case32, dout=dout)
    assert all(a.dtype == np.float64 for a in [*outs.values(), *grads.values()])
    for k, v in saved.items():
        assert np.array_equal(case32[k], v)


def test_fully_blocked_rows_give_zeros_never_nan():
    case = attention_case(B=2, H=2, Tq=3, Tk=4, mask="none", seed=2)
    blocked = np.zeros((3, 4), bool)
    blocked[1] = True
    kpm = np.zeros((2, 4), bool)
    kpm[1] = True  # the whole second sequence is padding
    dout = np.random.default_rng(1).standard_normal((2, 2, 3, 4))
    outs, grads = oracle.scaled_dot_product_attention(**case, attn_mask=blocked,
                                                      key_padding_mask=kpm, dout=dout)
    assert all(np.isfinite(a).all() for a in [*outs.values(), *grads.values()])
    assert not outs["out"][:, :, 1].any() and not outs["out"][1].any()
    assert not grads["q"][:, :, 1].any() and not grads["q"][1].any()
    assert not grads["k"][1].any() and not grads["v"][1].any()


def test_attention_is_causal_and_window_local_by_the_structural_checks():
    for mask in ("causal", "window"):
        case = attention_case(B=2, H=2, Tq=5, Tk=5, mask=mask, seed=3)
        check_causality(oracle.scaled_dot_product_attention, **case, time_axis=2,
                        causal_inputs=["q", "k", "v"]).assert_passed()
    case = attention_case(B=2, H=2, Tq=5, Tk=5, mask="none", seed=3)
    report = check_causality(oracle.scaled_dot_product_attention, **case, time_axis=2,
                             causal_inputs=["k", "v"])
    assert not report.passed and "later position" in str(report)


def test_padded_keys_get_no_gradient_by_the_structural_check():
    rng = np.random.default_rng(4)
    case = oracle.examples.mha_case(B=2, Tq=5, D=8, n_heads=2, self_attention=True, seed=4)
    pad = np.zeros((2, 5), bool)
    pad[0, 3:] = True
    x = rng.standard_normal((2, 5, 8))
    case.update(query=x, key=x.copy(), value=x.copy())
    check_padding(oracle.multi_head_attention, **case, key_padding_mask=pad, padding_mask=pad,
                  padded_inputs=["key", "value"], output_padding=None).assert_passed()
    leaky = check_padding(oracle.multi_head_attention, **case, padding_mask=pad,
                          padded_inputs=["key", "value"], output_padding=None)
    assert not leaky.passed


def test_layouts_agree():
    rng = np.random.default_rng(5)
    case = attention_case(B=2, H=4, H_kv=2, Tq=3, Tk=5, d=4, mask="window", seed=5)
    dout = rng.standard_normal((2, 4, 3, 4))
    ref = oracle.scaled_dot_product_attention(**case, dout=dout)
    T = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1, 3))  # noqa: E731
    got = oracle.scaled_dot_product_attention(
        T(case["q"]), T(case["k"]), T(case["v"]), T(dout), window=case["window"], layout="bthd")
    assert np.array_equal(T(got.outputs["out"]), ref.outputs["out"])
    for n in "qkv":
        assert np.array_equal(T(got.grads[n]), ref.grads[n])
    # a custom scale s is the default scale with q multiplied by s sqrt(d)
    s = 0.3
    scaled = oracle.scaled_dot_product_attention(**case, dout=dout, scale=s)
    pre = oracle.scaled_dot_product_attention(**dict(case, q=case["q"] * s * 2.0), dout=dout)
    assert np.allclose(scaled.outputs["out"], pre.outputs["out"], rtol=1e-14, atol=1e-15)
    assert np.allclose(scaled.grads["q"], pre.grads["q"] * s * 2.0, rtol=1e-13, atol=1e-15)


def test_torch_layouts_of_mha_and_cross_entropy():
    rng = np.random.default_rng(6)
    case = oracle.examples.mha_case(seed=6, mask="causal")
    dout = rng.standard_normal((2, 3, 8))
    ref = oracle.multi_head_attention(**case, dout=dout)
    tcase = {k: (v.T if k.startswith("W_") else v) for k, v in case.items()}
    got = oracle.multi_head_attention(**tcase, dout=dout, layout="torch")
    assert np.array_equal(got.outputs["out"], ref.outputs["out"])
    for n, g in ref.grads.items():
        assert np.array_equal(got.grads[n], g.T if n.startswith("W_") else g), n
    ce = oracle.examples.cross_entropy_case(N=3, V=5, T=4, label_smoothing=0.1, seed=6)
    ref = oracle.cross_entropy(**ce, dout=np.float64(1.3))
    moved = dict(ce, logits=np.moveaxis(ce["logits"], -1, 1))
    got = oracle.cross_entropy(**moved, dout=np.float64(1.3), layout="torch")
    assert got.outputs["loss"] == ref.outputs["loss"]
    assert np.array_equal(np.moveaxis(got.grads["logits"], 1, -1), ref.grads["logits"])


def test_rotary_seq_axis_and_sequence_steps():
    case = oracle.examples.rotary_case(T=5, d=6, layout="interleaved", offset=3, seed=7)
    dout = np.random.default_rng(7).standard_normal(case["x"].shape)
    ref = oracle.rotary_embedding(**case, dout=dout)
    sw = lambda a: np.ascontiguousarray(np.swapaxes(a, 1, 2))  # noqa: E731
    got = oracle.rotary_embedding(sw(case["x"]), case["positions"], sw(dout),
                                  layout="interleaved", seq_axis=1)
    assert np.array_equal(sw(got.outputs["out"]), ref.outputs["out"])
    assert np.array_equal(sw(got.grads["x"]), ref.grads["x"])
    # a one-step sequence is one step
    seq = oracle.examples.recurrent_case("gru", T=1, seed=8)
    step = {k.replace("0", "_prev"): (v[:, 0] if k == "x" else v) for k, v in seq.items()}
    dh = np.random.default_rng(8).standard_normal((2, 4))
    a = oracle.gru(**seq, dout={"h_n": dh})
    b = oracle.gru_step(**step, dout=dh)
    assert np.array_equal(a.outputs["h_n"], b.outputs["h"])
    assert np.allclose(a.grads["W_hh"], b.grads["W_hh"], rtol=1e-14, atol=1e-15)


def _broken_attention(q, k, v, dout=None, **masks):
    """A NumPy attention whose softmax backward forgets the - sum_j dalpha_j alpha_j term."""
    res = oracle.scaled_dot_product_attention(q, k, v, **masks)
    mask, bias = oracle.attention_mask(*q.shape[:3], k.shape[2], **masks)
    d = q.shape[-1]
    g = q.shape[1] // k.shape[1]
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    e = q @ kr.swapaxes(-1, -2) / np.sqrt(d) + (0 if bias is None else bias)
    if mask is not None:
        e = np.where(mask, -np.inf, e)
    m = np.max(e, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(e - m)
    s = p.sum(-1, keepdims=True)
    alpha = p / np.where(s > 0, s, 1)
    out = alpha @ vr
    dalpha = dout @ vr.swapaxes(-1, -2)
    de = alpha * dalpha  # the bug
    dq = de @ kr / np.sqrt(d)
    B, H, Tq, _ = q.shape
    dk = (de.swapaxes(-1, -2) @ q / np.sqrt(d)).reshape(B, k.shape[1], g, *k.shape[2:]).sum(2)
    dv = (alpha.swapaxes(-1, -2) @ dout).reshape(B, k.shape[1], g, *v.shape[2:]).sum(2)
    grads = {"q": dq, "k": dk, "v": dv}
    if "attn_mask" in res.grads or (masks.get("attn_mask") is not None
                                   and np.asarray(masks["attn_mask"]).dtype != bool):
        grads["attn_mask"] = np.zeros_like(masks["attn_mask"])
    return out, grads


def test_compare_names_the_broken_tensors_and_the_first_failing_case(capsys):
    cases = [attention_case(mask=m, seed=i) for i, m in enumerate(("none", "causal", "bias"))]
    report = oracle.compare(_broken_attention, oracle.scaled_dot_product_attention, cases)
    printed = capsys.readouterr().out
    assert not report.passed
    assert set(report.failed_tensors) == {"dq", "dk", "dattn_mask"}
    assert report.tensors["out"].passed and report.tensors["dv"].passed
    assert "dq" in printed and "FAIL" in printed and "case 0: q=2x2x3x4" in printed
    assert report.tensors["dattn_mask"].first_failure.startswith("case 2")
    with pytest.raises(AssertionError, match="dq"):
        report.assert_passed()


def test_compare_reports_missing_tensors_exceptions_and_tuples():
    def tuple_grads(**kw):
        outs, grads = oracle.scaled_dot_product_attention(**kw)
        return outs["out"], (grads["q"], grads["k"], grads["v"])

    assert oracle.compare(tuple_grads, "scaled_dot_product_attention",
                          [attention_case(mask="causal")], verbose=False).passed

    def no_dv(**kw):
        outs, grads = oracle.scaled_dot_product_attention(**kw)
        del grads["v"]
        return outs, grads

    rep = oracle.compare(no_dv, "scaled_dot_product_attention", [attention_case()],
                         verbose=False)
    assert rep.failed_tensors == ["dv"] and rep.tensors["dv"].problem == "missing"

    def crashes(**kw):
        raise RuntimeError("boom")

    rep = oracle.compare(crashes, "layer_norm", n=2, verbose=False)
    assert not rep.passed and "boom" in str(rep)


def test_compare_passes_the_oracle_against_itself_on_every_family():
    for name, fn in oracle.FUNCTIONS.items():
        oracle.compare(fn, name, n=10, verbose=False).assert_passed()


def test_strategies_draw_length_one_and_fully_blocked_rows():
    one = find(strategies.attention_cases(), lambda c: c["q"].shape[2] == 1
               and c["k"].shape[2] == 1)
    assert one["q"].shape[2] == 1

    def fully_blocked(c):
        B, H, Tq, _ = c["q"].shape
        mask, _ = oracle.attention_mask(B, H, Tq, c["k"].shape[2],
                                        **{k: v for k, v in c.items()
                                           if k in ("key_padding_mask", "attn_mask",
                                                    "is_causal", "window")})
        return mask is not None and mask.all(axis=-1).any()

    assert fully_blocked(find(strategies.attention_cases(), fully_blocked))
    gqa = find(strategies.mha_cases(), lambda c: c["n_kv_heads"] < c["n_heads"])
    assert gqa["W_k"].shape[1] < gqa["W_q"].shape[1]


def test_strategies_without_hypothesis_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.delitem(sys.modules, "numtransformer.oracle.strategies")
    with pytest.raises(ImportError, match="pip install hypothesis"):
        importlib.import_module("numtransformer.oracle.strategies")
    monkeypatch.undo()
    importlib.import_module("numtransformer.oracle.strategies")


def test_bad_inputs_get_clear_errors():
    case = attention_case()
    with pytest.raises(TypeError, match="attn_mask must be boolean"):
        oracle.scaled_dot_product_attention(**case, attn_mask=np.zeros((3, 4), np.int8))
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        oracle.scaled_dot_product_attention(**case, key_padding_mask=np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="must divide"):
        oracle.scaled_dot_product_attention(case["q"], case["k"][:, :1].repeat(3, 1),
                                            case["v"][:, :1].repeat(3, 1))
    with pytest.raises(ValueError, match=r"dout\[.out.\] has shape"):
        oracle.layer_norm(np.ones((2, 3)), dout=np.ones((3, 2)))
    with pytest.raises(ValueError, match="gate_order"):
        oracle.lstm_step(**oracle.examples.recurrent_case("lstm_step"), gate_order="ifgg")
    with pytest.raises(ValueError, match="target ids"):
        oracle.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        oracle.rms_norm(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("family", sorted(oracle.FUNCTIONS))
def test_covering_cases_pass_gradcheck(family):
    """The fixed cases that take every option once (the mutation script's kernel checks)."""
    from numtransformer.oracle.examples import covering_cases
    for case in covering_cases(family):
        gradcheck(oracle.FUNCTIONS[family], **case).assert_passed()
