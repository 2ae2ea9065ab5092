"""Which part may import which (issue 15): read from every ``import`` and ``from`` statement of the files — inside
functions too, not only what loads at import time — so a lazy import cannot hide a wrong dependency. Each test
names every offending line. The last two tests load the real modules: the control plane never loads the model
host's stack, and ``import overnight.cli`` loads none of the server side."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("api", "worker", "agent", "sandbox", "store", "migrations", "overnight", "web", "bench", "tests")


@dataclass(frozen=True, kw_only=True)
class Import:
    path: Path
    line: int
    module: str
    """The absolute dotted name imported (``from a import b`` gives ``a`` and ``a.b``: b may be a module)."""
    in_function: bool

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.module}"


def _package_of(path: Path) -> list[str]:
    """The package a file belongs to (of ``a/b/__init__.py`` and ``a/b/c.py`` alike: ``a.b``)."""
    return list(path.relative_to(ROOT).parts[:-1])


def _names(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the file's package
        package = _package_of(path)
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]


def _imports_in(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for module in _names(node, path):
                yield Import(path=path, line=node.lineno, module=module, in_function=in_function)
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inside)

    yield from visit(tree, False)


def imports(folder: str) -> list[Import]:
    return [found for path in sorted((ROOT / folder).rglob("*.py")) for found in _imports_in(path)]


def _under(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def offenders(folder: str, wrong: Callable[[Import], bool]) -> list[str]:
    found = imports(folder)
    assert found, f"no import statement found under {folder}/: is the path right?"
    return sorted({str(each) for each in found if wrong(each)})


def test_the_client_package_imports_only_itself_and_the_event_models() -> None:
    """overnight/cli/ speaks HTTP only: no worker, agent, sandbox, store, API, migrations, no other part of
    ``overnight`` — but the entry point's lazy import of ``overnight.admin`` inside a server command."""
    entry_point = ROOT / "overnight" / "cli" / "__init__.py"

    def wrong(each: Import) -> bool:
        if not _under(each.module, *FIRST_PARTY):
            return False  # the standard library and third-party packages
        if _under(each.module, "overnight.cli", "overnight.events"):
            return False
        lazy_admin = each.path == entry_point and each.in_function and _under(each.module, "overnight.admin")
        return not lazy_admin

    assert offenders("overnight/cli", wrong) == []


def test_the_client_entry_point_loads_the_admin_commands_only_when_one_runs() -> None:
    """The exception above is used, and only lazily: otherwise ``overnight --help`` would load the server."""
    admin = [each for each in imports("overnight/cli") if _under(each.module, "overnight.admin")]
    assert admin, "the entry point no longer reaches overnight.admin: the server commands would be gone"
    assert [str(each) for each in admin if not each.in_function] == []


def test_the_api_never_imports_the_worker() -> None:
    """The API writes rows and enqueues ids through ``overnight.queue``; the worker is another process."""
    assert offenders("api", lambda each: _under(each.module, "worker")) == []


def test_the_agent_sees_a_sandbox_only_through_its_interface_and_never_the_database() -> None:
    """agent/ takes a ``sandbox.base.Sandbox`` (and the stateless output helper ``sandbox.output``); it knows
    no backend, no store, no worker and no API."""

    def wrong(each: Import) -> bool:
        if _under(each.module, "sandbox"):
            return not _under(each.module, "sandbox.base", "sandbox.output")
        return _under(each.module, "store", "worker", "api", "migrations", "web")

    assert offenders("agent", wrong) == []


def test_sandboxes_know_nothing_of_agents_tasks_or_the_api() -> None:
    wrong = ("agent", "store", "worker", "api", "migrations", "web")
    assert offenders("sandbox", lambda each: _under(each.module, *wrong)) == []


def test_no_route_module_imports_another_route_module() -> None:
    """What two routes share lives in a module of its own (``api/deps.py``, ``api/queueing.py``)."""

    def wrong(each: Import) -> bool:
        own = "api.routes." + each.path.stem
        return _under(each.module, "api.routes") and each.module != "api.routes" and not _under(each.module, own)

    assert offenders("api/routes", wrong) == []


def test_the_store_imports_no_part_that_uses_it() -> None:
    wrong = ("api", "worker", "agent", "sandbox", "web")
    assert offenders("store", lambda each: _under(each.module, *wrong)) == []


def test_imports_inside_functions_and_relative_ones_are_read() -> None:
    """The reader the rules rest on: a lazy import counts, and ``from . import x`` is resolved."""
    lazy = [each for each in imports("overnight/cli") if each.in_function]
    assert lazy, "no import inside a function found in overnight/cli"
    init = ROOT / "api" / "routes" / "__init__.py"
    sibling, parent = (node for node in ast.parse("from . import tasks\nfrom .. import deps").body
                       if isinstance(node, ast.ImportFrom))  # fmt: skip
    assert _names(sibling, init) == ["api.routes", "api.routes.tasks"]
    assert _names(parent, init) == ["api", "api.deps"]


@pytest.mark.parametrize("module", ["api.app", "worker.tasks", "worker.__main__", "overnight.cli"])
def test_control_plane_does_not_import_torch_or_vllm(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_client_does_not_import_the_server_side() -> None:
    """Nor the network client before a command needs it: `--help` and usage errors start fast."""
    code = (
        "import sys, overnight.cli; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'celery', 'docker', 'git', 'httpx', 'pydantic_settings',"
        " 'overnight.admin', 'overnight.settings') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
