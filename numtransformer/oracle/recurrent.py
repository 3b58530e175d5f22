"""Oracle: LSTM and GRU, one step or a whole sequence.

The math is ``numtransformer.functional``'s ``lstm_step_*`` and ``gru_step_*``
(PyTorch's ``LSTMCell`` / ``GRUCell``: the GRU applies its reset gate after
the hidden product, r * (h W_hn + b_hn)).  Layouts:

* ``layout="numtransformer"``: W_ih (D, G H), W_hh (H, G H), the math reads x W;
* ``layout="torch"``: as ``torch.nn.LSTM`` / ``GRU`` store them,
  ``weight_ih_l0`` (G H, D), ``weight_hh_l0`` (G H, H).
* ``gate_order``: the order of the G gate blocks in the weights and biases:
  PyTorch's is the default ("ifgo" for the LSTM, "rzn" for the GRU); Keras
  and TensorFlow's ``LSTMCell`` use "ifgo" too under the names i, f, c, o;
  give another permutation (say "ifog") for a kernel that stores them so.

Gradients come back in the layout and gate order given.  Biases are
optional (None: no bias, no gradient).  Sequences are batch first:
x (B, T, D) -> out (B, T, H), the final states ``h_n`` (and ``c_n``), (B, H).
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ._core import OracleResult, check_gate_order, douts, f64, permute_blocks

__all__ = ["lstm_step", "gru_step", "lstm", "gru"]


def _weights(who, layout, gate_order, canonical, W_ih, W_hh, b_ih, b_hh, G):
    if layout not in ("numtransformer", "torch"):
        raise ValueError(f"{who}: layout must be 'numtransformer' or 'torch', got {layout!r}")
    check_gate_order(who, gate_order, canonical)
    W_ih, W_hh = f64("W_ih", who, W_ih), f64("W_hh", who, W_hh)
    if layout == "torch":
        W_ih, W_hh = W_ih.T, W_hh.T
    b_ih, b_hh = f64("b_ih", who, b_ih, True), f64("b_hh", who, b_hh, True)
    H = W_hh.shape[0]
    if W_hh.shape != (H, G * H) or W_ih.shape[1] != G * H:
        raise ValueError(f"{who}: W_hh must be ({G}H, H) (torch) or (H, {G}H), and W_ih "
                         f"must have {G}H gate columns; got W_ih {W_ih.shape}, W_hh "
                         f"{W_hh.shape} as {layout}")
    p = {"W_ih": W_ih, "W_hh": W_hh, "b_ih": b_ih, "b_hh": b_hh}
    p = {n: None if a is None else np.ascontiguousarray(
        permute_blocks(a, gate_order, canonical, axis=-1)) for n, a in p.items()}
    p["b_ih_used"] = np.zeros(G * H) if p["b_ih"] is None else p["b_ih"]
    p["b_hh_used"] = np.zeros(G * H) if p["b_hh"] is None else p["b_hh"]
    return p


def _param_grads(grads, p, layout, gate_order, canonical):
    out = {}
    for n in ("W_ih", "W_hh", "b_ih", "b_hh"):
        if p[n] is None:
            continue
        g = permute_blocks(grads[n], canonical, gate_order, axis=-1)
        out[n] = np.ascontiguousarray(g.T if layout == "torch" and n.startswith("W") else g)
    return out


def _run(kind, who, x, states, W_ih, W_hh, b_ih, b_hh, dout, layout, gate_order, sequence):
    canonical, G = ("ifgo", 4) if kind == "lstm" else ("rzn", 3)
    p = _weights(who, layout, gate_order, canonical, W_ih, W_hh, b_ih, b_hh, G)
    x = f64("x", who, x)
    xs = x if sequence else x[:, None, :]
    if xs.ndim != 3 or xs.shape[-1] != p["W_ih"].shape[0]:
        raise ValueError(f"{who}: x must be ({'B, T, ' if sequence else 'B, '}"
                         f"{p['W_ih'].shape[0]}), got {x.shape}")
    B, T, _ = xs.shape
    H = p["W_hh"].shape[0]
    names = ("h", "c") if kind == "lstm" else ("h",)
    state = []
    for n, s in zip(names, states):
        s = np.zeros((B, H)) if s is None else f64(n + ("0" if sequence else "_prev"), who, s)
        if s.shape != (B, H):
            raise ValueError(f"{who}: the state {n} must be (B, H) = {(B, H)}, got {s.shape}")
        state.append(s)
    given_states = [s is not None for s in states]
    xw, lin = F.linear_forward(xs, p["W_ih"], p["b_ih_used"])  # all steps, one GEMM
    caches, hs = [], []
    for t in range(T):
        if kind == "lstm":
            new, cache = F.lstm_step_forward(xw[:, t], state[0], state[1], p["W_hh"],
                                             p["b_hh_used"])
        else:
            new, cache = F.gru_step_forward(xw[:, t], state[0], p["W_hh"], p["b_hh_used"])
        state = list(new)
        caches.append(cache)
        hs.append(state[0])
    if sequence:
        outputs = {"out": np.stack(hs, axis=1), "h_n": state[0]}
        if kind == "lstm":
            outputs["c_n"] = state[1]
    else:
        outputs = dict(zip(names, state))
    g = douts(who, dout, outputs)
    if g is None:
        return OracleResult(outputs, {})
    if sequence:
        dstate = [g["h_n"]] + ([g["c_n"]] if kind == "lstm" else [])
        dh_out = g["out"]
    else:
        dstate = [g[n] for n in names]
        dh_out = np.zeros((B, 1, H))
    da_x = [None] * T
    da_h = [None] * T
    for t in reversed(range(T)):
        dstate[0] = dstate[0] + dh_out[:, t]
        if kind == "lstm":
            da_x[t], da_h[t], prev = F.lstm_step_backward(dstate[0], dstate[1], caches[t],
                                                          p["W_hh"])
        else:
            da_x[t], da_h[t], prev = F.gru_step_backward(dstate[0], caches[t], p["W_hh"])
        dstate = list(prev)
    DA_x = np.stack(da_x, axis=1)
    DA_h = np.stack(da_h, axis=1).reshape(B * T, G * H)
    H_prev = np.stack([c.h_prev for c in caches], axis=1).reshape(B * T, H)
    dxs, dW_ih, db_ih = F.linear_backward(DA_x, lin, p["W_ih"], has_bias=True)
    dW_hh, db_hh = F.projection_grads(H_prev, DA_h, has_bias=True)
    grads = {"x": dxs if sequence else dxs[:, 0]}
    state_names = [n + ("0" if sequence else "_prev") for n in names]
    for n, given, d in zip(state_names, given_states, dstate):
        if given:
            grads[n] = d
    grads.update(_param_grads({"W_ih": dW_ih, "W_hh": dW_hh, "b_ih": db_ih, "b_hh": db_hh},
                              p, layout, gate_order, canonical))
    return OracleResult(outputs, {n: np.ascontiguousarray(a) for n, a in grads.items()})


def lstm_step(x, h_prev, c_prev, W_ih, W_hh, b_ih=None, b_hh=None, dout=None, *,
              layout: str = "numtransformer", gate_order: str = "ifgo") -> OracleResult:
    """One LSTM step (``torch.nn.LSTMCell``): gates [i, f, g, o] = x W_ih + b_ih +
    h_prev W_hh + b_hh; c = f c_prev + i g; h = o tanh(c).

    Shapes: x (B, D), h_prev and c_prev (B, H) (None: zeros, no gradient).
    Outputs ``"h"``, ``"c"`` (dout a dict or a tuple (dh, dc)); grads ``"x"``,
    ``"h_prev"``, ``"c_prev"``, ``"W_ih"``, ``"W_hh"`` (and the biases given).
    """
    return _run("lstm", "oracle.lstm_step", x, (h_prev, c_prev), W_ih, W_hh, b_ih, b_hh, dout,
                layout, gate_order, sequence=False)


def gru_step(x, h_prev, W_ih, W_hh, b_ih=None, b_hh=None, dout=None, *,
             layout: str = "numtransformer", gate_order: str = "rzn") -> OracleResult:
    """One GRU step (``torch.nn.GRUCell``): r = sigmoid(x_r + h_r), z = sigmoid(x_z +
    h_z), n = tanh(x_n + r * (h_prev W_hn + b_hn)), h = (1 - z) n + z h_prev.

    Shapes: x (B, D), h_prev (B, H) (None: zeros, no gradient).  Output ``"h"``;
    grads ``"x"``, ``"h_prev"``, ``"W_ih"``, ``"W_hh"`` (and the biases given).
    """
    return _run("gru", "oracle.gru_step", x, (h_prev,), W_ih, W_hh, b_ih, b_hh, dout, layout,
                gate_order, sequence=False)


def lstm(x, h0=None, c0=None, W_ih=None, W_hh=None, b_ih=None, b_hh=None, dout=None, *,
         layout: str = "numtransformer", gate_order: str = "ifgo") -> OracleResult:
    """A one-layer, one-direction LSTM over a batch-first sequence (``torch.nn.LSTM(
    batch_first=True)``).  Shapes: x (B, T, D); h0, c0 (B, H) or None (zeros).
    Outputs ``"out"`` (B, T, H), ``"h_n"``, ``"c_n"`` (B, H); grads ``"x"``,
    ``"h0"``, ``"c0"`` (when given), the weights and the biases given.
    """
    return _run("lstm", "oracle.lstm", x, (h0, c0), W_ih, W_hh, b_ih, b_hh, dout, layout,
                gate_order, sequence=True)


def gru(x, h0=None, W_ih=None, W_hh=None, b_ih=None, b_hh=None, dout=None, *,
        layout: str = "numtransformer", gate_order: str = "rzn") -> OracleResult:
    """A one-layer, one-direction GRU over a batch-first sequence (``torch.nn.GRU(
    batch_first=True)``).  Shapes: x (B, T, D); h0 (B, H) or None (zeros).
    Outputs ``"out"`` (B, T, H), ``"h_n"`` (B, H); grads ``"x"``, ``"h0"`` (when
    given), the weights and the biases given.
    """
    return _run("gru", "oracle.gru", x, (h0,), W_ih, W_hh, b_ih, b_hh, dout, layout,
                gate_order, sequence=True)
