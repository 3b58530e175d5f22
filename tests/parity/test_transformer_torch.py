"""PyTorch parity for the Transformer layers, stacks and the whole nn.Transformer.

Each test builds the torch module (float64, dropout 0, weights perturbed away
from torch's init so no LayerNorm is the identity), converts it with
``from_torch`` (so the weight map itself is under test), runs both on the same
drawn inputs and masks, pushes the same random upstream gradient G (never all
ones) back through both, and compares the output, the gradient of every float
input and of every parameter (ours mapped to torch's names and layout by
``torch_state_dict(ours, grad=True)``):

    err = max |ours - torch| / max(max |ours|, max |torch|, floor)   <= 1e-10

floor is 0 for outputs and input gradients; for parameter gradients it is
1e-3 of the largest parameter gradient of the case, so a gradient that is zero
in exact arithmetic (a key bias: softmax ignores a shift shared by a row) is
judged against the layer's gradient scale, not against its own rounding noise.

Masks are drawn so that no query row is fully blocked (key 0 is never padding
and never masked): there PyTorch gives NaN where we give 0 by design (tested in
tests/attention).  3-D attention masks are ours (B, T, T), repeated per head
for torch's (B*H, T, T).  d_model >= 3: with d_model <= 2 a LayerNorm output is
constant (+-1), so every gradient before it is zero and only noise is compared.

float32: the same pairs run forward in eval mode under no_grad (torch may take
its fused fast path there) and agree to 1e-5 relative (scale at least 1); see
check_forward32 for torch's fast path and the tanh-approximate GELU.

Set PARITY_REPORT=1 to print the worst error per pair at the end of the module.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from numtransformer.attention import causal_mask  # noqa: E402
from numtransformer.interop import from_torch, to_torch, torch_state_dict  # noqa: E402
from numtransformer.optim import Adam  # noqa: E402
from tests.helpers import seeds  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:enable_nested_tensor is True", "ignore:The PyTorch API of nested tensors")

TOL64 = 1e-10
TOL32 = 1e-5

WORST: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    # These tensors are tiny: one thread avoids torch's thread start-up and
    # spinning, which on a busy 2-core machine costs ~10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if os.environ.get("PARITY_REPORT"):
        for name, err in sorted(WORST.items()):
            print(f"parity {name:40s} max rel error {err:.2e}", file=sys.__stderr__)


def record(name: str, err: float) -> None:
    WORST[name] = max(WORST.get(name, 0.0), err)


# -- helpers -----------------------------------------------------------------------------------
def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def rel_err(ours, theirs, floor: float = 0.0) -> float:
    a, b = _np(ours), _np(theirs)
    assert a.shape == b.shape, f"shape {a.shape} (ours) vs {b.shape} (torch)"
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), floor)
    diff = float(np.abs(a - b).max(initial=0.0))
    return diff / scale if scale > 0 else diff


def perturb(t: "torch.nn.Module", seed: int, scale: float = 0.3) -> None:
    """Add noise to every parameter (LayerNorm gamma = 1, beta = 0 would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def check_pair(name: str, t, inputs: dict, ours_call, torch_call, seed: int,
               ours_outputs=lambda out: out if isinstance(out, tuple) else (out,),
               torch_outputs=lambda out: out if isinstance(out, tuple) else (out,)):
    """Forward + backward parity of torch module ``t`` and ``from_torch(t)``.

    inputs: {name: float64 array}; ours_call(ours, *arrays) -> (out, cache);
    torch_call(t, *tensors) -> torch output.  Upstream gradients: one random
    array per output.  Returns the worst error (also recorded under ``name``).
    """
    rng = np.random.default_rng([seed, 99])
    ours = from_torch(t, dtype=np.float64)
    arrays = list(inputs.values())
    out, cache = ours_call(ours, *arrays)
    outs = ours_outputs(out)
    G = [rng.standard_normal(o.shape) for o in outs]
    grads = ours.backward(tuple(G) if isinstance(out, tuple) else G[0], cache)
    grads = grads if isinstance(grads, tuple) else (grads,)

    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    touts = torch_outputs(torch_call(t, *tensors))
    assert len(touts) == len(outs)
    torch.autograd.backward(list(touts), [torch.from_numpy(g) for g in G])

    errs = {}
    for i, (o, to) in enumerate(zip(outs, touts)):
        errs[f"output[{i}]"] = rel_err(o, to)
    for (arg, _), g, tt in zip(inputs.items(), grads, tensors):
        errs[f"d{arg}"] = rel_err(g, tt.grad)
    ours_g = torch_state_dict(ours, grad=True)
    theirs_g = {n: p.grad for n, p in t.named_parameters()}
    assert set(ours_g) == set(theirs_g), (sorted(ours_g), sorted(theirs_g))
    floor = 1e-3 * max((float(np.abs(_np(g)).max()) for g in theirs_g.values()), default=0.0)
    for n, g in theirs_g.items():
        errs[n] = rel_err(ours_g[n], g, floor)
    worst = max(errs.values())
    record(name, worst)
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= TOL64}
    assert not bad, f"{name}: relative errors above {TOL64:.0e}: {bad}"
    return worst


