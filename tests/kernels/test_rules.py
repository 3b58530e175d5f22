"""The reference kernels stay the code a student checks with a pencil, and the
switch between reference and fast kernels does what its docstring says."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

import numtransformer as nt
from numtransformer import fast, functional, kernels
from numtransformer.kernels import get_kernels, select, set_kernels, use_kernels

FUNCTIONAL = pathlib.Path(functional.__file__).parent
# in-place NumPy functions whose first argument is written to
_WRITES_FIRST_ARG = {"copyto", "put", "place", "putmask", "fill_diagonal"}


def _arg_names(fn) -> set:
    a = fn.args
    return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs
            + ([a.vararg] if a.vararg else []) + ([a.kwarg] if a.kwarg else [])}


def _root(node):
    """The name an assignment target or call receiver is rooted at (x in x[i].y)."""
    while isinstance(node, (ast.Subscript, ast.Attribute, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _violations(path: pathlib.Path) -> list:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def say(node, what):
        found.append(f"{path.name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            if any("_parallel" in n or n in ("threading", "concurrent.futures") for n in names):
                say(node, "imports threads or _parallel")
        if isinstance(node, ast.Name) and node.id in ("_parallel", "einsum"):
            say(node, f"uses {node.id}")
        if isinstance(node, ast.Attribute) and node.attr in ("_parallel", "einsum"):
            say(node, f"uses .{node.attr}")
        if isinstance(node, ast.Call) and any(k.arg == "out" for k in node.keywords):
            say(node, "passes out=")
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.Lambda)):
            continue
        args = _arg_names(fn)
        for node in ast.walk(fn):
            if isinstance(node, ast.AugAssign) and _root(node.target) in args:
                say(node, f"augmented assignment to the argument {_root(node.target)!r}")
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if not isinstance(t, ast.Name) and _root(t) in args:
                        say(node, f"writes into the argument {_root(t)!r}")
            if isinstance(node, ast.Call) and node.args:
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                method_of_arg = isinstance(f, ast.Attribute) and _root(f.value) in args
                if name in _WRITES_FIRST_ARG and _root(node.args[0]) in args:
                    say(node, f"{name} writes into the argument {_root(node.args[0])!r}")
                if name == "at" and _root(node.args[0]) in args:  # np.add.at(arg, ...)
                    say(node, f"ufunc.at writes into the argument {_root(node.args[0])!r}")
                if method_of_arg and name in ("fill", "sort", "resize", "put", "itemset"):
                    say(node, f".{name} writes into the argument {_root(f.value)!r}")
    return found


def test_reference_kernels_have_no_threads_out_buffers_einsum_or_writes_to_arguments():
    files = sorted(FUNCTIONAL.glob("*.py"))
    assert len(files) >= 6
    found = [v for f in files for v in _violations(f)]
    assert not found, "reference kernels must read as their equations:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("y = x + 1\nx += 1", None),  # module level: not a kernel
    ("def f(x):\n    x += 1", "augmented assignment"),
    ("def f(x):\n    x[0] = 1", "writes into the argument"),
    ("def f(x):\n    np.add.at(x, [0], 1)", "ufunc.at"),
    ("def f(x):\n    np.copyto(x, 0)", "copyto"),
    ("def f(x):\n    return np.exp(x, out=x)", "out="),
    ("def f(x):\n    return np.einsum('i->', x)", "einsum"),
    ("from .._parallel import parallel_rows", "_parallel"),
    ("def f(x):\n    y = x.copy()\n    y += 1\n    y[0] = 2\n    np.add.at(y, [0], 1)\n    return y", ""),
])
def test_the_rule_checker_catches_each_kind(tmp_path, source, expected):
    path = tmp_path / "k.py"
    path.write_text(source)
    found = _violations(path)
    if not expected:
        assert not found
    else:
        assert any(expected in v for v in found), found


def test_fast_namespace_has_every_reference_kernel_with_the_same_signature():
    import inspect
    for name in functional.__all__:
        assert hasattr(fast, name), name
        ref, fst = getattr(functional, name), getattr(fast, name)
        if inspect.isfunction(ref) and fst is not ref:
            ref_params = list(inspect.signature(ref).parameters.values())
            fast_params = list(inspect.signature(fst).parameters.values())
            # the fast kernel takes the same parameters, first, in order; it may add
            # keyword options after them (out=)
            assert [(p.name, p.default) for p in fast_params[:len(ref_params)]] == \
                [(p.name, p.default) for p in ref_params], name
            assert all(p.default is not inspect.Parameter.empty
                       for p in fast_params[len(ref_params):]), name


def test_the_switch_modes(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    assert get_kernels() == "auto"
    assert select(np.float32) is fast and select(np.float64) is functional
    monkeypatch.setenv(kernels.ENV, "reference")
    assert select(np.float32) is functional
    monkeypatch.setenv(kernels.ENV, "fast")
    assert select(np.float64) is fast
    set_kernels("reference")
    try:
        assert select(np.float64) is functional
        with use_kernels("fast"):
            assert get_kernels() == "fast" and select(np.float64) is fast
            with use_kernels("reference"):
                assert select(np.float32) is functional
            assert select(np.float32) is fast
        assert get_kernels() == "reference"
    finally:
        set_kernels(None)
    assert get_kernels() == "fast"  # the environment's again
    monkeypatch.setenv(kernels.ENV, "quick")
    with pytest.raises(ValueError, match="NUMTRANSFORMER_KERNELS.*'auto', 'reference', 'fast'"):
        get_kernels()
    with pytest.raises(ValueError, match="use_kernels: mode must be one of"):
        with use_kernels("Fast"):
            pass
    with pytest.raises(ValueError, match="set_kernels"):
        set_kernels("all")


def test_gradcheck_runs_the_reference_kernels_unless_asked(monkeypatch):
    seen = []
    real = functional.layer_norm_forward

    def spy(*args, **kwargs):
        seen.append(kernels.get_kernels())
        return real(*args, **kwargs)

    monkeypatch.setattr(functional, "layer_norm_forward", spy)
    ln = nt.LayerNorm(4)
    x = np.random.default_rng(0).standard_normal((2, 4))
    set_kernels("fast")
    try:
        nt.gradcheck(ln, x).assert_passed()
        assert seen and set(seen) == {"reference"}
        n = len(seen)
        nt.gradcheck(ln, x, kernels="fast").assert_passed()  # the fast layer norm: no spy
        assert len(seen) == n
    finally:
        set_kernels(None)
