"""The unrolled recurrent layer: any cell over (B, T, D), stacked, bidirectional, padded."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import fast
from .._validate import as_rng, check_float, check_positive_int, check_probability
from ..kernels import select
from ..layers.dropout import Dropout
from ..module import Module
from .cells import (GRUCell, LSTMCell, RNNCell, check_state, input_projection, loop_options,
                    transposed_copy)

__all__ = ["RNN", "StackStep"]

_CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


class DirectionCache(NamedTuple):
    x: np.ndarray  # (B, T, D_l) the layer input in this direction's time order
    xw: tuple  # the LinearCache of xw = x W_ih + b_ih (all T steps)
    steps: list  # T step caches of the cell (h_prev, gates, ...)
    rev: np.ndarray | None  # (B, T) the per-sequence reversal index (reverse direction only)


class StackStep(NamedTuple):
    """The cache of ``RNN.step``: one time step through every layer."""
    inputs: list  # per layer l: (B, D_l) the layer's input x^(l)_t (after dropout for l >= 1)
    xw: list  # per layer: the LinearCache of x^(l)_t W_ih + b_ih
    drops: list  # per layer l >= 1: the DropoutCache of x^(l)_t
    steps: list  # per layer: the cell's step cache (h_prev, gates, ...)


class StepGrads(NamedTuple):
    """What ``RNN.step_backward(..., grads=...)`` collects for ``add_step_grads``."""
    layers: list  # per layer: [(x^(l)_t, da_x, h^(l)_{t-1}, da_h) for each step]


class LayerCache(NamedTuple):
    directions: tuple  # one DirectionCache per direction
    dropout: tuple | None  # the DropoutCache of this layer's output (all layers but the last)


class RNNCache(NamedTuple):
    layers: list  # one LayerCache per layer
    pad: np.ndarray | None  # (B, T) bool, True = padding step (None: no lengths given)
    rev: np.ndarray  # (B, T) int, rev[b, t] = lengths[b] - 1 - t on real steps, t on padding
    given: tuple  # (h0 given, c0 given): which initial states get a gradient
    out_shape: tuple  # (B, T, dirs * H)


def reverse_index(lengths: np.ndarray, T: int) -> np.ndarray:
    """(B, T) index that reverses each sequence within its own length, padding in place.

    ``take_along_axis(x, rev[..., None], axis=1)`` puts step lengths[b] - 1 - t
    at t for t < lengths[b].  The map is its own inverse (reversing twice is the
    identity), so the same gather undoes it and also carries gradients back.
    """
    t = np.arange(T)[None, :]
    L = lengths[:, None]
    return np.where(t < L, L - 1 - t, t)


def _gather_time(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(x, index[:, :, None], axis=1)


class RNN(Module):
    """A recurrent cell unrolled over time, with backpropagation through time;
    stacked layers, an optional backward direction, padding by lengths.
    Matches ``torch.nn.RNN/LSTM/GRU(batch_first=True)`` (tanh RNN).

    ``RNN(cell_type, input_size, hidden_size, num_layers=1, bidirectional=False,
    dropout=0.0, *, dtype=np.float32, rng=None)``, cell_type "rnn", "lstm" or "gru".

    Shapes: x (B, T, D); h0, c0, h_n, c_n (S, B, H) with S = num_layers * dirs,
    row k = l * dirs + d for layer l and direction d (0 forward, 1 backward),
    as PyTorch; output (B, T, dirs * H) = [forward; backward] on the last axis;
    lengths (B,) ints in [0, T].

    Forward, per layer l and direction d (cell k = l * dirs + d), with
    m_t = [t < lengths] (all ones without lengths):
        X^(0)   = x
        xw      = X^(l) W_ih + b_ih                  all T steps in one GEMM
        for t = 0 .. T-1:                            the only Python loop
            h'_t, c'_t = cell.step(xw_t, h_{t-1}, c_{t-1})
            h_t   = m_t ? h'_t : h_{t-1}             a padded step keeps the state
            c_t   = m_t ? c'_t : c_{t-1}
            y_t   = m_t ? h'_t : 0                   and outputs zero
        h_n[k], c_n[k] = h_{T-1}, c_{T-1}            the state after the last real step
        X^(l+1) = dropout([y^(fwd); y^(bwd)])        no dropout after the last layer
        output  = [y^(fwd); y^(bwd)] of the last layer
    The backward direction runs the same loop on each sequence reversed within
    its own length (rev), so it starts at that sequence's last real step, and
    its outputs are put back in the original order.

    Backward (BPTT), per layer from the last, per direction:
        dy        = d_output (last layer) or dropout.backward(dX^(l+1))
        dh, dc    = d_h_n[k], d_c_n[k]               (zeros when None)
        for t = T-1 .. 0:
            dh'_t, dc'_t = m_t ? (dh + dy_t, dc) : 0       a padded step gets no gradient
            da_x_t, da_h_t, (dh_p, dc_p) = cell.step_backward(dh'_t, dc'_t)
            dh, dc = m_t ? (dh_p, dc_p) : (dh, dc)         ... and passes the state's through
        dW_ih    += X^(l)^T da_x     db_ih += sum da_x     one GEMM over all B*T rows
        dW_hh    += H_prev^T da_h    db_hh += sum da_h     H_prev[:, t] = h_{t-1}
        dX^(l)   += da_x W_ih^T                            summed over directions
        dh0[k], dc0[k] = dh, dc
    dh and dc are carried from step t to t-1; dropping either is the classic bug.

    Call conventions:
        out, cache = rnn.forward(x, h0=None, c0=None, *, lengths=None)
        out = (output, h_n)          for "rnn" and "gru"
              (output, h_n, c_n)     for "lstm"
        grads = rnn.backward(dout, cache)
        dout  = (d_output, d_h_n[, d_c_n]), each may be None (= zero); a bare
                array is d_output alone
        grads = dx, or (dx, dh0[, dc0]) for the initial states that were passed
    Missing initial states are zeros and get no gradient; c0 is for "lstm" only.

    Parameters: ``cells.{k}`` is the cell of layer l, direction d, k = l * dirs + d.
    PyTorch mapping: cells.{k}.W_ih = weight_ih_l{l}[_reverse].T,
    cells.{k}.W_hh = weight_hh_l{l}[_reverse].T, cells.{k}.b_ih = bias_ih_l{l}[_reverse],
    cells.{k}.b_hh = bias_hh_l{l}[_reverse] (the suffix _reverse for d = 1).

    Stepping by hand (a decoder's loop; unidirectional RNNs only):
        h_top, states, cache = rnn.step(x_t, states)       states: per layer (h,) or (h, c)
        dx_t, dstates_prev = rnn.step_backward(dh_top, dstates, cache)
    runs one time step through every layer (dropout between layers as in
    forward) and adds the parameter gradients of that step; T steps equal
    ``forward`` over the T steps, outputs and gradients.

    The code: the step math is the kernels of ``numtransformer.functional.recurrent``
    (``rnn_step_*``, ``lstm_step_*``, ``gru_step_*``: the equations and their
    derivations), chosen by ``select(dtype)``; the input projection is one
    ``linear_forward`` for all T steps (``cells.input_projection``), its
    backward one ``linear_backward``,
    and dW_hh, db_hh one ``projection_grads`` over all B*T rows.

    Sources: Elman (1990); LSTM: Hochreiter & Schmidhuber (1997); GRU: PyTorch's
    variant of Cho et al. (2014) (the reset gate after the matrix product, see
    ``GRUCell``); BPTT: Werbos (1990); bidirectional: Schuster & Paliwal (1997).
    """

    def __init__(self, cell_type: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, *, dtype=np.float32, rng=None):
        if cell_type not in _CELLS:
            raise ValueError(f"RNN: cell_type must be one of {sorted(_CELLS)}, got {cell_type!r}")
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"RNN: bidirectional must be a bool, "
                            f"got {type(bidirectional).__name__}")
        self.cell_type = cell_type
        self.input_size = check_positive_int(self, "input_size", input_size)
        self.hidden_size = check_positive_int(self, "hidden_size", hidden_size)
        self.num_layers = check_positive_int(self, "num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        check_probability(self, "dropout", dropout)
        rng = as_rng(rng)
        Cell = _CELLS[cell_type]
        dirs = self.num_directions
        self.cells = [Cell(input_size if layer == 0 else hidden_size * dirs, hidden_size,
                           dtype=dtype, rng=rng)
                      for layer in range(num_layers) for _ in range(dirs)]
        self.dropout = Dropout(dropout, rng=rng.spawn(1)[0])

    @property
    def _n_states(self) -> int:
        return 2 if self.cell_type == "lstm" else 1

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x, h0=None, c0=None, *, lengths=None):
        dtype = self.cells[0].W_ih.dtype
        H, dirs = self.hidden_size, self.num_directions
        x = check_float(self, "x", x, dtype=dtype, ndim=3, last_dim=self.input_size,
                        last_dim_name="input_size")
        B, T, _ = x.shape
        if T == 0:
            raise ValueError(f"RNN: x has no time steps (shape {x.shape})")
        S = self.num_layers * dirs
        if c0 is not None and self.cell_type != "lstm":
            raise ValueError("RNN: c0 is only for cell_type='lstm'")
        given = (h0 is not None, c0 is not None)
        h0 = (np.zeros((S, B, H), dtype) if h0 is None
              else check_state(self, "h0", h0, (S, B, H), dtype))
        c0 = (np.zeros((S, B, H), dtype) if c0 is None
              else check_state(self, "c0", c0, (S, B, H), dtype))
        if lengths is None:
            pad = None
            rev = reverse_index(np.full(B, T), T)
        else:
            lengths = _check_lengths(lengths, B, T)
            pad = np.arange(T)[None, :] >= lengths[:, None]
            rev = reverse_index(lengths, T)
            if not pad.any():
                pad = None  # every sequence is full length: skip the masking

        layer_input = x
        layers, h_n, c_n = [], [], []
        for layer in range(self.num_layers):
            ys, directions = [], []
            for d in range(dirs):
                k = layer * dirs + d
                state0 = (h0[k], c0[k])[:self._n_states]
                y, state, dcache = self._run(self.cells[k], layer_input, state0, pad,
                                             rev if d == 1 else None)
                ys.append(y)
                directions.append(dcache)
                h_n.append(state[0])
                if self.cell_type == "lstm":
                    c_n.append(state[1])
            y = ys[0] if dirs == 1 else np.concatenate(ys, axis=-1)
            drop = None
            if layer < self.num_layers - 1:
                y, drop = self.dropout.forward(y)
            layers.append(LayerCache(directions=tuple(directions), dropout=drop))
            layer_input = y

        out = (y, np.stack(h_n))
        if self.cell_type == "lstm":
            out += (np.stack(c_n),)
        return out, RNNCache(layers=layers, pad=pad, rev=rev, given=given,
                             out_shape=(B, T, dirs * H))

    def _run(self, cell, x, state, pad, rev):
        """One direction of one layer: returns y (B, T, H), the final state, a DirectionCache."""
        if rev is not None:
            x = _gather_time(x, rev)
        B, T, D = x.shape
        K = select(x.dtype)
        xw, c_xw = input_projection(x, cell.W_ih.data, cell.b_ih.data)  # all T steps: one GEMM
        y = np.empty((B, T, self.hidden_size), x.dtype)
        step_forward = getattr(K, f"{cell.kernel}_step_forward")
        # the fast kernels on one BLAS thread: h W_hh on W_hh's column blocks, made once
        options = loop_options(K, W_hh_blocks=fast.column_blocks(cell.W_hh.data, B)
                               if K is fast else None)
        steps = []
        for t in range(T):
            new, step = step_forward(xw[:, t], *state, cell.W_hh.data, cell.b_hh.data,
                                     **options)
            if pad is None:
                state = new
                y[:, t] = new[0]
            else:
                p = pad[:, t, None]  # (B, 1): True where step t is padding
                state = tuple(np.where(p, s, s_new) for s, s_new in zip(state, new))
                y[:, t] = np.where(p, 0, new[0])
            steps.append(step)
        if rev is not None:
            y = _gather_time(y, rev)
        return y, state, DirectionCache(x=x, xw=c_xw, steps=steps, rev=rev)

    # -- backward ---------------------------------------------------------------------------
    def backward(self, dout, cache: RNNCache):
        n_out = 1 + self._n_states
        douts = (dout,) if isinstance(dout, np.ndarray) else tuple(dout)
        if len(douts) > n_out:
            raise ValueError(f"RNN.backward: got {len(douts)} upstream gradients, expected at "
                             f"most {n_out} (d_output, d_h_n" + (", d_c_n)" if n_out == 3 else ")"))
        douts = douts + (None,) * (n_out - len(douts))
        d_output, d_states_n = douts[0], douts[1:]
        B, T, _ = cache.out_shape
        H, dirs = self.hidden_size, self.num_directions
        S = self.num_layers * dirs
        dtype = self.cells[0].W_ih.dtype
        if d_output is not None and d_output.shape != cache.out_shape:
            raise ValueError(f"RNN.backward: d_output has shape {d_output.shape}, "
                             f"expected {cache.out_shape}")
        for name, ds in zip(("d_h_n", "d_c_n"), d_states_n):
            if ds is not None and ds.shape != (S, B, H):
                raise ValueError(f"RNN.backward: {name} has shape {ds.shape}, "
                                 f"expected {(S, B, H)}")
        zeros = np.zeros((B, H), dtype)
        d_states0 = [np.empty((S, B, H), dtype) for _ in range(self._n_states)]

        dy = np.zeros(cache.out_shape, dtype) if d_output is None else d_output
        for layer in reversed(range(self.num_layers)):
            lcache = cache.layers[layer]
            if lcache.dropout is not None:
                dy = self.dropout.backward(dy, lcache.dropout)
            dx = None
            for d in range(dirs):
                k = layer * dirs + d
                dstate = tuple(zeros if ds is None else ds[k] for ds in d_states_n)
                dx_d, dstate0 = self._run_backward(self.cells[k], dy[..., d * H:(d + 1) * H],
                                                   dstate, cache.pad, lcache.directions[d])
                for j, ds0 in enumerate(dstate0):
                    d_states0[j][k] = ds0
                dx = dx_d if dx is None else dx + dx_d
            dy = dx

        grads = (dy,) + tuple(ds0 for ds0, g in zip(d_states0, cache.given) if g)
        return grads[0] if len(grads) == 1 else grads

    def _run_backward(self, cell, dy, dstate, pad, cache: DirectionCache):
        """BPTT through one direction of one layer: returns dx (B, T, D_l) and d(initial state)."""
        x, steps, rev = cache.x, cache.steps, cache.rev
        if rev is not None:
            dy = _gather_time(dy, rev)
        B, T, D = x.shape
        GH = cell.W_hh.shape[1]
        K = select(x.dtype)
        step_backward = getattr(K, f"{cell.kernel}_step_backward")
        # the fast kernels' da W_hh^T reads a contiguous W_hh^T made once for all T steps,
        # or on one BLAS thread its column blocks
        W_hh_T = None
        if K is fast:
            W_hh_T = fast.column_blocks(cell.W_hh.data, B, transpose=True)
            if W_hh_T is None:
                W_hh_T = transposed_copy(cell.W_hh.data)
        da_x = np.empty((B, T, GH), x.dtype)
        da_h = None  # stays None while the cell returns da_h = da_x (tanh RNN, LSTM): one copy
        for t in reversed(range(T)):
            dnew = (dstate[0] + dy[:, t],) + dstate[1:]
            if pad is not None:
                p = pad[:, t, None]
                dnew = tuple(np.where(p, 0, dn) for dn in dnew)
            # the fast kernels write da_x of step t straight into da_x[:, t]
            options = loop_options(K, W_hh_T, out=da_x[:, t])
            dax_t, dah_t, dprev = step_backward(*dnew, steps[t], cell.W_hh.data, **options)
            if "out" not in options:
                da_x[:, t] = dax_t
            if pad is not None:
                dprev = tuple(np.where(p, ds, dp) for ds, dp in zip(dstate, dprev))
            dstate = dprev
            if dah_t is not dax_t:  # the GRU: its da_h differs from da_x
                if da_h is None:
                    da_h = np.empty((B, T, GH), x.dtype)
                da_h[:, t] = dah_t
        h_prev = np.stack([s.h_prev for s in steps], axis=1).reshape(B * T, self.hidden_size)
        dx, dW_ih, db_ih = K.linear_backward(da_x, cache.xw, cell.W_ih.data)
        if da_h is None:  # da_h = da_x (tanh RNN, LSTM): db_hh = db_ih, no second sum
            dW_hh, _ = K.projection_grads(h_prev, da_x.reshape(B * T, GH), has_bias=False)
            db_hh = db_ih
        else:
            dW_hh, db_hh = K.projection_grads(h_prev, da_h.reshape(B * T, GH))
        cell.W_ih.grad += dW_ih
        cell.b_ih.grad += db_ih
        cell.W_hh.grad += dW_hh
        cell.b_hh.grad += db_hh
        if rev is not None:
            dx = _gather_time(dx, rev)
        return dx, dstate

    # -- stepping one time step at a time ---------------------------------------------------
    def step(self, x_t, states=None):
        """One time step through every layer of a unidirectional RNN (a decoder's loop).

        x_t (B, D); states: per layer a tuple (h,) -- (h, c) for "lstm" -- of
        (B, H) arrays, or None for zeros (the whole list, or one layer's entry).
        Returns (h_top, new_states, cache): h_top (B, H) the top layer's new h,
        new_states in the format of ``states``, cache a ``StackStep``.
            x^(0) = x_t ;  x^(l) = dropout(h^(l-1)_t) for l >= 1
            h^(l)_t[, c^(l)_t] = cell_l.step(x^(l) W_ih + b_ih, h^(l)_{t-1}[, c^(l)_{t-1}])
        Stepping T times from the same states equals ``forward`` over the T
        steps (without lengths), its outputs and its gradients.  Inputs are not
        re-validated (a per-step call).
        """
        if self.bidirectional:
            raise ValueError("RNN.step: a bidirectional RNN cannot be stepped one time step "
                             "at a time (its backward direction needs the whole sequence)")
        K = select(x_t.dtype)
        B = x_t.shape[0]
        if states is None:
            states = [None] * self.num_layers
        new_states, inputs, xws, drops, steps = [], [], [], [], []
        inp = x_t
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                inp, drop = self.dropout.forward(inp)
                drops.append(drop)
            state = states[layer]
            if state is None:
                state = tuple(np.zeros((B, self.hidden_size), x_t.dtype)
                              for _ in range(self._n_states))
            xw, c_xw = K.linear_forward(inp, cell.W_ih.data, cell.b_ih.data)
            new, step = getattr(K, f"{cell.kernel}_step_forward")(
                xw, *state, cell.W_hh.data, cell.b_hh.data)
            inputs.append(inp)
            xws.append(c_xw)
            new_states.append(new)
            steps.append(step)
            inp = new[0]
        return inp, new_states, StackStep(inputs=inputs, xw=xws, drops=drops, steps=steps)

    def step_backward(self, dh_top, dstates, cache: StackStep, *, grads=None):
        """The backward of ``step``; parameter gradients are added to ``p.grad``
        (or, with ``grads``, collected for ``add_step_grads``).

        dh_top (B, H) or None: the gradient reaching the top layer's new h from
        outside the recurrence (the decoder's output); dstates: per layer
        (dh[, dc]) carried back from step t+1 (the dstates_prev that
        ``step_backward`` of step t+1 returned), or None for zeros (the whole
        list, one layer's entry, or one array).  Returns (dx_t, dstates_prev).
            da_x, da_h, dprev^(l) = cell step backward(dh^(l) + dx^(l+1), dc^(l))
            dx^(l), dW_ih, db_ih  = linear_backward(da_x)          (through dropout below the top)
            dW_hh, db_hh          = projection_grads(h^(l)_{t-1}, da_h)

        A decoder's loop calls this T times; the weight gradients of one step
        are (H, B) x (B, G*H) products, small enough that BLAS runs them far
        below its speed.  ``grads=self.new_step_grads()`` defers them: each call
        then computes only dx^(l) = da_x W_ih^T and keeps (x^(l), da_x,
        h^(l)_{t-1}, da_h); ``add_step_grads(grads)`` after the loop sums all
        steps in one product per weight, dW = sum_t x_t^T da_t = X^T DA with
        the steps' rows stacked (the same sums, in another order).
        """
        L = self.num_layers
        if dstates is None:
            dstates = [None] * L
        K = select(cache.inputs[0].dtype)
        dprev = [None] * L
        dinp = dh_top
        for layer in reversed(range(L)):
            cell, step = self.cells[layer], cache.steps[layer]
            h_prev = step.h_prev
            ds = dstates[layer]
            ds = (None,) * self._n_states if ds is None else tuple(ds)
            ds = tuple(np.zeros_like(h_prev) if d is None else d for d in ds)
            dh = ds[0] if dinp is None else ds[0] + dinp
            da_x, da_h, dprev[layer] = getattr(K, f"{cell.kernel}_step_backward")(
                dh, *ds[1:], step, cell.W_hh.data)
            if grads is not None:
                grads.layers[layer].append((cache.inputs[layer], da_x, h_prev, da_h))
                dinp = da_x @ cell.W_ih.data.T  # dx = da_x W_ih^T; dW_ih waits for the sum
            else:
                dinp, dW_ih, db_ih = K.linear_backward(da_x, cache.xw[layer], cell.W_ih.data)
                dW_hh, db_hh = K.projection_grads(h_prev, da_h)
                cell.W_ih.grad += dW_ih
                cell.b_ih.grad += db_ih
                cell.W_hh.grad += dW_hh
                cell.b_hh.grad += db_hh
            if layer > 0:
                dinp = self.dropout.backward(dinp, cache.drops[layer - 1])
        return dinp, dprev

    def new_step_grads(self) -> "StepGrads":
        """An empty collector for ``step_backward(..., grads=...)``."""
        return StepGrads(layers=[[] for _ in self.cells])

    def add_step_grads(self, grads: "StepGrads") -> None:
        """Add the weight gradients collected over all steps, one product per weight:
            dW_ih, db_ih = projection_grads([x_1; ...; x_T], [da_x,1; ...; da_x,T])
            dW_hh, db_hh = projection_grads([h_0; ...; h_{T-1}], [da_h,1; ...; da_h,T])
        """
        for layer, cell in enumerate(self.cells):
            rows = grads.layers[layer]
            if not rows:
                continue
            K = select(rows[0][1].dtype)
            X, DA_x, H_prev = (np.concatenate(part) for part in list(zip(*rows))[:3])
            dW_ih, db_ih = K.projection_grads(X, DA_x)
            if all(r[3] is r[1] for r in rows):  # tanh RNN, LSTM: da_h is da_x, so db_hh = db_ih
                dW_hh, _ = K.projection_grads(H_prev, DA_x, has_bias=False)
                db_hh = db_ih
            else:  # the GRU: its hidden candidate block differs
                dW_hh, db_hh = K.projection_grads(H_prev, np.concatenate([r[3] for r in rows]))
            cell.W_ih.grad += dW_ih
            cell.b_ih.grad += db_ih
            cell.W_hh.grad += dW_hh
            cell.b_hh.grad += db_hh
            rows.clear()

    def extra_repr(self) -> str:
        return (f"{self.cell_type!r}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"dropout={self.dropout.p}")


def _check_lengths(lengths, B: int, T: int) -> np.ndarray:
    if not isinstance(lengths, np.ndarray):
        if isinstance(lengths, (list, tuple)):
            lengths = np.asarray(lengths)
        else:
            raise TypeError(f"RNN: lengths must be an integer numpy array, "
                            f"got {type(lengths).__name__}")
    if not np.issubdtype(lengths.dtype, np.integer) or lengths.dtype == np.bool_:
        raise TypeError(f"RNN: lengths must be an integer array, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"RNN: lengths has shape {lengths.shape}, expected ({B},) "
                         f"(one length per sequence)")
    lo, hi = (int(lengths.min()), int(lengths.max())) if B else (0, 0)
    if lo < 0 or hi > T:
        bad = lo if lo < 0 else hi
        raise ValueError(f"RNN: lengths contains {bad}, expected lengths in [0, {T}]")
    return lengths.astype(np.intp)
