"""LoRA: a frozen Linear plus a trainable low-rank update (Hu et al., 2021).

``LoRALinear`` keeps its base's weight and bias as frozen Parameters
(``requires_grad=False``): a LoRA'd model's ``state_dict()`` is the base
model's keys plus ``<path>.A`` and ``<path>.B`` per wrapped layer, and
``adapter_state_dict`` holds those adapters alone.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .._init import normal, uniform
from .._validate import as_rng, check_float, check_positive_int, check_probability
from ..functional.lora import LoRACache
from ..kernels import select
from ..module import Module, Parameter, match_state
from .linear import Linear

__all__ = ["LoRALinear", "LoRACache", "apply_lora", "remove_lora", "lora_parameters",
           "adapter_state_dict", "load_adapter_state_dict"]

LORA_INITS = ("gaussian", "kaiming")

# Every parent in the library calls its Linear children's forward and backward, or,
# as MultiHeadAttention does for speed, the kernels on a plain Linear and the
# child's own forward and backward on a wrapped one; a LoRALinear is never bypassed.
# A fused q/k/v projection is split when a target names one of its parts: a parent
# with a ``split_in_proj`` method (MultiHeadAttention) and these child names.
_SPLIT_PARTS = ("q_proj", "k_proj", "v_proj")


class LoRALinear(Module):
    """A ``Linear`` with its weight and bias frozen and a trainable low-rank
    update: LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language
    Models", sec. 4.1, eq. 3, h = W0 x + B A x, with the update scaled by
    alpha / r).

    Shapes: x (..., D_in); W0 (D_in, D_out), b0 (D_out,) the frozen base (this
    library's Linear layout, y = x W + b), held by the Parameters ``W`` and
    ``b``; A (D_in, r), B (r, D_out) the adapter; y (..., D_out).
    scale = alpha / r.

    Forward (``functional.lora_forward``):
        y0  = x W0 + b0
        x_d = dropout(x)          the adapter branch only (as loralib and peft)
        u   = x_d A
        y   = y0 + (scale u) B
    Backward (``functional.lora_backward``; derived there line by line):
        dB += (scale u)^T dy
        du  = scale dy B^T
        dA += x_d^T du
        dx  = dy W0^T + dropout'(du A^T)
    No dW0, db0: the base is frozen, and those GEMMs are never formed.

    Parameters: r (D_in + D_out) trainable entries against the base's
    D_in D_out (+ D_out).  Init: B = 0, so the wrapped layer starts equal to its
    base (the paper's "zero for B"); A ~ N(0, 1/r^2) (``init="gaussian"``: the
    paper's "random Gaussian", with the standard deviation 1/r of peft's
    ``init_lora_weights="gaussian"``), or ``init="kaiming"``: A ~ U(-1/sqrt(D_in),
    1/sqrt(D_in)), what loralib and peft do by default (torch's
    ``kaiming_uniform_(a=sqrt(5))``, nn.Linear's init).  alpha defaults to r
    (scale 1: the paper sets alpha to the first r it tries and does not tune it).

    Frozen means ``requires_grad=False`` (see ``module.py``): ``W`` and ``b`` are
    the base Linear's own Parameter objects (not copies; the base Linear given
    to the constructor is frozen with them), so they stay parameters of the
    layer: ``state_dict()`` holds ``W``, ``b`` (the base's keys, unchanged),
    ``A`` and ``B``, in that order, and a strict ``load_state_dict`` of a whole
    LoRA'd model round-trips; ``astype`` casts them; checkpoints carry them.
    What skips them: the optimizers (no update, no weight decay, no state),
    gradient clipping, ``gradcheck`` (which checks x, A and B, and would report
    any gradient added to W or b), and ``num_parameters(trainable_only=True)``,
    which is r (D_in + D_out).  The base must stay frozen: backward refuses, by
    name, a W or b made trainable again (it computes no gradient for them; to
    train the whole layer, ``remove_lora`` first).  ``adapter_state_dict()``
    holds A and B alone, in any tree.

    ``merge()`` folds the update into the base, writing W0 + scale A B into
    ``W.data`` (the Parameter's own array), and sets ``merged``: forward is
    then the plain affine map x W0 + b0 (one GEMM, no dropout), and backward
    returns dx = dy W0^T but gives A and B no gradient (the adapter branch did
    not run: as in loralib and peft, a merged layer is for inference).
    ``unmerge()`` subtracts the same product, W0 <- W0 - scale A B: the round
    trip restores W0 up to one rounding per entry.  ``merged`` is a flag of the
    module, not of its state: the ``state_dict()`` of a merged layer holds the
    merged weight in ``W`` (and the A, B it came from), so load it into a layer
    that is merged too (or unmerge before saving), else the update counts twice.
    """

    def __init__(self, base: Linear, r: int, alpha: float | None = None,
                 dropout: float = 0.0, *, init: str = "gaussian", rng=None):
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear: base must be a Linear, got {type(base).__name__}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = check_positive_int(self, "r", r)
        if self.r > min(self.in_features, self.out_features):
            # A B has rank <= min(D_in, D_out) whatever r is: a larger r only adds parameters
            raise ValueError(
                f"LoRALinear: r must be <= min(in_features, out_features) = "
                f"{min(self.in_features, self.out_features)}, got {self.r}")
        if alpha is None:
            alpha = float(self.r)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer,
                                                             np.floating)):
            raise TypeError(f"LoRALinear: alpha must be a number, got {type(alpha).__name__}")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LoRALinear: alpha must be a finite number > 0, got {alpha}")
        if init not in LORA_INITS:
            raise ValueError(f"LoRALinear: init must be one of {', '.join(map(repr, LORA_INITS))}, "
                             f"got {init!r}")
        self.alpha = float(alpha)
        self.scale = self.alpha / self.r  # a Python float: no float64 promotion in float32
        self.dropout = check_probability(self, "dropout", dropout)
        self.init = init
        rng = as_rng(rng)
        dtype = base.W.dtype
        # the base's own Parameters, frozen: their keys stay W and b
        self.W = base.W.requires_grad_(False)
        self.b = None if base.b is None else base.b.requires_grad_(False)
        if init == "gaussian":
            A = normal(rng, (self.in_features, self.r), dtype, 1.0 / self.r)
        else:
            bound = 1.0 / math.sqrt(self.in_features)
            A = uniform(rng, -bound, bound, (self.in_features, self.r), dtype)
        self.A = Parameter(A)
        self.B = Parameter(np.zeros((self.r, self.out_features), dtype))
        self.rng = rng.spawn(1)[0]  # the adapter dropout's own stream
        self.merged = False

    @property
    def dtype(self) -> np.dtype:
        return self.W.dtype

    # -- the contract -------------------------------------------------------------------
    def forward(self, x):
        x = check_float(self, "x", x, dtype=self.W.dtype, min_ndim=1,
                        last_dim=self.in_features, last_dim_name="in_features")
        K = select(x.dtype)
        b0 = None if self.b is None else self.b.data
        if self.merged:
            return K.linear_forward(x, self.W.data, b0)
        return K.lora_forward(x, self.W.data, b0, self.A.data, self.B.data, self.scale,
                              self.dropout, self.rng, self.training)

    def backward(self, dy, cache):
        trainable = [n for n, p in (("W", self.W), ("b", self.b)) if p is not None
                     and p.requires_grad]
        if trainable:
            raise ValueError(
                f"LoRALinear: the base {' and '.join(trainable)} must stay frozen "
                f"(requires_grad=False): backward computes no gradient for the base; "
                f"call requires_grad_(False) on it again, or remove_lora to train a "
                f"plain Linear")
        K = select(dy.dtype)
        if not isinstance(cache, LoRACache):  # merged: y = x W0 + b0, only dx flows
            return K.frozen_linear_backward(dy, cache, self.W.data)
        dx, dA, dB = K.lora_backward(dy, cache, self.W.data, self.A.data, self.B.data,
                                     self.scale)
        if self.A.requires_grad:
            self.A.grad += dA
        if self.B.requires_grad:
            self.B.grad += dB
        return dx

    # -- merging ------------------------------------------------------------------------
    def delta(self) -> np.ndarray:
        """The update scale A B, (D_in, D_out), in the layer's dtype."""
        return (self.scale * self.A.data) @ self.B.data

    def merge(self) -> "LoRALinear":
        """W0 <- W0 + scale A B, into ``W.data``; forward then skips the adapter
        (see the class docstring)."""
        if self.merged:
            raise ValueError("LoRALinear.merge: already merged (call unmerge first)")
        self.W.data[...] = self.W.data + self.delta()
        self.merged = True
        return self

    def unmerge(self) -> "LoRALinear":
        """W0 <- W0 - scale A B, into ``W.data``: undoes ``merge`` (up to one
        rounding per entry)."""
        if not self.merged:
            raise ValueError("LoRALinear.unmerge: not merged")
        self.W.data[...] = self.W.data - self.delta()
        self.merged = False
        return self

    def to_linear(self, merge: bool = True) -> Linear:
        """A plain ``Linear`` (new, trainable Parameters holding copies) with
        W = W0 + scale A B (``merge=True``) or the base W0."""
        lin = Linear(self.in_features, self.out_features, bias=self.b is not None,
                     dtype=self.dtype, rng=0)
        W_now = self.W.data  # W0, or W0 + scale A B when merged
        if merge:
            W = W_now if self.merged else W_now + self.delta()
        else:
            W = W_now - self.delta() if self.merged else W_now
        lin.W.data = np.array(W, copy=True)
        if self.b is not None:
            lin.b.data = self.b.data.copy()
        return lin

    # -- the adapters alone ---------------------------------------------------------------
    def adapter_state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """{"A": ..., "B": ...}: copies of the adapter (see ``adapter_state_dict``)."""
        return adapter_state_dict(self)

    def load_adapter_state_dict(self, state_dict, strict: bool = True) -> dict:
        return load_adapter_state_dict(self, state_dict, strict)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.b is not None}, r={self.r}, alpha={self.alpha:g}, "
                f"dropout={self.dropout}, merged={self.merged}")


# -- whole models ----------------------------------------------------------------------------


def _lora_modules(module: Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoRALinear)]


