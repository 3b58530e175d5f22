"""The layer contract: ``Parameter`` and ``Module``.

Every layer and every model in numtransformer follows one contract::

    out, cache = m.forward(*inputs, **options)   # cache: what backward needs
    dx = m.backward(dout, cache)                 # grads of the float inputs
    y = m(*inputs, **options)                    # forward, cache dropped

* The cache is *returned*, never stored on ``self``.  A module called several
  times before its backward (an RNN cell unrolled over time, a weight shared by
  two layers) therefore just works: each call has its own cache.
* ``backward`` returns the gradients of the float inputs, in the order they were
  passed (one array, a tuple when there are several, ``None`` when there are
  none: token ids and boolean masks get no gradient).  Parameter gradients are
  *added* to ``p.grad``, so gradients of a parameter used several times sum up.
* Shapes are batch-first ``(B, T, D)``; boolean masks use PyTorch's meaning
  (``True`` = may NOT attend / is padding).
* Outputs and returned gradients may share memory with the cache, the inputs or
  ``dout`` (ReLU returns the array its cache keeps; Dropout in eval returns its
  input).  Never modify them in place: write ``h = h + r``, not ``h += r``.

Frozen parameters.  ``Parameter(data, requires_grad=False)`` (or
``p.requires_grad_(False)``, or ``m.requires_grad_(False)`` for every parameter
of a subtree) marks a tensor as frozen, as PyTorch's ``requires_grad=False``.
A frozen parameter is still a parameter of its module: it is listed by
``named_parameters()`` / ``parameters()`` (pass ``trainable_only=True`` for the
trainable ones alone, as ``trainable_parameters()`` does), saved by
``state_dict()``, loaded by ``load_state_dict`` (strict keys included), cast by
``astype``, written to checkpoints and exchanged with PyTorch.  What skips it:
the optimizers (no update, no weight decay, no state: ``optim.Optimizer``),
``clip_grad_norm`` / ``global_grad_norm``, and ``gradcheck`` (which checks the
trainable tensors and reports a problem if a backward pass added anything to a
frozen one's grad).  A backward pass should not add to a frozen parameter's
grad: ``LoRALinear`` computes no gradient for its frozen base at all.  (Layers
that do not look at the flag still add theirs; that gradient is ignored by
everything above, but costs its GEMM.)  Freezing leaves ``grad`` as it is;
``zero_grad`` zeroes frozen and trainable grads alike.  The flag itself is not
part of the state (nor is it in PyTorch's ``state_dict``): the code that builds
a model sets it (``LoRALinear`` freezes its base), and a loaded state dict
keeps each parameter's flag as it was.

Input checks.  A public ``forward`` validates what it is given (dtype, rank,
widths, ids in range, masks) and scans float inputs for NaN/inf.  The scan is
O(N), so it runs only in the *outermost* forward: when a module's forward runs
inside another module's forward (a Linear inside an attention layer, a cell
inside the time loop), the outer module has already checked its inputs and the
inner scan is skipped.  ``Module`` records which module object is running the
outermost forward (see ``__init_subclass__``); a subclass whose forward calls
``super().forward`` is the same object, so it still counts as outermost.  Cheap
shape checks always run.
"""

from __future__ import annotations

import contextvars
import functools
from collections import OrderedDict
from typing import Iterator

import numpy as np

__all__ = ["Parameter", "Module", "is_outermost_call"]

# id() of the module object whose forward was called by user code and is still
# running, or None (see the module docstring).
_OUTERMOST: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "numtransformer_outermost_module", default=None
)


def is_outermost_call(layer=None) -> bool:
    """True when ``layer``'s running forward was called by user code, not by
    another module (with no ``layer``: when no other module's forward is running
    around the caller's)."""
    outer = _OUTERMOST.get()
    return outer is None or (layer is not None and outer == id(layer))


def _track_depth(forward):
    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        if _OUTERMOST.get() is not None:
            return forward(self, *args, **kwargs)
        token = _OUTERMOST.set(id(self))
        try:
            return forward(self, *args, **kwargs)
        finally:
            _OUTERMOST.reset(token)

    wrapped._tracks_depth = True
    return wrapped