def check_forward32(name: str, t64, inputs: dict, ours_call, torch_call,
                    ours_outputs=lambda out: out if isinstance(out, tuple) else (out,),
                    torch_outputs=lambda out: out if isinstance(out, tuple) else (out,)):
    """float32 forward agreement (eval mode, no_grad) of a float32 copy of ``t64``.

    Exception: with GELU(approximate="tanh") torch's eval-mode fast path
    (``activation_relu_or_gelu``) computes the exact GELU instead, off by up
    to ~2e-4 from its own slow path and from a float64 reference, so such a
    module stays in train mode (dropout is 0, so the math is the same).
    """
    t = t64.float().eval()
    ours = from_torch(t, dtype=np.float32)
    if any(isinstance(m, torch.nn.GELU) and m.approximate == "tanh" for m in t.modules()):
        t.train()
    arrays = [a.astype(np.float32) for a in inputs.values()]
    out, _ = ours_call(ours, *arrays)
    outs = ours_outputs(out)
    with torch.no_grad():
        touts = torch_outputs(torch_call(t, *[torch.from_numpy(a) for a in arrays]))
    for o, to in zip(outs, touts):
        assert o.dtype == np.float32, f"{name}: float32 in gave {o.dtype} out"
        err = rel_err(o, to, floor=1.0)
        record(name + " float32", err)
        assert err <= TOL32, f"{name} float32: relative error {err:.2e} > {TOL32:.0e}"


@st.composite
def dims(draw):
    """(nhead, d_model) with d_model = nhead * d_k >= 3, and d_ff."""
    nhead = draw(st.integers(1, 3))
    d_k = draw(st.integers(1, 3))
    assume(nhead * d_k >= 3)
    return nhead, nhead * d_k, draw(st.integers(1, 7))


activations = st.sampled_from(["relu", "gelu", "gelu_tanh"])


def torch_activation(name):
    return torch.nn.GELU(approximate="tanh") if name == "gelu_tanh" else name


def key_padding(rng, B, T):
    """(B, T) padding mask; key 0 is never padding, so no row is fully blocked."""
    kpm = rng.random((B, T)) < 0.4
    kpm[:, 0] = False
    return kpm


def attn_mask(kind, rng, B, Tq, Tk):
    """(ours, torch's) attention masks of the drawn kind; column 0 never blocked."""
    if kind == "none":
        return None, None
    if kind == "causal":
        m = causal_mask(Tq) if Tq == Tk else None
        return m, None if m is None else torch.from_numpy(m)
    shape = (Tq, Tk) if kind == "random2d" else (B, Tq, Tk)
    m = rng.random(shape) < 0.4
    m[..., 0] = False
    return m, m


def torch_mask(m, nhead):
    """Our mask -> torch's: a 3-D mask is repeated per head, (B*H, Tq, Tk)."""
    if m is None:
        return None
    return torch.from_numpy(np.repeat(m, nhead, axis=0) if m.ndim == 3 else m)


mask_kinds = st.sampled_from(["none", "causal", "random2d", "random3d"])