def _key(path: str, attr: str) -> str:
    return f"{path}.{attr}" if path else attr


def lora_parameters(module: Module) -> list[tuple[str, Parameter]]:
    """``(dotted.name, Parameter)`` of every adapter's A and B in the tree: the
    trainable parameters LoRA adds (the wrapped bases' W and b are frozen), for
    an optimizer that should train the adapters alone:
    ``AdamW(lora_parameters(model))``.  The model's other parameters, not wrapped
    by apply_lora, are still trainable (``AdamW(model)`` would train them too);
    freeze them with ``model.requires_grad_(False)`` *before* ``apply_lora``, as
    peft does, and ``model.trainable_parameters()`` is then the adapters alone."""
    return [(_key(path, attr), getattr(m, attr)) for path, m in _lora_modules(module)
            for attr in ("A", "B")]


def adapter_state_dict(module: Module) -> "OrderedDict[str, np.ndarray]":
    """Copies of the adapters alone: ``path.A``, ``path.B`` for every LoRALinear in
    the tree (their dotted paths as in ``state_dict``).  r is A's second dim;
    alpha, dropout and the target names are configuration, kept by the caller
    (as peft's adapter_config.json)."""
    return OrderedDict((name, p.data.copy()) for name, p in lora_parameters(module))


def load_adapter_state_dict(module: Module, state_dict, strict: bool = True) -> dict:
    """Copy adapters saved by ``adapter_state_dict`` into the tree's LoRALinears.

    Shapes must match (every offending key is named); with ``strict`` a missing
    or unexpected key is an error too.  A merged layer is unmerged, loaded and
    merged again, so its ``W`` holds the new update.  Returns
    ``{"missing_keys": [...], "unexpected_keys": [...]}``.
    """
    who = f"{type(module).__name__}.load_adapter_state_dict"
    own = OrderedDict(lora_parameters(module))
    if not own:
        raise ValueError(f"{who}: the module holds no LoRALinear")
    arrays, missing, unexpected, problems = match_state(own, state_dict, strict)
    for key, value in arrays.items():
        if not np.isfinite(value).all():
            problems.append(f"{key}: contains NaN/inf")
    if problems:
        raise ValueError(f"{who}: " + "; ".join(problems))
    for path, m in _lora_modules(module):
        keys = {attr: _key(path, attr) for attr in ("A", "B")}
        if not any(k in arrays for k in keys.values()):
            continue
        was_merged = m.merged
        if was_merged:
            m.unmerge()
        for attr, key in keys.items():
            if key in arrays:
                getattr(m, attr).data = arrays[key].astype(m.dtype, copy=True)
        if was_merged:
            m.merge()
    return {"missing_keys": missing, "unexpected_keys": unexpected}


