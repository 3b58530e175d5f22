"""Parity of MultiHeadAttention with torch.nn.MultiheadAttention(batch_first=True).

The same weights are loaded into both (our W is torch's weight transposed; see
the MultiHeadAttention docstring), both run in float64, and the outputs, the
attention weights, the input gradients and every parameter gradient must agree
to a relative error of 1e-10.  No row is fully blocked here: PyTorch returns NaN
for such a row, we return 0 (tested in tests/attention).
"""

import numpy as np
import pytest

from numtransformer.attention import MultiHeadAttention, causal_mask

torch = pytest.importorskip("torch")

TOL = 1e-10


def rel_err(ours, theirs, floor=1e-300):
    """max |ours - theirs| / max(max |theirs|, floor).

    ``floor`` matters for a gradient that is exactly zero in theory (the key
    bias: softmax ignores a shift shared by a row), where both sides are
    rounding noise; it is then judged against the layer's gradient scale.
    """
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(float(np.abs(theirs).max()), floor)
    return float(np.abs(ours - theirs).max() / scale)


def torch_twin(mha: MultiHeadAttention):
    """A torch.nn.MultiheadAttention holding the same weights as ``mha``."""
    E, H = mha.d_model, mha.n_heads
    bias = mha.out_proj.b is not None
    t = torch.nn.MultiheadAttention(E, H, dropout=0.0, bias=bias, kdim=mha.kdim, vdim=mha.vdim,
                                    batch_first=True, dtype=torch.float64)
    sd = {"out_proj.weight": mha.out_proj.W.data.T}
    if bias:
        sd["out_proj.bias"] = mha.out_proj.b.data
    if mha.in_proj is not None:
        sd["in_proj_weight"] = mha.in_proj.W.data.T
        if bias:
            sd["in_proj_bias"] = mha.in_proj.b.data
    else:
        for name in ("q", "k", "v"):
            sd[f"{name}_proj_weight"] = getattr(mha, f"{name}_proj").W.data.T
        if bias:
            sd["in_proj_bias"] = np.concatenate(
                [mha.q_proj.b.data, mha.k_proj.b.data, mha.v_proj.b.data])
    t.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                      strict=True)
    return t


def torch_param_grads(t, mha):
    """Torch's parameter gradients under our parameter names (and our layout)."""
    E = mha.d_model
    g = {"out_proj.W": t.out_proj.weight.grad.numpy().T}
    if t.out_proj.bias is not None:
        g["out_proj.b"] = t.out_proj.bias.grad.numpy()
    if mha.in_proj is not None:
        g["in_proj.W"] = t.in_proj_weight.grad.numpy().T
        if t.in_proj_bias is not None:
            g["in_proj.b"] = t.in_proj_bias.grad.numpy()
    else:
        for i, name in enumerate(("q", "k", "v")):
            g[f"{name}_proj.W"] = getattr(t, f"{name}_proj_weight").grad.numpy().T
            if t.in_proj_bias is not None:
                g[f"{name}_proj.b"] = t.in_proj_bias.grad.numpy()[i * E:(i + 1) * E]
    return g


def randomize(mha, rng):
    for p in mha.parameters():
        p.data = 0.5 * rng.standard_normal(p.shape)


