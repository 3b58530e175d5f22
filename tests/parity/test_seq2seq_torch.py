"""PyTorch parity for the seq2seq models: the same weights in an independent
PyTorch implementation written from the papers' equations.

The encoder is ``torch.nn.LSTM/GRU`` over packed sequences (so the padding and
the bidirectional final states are PyTorch's own), the decoder steps
``torch.nn.LSTMCell/GRUCell`` and writes the attention, the bridge and the
output layers in plain tensor code; autograd gives the gradients.  Outputs
and the gradients of every parameter are compared in float64:

    err = max |ours - torch| / max(max |ours|, max |torch|)   <= 1e-10
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from numtransformer.models.seq2seq import Seq2Seq  # noqa: E402

TOL = 1e-10
F64 = np.float64


def _np(a):
    return a.detach().cpu().numpy()


def rel_err(a, b) -> float:
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
    return float(np.abs(a - b).max(initial=0.0)) / scale if scale > 0 else 0.0


class Reference:
    """The model's equations in PyTorch, with the weights of ``model``."""

    def __init__(self, model: Seq2Seq):
        self.model = model
        self.leaves = {}  # our name -> (torch tensor, transposed?)
        for name, p in model.named_parameters():
            if ".rnn.cells." not in name:
                self.leaves[name] = (torch.tensor(p.data, dtype=torch.float64,
                                                  requires_grad=True), False)
        enc = model.encoder
        kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[enc.cell]
        self.enc_rnn = kind(enc.embed_dim, enc.hidden_size, enc.num_layers, batch_first=True,
                            bidirectional=enc.bidirectional).double()
        for k, cell in enumerate(enc.rnn.cells):
            layer, d = divmod(k, enc.num_directions)
            self._load(cell, self.enc_rnn, f"_l{layer}" + ("_reverse" if d else ""),
                       f"encoder.rnn.cells.{k}")
        dec = model.decoder
        kind = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[dec.cell]
        self.dec_cells = []
        for layer, cell in enumerate(dec.rnn.cells):
            tcell = kind(cell.input_size, cell.hidden_size).double()
            self._load(cell, tcell, "", f"decoder.rnn.cells.{layer}")
            self.dec_cells.append(tcell)

    def _load(self, ours, module, suffix, prefix):
        for our, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"),
                            ("b_hh", "bias_hh")):
            t = getattr(module, theirs + suffix)
            data = getattr(ours, our).data
            with torch.no_grad():
                t.copy_(torch.tensor(data.T if our.startswith("W") else data))
            self.leaves[f"{prefix}.{our}"] = (t, our.startswith("W"))

    def P(self, name):
        return self.leaves[name][0]

    def forward(self, src, tgt, mask):
        c, P = self.model.config, self.P
        B, S = src.shape
        lengths = torch.tensor((~mask).sum(1))
        mask_t = torch.tensor(mask)
        enc = self.model.encoder
        x = P("encoder.embed.W")[torch.tensor(src)]
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                         enforce_sorted=False)
        out, state = self.enc_rnn(packed)
        M, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=S)
        L, dirs = enc.num_layers, enc.num_directions

        def per_layer(s_n):
            return s_n.view(L, dirs, B, -1).permute(0, 2, 1, 3).reshape(L, B, -1)

        h_n = state[0] if enc.cell == "lstm" else state
        h0 = torch.tanh(per_layer(h_n) @ P("encoder.bridge_h.W") + P("encoder.bridge_h.b"))
        states = [h0[layer] for layer in range(L)]
        if enc.cell == "lstm":
            c0 = torch.tanh(per_layer(state[1]) @ P("encoder.bridge_c.W")
                            + P("encoder.bridge_c.b"))
            states = [(h0[layer], c0[layer]) for layer in range(L)]

        def step(inp, states):
            new = []
            for layer, cell in enumerate(self.dec_cells):
                s = cell(inp, states[layer])
                new.append(s)
                inp = s[0] if isinstance(s, tuple) else s
            return inp, new

        def attend(e):
            return torch.softmax(e.masked_fill(mask_t, float("-inf")), dim=-1)

        y = P("decoder.embed.W")[torch.tensor(tgt)]
        outs = []
        if c["attention"] == "bahdanau":
            k = M @ P("decoder.score.W_k")
            s = h0[-1]
            for t in range(tgt.shape[1]):
                u = torch.tanh(k + (s @ P("decoder.score.W_q"))[:, None, :])
                alpha = attend(u @ P("decoder.score.v_a"))
                ctx = (alpha[:, None, :] @ M)[:, 0]
                s, states = step(torch.cat([y[:, t], ctx], 1), states)
                outs.append(torch.tanh(torch.cat([s, ctx, y[:, t]], 1) @ P("decoder.W_o.W")
                                       + P("decoder.W_o.b")))
        else:
            feed = torch.zeros(B, c["hidden_size"], dtype=torch.float64)
            for t in range(tgt.shape[1]):
                inp = torch.cat([y[:, t], feed], 1) if c["input_feeding"] else y[:, t]
                s, states = step(inp, states)
                if c["attention"] == "none":
                    ctx = h0[-1]
                else:
                    if c["score"] == "general":
                        e = ((s @ P("decoder.attention.score.W_a"))[:, None, :]
                             @ M.transpose(1, 2))[:, 0]
                    else:  # dot
                        e = (s[:, None, :] @ M.transpose(1, 2))[:, 0]
                    ctx = (attend(e)[:, None, :] @ M)[:, 0]
                feed = torch.tanh(torch.cat([ctx, s], 1) @ P("decoder.W_c.W"))
                outs.append(feed)
        return torch.stack(outs, 1) @ P("decoder.W_s.W") + P("decoder.W_s.b")

    def grad(self, name):
        t, transposed = self.leaves[name]
        g = _np(t.grad)
        return g.T if transposed else g


CONFIGS = {
    "luong-general-bilstm-feed": dict(bidirectional=True, score="general"),
    "luong-dot-gru-2layers-nofeed": dict(cell="gru", num_layers=2, score="dot",
                                         input_feeding=False),
    "bahdanau-bigru": dict(attention="bahdanau", cell="gru", bidirectional=True),
    "bahdanau-lstm-2layers": dict(attention="bahdanau", cell="lstm", num_layers=2),
    "none-bilstm": dict(attention="none", bidirectional=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_seq2seq_matches_pytorch(name):
    rng = np.random.default_rng(sorted(CONFIGS).index(name))
    model = Seq2Seq(9, 11, embed_dim=5, hidden_size=6, dtype=F64, rng=rng, **CONFIGS[name])
    src = np.array([[3, 4, 5, 6, 0], [2, 6, 1, 6, 5], [4, 8, 0, 0, 0]])
    tgt = np.array([[1, 3, 4, 5], [1, 5, 0, 0], [1, 7, 8, 2]])
    mask = src == 0
    logits, cache = model.forward(src, tgt, mask, tgt == 0)
    G = rng.standard_normal(logits.shape)
    model.zero_grad()
    model.backward(G, cache)

    ref = Reference(model)
    theirs = ref.forward(src, tgt, mask)
    (theirs * torch.tensor(G)).sum().backward()
    assert rel_err(logits, _np(theirs)) <= TOL
    names = [n for n, _ in model.named_parameters()]
    assert set(names) == set(ref.leaves)
    for n, p in model.named_parameters():
        err = rel_err(p.grad, ref.grad(n))
        assert err <= TOL, f"{n}: relative error {err:.2e}"
