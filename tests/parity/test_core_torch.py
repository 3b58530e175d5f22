"""PyTorch parity for the core layers and the cross-entropy loss.

Each test builds one of our layers and the matching PyTorch module holding the
same weights, runs both on the same float64 input, pushes the same random
upstream gradient G (never all ones: softmax's backward is exactly zero for
it) back through both, and compares the outputs and the gradients of every
float input and every parameter:

    err = max |ours - torch| / max(max |ours|, max |torch|)   <= 1e-10  (float64)

and the forward outputs once more in float32 (<= 1e-5, relative to at least 1).
Our Linear stores W as (D_in, D_out) (y = x W + b); ``torch.nn.Linear.weight``
is its transpose.
Our losses put the class axis last; torch's CrossEntropyLoss wants it at dim 1.

torch is an optional test dependency: without it this file is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from numtransformer.layers import (  # noqa: E402
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    PositionwiseFeedForward,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from numtransformer.losses import CrossEntropyLoss  # noqa: E402
from tests.helpers import away_from_zero, seeds  # noqa: E402

TOL64 = 1e-10
TOL32 = 1e-5

lead_dims = st.lists(st.integers(1, 4), min_size=0, max_size=2)


# -- helpers -----------------------------------------------------------------------


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def rel_err(ours, theirs, floor: float = 0.0) -> float:
    """Worst difference relative to the larger of the two tensors' largest entry
    (or to ``floor`` when that is larger: see test_layernorm)."""
    a, b = _np(ours), _np(theirs)
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), floor)
    diff = float(np.abs(a - b).max(initial=0.0))
    return diff / scale if scale > 0 else diff


def assert_close(name: str, ours, theirs, tol: float, floor: float = 0.0) -> None:
    a, b = _np(ours), _np(theirs)
    assert a.shape == b.shape, f"{name}: shape {a.shape} (ours) vs {b.shape} (torch)"
    assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} (ours) vs {b.dtype} (torch)"
    err = rel_err(a, b, floor)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"


def assert_close32(name: str, ours, theirs) -> None:
    """float32 forward agreement.  The scale is at least 1: inputs and weights
    here are O(1), so an output that is small only by cancellation still carries
    the float32 rounding of its O(1) terms."""
    assert _np(ours).dtype == np.float32, f"{name}: ours is {_np(ours).dtype}, not float32"
    assert_close(name, ours, theirs, TOL32, floor=1.0)


def leaf(a: np.ndarray) -> "torch.Tensor":
    """A float torch leaf tensor with its own copy of ``a``, recording gradients."""
    return torch.from_numpy(np.array(a, copy=True)).requires_grad_(True)


def upstream(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape)


def copy_into(t_param: "torch.nn.Parameter", value: np.ndarray) -> None:
    with torch.no_grad():
        t_param.copy_(torch.from_numpy(np.array(value, copy=True)))


def load_linear(t_lin: "torch.nn.Linear", ours: Linear) -> None:
    copy_into(t_lin.weight, ours.W.data.T)
    if ours.b is not None:
        copy_into(t_lin.bias, ours.b.data)


def torch_linear(ours: Linear, dtype) -> "torch.nn.Linear":
    t = torch.nn.Linear(ours.in_features, ours.out_features, bias=ours.b is not None,
                        dtype=dtype)
    load_linear(t, ours)
    return t


# -- Linear ------------------------------------------------------------------------


@given(lead=lead_dims, d_in=st.integers(1, 6), d_out=st.integers(1, 6), bias=st.booleans(),
       seed=seeds)
def test_linear(lead, d_in, d_out, bias, seed):
    rng = np.random.default_rng(seed)
    ours = Linear(d_in, d_out, bias=bias, dtype=np.float64, rng=rng)
    # Draw weights wider than the init so that no entry is special.
    ours.W.data[...] = rng.standard_normal(ours.W.shape)
    if bias:
        ours.b.data[...] = rng.standard_normal(ours.b.shape)
    theirs = torch_linear(ours, torch.float64)
    x = rng.standard_normal((*lead, d_in))

    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = theirs(xt)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, TOL64)
    assert_close("dW", ours.W.grad, theirs.weight.grad.T, TOL64)
    if bias:
        assert_close("db", ours.b.grad, theirs.bias.grad, TOL64)

    ours.astype(np.float32)
    theirs = theirs.float()
    with torch.no_grad():
        y32t = theirs(torch.from_numpy(x.astype(np.float32)))
    assert_close32("y (float32)", ours(x.astype(np.float32)), y32t)


# -- Embedding ---------------------------------------------------------------------


@given(V=st.integers(1, 8), D=st.integers(1, 5), lead=st.lists(st.integers(1, 5), min_size=1,
                                                                  max_size=2),
       use_padding=st.booleans(), negative_padding=st.booleans(), seed=seeds)
def test_embedding(V, D, lead, use_padding, negative_padding, seed):
    rng = np.random.default_rng(seed)
    padding_idx = None
    if use_padding:
        padding_idx = int(rng.integers(0, V)) - (V if negative_padding else 0)
    ours = Embedding(V, D, padding_idx=padding_idx, dtype=np.float64, rng=rng)
    theirs = torch.nn.Embedding(V, D, padding_idx=padding_idx, dtype=torch.float64)
    copy_into(theirs.weight, ours.W.data)

    ids = rng.integers(0, V, lead)
    flat = ids.reshape(-1)
    flat[-1] = flat[0]  # at least one repeated id (when there are two positions)
    if padding_idx is not None:
        flat[int(rng.integers(0, flat.size))] = padding_idx % V

    y, cache = ours.forward(ids)
    yt = theirs(torch.from_numpy(ids))
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    assert ours.backward(G, cache) is None
    yt.backward(torch.from_numpy(G))
    assert_close("dW", ours.W.grad, theirs.weight.grad, TOL64)
    if padding_idx is not None:
        assert not ours.W.grad[padding_idx].any()

    ours.astype(np.float32)
    theirs = theirs.float()
    with torch.no_grad():
        y32t = theirs(torch.from_numpy(ids))
    assert_close32("y (float32)", ours(ids), y32t)


# -- elementwise activations -------------------------------------------------------

ACTIVATIONS = {
    "relu": (ReLU, lambda: torch.nn.ReLU()),
    "gelu": (lambda: GELU("none"), lambda: torch.nn.GELU(approximate="none")),
    "gelu_tanh": (lambda: GELU("tanh"), lambda: torch.nn.GELU(approximate="tanh")),
    "tanh": (Tanh, lambda: torch.nn.Tanh()),
    "sigmoid": (Sigmoid, lambda: torch.nn.Sigmoid()),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), scale=st.sampled_from([1.0, 4.0]),
       seed=seeds)
def test_activation(name, shape, scale, seed):
    rng = np.random.default_rng(seed)
    make_ours, make_theirs = ACTIVATIONS[name]
    ours, theirs = make_ours(), make_theirs()
    x = scale * away_from_zero(rng, shape)  # clear of ReLU's kink

    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = theirs(xt)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, TOL64)

    x32 = x.astype(np.float32)
    assert_close32("y (float32)", ours(x32), theirs(torch.from_numpy(x32)))


# -- Softmax -----------------------------------------------------------------------


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data(),
       masked=st.booleans(), seed=seeds)
def test_softmax(shape, data, masked, seed):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    ours = Softmax(axis=axis)
    x = 3.0 * rng.standard_normal(shape)
    mask = None
    if masked:
        # torch has no masked softmax; compare with softmax(masked_fill(-inf)) on
        # rows that keep at least one entry (torch gives NaN for an all-blocked row).
        mask = rng.random(shape) < 0.4
        rows = np.moveaxis(mask, axis, -1)  # a view: writes land in mask
        keep = rng.integers(0, rows.shape[-1], (*rows.shape[:-1], 1))
        np.put_along_axis(rows, keep, False, axis=-1)

    y, cache = ours.forward(x, mask=mask)
    xt = leaf(x)
    logits_t = xt if mask is None else xt.masked_fill(torch.from_numpy(mask), float("-inf"))
    yt = torch.softmax(logits_t, dim=axis)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, TOL64)

    x32 = x.astype(np.float32)
    with torch.no_grad():
        l32 = torch.from_numpy(x32)
        if mask is not None:
            l32 = l32.masked_fill(torch.from_numpy(mask), float("-inf"))
        y32t = torch.softmax(l32, dim=axis)
    assert_close32("y (float32)", ours(x32, mask=mask), y32t)


# -- LayerNorm ---------------------------------------------------------------------


@given(lead=lead_dims, norm=st.lists(st.integers(1, 6), min_size=1, max_size=2),
       as_int=st.booleans(), affine=st.booleans(), eps=st.sampled_from([1e-5, 1e-3]),
       seed=seeds)
def test_layernorm(lead, norm, as_int, affine, eps, seed):
    rng = np.random.default_rng(seed)
    normalized_shape = norm[0] if (as_int and len(norm) == 1) else tuple(norm)
    ours = LayerNorm(normalized_shape, eps=eps, elementwise_affine=affine, dtype=np.float64)
    theirs = torch.nn.LayerNorm(normalized_shape, eps=eps, elementwise_affine=affine,
                                dtype=torch.float64)
    if affine:
        ours.gamma.data[...] = 1.0 + 0.5 * rng.standard_normal(ours.gamma.shape)
        ours.beta.data[...] = rng.standard_normal(ours.beta.shape)
        copy_into(theirs.weight, ours.gamma.data)
        copy_into(theirs.bias, ours.beta.data)
    x = 2.0 * rng.standard_normal((*lead, *norm)) + rng.standard_normal()

    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = theirs(xt)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    # Over a single element x_hat is identically 0, so the exact dx is 0: ours is
    # exactly 0, torch's is rounding noise (~1e-13 max|G|).  Judge dx against the
    # upstream gradient's scale when its own scale is smaller.
    assert_close("dx", dx, xt.grad, TOL64, floor=float(np.abs(G).max()))
    if affine:
        # sum(G * x_hat) is likewise exactly 0 over a single element.
        assert_close("dgamma", ours.gamma.grad, theirs.weight.grad, TOL64,
                     floor=float(np.abs(G).max()))
        assert_close("dbeta", ours.beta.grad, theirs.bias.grad, TOL64)

    ours.astype(np.float32)
    theirs = theirs.float()
    x32 = x.astype(np.float32)
    with torch.no_grad():
        y32t = theirs(torch.from_numpy(x32))
    assert_close32("y (float32)", ours(x32), y32t)


# -- PositionwiseFeedForward -------------------------------------------------------

TORCH_ACT = {
    "relu": lambda: torch.nn.ReLU(),
    "gelu": lambda: torch.nn.GELU(approximate="none"),
    "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"),
}


@given(lead=lead_dims, d_model=st.integers(1, 6), d_ff=st.integers(1, 8),
       activation=st.sampled_from(sorted(TORCH_ACT)), p=st.sampled_from([0.0, 0.3]),
       seed=seeds)
def test_feedforward(lead, d_model, d_ff, activation, p, seed):
    rng = np.random.default_rng(seed)
    ours = PositionwiseFeedForward(d_model, d_ff, activation=activation, dropout=p,
                                   dtype=np.float64, rng=rng)
    if p > 0:
        ours.eval()  # dropout is an identity in eval mode in both libraries
    t_lin1 = torch_linear(ours.linear1, torch.float64)
    t_act = TORCH_ACT[activation]()
    t_drop = torch.nn.Dropout(p)
    t_lin2 = torch_linear(ours.linear2, torch.float64)
    if p > 0:
        t_drop.eval()

    def theirs(xt):
        return t_lin2(t_drop(t_act(t_lin1(xt))))

    x = rng.standard_normal((*lead, d_model))
    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = theirs(xt)
    assert_close("y", y, yt, TOL64)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, TOL64)
    assert_close("linear1.dW", ours.linear1.W.grad, t_lin1.weight.grad.T, TOL64)
    assert_close("linear1.db", ours.linear1.b.grad, t_lin1.bias.grad, TOL64)
    assert_close("linear2.dW", ours.linear2.W.grad, t_lin2.weight.grad.T, TOL64)
    assert_close("linear2.db", ours.linear2.b.grad, t_lin2.bias.grad, TOL64)

    ours.astype(np.float32)
    t_lin1, t_lin2 = t_lin1.float(), t_lin2.float()
    x32 = x.astype(np.float32)
    with torch.no_grad():
        y32t = theirs(torch.from_numpy(x32))
    assert_close32("y (float32)", ours(x32), y32t)


# -- CrossEntropyLoss --------------------------------------------------------------


def torch_cross_entropy(logits_t, targets: np.ndarray, ignore_index, label_smoothing,
                        reduction):
    """torch's loss on our layout (class axis last): move the class axis to dim 1."""
    inp = logits_t if logits_t.ndim == 1 else torch.movedim(logits_t, -1, 1)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=ignore_index,
                                        label_smoothing=label_smoothing, reduction=reduction)
    return loss_fn(inp, torch.from_numpy(targets))


