"""``from_torch`` / ``to_torch`` round trips, and the errors for what has no counterpart.

torch -> ours -> torch gives back exactly the same parameters (bit for bit),
the same structure and hyper-parameters (torch's repr: dropout p, eps,
sizes) and the same train/eval mode; ours -> torch -> ours likewise (our repr
also names the activation).  The forward/backward agreement itself is tested
in test_transformer_torch.py and test_interop_layers.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from numtransformer.attention import MultiHeadAttention  # noqa: E402
from numtransformer.interop import (TransformerStack, from_torch,  # noqa: E402
                                    load_torch_state_dict, parameter_map, to_torch,
                                    torch_state_dict)
from numtransformer.layers import Dropout, Embedding, LayerNorm, Linear, TiedLinear  # noqa: E402
from numtransformer.models import (TransformerDecoder, TransformerDecoderLayer,  # noqa: E402
                                   TransformerEncoder, TransformerEncoderLayer)
from numtransformer.recurrent import LSTMN, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True",
                                        "ignore:dropout option adds dropout")

F64 = torch.float64


def _enc_layer(**kw):
    base = dict(d_model=6, nhead=2, dim_feedforward=10, dropout=0.2, batch_first=True,
                dtype=F64)
    return nn.TransformerEncoderLayer(**{**base, **kw})


def _dec_layer(**kw):
    base = dict(d_model=6, nhead=3, dim_feedforward=5, dropout=0.0, batch_first=True,
                dtype=F64)
    return nn.TransformerDecoderLayer(**{**base, **kw})


TORCH_MODULES = {
    "Linear": lambda: nn.Linear(4, 3),
    "Linear-no-bias": lambda: nn.Linear(4, 3, bias=False, dtype=F64),
    "Embedding": lambda: nn.Embedding(7, 3),
    "Embedding-padding": lambda: nn.Embedding(7, 3, padding_idx=2, dtype=F64),
    "LayerNorm": lambda: nn.LayerNorm(5, eps=1e-12),
    "LayerNorm-2d-no-affine": lambda: nn.LayerNorm((2, 3), elementwise_affine=False),
    "MHA": lambda: nn.MultiheadAttention(6, 3, dropout=0.1, batch_first=True),
    "MHA-kdim-vdim": lambda: nn.MultiheadAttention(6, 2, kdim=3, vdim=5, batch_first=True,
                                                   dtype=F64),
    "MHA-no-bias": lambda: nn.MultiheadAttention(4, 2, bias=False, batch_first=True),
    "EncoderLayer-relu": lambda: _enc_layer(),
    "EncoderLayer-gelu-prenorm": lambda: _enc_layer(activation="gelu", norm_first=True,
                                                    layer_norm_eps=1e-6),
    "EncoderLayer-gelu-tanh": lambda: _enc_layer(activation=nn.GELU(approximate="tanh")),
    "DecoderLayer": lambda: _dec_layer(),
    "DecoderLayer-gelu-prenorm": lambda: _dec_layer(activation="gelu", norm_first=True),
    "Encoder": lambda: nn.TransformerEncoder(_enc_layer(), 2, enable_nested_tensor=False),
    "Encoder-norm": lambda: nn.TransformerEncoder(_enc_layer(norm_first=True), 3,
                                                  norm=nn.LayerNorm(6, dtype=F64),
                                                  enable_nested_tensor=False),
    "Decoder": lambda: nn.TransformerDecoder(_dec_layer(), 2),
    "Decoder-norm": lambda: nn.TransformerDecoder(_dec_layer(), 1,
                                                  norm=nn.LayerNorm(6, eps=1e-3, dtype=F64)),
    "Transformer": lambda: nn.Transformer(8, 2, 2, 1, 12, dropout=0.0, batch_first=True),
    "Transformer-gelu-prenorm": lambda: nn.Transformer(6, 3, 1, 2, 7, dropout=0.1,
                                                       activation="gelu", norm_first=True,
                                                       batch_first=True, dtype=F64),
    "Transformer-custom-stacks": lambda: nn.Transformer(
        6, 2, custom_encoder=nn.TransformerEncoder(_enc_layer(), 1, enable_nested_tensor=False),
        custom_decoder=nn.TransformerDecoder(_dec_layer(nhead=2), 2), batch_first=True),
    "RNNCell": lambda: nn.RNNCell(3, 4),
    "LSTMCell": lambda: nn.LSTMCell(3, 4, dtype=F64),
    "GRUCell": lambda: nn.GRUCell(3, 4),
    "RNN": lambda: nn.RNN(3, 4, batch_first=True),
    "LSTM-stacked-bidirectional": lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True,
                                                  dropout=0.3, batch_first=True, dtype=F64),
    "GRU-3-layers": lambda: nn.GRU(2, 3, num_layers=3, batch_first=True),
}


def _state(t):
    return {k: v.detach().clone() for k, v in t.state_dict().items()}


@pytest.mark.parametrize("name", list(TORCH_MODULES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_ours_torch_is_exact(name, training):
    torch.manual_seed(0)
    t = TORCH_MODULES[name]()
    with torch.no_grad():  # move LayerNorm weights off 1/0 so a swap would show
        for p in t.parameters():
            p.add_(0.1 * torch.randn_like(p))
    t.train(training)
    ours = from_torch(t)
    assert ours.training == training
    assert {p.dtype for p in ours.parameters()} <= {
        np.dtype(np.float64) if next(t.parameters(), torch.zeros(1)).dtype == F64
        else np.dtype(np.float32)}
    back = to_torch(ours)
    assert type(back) is type(t)
    assert repr(back) == repr(t)
    assert back.training == training
    a, b = _state(t), _state(back)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k
    # every torch parameter is reached by the map, once
    names = [m.torch for m in parameter_map(ours)]
    assert set(names) == set(dict(t.named_parameters()))


def _ours_modules():
    rng = np.random.default_rng(0)
    f64 = dict(dtype=np.float64, rng=rng)
    return {
        "Linear": Linear(3, 5, rng=rng),
        "Embedding": Embedding(6, 2, padding_idx=0, **f64),
        "LayerNorm": LayerNorm(4, eps=1e-6),
        "MHA": MultiHeadAttention(6, 2, dropout=0.1, rng=rng),
        "MHA-kdim": MultiHeadAttention(4, 4, kdim=2, vdim=3, bias=False, **f64),
        "EncoderLayer": TransformerEncoderLayer(6, 3, 8, dropout=0.0, activation="gelu_tanh",
                                                **f64),
        "DecoderLayer": TransformerDecoderLayer(4, 2, 6, norm_first=True, rng=rng),
        "Encoder": TransformerEncoder(2, 4, 2, 6, activation="gelu", norm_first=True, rng=rng),
        "Decoder": TransformerDecoder(2, 4, 1, 3, final_norm=False, **f64),
        "Stack": TransformerStack(4, 2, 1, 2, 6, dropout=0.0, rng=rng),
        "Stack-no-final-norm": TransformerStack(4, 2, 2, 1, 6, final_norm=False, **f64),
        "RNNCell": RNNCell(2, 3, rng=rng),
        "LSTMCell": LSTMCell(2, 3, **f64),
        "GRUCell": GRUCell(2, 3, rng=rng),
        "RNN-gru-bidirectional": RNN("gru", 2, 3, num_layers=2, bidirectional=True, rng=rng),
        "RNN-lstm": RNN("lstm", 2, 3, dropout=0.25, num_layers=2, **f64),
    }


@pytest.mark.parametrize("name", list(_ours_modules()))
def test_ours_torch_ours_is_exact(name):
    ours = _ours_modules()[name]
    for p in ours.parameters():
        p.data = p.data + 0.1
    ours.eval()
    back = from_torch(to_torch(ours))
    assert type(back) is type(ours)
    assert repr(back) == repr(ours)
    assert not back.training
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_from_torch_dtype_override_and_parameterless_modules():
    t = nn.Linear(3, 2)
    assert from_torch(t, dtype=np.float64).W.dtype == np.float64
    ln = from_torch(nn.LayerNorm(4, elementwise_affine=False), dtype=np.float64)
    assert ln.dtype == np.float64 and ln.gamma is None
    with pytest.raises(TypeError, match="float16"):
        from_torch(t, dtype=np.float16)


def test_torch_state_dict_round_trip_and_grads():
    rng = np.random.default_rng(1)
    mha = MultiHeadAttention(4, 2, kdim=3, vdim=5, dtype=np.float64, rng=rng)
    for p in mha.parameters():
        p.grad[...] = rng.standard_normal(p.shape)
    sd = torch_state_dict(mha)
    assert sd["in_proj_bias"].shape == (12,)
    assert np.array_equal(sd["in_proj_bias"][4:8], mha.k_proj.b.data)
    assert np.array_equal(sd["q_proj_weight"], mha.q_proj.W.data.T)
    g = torch_state_dict(mha, grad=True)
    assert np.array_equal(g["in_proj_bias"][8:], mha.v_proj.b.grad)
    other = MultiHeadAttention(4, 2, kdim=3, vdim=5, dtype=np.float64, rng=2)
    load_torch_state_dict(other, sd)
    for (n, p), (_, q) in zip(mha.named_parameters(), other.named_parameters()):
        assert np.array_equal(p.data, q.data), n


# -- errors ------------------------------------------------------------------------------------
class _MyLinear(nn.Linear):
    pass


class _OddLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


def test_a_subclass_that_keeps_forward_is_accepted():
    assert isinstance(from_torch(_MyLinear(2, 3)), Linear)


UNSUPPORTED_TORCH = [
    (lambda: nn.Conv1d(2, 3, 1), TypeError, r"Conv1d.*supported: nn\.Transformer"),
    (lambda: nn.Sequential(nn.Linear(2, 2)), TypeError, "Sequential"),
    (lambda: _OddLinear(2, 3), TypeError, "overrides forward"),
    (lambda: nn.Linear(2, 3).half(), TypeError, "float16"),
    (lambda: nn.MultiheadAttention(4, 2, add_bias_kv=True), ValueError, "add_bias_kv"),
    (lambda: nn.MultiheadAttention(4, 2, add_zero_attn=True), ValueError, "add_zero_attn"),
    (lambda: nn.RNN(2, 3, nonlinearity="relu"), ValueError, "relu"),
    (lambda: nn.RNNCell(2, 3, nonlinearity="relu"), ValueError, "relu"),
    (lambda: nn.LSTM(2, 3, proj_size=2), ValueError, "proj_size"),
    (lambda: nn.GRU(2, 3, bias=False), ValueError, "bias=False"),
    (lambda: nn.LSTMCell(2, 3, bias=False), ValueError, "bias=False"),
    (lambda: nn.LayerNorm(4, bias=False), ValueError, "bias=False"),
    (lambda: nn.Embedding(5, 2, max_norm=1.0), ValueError, "max_norm"),
    (lambda: nn.Embedding(5, 2, scale_grad_by_freq=True), ValueError, "scale_grad_by_freq"),
    (lambda: nn.TransformerEncoderLayer(4, 2, 8, activation=torch.tanh), ValueError,
     "activation tanh"),
    (lambda: nn.TransformerEncoderLayer(4, 2, 8, bias=False), ValueError, "bias=False"),
    (lambda: nn.TransformerDecoderLayer(4, 2, 8, activation=nn.SiLU()), ValueError,
     "activation SiLU"),
    (lambda: nn.Transformer(4, 2, 1, 1, 8, custom_encoder=nn.Linear(4, 4)), TypeError,
     "encoder is a Linear"),
    (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 8), 1,
                                   norm=nn.RMSNorm(4), enable_nested_tensor=False),
     TypeError, "RMSNorm"),
]


@pytest.mark.parametrize("make, exc, message", UNSUPPORTED_TORCH)
def test_unsupported_torch_modules_are_named(make, exc, message):
    with pytest.raises(exc, match=message):
        from_torch(make())


def test_from_torch_rejects_non_modules():
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        from_torch(np.zeros(3))


@pytest.mark.parametrize("module", [Dropout(0.1), TiedLinear(Embedding(4, 2).W),
                                    LSTMN(2, 3)], ids=lambda m: type(m).__name__)
def test_to_torch_names_modules_without_a_counterpart(module):
    with pytest.raises(TypeError, match=f"{type(module).__name__} has no PyTorch counterpart"):
        to_torch(module)
    with pytest.raises(TypeError, match="no PyTorch counterpart"):
        parameter_map(module)


def test_to_torch_rejects_non_modules():
    with pytest.raises(TypeError, match="numtransformer Module"):
        to_torch(nn.Linear(2, 2))


def test_load_torch_state_dict_names_every_problem():
    lin = Linear(3, 2)
    with pytest.raises(ValueError, match="missing torch parameters: bias"):
        load_torch_state_dict(lin, {"weight": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="no counterpart: extra"):
        load_torch_state_dict(lin, {"weight": np.zeros((2, 3)), "bias": np.zeros(2),
                                    "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"weight gives W shape \(2, 2\), expected \(3, 2\)"):
        load_torch_state_dict(lin, {"weight": np.zeros((2, 2)), "bias": np.zeros(2)})
    before = lin.W.data.copy()
    with pytest.raises(ValueError):  # a failed load changes nothing
        load_torch_state_dict(lin, {"weight": np.ones((2, 3)), "bias": np.zeros(5)})
    assert np.array_equal(lin.W.data, before)