def _find_children(module: Module, wanted) -> list[tuple]:
    """Every child slot ``(path, parent, attr, index, child)`` (index None for a plain
    attribute, i for item i of a list or tuple attribute) with ``wanted(path, attr,
    child)``."""
    found = []
    for path, parent in module.named_modules():
        for attr, value in vars(parent).items():
            if isinstance(value, Module):
                if wanted(_key(path, attr), attr, value):
                    found.append((_key(path, attr), parent, attr, None, value))
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module) and wanted(_key(path, f"{attr}.{i}"), attr, item):
                        found.append((_key(path, f"{attr}.{i}"), parent, attr, i, item))
    order = {path: i for i, (path, _) in enumerate(module.named_modules())}
    return sorted(found, key=lambda slot: order.get(slot[0], len(order)))  # the tree's order


def _replace(found: list[tuple], new: dict) -> list[str]:
    """Put ``new[id(child)]`` into every slot of ``found``; returns their paths."""
    for path, parent, attr, index, child in found:
        if index is None:
            setattr(parent, attr, new[id(child)])
            continue
        value = getattr(parent, attr)
        if isinstance(value, list):
            value[index] = new[id(child)]
        else:
            items = list(value)
            items[index] = new[id(child)]
            setattr(parent, attr, type(value)(items))
    return [path for path, *_ in found]


