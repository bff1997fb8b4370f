"""The package's shape: what each package is, module names, which way imports run."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.parent for p in (ROOT / "donnadb").glob("*/__init__.py"))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_each_package_says_what_it_is(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    # More than the package's own name: a sentence a reader can act on.
    assert len(doc.split()) >= 5, f"{package.name}/__init__.py: {doc!r}"


def test_no_module_is_named_like_a_standard_library_module():
    clashes = [str(p.relative_to(ROOT)) for p in (ROOT / "donnadb").rglob("*.py")
               if p.stem in sys.stdlib_module_names]
    assert clashes == []


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_uses_the_package_not_the_tests(path):
    assert not [n for n in _imported(path) if n == "tests" or n.startswith("tests.")]
