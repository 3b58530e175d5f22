"""PyTorch parity for the recurrent cells and the unrolled RNN layer.

Our cells store W_ih (D, G*H), W_hh (H, G*H); torch's weight_ih/weight_hh are
their transposes, biases are the same vectors, gate order the same (LSTM
i, f, g, o; GRU r, z, n).  In an RNN, ``cells.{l * dirs + d}`` holds torch's
``*_l{l}`` (d = 0) or ``*_l{l}_reverse`` (d = 1) weights.

Each test loads the same weights into both, runs the same float64 input (and
initial states), pushes the same random upstream gradients (never all ones)
into every output (output, h_n, c_n), and compares outputs, final states, the
gradients of the input and initial states and of every parameter:

    err = max |ours - torch| / max(max |ours|, max |torch|)   <= 1e-10

Padded batches are compared with torch's packed sequences
(``pack_padded_sequence(..., enforce_sorted=False)``), whose padded outputs are
zero and whose final states come from each sequence's last real step.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from numtransformer.recurrent import RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402
from tests.helpers import seeds  # noqa: E402

TOL = 1e-10

TORCH_CELLS = {RNNCell: "RNNCell", LSTMCell: "LSTMCell", GRUCell: "GRUCell"}
TORCH_LAYERS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def rel_err(ours, theirs) -> float:
    a, b = _np(ours), _np(theirs)
    assert a.shape == b.shape, f"shape {a.shape} vs {b.shape}"
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
    return float(np.abs(a - b).max(initial=0.0)) / scale if scale > 0 else 0.0


def assert_close(ours, theirs, what):
    err = rel_err(ours, theirs)
    assert err <= TOL, f"{what}: relative error {err:.2e} > {TOL:.0e}"


def _t(a, grad=True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def load_cell(ours, theirs, suffix=""):
    """Copy torch's weights (``weight_ih{suffix}`` ...) into one of our cells."""
    ours.W_ih.data = _np(getattr(theirs, "weight_ih" + suffix)).T.copy()
    ours.W_hh.data = _np(getattr(theirs, "weight_hh" + suffix)).T.copy()
    ours.b_ih.data = _np(getattr(theirs, "bias_ih" + suffix)).copy()
    ours.b_hh.data = _np(getattr(theirs, "bias_hh" + suffix)).copy()


def compare_cell_grads(ours, theirs, suffix, where):
    assert_close(ours.W_ih.grad, getattr(theirs, "weight_ih" + suffix).grad.T, f"{where} dW_ih")
    assert_close(ours.W_hh.grad, getattr(theirs, "weight_hh" + suffix).grad.T, f"{where} dW_hh")
    assert_close(ours.b_ih.grad, getattr(theirs, "bias_ih" + suffix).grad, f"{where} db_ih")
    assert_close(ours.b_hh.grad, getattr(theirs, "bias_hh" + suffix).grad, f"{where} db_hh")


# -- cells -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell, GRUCell], ids=lambda c: c.__name__)
@given(B=st.integers(1, 3), D=st.integers(1, 4), H=st.integers(1, 4), seed=seeds)
def test_cell_matches_torch(cls, B, D, H, seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, TORCH_CELLS[cls])(D, H).double()
    ours = cls(D, H, dtype=np.float64, rng=rng)
    load_cell(ours, theirs)
    lstm = cls is LSTMCell
    x = rng.standard_normal((B, D))
    states = [rng.standard_normal((B, H)) for _ in range(2 if lstm else 1)]
    G = [rng.standard_normal((B, H)) for _ in states]

    out, cache = ours.forward(x, *states)
    outs = out if lstm else (out,)
    grads = ours.backward(tuple(G) if lstm else G[0], cache)

    xt, st_ = _t(x), [_t(s) for s in states]
    tout = theirs(xt, tuple(st_) if lstm else st_[0])
    touts = tout if lstm else (tout,)
    torch.autograd.backward(list(touts), [torch.tensor(g) for g in G])

    for name, a, b in zip(("h", "c"), outs, touts):
        assert_close(a, b, f"{cls.__name__} {name}")
    assert_close(grads[0], xt.grad, f"{cls.__name__} dx")
    for name, a, b in zip(("dh", "dc"), grads[1:], st_):
        assert_close(a, b.grad, f"{cls.__name__} {name}")
    compare_cell_grads(ours, theirs, "", cls.__name__)


# -- layers ------------------------------------------------------------------------------