@settings(max_examples=4 * settings.default.max_examples)  # many option combinations
@given(lead=lead_dims, V=st.integers(1, 7), ignore=st.sampled_from(["default", "class"]),
       p_ignore=st.sampled_from([0.0, 0.3, 1.0]),
       smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=seeds)
def test_cross_entropy(lead, V, ignore, p_ignore, smoothing, reduction, seed):
    rng = np.random.default_rng(seed)
    ignore_index = -100 if ignore == "default" else int(rng.integers(0, V))
    targets = rng.integers(0, V, lead)
    targets = np.where(rng.random(lead) < p_ignore, ignore_index, targets)
    valid = targets != ignore_index
    if reduction == "mean" and not valid.any():
        # torch gives NaN here, we give 0 (test_cross_entropy_all_ignored_*).
        if ignore_index != -100 and V == 1:
            ignore_index = -100
        targets = np.where(valid, targets, (ignore_index + 1) % V if ignore_index >= 0 else 0)
    ours = CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=smoothing,
                            reduction=reduction)
    logits = 2.0 * rng.standard_normal((*lead, V))

    loss, cache = ours.forward(logits, targets)
    zt = leaf(logits)
    loss_t = torch_cross_entropy(zt, targets, ignore_index, smoothing, reduction)
    assert_close("loss", loss, loss_t, TOL64)

    if reduction == "none":
        G = upstream(rng, loss.shape)
    else:
        G = np.asarray(rng.choice([-1.0, 1.0]) * (0.5 + rng.random()))  # a scalar, not 1
    dz = ours.backward(G, cache)
    loss_t.backward(torch.from_numpy(G))
    assert_close("dlogits", dz, zt.grad, TOL64)

    z32 = logits.astype(np.float32)
    with torch.no_grad():
        l32t = torch_cross_entropy(torch.from_numpy(z32), targets, ignore_index, smoothing,
                                   reduction)
    assert_close32("loss (float32)", ours(z32, targets), l32t)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_cross_entropy_grid(ignore_index, smoothing, reduction):
    """Every option combination once, with about half the targets ignored."""
    rng = np.random.default_rng([ignore_index + 100, int(10 * smoothing), len(reduction)])
    logits = 2.0 * rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, (3, 4))
    targets[rng.random((3, 4)) < 0.5] = ignore_index
    targets[0, 0] = 3  # at least one target counts
    ours = CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=smoothing,
                            reduction=reduction)
    loss, cache = ours.forward(logits, targets)
    zt = leaf(logits)
    loss_t = torch_cross_entropy(zt, targets, ignore_index, smoothing, reduction)
    assert_close("loss", loss, loss_t, TOL64)
    G = upstream(rng, loss.shape) if reduction == "none" else np.asarray(-1.7)
    dz = ours.backward(G, cache)
    loss_t.backward(torch.from_numpy(G))
    assert_close("dlogits", dz, zt.grad, TOL64)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_all_ignored_is_zero_not_nan(smoothing):
    """Our deliberate difference from torch: a batch with no target that counts
    has loss 0 and zero gradient under "mean" (torch: NaN).  No torch needed."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((2, 3, 5))
    targets = np.full((2, 3), -100)
    ce = CrossEntropyLoss(label_smoothing=smoothing)
    loss, cache = ce.forward(logits, targets)
    assert np.isfinite(loss) and float(loss) == 0.0
    dz = ce.backward(np.asarray(0.7), cache)
    assert dz.shape == logits.shape and np.isfinite(dz).all() and not dz.any()


def test_cross_entropy_all_ignored_torch_gives_nan():
    """Documents the difference above: torch's "mean" over no targets is 0/0."""
    logits = np.random.default_rng(7).standard_normal((3, 5))
    targets = np.full(3, -100)
    loss_t = torch_cross_entropy(torch.from_numpy(logits), targets, -100, 0.0, "mean")
    assert torch.isnan(loss_t)
    assert float(CrossEntropyLoss()(logits, targets)) == 0.0