# -- layers ------------------------------------------------------------------------------------
def make_encoder_layer(nhead, d_model, d_ff, act, norm_first, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    t = torch.nn.TransformerEncoderLayer(d_model, nhead, d_ff, dropout=0.0,
                                         activation=torch_activation(act), batch_first=True,
                                         norm_first=norm_first, dtype=dtype)
    perturb(t, seed)
    return t


def make_decoder_layer(nhead, d_model, d_ff, act, norm_first, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    t = torch.nn.TransformerDecoderLayer(d_model, nhead, d_ff, dropout=0.0,
                                         activation=torch_activation(act), batch_first=True,
                                         norm_first=norm_first, dtype=dtype)
    perturb(t, seed)
    return t


@given(shape=dims(), B=st.integers(1, 3), T=st.integers(1, 5), act=activations,
       norm_first=st.booleans(), kind=mask_kinds, use_kpm=st.booleans(), seed=seeds)
def test_encoder_layer(shape, B, T, act, norm_first, kind, use_kpm, seed):
    nhead, d_model, d_ff = shape
    rng = np.random.default_rng(seed)
    t = make_encoder_layer(nhead, d_model, d_ff, act, norm_first, seed)
    kpm = key_padding(rng, B, T) if use_kpm else None
    mask, _ = attn_mask(kind, rng, B, T, T)
    tkpm = None if kpm is None else torch.from_numpy(kpm)
    tmask = torch_mask(mask, nhead)
    inputs = {"src": rng.standard_normal((B, T, d_model))}

    def ours_call(m, src):
        return m.forward(src, src_key_padding_mask=kpm, src_mask=mask)

    def torch_call(m, src):
        return m(src, src_mask=tmask, src_key_padding_mask=tkpm)

    check_pair("TransformerEncoderLayer", t, inputs, ours_call, torch_call, seed)
    check_forward32("TransformerEncoderLayer", t, inputs, ours_call, torch_call)


@given(shape=dims(), B=st.integers(1, 3), T=st.integers(1, 5), S=st.integers(1, 5),
       act=activations, norm_first=st.booleans(), kind=mask_kinds, use_kpm=st.booleans(),
       seed=seeds)
def test_decoder_layer(shape, B, T, S, act, norm_first, kind, use_kpm, seed):
    nhead, d_model, d_ff = shape
    rng = np.random.default_rng(seed)
    t = make_decoder_layer(nhead, d_model, d_ff, act, norm_first, seed)
    tkpm = key_padding(rng, B, T) if use_kpm else None
    mkpm = key_padding(rng, B, S) if use_kpm else None
    mask, _ = attn_mask(kind, rng, B, T, T)
    tt = {"tgt_mask": torch_mask(mask, nhead),
          "tgt_key_padding_mask": None if tkpm is None else torch.from_numpy(tkpm),
          "memory_key_padding_mask": None if mkpm is None else torch.from_numpy(mkpm)}
    inputs = {"tgt": rng.standard_normal((B, T, d_model)),
              "memory": rng.standard_normal((B, S, d_model))}

    def ours_call(m, tgt, memory):
        return m.forward(tgt, memory, tgt_mask=mask, tgt_key_padding_mask=tkpm,
                         memory_key_padding_mask=mkpm)

    def torch_call(m, tgt, memory):
        return m(tgt, memory, **tt)

    check_pair("TransformerDecoderLayer", t, inputs, ours_call, torch_call, seed,
               ours_outputs=lambda out: (out,))
    check_forward32("TransformerDecoderLayer", t, inputs, ours_call, torch_call)


# -- stacks ------------------------------------------------------------------------------------
@given(shape=dims(), B=st.integers(1, 3), T=st.integers(1, 5), N=st.integers(1, 3),
       act=activations, norm_first=st.booleans(), final_norm=st.booleans(), kind=mask_kinds,
       use_kpm=st.booleans(), seed=seeds)
def test_encoder_stack(shape, B, T, N, act, norm_first, final_norm, kind, use_kpm, seed):
    nhead, d_model, d_ff = shape
    rng = np.random.default_rng(seed)
    layer = make_encoder_layer(nhead, d_model, d_ff, act, norm_first, seed)
    norm = torch.nn.LayerNorm(d_model, dtype=torch.float64) if final_norm else None
    t = torch.nn.TransformerEncoder(layer, N, norm=norm, enable_nested_tensor=False)
    perturb(t, seed + 1)
    kpm = key_padding(rng, B, T) if use_kpm else None
    mask, _ = attn_mask(kind, rng, B, T, T)
    tkw = {"mask": torch_mask(mask, nhead),
           "src_key_padding_mask": None if kpm is None else torch.from_numpy(kpm)}
    inputs = {"src": rng.standard_normal((B, T, d_model))}

    def ours_call(m, src):
        return m.forward(src, src_key_padding_mask=kpm, mask=mask)

    def torch_call(m, src):
        return m(src, **tkw)

    check_pair("TransformerEncoder", t, inputs, ours_call, torch_call, seed)
    check_forward32("TransformerEncoder", t, inputs, ours_call, torch_call)


@given(shape=dims(), B=st.integers(1, 3), T=st.integers(1, 5), S=st.integers(1, 4),
       N=st.integers(1, 3), act=activations, norm_first=st.booleans(),
       final_norm=st.booleans(), use_kpm=st.booleans(), seed=seeds)
def test_decoder_stack(shape, B, T, S, N, act, norm_first, final_norm, use_kpm, seed):
    nhead, d_model, d_ff = shape
    rng = np.random.default_rng(seed)
    layer = make_decoder_layer(nhead, d_model, d_ff, act, norm_first, seed)
    norm = torch.nn.LayerNorm(d_model, dtype=torch.float64) if final_norm else None
    t = torch.nn.TransformerDecoder(layer, N, norm=norm)
    perturb(t, seed + 1)
    tkpm = key_padding(rng, B, T) if use_kpm else None
    mkpm = key_padding(rng, B, S) if use_kpm else None
    mask = causal_mask(T)
    tkw = {"tgt_mask": torch.from_numpy(mask),
           "tgt_key_padding_mask": None if tkpm is None else torch.from_numpy(tkpm),
           "memory_key_padding_mask": None if mkpm is None else torch.from_numpy(mkpm)}
    inputs = {"tgt": rng.standard_normal((B, T, d_model)),
              "memory": rng.standard_normal((B, S, d_model))}

    def ours_call(m, tgt, memory):
        return m.forward(tgt, memory, tgt_mask=mask, tgt_key_padding_mask=tkpm,
                         memory_key_padding_mask=mkpm)

    def torch_call(m, tgt, memory):
        return m(tgt, memory, **tkw)

    check_pair("TransformerDecoder", t, inputs, ours_call, torch_call, seed,
               ours_outputs=lambda out: (out,))
    check_forward32("TransformerDecoder", t, inputs, ours_call, torch_call)


# -- nn.Transformer ----------------------------------------------------------------------------
def make_transformer(nhead, d_model, d_ff, act, norm_first, n_enc, n_dec, seed,
                     dtype=torch.float64):
    torch.manual_seed(seed)
    t = torch.nn.Transformer(d_model, nhead, n_enc, n_dec, d_ff, dropout=0.0,
                             activation=torch_activation(act), batch_first=True,
                             norm_first=norm_first, dtype=dtype)
    perturb(t, seed)
    return t


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
@given(shape=dims(), B=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(1, 5),
       n_enc=st.integers(1, 2), n_dec=st.integers(1, 2), src_kind=mask_kinds,
       use_kpm=st.booleans(), seed=seeds)
def test_transformer(norm_first, act, shape, B, S, T, n_enc, n_dec, src_kind, use_kpm, seed):
    nhead, d_model, d_ff = shape
    rng = np.random.default_rng(seed)
    t = make_transformer(nhead, d_model, d_ff, act, norm_first, n_enc, n_dec, seed)
    skpm = key_padding(rng, B, S) if use_kpm else None
    tkpm = key_padding(rng, B, T) if use_kpm else None
    src_mask, _ = attn_mask(src_kind, rng, B, S, S)
    tgt_mask = causal_mask(T)
    tb = lambda m: None if m is None else torch.from_numpy(m)  # noqa: E731
    tkw = dict(src_mask=torch_mask(src_mask, nhead), tgt_mask=tb(tgt_mask),
               src_key_padding_mask=tb(skpm), tgt_key_padding_mask=tb(tkpm),
               memory_key_padding_mask=tb(skpm))
    inputs = {"src": rng.standard_normal((B, S, d_model)),
              "tgt": rng.standard_normal((B, T, d_model))}

    def ours_call(m, src, tgt):
        return m.forward(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask,
                         src_key_padding_mask=skpm, tgt_key_padding_mask=tkpm,
                         memory_key_padding_mask=skpm)

    def torch_call(m, src, tgt):
        return m(src, tgt, **tkw)

    name = f"Transformer({act}, norm_first={norm_first})"
    check_pair(name, t, inputs, ours_call, torch_call, seed, ours_outputs=lambda out: (out,))
    check_forward32(name, t, inputs, ours_call, torch_call)


def test_transformer_batch_first_false_maps_the_same_weights():
    """batch_first only changes the input layout: (S, B, D) in torch, (B, S, D) here."""
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    t = torch.nn.Transformer(6, 2, 1, 1, 10, dropout=0.0, batch_first=False,
                             dtype=torch.float64)
    perturb(t, 3)
    ours = from_torch(t)
    src, tgt = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 3, 6))
    y = ours(src, tgt, tgt_mask=causal_mask(3))
    ty = t(torch.from_numpy(src.transpose(1, 0, 2)), torch.from_numpy(tgt.transpose(1, 0, 2)),
           tgt_mask=torch.from_numpy(causal_mask(3)))
    assert rel_err(y, ty.detach().numpy().transpose(1, 0, 2)) <= TOL64