CONFIGS = {
    # name: (self_attention, kdim, vdim, bias, masks, need_weights, average)
    "self": (True, None, None, True, None, False, True),
    "self-causal-weights-mean": (True, None, None, True, "causal", True, True),
    "self-kpm-attn3d-weights-heads": (True, None, None, True, "both3d", True, False),
    "cross": (False, None, None, True, None, True, True),
    "cross-kpm-attn2d": (False, None, None, True, "both2d", False, True),
    "cross-kdim-vdim-masks": (False, 3, 5, True, "both3d", True, False),
    "cross-no-bias": (False, None, None, False, "kpm", True, True),
    "kdim-vdim-no-bias": (False, 7, 2, False, None, False, True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_torch(name):
    self_attention, kdim, vdim, bias, masks, need_weights, average = CONFIGS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    B, Tq, E, H = 3, 4, 8, 2
    Tk = Tq if self_attention else 5
    mha = MultiHeadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, dtype=np.float64, rng=rng)
    randomize(mha, rng)
    t = torch_twin(mha)

    query = rng.standard_normal((B, Tq, E))
    key = query if self_attention else rng.standard_normal((B, Tk, kdim or E))
    value = query if self_attention else rng.standard_normal((B, Tk, vdim or E))

    kw, tkw = {}, {}
    if masks == "causal":
        kw["attn_mask"] = causal_mask(Tq)
        tkw["attn_mask"] = torch.from_numpy(kw["attn_mask"])
    elif masks is not None and masks.startswith("both") or masks == "kpm":
        kpm = np.zeros((B, Tk), dtype=bool)
        kpm[0, -1] = kpm[2, -2:] = True  # key 0 is never padding: no row is fully blocked
        kw["key_padding_mask"] = kpm
        tkw["key_padding_mask"] = torch.from_numpy(kpm)
        if masks == "both2d":
            attn = rng.random((Tq, Tk)) < 0.4
            attn[:, 0] = False
            kw["attn_mask"] = attn
            tkw["attn_mask"] = torch.from_numpy(attn)
        elif masks == "both3d":
            attn = rng.random((B, Tq, Tk)) < 0.4
            attn[:, :, 0] = False
            kw["attn_mask"] = attn
            # torch's 3-D mask is per (batch, head): row b*H + h
            tkw["attn_mask"] = torch.from_numpy(np.repeat(attn, H, axis=0))

    # ours
    args = (query,) if self_attention else (query, key, value)
    out, cache = mha.forward(*args, need_weights=need_weights, average_attn_weights=average,
                             **kw)
    y, weights = out if need_weights else (out, None)
    G = rng.standard_normal(y.shape)
    Gw = None if weights is None else rng.standard_normal(weights.shape)
    grads = mha.backward((G, Gw) if need_weights else G, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)

    # torch
    tq = torch.tensor(query, requires_grad=True)
    if self_attention:
        tk = tv = tq
    else:
        tk = torch.tensor(key, requires_grad=True)
        tv = torch.tensor(value, requires_grad=True)
    ty, tw = t(tq, tk, tv, need_weights=need_weights, average_attn_weights=average, **tkw)
    loss = (ty * torch.from_numpy(G)).sum()
    if need_weights:
        loss = loss + (tw * torch.from_numpy(Gw)).sum()
    loss.backward()

    assert rel_err(y, ty) <= TOL
    if need_weights:
        assert rel_err(weights, tw) <= TOL
    if self_attention:
        assert len(grads) == 1
        assert rel_err(grads[0], tq.grad) <= TOL
    else:
        for ours, theirs in zip(grads, (tq, tk, tv)):
            assert rel_err(ours, theirs.grad) <= TOL
    expected = torch_param_grads(t, mha)
    ours_params = dict(mha.named_parameters())
    assert set(expected) == set(ours_params)
    floor = 1e-3 * max(float(np.abs(g).max()) for g in expected.values())
    for pname, g in expected.items():
        assert rel_err(ours_params[pname].grad, g, floor) <= TOL, pname


def test_parity_same_array_three_times():
    """forward(x, x, x) returns three gradients; their sum is torch's x.grad."""
    rng = np.random.default_rng(7)
    B, T, E, H = 2, 5, 6, 3
    mha = MultiHeadAttention(E, H, dtype=np.float64, rng=rng)
    randomize(mha, rng)
    t = torch_twin(mha)
    x = rng.standard_normal((B, T, E))
    y, cache = mha.forward(x, x, x, attn_mask=causal_mask(T))
    G = rng.standard_normal(y.shape)
    dq, dk, dv = mha.backward(G, cache)
    tx = torch.tensor(x, requires_grad=True)
    ty, _ = t(tx, tx, tx, attn_mask=torch.from_numpy(causal_mask(T)), need_weights=False)
    (ty * torch.from_numpy(G)).sum().backward()
    assert rel_err(y, ty) <= TOL
    assert rel_err(dq + dk + dv, tx.grad) <= TOL


def test_init_matches_torch_scheme():
    """Biases start at 0 and the fused projection's bound is sqrt(6 / (E + 3E)), as in torch."""
    E = 64
    mha = MultiHeadAttention(E, 4, rng=0)
    assert np.all(mha.in_proj.b.data == 0) and np.all(mha.out_proj.b.data == 0)
    bound = np.sqrt(6.0 / (4 * E))
    W = mha.in_proj.W.data
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.9 * bound
    assert np.abs(mha.out_proj.W.data).max() <= 1 / np.sqrt(E)
