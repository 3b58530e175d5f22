"""The fuzz engine: valid arguments from a ``Spec``, one mutation, and the judge.

The judge's rule (issue 10): a call either works correctly or raises
ValueError/TypeError whose message names the layer and the argument.

Works correctly means: every output is finite (no silent NaN), float outputs
keep the computing dtype, backward with a random upstream gradient gives
finite input gradients of the inputs' shapes, a mutation that keeps the
values (a strided view, a read-only array, int32 ids, a list) gives the same
result as the plain input, and (eval mode) row b of the output is what row b
alone gives.  Anything else -- an IndexError, an AttributeError, a numpy
ValueError without the layer's name, an accepted NaN -- is a failure whose
report holds everything needed to replay it.
"""

from __future__ import annotations

import collections
import copy
import re

import numpy as np

from .specs import Arg, Spec

# calls made per spec, and how they ended ("ok" / "error"), for the summary
COUNTS: dict = collections.defaultdict(collections.Counter)

FLOAT_MUTATIONS = ("batch+1", "float16", "int64", "bool", "object", "complex", "other_float",
                   "nan", "inf", "-inf", "rank+1", "rank-1", "last+1", "scalar", "list", "none",
                   "string", "strided", "readonly")
IDS_MUTATIONS = ("batch+1", "negative", "vocab", "huge", "int_min", "uint64_max", "float", "bool",
                 "object", "int32", "uint8", "rank+1", "rank-1", "list", "none", "string",
                 "readonly")
MASK_MUTATIONS = ("batch+1", "int", "float", "object", "list", "shape+1", "rank+1", "rank-1",
                  "string", "all_true", "readonly")
AMASK_MUTATIONS = ("batch+1", "two", "negative", "float", "bool", "object", "shape+1", "rank-1",
                   "string")
LENGTHS_MUTATIONS = ("batch+1", "negative", "too_long", "float", "shape+1", "bool", "list",
                     "zeros")
OFFSET_MUTATIONS = ("negative", "too_large", "float", "array0d", "bool", "string")
COUNT_MUTATIONS = ("negative", "zero", "float", "array0d", "bool", "string", "none")
MUTATIONS = {"float": FLOAT_MUTATIONS, "ids": IDS_MUTATIONS, "mask": MASK_MUTATIONS,
             "amask": AMASK_MUTATIONS, "lengths": LENGTHS_MUTATIONS, "offset": OFFSET_MUTATIONS,
             "count": COUNT_MUTATIONS}
# mutations that keep the values: a call that works must give what the plain input gives,
# and the first four must not be refused when the plain input is accepted
MUST_WORK = {"strided", "readonly", "int32", "uint8"}


def preserves_values(kind: str, mutation: str | None) -> bool:
    return mutation in MUST_WORK or mutation == "list" or (kind, mutation) == ("amask", "bool")

# mutations that put a non-finite value in: a successful call is a silent NaN
NON_FINITE = {"nan", "inf", "-inf"}

DEFAULT_SIZES = {"B": (0, 3), "T": (0, 4), "S": (0, 4)}


def shape_of(arg: Arg, sizes: dict) -> tuple:
    return tuple(sizes[d] if isinstance(d, str) else d for d in arg.shape)


def valid_value(arg: Arg, sizes: dict, dtype, rng: np.random.Generator):
    shape = shape_of(arg, sizes)
    if arg.kind == "float":
        return (arg.scale * rng.standard_normal(shape)).astype(dtype)
    if arg.gen is not None:
        return arg.gen(rng, shape)
    if arg.kind == "ids":
        return rng.integers(0, arg.vocab, shape)
    if arg.kind == "lengths":
        return rng.integers(0, sizes["T"] + 1, shape)
    if arg.kind == "offset":
        return int(rng.integers(0, 2))
    if arg.kind == "count":
        return int(rng.integers(1, 4))
    raise AssertionError(arg.kind)


def valid_kwargs(spec: Spec, sizes: dict, dtype, rng, present: dict | None = None) -> dict:
    kw = {}
    for arg in spec.args:
        if arg.optional and present is not None and not present.get(arg.name, True):
            continue
        kw[arg.name] = valid_value(arg, sizes, dtype, rng)
    return kw


