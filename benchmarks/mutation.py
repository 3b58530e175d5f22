"""Mutation testing of the backward passes: how many planted bugs do the
gradient checks catch?

    python benchmarks/mutation.py            # every mutant (4-6 min on one busy core)
    python benchmarks/mutation.py --quick    # 4 mutants per kernel (about 1.5 min)
    python benchmarks/mutation.py --gradcheck fast   # the same, judged by fast mode

What is mutated: every backward kernel of ``numtransformer/functional/`` (each
function named ``*_backward``, ``sum_kv_groups``, ``projection_grads``, and
the nested ``backward`` of ``rope_position``), and the causal and sliding
window mask builders of ``numtransformer/attention/masks.py``.  Each mutant
changes one node of one function's syntax tree:

    swap       a - b -> b - a, a / b -> b / a, A @ B -> B @ A
    drop       a + b -> a or b, a - b -> a, a * b -> a or b, a / b -> a   (a term
               or a factor dropped; "accumulate": x = x + y -> x = y, the
               functional form of += -> =; AugAssign += -> = where it exists)
    sign       a + b <-> a - b, -a -> a, a returned gradient negated
    transpose  x.T -> x, x.swapaxes(..) -> x, x.transpose(..) -> x
    mask       np.where(m, a, b) -> a or b, x * mask -> x, x[keep] -> x,
               dropout_backward(dy, c) -> dy (a mask dropped in the backward)
    off-by-one an integer constant +-1 (axes, slices, triu's k); a comparison
               > <-> >=, < <-> <= (a causal mask off by one); == <-> !=,
               is <-> is not

The mutant is compiled from the module's source in memory and swapped in for
the real function wherever numtransformer (or a test module) refers to it;
the files on disk are never written.  Then the gradient checks that reach
that kernel run, fastest first, until one fails:

    * the gradchecks of every layer case that calls it
      (``numtransformer.cases``: what ``numtransformer gradcheck`` runs),
    * the oracle's kernel-level gradchecks (``numtransformer.oracle``, each
      family on ``oracle.examples.covering_cases``, which take every option
      once: every mask kind, fully blocked rows, length 1, every reduction,
      ..., and on three drawn cases),
    * the structural checks (causality of causal and sliding-window attention,
      padding of key-padded attention),
    * the tests of ``tests/test_mutant_killers.py``.

Which checks reach which kernel is measured, not declared: every check runs
once on the real code with each kernel wrapped by a recorder.  A mutant is
*killed* when a check fails (a wrong gradient) or raises (a crash: shapes
that no longer fit); *equivalent* when it computes the same function (listed
in ``EQUIVALENT_RULES`` below with the reason); else it *survives*.  The kill rate
is killed / (mutants - equivalent).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib
import inspect
import json
import pkgutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numtransformer.functional as functional  # noqa: E402
from numtransformer import oracle  # noqa: E402
from numtransformer.gradcheck import (check_causality, check_padding, gradcheck,  # noqa: E402
                                      gradcheck_fast)

TARGET_NAMES = {"sum_kv_groups", "projection_grads"}
MASK_MODULE = "numtransformer.attention.masks"
MASK_TARGETS = {"causal_mask", "sliding_window_mask"}
MASK_WORDS = ("mask", "valid", "keep")

# Mutants that compute the same function as the original: (module, function,
# operator, a regular expression matched against the description, the reason).
# Each was read and argued by hand; line numbers are left out so that edits
# elsewhere in a file do not unmark them.
_SIZE_1 = ("the indexed axis has length 1 (the product of a matrix with a column or a "
           "row vector), so index 0 and index -1 are the same entry")
EQUIVALENT_RULES = [
    ("*", "*", "off-by-one", r"^-1 -> -2 \(in .*reshape\(",
     "NumPy's reshape takes any negative size as 'infer this one' (NumPy 2.4): "
     "reshape(-2, n) is reshape(-1, n)"),
    ("attention", "location_score_backward", "sign", r"^return #1: dh -> -dh$",
     "dh is identically zero (the location score does not read the keys): -0 == 0"),
    ("linear", "embedding_backward", "off-by-one", r"^0 -> -1 \(in ids\.shape\[0\]\)",
     "ids was flattened to one axis just above: shape[0] is shape[-1]"),
    ("memnn", "memnn_hop_backward", "off-by-one", r"^0 -> -1 \(in \(:, (:, 0|0, :)\)\)", _SIZE_1),
    ("recurrent", "lstmn_step_backward", "off-by-one", r"^0 -> -1 \(in \((:, :, 0|:, 0)\)\)",
     _SIZE_1),
]


def equivalent_reason(m) -> str | None:
    import re
    short = m.module.rsplit(".", 1)[-1]
    for module, scope, op, pattern, reason in EQUIVALENT_RULES:
        if module in ("*", short) and scope in ("*", m.scope) and op == m.op \
                and re.search(pattern, m.description):
            return reason
    return None


# -- the mutants --------------------------------------------------------------------------

@dataclass
class Mutant:
    module: str  # "numtransformer.functional.norm"
    function: str  # the top-level function replaced
    scope: str  # the function mutated (function, or function.backward for a nested one)
    line: int
    op: str  # swap / drop / accumulate / sign / transpose / mask / off-by-one
    description: str  # "dx_hat - mean_dx_hat -> dx_hat"
    index: int  # the node's index in ast.walk order of the function
    variant: int
    status: str = ""  # killed / crashed / equivalent / survived / timeout
    by: str = ""  # the check that killed it, or the reason it is equivalent

    @property
    def ident(self) -> str:
        return f"{self.module.rsplit('.', 1)[-1]}:{self.scope}:{self.line}:{self.op}: " \
               f"{self.description}"


def _ident_of(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _ident_of(node.value)
    return ""


def _is_maskish(node) -> bool:
    name = _ident_of(node).lower()
    return any(w in name for w in MASK_WORDS)


def _int_const(node):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int):
        return -node.operand.value
    return None


def _const(v: int):
    return ast.Constant(v) if v >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-v))


_CMP_SWAP = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
             ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def variants(node, parent, int_parents: set):
    """(op, description, replacement node) for every mutation of one node."""
    u = ast.unparse
    out = []
    if isinstance(node, ast.BinOp):
        L, R, op = node.left, node.right, node.op
        acc = None
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1 \
                and isinstance(parent.targets[0], ast.Name) and isinstance(op, ast.Add):
            name = parent.targets[0].id
            acc = "L" if isinstance(L, ast.Name) and L.id == name else \
                "R" if isinstance(R, ast.Name) and R.id == name else None
        if isinstance(op, (ast.Sub, ast.Div, ast.MatMult)):
            out.append(("swap", f"{u(node)} -> {u(ast.BinOp(R, op, L))}", ast.BinOp(R, op, L)))
        if isinstance(op, ast.Add):
            out.append(("accumulate" if acc == "L" else "drop", f"{u(node)} -> {u(R)}", R))
            out.append(("accumulate" if acc == "R" else "drop", f"{u(node)} -> {u(L)}", L))
            out.append(("sign", f"{u(node)} -> {u(ast.BinOp(L, ast.Sub(), R))}",
                        ast.BinOp(L, ast.Sub(), R)))
        if isinstance(op, ast.Sub):
            out.append(("drop", f"{u(node)} -> {u(L)}", L))
            out.append(("sign", f"{u(node)} -> {u(ast.BinOp(L, ast.Add(), R))}",
                        ast.BinOp(L, ast.Add(), R)))
        if isinstance(op, ast.Mult):
            out.append(("mask" if _is_maskish(R) else "drop", f"{u(node)} -> {u(L)}", L))
            out.append(("mask" if _is_maskish(L) else "drop", f"{u(node)} -> {u(R)}", R))
        if isinstance(op, ast.Div):
            out.append(("drop", f"{u(node)} -> {u(L)}", L))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and _int_const(node) is None:
        out.append(("sign", f"{u(node)} -> {u(node.operand)}", node.operand))
    elif isinstance(node, ast.Attribute) and node.attr == "T" and isinstance(node.ctx, ast.Load):
        out.append(("transpose", f"{u(node)} -> {u(node.value)}", node.value))
    elif isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("swapaxes", "transpose"):
            out.append(("transpose", f"{u(node)} -> {u(f.value)}", f.value))
        if isinstance(f, ast.Attribute) and f.attr == "where" and len(node.args) == 3:
            a, b = node.args[1], node.args[2]
            out.append(("mask", f"{u(node)} -> {u(b)}", b))
            out.append(("mask", f"{u(node)} -> {u(a)}", a))
        if _ident_of(f) == "dropout_backward" and node.args:
            out.append(("mask", f"{u(node)} -> {u(node.args[0])}", node.args[0]))
    elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
            and _is_maskish(node.slice):
        out.append(("mask", f"{u(node)} -> {u(node.value)}", node.value))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP_SWAP:
        new = ast.Compare(node.left, [_CMP_SWAP[type(node.ops[0])]()], node.comparators)
        out.append(("off-by-one", f"{u(node)} -> {u(new)}", new))
    elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
        for k, elt in enumerate(node.value.elts):
            if isinstance(elt, ast.Constant):
                continue
            elts = list(node.value.elts)
            elts[k] = ast.UnaryOp(ast.USub(), elt)
            out.append(("sign", f"return #{k}: {u(elt)} -> -{u(elt)}",
                        ast.Return(ast.Tuple(elts, ast.Load()))))
    elif isinstance(node, ast.Return) and node.value is not None \
            and not isinstance(node.value, ast.Constant):
        out.append(("sign", f"return {u(node.value)} -> -({u(node.value)})",
                    ast.Return(ast.UnaryOp(ast.USub(), node.value))))
    elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
        new = ast.copy_location(ast.Assign([node.target], node.value, type_comment=None), node)
        out.append(("accumulate", f"{u(node)} -> {u(new)}", new))
    v = _int_const(node)
    if v is not None and id(node) not in int_parents:
        for w in (v + 1, v - 1):
            out.append(("off-by-one", f"{u(node)} -> {w} (in {u(parent)[:60]})", _const(w)))
    return out


def _scopes(tree: ast.Module, module_name: str):
    """(top-level FunctionDef, the node whose body is mutated, its label)."""
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        if module_name == MASK_MODULE:
            if fn.name in MASK_TARGETS:
                yield fn, fn, fn.name
            continue
        if fn.name.endswith("_backward") or fn.name in TARGET_NAMES:
            yield fn, fn, fn.name
            continue
        for inner in ast.walk(fn):
            if isinstance(inner, ast.FunctionDef) and inner is not fn \
                    and inner.name == "backward":
                yield fn, inner, f"{fn.name}.backward"


def _walk_with_parents(scope):
    nodes = []  # (node, parent) in a fixed order
    for parent in ast.walk(scope):
        for child in ast.iter_child_nodes(parent):
            nodes.append((child, parent))
    return nodes


def _skip(node, parent) -> bool:
    # the docstring, annotations and default arguments are not the computation
    if isinstance(parent, ast.Expr) and isinstance(node, ast.Constant):
        return True
    return isinstance(parent, (ast.arg, ast.arguments))


def enumerate_mutants(module_name: str) -> list[Mutant]:
    mod = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(mod))
    mutants = []
    for fn, scope, label in _scopes(tree, module_name):
        nodes = _walk_with_parents(scope)
        # the constant inside -1 is mutated as -1, not as 1
        int_parents = {id(n.operand) for n, _ in nodes if _int_const(n) is not None
                       and isinstance(n, ast.UnaryOp)}
        for index, (node, parent) in enumerate(nodes):
            if _skip(node, parent):
                continue
            for k, (op, desc, _) in enumerate(variants(node, parent, int_parents)):
                mutants.append(Mutant(module_name, fn.name, label,
                                      getattr(node, "lineno", getattr(parent, "lineno", 0)), op,
                                      desc, index, k))
    return mutants


def mutated_tree(m: Mutant):
    """(the module, the mutated top-level FunctionDef)."""
    mod = importlib.import_module(m.module)
    tree = ast.parse(inspect.getsource(mod))
    fn = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == m.function)
    scope = fn if m.scope == m.function else next(
        n for n in ast.walk(fn) if isinstance(n, ast.FunctionDef) and n is not fn
        and n.name == "backward")
    nodes = _walk_with_parents(scope)
    int_parents = {id(n.operand) for n, _ in nodes if _int_const(n) is not None
                   and isinstance(n, ast.UnaryOp)}
    node, parent = nodes[m.index]
    _, _, new = variants(node, parent, int_parents)[m.variant]
    for fld, value in ast.iter_fields(parent):
        if value is node:
            setattr(parent, fld, new)
            break
        if isinstance(value, list) and any(v is node for v in value):
            value[[i for i, v in enumerate(value) if v is node][0]] = new
            break
    else:
        raise RuntimeError(f"mutant {m.ident}: node not found in its parent")
    return mod, fn


def build_mutant(m: Mutant):
    """The mutated top-level function, compiled in memory."""
    mod, fn = mutated_tree(m)
    module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
    code = compile(module, inspect.getsourcefile(mod), "exec", dont_inherit=True,
                   flags=__import__("__future__").annotations.compiler_flag)
    namespace = dict(vars(mod))
    exec(code, namespace)
    return namespace[m.function]


# -- swapping a function everywhere it is referenced ------------------------------------------

def references(fn) -> list[tuple[object, str]]:
    refs = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name.startswith("numtransformer") or name.startswith("tests")):
            continue
        for attr, value in list(vars(mod).items()):
            if value is fn:
                refs.append((mod, attr))
    return refs


@contextlib.contextmanager
def swapped(refs, new):
    old = [getattr(mod, attr) for mod, attr in refs]
    for mod, attr in refs:
        setattr(mod, attr, new)
    try:
        yield
    finally:
        for (mod, attr), o in zip(refs, old):
            setattr(mod, attr, o)


# -- the checks -------------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    run: object  # () -> None, raises when the code under test is wrong
    seconds: float = 0.0
    reaches: set = field(default_factory=set)  # the target functions it calls


def _gc(mode):
    return gradcheck if mode == "full" else gradcheck_fast


def layer_checks(mode: str) -> list[Check]:
    from numtransformer.cases import all_cases
    from numtransformer.gradcheck import relu_margin
    from numtransformer.selfcheck import _GRADCHECK_OPTIONS, _MAX_DRAWS, RELU_MARGIN
    check = _gc(mode)
    out = []
    for i, case in enumerate(all_cases()):
        # as ``numtransformer gradcheck`` does: a draw with a ReLU input near 0 is redrawn
        for attempt in range(_MAX_DRAWS):
            seed = [0, i] + ([attempt] if attempt else [])
            module, inputs, kwargs = case.build(np.random.default_rng(seed))
            fkw = {k: v for k, v in kwargs.items() if k not in _GRADCHECK_OPTIONS}
            with quiet():
                if relu_margin(module, *inputs, **fkw) > RELU_MARGIN:
                    break

        def run(case=case, seed=seed):
            module, inputs, kwargs = case.build(np.random.default_rng(seed))
            kwargs = dict(kwargs)
            if mode != "full":
                kwargs.pop("max_entries", None)
            check(module, *inputs, **kwargs).assert_passed()
        out.append(Check(f"gradcheck {case.name}", run))
    return out


def oracle_checks(mode: str, per_family: int) -> list[Check]:
    from numtransformer.oracle.examples import covering_cases, sample_cases
    check = _gc(mode)
    out = []
    for family, fn in oracle.FUNCTIONS.items():
        cases = covering_cases(family) + sample_cases(family, per_family, seed=7)
        for i, case in enumerate(cases):
            def run(fn=fn, case=case):
                check(fn, **case).assert_passed()
            out.append(Check(f"oracle gradcheck {family} #{i}", run))
    return out


def structural_checks() -> list[Check]:
    from numtransformer.attention import MultiHeadAttention
    from numtransformer.attention.masks import causal_mask

    def mha(**kw):
        return MultiHeadAttention(8, 2, dropout=0.0, rng=np.random.default_rng(0),
                                  **kw).astype(np.float64)

    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    pad = np.zeros((2, 5), dtype=bool)
    pad[1, 3:] = True

    def causal():
        check_causality(mha(), x, x, x, attn_mask=causal_mask(5)).assert_passed()

    def window():
        check_causality(mha(window=2), x, x, x).assert_passed()

    def padding():
        check_padding(mha(), x, x, x, padding_mask=pad, key_padding_mask=pad,
                      output_padding=pad).assert_passed()

    return [Check("causality: causal self-attention", causal),
            Check("causality: sliding window", window),
            Check("padding: key-padded attention", padding)]


def killer_checks() -> list[Check]:
    try:
        killers = importlib.import_module("tests.test_mutant_killers")
    except ImportError:
        return []
    out = []
    for name, fn in vars(killers).items():
        if name.startswith("test_") and callable(fn) \
                and not inspect.signature(fn).parameters:
            out.append(Check(f"tests/test_mutant_killers.py::{name}", fn))
    return out


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def handler(signum, frame):
        raise Timeout()
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def trace(checks: list[Check], targets: dict) -> list[Check]:
    """Run every check once on the real code, recording the targets it calls;
    a check that fails on the real code is dropped (and reported)."""
    calls = set()
    wrappers = {}
    for key, (fn, refs) in targets.items():
        def wrapper(*a, __fn=fn, __key=key, **k):
            calls.add(__key)
            return __fn(*a, **k)
        wrappers[key] = wrapper
    stack = contextlib.ExitStack()
    for key, (fn, refs) in targets.items():
        stack.enter_context(swapped(refs, wrappers[key]))
    kept = []
    with stack, quiet():
        for c in checks:
            calls.clear()
            t0 = time.perf_counter()
            try:
                c.run()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001
                print(f"  (dropped: {c.name} fails on the real code: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]})", flush=True)
                continue
            c.seconds = time.perf_counter() - t0
            c.reaches = set(calls)
            kept.append(c)
    return kept


def run_mutant(m: Mutant, refs, checks: list[Check], limit: float, max_checks: int | None):
    try:
        new = build_mutant(m)
    except Exception as exc:  # noqa: BLE001
        m.status, m.by = "crashed", f"does not compile: {exc}"
        return
    relevant = sorted((c for c in checks if (m.module, m.function) in c.reaches),
                      key=lambda c: c.seconds)
    if max_checks is not None:
        relevant = relevant[:max_checks]
    if not relevant:
        m.status, m.by = "survived", "no check reaches this kernel"
        return
    with swapped(refs, new), quiet():
        for c in relevant:
            try:
                with time_limit(limit):
                    c.run()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Timeout:
                m.status, m.by = "killed", f"{c.name} (timed out)"
                return
            except BaseException as exc:  # noqa: BLE001  (pytest.fail is a BaseException)
                if isinstance(exc, AssertionError) or type(exc).__name__ == "Failed":
                    m.status, m.by = "killed", c.name
                else:
                    m.status, m.by = "crashed", f"{c.name}: {type(exc).__name__}"
                return
    reason = equivalent_reason(m)
    m.status = "equivalent" if reason else "survived"
    m.by = reason or f"passed {len(relevant)} checks"


def target_modules() -> list[str]:
    names = [f"numtransformer.functional.{m.name}"
             for m in pkgutil.iter_modules(functional.__path__)]
    return sorted(names) + [MASK_MODULE]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="at most 4 mutants per kernel, each of another operator (~2 min)")
    ap.add_argument("--gradcheck", choices=("full", "fast"), default="full",
                    help="judge with gradcheck (full) or gradcheck_fast (random projections)")
    ap.add_argument("--module", action="append", default=None,
                    help="only this module (e.g. norm); repeatable")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per check (60)")
    ap.add_argument("--only-gradchecks", action="store_true",
                    help="judge by the layer and oracle gradchecks alone (no structural "
                         "checks, no tests/test_mutant_killers.py): to compare --gradcheck "
                         "fast with full")
    ap.add_argument("--json", metavar="FILE", help="write every mutant's result to FILE")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    modules = target_modules()
    if args.module:
        modules = [m for m in modules if m.rsplit(".", 1)[-1] in args.module]
    mutants = [m for name in modules for m in enumerate_mutants(name)]
    # two operators can make the same program (x - 1 -> x by "drop" and by 1 -> 0):
    # keep the first; give repeated descriptions on one line a number
    seen_code, seen_id, unique = set(), {}, []
    for m in mutants:
        code = ast.unparse(mutated_tree(m)[1])
        if code in seen_code:
            continue
        seen_code.add(code)
        n = seen_id[m.ident] = seen_id.get(m.ident, 0) + 1
        if n > 1:
            m.description += f" [{n}]"
        unique.append(m)
    mutants = unique
    if args.quick:
        per_fn: dict = {}
        picked = []
        for m in mutants:
            seen = per_fn.setdefault((m.module, m.scope), [])
            if len(seen) < 4 and m.op not in [s.op for s in seen]:
                seen.append(m)
                picked.append(m)
        mutants = picked

    print(f"{len(mutants)} mutants in {len(modules)} modules; collecting the checks...",
          flush=True)
    checks = layer_checks(args.gradcheck) + oracle_checks(args.gradcheck, 3)
    if not args.only_gradchecks:
        checks += structural_checks() + killer_checks()
    targets = {}
    for m in mutants:
        key = (m.module, m.function)
        if key not in targets:
            fn = getattr(importlib.import_module(m.module), m.function)
            targets[key] = (fn, references(fn))
    checks = trace(checks, targets)
    print(f"{len(checks)} checks pass on the real code "
          f"({sum(c.seconds for c in checks):.1f} s for all)", flush=True)

    for i, m in enumerate(mutants):
        run_mutant(m, targets[m.module, m.function][1], checks, args.timeout, None)
        if m.status in ("survived", "equivalent"):
            print(f"  {m.status}: {m.ident} ({m.by})", flush=True)
        if (i + 1) % 100 == 0:
            print(f"  ... {i + 1}/{len(mutants)} mutants, "
                  f"{time.perf_counter() - t_start:.0f} s", flush=True)

    print()
    print(table(mutants))
    survivors = [m for m in mutants if m.status == "survived"]
    equivalent = [m for m in mutants if m.status == "equivalent"]
    if equivalent:
        print("\nEquivalent mutants (the same function; not counted):")
        for m in equivalent:
            print(f"  {m.ident}\n      {m.by}")
    if survivors:
        print("\nSurviving mutants:")
        for m in survivors:
            print(f"  {m.ident}  ({m.by})")
    print(f"\n{time.perf_counter() - t_start:.0f} s, gradcheck mode {args.gradcheck}"
          + (", --quick" if args.quick else ""))
    if args.json:
        Path(args.json).write_text(json.dumps([vars(m) | {"id": m.ident} for m in mutants],
                                              indent=1))
    return 0 if not survivors else 1


def table(mutants) -> str:
    rows = {}
    for m in mutants:
        key = m.module.rsplit(".", 1)[-1]
        r = rows.setdefault(key, {"mutants": 0, "killed": 0, "crashed": 0, "equivalent": 0,
                                  "survived": 0})
        r["mutants"] += 1
        r[m.status] += 1
    total = {k: sum(r[k] for r in rows.values()) for k in
             ("mutants", "killed", "crashed", "equivalent", "survived")}
    lines = ["| module | mutants | killed: wrong gradient | killed: crash | equivalent | "
             "survived | kill rate |", "|---|---|---|---|---|---|---|"]

    def rate(r):
        n = r["mutants"] - r["equivalent"]
        return f"{100.0 * (r['killed'] + r['crashed']) / n:.1f}%" if n else "-"

    for key in sorted(rows):
        r = rows[key]
        lines.append(f"| {key} | {r['mutants']} | {r['killed']} | {r['crashed']} | "
                     f"{r['equivalent']} | {r['survived']} | {rate(r)} |")
    lines.append(f"| **all** | {total['mutants']} | {total['killed']} | {total['crashed']} | "
                 f"{total['equivalent']} | {total['survived']} | **{rate(total)}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