# -- one training step -------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_adam_steps_give_the_same_weights(norm_first):
    """Three Adam steps on a small nn.Transformer and on from_torch of it: same new weights.

    Loss: mean squared distance of the output to a fixed random target, in
    both frameworks; the gradients go through each framework's own backward.
    """
    seed = 11 + norm_first
    rng = np.random.default_rng(seed)
    t = make_transformer(2, 8, 16, "gelu", norm_first, 2, 2, seed)
    ours = from_torch(t)
    B, S, T = 3, 5, 4
    src, tgt = rng.standard_normal((B, S, 8)), rng.standard_normal((B, T, 8))
    target = rng.standard_normal((B, T, 8))
    skpm = key_padding(rng, B, S)
    mask = causal_mask(T)
    opt_t = torch.optim.Adam(t.parameters(), lr=1e-2, weight_decay=1e-3)
    opt_o = Adam(ours, lr=1e-2, weight_decay=1e-3)
    losses = []
    for _ in range(3):
        y, cache = ours.forward(src, tgt, tgt_mask=mask, src_key_padding_mask=skpm,
                                memory_key_padding_mask=skpm)
        loss_o = float(np.mean((y - target) ** 2))
        ours.zero_grad()
        ours.backward(2.0 * (y - target) / y.size, cache)
        opt_o.step()

        opt_t.zero_grad()
        ty = t(torch.from_numpy(src), torch.from_numpy(tgt), tgt_mask=torch.from_numpy(mask),
               src_key_padding_mask=torch.from_numpy(skpm),
               memory_key_padding_mask=torch.from_numpy(skpm))
        loss_t = ((ty - torch.from_numpy(target)) ** 2).mean()
        loss_t.backward()
        opt_t.step()
        assert abs(loss_o - loss_t.item()) <= 1e-12 * abs(loss_o)
        losses.append(loss_o)
    assert losses[-1] < losses[0]
    new_ours = torch_state_dict(ours)
    worst = 0.0
    for n, p in t.named_parameters():
        # relative to the tensor's scale: Adam moves every entry by ~lr
        err = rel_err(new_ours[n], p)
        worst = max(worst, err)
        assert err <= TOL64, f"{n}: relative error {err:.2e} after 3 Adam steps"
    record(f"Adam steps on nn.Transformer(norm_first={norm_first})", worst)


def test_to_torch_transformer_trains_the_same():
    """The other direction: a TransformerStack built here, exported with to_torch."""
    from numtransformer.interop import TransformerStack

    rng = np.random.default_rng(5)
    ours = TransformerStack(6, 3, 1, 2, 12, dropout=0.0, norm_first=True, dtype=np.float64,
                            rng=rng)
    t = to_torch(ours)
    src, tgt = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 4, 6))
    y, cache = ours.forward(src, tgt, tgt_mask=causal_mask(4))
    G = rng.standard_normal(y.shape)
    ours.backward(G, cache)
    tsrc = torch.tensor(src, requires_grad=True)
    ty = t(tsrc, torch.from_numpy(tgt), tgt_mask=torch.from_numpy(causal_mask(4)))
    (ty * torch.from_numpy(G)).sum().backward()
    assert rel_err(y, ty) <= TOL64
    grads = torch_state_dict(ours, grad=True)
    floor = 1e-3 * max(float(p.grad.abs().max()) for p in t.parameters())
    for n, p in t.named_parameters():
        assert rel_err(grads[n], p.grad, floor) <= TOL64, n
