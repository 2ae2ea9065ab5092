"""Small files and small functions (issue 15, house style): no module of the packages over MAX_MODULE_LINES
lines, no function over MAX_FUNCTION_LINES. Each test names every offender with its size, so one run says
what is left to split."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "worker", "store", "sandbox", "agent", "overnight", "bench", "web")
EXTRA_MODULES = ("migrations/env.py",)
"""Alembic's revisions (migrations/versions) are generated and never read as code; tests are not measured."""
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    found = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    return sorted(found + [ROOT / name for name in EXTRA_MODULES])


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every ``def``, methods and nested ones included: a nested function is measured on its own, and also
    counts within the function around it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def span(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """From its ``def`` (decorators not counted) to its last line."""
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def test_the_packages_and_migrations_env_are_measured_and_tests_are_not() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in modules()}
    assert {"sandbox/execserver.py", "bench/load.py", "migrations/env.py"} <= names
    assert not any(name.startswith(("tests/", "migrations/versions/")) for name in names)


def test_methods_and_nested_functions_are_measured_on_their_own() -> None:
    source = "class A:\n    def method(self):\n        async def inner():\n            pass\n        return inner\n"
    sizes = {node.name: span(node) for node in functions(ast.parse(source))}
    assert sizes == {"method": 4, "inner": 2}


def test_no_module_is_over_400_lines() -> None:
    sizes = {path: len(path.read_text().splitlines()) for path in modules()}
    over = sorted(((lines, path) for path, lines in sizes.items() if lines > MAX_MODULE_LINES), reverse=True)
    report = "\n".join(f"  {path.relative_to(ROOT)}: {lines} lines" for lines, path in over)
    if over:
        pytest.fail(f"modules over {MAX_MODULE_LINES} lines:\n{report}", pytrace=False)


def test_no_function_is_over_60_lines() -> None:
    over = []
    for path in modules():
        for node in functions(ast.parse(path.read_text(), filename=str(path))):
            if span(node) > MAX_FUNCTION_LINES:
                over.append((span(node), f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    report = "\n".join(f"  {where}: {lines} lines" for lines, where in sorted(over, reverse=True))
    if over:
        pytest.fail(f"functions over {MAX_FUNCTION_LINES} lines:\n{report}", pytrace=False)
