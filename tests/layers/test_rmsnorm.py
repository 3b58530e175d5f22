import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import RMSNorm, Transformer, gradcheck
from numtransformer.layers import NORM_KINDS, make_norm
from tests.helpers import away_from_zero, check_dtype_preserved, seeds


@given(lead=st.lists(st.integers(1, 3), max_size=2),
       norm=st.lists(st.integers(1, 5), min_size=1, max_size=2), affine=st.booleans(),
       eps=st.sampled_from([1e-6, 1e-3, 0.5]), seed=seeds)
def test_gradcheck(lead, norm, affine, eps, seed):
    rng = np.random.default_rng(seed)
    rms = RMSNorm(tuple(norm), eps=eps, elementwise_affine=affine, dtype=np.float64)
    if affine:
        rms.gamma.data[...] = rng.standard_normal(rms.gamma.shape)
    # away from 0: a one-feature row x / sqrt(x^2 + eps) bends within sqrt(eps) of 0
    x = 2 * away_from_zero(rng, (*lead, *norm), margin=0.2)
    gradcheck(rms, x, seed=seed).assert_passed()


def test_known_value_eps_inside_sqrt_no_centring():
    rms = RMSNorm(2, eps=1.0, dtype=np.float64)
    rms.gamma.data[...] = [2.0, -1.0]
    # x = [1, 3]: mean(x^2) = 5, r = 1 / sqrt(5 + 1)
    y = rms(np.array([1.0, 3.0]))
    np.testing.assert_allclose(y, [2 / math.sqrt(6), -3 / math.sqrt(6)], rtol=1e-15)


def test_output_has_unit_mean_square_and_keeps_the_mean():
    x = np.random.default_rng(0).standard_normal((4, 7, 16)) * 5 + 3
    y = RMSNorm(16, eps=1e-12, dtype=np.float64)(x)
    np.testing.assert_allclose((y * y).mean(-1), 1, rtol=1e-12)
    # not centred: the row mean is scaled, not removed
    np.testing.assert_allclose(y.mean(-1), x.mean(-1) / np.sqrt((x * x).mean(-1)), rtol=1e-12)
    assert (y.mean(-1) > 0).all()
    # scale invariance: RMSNorm(c x) = RMSNorm(x) for c > 0 (eps aside)
    np.testing.assert_allclose(RMSNorm(16, eps=1e-12, dtype=np.float64)(7.5 * x), y, rtol=1e-12)


def test_multi_dim_normalized_shape_is_one_group():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 4))
    a = RMSNorm((2, 4), dtype=np.float64)
    b = RMSNorm(8, dtype=np.float64)
    a.gamma.data[...] = rng.standard_normal((2, 4))
    b.gamma.data[...] = a.gamma.data.reshape(8)
    np.testing.assert_allclose(a(x).reshape(3, 8), b(x.reshape(3, 8)), rtol=1e-15)


def test_eps_none_is_the_machine_epsilon_of_the_dtype():
    x = np.array([[1e-5, -2e-5]])
    for dtype in (np.float64, np.float32):
        rms = RMSNorm(2, eps=None, dtype=dtype)
        y = rms(x.astype(dtype))
        eps = float(np.finfo(dtype).eps)
        expect = x / np.sqrt((x * x).mean() + eps)
        np.testing.assert_allclose(y, expect, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert RMSNorm(3).eps == 1e-6  # the default: Hugging Face LlamaRMSNorm's


def test_zero_rows_are_finite():
    rms = RMSNorm(4)
    x = np.zeros((2, 4), np.float32)
    y, cache = rms.forward(x)
    dx = rms.backward(np.arange(8, dtype=np.float32).reshape(2, 4), cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all() and not y.any()


def test_float32_preserved():
    x = np.linspace(-1, 2, 15, dtype=np.float32).reshape(3, 5)
    check_dtype_preserved(RMSNorm(5), x)
    check_dtype_preserved(RMSNorm(5, elementwise_affine=False), x)
    check_dtype_preserved(RMSNorm(5, eps=None), x)


def test_bad_input():
    rms = RMSNorm(8)
    with pytest.raises(ValueError, match=r"RMSNorm: x has trailing shape \(7,\), "
                       r"expected normalized_shape=\(8,\)"):
        rms(np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="RMSNorm: x contains 1 NaN"):
        rms(np.array([[0.0] * 7 + [np.nan]], np.float32))
    with pytest.raises(TypeError, match="RMSNorm: x has dtype float64 but the layer computes in "
                                        "float32"):
        rms(np.zeros((2, 8)))
    with pytest.raises(TypeError, match="RMSNorm: x must be"):
        rms(np.zeros((2, 8), np.int64))
    for eps in (0, -1e-6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="RMSNorm: eps must be > 0"):
            RMSNorm(3, eps=eps)
    with pytest.raises(TypeError, match="RMSNorm: eps must be a float or None"):
        RMSNorm(3, eps="1e-6")
    with pytest.raises(ValueError, match="RMSNorm: normalized_shape"):
        RMSNorm(0)
    with pytest.raises(TypeError, match="RMSNorm: dtype"):
        RMSNorm(3, dtype=np.float16)


def test_state_dict_has_gamma_only():
    a, b = RMSNorm(3), RMSNorm(3)
    assert list(a.state_dict()) == ["gamma"]
    assert not list(RMSNorm(3, elementwise_affine=False).state_dict())
    a.gamma.data[...] = [1, 2, 3]
    b.load_state_dict(a.state_dict())
    assert np.array_equal(b.gamma.data, [1, 2, 3]) and b.gamma.dtype == np.float32


def test_make_norm_builds_it():
    assert "rmsnorm" in NORM_KINDS
    norm = make_norm("rmsnorm", 6, 1e-5, dtype=np.float64)
    assert isinstance(norm, RMSNorm) and norm.eps == 1e-5 and norm.dtype == np.float64
    assert norm.normalized_shape == (6,) and norm.gamma.dtype == np.float64


def test_transformer_with_rmsnorm_gradchecks():
    rng = np.random.default_rng(3)
    model = Transformer(7, 9, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                        dim_feedforward=12, dropout=0.1, norm_first=True, norm="rmsnorm",
                        dtype=np.float64, rng=rng)
    norms = [name for name, m in model.named_modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 7, norms  # 2 + 3 in the layers, the two final norms
    assert not any(name.endswith("beta") for name, _ in model.named_parameters())
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.data[...] = 1 + 0.3 * rng.standard_normal(p.shape)
    src = np.array([[3, 4, 5, 0], [2, 6, 1, 6]])
    tgt = np.array([[1, 3, 4], [1, 5, 0]])
    gradcheck(model, src, tgt, src == 0, tgt == 0, max_entries=16, seed=3).assert_passed()


def test_weight_exchange_refuses_rmsnorm_models_by_name():
    """PyTorch's Transformer layers and BERT checkpoints hold LayerNorm weights
    and biases: a model built with RMSNorm is refused, never half-mapped."""
    from numtransformer.interop.torch import parameter_map
    from numtransformer.pretrained.bert import BertModel, hf_bert_name_map

    model = Transformer(5, 5, 8, 2, num_encoder_layers=1, num_decoder_layers=1,
                           norm="rmsnorm")
    with pytest.raises(TypeError, match="interop: a RMSNorm norm has no counterpart"):
        parameter_map(model.encoder)
    bert = BertModel(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=8, norm="rmsnorm")
    with pytest.raises(ValueError, match="hf_bert_name_map: .* norm='rmsnorm'"):
        hf_bert_name_map(bert)
