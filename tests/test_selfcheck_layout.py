"""The layout of ``numtransformer gradcheck``: the ``Case`` type lives in
``numtransformer.gradcheck``, every case in ``numtransformer.cases`` (one module per
part of the layer tree), and the runner ``numtransformer.selfcheck`` is imported by
the CLI alone.  Imports point one way: cases -> layers, runner -> cases; no layer
imports its cases and no case imports the runner."""

from __future__ import annotations

import ast
from pathlib import Path

import numtransformer

PACKAGE = Path(numtransformer.__file__).parent
RUNNER = "numtransformer.selfcheck"
CASES = "numtransformer.cases"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth of its body), absolute; for
    ``from X import y`` both X and X.y, since y may be a submodule."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _importers_of(target: str) -> set[str]:
    return {_module_name(path) for path in PACKAGE.rglob("*.py")
            if any(m == target or m.startswith(target + ".") for m in _imports(path))}


def test_the_import_resolver_sees_relative_imports():
    assert RUNNER in _imports(PACKAGE / "cli.py")  # `from .selfcheck import run_all`
    assert "numtransformer.gradcheck.Case" in _imports(PACKAGE / "cases" / "layers.py")
    assert "numtransformer.cases.attention" in _imports(PACKAGE / "cases" / "__init__.py")


def test_only_the_cli_imports_the_runner():
    assert _importers_of(RUNNER) == {"numtransformer.cli"}


def test_the_cases_never_import_the_runner():
    for path in (PACKAGE / "cases").rglob("*.py"):
        imported = _imports(path)
        assert not any(m == RUNNER or m.startswith(RUNNER + ".") for m in imported), path.name


def test_no_layer_imports_the_cases():
    # layers/, attention/, recurrent/, models/, pretrained/, interop/ and every other
    # module: only the cases themselves and the runner import numtransformer.cases
    importers = _importers_of(CASES)
    allowed = {m for m in importers if m in (RUNNER, CASES) or m.startswith(CASES + ".")}
    assert importers - allowed == set()


def test_no_package_keeps_its_own_cases_module():
    stray = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*cases*.py")]
    assert stray == [], stray


def test_all_cases_collects_every_module_with_unique_names():
    import importlib

    from numtransformer.cases import all_cases

    cases = all_cases()
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    collected = {id(case) for case in cases}
    for path in sorted((PACKAGE / "cases").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"{CASES}.{path.stem}")
        assert module.CASES, path.name
        assert all(id(case) in collected for case in module.CASES), path.name


def test_case_type_lives_beside_gradcheck_and_old_imports_still_work():
    import importlib

    from numtransformer.cases import all_cases
    from numtransformer.gradcheck import Case
    from numtransformer.selfcheck import CASES as core
    from numtransformer.selfcheck import Case as OldCase
    from numtransformer.selfcheck import all_cases as old_all_cases

    assert "Case" in importlib.import_module("numtransformer.gradcheck").__all__
    assert OldCase is Case
    assert all(isinstance(case, Case) for case in all_cases())
    assert [c.name for c in old_all_cases()] == [c.name for c in all_cases()]
    assert [c.name for c in all_cases()[:len(core)]] == [c.name for c in core]