class Parameter:
    """A tensor of a module: ``data``, its accumulated gradient ``grad``, and
    ``requires_grad`` (True: trainable; False: frozen, see the module docstring).

    ``grad`` always has the shape and dtype of ``data``.  Backward passes add to
    it (``p.grad += ...``); ``zero_grad`` resets it.
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad: bool = True):
        data = np.array(data, copy=True)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"Parameter: data must be a float32 or float64 array, got dtype {data.dtype}"
            )
        self.data = data
        self.grad = np.zeros_like(data)
        self.requires_grad = _check_flag("Parameter", requires_grad)

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def requires_grad_(self, requires_grad: bool = True) -> "Parameter":
        """Freeze (False) or unfreeze (True) this parameter; returns ``self``."""
        self.requires_grad = _check_flag("Parameter.requires_grad_", requires_grad)
        return self

    def astype(self, dtype) -> "Parameter":
        """Cast data and grad in place (the object identity is kept, so ties survive)."""
        self.data = self.data.astype(dtype)
        self.grad = self.grad.astype(dtype)
        return self

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


def match_state(own, state_dict, strict: bool) -> tuple:
    """Match a state dict against ``own`` ({name: Parameter}): returns (arrays,
    missing, unexpected, problems), ``arrays`` the numeric arrays of the right
    shapes by name, ``problems`` one line per offending key (missing and
    unexpected keys count only with ``strict``)."""
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems = []
    if strict and missing:
        problems.append("missing keys: " + ", ".join(missing))
    if strict and unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    arrays = {}
    for key, p in own.items():
        if key not in state_dict:
            continue
        value = np.asarray(state_dict[key])
        if value.dtype == object or not (
            np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
        ):
            problems.append(f"{key}: expected a numeric array, got dtype {value.dtype}")
        elif value.shape != p.shape:
            problems.append(f"{key}: expected shape {p.shape}, got {value.shape}")
        else:
            arrays[key] = value
    return arrays, missing, unexpected, problems


def _check_flag(who: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{who}: requires_grad must be a bool, got {type(value).__name__}")
    return bool(value)


class Module:
    """Base class of every layer and model (see the module docstring).

    Subclasses assign ``Parameter`` objects, child ``Module`` objects, and lists
    or tuples of child modules as plain attributes; ``named_parameters`` finds
    them in assignment order and names them with dotted paths
    (``layers.0.ffn.linear1.W``).  A parameter reachable under two names (tied
    weights) is listed once, under the first name.
    """

    training: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is not None and not getattr(forward, "_tracks_depth", False):
            cls.forward = _track_depth(forward)

    # -- the contract -----------------------------------------------------------
    def forward(self, *inputs, **options):
        """Return ``(out, cache)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout, cache):
        """Add parameter gradients to ``p.grad``; return the float inputs' gradients."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs, **options):
        out, _ = self.forward(*inputs, **options)
        return out

    # -- the tree -----------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """Yield ``(dotted.name, module)`` for this module and every descendant."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop(0)
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [
                (f"{name}.{child_name}" if name else child_name, child)
                for child_name, child in module.named_children()
            ]
            stack[0:0] = children

    def _named_parameters_all(self) -> Iterator[tuple[str, Parameter]]:
        """Every (name, parameter) pair, including second names of tied weights."""

        def walk(module: Module, prefix: str, on_path: set[int]):
            for name, value in vars(module).items():
                if isinstance(value, Parameter):
                    yield prefix + name, value
            for child_name, child in module.named_children():
                if id(child) in on_path:  # a cycle would recurse forever
                    continue
                yield from walk(child, f"{prefix}{child_name}.", on_path | {id(child)})

        yield from walk(self, "", {id(self)})

    def named_parameters(self, trainable_only: bool = False) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted.name, Parameter)``; a shared parameter appears once.
        Frozen parameters (``requires_grad=False``) are included unless
        ``trainable_only``."""
        seen: set[int] = set()
        for name, p in self._named_parameters_all():
            if id(p) not in seen:
                seen.add(id(p))
                if p.requires_grad or not trainable_only:
                    yield name, p

    def parameters(self, trainable_only: bool = False) -> list[Parameter]:
        return [p for _, p in self.named_parameters(trainable_only)]

    def trainable_parameters(self) -> list[tuple[str, Parameter]]:
        """``(dotted.name, Parameter)`` of the parameters with ``requires_grad``:
        what an optimizer updates (``AdamW(model.trainable_parameters())``)."""
        return list(self.named_parameters(trainable_only=True))

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Entries of every parameter (tied ones once); of the trainable ones alone
        with ``trainable_only``."""
        return sum(p.size for p in self.parameters(trainable_only))

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter of this subtree (as
        torch's ``Module.requires_grad_``); returns ``self``.  Grads are left as
        they are."""
        flag = _check_flag(f"{type(self).__name__}.requires_grad_", requires_grad)
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # -- state ----------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """A copy of every parameter under every name it has (tied weights twice)."""
        return OrderedDict((name, p.data.copy()) for name, p in self._named_parameters_all())

    def load_state_dict(self, state_dict, strict: bool = True) -> dict[str, list[str]]:
        """Copy arrays into the parameters, keeping each parameter's dtype.

        With ``strict=True`` any missing or unexpected key is an error; a shape
        mismatch is always an error.  Every offending key is named.  Returns
        ``{"missing_keys": [...], "unexpected_keys": [...]}``.
        """
        own = OrderedDict(self._named_parameters_all())
        arrays, missing, unexpected, problems = match_state(own, state_dict, strict)
        first_key: dict[int, str] = {}
        for key, value in arrays.items():  # tied weights: every name must hold the same value
            pid = id(own[key])
            if pid in first_key and not np.array_equal(arrays[first_key[pid]], value):
                problems.append(f"{key}: tied to {first_key[pid]} but holds a different value")
            first_key.setdefault(pid, key)
        if problems:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: " + "; ".join(problems)
            )
        for key, value in arrays.items():
            p = own[key]
            p.data = value.astype(p.dtype, copy=True)
            if p.grad.shape != p.data.shape:
                p.grad = np.zeros_like(p.data)
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def astype(self, dtype) -> "Module":
        """Cast every parameter (and its grad) to ``dtype``; returns ``self``."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}.astype: expected float32 or float64, got {dtype}")
        for p in self.parameters():
            p.astype(dtype)
        for _, m in self.named_modules():
            if "dtype" in vars(m):
                m.dtype = dtype
        return self

    # -- display --------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"