def _run_pair(cell_type, num_layers, bidirectional, B, T, D, H, seed, lengths=None):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dirs = 2 if bidirectional else 1
    S = num_layers * dirs
    lstm = cell_type == "lstm"
    theirs = getattr(torch.nn, TORCH_LAYERS[cell_type])(
        D, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True).double()
    ours = RNN(cell_type, D, H, num_layers=num_layers, bidirectional=bidirectional,
               dtype=np.float64, rng=rng)
    for layer in range(num_layers):
        for d in range(dirs):
            load_cell(ours.cells[layer * dirs + d], theirs,
                      f"_l{layer}" + ("_reverse" if d else ""))

    x = rng.standard_normal((B, T, D))
    states = [rng.standard_normal((S, B, H)) for _ in range(2 if lstm else 1)]
    G_out = rng.standard_normal((B, T, dirs * H))
    G_states = [rng.standard_normal((S, B, H)) for _ in states]

    kwargs = {} if lengths is None else {"lengths": lengths}
    out, cache = ours.forward(x, *states, **kwargs)
    grads = ours.backward((G_out, *G_states), cache)

    xt, st_ = _t(x), [_t(s) for s in states]
    hx = tuple(st_) if lstm else st_[0]
    if lengths is None:
        y, hn = theirs(xt, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
        y_packed, hn = theirs(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, batch_first=True, total_length=T)
    touts = (y,) + (tuple(hn) if lstm else (hn,))
    torch.autograd.backward(list(touts),
                            [torch.tensor(G_out)] + [torch.tensor(g) for g in G_states])

    where = f"{TORCH_LAYERS[cell_type]}(layers={num_layers}, bidirectional={bidirectional})"
    for name, a, b in zip(("output", "h_n", "c_n"), out, touts):
        assert_close(a, b, f"{where} {name}")
    assert_close(grads[0], xt.grad, f"{where} dx")
    for name, a, b in zip(("dh0", "dc0"), grads[1:], st_):
        assert_close(a, b.grad, f"{where} {name}")
    for layer in range(num_layers):
        for d in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            compare_cell_grads(ours.cells[layer * dirs + d], theirs, suffix, where + suffix)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
def test_layer_matches_torch(cell_type, num_layers, bidirectional):
    _run_pair(cell_type, num_layers, bidirectional, B=3, T=5, D=4, H=3, seed=7)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 3), H=st.integers(1, 3),
       bidirectional=st.booleans(), data=st.data(), seed=seeds)
def test_padded_layer_matches_packed_torch(cell_type, B, T, D, H, bidirectional, data, seed):
    lengths = np.array(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    _run_pair(cell_type, 2, bidirectional, B, T, D, H, seed, lengths=lengths)


# -- LSTMN ---------------------------------------------------------------------------------------
# torch has no LSTMN; the equations of its docstring, written with torch ops,
# give an autograd oracle for our hand-written backward through the tape.


def torch_lstmn(p, x, window):
    B, T, _ = x.shape
    H = p["W_hh"].shape[0]
    hs, cs, rows = [], [], []
    h_tilde = torch.zeros(B, H, dtype=x.dtype)
    c_tilde = torch.zeros(B, H, dtype=x.dtype)
    for t in range(T):
        s_row = torch.zeros(B, T, dtype=x.dtype)
        if t > 0:
            lo = 0 if window is None else max(0, t - window)
            q = x[:, t] @ p["W_x"] + h_tilde @ p["W_ht"]
            keys = torch.stack(hs[lo:t], dim=1) @ p["W_h"]
            s = torch.softmax(torch.tanh(keys + q[:, None]) @ p["v"], dim=-1)
            h_tilde = torch.einsum("bi,bih->bh", s, torch.stack(hs[lo:t], dim=1))
            c_tilde = torch.einsum("bi,bih->bh", s, torch.stack(cs[lo:t], dim=1))
            s_row = torch.cat([torch.zeros(B, lo, dtype=x.dtype), s,
                               torch.zeros(B, T - t, dtype=x.dtype)], dim=1)
        i, f, g, o = (x[:, t] @ p["W_ih"] + p["b"] + h_tilde @ p["W_hh"]).chunk(4, dim=1)
        c = torch.sigmoid(f) * c_tilde + torch.sigmoid(i) * torch.tanh(g)
        hs.append(torch.sigmoid(o) * torch.tanh(c))
        cs.append(c)
        rows.append(s_row)
    return torch.stack(hs, 1), torch.stack(cs, 1), torch.stack(rows, 1)


@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 3), H=st.integers(1, 3),
       window=st.none() | st.integers(1, 3), seed=seeds)
def test_lstmn_matches_torch_autograd(B, T, D, H, window, seed):
    from numtransformer.recurrent import LSTMN

    rng = np.random.default_rng(seed)
    ours = LSTMN(D, H, attention_size=H + 1, window=window, dtype=np.float64, rng=rng)
    for p in (ours.W_h, ours.W_x, ours.W_ht, ours.v):
        p.data = 3 * p.data
    x = rng.standard_normal((B, T, D))
    G = [rng.standard_normal((B, T, H)), rng.standard_normal((B, T, H)),
         rng.standard_normal((B, T, T))]
    out, cache = ours.forward(x)
    dx = ours.backward(tuple(G), cache)

    params = {name: _t(p.data) for name, p in ours.named_parameters()}
    xt = _t(x)
    touts = torch_lstmn(params, xt, window)
    # at T = 1 the attention weights are a constant (no read happens)
    pairs = [(o, torch.tensor(g)) for o, g in zip(touts, G) if o.requires_grad]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    for name, a, b in zip(("h", "c", "s"), out, touts):
        assert_close(a, b, f"LSTMN {name}")
    assert_close(dx, xt.grad, "LSTMN dx")
    for name, p in ours.named_parameters():
        g = params[name].grad  # None: unused (the attention at T = 1)
        assert_close(p.grad, np.zeros_like(p.grad) if g is None else g, f"LSTMN d{name}")
