"""The layout is the architecture: import rules between acpsearch's packages, checked on the source.

Layers (lower never imports higher):  errors <- graph <- pruning <- encoder <- search  (plain libraries)
                                       errors <- hashing <- classification  (beside them)
checkpoint / export / devices / ... above the libraries, then `service` (the only package that may
import optuna, optuna_dashboard, ray or sqlalchemy), then `commands` and `cli` on top.

Imports are read from the AST of every module, so imports inside functions and under
`if TYPE_CHECKING:` count as much as top-level ones (the first test proves the reader sees them)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "acpsearch"
SERVICE_ONLY = {"optuna", "optuna_dashboard", "ray", "sqlalchemy"}
LIBRARIES = ("graph", "pruning", "encoder", "search", "hashing", "classification", "codelength")
MAX_LINES = 400
# what each library package may import from acpsearch (besides itself)
ALLOWED = {
    "graph": {"errors"},
    "pruning": {"errors", "graph"},
    "encoder": {"errors", "graph", "pruning"},
    "hashing": {"errors"},
    "classification": {"errors", "hashing"},
    "codelength": {"errors", "hashing"},
    "search": {"errors", "graph", "pruning", "encoder", "hashing"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, name: str, is_package: bool) -> set[str]:
    """Every module named by an import statement anywhere in `source` (absolute names)."""
    out: set[str] = set()
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - (node.level - 1)]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _graph() -> tuple[nx.DiGraph, dict[str, set[str]]]:
    g = nx.DiGraph()
    external: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        g.add_node(name)
        external[name] = set()
        for target in imports_of(path.read_text(), name, path.name == "__init__.py"):
            if target.split(".")[0] != "acpsearch":
                external[name].add(target.split(".")[0])
                continue
            while target and target not in MODULES:  # `from pkg import name` names an attribute
                target = target.rpartition(".")[0]
            if target and target != name:
                g.add_edge(name, target)
    return g, external


GRAPH, EXTERNAL = _graph()


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_reader_sees_function_local_and_type_checking_imports() -> None:
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from acpsearch.pruning.strategy import PruningStrategy\n"
        "def f():\n    import ray\n    from ..service import study\n    return study\n"
    )
    found = imports_of(src, "acpsearch.graph.core", is_package=False)
    assert {"acpsearch.pruning.strategy", "ray", "acpsearch.service", "acpsearch.service.study"} <= found


def test_no_import_cycle_between_acpsearch_modules() -> None:
    cycles = list(nx.simple_cycles(GRAPH))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:10])


@pytest.mark.parametrize("package", LIBRARIES)
def test_library_packages_import_no_service_dependency(package: str) -> None:
    bad = {
        m: sorted(EXTERNAL[m] & SERVICE_ONLY)
        for m in MODULES
        if package_of(m) == package and EXTERNAL[m] & SERVICE_ONLY
    }
    assert not bad, f"{package} imports service-only libraries: {bad}"


@pytest.mark.parametrize("package", LIBRARIES)
def test_library_packages_import_only_the_layers_below(package: str) -> None:
    bad = {}
    for m in MODULES:
        if package_of(m) != package:
            continue
        above = {t for t in GRAPH.successors(m) if package_of(t) not in ALLOWED[package] | {package}}
        if above:
            bad[m] = sorted(above)
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_only_the_service_and_the_cli_import_optuna_ray_or_sqlalchemy() -> None:
    bad = {
        m: sorted(EXTERNAL[m] & SERVICE_ONLY)
        for m in MODULES
        if EXTERNAL[m] & SERVICE_ONLY and package_of(m) not in ("service", "commands", "cli")
    }
    assert not bad, bad


def test_checkpoint_sits_above_hashing_and_pruning() -> None:
    importers = sorted(
        m
        for m in MODULES
        if package_of(m) in LIBRARIES and any(package_of(t) == "checkpoint" for t in GRAPH.successors(m))
    )
    assert not importers, f"library modules importing checkpoint: {importers}"


def test_no_command_imports_the_cli_entry_point() -> None:
    bad = sorted(m for m in MODULES if package_of(m) == "commands" and "acpsearch.cli" in GRAPH.successors(m))
    assert not bad, bad


def test_no_module_is_longer_than_the_limit() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_source_cites_files_outside_the_repository() -> None:
    cites = [
        f"{p.relative_to(ROOT.parent)}:{i}"
        for p in MODULES.values()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "DESIGN.md" in line or "FACTS.md" in line or "../shared" in line
    ]
    assert not cites, cites


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by basename (rootdir-relative, no packages), and the tests import
    shared helpers with `from conftest import ...`: two test files of one name, or a second
    conftest.py, break the collection of the whole suite."""
    tests = Path(__file__).resolve().parent
    names = [p.name for p in tests.rglob("*.py") if "fixtures" not in p.parts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"test module names used twice: {dupes}"