# -- Dropout -----------------------------------------------------------------------


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       p=st.sampled_from([0.0, 0.1, 0.5, 1.0]), training=st.booleans(), seed=seeds)
def test_dropout_identity(shape, p, training, seed):
    """Eval mode (any p) and training with p = 0 are the identity, as in torch."""
    if training and p > 0:
        return  # random masks: covered by the statistical test below
    rng = np.random.default_rng(seed)
    ours = Dropout(p, rng=seed).train(training)
    theirs = torch.nn.Dropout(p).train(training)
    x = rng.standard_normal(shape)

    y, cache = ours.forward(x)
    xt = leaf(x)
    yt = theirs(xt)
    assert_close("y", y, yt, 0.0)

    G = upstream(rng, y.shape)
    dx = ours.backward(G, cache)
    yt.backward(torch.from_numpy(G))
    assert_close("dx", dx, xt.grad, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_training_preserves_the_mean(p, dtype):
    """Inverted dropout: E[y] = x.  Kept entries are x / (1 - p), dropped ones 0,
    and backward applies the forward's mask.  No torch needed."""
    n = 200_000
    ours = Dropout(p, rng=12345)
    x = np.ones(n, dtype=dtype)
    y, cache = ours.forward(x)
    assert y.dtype == dtype
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - p), rtol=1e-6)
    # Binomial keep count: mean(y) has std sqrt(p / (1 - p) / n); allow 6 sigma.
    sigma = np.sqrt(p / (1.0 - p) / n)
    assert abs(float(y.mean(dtype=np.float64)) - 1.0) < 6 * sigma
    assert abs(kept.mean() - (1.0 - p)) < 6 * np.sqrt(p * (1.0 - p) / n)
    G = np.random.default_rng(3).standard_normal(n).astype(dtype)
    dx = ours.backward(G, cache)
    np.testing.assert_array_equal(dx, G * y)  # x = 1, so the mask is y itself
