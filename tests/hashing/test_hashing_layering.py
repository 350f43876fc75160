"""Layering of the hashing side: acpsearch.hashing imports no other acpsearch package but
acpsearch.errors, acpsearch.trust (the factory policy) sits below acpsearch.checkpoint, and
acpsearch.checkpoint sits above hashing and pruning (neither imports it). Imports inside functions
count too. Plus the one helper for optional extras, acpsearch._imports.try_import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from acpsearch._imports import try_import
from acpsearch.errors import SpecError

PKG = Path(__file__).resolve().parents[2] / "acpsearch"


def _acpsearch_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("acpsearch"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("acpsearch"):
            out.add(node.module)
    return out


def _files(rel: str) -> list[Path]:
    p = PKG / rel
    return sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]


@pytest.mark.parametrize(
    "part,allowed",
    [
        ("hashing", ("acpsearch.errors", "acpsearch.hashing")),
        ("trust", ("acpsearch.errors",)),
        ("_imports", ("acpsearch.errors",)),
    ],
)
def test_a_lower_part_imports_only_what_is_below_it(part, allowed):
    for f in _files(part):
        bad = sorted(m for m in _acpsearch_imports(f) if not any(m == a or m.startswith(a + ".") for a in allowed))
        assert not bad, f"{f.relative_to(PKG.parent)} imports {bad}"


@pytest.mark.parametrize("part", ["hashing", "pruning"])
def test_checkpoint_sits_above_hashing_and_pruning(part):
    for f in _files(part):
        assert not any(m.startswith("acpsearch.checkpoint") for m in _acpsearch_imports(f)), f


def test_try_import_names_the_missing_package_and_its_extra():
    with pytest.raises(SpecError) as exc:
        with try_import("export", "--format onnx"):
            import acpsearch_no_such_package  # noqa: F401
    assert str(exc.value) == (
        "--format onnx: needs the package acpsearch_no_such_package (pip install 'acpsearch[export]')"
    )
    with try_import("export", "--format onnx"):  # an installed package passes through
        import json  # noqa: F401