def mutate(value, arg: Arg, mutation: str, dtype, rng, sizes):
    """The argument after ``mutation`` (see the *_MUTATIONS tables)."""
    a = value
    other = np.float64 if np.dtype(dtype) == np.float32 else np.float32
    if mutation == "none":
        return None
    if mutation == "string":
        return "abc"
    if mutation == "list":  # (an empty array's list would lose its shape)
        return np.asarray(a).tolist() if np.size(a) else a
    if mutation == "batch+1":  # one row more than the other arguments have
        if arg.batch_axis is None or not isinstance(a, np.ndarray) or a.ndim <= arg.batch_axis:
            return a
        shape = list(a.shape)
        shape[arg.batch_axis] = 1
        extra = np.zeros(shape, a.dtype)  # zeros: a valid id, a valid mask, a valid length
        return np.concatenate([a, extra], axis=arg.batch_axis)
    if mutation == "readonly":
        a = np.array(a)
        a.setflags(write=False)
        return a
    if arg.kind == "float":
        if mutation in ("float16", "int64", "bool", "object", "complex", "other_float"):
            target = {"float16": np.float16, "int64": np.int64, "bool": np.bool_,
                      "object": object, "complex": np.complex64, "other_float": other}[mutation]
            return a.astype(target)
        if mutation in NON_FINITE:
            if a.size == 0:
                return a
            a = a.copy()
            a.reshape(-1)[rng.integers(a.size)] = {"nan": np.nan, "inf": np.inf,
                                                    "-inf": -np.inf}[mutation]
            return a
        if mutation == "last+1":
            return np.concatenate([a, a[..., :1]], axis=-1) if a.ndim else a
        if mutation == "scalar":
            return 0.5
        if mutation == "strided":
            return np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a
    if arg.kind == "ids":
        if mutation in ("negative", "vocab", "huge", "int_min", "uint64_max"):
            a = np.array(a, dtype=np.uint64 if mutation == "uint64_max" else np.int64)
            if a.size:
                a.reshape(-1)[rng.integers(a.size)] = {
                    "negative": -1, "vocab": arg.vocab, "huge": 2**40,
                    "int_min": np.iinfo(np.int64).min,
                    "uint64_max": np.iinfo(np.uint64).max}[mutation]
            return a
        if mutation in ("float", "bool", "object", "int32", "uint8"):
            return a.astype({"float": np.float64, "bool": np.bool_, "object": object,
                             "int32": np.int32, "uint8": np.uint8}[mutation])
    if arg.kind == "mask":
        if mutation in ("int", "float", "object"):
            return a.astype({"int": np.int64, "float": np.float64, "object": object}[mutation])
        if mutation == "shape+1":
            return np.concatenate([a, a[..., :1]], axis=-1) if a.ndim else a
        if mutation == "all_true":
            return np.ones_like(a)
    if arg.kind == "amask":
        if mutation in ("two", "negative"):
            a = a.copy()
            if a.size:
                a.reshape(-1)[rng.integers(a.size)] = 2 if mutation == "two" else -1
            return a
        if mutation in ("float", "bool", "object"):
            return a.astype({"float": np.float64, "bool": np.bool_, "object": object}[mutation])
        if mutation == "shape+1":
            return np.concatenate([a, a[..., :1]], axis=-1)
    if arg.kind == "lengths":
        T = sizes["T"]
        if mutation in ("negative", "too_long"):
            a = a.copy()
            if a.size:
                a[rng.integers(a.size)] = -1 if mutation == "negative" else T + 1
            return a
        if mutation == "float":
            return a.astype(np.float64)
        if mutation == "bool":
            return a.astype(bool)
        if mutation == "shape+1":
            return np.concatenate([a, [0]])
        if mutation == "zeros":
            return np.zeros_like(a)
    if arg.kind == "count":
        return {"negative": -1, "zero": 0, "float": 2.0, "array0d": np.array(2),
                "bool": True}[mutation]
    if arg.kind == "offset":
        return {"negative": -1, "too_large": 10**6, "float": 1.0, "array0d": np.array(1),
                "bool": True}[mutation]
    if mutation == "rank+1":
        return np.asarray(a)[None].repeat(2, axis=0)
    if mutation == "rank-1":
        a = np.asarray(a)
        if a.ndim == 0:
            return a
        return a[0] if a.shape[0] else np.zeros(a.shape[1:], a.dtype)
    raise AssertionError(f"{arg.kind}: {mutation}")