def _split_fused(module: Module, targets) -> list:
    """Split the fused q/k/v projection of every parent whose parts a target names
    (``q_proj``, or a path ending in ``.q_proj``, ...); returns the parents split."""
    split = []
    for path, parent in module.named_modules():
        if not (callable(getattr(parent, "split_in_proj", None))
                and getattr(parent, "in_proj", None) is not None):
            continue
        if any(t == part or t == _key(path, part) for t in targets for part in _SPLIT_PARTS):
            parent.split_in_proj()
            split.append(parent)
    return split


def apply_lora(module: Module, targets, r: int, alpha: float | None = None,
               dropout: float = 0.0, *, init: str = "gaussian", rng=None) -> list[str]:
    """Replace the named ``Linear`` children of ``module``'s tree by ``LoRALinear``
    wrappers (in place); returns the dotted paths wrapped.

    ``targets``: names matched against each child's attribute name (``"linear1"``
    matches every FFN's first layer, as peft's ``target_modules``) or its full
    dotted path (``"layers.0.ffn.linear2"``).  Every target must match at least one
    child; a match that is not a plain ``Linear`` (a TiedLinear, an already
    wrapped layer, a whole block) is refused by name.

    The wrapped layer must be called through its ``forward``/``backward`` by its
    parent.  PositionwiseFeedForward (``linear1``, ``linear2``),
    SwiGLUFeedForward (``gate_proj``, ``up_proj``, ``down_proj``), output
    ``Linear`` layers and ``MultiHeadAttention`` (``out_proj``; ``in_proj``, one
    adapter over the fused [W_q | W_k | W_v], self-attention only; ``q_proj``,
    ``k_proj``, ``v_proj``, for which the fused projection is first split into
    three, ``split_in_proj``: the same function in three GEMMs) are.  A Linear whose weight is
    tied to another parameter is refused too (the wrapper freezes the base's own
    Parameter and ``merge`` writes into it: the other user would be frozen and
    changed with it).  Each wrapper's A is drawn from its own stream of
    ``rng``; the wrapped bases' W and b become frozen (``requires_grad=False``),
    nothing else changes its flag.
    """
    who = "apply_lora"
    if not isinstance(module, Module):
        raise TypeError(f"{who}: module must be a Module, got {type(module).__name__}")
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{who}: targets must be a non-empty list of names, got {targets!r}")
    rng = as_rng(rng)
    split = _split_fused(module, targets)  # q_proj/k_proj/v_proj named: make them exist
    owners: dict[int, list[str]] = {}  # after the split: the fused weights are gone
    for name, p in module._named_parameters_all():
        owners.setdefault(id(p), []).append(name)
    hit = {t: 0 for t in targets}

    def wanted(path, attr, child):
        names = [t for t in targets if t == attr or t == path]
        for t in names:
            hit[t] += 1
        return bool(names)

    def check(path, parent, child, paths):
        if isinstance(child, LoRALinear):
            raise ValueError(f"{who}: {path!r} is already a LoRALinear")
        if type(child) is not Linear:
            raise TypeError(f"{who}: {path!r} is a {type(child).__name__}, not a Linear")
        for pname in ("W", "b"):
            p = getattr(child, pname)
            others = [n for n in owners.get(id(p), []) if n not in
                      {_key(q, pname) for q in paths}]
            if p is not None and others:
                raise ValueError(f"{who}: {path}.{pname} is tied to {', '.join(others)}; "
                                 f"freezing and merging into it would change that too")

    try:
        found = _find_children(module, wanted)
        unmatched = [t for t, n in hit.items() if n == 0]
        if unmatched:
            linears = [name for name, m in module.named_modules() if type(m) is Linear]
            raise ValueError(f"{who}: no child named {', '.join(map(repr, unmatched))} "
                             f"(Linear children: {', '.join(linears) or 'none'})")
        for path, parent, _, _, child in found:  # every check before any change
            check(path, parent, child, [q for q, *_, c in found if c is child])
    except Exception:
        for parent in split:  # nothing changed after all
            parent.fuse_in_proj()
        raise
    new = {}
    for _, _, _, _, child in found:  # a Linear shared by two parents gets one wrapper
        if id(child) not in new:
            new[id(child)] = LoRALinear(child, r, alpha, dropout, init=init,
                                        rng=rng.spawn(1)[0])
    return _replace(found, new)


def remove_lora(module: Module, merge: bool = True) -> list[str]:
    """Replace every ``LoRALinear`` in the tree by a plain ``Linear`` (in place):
    W = W0 + scale A B with ``merge=True`` (peft's ``merge_and_unload``), the base
    W0 otherwise.  The model's ``state_dict`` keys are then those it had before
    ``apply_lora``; the new Linears' Parameters are trainable (copies: the
    LoRALinear objects are left as they were; a q/k/v projection that
    ``apply_lora`` split is fused again).  Returns the dotted paths replaced."""
    found = _find_children(module, lambda path, attr, child: isinstance(child, LoRALinear))
    new = {id(child): child.to_linear(merge) for *_, child in found}
    paths = _replace(found, new)
    for _, parent, attr, _, _ in found:
        if attr in _SPLIT_PARTS and callable(getattr(parent, "fuse_in_proj", None)):
            parent.fuse_in_proj()
    return paths