# -- running and judging ----------------------------------------------------------------------
class FuzzFailure(AssertionError):
    pass


def _describe(v):
    if isinstance(v, np.ndarray):
        return f"array(shape={v.shape}, dtype={v.dtype})"
    if isinstance(v, list):
        return f"list(len={len(v)})"
    return repr(v)


def _outputs(out) -> list:
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return items


def _call(spec: Spec, module, kw):
    if spec.call is not None:
        return spec.call(module, kw)
    return module.forward(**kw)


def _is_float_array(a):
    return isinstance(a, (np.ndarray, np.floating)) and a.dtype.kind == "f"


def _grad_check_shapes(spec, module, kw, out, cache, rng, fail):
    outs = _outputs(out)
    douts = [np.asarray(rng.standard_normal(np.shape(o))).astype(o.dtype)
             if _is_float_array(o) else None for o in outs]
    dout = tuple(douts) if isinstance(out, (tuple, list)) else douts[0]
    frozen = copy.deepcopy(douts)
    module.zero_grad()
    grads = module.backward(dout, cache)
    for d, f in zip(douts, frozen):
        if d is not None and not np.array_equal(d, f):
            fail("backward modified dout in place")
    grads = () if grads is None else (grads if isinstance(grads, tuple) else (grads,))
    float_inputs = [(n, v) for n, v in kw.items() if _is_float_array(v)]
    if any(v is not None and not isinstance(v, np.ndarray) for v in kw.values()):
        return  # a list or scalar is converted inside: its gradient has no array to match
    if spec.call is None and grads and len(grads) != len(float_inputs):
        fail(f"backward returned {len(grads)} gradients for {len(float_inputs)} float inputs")
    for g, (n, v) in zip(grads, float_inputs):
        if g is None:
            continue
        if g.shape != v.shape:
            fail(f"gradient of {n} has shape {g.shape}, expected {v.shape}")
        if not np.isfinite(g).all():
            fail(f"gradient of {n} is not finite")
    for pname, p in module.named_parameters():
        if not np.isfinite(p.grad).all():
            fail(f"parameter gradient {pname} is not finite")


def _slice_batch(spec: Spec, kw: dict, rows: slice) -> dict:
    by_name = {a.name: a for a in spec.args}
    out = {}
    for n, v in kw.items():
        ax = by_name[n].batch_axis
        if ax is None or not isinstance(v, np.ndarray):
            out[n] = v
        else:
            out[n] = np.take(v, np.arange(v.shape[ax])[rows], axis=ax)
    return out


def _close(a, b, dtype):
    tol = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
    return np.allclose(a, b, rtol=tol, atol=tol)


def _accepted(spec: Spec, module, kw) -> bool:
    """Whether the call with ``kw`` (the arguments before the mutation) is accepted."""
    if kw is None:
        return True
    try:
        _call(spec, module, kw)
    except (ValueError, TypeError):
        return False
    return True


def run_case(spec: Spec, module, kw: dict, *, dtype, target: str | None, mutation: str | None,
             rng_seed: int, baseline=None, check_batch: bool = True, plain: dict | None = None):
    """Call, judge, and return "ok" or "error" (raises FuzzFailure on a violation)."""
    rng = np.random.default_rng(rng_seed)
    record = f"{spec.name}[{np.dtype(dtype)}] {target}<-{mutation}: " + ", ".join(
        f"{k}={_describe(v)}" for k, v in kw.items())

    def fail(why):
        raise FuzzFailure(f"{why}\n  case: {record}")

    names = [a.name for a in spec.args] + list(spec.state_names)
    snapshot = {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}
    COUNTS[spec.name]["calls"] += 1
    try:
        out, cache = _call(spec, module, kw)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        # The layer: the one called, or one of its own sub-layers where the check lives
        # (``Encoder: src_pad_mask ...`` from Seq2Seq) -- but then under the argument
        # name the caller used: ``MultiHeadAttention: key_padding_mask`` is not enough
        # when the caller passed one of three masks.
        layers = {spec.owner} | ({type(m).__name__ for _, m in module.named_modules()}
                                 if module is not None else set())
        if not any(re.search(rf"\b{re.escape(n)}\b", msg) for n in layers):
            fail(f"{type(exc).__name__} does not name the layer {spec.owner!r}: {msg!r}")
        wanted = [target] if target is not None else names
        if mutation in ("other_float", "list", "batch+1", "rank+1", "rank-1", "last+1",
                        "shape+1"):
            wanted = names  # a mismatch between two arguments may be reported at either
        if (not any(re.search(rf"\b{re.escape(w)}\b", msg) for w in wanted)
                and _accepted(spec, module, plain)):
            # (when the plain arguments are refused too, that earlier problem may come first)
            fail(f"{type(exc).__name__} names none of the arguments {wanted}: {msg!r}")
        if not msg.startswith(spec.owner):
            COUNTS[spec.name]["error_named_by_sublayer"] += 1
        if baseline is not None and mutation in MUST_WORK:
            fail(f"a value-preserving mutation was refused: {msg!r}")
        COUNTS[spec.name]["error"] += 1
        return "error"
    except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
        fail(f"{type(exc).__name__} escaped: {exc!r}")
    for k, v in snapshot.items():
        if not np.array_equal(kw[k], v, equal_nan=True):
            fail(f"forward modified its input {k} in place")
    if mutation in NON_FINITE and isinstance(kw.get(target), np.ndarray) and kw[target].size:
        fail("a non-finite input was accepted silently")
    outs = _outputs(out)
    for i, o in enumerate(outs):
        if isinstance(o, (np.ndarray, np.generic)) and o.dtype.kind in "fc":
            if not np.isfinite(o).all():
                fail(f"output {i} holds NaN/inf for finite inputs (silent NaN)")
            if not spec.float_only and o.dtype != np.dtype(dtype):
                fail(f"output {i} has dtype {o.dtype}, the layer computes in {np.dtype(dtype)}")
    if baseline is not None:
        for i, (o, b) in enumerate(zip(outs, _outputs(baseline))):
            if isinstance(o, np.ndarray) and not (o.shape == b.shape and _close(o, b, dtype)):
                fail(f"output {i} differs from the unmutated input's")
    if spec.backward and cache is not None:
        _grad_check_shapes(spec, module, kw, out, cache, rng, fail)
    if (check_batch and spec.batch_consistent and not getattr(module, "training", False)
            and (target is None or baseline is not None)
            and not any(isinstance(v, list) for v in kw.values())):
        B = _batch_size(spec, kw)
        if B is not None and B >= 2:
            one, _ = _call(spec, module, _slice_batch(spec, kw, slice(1, 2)))
            axes = spec.out_batch_axes or (0,) * len(outs)
            for i, (o, p) in enumerate(zip(outs, _outputs(one))):
                ax = axes[i] if i < len(axes) else 0
                if ax is None or not isinstance(o, np.ndarray):
                    continue
                if not _close(np.take(o, [1], axis=ax), p, dtype):
                    fail(f"output {i}: row 1 of the batch differs from row 1 run alone")
    COUNTS[spec.name]["ok"] += 1
    return "ok"


def _batch_size(spec: Spec, kw: dict):
    for a in spec.args:
        v = kw.get(a.name)
        if a.batch_axis is not None and isinstance(v, np.ndarray) and v.ndim > a.batch_axis:
            return v.shape[a.batch_axis]
    return None


_MODULES: dict = {}


def module_for(spec: Spec, dtype, training: bool):
    key = (spec.name, np.dtype(dtype).name)
    if key not in _MODULES:
        _MODULES[key] = spec.build(dtype)
    m = _MODULES[key]
    if m is not None:
        m.train(training)
    return m
